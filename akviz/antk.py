"""Adaptive NTK (aNTK): DMFT of gradient flow with weight decay (THEORY.md section 4).

Two-layer network (``depth=1``), trained by ``d theta/dt = -gamma0^2 N grad L - lambda theta``.
At infinite width each hidden neuron is one sample of ``(h(.), z)`` (its
preactivation on every train and test input and its readout weight):

    dh_mu/dt = gamma0 sum_{nu in train} C_{mu nu} Delta_nu phi'(h_nu) z - lambda h_mu
    dz/dt    = gamma0 sum_{nu in train} Delta_nu phi(h_nu) - lambda z
    f_mu     = <z phi(h_mu)> / gamma0,     Delta = y - f  (train)

with ``h ~ N(0, C)``, ``z ~ N(0, 1)`` at ``t = 0``. ``S`` neurons are sampled in
antithetic pairs ``(h, z), (h, -z)`` so ``f(0) = 0`` exactly, as at infinite
width. At the fixed point (``lambda > 0``)

    h = (gamma0/lambda) z C(., X)(Delta * phi'(h_X)),   z = (gamma0/lambda) Delta . phi(h_X)

so ``f(x) = Phi(x, X)(Phi + lambda I)^-1 y`` (feature form) and, for positively
homogeneous ``phi`` (relu, linear), ``f(x) = K(x, X)(K + 2 lambda I)^-1 y`` with
the adaptive NTK ``K = Phi + G * C``, ``G = <g g^T>``, ``g = phi'(h) z``.

Integrator (one step of size ``dt``, ``a = exp(-lambda dt)``, ``b = (1 - a)/lambda``):

* exponential Euler for the ``-lambda`` decay, so a step of any size is exact
  for the decay and the step map's fixed points are exactly the DMFT fixed
  points; with ``dt -> infinity`` the step becomes the plain fixed-point map and
  for finite ``dt`` it is the damped fixed-point iteration with damping
  ``1 - a``;
* the readout error ``Delta`` over the step is implicit: the stiff direction of
  the flow is the error decaying through the NTK (rate up to ``lambda_max(K)``,
  ~10^2 here, against the ``lambda`` of the features), so ``Delta`` is solved
  from ``D = y - f(state after the step driven by D)`` by one Newton step with
  the step's Jacobian ``b (Phi_mixed + C * G_mixed)`` (a ``P x P`` solve);
* relu's kink: neurons whose preactivation on a training point is driven back
  onto ``h = 0`` from both sides slide along it (Filippov). Each step picks
  ``phi'(h_mu)`` per neuron and point from ``{0, 1}`` or, when sliding, the
  fraction that keeps ``h_mu`` at 0, instead of flipping the sign every step;
  the fraction is what ``G`` uses, which makes the NTK form exact for relu too;
* adaptive ``dt``: the relative change of ``h``, ``z`` and ``f`` per step is
  kept near ``rtol``, up to ``lambda dt = -ln(1 - 0.6)`` (damping 0.6, where
  the iteration is fastest and still stable), so the transient is resolved
  and the approach to the fixed point takes a few hundred steps, not 10^5.

The hot loop is one ``jax.lax.while_loop`` per recorded chunk, jit-compiled,
vectorised over neurons, in float64.

Fixed-point phase (``fixed_point_after``, default after 300 integrator steps from the initialisation
and after one chunk of 25 from a warm start): the dynamics above are gradient flow on the energy

    E = S gamma0^2 |y - f(X)|^2 / 2 + lambda sum_i (|w_i|^2 + z_i^2) / 2,   h_i = w_i . x / sqrt(D)

(``dw/dt = -dE/dw``, ``dz/dt = -dE/dz`` give the equations above), so the DMFT's fixed points are
the stationary points of ``E`` over the population. L-BFGS (:mod:`akviz.lbfgs`) minimises it from
the integrator's population, in coordinates of the training span (``h = c B^T``, the component
outside it only decays and is set to its fixed-point value 0), checking the feature-form gap and
the residual every 50 iterations (compact form; energy and gradient 1.5 ms, an iteration 6.3 ms on
the default problem). relu's energy has a kink where a preactivation
crosses 0, and at the fixed point neurons sit there (sliding); plain L-BFGS zig-zags on it and
stalls (gap 1.4e-4, residual 0.30 after 2000 iterations on the default problem). So for relu the
phase is a continuation through :func:`smoothed_relu` (the kink rounded off by a parabola of width
``4 / beta``), ``beta`` = 100 ... 30000 (``RELU_SMOOTHING``), each stage warm from the last, with
relu's own gap and residual checked throughout; the residual and ``G`` use its derivative, which is
``1[h > 0]`` away from the kink and a sliding neuron's fraction on it (the integrator's Filippov
selection). Until December 2026 the smoothing was ``softplus(beta h) / beta``: same curvature at 0,
about the same iterations, but its exponentials made the energy 3x slower to evaluate. Measured on a 2-core
AMD EPYC (digits 3-vs-8, P=100 + 200 test, S=4000, gamma0=1, lambda=0.1):

* tanh converges (gap 3.5e-7, residual 7.0e-5) after 300 steps and 400 iterations in 8.5 s cold;
  warm from gamma0=1 at 1.1, 25 steps and 100 iterations, 3.9 s (the integrator alone had residual
  0.16 after 1000 steps, 0.020 after 4000);
* relu reaches the 1e-4 agreement (``tol=1e-4``: gap 7.1e-5, NTK-form gap 6.8e-4, residual 0.016)
  after 300 steps and 383 iterations in 6.0-6.5 s cold, and in 3.9-4.4 s warm at 1.1; with the
  default ``tol`` all 2000 iterations give gap 1.4e-5, residual 0.015, NTK-form gap 4.5e-4 in 27 s
  (warm at 1.1: gap 7.3e-6, 22 s). ``benchmarks/bench_antk.py`` (gamma0 0.5 / 1 / 2, lambda 0.01 /
  0.1, ``tol=1e-4``): converged in all six cases, 6.0-10.5 s cold and 3.9-4.6 s warm; forward
  Euler at step 1e-3 given 20 times the cold time (121-212 s, 30k-52k steps) reached the 1e-4
  agreement in none (gap 1.1e-3 to 2.7e-3). The integrator alone stalls near 1e-3 (residual 0.3-2).
  On the small problem of the tests (30 + 20 points, S=400) the relu fixed-point equations hold to
  4.5e-4 with that selection (measured with the softplus smoothing).

Status (issue 4): linear converges to machine precision and matches the closed-form
fixed point; tanh converges to its fixed point, and relu to the 1e-4 feature-form agreement,
through the fixed-point phase above (relu's residual stays ~1e-2 at the default size). Without
that phase (``fixed_point_after=None``), for
relu the integrator's feature-form gap stalls near 1e-3 and the per-neuron residual
``result.residual`` stays O(0.1): the population is *not* at its fixed point
(slow exchange of mass between neuron clusters, neurons sliding on the kink);
read ``result.residual`` as the stricter convergence measure (the feature-form gap
tests only the stationarity of ``z``, ``residual_tol=`` requires both). Running the integrator
longer does not help (P = 30,
S = 400, gamma0 = 1, lambda = 0.1): with the default ``rtol`` the large steps
keep the population stirred, 1500 -> 24000 steps (t = 1.6e3 -> 2.6e4) move the
gap 3e-3 -> 1e-2 and the residual 0.29 -> 0.87; with ``rtol = 0.00125`` the
residual stays ~0.03 but the test loss still drifts, 0.1032 -> 0.0994 ->
0.0959 at t = 200 / 800 / 3200.

Why relu is slow, and where its fixed point is: with ``h = w . x / sqrt(D)``
the weight decay balances every surviving neuron (``|w| = |z|``) and the fixed
point is the minimiser of the lasso ``1/2 |y - f(X)|^2 + (lambda/gamma0) sum_k
|c_k|`` over ``f = sum_k c_k relu(theta_k . x / sqrt(D))`` (the gradient-flow
energy in mean-field variables): surviving neurons sit where
``|sum_nu Delta_nu relu(theta . x_nu)| = lambda / gamma0``, all others decay at a rate
that vanishes near those directions, so the DMFT approaches the sparse
minimiser only algebraically (the fixed-point phase's test loss, 0.0978-0.0985 at gamma0=1 on
the default problem, is near that network's). Solving that lasso directly (atoms slid by
L-BFGS, new atoms from a multi-start search; not in this package yet) gave,
on digits 3-vs-8, P=100, gamma0=1, lambda=0.1, test MSE 0.0974-0.0981 against
0.0973 for a width-4096 network trained to t=1000, but runs with different
searches stopped at lasso objectives 0.1-0.2% apart whose test predictions
differ by 0.011-0.015 RMS: the multi-start search misses directions that
would still grow, so it cannot yet certify the fixed point.

How close relu's predictions are to the fixed point (digits 3-vs-8, P=100 + 200 test, S=4000;
distances are relative norms of the test predictions, measured against solves of 3000 iterations at
``tol=1e-7``: at lambda=0.1, gamma0=1.1 warm from gamma0=1, gap 2.4e-6, residual 2.6e-3, test MSE
0.0977):

* the fixed point itself is well determined: two cold solves of 3000 iterations, seeds 0 and 1,
  land 0.21% and 0.14% from it (softplus smoothing);
* the feature-form gap is a weak test for relu. ``tol=1e-4`` solves: at lambda=0.1 cold at
  gamma0=1 0.91% away, warm at 1.1 0.60% (the gamma0=1 solution itself 0.91%); at lambda=0.01
  1.54% and 1.03%. With the default ``tol`` (2000 iterations): 0.53% cold, 0.19% warm. Where the
  stop falls matters: fewer iterations per smoothing stage leave the predictions nearer the
  neighbour's (warm at 1.1 with 50 / 100 / 150 / 200 / 333 iterations a stage, stopped by ``tol``
  after 100 / 200 / 200 / 250 / 383: 0.93% / 0.85% / 0.78% / 0.71% / 0.57%, softplus smoothing);
* with the softplus smoothing: the full continuation with a fixed budget, 500 / 1000 / 2000
  iterations, gave 0.93-0.94% / 0.64-0.70% / 0.18-0.33% (L-BFGS memory 5-20); starting the
  continuation at ``beta`` = 300, 1000 or 3000 instead of 100 leaves it in the neighbour's basin
  (0.76-0.97% after 500-1000 iterations);
* the dashboard (``tol=1e-4``, at most 2000 iterations): the numbers above; a chain of ten warm
  solves 1.0 -> 1.5 in steps of 0.05 with its earlier budget (500 iterations) ended 0.43% from a
  tight solve, and between gamma0 = 1 and 1.5 the tight predictions move 1.5%;
* what is slow: the directions of the surviving neurons. A lasso over the population's own
  directions (``mu = lambda / gamma0``, module docstring above; 3000 FISTA iterations, 0.9 s) moves
  a ``tol=1e-4`` solve only from 0.56% to 0.46-0.55% (20000 / 3000 iterations), but continuing the
  smoothing on its ~700 active neurons alone (the others set to their fixed-point value 0) reaches
  0.17-0.26% in 750-1000 further iterations. Not adopted: neurons set to 0 never revive in a later
  warm start, and from the neighbour's population it reached only 0.51%.

Depth ``>= 2`` (THEORY.md 4.3) is **EXPERIMENTAL**: see :mod:`akviz.antk_deep`
(validated against the closed-form fixed point of the linear activation at
depth 2; depth 3 does not converge yet).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._precision import float64
from .export import json_number
from .activations import get_activation
from .data import as_arrays
from .kernels import input_kernel, lazy_kernels
from . import lbfgs
from .regression import alignment as _alignment
from .regression import classification_error, kernel_ridge, mse

#: Damping ``1 - exp(-lambda dt_max)`` of the largest step (fixed-point regime).
MAX_DAMPING = 0.6
#: Most snapshots kept; beyond it every other one is dropped (first and last kept).
MAX_SNAPSHOTS = 48
#: Integrator steps after which the quasi-Newton fixed-point phase takes over (depth 1): from the
#: random initialisation, and from a warm start (already near a fixed point: one chunk of steps).
FIXED_POINT_AFTER = 300
FIXED_POINT_AFTER_WARM = 0
#: Most L-BFGS iterations of the fixed-point phase.
FIXED_POINT_ITERATIONS = 2000
#: L-BFGS iterations between the fixed-point phase's convergence checks.
FIXED_POINT_CHUNK = 50
#: relu's fixed-point phase: sharpness ``beta`` of :func:`smoothed_relu` in turn,
#: each stage warm from the one before (its share of the iterations: equal).
RELU_SMOOTHING = (100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
#: Relative eigenvalue cutoff of the input kernel's square root (C is singular when P + Q > D).
EIG_CUTOFF = 1e-10


@dataclasses.dataclass
class ANTKResult:
    """aNTK solution (scipy.optimize-style result object).

    Kernels on train+test are ``(P+Q, P+Q)`` with the training block first.

    Attributes:
      Phi, G, K: fixed-point feature kernel ``<phi(h) phi(h)^T>``, gradient
        kernel ``<g g^T>`` (``g = phi'(h) z``) and adaptive NTK ``Phi + G * C``
        of the last hidden layer.
      C: input kernel on train+test.
      kernels: per-layer ``Phi^l`` on train, ``(L, P, P)``.
      kernels_full: per-layer ``Phi^l`` on train+test, ``(L, P+Q, P+Q)``.
      gradient_kernels_full: per-layer ``G^l`` on train+test, ``(L, P+Q, P+Q)``.
      train_predictions, test_predictions: DMFT output ``<z phi(h)>/gamma0``.
      feature_train_predictions, feature_test_predictions: ``Phi(x,X)(Phi+lambda I)^-1 y``.
      ntk_train_predictions, ntk_test_predictions: ``K(x,X)(K+2 lambda I)^-1 y``.
      test_loss, train_loss, test_error: of the DMFT output.
      test_loss_feature_form, test_loss_ntk_form: of the two kernel predictors.
      feature_gap, ntk_gap: ``|f_form - f_DMFT| / |f_DMFT|`` on the test points.
      alignment: per-layer kernel-target alignment of ``Phi^l`` on train.
      ntk_alignment: alignment of ``K`` on train.
      lazy_ntk_*, lazy_nngp_*: lazy baselines from the init kernels: NTK ridge
        ``(L+1) lambda`` and NNGP ridge ``lambda`` (predictions and test losses).
      times, trajectory_train_loss, trajectory_residual, step_sizes: per step.
      record_times, record_test_loss, record_train_loss, record_alignment,
      snapshots_phi, snapshots_g: at recorded steps, ``snapshots_*`` of shape
        ``(R, P+Q, P+Q)`` (last layer) for animating the convergence.
      converged, iterations (accepted integrator steps plus L-BFGS iterations), residual
        (relative fixed-point residual ``max(|h - T_h|/|h|, |z - T_z|/|z|)``), message, seconds.
      fixed_point_iterations, fixed_point_history: L-BFGS iterations of the fixed-point phase
        (depth 1) and, every 50 of them, a dict of ``iteration``, ``energy`` (``E / S``),
        ``feature_gap`` and ``residual``.
      gamma0, weight_decay, depth, activation, samples, seed, final_time.
      state: the neuron population (for ``init=`` warm starts).
    """

    Phi: np.ndarray
    G: np.ndarray
    K: np.ndarray
    C: np.ndarray
    kernels: np.ndarray
    kernels_full: np.ndarray
    gradient_kernels_full: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray
    feature_train_predictions: np.ndarray
    feature_test_predictions: np.ndarray
    ntk_train_predictions: np.ndarray
    ntk_test_predictions: np.ndarray
    test_loss: float
    train_loss: float
    test_error: float
    test_loss_feature_form: float
    test_loss_ntk_form: float
    feature_gap: float
    ntk_gap: float
    alignment: list
    ntk_alignment: float
    lazy_ntk_test_predictions: np.ndarray
    lazy_nngp_test_predictions: np.ndarray
    lazy_ntk_test_loss: float
    lazy_nngp_test_loss: float
    lazy_ntk_ridge: float
    lazy_nngp_ridge: float
    times: np.ndarray
    trajectory_train_loss: np.ndarray
    trajectory_residual: np.ndarray
    step_sizes: np.ndarray
    record_times: np.ndarray
    record_test_loss: np.ndarray
    record_train_loss: np.ndarray
    record_alignment: np.ndarray
    snapshots_phi: np.ndarray
    snapshots_g: np.ndarray
    converged: bool
    iterations: int
    residual: float
    message: str
    seconds: float
    gamma0: float
    weight_decay: float
    depth: int
    activation: str
    samples: int
    seed: int
    final_time: float
    state: Any = dataclasses.field(default=None, repr=False)
    fixed_point_iterations: int = 0
    fixed_point_history: list = dataclasses.field(default_factory=list)

    @property
    def success(self) -> bool:
        """Alias of ``converged`` (scipy.optimize naming)."""
        return self.converged

    def to_json_dict(self) -> dict:
        """Scalars and per-layer lists only, JSON-serialisable (NaN becomes None)."""

        num = json_number

        return {
            "method": "antk",
            "converged": bool(self.converged),
            "iterations": int(self.iterations),
            "residual": num(self.residual),
            "message": self.message,
            "test_loss": num(self.test_loss),
            "test_loss_feature_form": num(self.test_loss_feature_form),
            "test_loss_ntk_form": num(self.test_loss_ntk_form),
            "train_loss": num(self.train_loss),
            "test_error": num(self.test_error),
            "feature_gap": num(self.feature_gap),
            "ntk_gap": num(self.ntk_gap),
            "alignment": [num(a) for a in self.alignment],
            "ntk_alignment": num(self.ntk_alignment),
            "lazy_ntk_test_loss": num(self.lazy_ntk_test_loss),
            "lazy_nngp_test_loss": num(self.lazy_nngp_test_loss),
            "gamma0": float(self.gamma0),
            "weight_decay": float(self.weight_decay),
            "depth": int(self.depth),
            "activation": self.activation,
            "samples": int(self.samples),
            "seed": int(self.seed),
            "final_time": num(self.final_time),
            "fixed_point_iterations": int(self.fixed_point_iterations),
            "seconds": num(self.seconds),
        }


# ----------------------------------------------------------------- validation


def _check_positive(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}.")
    return value


def _check_int(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


# ----------------------------------------------------------- depth-1 dynamics


class _State(NamedTuple):
    A: jnp.ndarray      # (S, P) accumulated drive: h(t) = d h0 + A C(X, .)
    z: jnp.ndarray      # (S,) readout weights
    M: jnp.ndarray      # (S, P) phi'(h_X) in use (relu: Filippov selection, may be fractional)
    hX: jnp.ndarray     # (S, P) preactivations on the training inputs
    d: jnp.ndarray      # exp(-lambda t): weight of the initial preactivations h0
    delta: jnp.ndarray  # (P,) readout error y - f(X)
    t: jnp.ndarray
    dt: jnp.ndarray
    res: jnp.ndarray    # feature-form gap on train, |f_X - Phi Delta / lambda| / |f_X| (convergence test)
    hres: jnp.ndarray   # fixed-point residual of the features estimated from the last accepted step
    steps: jnp.ndarray  # accepted steps
    bad: jnp.ndarray    # True once the step size underflowed on non-finite values


class _Consts(NamedTuple):
    Cxx: jnp.ndarray
    diagC: jnp.ndarray
    y: jnp.ndarray
    gamma: jnp.ndarray
    lam: jnp.ndarray
    rtol: jnp.ndarray
    tol: jnp.ndarray
    htol: jnp.ndarray
    dt_max: jnp.ndarray
    t_max: jnp.ndarray


def _step(st: _State, c: _Consts, dt, phi, dphi, relu: bool):
    """One exponential-Euler step with implicit readout error; returns (state, error ratio, ok)."""
    S = st.z.shape[0]
    a = jnp.exp(-c.lam * dt)
    b = -jnp.expm1(-c.lam * dt) / c.lam
    bg = b * c.gamma
    m = st.M if relu else dphi(st.hX)
    F = phi(st.hX)
    D0 = st.delta
    # Predictor: the step driven by the current error.
    h1 = a * st.hX + (bg * st.z[:, None] * (D0[None, :] * m)) @ c.Cxx
    z1 = a * st.z + bg * (F @ D0)
    F1 = phi(h1)
    f1 = (z1 @ F1) / (c.gamma * S)
    # d f(after step)/d D: dz/dD = bg phi(h_X); dh/dD = bg z C(.,nu) m_nu.
    jac = b * ((F1.T @ F) / S + c.Cxx * (((z1[:, None] * dphi(h1)).T @ (st.z[:, None] * m)) / S))
    D = D0 + jnp.linalg.solve(jnp.eye(D0.shape[0]) + jac, c.y - f1 - D0)
    if relu:
        # Filippov selection of phi'(h_i,mu): own = effect of m_i,mu on h_i,mu itself.
        own = bg * st.z[:, None] * (D0 * c.diagC)[None, :]
        base = h1 - own * m
        hp, hm = base + own, base
        frac = hm / jnp.where(hm - hp != 0, hm - hp, 1.0)
        attract = jnp.where(hp >= 0, 1.0, jnp.where(hm <= 0, 0.0, frac))
        repel = jnp.where(hm > 0, 1.0, jnp.where(hp < 0, 0.0, (m >= 0.5).astype(m.dtype)))
        m_new = jnp.where(own < 0, attract, repel)
    else:
        m_new = m
    U = bg * st.z[:, None] * (D[None, :] * m_new)
    h2 = a * st.hX + U @ c.Cxx
    z2 = a * st.z + bg * (F @ D)
    F2 = phi(h2)
    f2 = (z2 @ F2) / (c.gamma * S)
    # Convergence test (THEORY 4.2): DMFT output vs feature form, f = Phi (y - f) / lambda on train.
    gap = jnp.linalg.norm(f2 - (F2.T @ (F2 @ (c.y - f2))) / (S * c.lam)) / jnp.maximum(jnp.linalg.norm(f2), 1e-300)
    omega = -jnp.expm1(-c.lam * dt)
    nh = jnp.linalg.norm(h2)
    nz = jnp.linalg.norm(z2)
    ch = jnp.linalg.norm(h2 - st.hX) / jnp.maximum(nh, 1e-300)
    cz = jnp.linalg.norm(z2 - st.z) / jnp.maximum(nz, 1e-300)
    cf = jnp.linalg.norm(f2 - (c.y - st.delta)) / jnp.maximum(jnp.linalg.norm(c.y), 1e-300)
    err = jnp.maximum(jnp.maximum(ch, cz), cf) / c.rtol
    hres = jnp.maximum(ch, cz) / omega
    new = _State(A=a * st.A + U, z=z2, M=m_new, hX=h2, d=a * st.d, delta=c.y - f2,
                 t=st.t + dt, dt=dt, res=gap, hres=hres, steps=st.steps + 1, bad=st.bad)
    ok = jnp.isfinite(err) & jnp.isfinite(nh) & jnp.isfinite(nz) & (nh < 1e150) & (nz < 1e150)
    return new, err, ok


@functools.lru_cache(maxsize=32)
def _chunk_runner(phi, dphi, relu: bool, chunk: int):
    """Jitted while_loop: up to ``chunk`` accepted steps, stopping at convergence / t_max / failure."""

    def run(st: _State, c: _Consts):
        tr_t = jnp.full((chunk,), jnp.nan)
        tr_loss = jnp.full((chunk,), jnp.nan)
        tr_res = jnp.full((chunk,), jnp.nan)
        tr_dt = jnp.full((chunk,), jnp.nan)
        start = st.steps

        def cond(carry):
            s, *_ = carry
            n = s.steps - start
            return (n < chunk) & ((s.res > c.tol) | (s.hres > c.htol)) & (s.t < c.t_max) & (~s.bad)

        def body(carry):
            s, tt, tl, trs, tdt, tries = carry
            dt = jnp.minimum(jnp.minimum(s.dt, c.dt_max), jnp.maximum(c.t_max - s.t, 1e-300))
            new, err, ok = _step(s, c, dt, phi, dphi, relu)
            accept = ok & (err <= 2.0)
            factor = jnp.where(ok, jnp.clip(0.9 / jnp.sqrt(jnp.maximum(err, 1e-12)), 0.2, 2.0), 0.1)
            next_dt = jnp.minimum(dt * factor, c.dt_max)
            i = s.steps - start
            kept = jax.tree_util.tree_map(lambda x, y: jnp.where(accept, x, y), new, s)
            kept = kept._replace(dt=next_dt)
            # Too many rejections in a row (non-finite at tiny steps): give up.
            tries = jnp.where(accept, 0, tries + 1)
            kept = kept._replace(bad=s.bad | (tries > 40))
            loss = 0.5 * jnp.sum(new.delta**2)
            tt = jnp.where(accept, tt.at[i].set(new.t), tt)
            tl = jnp.where(accept, tl.at[i].set(loss), tl)
            trs = jnp.where(accept, trs.at[i].set(new.hres), trs)
            tdt = jnp.where(accept, tdt.at[i].set(dt), tdt)
            return kept, tt, tl, trs, tdt, tries

        out = jax.lax.while_loop(cond, body, (st, tr_t, tr_loss, tr_res, tr_dt, jnp.asarray(0)))
        return out[:5]

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _observer(phi, dphi, relu: bool):
    """Jitted: kernels and DMFT output on train+test from the population."""

    def observe(A, z, M, d, h0, Cx_all, gamma):
        S, P = A.shape
        h = d * h0 + A @ Cx_all                       # (S, P+Q)
        g_deriv = dphi(h)
        if relu:
            g_deriv = g_deriv.at[:, :P].set(M)          # sliding fractions on the train block
        else:
            g_deriv = g_deriv.at[:, :P].set(dphi(h[:, :P]))
        F = phi(h)
        gz = g_deriv * z[:, None]
        Phi = F.T @ F / S
        G = gz.T @ gz / S
        f = (z @ F) / (gamma * S)
        return h, Phi, G, f

    return jax.jit(observe)


def _sample_population(C_full, samples, seed):
    """``samples`` neurons in antithetic pairs ``(h0, z0), (h0, -z0)``; h0 ~ N(0, C)."""
    w, V = np.linalg.eigh(0.5 * (C_full + C_full.T))
    R = V * np.sqrt(np.clip(w, 0.0, None))[None, :]
    key_h, key_z = jax.random.split(jax.random.PRNGKey(int(seed)))
    half = samples // 2
    u = jax.random.normal(key_h, (half, C_full.shape[0]), dtype=jnp.float64)
    z0 = jax.random.normal(key_z, (half,), dtype=jnp.float64)
    h0 = u @ jnp.asarray(R).T
    return jnp.concatenate([h0, h0]), jnp.concatenate([z0, -z0])


def population_coordinates(C_full, p):
    """Coordinates of the fixed-point phase: ``h(all) = c B^T``, ``h(X) = c B_X^T``, ``A = c Ainv``.

    ``C(X, all) = B_X B^T`` with ``B_X`` of full column rank ``k`` (the rank of ``C(X, X)``), so every
    population the dynamics can reach from ``d = 0`` is ``h = A C(X, .)`` with ``c = A B_X``; the
    component of the initial preactivations outside the training span only decays (its fixed-point
    value is 0) and is dropped. Returns ``(B_X (P, k), B (P+Q, k), Ainv (k, P))``.
    """
    w, V = np.linalg.eigh(0.5 * (C_full + C_full.T))
    keep = w > EIG_CUTOFF * max(w[-1], 1e-300)
    R = V[:, keep] * np.sqrt(w[keep])
    U, sx, Wt = np.linalg.svd(R[:p], full_matrices=False)
    k = sx > EIG_CUTOFF * max(sx[0], 1e-300)
    U, sx, Wt = U[:, k], sx[k], Wt[k]
    return U * sx, R @ Wt.T, (U / sx).T


def smoothed_relu(h, beta):
    """relu with its kink rounded off by a parabola: ``0`` below ``-eps``, ``h`` above ``eps``,
    ``(h + eps)^2 / (4 eps)`` between, ``eps = 2 / beta``.

    ``C^1`` with derivative :func:`smoothed_relu_deriv`, and within ``eps / 4`` of relu everywhere.
    It replaces ``softplus(beta h) / beta`` (same curvature ``beta / 4`` at 0): no exponential or
    logarithm to evaluate, which made the energy's value and gradient 3x slower (4.5 against 1.6 ms
    on the default problem).
    """
    eps = 2.0 / beta
    q = jnp.clip(h + eps, 0.0, 2.0 * eps)
    return q * q / (4.0 * eps) + jnp.maximum(h - eps, 0.0)


def smoothed_relu_deriv(h, beta):
    """Derivative of :func:`smoothed_relu`: ``clip((h + eps) / (2 eps), 0, 1)``, ``eps = 2 / beta``."""
    eps = 2.0 / beta
    return jnp.clip((h + eps) / (2.0 * eps), 0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _energy_value_and_grad(phi, smoothed: bool = False):
    """Value and gradient of the depth-1 energy per neuron, ``theta = (c.ravel(), z)``.

    ``E / S = gamma0^2 |y - f(X)|^2 / 2 + lambda (|c|^2 + |z|^2) / (2 S)``, ``f(X) = z . phi(c B_X^T) / (gamma0 S)``:
    the DMFT of the module docstring is gradient flow on ``E`` (in the metric ``C`` for ``h``), so its
    fixed points are the stationary points of ``E``. ``smoothed`` (relu): ``phi`` is replaced by
    :func:`smoothed_relu` of sharpness ``beta``, the last entry of ``args``.
    """

    def energy(theta, args):
        b_x, y, gamma, lam, beta = args
        k = b_x.shape[1]
        S = theta.shape[0] // (k + 1)
        c, z = theta[: S * k].reshape(S, k), theta[S * k:]
        h = c @ b_x.T
        f = (z @ (smoothed_relu(h, beta) if smoothed else phi(h))) / (gamma * S)
        return 0.5 * gamma**2 * jnp.sum((y - f) ** 2) + 0.5 * lam * (jnp.sum(c * c) + jnp.sum(z * z)) / S

    return jax.value_and_grad(energy)


def fixed_point_residual(h, z, m_x, f_x, y, C_full, gamma0, lam, phi):
    """``max(|h - T_h|/|h|, |z - T_z|/|z|)`` with ``T_h = (gamma0/lambda) z C(., X)(Delta * m_X)``, ``T_z = (gamma0/lambda) phi(h_X) . Delta``.

    ``m_x`` is ``phi'(h_X)`` (relu: the Filippov selection of the integrator, or ``1[h_X > 0]``).
    """
    p = y.shape[0]
    delta = y - f_x
    h_star = (gamma0 / lam) * ((z[:, None] * (delta[None, :] * m_x)) @ C_full[:p])
    z_star = (gamma0 / lam) * (np.asarray(phi(jnp.asarray(h[:, :p]))) @ delta)
    return max(np.linalg.norm(h - h_star) / max(np.linalg.norm(h), 1e-300),
               np.linalg.norm(z - z_star) / max(np.linalg.norm(z), 1e-300))


def interruption(start, max_seconds, report):
    """Why a running solve must stop now, else None: its wall-clock budget is spent (checked first),
    or ``report()`` (which runs the user's callback) returned True."""
    if max_seconds is not None and time.perf_counter() - start > max_seconds:
        return f"wall-clock budget max_seconds={max_seconds:g} s spent"
    if report() is True:
        return "stopped by callback"
    return None


def _status_message(*, finite, converged, stopped, t, max_time, iterations, max_steps, gap, residual, notes,
                    overflow):
    """The result's one-sentence account of how the run ended (shared with the deep solver)."""
    where = f"after {iterations} steps (t = {t:.4g}); feature-form gap {gap:.2e}, fixed-point residual {residual:.2e}"
    if not finite:
        message = overflow
    elif converged:
        message = f"converged {where}"
    elif stopped:
        message = f"not converged: {stopped} {where}"
    elif t >= max_time:
        message = f"not converged by max_time={max_time:g} {where}"
    elif iterations >= max_steps:
        message = f"not converged in max_steps={max_steps} {where}"
    else:
        message = f"not converged {where}"
    if notes:
        message += "; " + "; ".join(notes)
    return message


def _kernel_predict(k_full, y, ridge, p):
    """Ridge predictions on train and test; NaN (never an exception) for a non-finite kernel."""
    if not np.all(np.isfinite(k_full)):
        return np.full(p, np.nan), np.full(k_full.shape[0] - p, np.nan)
    return kernel_ridge(k_full[:p, :p], k_full[p:, :p], y, ridge)


def _rel_gap(a, b):
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / den) if den > 0 else float("nan")


@float64
def antk(dataset, *, gamma0: float, weight_decay: float, depth: int = 1, activation="relu",
         samples: int = 4000, seed: int = 0, tol: float = 1e-6, max_time: Optional[float] = None,
         residual_tol: Optional[float] = None, max_steps: int = 4000, max_seconds: Optional[float] = None, rtol: float = 0.02,
         init: Optional[ANTKResult] = None, record_every: int = 25,
         callback: Optional[Callable[[dict], Any]] = None,
         fixed_point_after: Any = "auto",
         fixed_point_iterations: int = FIXED_POINT_ITERATIONS) -> ANTKResult:
    """Adaptive NTK of a network trained by gradient flow with weight decay (THEORY.md 4).

    Depth 1 simulates the single-site DMFT of THEORY.md 4.1 to its fixed point
    (module docstring: integrator); depth ``>= 2`` solves the fixed-point
    equations of THEORY.md 4.3 (**experimental**, see :mod:`akviz.antk_deep`).

    Args:
      dataset: a :class:`akviz.Dataset` or ``(x_train, y_train, x_test, y_test)``.
      gamma0: feature-learning strength ``> 0``.
      weight_decay: ``lambda > 0``.
      depth: hidden layers ``L >= 1``.
      activation: registered activation name.
      samples: neurons ``S >= 2`` (rounded up to even: antithetic pairs).
      seed: random seed of the initial population.
      tol: converged when DMFT output and feature form agree to ``tol`` (relative,
        train+test): the convergence test of THEORY.md 4.2.
      residual_tol: optionally also require the features' fixed-point residual
        ``max(|h - T_h(h,z)|/|h|, |z - T_z|/|z|)`` below it (the NTK form needs it). The gap
        alone tests the stationarity of ``z``, which L-BFGS reaches before that of ``h``:
        measured (relu, default problem), a warm start from gamma0 = 1 at 1.1 that began the
        smoothing at its sharp end met ``tol=1e-4`` after 50 iterations (2-4 s) with its test
        predictions still 0.8-1.3% from the converged ones, as far as the neighbour's.
        Depth ``>= 2`` always requires it (default ``sqrt(tol)``).
      max_time: training-time horizon ``t`` (default ``1e4 / lambda``).
      max_steps: most accepted integrator steps.
      max_seconds: optional wall-clock budget.
      rtol: relative change of ``h``, ``z``, ``f`` per step the step size aims at.
      init: a previous :class:`ANTKResult` on the same data and samples: its
        population, rescaled by ``sqrt(gamma0 / gamma0_prev)`` (exact for
        degree-1 homogeneous ``phi``: keeps ``f``), is the starting point
        (continuation along ``gamma0`` / ``lambda``). Ignored, with a note in
        ``message``, when incompatible.
      record_every: steps between snapshots of the kernels.
      callback: called with a dict (``time``, ``step``, ``train_loss``,
        ``test_loss``, ``residual``) at every snapshot, and every
        ``FIXED_POINT_CHUNK`` iterations of the fixed-point phase (with ``phase`` =
        ``"fixed point"`` and ``fixed_point_iteration``); returning ``True`` stops.
      fixed_point_after: depth 1: integrator steps after which, if the run has not converged,
        stopped or reached ``max_time``, L-BFGS on the population's energy takes it to the fixed
        point (the flow's fixed points are the energy's stationary points: module docstring).
        The integrator runs at most ``min(max_steps, fixed_point_after)`` steps (rounded up to a
        whole ``record_every`` chunk). ``"auto"``: ``FIXED_POINT_AFTER`` (300) from the random
        initialisation, ``FIXED_POINT_AFTER_WARM`` (0: one chunk) from ``init``. ``None``: the
        integrator alone, up to ``max_steps``.
      fixed_point_iterations: most L-BFGS iterations of that phase.

    Returns:
      :class:`ANTKResult`. Never raises on non-convergence or overflow:
      ``converged=False`` with a ``message`` instead, and non-finite kernels
      are replaced by NaN arrays with the message saying so.
    """
    gamma0 = _check_positive("gamma0", gamma0)
    lam = _check_positive("weight_decay", weight_decay)
    depth = _check_int("depth", depth, 1)
    act = get_activation(activation)
    samples = _check_int("samples", samples, 2)
    samples += samples % 2
    seed = _check_int("seed", seed, 0)
    tol = _check_positive("tol", tol)
    rtol = _check_positive("rtol", rtol)
    max_steps = _check_int("max_steps", max_steps, 1)
    if fixed_point_after == "auto":
        fixed_point_after = FIXED_POINT_AFTER if init is None else FIXED_POINT_AFTER_WARM
    elif fixed_point_after is not None:
        fixed_point_after = _check_int("fixed_point_after", fixed_point_after, 0)
    fixed_point_iterations = _check_int("fixed_point_iterations", fixed_point_iterations, 0)
    record_every = _check_int("record_every", record_every, 1)
    max_time = 1e4 / lam if max_time is None else _check_positive("max_time", max_time)
    residual_tol = np.inf if residual_tol is None else _check_positive("residual_tol", residual_tol)
    if max_seconds is not None:
        max_seconds = _check_positive("max_seconds", max_seconds)
    if init is not None and not isinstance(init, ANTKResult):
        raise ValueError("init must be a previous ANTKResult (or None).")
    x_train, y_train, x_test, y_test = as_arrays(dataset)
    if depth >= 2:
        from .antk_deep import antk_deep

        return antk_deep(x_train, y_train, x_test, y_test, gamma0=gamma0, lam=lam, depth=depth,
                         act=act, samples=samples, seed=seed, tol=tol, max_time=max_time,
                         max_steps=max_steps, max_seconds=max_seconds, rtol=rtol, init=init,
                         record_every=record_every, callback=callback,
                         residual_tol=None if residual_tol == np.inf else residual_tol)
    return _antk_depth1(x_train, y_train, x_test, y_test, gamma0, lam, act, samples, seed, tol,
                        max_time, max_steps, max_seconds, rtol, init, record_every, callback,
                        residual_tol, fixed_point_after, fixed_point_iterations)


def _antk_depth1(x_train, y_train, x_test, y_test, gamma0, lam, act, samples, seed, tol,
                 max_time, max_steps, max_seconds, rtol, init, record_every, callback,
                 residual_tol=np.inf, fixed_point_after=None, fixed_point_iterations=0):
    start = time.perf_counter()
    p = x_train.shape[0]
    x_all = np.concatenate([x_train, x_test])
    C_full = input_kernel(x_all)
    relu = act.name == "relu"
    notes = []
    Cx_all = jnp.asarray(C_full[:p])
    consts = _Consts(Cxx=jnp.asarray(C_full[:p, :p]), diagC=jnp.asarray(np.diag(C_full)[:p]),
                     y=jnp.asarray(y_train), gamma=jnp.asarray(gamma0), lam=jnp.asarray(lam),
                     rtol=jnp.asarray(rtol), tol=jnp.asarray(tol), htol=jnp.asarray(residual_tol),
                     dt_max=jnp.asarray(-math.log1p(-MAX_DAMPING) / lam), t_max=jnp.asarray(max_time))
    observe = _observer(act.fn, act.deriv, relu)

    warm = None
    if init is not None:
        st0 = init.state
        if (st0 is None or init.depth != 1 or init.activation != act.name
                or st0["h0"].shape != (samples, C_full.shape[0])
                or not np.allclose(init.C, C_full)):
            notes.append("init ignored (different data, samples, depth or activation): cold start")
        else:
            warm = st0
    if warm is None:
        h0, z = _sample_population(C_full, samples, seed)
        A = jnp.zeros((samples, p))
        d = jnp.asarray(1.0)
        t0 = 0.0
    else:
        scale = math.sqrt(gamma0 / init.gamma0)
        h0 = jnp.asarray(warm["h0"])
        A = jnp.asarray(warm["A"]) * scale
        z = jnp.asarray(warm["z"]) * scale
        d = jnp.asarray(warm["d"] * scale)
        t0 = 0.0
    hX = d * h0[:, :p] + A @ consts.Cxx
    M = act.deriv(hX)
    if warm is not None and relu:
        M = jnp.asarray(warm["M"])
    f0 = (z @ act.fn(hX)) / (gamma0 * samples)
    delta = consts.y - f0
    # First step: f changes by about dt |K0 y|; aim that at rtol of |y|.
    _, Phi0, G0, _ = observe(A, z, M, d, h0, Cx_all, gamma0)
    K0 = np.asarray(Phi0[:p, :p] + G0[:p, :p] * C_full[:p, :p])
    with np.errstate(all="ignore"):
        rate = np.linalg.norm(K0 @ np.asarray(delta)) / max(np.linalg.norm(y_train), 1e-300)
    rate = max(rate, lam) if np.isfinite(rate) else 1e300  # non-finite: the first step flags it
    dt0 = min(rtol / rate, float(consts.dt_max)) if warm is None else float(consts.dt_max) * 0.25
    st = _State(A=A, z=z, M=M, hX=hX, d=d, delta=delta, t=jnp.asarray(t0), dt=jnp.asarray(dt0),
                res=jnp.asarray(np.inf), hres=jnp.asarray(np.inf), steps=jnp.asarray(0), bad=jnp.asarray(False))

    runner = _chunk_runner(act.fn, act.deriv, relu, record_every)
    times, losses, resids, dts = [], [], [], []
    rec_t, rec_test, rec_train, rec_align, snaps_phi, snaps_g = [], [], [], [], [], []
    stopped = None

    def record(s):
        _, Phi, G, f = observe(s.A, s.z, s.M, s.d, h0, Cx_all, gamma0)
        Phi, G, f = np.asarray(Phi), np.asarray(G), np.asarray(f)
        rec_t.append(float(s.t))
        rec_train.append(mse(f[:p], y_train))
        rec_test.append(mse(f[p:], y_test))
        rec_align.append(_alignment(Phi[:p, :p], y_train))
        snaps_phi.append(Phi)
        snaps_g.append(G)
        if len(snaps_phi) > MAX_SNAPSHOTS:  # thin out, keeping the first and the newest
            for lst in (rec_t, rec_train, rec_test, rec_align, snaps_phi, snaps_g):
                keep = lst[:-1:2] + [lst[-1]]
                lst[:] = keep
        if callback is not None:
            return callback({"time": rec_t[-1], "step": int(s.steps), "train_loss": rec_train[-1],
                             "test_loss": rec_test[-1], "alignment": rec_align[-1],
                             "residual": float(s.hres), "feature_gap_train": float(s.res)})
        return None

    def judge(s, h, Phi, f):
        """``(gap, residual)`` of population ``s`` observed as ``h, Phi, f``: the feature-form gap on
        train+test ``|f_DMFT - Phi(., X)(Phi + lambda I)^-1 y| / |f_DMFT|`` and the fixed-point residual."""
        if not (np.all(np.isfinite(Phi)) and np.all(np.isfinite(f))):
            return float("nan"), float("nan")
        tr, te = _kernel_predict(Phi, y_train, lam, p)
        m_x = np.asarray(s.M) if relu else np.asarray(act.deriv(jnp.asarray(h[:, :p])))
        residual = fixed_point_residual(h, np.asarray(s.z), m_x, f[:p], y_train, C_full, gamma0, lam, act.fn)
        return _rel_gap(np.concatenate([tr, te]), f), residual

    def assess(s):
        """From one observation of a population: ``(gap, residual, Phi, f)`` (:func:`judge`)."""
        h, Phi, _, f = (np.asarray(v) for v in observe(s.A, s.z, s.M, s.d, h0, Cx_all, gamma0))
        return (*judge(s, h, Phi, f), Phi, f)

    record(st)
    inner_tol = 0.5 * tol
    switch = False  # the integrator hands over to the fixed-point phase
    while True:
        st, tt, tl, trs, tdt = runner(st, consts._replace(tol=jnp.asarray(inner_tol)))
        keep = np.isfinite(np.asarray(tt))
        times.extend(np.asarray(tt)[keep]); losses.extend(np.asarray(tl)[keep])
        resids.extend(np.asarray(trs)[keep]); dts.extend(np.asarray(tdt)[keep])
        if bool(st.res <= inner_tol) and bool(st.hres <= residual_tol) and not bool(st.bad):
            gap = assess(st)[0]
            if gap <= tol or inner_tol < 1e-4 * tol:
                break
            inner_tol *= 0.25  # the test block lags the train block: tighten and go on
        done = bool(st.bad) or float(st.t) >= max_time
        if done:
            break
        if int(st.steps) >= max_steps or (fixed_point_after is not None and int(st.steps) >= fixed_point_after):
            switch = fixed_point_after is not None and fixed_point_iterations > 0
            break
        stopped = interruption(start, max_seconds, lambda: record(st))
        if stopped:
            break

    fp_iterations, fp_history = 0, []
    if switch:
        if rec_t[-1] != float(st.t):
            record(st)  # the integrator's last state; the fixed point follows at the same time
        def report(s, it, Phi_s, f_s):
            info = {"time": float(s.t), "step": int(s.steps) + it, "train_loss": mse(f_s[:p], y_train),
                    "test_loss": mse(f_s[p:], y_test), "alignment": _alignment(Phi_s[:p, :p], y_train),
                    "phase": "fixed point", "fixed_point_iteration": it}
            return None if callback is None else callback(info)

        st, fp_iterations, fp_history, stopped = _fixed_point_phase(
            st, act, C_full, p, y_train, gamma0, lam, tol, residual_tol, fixed_point_iterations, assess=assess,
            interrupt=lambda s, it, Phi_s, f_s: interruption(start, max_seconds, lambda: report(s, it, Phi_s, f_s)))
        used_up = fp_iterations >= fixed_point_iterations
        notes.append(f"then {fp_iterations} L-BFGS iterations of the fixed-point phase"
                     + (f" (all of fixed_point_iterations={fixed_point_iterations})" if used_up else ""))

    # Final kernels, predictors, exact fixed-point residual.
    h, Phi, G, f = observe(st.A, st.z, st.M, st.d, h0, Cx_all, gamma0)
    h, Phi, G, f = (np.asarray(v) for v in (h, Phi, G, f))
    z_np = np.asarray(st.z)
    finite = all(np.all(np.isfinite(v)) for v in (h, Phi, G, f, z_np)) and not bool(st.bad)
    gap = float("nan")
    if finite:
        if not rec_t or rec_t[-1] != float(st.t) or fp_iterations:
            record(st)  # the fixed-point phase's result is the last snapshot, at the integrator's final time
        gap, residual = judge(st, h, Phi, f)  # the observation above, not a second one
    else:
        residual = float("nan")
    converged = finite and gap <= tol and (residual_tol == np.inf or residual <= 10 * residual_tol)
    iterations = int(st.steps) + fp_iterations
    message = _status_message(
        finite=finite, converged=converged, stopped=stopped, t=float(st.t), max_time=max_time,
        iterations=int(st.steps), max_steps=max_steps if not switch else math.inf, gap=gap, residual=residual,
        notes=notes,
        overflow=("overflow or NaN in the dynamics (gamma0 or 1/weight_decay too large for the data, "
                  "or the step size underflowed); kernels are NaN"))

    q = C_full.shape[0]
    lazy = lazy_kernels(x_all, depth=1, activation=act.name)
    lazy_ntk_tr, lazy_ntk_te = _kernel_predict(lazy.ntk[-1], y_train, 2 * lam, p)
    lazy_nngp_tr, lazy_nngp_te = _kernel_predict(lazy.nngp[-1], y_train, lam, p)
    nan_pq = np.full((q, q), np.nan)
    if finite:
        K = Phi + G * C_full
        feat_tr, feat_te = _kernel_predict(Phi, y_train, lam, p)
        ntk_tr, ntk_te = _kernel_predict(K, y_train, 2 * lam, p)
        f_tr, f_te = f[:p], f[p:]
    else:
        Phi = G = K = nan_pq
        feat_tr = ntk_tr = f_tr = np.full(p, np.nan)
        feat_te = ntk_te = f_te = np.full(q - p, np.nan)

    state = None
    if finite:
        state = {"h0": np.asarray(h0), "A": np.asarray(st.A), "z": z_np, "M": np.asarray(st.M),
                 "d": float(st.d)}

    def stack(lst, shape):
        return np.stack(lst) if lst else np.zeros((0,) + shape)

    return ANTKResult(
        Phi=Phi, G=G, K=K, C=C_full,
        kernels=Phi[None, :p, :p], kernels_full=Phi[None], gradient_kernels_full=G[None],
        **predictor_fields(f_tr, f_te, feat_tr, feat_te, ntk_tr, ntk_te, lazy_ntk_te, lazy_nngp_te,
                           y_train, y_test, finite),
        alignment=[_alignment(Phi[:p, :p], y_train)], ntk_alignment=_alignment(K[:p, :p], y_train),
        lazy_ntk_ridge=2 * lam, lazy_nngp_ridge=lam,
        times=np.asarray(times), trajectory_train_loss=np.asarray(losses),
        trajectory_residual=np.asarray(resids), step_sizes=np.asarray(dts),
        record_times=np.asarray(rec_t), record_test_loss=np.asarray(rec_test),
        record_train_loss=np.asarray(rec_train), record_alignment=np.asarray(rec_align),
        snapshots_phi=stack(snaps_phi, (q, q)), snapshots_g=stack(snaps_g, (q, q)),
        converged=bool(converged), iterations=iterations, residual=float(residual), message=message,
        seconds=time.perf_counter() - start, gamma0=gamma0, weight_decay=lam, depth=1,
        activation=act.name, samples=samples, seed=seed, final_time=float(st.t), state=state,
        fixed_point_iterations=fp_iterations, fixed_point_history=fp_history,
    )


def _fixed_point_phase(st, act, C_full, p, y, gamma0, lam, tol, residual_tol, max_iterations, *, assess,
                       interrupt):
    """L-BFGS on the energy (:func:`_energy_value_and_grad`) from the integrator's population.

    relu: the energy is not smooth where a neuron's preactivation crosses 0, and at its fixed point
    neurons sit there (Filippov sliding); plain L-BFGS zig-zags and stalls (feature-form gap
    ~1e-4, residual ~0.3 on the default problem). So relu runs a continuation: ``relu`` replaced by
    :func:`smoothed_relu` of sharpness ``beta`` for ``beta`` in ``RELU_SMOOTHING``, each stage warm
    from the one before. The gap and residual are always those of relu itself, the residual with
    ``phi'(h)`` = :func:`smoothed_relu_deriv` in ``[0, 1]``: away from the kink that is ``1[h > 0]``, on it the
    fraction of a sliding neuron (as the integrator's Filippov selection), which ``G`` uses too.

    Checks every ``FIXED_POINT_CHUNK`` iterations (``assess(state) -> (gap, residual, Phi, f)``, one
    observation, which ``interrupt(state, iteration, Phi, f)`` reuses for the callback): done when the
    feature-form gap is below ``tol``
    and the fixed-point residual below ``residual_tol``; a stage ends early when the line search
    finds no decrease. Returns ``(state, iterations, history, stopped)``: the population as an
    integrator state with ``d = 0`` (:func:`population_coordinates`).
    """
    b_x, _, a_map = population_coordinates(C_full, p)
    S, k = st.z.shape[0], b_x.shape[1]
    b_x_j, a_map_j = jnp.asarray(b_x), jnp.asarray(a_map)
    relu = act.name == "relu"
    value_and_grad = _energy_value_and_grad(act.fn, relu)
    run = lbfgs.runner(value_and_grad)
    theta = jnp.concatenate([(st.hX @ a_map_j.T).ravel(), st.z])
    stages = RELU_SMOOTHING if relu else (math.inf,)

    def as_state(theta, beta):
        c, z = theta[: S * k].reshape(S, k), theta[S * k:]
        h_x = c @ b_x_j.T
        m = smoothed_relu_deriv(h_x, beta) if relu else act.deriv(h_x)
        f_x = (z @ act.fn(h_x)) / (gamma0 * S)
        return st._replace(A=c @ a_map_j, z=z, M=m, hX=h_x, d=jnp.zeros_like(st.d), delta=jnp.asarray(y) - f_x)

    history, stopped, s, done, total = [], None, st, False, 0
    for i, beta in enumerate(stages):
        args = (b_x_j, jnp.asarray(y), jnp.asarray(gamma0), jnp.asarray(lam), jnp.asarray(beta if relu else 1.0))
        ls = lbfgs.init_state(value_and_grad, theta, args)
        budget = (max_iterations - total) // (len(stages) - i)  # equal shares; leftovers go to later stages
        while int(ls.iterations) < budget:
            ls = run(ls, min(FIXED_POINT_CHUNK, budget - int(ls.iterations)), args)
            s = as_state(ls.x, beta)
            gap, residual, Phi_s, f_s = assess(s)
            history.append({"iteration": total + int(ls.iterations), "energy": float(ls.f), "feature_gap": float(gap),
                            "residual": float(residual), "smoothing": float(beta)})
            done = not math.isfinite(gap) or (gap <= tol and residual <= residual_tol)
            if done or bool(ls.stalled):
                break
            stopped = interrupt(s, total + int(ls.iterations), Phi_s, f_s)
            if stopped:
                break
        theta, total = ls.x, total + int(ls.iterations)
        if done or stopped:
            break
    return s, total, history, stopped


def predictor_fields(f_tr, f_te, feat_tr, feat_te, ntk_tr, ntk_te, lazy_ntk_te, lazy_nngp_te, y_train, y_test,
                     finite) -> dict:
    """The :class:`ANTKResult` fields of the three predictors and the lazy baselines: predictions,
    losses, test error and the feature/NTK-form gaps to the DMFT output (any depth)."""
    return dict(
        train_predictions=f_tr, test_predictions=f_te,
        feature_train_predictions=feat_tr, feature_test_predictions=feat_te,
        ntk_train_predictions=ntk_tr, ntk_test_predictions=ntk_te,
        test_loss=mse(f_te, y_test), train_loss=mse(f_tr, y_train),
        test_error=classification_error(f_te, y_test) if finite else float("nan"),
        test_loss_feature_form=mse(feat_te, y_test), test_loss_ntk_form=mse(ntk_te, y_test),
        feature_gap=_rel_gap(feat_te, f_te), ntk_gap=_rel_gap(ntk_te, f_te),
        lazy_ntk_test_predictions=lazy_ntk_te, lazy_nngp_test_predictions=lazy_nngp_te,
        lazy_ntk_test_loss=mse(lazy_ntk_te, y_test), lazy_nngp_test_loss=mse(lazy_nngp_te, y_test),
    )


def neuron_preactivations(result: ANTKResult, points) -> dict:
    """Preactivations of the sampled neurons at chosen points, at initialisation and at the end.

    Depth 1 only (the state stores ``h(t) = d h0 + A C(X, .)``, ``d = exp(-lambda t)``).
    ``points`` index the stacked train+test inputs. Returns ``{"init": (S, k), "final": (S, k),
    "readout": (S,)}``: the DMFT neuron distribution for the densities view.
    """
    state = getattr(result, "state", None)
    if result.depth != 1 or not state or "h0" not in state:
        raise ValueError("neuron preactivations are available for depth-1 aNTK results only.")
    idx = np.atleast_1d(np.asarray(points, dtype=int))
    n = result.C.shape[0]
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"points must index the {n} train+test inputs.")
    p = state["A"].shape[1]
    h0 = np.asarray(state["h0"])[:, idx]
    final = state["d"] * h0 + np.asarray(state["A"]) @ np.asarray(result.C)[:p][:, idx]
    return {"init": h0, "final": final, "readout": np.asarray(state["z"])}


__all__ = ["ANTKResult", "antk", "neuron_preactivations"]
