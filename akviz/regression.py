"""Kernel ridge regression and the metrics every predictor reports.

All predictors in akviz (lazy NNGP/NTK, aNBK, aNTK) are kernel machines

    f(x) = K(x, X) (K + r I)^-1 y,

so they share this one implementation and these metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg


class Metrics(NamedTuple):
    """Scores of one predictor. ``test_error`` is NaN for real-valued targets."""

    test_loss: float
    train_loss: float
    test_error: float


def kernel_ridge(k_train, k_test_train, y, ridge: float):
    """Ridge predictor on train and test: ``(f(X), f(X*))``.

    Args:
      k_train: ``(P, P)`` symmetric PSD kernel on the training inputs.
      k_test_train: ``(Q, P)`` kernel between test and training inputs.
      y: ``(P,)`` targets.
      ridge: ``r >= 0``; ``r = 0`` needs a non-singular ``k_train``.
    """
    ridge = check_ridge(ridge)
    k_train = np.asarray(k_train, np.float64)
    k_test_train = np.asarray(k_test_train, np.float64)
    y = np.asarray(y, np.float64)
    p = k_train.shape[0]
    if k_train.shape != (p, p) or y.shape != (p,) or k_test_train.shape[1:] != (p,):
        raise ValueError(
            f"shape mismatch: k_train {k_train.shape}, k_test_train {k_test_train.shape}, y {y.shape}."
        )
    a = ridge_coefficients(k_train, y, ridge)
    return k_train @ a, k_test_train @ a


def ridge_coefficients(k_train, y, ridge: float):
    """``a = (K + r I)^-1 y`` by Cholesky (least squares if numerically singular)."""
    k = 0.5 * (k_train + k_train.T) + ridge * np.eye(k_train.shape[0])
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(k, lower=True), y)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(k, y, rcond=None)[0]


def check_ridge(ridge) -> float:
    ridge = float(ridge)
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}.")
    return ridge


def mse(pred, y) -> float:
    """Mean squared error ``mean((f - y)^2)``; predicting 0 on +-1 targets gives 1."""
    pred, y = np.asarray(pred, float), np.asarray(y, float)
    return float(np.mean((pred - y) ** 2))


def is_binary(y) -> bool:
    """True when every target is +1 or -1."""
    y = np.asarray(y)
    return bool(y.size) and bool(np.all(np.abs(y) == 1))


def classification_error(pred, y) -> float:
    """Fraction of sign mistakes for +-1 targets; NaN for real-valued targets."""
    if not is_binary(y):
        return float("nan")
    return float(np.mean(np.sign(pred) != np.asarray(y)))


def alignment(k, y) -> float:
    """Kernel-target alignment ``y^T K y / (||K||_F |y|^2)`` (in [-1, 1] for PSD K)."""
    k, y = np.asarray(k, float), np.asarray(y, float)
    denom = np.linalg.norm(k) * (y @ y)
    return float(y @ k @ y / denom) if denom > 0 else float("nan")


def score(train_pred, test_pred, y_train, y_test) -> Metrics:
    """Test MSE, train MSE and test classification error in one object."""
    return Metrics(
        test_loss=mse(test_pred, y_test),
        train_loss=mse(train_pred, y_train),
        test_error=classification_error(test_pred, y_test),
    )
