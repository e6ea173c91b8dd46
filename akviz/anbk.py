"""The adaptive Neural Bayesian Kernel (aNBK): saddle point of wide Bayesian networks.

THEORY.md section 3. For ``L`` hidden layers the kernels ``Phi^l`` (train
block, ``P x P``) and their conjugates ``hatPhi^l`` solve

    Phi^l    = <phi(h) phi(h)^T>_l,   p_l(h) ∝ N(h; 0, Phi^{l-1}) exp(-phi^T hatPhi^l phi / 2)
    hatPhi^L = -gamma0^2 a a^T,       a = (Phi^L + I/beta)^-1 y
    hatPhi^l = -(Phi^l)^+ (<h h^T>_{l+1} - Phi^l) (Phi^l)^+          (l < L)

with ``Phi^0 = C``. We write ``M_l = -hatPhi^l`` (the tilt ``exp(+phi^T M phi/2)``)
and work in whitened coordinates ``h = R u``, ``R = (Phi^{l-1})^{1/2}``
(symmetric square root), so the prior is ``u ~ N(0, I)`` whatever the
state; then ``hatPhi^l = -R_l^+ (<u u^T>_{l+1} - I) R_l^+``, which needs no
inverse of a possibly singular ``C``.

Solvers (``method``):

* ``"exact"`` (default for ``activation="linear"``): all integrals are
  Gaussian, ``Phi^l = K + K M (I - K M)^-1 K`` with ``K = Phi^{l-1}``, and every
  tilt is rank one, so the saddle on any input kernel is one scalar root
  (``_linear_scalar``) and closed forms; a root exists for every ``gamma0``.
* ``"ais"`` (default at depth 1 for non-linear activations): adaptive importance
  sampling from a Gaussian mixture along the Hubbard-Stratonovich field of the
  rank-one tilt, refitted to the target after every solve, and Newton on the
  P-vector ``a`` with the draws fixed (sample-average approximation); fresh draws
  check every state, and the draw grows when its noise is what holds the residual
  above ``tol``. iid draws, so no burn-in or autocorrelation. Its reach ends where
  the tilted density stops normalising at the state (``kappa >= 1``) or the ESS
  collapses; ``"auto"`` then hands over to ``"mala"``. See :mod:`akviz.anbk_ais`.
* ``"mala"`` (default at depth >= 2 and beyond ``"ais"``'s reach): persistent MALA chains per layer that move
  together with the kernels (Robbins-Monro updates, Polyak averaging), then a
  frozen *evaluate* phase on fresh rounds that measures the saddle residual and
  its Monte Carlo error; the last layer's rank-one tilt is sampled with its
  Hubbard-Stratonovich field ``xi`` drawn exactly at every step. This is the
  solver that reaches ``gamma0 = O(1)`` for relu: its kernels agree with
  Langevin-sampled networks to ~1%. See :mod:`akviz.anbk_mcmc`.
* ``"hs"``: Hubbard-Stratonovich decoupling of the rank-one last-layer tilt,
  deterministic quadrature over ``xi``, importance sampling of ``p(h | xi)``
  with common random numbers and Anderson on the P-vector ``a``, integrating
  ``xi`` over the basin of the main maximum of its marginal. Its fixed point on
  fixed samples is solved to residuals of 1e-5, which says nothing of their Monte
  Carlo error (7% with 5120 samples at P = 30), so ``converged`` also needs that
  error below ``tol``, as for the other solvers. Its fixed-point path leaves the normalisable
  set early: for relu on digits 3-vs-8 it reports failure from ``gamma0 ~ 0.3``
  (``beta = 1``), where the saddle still exists (the ``"mala"`` solver and
  Langevin networks find it). See :mod:`akviz.anbk_hs`.
* ``"is"``: importance sampling from the prior Gaussian with an
  Anderson-accelerated fixed-point iteration on common random numbers (the
  cheap method that degenerates as ``gamma0`` grows; kept for comparison and
  for mild tilts).

Honesty checks: the saddle residual on samples independent of the state, the
Monte Carlo standard error of the kernels (batch means over independent chain
groups), the effective sample fraction (importance weights, or for chains the
ratio of independent-sample to batch-means variance), and chains that run away
(the tilted density does not normalise). Failure never raises:
``converged=False``, NaN kernels where they would be wrong, and a message
naming the cause.

Test points (THEORY.md 3.2): layer by layer, test preactivations are drawn
from the Gaussian conditional given the train block (the tilt acts on train
points only), and reuse the train samples' weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import anbk_ais as _ais
from . import anbk_hs as _hs
from . import anbk_mcmc as _mcmc
from .anbk_action import action_error, log_z_from_groups, saddle_action
from .anbk_mcmc import relative_difference as _rel
from ._precision import float64
from .export import json_number
from .activations import Activation, get_activation
from .data import as_arrays
from .kernels import input_kernel, lazy_kernels
from .regression import alignment as _alignment
from .regression import kernel_ridge, score

#: ESS (fraction of samples) below which an importance-sampling result is not trusted.
ESS_FLOOR = 0.05
#: The longest ``gamma0`` step of a cold (or distant) importance-sampling solve's continuation: near the edge of
#: normalisability a longer one lands on a state whose tilted density does not normalise. On digits 3-vs-8
#: (P = 100, relu, ``beta = 1``, seeds 1-4) cold solves at 0.7 stepping 0.05, 0.1, 0.2, 0.4 converged 2 times
#: in 4 (one gave up with tail slope 1.001), with steps of 0.1 from 0.2 on 4 in 4 (median 13.5 s); at 0.5 and
#: 0.6 both converged every time, in medians of 5.7 s and 9.3 s against 6.4 s and 7.8 s.
AIS_MAX_STEP = 0.1
#: Default ``samples`` and ``max_iter`` per solver (others: 2048 and 30).
#: MALA: 8192 chains, where 2048 left the residual at 0.014-0.018 (Monte Carlo error 0.005-0.009) on digits 3-vs-8 at
#: depth 2, gamma0 = 0.25 and 0.5 (beta = 1), and 8192 converged (0.008, 0.007) in 1.5x the time (docs/anbk.md).
_DEFAULT_SAMPLES = {"ais": _ais.DEFAULT_SAMPLES, "hs": 10240, "is": 4096, "mala": 8192}
_DEFAULT_MAX_ITER = {"ais": 8, "mala": 3}
#: Chain groups for batch-means standard errors (chains are independent across groups).
_GROUPS = _mcmc.GROUPS
_MIN_ROUNDS = _mcmc.SNAP_EVERY


# ---------------------------------------------------------------- result


@dataclasses.dataclass
class ANBKResult:
    """Saddle point of the aNBK action and its kernel predictor (scipy.optimize style).

    Attributes:
      kernels: ``(L, P, P)`` layer kernels ``Phi^1..Phi^L`` on train.
      kernels_full: ``(L, P+Q, P+Q)`` the same on train+test (THEORY.md 3.2). Monte Carlo
        methods: all blocks are the final samples' estimate (its train block differs from
        ``kernels`` by the saddle residual), so that the predictor's noise cancels between blocks.
      duals: ``(L, P, P)`` conjugate kernels ``hatPhi^l``.
      train_predictions, test_predictions: ``Phi^L(x, X) (Phi^L + I/beta)^-1 y``.
      test_loss, train_loss, test_error: MSEs and sign error (NaN for real targets).
      alignment: per-layer kernel-target alignment on train.
      converged: True when the saddle residual is below ``tol``, so is its Monte Carlo error (a
        residual the noise does not resolve is no evidence; every Monte Carlo solver), and every
        honesty check passed. The residual is on fresh samples, except for ``"hs"``, whose fixed point is
        solved on its own samples: there the Monte Carlo error is the test.
      iterations: outer iterations (chain refreshes; exact: fixed-point steps).
      residual: dict with ``phi`` (per layer ``||Phi - <phi phi^T>|| / ||Phi||``,
        Frobenius, on samples independent of the state; ``"hs"``: on its own), ``dual`` (per layer,
        same for ``hatPhi``), ``mc_error`` (per layer, Monte Carlo standard error
        of ``<phi phi^T>`` relative to ``||Phi||``) and ``max`` (max of ``phi``).
      ess: per-layer effective sample size of the final weights, fraction of samples.
      action: the action ``S`` of THEORY.md 3.1 at the state (``akviz.anbk_action``): ``ln Z`` exact for the
        linear network, a Monte Carlo estimate from the importance weights for ``"ais"`` (on the final,
        fresh draw) and ``"is"`` (where the result is the state its last samples measured), by stepping
        stones for ``"mala"`` (the chains walk down the tilt's strength from the final state to the prior:
        ``akviz.anbk_mcmc.log_normalisers``), by the ``xi`` quadrature over its basin for ``"hs"``; NaN where
        the tilted density does not normalise.
      action_mc_error: its Monte Carlo standard error (that of ``ln Z``; 0 exact, NaN where ``action`` is).
      history: one dict per iteration: residuals, ESS, seconds, ``alignment``; ``"ais"`` checks and
        ``"is"`` iterations add ``action``, ``action_mc_error`` and ``log_z`` of the state they check, and
        ``"mala"`` its last evaluation (the stepping stones cost 2-2.6 s a layer at 2048 chains, P = 100:
        once, at the final state).
      message: a sentence saying what happened (and why not, when not converged).
      seconds: wall time.
      gamma0, beta, depth, activation, samples, method, seed: the settings.
    """

    kernels: np.ndarray
    kernels_full: np.ndarray
    duals: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray
    test_loss: float
    train_loss: float
    test_error: float
    alignment: list
    converged: bool
    iterations: int
    residual: dict
    ess: list
    action: float
    history: list
    message: str
    seconds: float
    gamma0: float
    beta: float
    depth: int
    activation: str
    samples: int
    method: str
    seed: int
    barrier: float = float("nan")
    basin: Optional[tuple] = None
    action_mc_error: float = float("nan")
    _state: dict = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def success(self) -> bool:  # scipy.optimize spelling
        return self.converged

    @property
    def mc_error(self) -> list:
        """Per-layer relative Monte Carlo standard error of the kernels (0 for exact)."""
        return list(self.residual["mc_error"])

    def to_json_dict(self) -> dict:
        """JSON-serialisable summary (scalars and per-layer lists)."""
        f = json_number

        return {
            "method": "anbk", "solver": self.method,
            "converged": bool(self.converged), "iterations": int(self.iterations),
            "residual": f(self.residual["max"]),
            "residual_phi": [f(r) for r in self.residual["phi"]],
            "residual_dual": [f(r) for r in self.residual["dual"]],
            "mc_error": [f(r) for r in self.residual["mc_error"]],
            "ess": f(min(self.ess)), "ess_per_layer": [f(e) for e in self.ess],
            "test_loss": f(self.test_loss), "train_loss": f(self.train_loss),
            "test_error": f(self.test_error),
            "alignment": [f(a) for a in self.alignment],
            "action": f(self.action), "action_mc_error": f(self.action_mc_error),
            "gamma0": float(self.gamma0), "beta": float(self.beta), "depth": int(self.depth),
            "activation": self.activation, "samples": int(self.samples), "seed": int(self.seed),
            "seconds": float(self.seconds), "message": self.message,
            "mc_error_max": f(max(self.residual["mc_error"])) if self.residual["mc_error"] else None,
            "barrier": f(self.barrier) if not (isinstance(self.barrier, float) and math.isinf(self.barrier))
            else "inf",
            "basin": [float(b) for b in self.basin] if self.basin else None,
        }


# ---------------------------------------------------------------- linear algebra helpers


# Symmetric K^{1/2} and its pseudo-inverse: one implementation, in the MCMC module.
_sqrt_and_pinv = _mcmc.sym_sqrt_pinv


def _np_sqrt_pinv(k, cutoff=_mcmc.EIG_CUTOFF):
    r, ri = _sqrt_and_pinv(jnp.asarray(k), cutoff)
    return np.asarray(r), np.asarray(ri)


class _Anderson:
    """Anderson acceleration (type II, depth ``m``) of ``x = G(x)`` with damping ``mix``."""

    def __init__(self, m=5, mix=1.0):
        self.m, self.mix = m, mix
        self.xs, self.fs = [], []

    def reset(self):
        self.xs, self.fs = [], []

    def step(self, x, gx):
        f = gx - x
        self.xs.append(x)
        self.fs.append(f)
        if len(self.xs) > self.m + 1:
            self.xs.pop(0)
            self.fs.pop(0)
        if len(self.xs) == 1:
            return x + self.mix * f
        df = np.stack([self.fs[i + 1] - self.fs[i] for i in range(len(self.fs) - 1)], 1)
        dx = np.stack([self.xs[i + 1] - self.xs[i] for i in range(len(self.xs) - 1)], 1)
        gamma = np.linalg.lstsq(df, f, rcond=None)[0]
        return x + self.mix * f - (dx + self.mix * df) @ gamma


def _is_psd(phis, floor=-1e-10):
    return all(np.linalg.eigvalsh(0.5 * (p + p.T))[0] >= floor * max(np.abs(p).max(), 1.0) for p in phis)


# ---------------------------------------------------------------- exact (linear) solver


def _linear_residuals(phis, ms, a, c, y, inv_beta):
    """The linear saddle's stationarity residuals (THEORY.md 3.1, 3.3), in products only: no inverse of a
    kernel, whose spike along the task direction makes it ill-conditioned at large ``gamma0`` and ``beta``.

    Kernels: ``Phi^l = ((Phi^{l-1})^-1 - M_l)^-1``, i.e. ``Phi^l - Phi^l M_l Phi^{l-1} - Phi^{l-1} = 0``.
    Duals: ``Phi^l M_l Phi^l = <h h^T>_{l+1} - Phi^l = Phi^{l+1} - Phi^l`` (``l < L``), and at the top
    ``(Phi^L + I/beta) a = y`` with ``M_L = gamma0^2 a a^T``. Each relative to its largest term (``M_l`` grows
    like ``gamma0^2 x^(L-l)``: the products' rounding, not the kernels' error, sets the floor)."""
    def rel(*terms):  # |sum of the terms| / max |term|: the rounding of a product is relative to its own size
        scale = max(np.linalg.norm(t) for t in terms)
        return float(np.linalg.norm(sum(terms)) / scale) if scale > 0 else 0.0  # all zero (gamma0 = 0): exact

    priors = [c] + list(phis[:-1])
    res_phi = [rel(f, -f @ m @ k, -k) for f, k, m in zip(phis, priors, ms)]
    res_dual = [rel(phis[l] @ ms[l] @ phis[l], phis[l] - phis[l + 1]) for l in range(len(phis) - 1)]
    res_dual.append(rel((phis[-1] + inv_beta * np.eye(len(y))) @ a, -y))
    return res_phi, res_dual


def _linear_full(c_full, ms, p):
    """Train+test kernels of the linear network: Gaussian tilt on the train block (Woodbury)."""
    out = []
    k = c_full
    for l, m in enumerate(ms):
        kp = k[:, :p]
        inner = np.eye(p) - k[:p, :p] @ m
        new = k + kp @ m @ np.linalg.solve(inner, kp.T)
        new = 0.5 * (new + new.T)
        out.append(new)
        k = new
    return out


def _linear_scalar(c, y, g2, inv_beta, depth):
    """The linear saddle's scalar equation on any input kernel ``C``.

    Every tilt is rank one (``M_L = g^2 a a^T``; Sherman-Morrison keeps each ``M_l`` below it rank one along
    ``P a``, ``P`` the projector onto ``C``'s range), and the whole saddle reduces to one number ``x >= 1``:

        Phi^l = C + (x^l - 1) z z^T / q,   z = C a,   q = a^T C a,   a = (x^L C + I/beta)^-1 y,
        M_l = g^2 x^(L-l) (P a)(P a)^T  (l < L),   ln Z_l = ln(x) / 2,

    with ``x`` a root of ``f(x) = x - 1 - g^2 x^L q(x)``. With ``C = I``, ``|y| = 1`` this is THEORY.md 3.3's
    closed form (``c_l = x^l``). ``f(1) = -g^2 q(1) <= 0`` and, as ``(x^L lambda + 1/beta)^2 >= 4 x^L lambda /
    beta``, ``f(1 + u) >= 0`` at ``u = g^2 beta |P y|^2 / 4``: a root always lies in between (every ``x >= 1`` is
    normalisable, ``1 - lambda_max(R M_l R) = 1 / x``). Returns ``f``, ``x -> (a, P a, z)`` and ``u``."""
    lam, vec = np.linalg.eigh(0.5 * (c + c.T))
    keep = lam > _mcmc.EIG_CUTOFF * max(lam[-1], 1e-300)
    y_hat = vec.T @ y

    def a_of(x):
        """``a``, ``P a`` and ``z = C a`` at ``x``, each summed in the eigenbasis (``a``'s null-space part, ``beta`` times
        ``y``'s, would swamp ``P a`` if it were projected out afterwards)."""
        coef = y_hat / (x**depth * np.where(keep, lam, 0.0) + inv_beta)
        kept = np.where(keep, coef, 0.0)
        return vec @ coef, vec @ kept, vec @ (np.where(keep, lam, 0.0) * kept)

    def f(x):
        den = x**depth * lam[keep] + inv_beta
        return x - 1.0 - g2 * x**depth * float(np.sum(lam[keep] * y_hat[keep] ** 2 / den**2))

    u_max = g2 * float(np.sum(y_hat[keep] ** 2)) / (4.0 * inv_beta)
    return f, a_of, u_max


#: Points of the scan that brackets the smallest root of ``_linear_scalar``'s ``f`` (and counts the others).
LINEAR_SCAN = 2000


def _solve_exact(c_full, y, p, g2, inv_beta, depth, tol, callback, start):
    """Exact linear saddle: the smallest root of ``_linear_scalar``'s ``f`` (the branch that meets the lazy
    kernels as ``gamma0 -> 0``), bracketed on a log-spaced scan of ``(1, 1 + u]`` and polished by Brent's
    method. The kernels then follow in closed form; the full ``P x P`` stationarity equations at them
    (``_linear_residuals``) give the residuals, an independent check. ``tol``: on those residuals."""
    from scipy.optimize import brentq

    c = c_full[:p, :p]
    f, a_of, u_max = _linear_scalar(c, y, g2, inv_beta, depth)
    history, stopped = [], False

    class _Stop(Exception):
        pass

    def traced(x):
        value = f(x)
        history.append({"iteration": len(history) + 1, "residual": abs(value) / x, "margin": 1.0 / x, "x": x,
                        "seconds": time.perf_counter() - start})
        if callback is not None and callback(len(history), history[-1]) is False:
            raise _Stop
        return value

    roots, x = 0, 1.0
    if u_max > 0:
        # the root lies in (1, 1 + u_max]; 1 + 1e-16 u_max is still below it (f(1 + u) ~ u - g^2 q(1) there)
        u = np.geomspace(1e-16 * u_max, u_max * (1 + 1e-9), LINEAR_SCAN)
        values = np.array([f(1.0 + v) for v in u])
        crossings = np.flatnonzero(np.diff(np.sign(values)) != 0)
        roots = len(crossings) + (1 if values[0] >= 0 else 0)
        if values[0] >= 0:  # below the scan's resolution: gamma0 ~ 0
            lo, hi = 1.0, 1.0 + u[0]
        else:
            lo, hi = 1.0 + u[crossings[0]], 1.0 + u[crossings[0] + 1]
        try:
            x = brentq(traced, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=200)
        except _Stop:
            stopped, x = True, history[-1]["x"]
    a, pa, z = a_of(x)
    q = float(pa @ z)
    phis = [c + ((x**l - 1.0) / q if q > 0 else 0.0) * np.outer(z, z) for l in range(1, depth + 1)]
    ms = [g2 * x ** (depth - l) * np.outer(pa, pa) for l in range(1, depth)] + [g2 * np.outer(a, a)]
    res_phi, res_dual = _linear_residuals(phis, ms, a, c, y, inv_beta)
    residual = max(res_phi + res_dual)
    converged = not stopped and residual < tol
    if stopped:
        message = "stopped by the callback."
    elif converged:
        message = (f"converged (exact Gaussian integrals: a scalar root, x = {x:.12g}, in {len(history)} Brent "
                   f"steps; stationarity residual {residual:.1e}).")
    else:
        cond = np.linalg.cond(phis[-1] + inv_beta * np.eye(p))
        message = (f"not converged: the closed form's stationarity residual {residual:.1e} is above {tol:.0e}, "
                   f"float64 rounding at this conditioning (cond(Phi^L + I/beta) = {cond:.1e}); a smaller "
                   "gamma0 or beta lowers it.")
    if roots > 1 and not stopped:
        message += (f" The saddle equation has {roots} roots here; this is the smallest, the one that meets "
                    "the lazy kernels as gamma0 -> 0.")
    return {"phis": phis, "ms": ms, "converged": converged, "message": message, "iterations": len(history),
            "res_phi": res_phi, "res_dual": res_dual, "mc_error": [0.0] * depth, "ess": [1.0] * depth,
            "history": history, "margin": 1.0 / x, "log_z": [0.5 * math.log(x)] * depth,
            "log_z_error": [0.0] * depth}


# ---------------------------------------------------------------- Monte Carlo kernels (jitted)


@functools.lru_cache(maxsize=None)
def _mc_functions(act: Activation, depth: int):
    """Jitted importance-sampling sweep, group kernels and ``phi`` for one activation and depth."""
    phi = act.fn

    def softmax_w(lw):
        lw = lw - jnp.max(lw)
        w = jnp.exp(lw)
        return w / jnp.sum(w)

    def sweep(phis, pool, ref, f0, r0, y, g2, inv_beta):
        """Stationarity map at state ``phis`` with fixed samples ``pool`` (CRN).

        ``pool[l]`` are whitened samples for layer l+1 drawn from a density with
        log tilt ``ref[l]``; ``f0 = phi(pool[0] @ r0)`` is precomputed (layer 1's
        prior never changes). Returns new kernels, tilts M, weights, logt, ESS.
        """
        p = y.shape[0]
        eye = jnp.eye(p)
        facs = [(r0, None)] + [_sqrt_and_pinv(phis[l], _mcmc.KERNEL_EIG_CUTOFF) for l in range(depth - 1)]
        a = jnp.linalg.solve(phis[-1] + inv_beta * eye, y)
        new, ms, ws, logts, esss = [None] * depth, [None] * depth, [None] * depth, [None] * depth, [None] * depth
        m = g2 * jnp.outer(a, a)
        for l in reversed(range(depth)):
            f = f0 if l == 0 else phi(pool[l] @ facs[l][0])
            if l == depth - 1:
                logt = 0.5 * g2 * (f @ a) ** 2  # rank-one last tilt: O(S P)
            else:
                logt = 0.5 * jnp.sum((f @ m) * f, axis=-1)
            w = softmax_w(logt - ref[l])
            new[l] = (f * w[:, None]).T @ f
            ms[l], ws[l], logts[l] = m, w, logt
            esss[l] = 1.0 / (jnp.sum(w**2) * w.shape[0])
            if l > 0:
                suu = (pool[l] * w[:, None]).T @ pool[l]
                rinv = facs[l][1]
                m = rinv @ (suu - eye) @ rinv
        return jnp.stack(new), jnp.stack(ms), jnp.stack(ws), jnp.stack(logts), jnp.stack(esss)

    def group_kernels(phis, pool, w, f0, r0, groups):
        """Per-group weighted kernels (for batch-means standard errors)."""
        facs = [r0] + [_sqrt_and_pinv(phis[l], _mcmc.KERNEL_EIG_CUTOFF)[0] for l in range(depth - 1)]
        out = []
        for l in range(depth):
            f = f0 if l == 0 else phi(pool[l] @ facs[l])
            s = f.shape[0]
            fg = f.reshape(groups, s // groups, -1)
            wg = w[l].reshape(groups, s // groups)
            wg = wg / jnp.sum(wg, axis=1, keepdims=True)
            out.append(jnp.einsum("gs,gsi,gsj->gij", wg, fg, fg))
        return jnp.stack(out)

    return {
        "sweep": jax.jit(sweep),
        "groups": jax.jit(group_kernels, static_argnums=(5,)),
        "phi": jax.jit(lambda h: phi(h)),
    }


# ---------------------------------------------------------------- Monte Carlo solver


def _solve_mc(fns, c, y, g2, inv_beta, depth, samples, method, seed, init_phis, init_state,
              tol, max_iter, callback, start):
    """Importance sampling from the prior (``method="is"``): fresh samples each iteration, Anderson inner solve."""
    p = y.shape[0]
    r0 = _np_sqrt_pinv(c)[0]
    r0j = jnp.asarray(r0)
    yj = jnp.asarray(y)
    phis = np.array(init_phis)
    chains_n = samples
    key = jax.random.PRNGKey(seed)
    a = np.linalg.solve(phis[-1] + inv_beta * np.eye(p), y)
    ms = np.zeros((depth, p, p))
    ms[-1] = g2 * np.outer(a, a)
    history, converged, message = [], False, ""
    res_phi = res_dual = mc_err = ess = None
    final = None
    measured = False  # whether the state is the one the last samples measured (ln Z belongs to it)
    it = 0
    for it in range(1, max_iter + 1):
        # --- fresh samples at the current state
        rs = np.stack([r0] + [_np_sqrt_pinv(q, _mcmc.KERNEL_EIG_CUTOFF)[0] for q in phis[:-1]])
        key, sub = jax.random.split(key)
        pool = jax.random.normal(sub, (depth, chains_n, p))
        ref = jnp.zeros((depth, chains_n))
        f0 = fns["phi"](pool[0] @ r0j)
        args = (pool, ref, f0, r0j, yj, g2, inv_beta)
        new, ms_new, w, logt, ess_j = fns["sweep"](jnp.asarray(phis), *args)
        new, ms_new, ess = np.asarray(new), np.asarray(ms_new), np.asarray(ess_j)
        log_z = _prior_log_z(np.asarray(logt))
        measured = True
        grp = np.asarray(fns["groups"](jnp.asarray(phis), pool, w, f0, r0j, _GROUPS))
        se = grp.std(axis=1, ddof=1) / math.sqrt(_GROUPS)
        res_phi = [_rel(new[l], phis[l]) for l in range(depth)]
        mc_err = [float(np.linalg.norm(se[l]) / np.linalg.norm(phis[l])) for l in range(depth)]
        res_dual = [_rel(ms[l], ms_new[l]) if l < depth - 1 else 0.0 for l in range(depth)]
        rec = {"iteration": it, "residual": max(res_phi), "residual_phi": res_phi, "residual_dual": res_dual,
               "mc_error": mc_err, "ess": [float(e) for e in ess],
               "alignment": [_alignment(q, y) for q in phis], "seconds": time.perf_counter() - start,
               "log_z": log_z[0], "action": saddle_action(phis, -ms_new, y, g2, inv_beta, log_z[0]),
               "action_mc_error": action_error(log_z[1])}
        history.append(rec)
        final = {"pool": pool, "ref": ref, "w": np.asarray(w), "rs": rs, "ms": ms_new}
        if callback is not None and callback(it, rec) is False:
            message = "stopped by the callback."
            break
        if ess.min() < ESS_FLOOR:
            message = (f"importance sampling from the prior collapsed (ESS {ess.min():.1%} < {ESS_FLOOR:.0%}); "
                       "use method='mala', a smaller gamma0 or a larger beta.")
            break
        # as for the other solvers: the residual on these fresh samples below tol, and their Monte Carlo error too
        # (a residual within 3x its noise, the rule before, let 5% errors and 15% residuals count as converged)
        if max(res_phi) < tol and max(mc_err) < tol and max(res_dual) < max(10 * tol, 0.2):
            converged = True
            break
        # --- inner solve with common random numbers: Anderson on the stationarity map
        phis, ms = _inner_solve(fns, phis, new, ms_new, args, depth, p)
        measured = False
    if converged:
        message = (f"converged in {it} iterations: residual {max(res_phi):.2e} "
                   f"(Monte Carlo error {max(mc_err):.2e}), min ESS {ess.min():.0%}.")
    elif not message:
        why = "the Monte Carlo error is above tol, so the residual is not resolved; " if max(mc_err) >= tol else ""
        message = (f"no convergence in {max_iter} iterations (residual {max(res_phi):.2e}, Monte Carlo error "
                   f"{max(mc_err):.2e}, tol {tol:g}): {why}raise samples or max_iter, warm-start from a neighbouring "
                   "gamma0, or use a smaller gamma0.")
    state = {"chains": None, "ms": ms}
    return {"phis": phis, "ms": final["ms"] if final else ms, "converged": converged, "message": message,
            "iterations": it, "res_phi": res_phi, "res_dual": res_dual, "mc_error": mc_err,
            "ess": [float(e) for e in ess], "history": history, "final": final, "state": state,
            "log_z": log_z[0] if measured else None,
            "log_z_error": log_z[1] if measured else None}


def _prior_log_z(logt):
    """``ln Z_l = ln E_prior exp(logt)`` per layer from prior samples' log tilts ``logt`` (``(L, S)``), and the
    standard errors ``se(Z) / Z`` (batch means over ``_GROUPS`` groups of samples)."""
    top = logt.max(axis=1, keepdims=True)
    means = np.exp(logt - top).reshape(len(logt), _GROUPS, -1).mean(axis=2)  # (L, groups), in units of e^top
    per_layer = [log_z_from_groups(float(t), m) for t, m in zip(top[:, 0], means)]
    return [q[0] for q in per_layer], [q[1] for q in per_layer]


def _inner_solve(fns, phis, new, ms_new, args, depth, p, max_inner=30, inner_tol=1e-6, ess_trust=0.3,
                 max_step=0.15):
    """Fixed point of the CRN stationarity map, stopping where the reweighting stops being trustworthy."""
    acc = _Anderson(m=5, mix=1.0)
    x = phis.reshape(-1)
    gx = new.reshape(-1)
    best = (new, ms_new)
    for _ in range(max_inner):
        xn = acc.step(x, gx).reshape(depth, p, p)
        xn = 0.5 * (xn + np.swapaxes(xn, 1, 2))
        if not _is_psd(xn):
            acc.reset()
            xn = gx.reshape(depth, p, p)
        out, ms, _, _, ess = fns["sweep"](jnp.asarray(xn), *args)
        ess = np.asarray(ess)
        if ess.min() < ess_trust:  # too far from where the samples were drawn: resample first
            break
        best = (xn, np.asarray(ms))
        out = np.asarray(out)
        if np.linalg.norm(out - xn) < inner_tol * np.linalg.norm(xn):
            best = (out, np.asarray(ms))
            break
        x, gx = xn.reshape(-1), out.reshape(-1)
    # trust region: a noisy sample map can have a far-away fixed point; move at most `max_step`
    step = best[0] - phis
    size = np.linalg.norm(step) / np.linalg.norm(phis)
    if size > max_step:
        return phis + (max_step / size) * step, best[1]
    return best


# ---------------------------------------------------------------- test kernels


def _full_kernels_mc(fns, act, phis, c_full, p, final, seed):
    """Train+test kernels by Gaussian conditioning of the test block, layer by layer (THEORY.md 3.2)."""
    depth = len(phis)
    n = c_full.shape[0]
    pool, w = final["pool"], final["w"]
    key = jax.random.PRNGKey(seed + 7919)
    k = c_full
    out = []
    for l in range(depth):
        r, rinv = _np_sqrt_pinv(k[:p, :p] if l == 0 else phis[l - 1], _mcmc.prior_cutoff(l))
        h_tr = np.asarray(pool[l]) @ r
        if n > p:
            b = k[p:, :p] @ rinv  # h_test = B u + L z with B B^T = K_qp K_pp^+ K_pq
            cond = k[p:, p:] - b @ b.T
            lc = _np_sqrt_pinv(0.5 * (cond + cond.T))[0]
            key, sub = jax.random.split(key)
            z = np.asarray(jax.random.normal(sub, (h_tr.shape[0], n - p)))
            h = np.concatenate([h_tr, np.asarray(pool[l]) @ b.T + z @ lc], axis=1)
        else:
            h = h_tr
        f = np.asarray(fns["phi"](jnp.asarray(h)))
        new = (f * w[l][:, None]).T @ f
        # the train block stays the samples' own estimate: the predictor uses both blocks from the same
        # samples, so their Monte Carlo noise cancels (with the state's Phi^L instead, the test loss
        # scattered by ~10% between seeds at 2048 chains; with it, ~1%)
        out.append(0.5 * (new + new.T))
        k = out[-1]
    return out


# ---------------------------------------------------------------- public API


def _continuation(g_from, g_to, first=0.05, ratio=1.5, max_step=None):
    """Intermediate gamma0 values between a solved one and the target (geometric, excluding both ends), with
    no step, the last one to the target included, longer than ``max_step`` where it is given."""
    cap = math.inf if max_step is None else max_step
    out, prev = [], g_from
    g = min(max(g_from * ratio, first), g_from + cap) if g_from > 0 else first
    # within 15% of the target (and one step of it): solve the target directly
    while g < g_to - 1e-9 and (g < g_to / 1.15 or g_to - prev > cap + 1e-9):  # 1e-9: sums of 0.1 round
        out.append(g)
        prev, g = g, min(g * ratio, g + cap)
    return out


def _check_positive_int(name, v, minimum=1):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}.")
    return int(v)


@float64
def anbk(dataset, *, gamma0: float, beta: float, depth: int = 1, activation="relu",
         samples: Optional[int] = None, seed: int = 0, tol: float = 1e-2, max_iter: Optional[int] = None,
         init: Optional[ANBKResult] = None, callback: Optional[Callable] = None,
         method: str = "auto", rounds: Optional[int] = None,
         fallback_max_iter: Optional[int] = None) -> ANBKResult:
    """Solve the aNBK saddle point and return its kernel predictor.

    ``f(x) = Phi^L(x, X) (Phi^L + I/beta)^-1 y`` with the adaptive kernels of
    THEORY.md 3.1 (see the module docstring for the algorithm).

    Args:
      dataset: a :class:`akviz.Dataset` or ``(x_train, y_train, x_test, y_test)``.
      gamma0: feature-learning strength ``>= 0`` (0 is the NNGP).
      beta: inverse temperature ``> 0`` (ridge of the predictor is ``1/beta``).
      depth: hidden layers ``L >= 1``.
      activation: registered name or :class:`akviz.Activation`.
      samples: Monte Carlo samples per layer: draws per iteration for ``"ais"`` (default 131072,
        rounded up to whole batches of 131072, growing up to 8x where the noise needs it), chains
        for ``"mala"`` (default 8192), samples for ``"hs"`` (default 10240: 40 xi nodes x 256) and
        ``"is"`` (default 4096). With ``"auto"`` they go to the solver it picks; a MALA fallback
        uses its own default unless ``samples`` was given.
      seed: Monte Carlo seed.
      tol: saddle residual ``||Phi - <phi phi^T>|| / ||Phi||`` (fresh samples) to reach.
        Exact solver: ``min(tol, 1e-8)`` on its stationarity residuals (closed form; they measure float64
        rounding, 1e-15 to 1e-10 on digits 3-vs-8 up to ``gamma0 = 10``, ``beta = 10``, depth 6).
      max_iter: outer iterations (default 30; ``"ais"``: draws, default 8, the first solves and each
        later one checks the state and solves again; with ``"auto"`` at least 2; ``"mala"``: evaluate
        phases, default 3, each after a longer averaging phase that continues the Polyak average of
        the previous ones).
      init: a previous :class:`ANBKResult` on the same data and depth (warm start:
        kernels, duals, MALA chains or the importance sampler's ``a`` and proposal scales are
        reused; neighbouring ``gamma0`` values solve in a few iterations).
      callback: ``callback(iteration, state_dict)`` after each iteration (its ``history`` record);
        ``"mala"`` also calls it after every chunk of 24 rounds with ``{"iteration", "phase"
        ("relaxing", "averaging" or "evaluating"), "round", "seconds"}``. Returning ``False``
        stops; a stop before the first evaluation returns no kernels (``converged=False``).
      method: ``"auto"`` (``"exact"`` for linear; depth 1: ``"ais"``, then ``"mala"`` if the
        tilted density leaves its reach; depth >= 2: ``"mala"``), ``"exact"`` (linear only),
        ``"ais"`` (depth 1 only), ``"hs"``, ``"mala"`` or ``"is"``.
      rounds: ``"mala"`` only: Robbins-Monro rounds (each 4 MALA steps of every chain) of the
        first averaging phase and of each evaluation; the relaxing phase before them takes
        ``rounds`` (cold) or ``rounds // 2`` (warm). Default 96 cold, 48 warm (evaluation 96).
        Fewer rounds are faster and noisier: ``residual["mc_error"]`` says by how much (the
        dashboard's quick warm solves use this).
      fallback_max_iter: ``"auto"`` at depth 1 only: ``max_iter`` of the MALA fallback (default:
        ``max_iter`` as given, else MALA's own default). Lets a caller give importance sampling
        several cheap draws and the fallback a single, slower pass (the dashboard does).

    Never raises on non-convergence: see ``converged`` and ``message``.
    """
    start = time.perf_counter()
    gamma0, beta = float(gamma0), float(beta)
    if not math.isfinite(gamma0) or gamma0 < 0:
        raise ValueError(f"gamma0 must be a finite number >= 0, got {gamma0}.")
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta}.")
    depth = _check_positive_int("depth", depth)
    act = get_activation(activation)
    fallback = method == "auto"
    if method == "auto":
        method = "exact" if act.name == "linear" else "ais" if depth == 1 else "mala"
    samples_arg, max_iter_arg = samples, max_iter  # as given: a MALA fallback takes its own defaults
    samples = _check_positive_int("samples", _DEFAULT_SAMPLES.get(method, 2048) if samples is None else samples)
    max_iter = _check_positive_int("max_iter", _DEFAULT_MAX_ITER.get(method, 30) if max_iter is None else max_iter)
    if fallback and method == "ais":
        max_iter = max(max_iter, 2)  # one iteration to solve, one to check it on fresh draws
    if fallback_max_iter is not None:
        max_iter_arg = _check_positive_int("fallback_max_iter", fallback_max_iter)
    if rounds is not None:
        rounds = _check_positive_int("rounds", rounds)
        if rounds < _MIN_ROUNDS:
            raise ValueError(f"rounds must be >= {_MIN_ROUNDS} (one chain snapshot per {_MIN_ROUNDS} rounds), "
                             f"got {rounds}.")
    tol = float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}.")
    if method not in ("exact", "ais", "hs", "mala", "is"):
        raise ValueError(f"method must be 'auto', 'exact', 'ais', 'hs', 'mala' or 'is', got {method!r}.")
    if method == "ais" and depth != 1:
        raise ValueError("method='ais' solves depth 1 only (its proposal is built for the rank-one last-layer "
                         "tilt); use method='mala' for depth >= 2.")
    if method == "exact" and act.name != "linear":
        raise ValueError("method='exact' needs activation='linear' (Gaussian integrals); use 'mala'.")
    if method != "exact" and samples < 2 * _GROUPS:
        raise ValueError(f"samples must be >= {2 * _GROUPS} for Monte Carlo (standard errors need groups).")
    x_train, y_train, x_test, y_test = as_arrays(dataset)
    p = x_train.shape[0]
    x_all = np.concatenate([x_train, x_test])
    c_full = input_kernel(x_all)
    c = c_full[:p, :p]
    g2, inv_beta = gamma0**2, 1.0 / beta

    init_phis, init_state = None, None
    if init is not None:
        if not isinstance(init, ANBKResult):
            raise ValueError("init must be a previous ANBKResult (or None).")
        if init.kernels.shape == (depth, p, p) and init.activation == act.name:
            init_phis, init_state = np.array(init.kernels), init._state
    if method == "exact":
        sol = _solve_exact(c_full, y_train, p, g2, inv_beta, depth, min(tol, 1e-8), callback, start)
        phis, ms = sol["phis"], sol["ms"]
        full = _linear_full(c_full, ms, p) if sol["margin"] > 0 else None
        if full is None:
            full = [np.full((len(x_all),) * 2, np.nan) for _ in range(depth)]
        state = {"chains": None, "ms": np.array(ms)}
        final = None
    elif method == "ais":
        sol, phis, ms, final, state, full = _run_ais(act, c_full, x_all, y_train, p, gamma0, beta, samples,
                                                     seed, tol, max_iter, init, callback, start)
        if fallback and sol["beyond_reach"]:  # auto: persistent MALA chains reach further (THEORY.md 3.4)
            tried = sol
            method = "mala"
            samples = _DEFAULT_SAMPLES["mala"] if samples_arg is None else samples
            sol, phis, ms, final, state, full = _run_mcmc(
                act, c_full, c, x_train, y_train, p, gamma0, beta, depth, samples, seed, tol,
                _DEFAULT_MAX_ITER["mala"] if max_iter_arg is None else max_iter_arg, init, callback, start, rounds)
            sol["message"] = (f"{sol['message']} (MALA, after adaptive importance sampling gave up: "
                              f"{tried['message']})")
            sol["history"] = [dict(h, solver="ais") for h in tried["history"]] + list(sol["history"])
    elif method == "hs":
        sol, phis, ms, final, state, full = _run_hs(act, c_full, c, x_train, y_train, p, gamma0, beta, depth,
                                                    samples, seed, tol, max_iter, init, callback, start)
    elif method == "mala":
        sol, phis, ms, final, state, full = _run_mcmc(act, c_full, c, x_train, y_train, p, gamma0, beta, depth,
                                                      samples, seed, tol, max_iter, init, callback, start, rounds)
    else:
        if init_phis is None:
            lazy = lazy_kernels(x_train, depth=depth, activation=act)
            init_phis = np.stack(lazy.nngp)
        fns = _mc_functions(act, depth)
        pre_history = []
        g_init = init.gamma0 if init is not None and init_state is not None else 0.0
        for k, g_step in enumerate(_continuation(g_init, gamma0)):
            # predictor steps: a couple of chain refreshes per intermediate gamma0 keep every
            # state inside the normalisable set (the lazy start is not, at larger gamma0)
            sol = _solve_mc(fns, c, y_train, g_step**2, inv_beta, depth, samples, method, int(seed) + 1000 * k,
                            init_phis, init_state, 1e-300, 2, None, start)
            init_phis, init_state = np.array(sol["phis"]), sol["state"]
            for h in sol["history"]:
                pre_history.append(dict(h, gamma0=g_step))
            if not np.isfinite(init_phis).all() or (sol["message"] and "normalise" in sol["message"]) or \
                    "ran away" in sol["message"]:
                break
        sol = _solve_mc(fns, c, y_train, g2, inv_beta, depth, samples, method, int(seed), init_phis,
                        init_state, tol, max_iter, callback, start)
        sol["history"] = pre_history + [dict(h, gamma0=gamma0) for h in sol["history"]]
        phis, ms, final, state = np.array(sol["phis"]), sol["ms"], sol["final"], sol["state"]
        full = _full_kernels_mc(fns, act, phis, c_full, p, final, int(seed)) if final else \
            [np.full((len(x_all),) * 2, np.nan) for _ in range(depth)]
    phis = np.stack(phis)
    full = np.stack(full)
    if method == "exact":
        full[:, :p, :p] = phis
    if np.isfinite(phis[-1]).all() and np.isfinite(full[-1, p:, :p]).all():
        train_pred, test_pred = kernel_ridge(full[-1, :p, :p], full[-1, p:, :p], y_train, inv_beta)
        metrics = score(train_pred, test_pred, y_train, y_test)
    else:  # no valid kernel (e.g. non-normalisable tilt): no predictions either
        train_pred, test_pred = np.full(p, np.nan), np.full(len(x_all) - p, np.nan)
        metrics = score(np.zeros(p), np.zeros(len(x_all) - p), y_train, y_test)._replace(
            test_loss=float("nan"), train_loss=float("nan"), test_error=float("nan"))
    duals = -np.stack(ms)
    res = {"phi": [float(r) for r in sol["res_phi"]], "dual": [float(r) for r in sol["res_dual"]],
           "mc_error": [float(r) for r in sol["mc_error"]]}
    res["max"] = float(max(res["phi"]))
    action, action_err = _action(phis, duals, y_train, g2, inv_beta, sol.get("log_z"), sol.get("log_z_error"))
    return ANBKResult(
        kernels=phis, kernels_full=full, duals=duals,
        train_predictions=train_pred, test_predictions=test_pred,
        test_loss=metrics.test_loss, train_loss=metrics.train_loss, test_error=metrics.test_error,
        alignment=[_alignment(q, y_train) if np.isfinite(q).all() else float("nan") for q in phis],
        converged=bool(sol["converged"]), iterations=int(sol["iterations"]), residual=res,
        ess=[float(e) for e in sol["ess"]], action=float(action), action_mc_error=action_err,
        history=sol["history"],
        message=sol["message"], seconds=time.perf_counter() - start,
        gamma0=gamma0, beta=beta, depth=depth, activation=act.name, samples=int(sol.get("samples", samples)),
        method=method, seed=int(seed),
        barrier=float(sol.get("barrier", float("nan"))), basin=sol.get("basin"),
        _state=dict(state, final=final, c_full=c_full, p=p),
    )


def _run_mcmc(act, c_full, c, x_train, y_train, p, gamma0, beta, depth, samples, seed, tol, max_iter, init,
              callback, start, rounds=None):
    """Persistent-chain stochastic approximation (akviz.anbk_mcmc); warm start from ``init`` when compatible."""
    st = init._state if init is not None else None
    mc = st.get("mcmc") if st else None
    if mc is not None and init.depth == depth and init.activation == act.name and mc.get("beta") == beta \
            and np.isfinite(mc["phis"]).all():
        init_state, g_from = mc, float(init.gamma0)
    elif init is not None and init.depth == depth and init.activation == act.name and init.beta == beta \
            and init.converged and init.kernels.shape[-1] == len(y_train):
        # another solver's saddle (e.g. "ais" before its reach ended): its kernels, chains from the prior
        init_state, g_from = {"phis": np.array(init.kernels)}, float(init.gamma0)
    else:
        init_state, g_from = {"phis": np.stack(lazy_kernels(x_train, depth=depth, activation=act).nngp)}, 0.0
    sol = _mcmc.solve(act, c, y_train, gamma0, beta, depth, samples, int(seed), tol, max_iter, init_state,
                      callback, start, g_from, rounds=rounds)
    phis, ms, final = np.array(sol["phis"]), sol["ms"], sol["final"]
    n = c_full.shape[0]
    if final is not None:
        fns = _mc_functions(act, depth)
        full = _full_kernels_mc(fns, act, phis, c_full, p, final, int(seed))
    else:
        full = [np.full((n, n), np.nan) for _ in range(depth)]
    state = {"chains": None, "ms": np.array(ms), "mcmc": sol["state"]}
    return sol, phis, ms, final, state, full


def _run_ais(act, c_full, x_all, y_train, p, gamma0, beta, samples, seed, tol, max_iter, init, callback, start):
    """Adaptive importance sampling (akviz.anbk_ais), depth 1; warm start from any compatible ``init``."""
    a0, tau0, g_from, refit0 = None, None, 0.0, None
    if init is not None and init.depth == 1 and init.activation == act.name and init.beta == beta \
            and init.kernels.shape[-1] == p and np.isfinite(init.kernels).all():
        st = (init._state or {}).get("ais")
        if st is not None:
            a0, tau0, refit0 = st["a"], st["tau"], st.get("refit")
        else:  # another solver's kernels: the saddle's a follows from them
            a0 = np.linalg.solve(init.kernels[-1] + np.eye(p) / beta, y_train)
        g_from = float(init.gamma0)
    # train+test NNGP: the start without init, and the control variates' exact means
    nngp = np.asarray(lazy_kernels(x_all, depth=1, activation=act).nngp[0])
    if a0 is None:
        a0 = np.linalg.solve(nngp[:p, :p] + np.eye(p) / beta, y_train)
    sol = _ais.solve_ais(act, c_full, p, y_train, gamma0, beta, samples, int(seed), tol, max_iter, a0, tau0,
                         g_from, callback, start, functools.partial(_continuation, ratio=2.0, max_step=AIS_MAX_STEP),
                         ESS_FLOOR, prior=nngp, refit0=refit0)
    phis, ms, final, full = sol["phis"], sol["ms"], sol["final"], sol["full"]
    state = {"chains": None, "ms": np.array(ms), "ais": sol["state"]}
    return sol, phis, ms, final, state, full


def _run_hs(act, c_full, c, x_train, y_train, p, gamma0, beta, depth, samples, seed, tol, max_iter, init,
            callback, start):
    """Hubbard-Stratonovich solver (akviz.anbk_hs); warm start from ``init`` when compatible."""
    x0 = modes0 = None
    g_from = 0.0
    st = init._state if init is not None else None
    hs = st.get("hs") if st else None
    if hs is not None and init.converged and hs.get("x") is not None and hs.get("beta") == beta \
            and init.depth == depth \
            and init.activation == act.name and len(hs["x"]) == (depth - 1) * p * p + p:
        x0, modes0, g_from = hs["x"], hs.get("modes"), float(init.gamma0)
    if x0 is None:
        lazy = lazy_kernels(x_train, depth=depth, activation=act).nngp
        a0 = np.linalg.solve(lazy[-1] + np.eye(p) / beta, y_train)
        x0 = np.concatenate([np.asarray(q).ravel() for q in lazy[:-1]] + [a0])
    sol = _hs.solve_hs(act, c, y_train, gamma0, beta, depth, samples, int(seed), tol, max_iter, x0, modes0,
                       g_from, callback, start, functools.partial(_continuation, ratio=2.0))
    phis, ms, final = np.array(sol["phis"]), sol["ms"], sol["final"]
    n = c_full.shape[0]
    if final is not None:
        full = _hs.full_kernels(act, phis, c_full, p, final, int(seed))
    else:
        full = [np.full((n, n), np.nan) for _ in range(depth)]
    state = {"chains": None, "ms": np.array(ms), "hs": dict(sol["state"], beta=beta)}
    return sol, phis, ms, final, state, full


def _action(phis, duals, y, g2, inv_beta, log_zs=None, log_z_errors=None):
    """The action ``S`` at the state (``akviz.anbk_action``) and its Monte Carlo error from the solver's ``ln Z_l``
    and their errors: exact for the linear network (``ln(x) / 2``, ``_linear_scalar``), else estimates (importance
    sampling: ``"ais"``, ``"is"``; stepping stones: ``"mala"``; the ``xi`` quadrature: ``"hs"``); NaN where the
    solver has none (a failed solve) or its ``ln Z`` is NaN (a tilted density that does not normalise)."""
    if log_zs is None:
        return float("nan"), float("nan")
    return saddle_action(phis, duals, y, g2, inv_beta, log_zs), action_error(log_z_errors)


# ---------------------------------------------------------------- preactivation densities


@float64
def preactivation_samples(result: ANBKResult, layer: int, points, *, split: str = "train",
                          prior_samples: Optional[int] = None, seed: int = 0) -> dict:
    """Samples of ``h^l`` at chosen points under the tilted density and under the prior.

    Args:
      result: an :class:`ANBKResult`.
      layer: ``1..L``.
      points: indices into the train (or test) inputs.
      split: ``"train"`` or ``"test"``.

    Returns a dict with ``tilted`` (``(S, k)`` samples), ``weights`` (``(S,)``,
    summing to 1: the tilted density is ``sum_s w_s delta(h - h_s)``),
    ``prior`` (``(S', k)`` samples of ``N(0, Phi^{l-1})`` at those points,
    equal weights) and ``ess``. For the exact linear solver the tilted samples
    are drawn from the exact Gaussian (equal weights).
    """
    depth = result.depth
    if not isinstance(layer, (int, np.integer)) or not 1 <= layer <= depth:
        raise ValueError(f"layer must be in 1..{depth}, got {layer!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    st = result._state
    p = st["p"]
    n = st["c_full"].shape[0]
    idx = np.atleast_1d(np.asarray(points, dtype=int))
    limit = p if split == "train" else n - p
    if idx.size == 0 or idx.min() < 0 or idx.max() >= limit:
        raise ValueError(f"points must be indices in 0..{limit - 1} of the {split} inputs.")
    cols = idx if split == "train" else idx + p
    prior_k = st["c_full"] if layer == 1 else result.kernels_full[layer - 2]
    rng = np.random.default_rng(seed)
    n_prior = int(prior_samples or result.samples)
    kp = prior_k[np.ix_(cols, cols)]
    lp = _np_sqrt_pinv(kp)[0]
    prior = rng.standard_normal((n_prior, idx.size)) @ lp
    final = st.get("final")
    if final is None and result.method != "exact":
        raise ValueError(f"no tilted density to sample (the solve did not converge): {result.message}")
    if final is None:  # exact linear: the tilted density is the Gaussian N(0, Phi^l)
        post_k = result.kernels_full[layer - 1][np.ix_(cols, cols)]
        tilted = rng.standard_normal((n_prior, idx.size)) @ _np_sqrt_pinv(post_k)[0]
        w = np.full(n_prior, 1.0 / n_prior)
    else:
        u = np.asarray(final["pool"][layer - 1])
        w = np.asarray(final["w"][layer - 1])
        r, rinv = _np_sqrt_pinv(prior_k[:p, :p], _mcmc.prior_cutoff(layer - 1))
        if split == "train":
            tilted = u @ r[:, idx]
        else:
            b = prior_k[cols][:, :p] @ rinv
            cond = prior_k[np.ix_(cols, cols)] - b @ b.T
            tilted = u @ b.T + rng.standard_normal((u.shape[0], idx.size)) @ _np_sqrt_pinv(cond)[0]
    return {"tilted": tilted, "weights": w, "prior": prior, "ess": float(1.0 / (np.sum(w**2) * w.size)),
            "layer": int(layer), "points": idx, "split": split}


def preactivation_histogram(result: ANBKResult, layer: int, point: int, *, split: str = "train",
                            bins: int = 60, seed: int = 0) -> dict:
    """Histogram densities of ``h^l`` at one point: tilted (weighted) vs prior, on shared bin edges.

    Returns ``{"edges", "centers", "tilted", "prior", "prior_gaussian"}`` where
    ``prior_gaussian`` is the exact ``N(0, Phi^{l-1}_{mu mu})`` density at the centers.
    """
    s = preactivation_samples(result, layer, [point], split=split, seed=seed)
    t, pr, w = s["tilted"][:, 0], s["prior"][:, 0], s["weights"]
    lo = min(np.quantile(pr, 0.001), np.quantile(t, 0.001))
    hi = max(np.quantile(pr, 0.999), np.quantile(t, 0.999))
    edges = np.linspace(lo, hi, int(bins) + 1)
    dt, _ = np.histogram(t, edges, weights=w, density=True)
    dp, _ = np.histogram(pr, edges, density=True)
    centers = 0.5 * (edges[1:] + edges[:-1])
    var = float(np.var(pr)) if pr.size > 1 else 1.0
    st = result._state
    p = st["p"]
    col = point if split == "train" else point + p
    prior_k = st["c_full"] if layer == 1 else result.kernels_full[layer - 2]
    var = float(prior_k[col, col])
    gauss = np.exp(-centers**2 / (2 * var)) / math.sqrt(2 * math.pi * var) if var > 0 else np.zeros_like(centers)
    return {"edges": edges, "centers": centers, "tilted": dt, "prior": dp, "prior_gaussian": gauss}


__all__ = ["ANBKResult", "anbk", "preactivation_samples", "preactivation_histogram", "ESS_FLOOR"]
