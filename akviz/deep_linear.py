"""Deep linear Bayesian networks: the exact saddle point (THEORY.md 3.3).

For ``phi(h) = h``, whitened inputs (``C = I``) and ``|y| = 1`` the saddle point is

    Phi^l = I + (c_l - 1) y y^T,   c_l = r^l,   r = c^(1/L),
    c = (1 + gamma0^2 c / (c + 1/beta)^2)^L,

so the whole feature-learning story is the overlaps ``c_l = y^T Phi^l y``:
``c_l = 1`` in the lazy limit, growing with depth and ``gamma0``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from .data import Dataset


def _check(gamma0, beta, depth):
    if not np.isfinite(gamma0) or gamma0 < 0:
        raise ValueError(f"gamma0 must be a finite number >= 0, got {gamma0}.")
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta}.")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth}.")


def linear_overlaps(gamma0: float, beta: float, depth: int) -> np.ndarray:
    """``(c_1, ..., c_L)``, the overlaps ``y^T Phi^l y`` of the exact deep linear saddle point."""
    _check(gamma0, beta, depth)
    if gamma0 == 0:
        return np.ones(int(depth))

    def equation(c):
        return c - (1.0 + gamma0**2 * c / (c + 1.0 / beta) ** 2) ** depth

    # equation(1) < 0 and equation -> +inf: the root lies above 1. The upper end
    # doubles until the sign changes (the RHS is bounded by (1 + gamma0^2 beta / 4)^L).
    hi = 2.0
    while equation(hi) < 0:
        hi *= 2.0
    c = brentq(equation, 1.0, hi, xtol=1e-14, rtol=1e-15, maxiter=500)
    r = c ** (1.0 / depth)
    return r ** np.arange(1, int(depth) + 1)


def whitened_task(n_train: int = 8, n_test: int = 4, seed: int = 0) -> Dataset:
    """Inputs with ``C = I`` on train (``x_mu = sqrt(D) e_mu``) and a unit-norm target.

    Test points are random combinations of the training inputs, so the
    predictor has something to say about them.
    """
    rng = np.random.default_rng(seed)
    d = n_train
    x_train = np.sqrt(d) * np.eye(n_train)
    y = rng.standard_normal(n_train)
    y /= np.linalg.norm(y)
    mix = rng.standard_normal((n_test, n_train)) / np.sqrt(n_train)
    x_test = mix @ x_train
    labels = np.where(y > 0, 1, -1)
    return Dataset(name="whitened-linear", x_train=x_train, y_train=y, x_test=x_test, y_test=mix @ y,
                   labels_train=labels, labels_test=np.where(mix @ y > 0, 1, -1),
                   description=f"whitened inputs (C = I), P = {n_train}, |y| = 1")
