"""Theory against finite-width networks: kernel distances, prediction agreement, test losses.

Works on plain arrays or on result objects (anything with ``kernels_full`` /
``kernels`` and ``test_predictions``: :class:`akviz.ANBKResult`, the aNTK
result, :class:`akviz.network.NetworkResult`, :class:`akviz.network.PosteriorResult`).
"""

from __future__ import annotations

import math

import numpy as np

from .data import as_arrays
from .regression import alignment as _alignment
from .regression import mse


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else float("nan")


def relative_frobenius(reference, other) -> float:
    """``||other - reference||_F / ||reference||_F``."""
    reference, other = np.asarray(reference, float), np.asarray(other, float)
    if reference.shape != other.shape:
        raise ValueError(f"kernel shapes differ: {reference.shape} vs {other.shape}.")
    den = np.linalg.norm(reference)
    return float(np.linalg.norm(other - reference) / den) if den > 0 else float("nan")


def compare_kernels(theory_kernels, network_kernels, y) -> dict:
    """Per-layer agreement of two stacks of kernels ``(L, n, n)`` (or one ``(n, n)`` kernel).

    ``y`` is the training target (length ``P <= n``); alignments use the
    ``P x P`` training block, distances the whole matrices given.

    Returns a dict of per-layer lists: ``relative_frobenius``
    (``||K_net - K_th||_F / ||K_th||_F``), ``relative_frobenius_train`` (train
    block only), ``alignment_theory``, ``alignment_network``, ``frobenius_theory``,
    ``frobenius_network`` (train blocks), and ``kernel_cosine`` (``<K_th, K_net>_F /
    (||K_th|| ||K_net||)``, train block).
    """
    th = np.asarray(theory_kernels, float)
    nw = np.asarray(network_kernels, float)
    if th.ndim == 2:
        th = th[None]
    if nw.ndim == 2:
        nw = nw[None]
    if th.shape != nw.shape or th.ndim != 3 or th.shape[1] != th.shape[2]:
        raise ValueError(f"kernels must both be (L, n, n) with equal shapes, got {th.shape} and {nw.shape}.")
    y = np.asarray(y, float).reshape(-1)
    p = y.size
    if p > th.shape[1]:
        raise ValueError(f"y has {p} entries but the kernels are {th.shape[1]} x {th.shape[1]}.")
    out = {k: [] for k in ("relative_frobenius", "relative_frobenius_train", "alignment_theory",
                           "alignment_network", "frobenius_theory", "frobenius_network", "kernel_cosine")}
    for a, b in zip(th, nw):
        at, bt = a[:p, :p], b[:p, :p]
        out["relative_frobenius"].append(relative_frobenius(a, b))
        out["relative_frobenius_train"].append(relative_frobenius(at, bt))
        out["alignment_theory"].append(_alignment(at, y))
        out["alignment_network"].append(_alignment(bt, y))
        out["frobenius_theory"].append(float(np.linalg.norm(at)))
        out["frobenius_network"].append(float(np.linalg.norm(bt)))
        den = np.linalg.norm(at) * np.linalg.norm(bt)
        out["kernel_cosine"].append(float(np.sum(at * bt) / den) if den > 0 else float("nan"))
    return out


def compare_predictions(theory_pred, network_pred, y_test=None) -> dict:
    """Agreement of two predictors on the same points.

    Returns ``correlation`` (Pearson), ``rms_difference`` (``sqrt(mean((a-b)^2))``),
    ``relative_rms`` (divided by the RMS of the theory's predictions), ``max_difference``
    and, with ``y_test``, ``test_loss_theory``, ``test_loss_network`` (MSEs) and
    ``test_loss_relative_gap`` (``|net - th| / th``).
    """
    a = np.asarray(theory_pred, float).reshape(-1)
    b = np.asarray(network_pred, float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"prediction shapes differ: {a.shape} vs {b.shape}.")
    diff = b - a
    rms_a = float(np.sqrt(np.mean(a**2)))
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    out = {
        "correlation": corr,
        "rms_difference": float(np.sqrt(np.mean(diff**2))),
        "relative_rms": float(np.sqrt(np.mean(diff**2)) / rms_a) if rms_a > 0 else float("nan"),
        "max_difference": float(np.max(np.abs(diff))) if diff.size else float("nan"),
    }
    if y_test is not None:
        y_test = np.asarray(y_test, float).reshape(-1)
        lt, ln = mse(a, y_test), mse(b, y_test)
        out.update(test_loss_theory=lt, test_loss_network=ln,
                   test_loss_relative_gap=abs(ln - lt) / lt if lt > 0 else float("nan"))
    return out


def _kernels_of(result):
    for name in ("kernels_full", "kernels"):
        k = getattr(result, name, None)
        if k is not None:
            return np.asarray(k, float)
    raise ValueError(f"{type(result).__name__} has no kernels_full / kernels.")


def compare(theory_result, network_result, dataset) -> dict:
    """Everything :func:`compare_kernels` and :func:`compare_predictions` report, for two results.

    Both results must be on ``dataset`` (kernels over train+test, training block
    first, as every akviz result stores them). Returns
    ``{"kernels": {...}, "predictions": {...}, "test_loss_theory", "test_loss_network",
    "test_loss_relative_gap"}``, plus ``test_loss_network_stderr`` when the network
    result has one (Langevin).
    """
    _, y_train, _, y_test = as_arrays(dataset)
    kt, kn = _kernels_of(theory_result), _kernels_of(network_result)
    kern = compare_kernels(kt, kn, y_train)
    pred = compare_predictions(theory_result.test_predictions, network_result.test_predictions, y_test)
    out = {"kernels": kern, "predictions": pred,
           "test_loss_theory": pred["test_loss_theory"], "test_loss_network": pred["test_loss_network"],
           "test_loss_relative_gap": pred["test_loss_relative_gap"]}
    se = getattr(network_result, "test_loss_stderr", None)
    if se is not None:
        out["test_loss_network_stderr"] = _num(se)
    return out


__all__ = ["compare", "compare_kernels", "compare_predictions", "relative_frobenius"]
