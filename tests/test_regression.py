"""Kernel ridge regression and metrics against direct linear algebra."""

import numpy as np
import pytest

import akviz
from akviz.regression import classification_error, kernel_ridge, score


def test_kernel_ridge_matches_direct_solve():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3))
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
    y = rng.standard_normal(9)
    train, test = kernel_ridge(k[:9, :9], k[9:, :9], y, 0.1)
    a = np.linalg.solve(k[:9, :9] + 0.1 * np.eye(9), y)
    np.testing.assert_allclose(train, k[:9, :9] @ a, rtol=1e-12)
    np.testing.assert_allclose(test, k[9:, :9] @ a, rtol=1e-12)


def test_metrics_known_values():
    y = np.array([1.0, -1.0, 1.0, -1.0])
    assert akviz.mse(np.zeros(4), y) == 1.0  # the trivial predictor
    assert classification_error(np.array([0.5, 0.2, 1.0, -3.0]), y) == 0.25
    assert np.isnan(classification_error(np.zeros(2), np.array([0.3, 2.0])))
    k_perfect = np.outer(y, y)
    assert akviz.alignment(k_perfect, y) == pytest.approx(1.0)
    assert akviz.alignment(np.eye(4), y) == pytest.approx(0.5)  # 4 / (2 * 4)
    m = score(np.zeros(4), np.ones(4), y, y)
    assert m.train_loss == 1.0 and m.test_loss == 2.0 and m.test_error == 0.5


def test_negative_ridge_rejected():
    with pytest.raises(ValueError, match="ridge"):
        kernel_ridge(np.eye(2), np.eye(2), np.ones(2), -1.0)


def test_lazy_predictor_beats_zero_on_digits():
    ds = akviz.load_dataset("digits:3v8", 100, 200, seed=0)
    for method in ("nngp", "ntk"):
        r = akviz.lazy_predictor(ds, method=method, depth=2, activation="relu", ridge=1e-2)
        assert r.test_loss < 0.5 and r.test_error < 0.1
        assert r.kernels.shape == (2, 100, 100) and r.kernels_full.shape == (2, 300, 300)
        assert len(r.alignment) == 2 and all(0 < a < 1 for a in r.alignment)
