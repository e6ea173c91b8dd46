"""Lazy kernel predictors (NNGP / NTK ridge regression) as result objects."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .data import as_arrays
from .kernels import lazy_kernels
from .regression import alignment, check_ridge, kernel_ridge, score


@dataclasses.dataclass
class LazyResult:
    """Lazy NNGP or NTK ridge predictor on one dataset.

    Attributes:
      method: ``"nngp"`` or ``"ntk"``.
      kernels: per-layer kernels on train, ``(L, P, P)``.
      kernels_full: per-layer kernels on train+test, ``(L, P+Q, P+Q)``.
      train_predictions, test_predictions: ridge predictions.
      test_loss, train_loss, test_error: MSEs and sign error (NaN for real targets).
      alignment: per-layer kernel-target alignment on train.
      ridge, depth, activation, seconds: settings and wall time.
    """

    method: str
    kernels: np.ndarray
    kernels_full: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray
    test_loss: float
    train_loss: float
    test_error: float
    alignment: list
    ridge: float
    depth: int
    activation: str
    seconds: float


def lazy_predictor(dataset, *, method: str = "nngp", depth: int = 1, activation: str = "relu",
                   ridge: float = 1e-2) -> LazyResult:
    """Ridge regression with the lazy NNGP (``Phi^L``) or NTK (``K^L``) kernel."""
    if method not in ("nngp", "ntk"):
        raise ValueError(f"method must be 'nngp' or 'ntk', got {method!r}.")
    ridge = check_ridge(ridge)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = as_arrays(dataset)
    p = x_train.shape[0]
    layers = getattr(lazy_kernels(np.concatenate([x_train, x_test]), depth=depth, activation=activation), method)
    full = np.stack(layers)
    train_pred, test_pred = kernel_ridge(full[-1, :p, :p], full[-1, p:, :p], y_train, ridge)
    metrics = score(train_pred, test_pred, y_train, y_test)
    return LazyResult(
        method=method, kernels=full[:, :p, :p], kernels_full=full,
        train_predictions=train_pred, test_predictions=test_pred,
        test_loss=metrics.test_loss, train_loss=metrics.train_loss, test_error=metrics.test_error,
        alignment=[alignment(k[:p, :p], y_train) for k in full],
        ridge=ridge, depth=int(depth), activation=str(activation),
        seconds=time.perf_counter() - start,
    )
