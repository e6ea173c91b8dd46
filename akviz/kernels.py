"""Lazy (gamma0 -> 0) kernels: NNGP and NTK, layer by layer (THEORY.md section 2).

With ``Phi^0 = C = x x'^T / D`` and Gaussian preactivations,

    Phi^l  = E_{h ~ N(0, Phi^{l-1})}[phi(h) phi(h)^T]
    dPhi^l = E_{h ~ N(0, Phi^{l-1})}[phi'(h) phi'(h)^T]
    K^1 = Phi^1 + C * dPhi^1,    K^{l+1} = Phi^{l+1} + K^l * dPhi^{l+1}

(``*`` elementwise). Cross kernels between two input sets carry the two
diagonals along, since the Gaussian pair at ``(x, x')`` needs both variances.
All functions are pure functions of arrays and return float64 NumPy arrays.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._precision import float64
from .activations import get_activation


class LazyKernels(NamedTuple):
    """Per-layer lazy kernels, index ``l-1`` holds layer ``l``.

    Attributes:
      nngp: ``Phi^1..Phi^L`` (feature kernels).
      ntk: ``K^1..K^L`` (NTK of the network truncated after layer ``l``).
      derivative: ``dPhi^1..dPhi^L``.
      input: ``C``.
    """

    nngp: tuple
    ntk: tuple
    derivative: tuple
    input: np.ndarray


def input_kernel(x1, x2=None):
    """``C = x1 x2^T / D``."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"inputs must be 2-D arrays with the same number of features, got shapes {x1.shape} and {x2.shape}."
        )
    return x1 @ x2.T / x1.shape[1]


def _check_depth(depth):
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive integer (number of hidden layers), got {depth!r}.")
    return int(depth)


def _symmetric_expectations(act, diag, k, method):
    """Pairwise expectations of a symmetric kernel, exactly symmetric.

    Quadrature runs on the upper triangle only (half the work); closed forms
    are cheap, so they run on the full matrix and are symmetrised.
    """
    n = diag.shape[0]
    if act.closed_form is not None and method != "quadrature":
        full = act.expectations(diag[:, None], diag[None, :], k, method=method)
        return [0.5 * (m + m.T) for m in full]
    rows, cols = np.triu_indices(n)
    upper = act.expectations(diag[rows], diag[cols], k[rows, cols], method=method)
    out = []
    for vals in upper:
        m = jnp.zeros((n, n), vals.dtype).at[rows, cols].set(vals)
        out.append(m + jnp.triu(m, 1).T)
    return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _layer(act, method, same, k_prev, diag1, diag2, ntk_prev):
    """One step of the recursion: (Phi^{l-1}, K^{l-1}) -> (Phi^l, dPhi^l, K^l) and new diagonals."""
    phi_d1, _ = act.expectations(diag1, diag1, diag1, method=method)
    if same:
        phi12, dphi12 = _symmetric_expectations(act, diag1, k_prev, method)
        phi_d2 = phi_d1
    else:
        phi12, dphi12 = act.expectations(diag1[:, None], diag2[None, :], k_prev, method=method)
        phi_d2, _ = act.expectations(diag2, diag2, diag2, method=method)
    return phi12, dphi12, phi12 + ntk_prev * dphi12, phi_d1, phi_d2


@float64
def lazy_kernels(x1, x2=None, *, depth: int, activation="relu", method: str = "auto") -> LazyKernels:
    """NNGP and NTK of every layer of an L-hidden-layer network.

    Args:
      x1: ``(n1, D)`` inputs.
      x2: optional ``(n2, D)`` inputs; the kernels are then ``n1 x n2`` cross kernels.
      depth: number of hidden layers ``L >= 1``.
      activation: a registered name (``relu``, ``erf``, ``tanh``, ``linear``, ...).
      method: ``"auto"`` (closed form where one exists), ``"closed"`` or ``"quadrature"``.
    """
    depth = _check_depth(depth)
    act = get_activation(activation)
    same = x2 is None
    c12 = jnp.asarray(input_kernel(x1, x2))
    x1 = np.asarray(x1, dtype=np.float64)
    d1 = jnp.asarray(np.sum(x1 * x1, axis=1) / x1.shape[1])
    d2 = d1 if same else jnp.asarray(np.sum(np.asarray(x2, float) ** 2, axis=1) / x1.shape[1])

    phis, ntks, dphis = [], [], []
    k_prev, prev_diag1, prev_diag2 = c12, d1, d2  # Phi^{l-1} and its diagonals
    ntk_prev = c12  # K^0 := C makes the recursion uniform
    for _ in range(depth):
        phi12, dphi12, ntk12, phi_d1, phi_d2 = _layer(act, method, same, k_prev, prev_diag1, prev_diag2, ntk_prev)
        phis.append(np.asarray(phi12))
        dphis.append(np.asarray(dphi12))
        ntks.append(np.asarray(ntk12))
        k_prev, prev_diag1, prev_diag2, ntk_prev = phi12, phi_d1, phi_d2, ntk12
    return LazyKernels(tuple(phis), tuple(ntks), tuple(dphis), np.asarray(c12))


def nngp(x1, x2=None, *, depth: int, activation="relu", return_layers: bool = False,
         method: str = "auto"):
    """NNGP feature kernel ``Phi^L(x1, x2)`` (all layers with ``return_layers=True``)."""
    k = lazy_kernels(x1, x2, depth=depth, activation=activation, method=method)
    return k.nngp if return_layers else k.nngp[-1]


def ntk(x1, x2=None, *, depth: int, activation="relu", return_layers: bool = False,
        method: str = "auto"):
    """Neural tangent kernel ``K^L(x1, x2)`` (all layers with ``return_layers=True``)."""
    k = lazy_kernels(x1, x2, depth=depth, activation=activation, method=method)
    return k.ntk if return_layers else k.ntk[-1]


def train_test_kernels(x_train, x_test, *, depth: int, activation="relu",
                       kind: str = "nngp", method: str = "auto") -> tuple:
    """``(K(X, X), K(X*, X))`` for kernel regression, ``kind`` in {nngp, ntk}.

    One pass over the stacked inputs so train and test diagonals stay consistent.
    """
    if kind not in ("nngp", "ntk"):
        raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
    x_train = np.asarray(x_train, float)
    p = x_train.shape[0]
    joint = np.concatenate([x_train, np.asarray(x_test, float)], axis=0)
    k = getattr(lazy_kernels(joint, depth=depth, activation=activation, method=method), kind)[-1]
    return k[:p, :p], k[p:, :p]


__all__ = ["LazyKernels", "input_kernel", "lazy_kernels", "nngp", "ntk", "train_test_kernels"]
