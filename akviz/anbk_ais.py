"""Depth-1 aNBK by adaptive importance sampling and Newton on the sample average (THEORY.md 3.1, 3.4).

With one hidden layer, ``h = L w`` (``L L^T = C``, ``w ~ N(0, I_k)``), the tilted density is

    p(w) ∝ N(w; 0, I) exp(g^2 s(w)^2 / 2),   s(w) = a . phi(L w),   g = gamma0,

and the saddle point is ``a = (Phi(a) + I/beta)^-1 y`` with ``Phi(a) = <phi phi^T>_p``.

**Proposal: a Gaussian mixture along the Hubbard-Stratonovich field.**
``exp(g^2 s^2/2) = E_{xi ~ N(0,1)} exp(g xi s)`` makes ``p`` the ``w``-marginal of
``pi(w, xi) ∝ N(w; 0, I) N(xi; 0, 1) exp(g xi s(w))``. At fixed ``xi`` the tilt is
linear in ``phi``, and for relu inside one activation pattern ``w | xi`` is exactly
``N(mu(xi), I)``. So we draw iid from the mixture

    q(w) = sum_j pi_j N(w; mu_j, I)

over nodes ``xi_j`` (``GRID_NODES`` on ``[-14 tau, 14 tau]``):

* ``mu_j`` starts at the mode of the conditional smoothed by its own noise,
  ``mu = g xi L^T (a ⊙ E_z[phi'(L mu + sqrt(diag C) z)])`` (damped fixed-point
  iteration), and ``pi_j`` at a two-sided Student t (5 degrees of freedom) with
  scales ``tau+-`` fitted to ``E[xi^2 | sign]`` under the target (``xi | w ~ N(g s, 1)``).
* After each Newton solve the mixture is refitted to the target (population Monte
  Carlo): each ``mu_j`` moves to its target-weighted mean, shrunk to the mean-field
  mode by ``PRIOR_COUNT`` pseudo-draws, and ``pi_j`` to its share of the kernel's error,
  ``E_p[|phi phi^T - Phi|_F; j]`` (the mass that the kernel's best proposal
  ``q* ∝ p |phi phi^T - Phi|_F`` gives component ``j``), mixed with ``DEFENSIVE`` of the
  Student-t weights. At ``gamma0 = 0.5`` (``beta = 1``) 2% of the target's mass, its far negative
  ``xi`` tail, held 39% of the kernel's variance; drawing the components by their target mass
  instead left warm solves there at 3-4 draws (median 3.84 s against 2.03 s, digits 3-vs-8, P = 100,
  16 seeds, 2026-12-07).
* The refit also stretches the components: ``N(mu_j, I + U V_j D_j V_j^T U^T)``. ``U`` spans the
  ``COV_RANK`` directions in which the target's covariance about its component means (pooled)
  exceeds 1 most; ``V_j D_j V_j^T`` is component ``j``'s own excess there, shrunk to 0 by
  ``PRIOR_COUNT`` pseudo-draws. Within one activation pattern ``w | xi`` has covariance ``I``, but
  the target mixes patterns: at ``gamma0 = 0.5`` (``beta = 1``) the components' target covariances
  have top eigenvalues 1.2-1.7. Without the stretch the weights there had a Pareto tail of index
  0.47 (variance barely finite; one draw in a few lost most of its ESS) and an ESS of 68%; with it
  0.32 and 84% (1048576 draws at the solved state).
* Weights are ``N(w; 0, I) exp(g^2 s^2/2) / q(w)`` with the whole mixture in the
  denominator (not the drawn component): ``xi``'s own noise leaves the weights. On
  digits 3-vs-8 (P = 100, relu, ``beta = 1``) this raised the ESS from 59% to 69%
  at ``gamma0 = 0.5`` and from collapse to 44-55% at 0.6, against drawing
  ``(xi, w)`` jointly.
* The slope ``kappa = |mu(xi)| / |xi|`` at the grid's ends is the tail's decay:
  the ``xi`` marginal falls like ``exp(-(1 - kappa^2) xi^2 / 2)``. At ``kappa >= 1``
  the tilted density does not normalise, and the result says so. Why solved states reach
  ``kappa = 1`` from ``gamma0 ~ 0.6`` (``beta = 1``), and a prototype that adds the missing
  condensate there: ``benchmarks/anbk_condensate.py``.

**Sample-average Newton.** With the draws fixed, the self-normalised weights depend
on ``a`` only through ``g^2 s_n^2 / 2``, ``s_n = a . phi_n``, so

    G(a) = (F(a) + I/beta) a - y,              F(a) = sum_n w_n phi_n phi_n^T,
    J(a) = F + I/beta + g^2 (T - (F a)(F a)^T),  T = sum_n w_n s_n^2 phi_n phi_n^T

is a smooth map solved by quasi-Newton steps with backtracking (``G`` costs ``O(N P)``
over all draws; a Jacobian, ``O(N P^2)`` in float32 over the first ``JACOBIAN_DRAWS``,
is corrected by Broyden's rank-one update after each step and recomputed only where
the steps stall); a step may not drop the ESS below ``ESS_TRUST`` of the draw's. It stops
at ``NEWTON_NOISE_SHARE`` of ``G``'s own Monte Carlo error on the draws (``_Draws.g_error``):
closer than that moves ``a`` by a sliver of its error bar, at 2-3 more passes over the draws.
``F`` is a weighted average of outer products: symmetric positive semi-definite by
construction.

**Variance reduction.** Two pieces, each unbiased on its own:

* *Control variate.* ``r = N(w; 0, I) / q(w)`` has ``E_q[r phi phi^T] = K0``, the
  prior kernel (the NNGP, in closed form or by quadrature), and ``r`` does not
  depend on ``a``. The kernel is ``F - D`` with ``D = (1/N) sum_n r_n phi_n phi_n^T - K0``
  (one matrix a draw; ``G`` and ``J`` carry the same shift), and the test blocks
  of the train+test kernel likewise. Where ``F - D`` has a negative eigenvalue it is
  projected onto the PSD cone (a guard: on digits 3-vs-8 the smallest eigenvalue, about
  0.010, is the same with and without the shift to 1e-5). Beside the Sobol points it matters at
  small ``gamma0`` (the kernel's error at 0.1: 0.0013 without, 0.0003 with it) and hardly from 0.3
  on (0.0019 and 0.0018 at 0.3); the continuation steps of a cold solve draw without it.
* *Randomised quasi Monte Carlo.* Each group of ``GROUP`` draws is the Sobol
  sequence under its own random digital shift (independent groups, so batch means
  still give the standard error). The first Sobol dimension picks the mixture
  component, the next ones go to ``C``'s largest eigen-directions.

Measured on digits 3-vs-8 (P = 100, relu, ``beta = 1``, at the solved state with its
refitted proposal, 8 groups of 16384): the relative error of one group's kernel is
0.024 with iid draws, 0.016 with the control variate and 0.010 with both at
``gamma0 = 0.3``; 0.040, 0.037 and 0.027 at 0.5, where the heavy tail of the
weights, which neither touches, dominates.

**Honesty.** Each outer iteration redraws at the new ``a`` and measures the
state's saddle residual ``||F_fresh(a) - Phi|| / ||Phi||`` on fresh, independent
draws. For a solved state that residual is the noise of the state and of the
fresh draw together (batch means over groups of draws give each), so a check
that fails does not go to waste: its draw joins the state's *pool* (all draws at
this ``gamma0``, each weighted by its own mixture, up to ``GROWTH`` times
``samples``), Newton solves the pooled sample average, and the next check draws
enough that the two noises leave the residual room below ``tol``
(``_check_size``). The reported Monte Carlo error is the larger of the state's
and the fresh draw's (history records both: ``state_mc_error``, ``fresh_mc_error``),
and ``converged`` needs the residual and that error below ``tol``, ESS above the
floor and ``kappa < 1``. Cold solves go
through intermediate ``gamma0`` values (one draw and Newton solve each, at most
``akviz.anbk.AIS_MAX_STEP`` apart, and no further once a step's state is beyond reach), so that
every proposal is built near the state it samples; a warm start draws first from
the neighbour's last refitted mixture, its components moved with the mean-field
modes.

Draws are kept in batches of ``BATCH`` (one compiled shape, any total), in float32: the
sample points ``w`` and ``phi(L w)``, and the responsibilities. Rounding a sample point
moves it by ~1e-7 relative; the log-weights' proposal part (float32 logits) is off by
~1e-5, a relative error of that size in each weight. Both lie far below the Monte Carlo
error (~1e-2), and the sums over draws run in float64 (``_rows_dot``, ``_weighted_sum``)
or in float32 groups accumulated in float64 (the Grams). With the float64 copies the
draws cost 2.4x as much and held 2.2x the memory (241 MB against 107 MB a batch).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .anbk_action import log_z_from_groups, saddle_action
from .anbk_mcmc import EIG_CUTOFF, proposal_noise, sym_sqrt_pinv
from .regression import alignment

#: Draws in one batch (the compiled shape), and the default draws per outer iteration.
BATCH = 1 << 17
DEFAULT_SAMPLES = 1 << 17
#: A draw grows (when the Monte Carlo error holds the residual above tol) up to this multiple of ``samples``;
#: the state's pooled draws hold at most as many.
GROWTH = 8
#: A check draws enough that the noise its residual carries (state and fresh draws together) is about this
#: share of tol: the residual's Frobenius norm sums thousands of entries, so it sits close to that noise.
CHECK_NOISE = 0.75
#: Draws (from the first batch) behind a Newton Jacobian: a chord direction needs no more, ``G`` uses them all.
JACOBIAN_DRAWS = 1 << 15
#: The final draw's test blocks: the cross block (which the predictor uses) over at most this many batches, the
#: test-test block (only shown) over the first ``TEST_SELF_DRAWS`` of each. Over all of a grown draw they took
#: 0.5 s a batch (P = 100, 200 test points), 3 s of a 7.5 s warm solve at ``gamma0 = 0.5``; two thirds of
#: that in the test-test block.
TEST_CROSS_BATCHES = 2
TEST_SELF_DRAWS = 1 << 15
#: Groups per batch for batch-means standard errors (each group one randomised Sobol set of ``GROUP`` points).
GROUPS_PER_BATCH = 8
GROUP = BATCH // GROUPS_PER_BATCH
#: Degrees of freedom of the ``xi`` Student t (heavier tails than the target's Gaussian ones).
NU = 5.0
#: ``xi`` nodes of the mixture, and the grid's half width in units of ``tau`` (t_5 leaves 1e-5 beyond).
GRID_NODES = 49
GRID_HALF_WIDTH = 14.0
#: Population Monte Carlo refit: pseudo-draws at the mean-field mode per component, and the share
#: of the Student-t weights kept (defensive mixture).
PRIOR_COUNT = 50.0
DEFENSIVE = 0.3
#: Refitted components are ``N(mu_j, I + U V_j diag(d_j) V_j^T U^T)``: ``U`` (``k x COV_RANK``) spans the
#: directions in which the target's covariance about its component means exceeds 1 most (pooled over
#: components), ``V_j diag(d_j) V_j^T`` is component ``j``'s excess in that span (``d_j`` capped at
#: ``COV_MAX``, shrunk to 0 by ``PRIOR_COUNT`` pseudo-draws).
COV_RANK = 4
COV_MAX = 3.0
#: The mean-field modes' damped fixed-point iteration: ``mu <- (1 - d) mu + d T(mu)`` until no mode moves by more
#: than ``MODE_TOL`` (whitened units, where modes reach ~25), at most ``MODE_ITERATIONS`` times. ``d = 0.5`` fell
#: into a 2-cycle in the ``xi < 0`` tail near the edge of normalisability (digits 3-vs-8: modes up to 2.5 off
#: the fixed point from ``gamma0 ~ 0.5`` at ``beta = 1``; at ``beta = 10``, 0.25 the solved state's tail slope
#: ``kappa`` came out 1.022 where the fixed point's is 0.993, so importance sampling gave up there); ``d = 0.3``
#: converges, in 150-450 iterations up to ``gamma0 = 0.6`` (``beta = 1``).
MODE_DAMPING = 0.3
MODE_TOL = 1e-6
MODE_ITERATIONS = 800
#: A Newton step may not drop the ESS below this fraction of the draw's own.
ESS_TRUST = 0.3
#: Newton iterations per draw, and when the sample average counts as solved: ``|G| <= NEWTON_TOL |y|``, or
#: ``|G|`` at most ``NEWTON_NOISE_SHARE`` of ``G``'s own Monte Carlo standard error on the draw. ``G``'s error and
#: Newton's leftover both reach ``a`` and ``Phi`` through ``J^-1``, so the leftover is that share of their error
#: bars (at ``gamma0 = 0.3``, ``beta = 1``: ``|G| ~ 1e-4 |y|``, where 1e-6 took 2-3 more passes over the draws).
NEWTON_ITERATIONS = 25
NEWTON_TOL = 1e-6
NEWTON_NOISE_SHARE = 0.03
#: Draws of each batch (its first groups) behind a refit: the refit only shapes the next proposal, whose weights
#: are exact whatever it is, and half a batch gives it 1300 draws a component (49 nodes) against ``PRIOR_COUNT``
#: pseudo-draws. It halves the refit's 0.2 s a batch.
REFIT_DRAWS = 1 << 16
#: Draws kept (with their weights) for the preactivation densities.
POOL = 1 << 15


# ---------------------------------------------------------------- jitted pieces (one batch each)


def _expected_slope(act):
    """``m, sd -> E_z[phi'(m + sd z)]``: closed form for relu, else 20-node Gauss-Hermite."""
    if act.name == "relu":
        return lambda m, sd: jax.scipy.special.ndtr(m / sd)
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights / weights.sum())
    return lambda m, sd: jnp.tensordot(jax.vmap(lambda z: act.deriv(m + sd * z))(nodes), weights, (0, 0))


@functools.lru_cache(maxsize=None)
def _modes_fn(act):
    slope = _expected_slope(act)

    @jax.jit
    def modes(lmat, csd, b, xis):
        def step(carry):
            it, mu, _ = carry
            e = slope(mu @ lmat.T, csd)
            new = (1 - MODE_DAMPING) * mu + MODE_DAMPING * xis[:, None] * ((e * b) @ lmat)
            return it + 1, new, jnp.max(jnp.abs(new - mu))

        def going(carry):
            it, _, moved = carry
            return (it < MODE_ITERATIONS) & (moved > MODE_TOL)
        start = jnp.zeros((xis.shape[0], lmat.shape[1]), dtype=b.dtype)
        return jax.lax.while_loop(going, step, (0, start, jnp.asarray(jnp.inf, b.dtype)))[1]
    return modes


@functools.lru_cache(maxsize=None)
def _sobol_points(dim):
    """The first ``GROUP`` points of the (unscrambled) Sobol sequence in ``dim`` dimensions, as 32-bit integers."""
    from scipy.stats import qmc  # only the AIS draws need it

    pts = qmc.Sobol(d=dim, scramble=False, bits=30).random_base2(int(math.log2(GROUP)))
    return (np.round(pts * 2.0**30).astype(np.uint32) << 2).astype(np.uint32)


def _shifted_sobol_normals(key, sobol):
    """``GROUPS_PER_BATCH`` randomly shifted copies of ``sobol`` (group after group): uniforms for the component
    choice (column 0) and standard normals (the rest), each group unbiased and independent of the others.

    A digital shift (XOR with random bits per group and dimension) is the randomisation; 23 bits feed the
    float32 inverse error function, as in ``akviz.anbk_mcmc.proposal_noise``."""
    shifts = jax.random.bits(key, (GROUPS_PER_BATCH, 1, sobol.shape[1]), jnp.uint32)
    bits = (sobol[None] ^ shifts).reshape(-1, sobol.shape[1])
    u = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))  # in (0, 1), never 0 or 1
    return u[:, 0], math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u[:, 1:] - 1.0)


@functools.lru_cache(maxsize=None)
def _draw_fn(act, k):
    rank = COV_RANK
    f32 = jnp.float32

    @jax.jit
    def draw(key, lmat, log_pi, modes, span, rot, stretch, sobol):
        """One batch in float32 but ``base``: the draws are sample points, so rounding them to float32 moves each
        by ~1e-7 relative (far below any Monte Carlo error), and float32 products halve the draw's cost. ``base``
        (``log N(w; 0, I) / q(w)``) comes from float32 logits of size up to a few hundred: ~1e-5 absolute, a
        relative error of that size in each weight. Everything downstream of ``a`` stays float64."""
        if sobol is None:  # iid: hashed normals (proposal_noise; threefry made the draw three times slower)
            noise = proposal_noise(key, (BATCH, k + 1 + rank), f32)
            u, eps, z = jax.scipy.special.ndtr(noise[:, 0]), noise[:, 1:rank + 1], noise[:, rank + 1:]
        else:
            u, z = _shifted_sobol_normals(key, sobol)
            # Sobol's first dimensions are its most even: the stretched axes, then the directions of C's
            # largest eigenvalues (lmat's last columns)
            eps, z = z[:, :rank], z[:, rank:][:, ::-1]
        log_pi, modes, span, rot, stretch = (x.astype(f32) for x in (log_pi, modes, span, rot, stretch))
        cdf = jnp.cumsum(jnp.exp(log_pi))
        j = jnp.minimum(jnp.searchsorted(cdf / cdf[-1], u), modes.shape[0] - 1)
        # w ~ N(mu_j, I + U V_j D_j V_j^T U^T): z plus U V_j sqrt(D_j) eps
        w = modes[j] + z + jnp.einsum("nrs,ns->nr", rot[j], jnp.sqrt(stretch[j]) * eps) @ span.T
        f = act.fn(w @ lmat.astype(f32).T)
        # log N(w; 0, I) / q(w), q the whole mixture (its |w|^2 cancels): the identity part, then the
        # determinant and the stretched axes (Woodbury: I - U Q_j U^T, Q_j = V_j diag(d / (1 + d)) V_j^T),
        # the quadratic form in x = U^T w expanded so that nothing of size N x nodes x rank is formed
        q = jnp.einsum("jrs,js,jts->jrt", rot, stretch / (1 + stretch), rot)
        x, m = w @ span, modes @ span
        qm = jnp.einsum("jrt,jt->jr", q, m)
        quad = ((x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1) @ q.reshape(q.shape[0], -1).T
                - 2 * x @ qm.T + jnp.sum(m * qm, 1))
        logits = (log_pi + w @ modes.T - 0.5 * jnp.sum(modes * modes, 1) - 0.5 * jnp.sum(jnp.log1p(stretch), 1)
                  + 0.5 * quad)
        log_q = jax.nn.logsumexp(logits, axis=1)
        # responsibilities r_nj, kept for the population Monte Carlo refit
        resp = jnp.exp(logits - log_q[:, None])
        return {"f32": f, "base": -log_q.astype(jnp.float64), "w": w, "resp": resp}
    return draw


def _rows_dot(f, a):
    """``f @ a`` in float64 for float32 ``f``: a fused multiply-and-sum, exact in the stored ``phi``. (XLA's CPU
    matrix-vector product with a float32 operand promoted to float64 is ~10x slower than either.)"""
    return jnp.sum(f * a, axis=1)


@jax.jit
def _weighted_sum(v, f):
    """``v @ f`` in float64 for float32 ``f`` (as ``_rows_dot``). A program of its own: fused with the
    computation of ``v`` (the weights), XLA's CPU code for it runs ~5x slower."""
    return jnp.sum(v[:, None] * f, axis=0)


def _unnormalised(a, g, f, base):
    """Weights ``exp(log w - m)`` of one batch relative to its largest log-weight ``m``, ``s = a . phi``, ``m``.

    ``f`` (the draws' ``phi``) is float32, ``a`` float64: ``s`` is exact in the stored ``phi``, so ``G(a)`` is as
    smooth in ``a`` as in float64 (Newton can solve it to 1e-6) and costs the same.

    Every batch function returns its ``m``; ``_Draws`` rescales the batches' sums by ``exp(m_b - max m)``,
    so that one pass over the draws gives normalised averages without overflow."""
    s = _rows_dot(f, a)
    lw = base + 0.5 * (g * s) ** 2
    m = jnp.max(lw)
    return jnp.exp(lw - m), s, m


@jax.jit
def _batch_g_weights(a, g, f, base):
    """``m``, per-group ``sum w``, ``sum w^2`` and the vector ``w s`` (``_batch_g`` and ``_batch_g_groups`` sum
    ``w s phi`` in programs of their own)."""
    w, s, m = _unnormalised(a, g, f, base)
    return m, jnp.sum(w.reshape(GROUPS_PER_BATCH, -1), axis=1), jnp.sum(w * w), w * s


def _batch_g(a, g, f, base):
    """``sum w``, ``sum w^2`` and ``sum w s phi`` (for ``G(a)`` and the ESS): O(N P)."""
    m, totals, sq, ws = _batch_g_weights(a, g, f, base)
    return m, jnp.sum(totals), sq, _weighted_sum(ws, f)


@jax.jit
def _group_sums(v, f):
    """Per-group ``v @ f`` (``GROUPS_PER_BATCH`` rows): a loop over the groups, each as ``_weighted_sum`` (one
    reduction over a reshaped axis runs ~10x slower in XLA's CPU code)."""
    split = (v.reshape(GROUPS_PER_BATCH, -1), f.reshape(GROUPS_PER_BATCH, -1, f.shape[1]))
    return jax.lax.map(lambda vf: jnp.sum(vf[0][:, None] * vf[1], axis=0), split)


def _batch_g_groups(a, g, f, base):
    """Per-group ``sum w`` and ``sum w s phi``: the batch means behind ``G``'s standard error."""
    m, totals, _, ws = _batch_g_weights(a, g, f, base)
    return m, totals, _group_sums(ws, f)


@jax.jit
def _batch_grams(a, g, f32, base):
    """``m``, ``sum w``, the vector ``w s`` and the two Grams of ``_batch_jacobian``."""
    w, s, m = _unnormalised(a, g, f32, base)
    big_f = (f32 * w.astype(jnp.float32)[:, None]).T @ f32
    t = (f32 * (w * s * s).astype(jnp.float32)[:, None]).T @ f32
    return m, jnp.sum(w), w * s, big_f.astype(jnp.float64), t.astype(jnp.float64)


def _batch_jacobian(a, g, f32, base):
    """``sum w``, ``sum w s phi``, ``sum w phi phi^T`` and ``sum w s^2 phi phi^T`` (the Grams in float32:
    a Newton direction needs no more, and they are 1.6x faster)."""
    m, total, ws, big_f, t = _batch_grams(a, g, f32, base)
    return m, total, _weighted_sum(ws, f32), big_f, t


@jax.jit
def _batch_groups(a, g, f32, base):
    """Per-group ``sum w phi phi^T`` and ``sum w``, and ``sum w^2``: the kernel and its batch means.

    The Grams are float32 products of 16384 terms a group, accumulated in float64 across groups: their
    rounding (~1e-6 relative) is far below the kernel's Monte Carlo error (~3e-3), and float64 Grams
    cost twice as much."""
    w, _, m = _unnormalised(a, g, f32, base)
    fg = f32.reshape(GROUPS_PER_BATCH, -1, f32.shape[1])
    wg = w.reshape(GROUPS_PER_BATCH, -1)
    grams = jnp.einsum("gnp,gnq->gpq", fg * wg.astype(jnp.float32)[..., None], fg).astype(jnp.float64)
    return m, grams, jnp.sum(wg, 1), jnp.sum(w * w)


@jax.jit
def _batch_prior_groups(f32, base):
    """Per-group ``sum r phi phi^T`` with the prior's ratio ``r = N(w; 0, I) / q(w) = exp(base)`` (float32
    Grams as in ``_batch_groups``). ``E_q[r phi phi^T]`` is the prior kernel exactly: the control variate."""
    fg = f32.reshape(GROUPS_PER_BATCH, -1, f32.shape[1])
    rg = jnp.exp(base).reshape(GROUPS_PER_BATCH, -1).astype(jnp.float32)
    return jnp.einsum("gnp,gnq->gpq", fg * rg[..., None], fg).astype(jnp.float64)


@jax.jit
def _batch_weights(a, g, f, base):
    w, s, m = _unnormalised(a, g, f, base)
    return m, w, s


@jax.jit
def _batch_moments(a, g, f, base, w_coord, resp):
    """Per-component ``sum_n w_n r_nj`` and ``sum_n w_n r_nj w_n`` (population Monte Carlo), and
    ``sum_n w_n w_n w_n^T``, over the batch's first ``REFIT_DRAWS``. Float32 products: they only shape the next
    proposal, and the weights are exact for whatever proposal draws."""
    f, base, w_coord, resp = (x[:REFIT_DRAWS] for x in (f, base, w_coord, resp))
    w, _, m = _unnormalised(a, g, f, base)
    w32 = w.astype(jnp.float32)
    rw = resp * w32[:, None]
    second = (w_coord * w32[:, None]).T @ w_coord
    return m, jnp.sum(rw, 0, dtype=jnp.float64), (rw.T @ w_coord).astype(jnp.float64), second.astype(jnp.float64)


@jax.jit
def _batch_allocation(a, g, kernel, f, base, resp):
    """Per-component ``sum_n w_n r_nj |phi_n phi_n^T - Phi|_F`` over the batch's first ``REFIT_DRAWS`` (float32
    products, as in ``_batch_moments``): each component's share of ``E_p |phi phi^T - Phi|_F``, the mass that the
    kernel's best proposal ``q* ∝ p |phi phi^T - Phi|_F`` gives it."""
    f, base, resp = (x[:REFIT_DRAWS] for x in (f, base, resp))
    w, _, m = _unnormalised(a, g, f, base)
    k32 = kernel.astype(jnp.float32)
    sq = jnp.sum(f * f, 1)
    dev2 = sq * sq - 2 * jnp.sum((f @ k32) * f, 1) + jnp.sum(k32 * k32)
    v = w.astype(jnp.float32) * jnp.sqrt(jnp.maximum(dev2, 0.0))
    return m, jnp.sum(resp * v[:, None], 0, dtype=jnp.float64)


@jax.jit
def _batch_span_moments(a, g, span, f, base, w_coord, resp):
    """Per-component ``sum_n w_n r_nj (U^T w_n)(U^T w_n)^T``: the components' covariances in the span ``U``
    (float32 products over the first ``REFIT_DRAWS``, as in ``_batch_moments``)."""
    f, base, w_coord, resp = (x[:REFIT_DRAWS] for x in (f, base, w_coord, resp))
    w, _, m = _unnormalised(a, g, f, base)
    x = w_coord @ span.astype(jnp.float32)
    rw = resp * w.astype(jnp.float32)[:, None]
    return m, jnp.einsum("nj,nr,ns->jrs", rw, x, x).astype(jnp.float64)


@jax.jit
def _batch_totals(a, g, f, base):
    """``m``, ``sum w`` and ``sum w`` over the first ``TEST_SELF_DRAWS``: the test blocks' normalisers."""
    w, _, m = _unnormalised(a, g, f, base)
    return m, jnp.sum(w), jnp.sum(w[:TEST_SELF_DRAWS])


@jax.jit
def _batch_log_z_groups(a, g, f, base):
    """Per-group ``sum r (exp(g^2 s^2 / 2) - 1)``, ``r = N(w; 0, I) / q(w) = exp(base)``, relative to the batch's
    shift ``m``: ``Z = E_q[r exp(g^2 s^2 / 2)] = 1 + E_q[r (exp(g^2 s^2 / 2) - 1)]``, since ``E_q[r] = 1`` exactly
    (the kernel's control variate, here with nothing left to estimate as ``gamma0 -> 0``)."""
    t = 0.5 * (g * _rows_dot(f, a)) ** 2
    m = jnp.max(base + t)
    return m, jnp.sum((jnp.exp(base - m) * jnp.expm1(t)).reshape(GROUPS_PER_BATCH, -1), 1)


@functools.lru_cache(maxsize=None)
def _test_blocks_fn(phi):
    @jax.jit
    def blocks(a, g, l_test, shift, norm, prior_norm, f32, base, w_coord):
        """``sum c phi_test phi^T`` over the batch and ``sum c' phi_test phi_test^T`` over its first
        ``TEST_SELF_DRAWS``, with ``c = exp(log w - shift) / W - r / n``: the normalised weight less the
        control variate's prior ratio ``r`` (``norm = (1/W, 1/W')``, ``prior_norm = (1/n, 1/n')``, zeros without
        the control variate), so that one product gives each block's difference estimator."""
        w, _, m = _unnormalised(a, g, f32, base)
        w = w * jnp.exp(m - shift)  # relative to the common shift of the normalisers
        r = jnp.exp(base)
        c = (w * norm[0] - r * prior_norm[0]).astype(jnp.float32)
        c_self = (w * norm[1] - r * prior_norm[1]).astype(jnp.float32)
        f_test = phi(w_coord @ l_test.astype(jnp.float32).T)
        # float32 products: their rounding (~1e-6) is far below the blocks' Monte Carlo error (~1e-2), and
        # they are the largest products of a solve (N x Q x (P + Q))
        cross = ((f_test * c[:, None]).T @ f32).astype(jnp.float64)
        k = TEST_SELF_DRAWS
        test = ((f_test[:k] * c_self[:k, None]).T @ f_test[:k]).astype(jnp.float64)
        return cross, test
    return blocks


def _ratio_batch_means(sums, totals):
    """The ratio estimate ``sum_g S_g / sum_g W_g`` and its linearised per-group deviations
    ``G (S_g - mean W_g) / W`` (``G`` groups): independent estimates of the ratio's noise, one per group."""
    total, groups = totals.sum(), len(totals)
    mean = sums.sum(0) / total
    return mean, (sums - mean[None] * totals.reshape((-1,) + (1,) * mean.ndim)) / total * groups


def _batch_means_error(dev):
    """Standard error (a Frobenius / vector norm) of the mean from per-group deviations ``dev``."""
    groups = len(dev)
    return math.sqrt(float(np.sum(dev**2)) / (groups * (groups - 1)))


# ---------------------------------------------------------------- draws


class _Draws:
    """One draw from the mixture (a list of batches) and the sample averages over it at any ``a``."""

    def __init__(self, prop, batches, inv_beta, y, prior=None, prior_test=None, jacobian_draws=None):
        self.prop, self.batches, self.inv_beta, self.y = prop, batches, inv_beta, y
        self.kappa = prop["kappa"]
        self.n = BATCH * len(batches)
        # the exact prior kernel E_N(0,C)[phi phi^T] on train and test x (train, test), or None: no control variate
        self.prior, self.prior_test = prior, prior_test
        self._control, self._last_g = None, None
        self.jacobian_draws = jacobian_draws
        self._jac_batch = None if jacobian_draws is None else {
            k: batches[0][k][:jacobian_draws] for k in ("f32", "base")}

    @classmethod
    def pooled(cls, draws):
        """One sample of all ``draws``' batches, each draw weighted by its own proposal (newest first: the
        Jacobian's draws and ``kappa`` are the newest's). Every weight ``N(w; 0, I) exp(g^2 s^2 / 2) / q_d(w)``
        is a valid importance weight whatever mixture ``q_d`` drew ``w``: the mixtures are normalised densities,
        so their log-weights share one scale."""
        last = draws[-1]
        return cls(last.prop, [b for d in reversed(draws) for b in d.batches], last.inv_beta, last.y, last.prior,
                   last.prior_test, last.jacobian_draws)

    def control(self):
        """The control variate's shift ``D = (1/n) sum_n r_n phi_n phi_n^T - K0`` and its per-group deviations.

        ``F - D`` (the difference estimator) is unbiased like ``F``: ``E_q[r phi phi^T] = K0`` exactly, and ``r``
        does not depend on ``a``, so ``D`` is one matrix a draw. The noise ``F`` and ``D`` share (both follow
        ``phi phi^T`` through the same draws) cancels; see the module docstring for the measured gain.
        Zero (no control variate) when the prior kernel is unknown.
        """
        if self._control is None:
            if self.prior is None:
                p = self.y.shape[0]
                self._control = (np.zeros((p, p)), np.zeros((GROUPS_PER_BATCH * len(self.batches), p, p)))
            else:
                for b in self.batches:  # kept with the batch: a pooled sample reuses them
                    if "prior_groups" not in b:
                        b["prior_groups"] = np.asarray(_batch_prior_groups(b["f32"], b["base"]))
                groups = np.concatenate([b["prior_groups"] for b in self.batches])
                per_group = groups * (len(groups) / self.n)  # each group's own estimate of K0
                mean = per_group.mean(0)
                self._control = (mean - self.prior, per_group - mean)
        return self._control

    def _combine(self, fn, *args, keys=("f32", "base"), unshifted=0, batches=None):
        """``fn`` on every batch (or on ``batches``); its outputs after the batch's shift ``m`` rescaled to the
        common one, ``M = max m``, except the last ``unshifted`` (sums that do not carry the weights' shift).
        Returns the rescaled outputs per batch, the factors ``exp(m - M)`` and ``M``."""
        parts = [fn(*args, *(b[k] for k in keys)) for b in (self.batches if batches is None else batches)]
        shifts = np.array([float(q[0]) for q in parts])
        scale = np.exp(shifts - shifts.max())
        cut = len(parts[0]) - unshifted
        return [[np.asarray(x) * c for x in q[1:cut]] + [np.asarray(x) for x in q[cut:]]
                for q, c in zip(parts, scale)], scale, float(shifts.max())

    def g_value(self, a, g):
        """``G(a)`` and the ESS fraction: O(N P). The last value is kept: Newton asks again after a line search."""
        key = (np.asarray(a, float).tobytes(), float(g))
        if self._last_g is None or self._last_g[0] != key:
            self._last_g = (key, self._g_value(a, g))
        return self._last_g[1]

    def _g_value(self, a, g):
        parts, scale, _ = self._combine(_batch_g, jnp.asarray(a), g)
        total = sum(float(q[0]) for q in parts)
        sq = sum(float(q[1]) * c for q, c in zip(parts, scale))  # sum w^2 scales with c^2
        fa = sum(q[2] for q in parts) / total - self.control()[0] @ a
        return fa + self.inv_beta * np.asarray(a) - self.y, total * total / (sq * self.n)

    def g_error(self, a, g):
        """Monte Carlo standard error of ``G(a)`` (a vector norm, in ``G``'s units): batch means over the groups
        of the linearised ratio estimator ``F(a) a``, less the control variate's ``D a``, as in ``estimate``."""
        parts, _, _ = self._combine(_batch_g_groups, jnp.asarray(a), g)
        totals = np.concatenate([q[0] for q in parts])
        _, dev = _ratio_batch_means(np.concatenate([q[1] for q in parts]), totals)
        return _batch_means_error(dev - self.control()[1] @ np.asarray(a, float))

    def jacobian(self, a, g):
        """``G(a)`` and ``J(a) = F + I/beta + g^2 (T - (F a)(F a)^T)`` (``J`` on the first ``jacobian_draws``
        draws where set: ``O(N P^2)`` against ``G``'s ``O(N P)``)."""
        shift = self.control()[0]
        if self._jac_batch is not None:
            b = self._jac_batch
            _, total, fa, big_f, t = (np.asarray(x) for x in _batch_jacobian(
                jnp.asarray(a), g, b["f32"], b["base"]))
            fa, big_f, t = fa / total, big_f / total, t / total
            gv = self.g_value(a, g)[0]  # G itself over all draws
        else:
            parts, _, _ = self._combine(_batch_jacobian, jnp.asarray(a), g)
            total = sum(float(q[0]) for q in parts)
            fa, big_f, t = (sum(q[i] for q in parts) / total for i in (1, 2, 3))
            gv = fa - shift @ a + self.inv_beta * np.asarray(a) - self.y
        # d(F a)/da of the plain estimator, then the control variate's constant shift
        return gv, big_f + self.inv_beta * np.eye(len(fa)) + g * g * (t - np.outer(fa, fa)) - shift

    def estimate(self, a, g):
        """``F(a) - D`` (the kernel, see ``control``), its relative Monte Carlo standard error (batch means
        of the linearised estimator over ``GROUPS_PER_BATCH`` groups a batch) and the ESS fraction.

        The kernel is projected onto the PSD cone (negative eigenvalues set to zero), which can only bring
        it closer to the true kernel; ``F`` alone is PSD by construction, ``F - D`` almost always is."""
        parts, scale, _ = self._combine(_batch_groups, jnp.asarray(a), g)
        sums = np.concatenate([q[0] for q in parts])
        totals = np.concatenate([q[1] for q in parts])
        sq = sum(float(q[2]) * c for q, c in zip(parts, scale))
        total = totals.sum()
        big_f, dev = _ratio_batch_means(sums, totals)
        shift, dev_prior = self.control()
        big_f, dev = big_f - shift, dev - dev_prior
        err = _batch_means_error(dev) / float(np.linalg.norm(big_f))
        big_f = 0.5 * (big_f + big_f.T)
        lam, vec = np.linalg.eigh(big_f)
        if lam[0] < 0:
            big_f = (vec * np.maximum(lam, 0.0)) @ vec.T
        return big_f, err, total * total / (sq * self.n)

    def weights(self, a, g):
        """Normalised weights (all batches, in order) and ``s = a . phi``."""
        parts, _, _ = self._combine(_batch_weights, jnp.asarray(a), g)
        w = np.concatenate([q[0] for q in parts])
        return w / w.sum(), np.concatenate([q[1] for q in parts])

    def log_normaliser(self, a, g):
        """``ln Z(a) = ln E_{h ~ N(0, C)} exp(g^2 (a . phi(h))^2 / 2)`` (THEORY.md 3.1's ``ln Z`` at
        ``hatPhi = -g^2 a a^T``) and its Monte Carlo standard error ``se(Z) / Z`` (batch means over the groups).
        The mixture is a normalised density, so the weights' mean is ``Z`` itself (``_batch_log_z_groups``)."""
        parts, _, shift = self._combine(_batch_log_z_groups, jnp.asarray(a), g)
        # per-group means of r (e^t - 1), in units of e^shift: Z = 1 + e^shift v
        return log_z_from_groups(shift, np.concatenate([q[0] for q in parts]) / GROUP, offset=1.0)

    def refit(self, a, g, kernel=None):
        """What ``_Problem.proposal`` needs to refit the mixture to the target at ``a``; with the state's
        ``kernel``, also the masses that draw the components in proportion to their share of the kernel's
        Monte Carlo error (``alloc``, see ``_batch_allocation``), not of the target's mass."""
        parts, _, _ = self._combine(_batch_moments, jnp.asarray(a), g, keys=("f32", "base", "w", "resp"))
        mass, sums, second = (sum(q[i] for q in parts) for i in (0, 1, 2))
        total = mass.sum()
        mass, sums, second = mass / total, sums / total, second / total
        alloc = mass
        if kernel is not None:
            parts, _, _ = self._combine(_batch_allocation, jnp.asarray(a), g, jnp.asarray(kernel),
                                        keys=("f32", "base", "resp"))
            share = sum(q[0] for q in parts)
            alloc = share / share.sum() if share.sum() > 0 else mass
        # the span: the pooled covariance about each draw's component mean, sum_j E[(w - m_j)(w - m_j)^T; j]
        means = sums / np.maximum(mass, 1e-300)[:, None]
        pooled = second - (means * mass[:, None]).T @ means
        lam, vec = np.linalg.eigh(0.5 * (pooled + pooled.T))
        span = vec[:, ::-1][:, :COV_RANK]
        parts, _, _ = self._combine(_batch_span_moments, jnp.asarray(a), g, jnp.asarray(span),
                                 keys=("f32", "base", "w", "resp"))
        in_span = sum(q[0] for q in parts) / total
        proj_means = means @ span
        cov = in_span / np.maximum(mass, 1e-300)[:, None, None] - proj_means[:, :, None] * proj_means[:, None, :]
        return {"xis": self.prop["xis"], "mass": mass, "alloc": alloc, "sums": sums,
                "n": REFIT_DRAWS * len(self.batches),
                "span": span, "cov": cov, "b": g * np.asarray(a, float)}

    def test_blocks(self, fn, a, g, l_test):
        """Weighted ``<phi_test phi_train^T>`` over the first ``TEST_CROSS_BATCHES`` batches and
        ``<phi_test phi_test^T>`` over the first ``TEST_SELF_DRAWS`` draws of each of them (with the control
        variate where the prior is known)."""
        batches = self.batches[:TEST_CROSS_BATCHES]
        # the normalisers, relative to the largest batch shift (one pass of O(N P))
        raw, _, shift = self._combine(_batch_totals, jnp.asarray(a), g, batches=batches)
        total, total_self = (sum(float(q[i]) for q in raw) for i in (0, 1))
        control = self.prior_test is not None  # r carries no shift: its sum over n draws estimates n K0
        norm = jnp.asarray([1.0 / total, 1.0 / total_self])
        prior_norm = jnp.asarray([1.0 / (BATCH * len(batches)), 1.0 / (TEST_SELF_DRAWS * len(batches))]
                                 if control else [0.0, 0.0])
        out = [fn(jnp.asarray(a), g, l_test, shift, norm, prior_norm, b["f32"], b["base"], b["w"]) for b in batches]
        cross, test = (sum(np.asarray(q[i]) for q in out) for i in (0, 1))
        if control:
            p = cross.shape[1]
            cross, test = cross + self.prior_test[:, :p], test + self.prior_test[:, p:]
        return cross, test


# ---------------------------------------------------------------- the problem


def _tail_slopes(modes, xis):
    """``kappa+- = |mu(xi)| / |xi|`` at the last and first of the nodes ``xis`` (ascending)."""
    return float(np.linalg.norm(modes[-1]) / xis[-1]), float(np.linalg.norm(modes[0]) / -xis[0])


class _Problem:
    """Fixed data of one solve: the whitening factor, the proposal machinery, the random stream.

    ``w`` lives in the whitened coordinates of the train+test input kernel, ``h = L_full w``
    (``L_full L_full^T = C_full``, rank ``k``): the tilt reads the train rows only, and the test
    preactivations of a draw are its test rows, the conditional Gaussian of THEORY.md 3.2 exactly.
    Directions outside the train rows' span are ``N(0, 1)`` under target and proposal alike.
    """

    def __init__(self, act, c_full, p, y, beta, seed, prior=None, jacobian_draws=None, sobol=False):
        """``prior``: the exact prior kernel ``E_N(0,C_full)[phi phi^T]`` on train+test (or train only, or
        None), for the control variates; ``jacobian_draws``: see ``_Draws.jacobian``; ``sobol``: randomised
        Sobol points instead of iid normals (see the module docstring)."""
        prior = None if prior is None else np.asarray(prior, float)
        self.prior = None if prior is None else prior[:p, :p]
        self.prior_test = None if prior is None or prior.shape[0] == p else prior[p:]
        self.jacobian_draws = jacobian_draws
        lam, vec = np.linalg.eigh(0.5 * (c_full + c_full.T))
        keep = lam > EIG_CUTOFF * max(lam[-1], 1e-300)
        l_full = vec[:, keep] * np.sqrt(lam[keep])
        self.lmat, self.l_test = jnp.asarray(l_full[:p]), jnp.asarray(l_full[p:])
        c = c_full[:p, :p]
        self.csd = jnp.asarray(np.sqrt(np.maximum(np.diag(c), 1e-300)))
        # symmetric-square-root coordinates of the train prior (the pool convention of akviz.anbk)
        self.to_pool = jnp.asarray((np.asarray(sym_sqrt_pinv(jnp.asarray(c))[1]) @ l_full[:p]).T)
        self.act, self.y, self.inv_beta = act, np.asarray(y, float), 1.0 / float(beta)
        self.key = jax.random.PRNGKey(int(seed))
        self.modes = _modes_fn(act)
        self.draw_fn = _draw_fn(act, l_full.shape[1])
        self.sobol = jnp.asarray(_sobol_points(l_full.shape[1] + 1 + COV_RANK)) if sobol else None

    def proposal(self, a, g, tau, refit=None):
        """The mixture at ``b = g a``: nodes ``xi_j``, ``log pi_j``, means ``mu_j``, tail slopes ``kappa+-``.

        Fresh (``refit=None``): a grid of ``xi`` over ``GRID_HALF_WIDTH tau``, split Student-t
        weights, mean-field modes. Refitted: see the module docstring.
        """
        if refit is None:
            half = GRID_HALF_WIDTH * max(tau)
            xis = np.linspace(-half, half, GRID_NODES)
        else:
            xis = refit["xis"]
        scale = np.where(xis > 0, tau[0], tau[1])
        log_t = -0.5 * (NU + 1) * np.log1p((xis / scale) ** 2 / NU)
        t_weights = np.exp(log_t - log_t.max())
        t_weights /= t_weights.sum()
        b = g * np.asarray(a, float)
        mean_field = self.mean_field(b, xis)
        kappa = _tail_slopes(mean_field, xis)
        if refit is None:  # identity components (no stretch)
            nodes, k = mean_field.shape
            return {"xis": xis, "log_pi": np.log(t_weights), "modes": mean_field, "kappa": kappa,
                    "span": np.eye(k)[:, :COV_RANK], "stretch": np.zeros((nodes, COV_RANK)),
                    "rot": np.broadcast_to(np.eye(COV_RANK), (nodes, COV_RANK, COV_RANK))}
        n_mass = refit["n"] * refit["mass"][:, None]
        # a refit made at another b (a neighbouring gamma0) keeps its components' offsets from the mean-field
        # modes, which move with b; the modes at the refit's own b are kept with it (a warm start reuses them)
        if np.array_equal(refit["b"], b):
            shift = 0.0
            refit.setdefault("mean_field", mean_field)
        else:
            shift = mean_field - (refit["mean_field"] if "mean_field" in refit else self.mean_field(refit["b"], xis))
        modes = (refit["n"] * refit["sums"] + n_mass * shift + PRIOR_COUNT * mean_field) / (n_mass + PRIOR_COUNT)
        pi = DEFENSIVE * t_weights + (1 - DEFENSIVE) * refit["alloc"]
        # each component's covariance excess in the span, shrunk to none by PRIOR_COUNT pseudo-draws
        lam, rot = np.linalg.eigh(0.5 * (refit["cov"] + np.swapaxes(refit["cov"], 1, 2)))
        count = (refit["n"] * refit["mass"])[:, None]
        stretch = np.clip(count * (lam - 1.0) / (count + PRIOR_COUNT), 0.0, COV_MAX)
        return {"xis": xis, "log_pi": np.log(pi), "modes": modes, "kappa": kappa,
                "span": refit["span"], "rot": rot, "stretch": stretch}

    def tail_slopes(self, a, g, tau):
        """``kappa+-`` of the fresh mixture at ``a`` (``proposal(a, g, tau)["kappa"]``) from its two end nodes only."""
        half = GRID_HALF_WIDTH * max(tau)
        ends = np.array([-half, half])
        return _tail_slopes(self.mean_field(g * np.asarray(a, float), ends), ends)

    def mean_field(self, b, xis):
        """The mean-field modes ``mu(xi)`` at ``b = g a`` for the nodes ``xis``."""
        return np.asarray(self.modes(self.lmat, self.csd, jnp.asarray(b), jnp.asarray(xis)))

    def draw(self, a, g, tau, n, refit=None, prop=None, control=True):
        """``n`` draws (a multiple of ``BATCH``) from the mixture at ``a`` (``prop``: that mixture, if built;
        ``control=False``: without the control variate, which costs a Gram of its own a batch)."""
        prop = self.proposal(a, g, tau, refit) if prop is None else prop
        batches = []
        for _ in range(n // BATCH):
            self.key, sub = jax.random.split(self.key)
            batches.append(self.draw_fn(sub, self.lmat, jnp.asarray(prop["log_pi"]), jnp.asarray(prop["modes"]),
                                        *(jnp.asarray(prop[key]) for key in ("span", "rot", "stretch")), self.sobol))
        prior, prior_test = (self.prior, self.prior_test) if control else (None, None)
        return _Draws(prop, batches, self.inv_beta, self.y, prior, prior_test, self.jacobian_draws)


def _newton(d, a, g, tol=NEWTON_TOL, noise_share=NEWTON_NOISE_SHARE):
    """Solve ``G(a) = 0`` on the draws ``d`` to ``|G| <= tol |y|``, or to ``noise_share`` of ``G``'s own Monte Carlo
    standard error at the start (``d.g_error``; ``noise_share=0``: ``tol`` alone); returns
    ``(a, |G|/|y|, iterations, note)``.

    Quasi-Newton: the Jacobian (from ``d.jacobian``, on a subset of the draws) is corrected after every step by
    Broyden's rank-one update, which learns the difference to the full sample average from the steps
    themselves; it is recomputed only where the steps stall. Backtracking on ``|G|``, within the ESS trust
    region."""
    y_norm = float(np.linalg.norm(d.y))
    a = np.asarray(a, float)
    gv, jac = d.jacobian(a, g)
    fresh = True
    _, ess_draw = d.g_value(a, g)
    gn = float(np.linalg.norm(gv))
    # solving beyond the draw's own noise moves a by less than its error bar: that share of G's error is enough
    enough = max(tol * y_norm, noise_share * d.g_error(a, g) if noise_share > 0 else 0.0)
    note, it = "", 0
    for it in range(NEWTON_ITERATIONS):
        if not math.isfinite(gn) or gn <= enough:
            break
        step = np.linalg.solve(jac, -gv)
        t = 1.0
        while t >= 1.0 / 64:
            a2 = a + t * step
            g2, ess2 = d.g_value(a2, g)
            gn2 = float(np.linalg.norm(g2))
            if math.isfinite(gn2) and gn2 <= (1 - 1e-4 * t) * gn and ess2 >= ESS_TRUST * ess_draw:
                break
            t *= 0.5
        else:
            if not fresh:  # the updated Jacobian misled the step: start again from a computed one
                gv, jac = d.jacobian(a, g)
                fresh = True
                continue
            note = "trust region: no step keeps the ESS within reach of the draw's"
            break
        slow = gn2 > 0.5 * gn
        if slow and not fresh:  # the updates stopped helping: recompute the Jacobian at the new point
            gv, jac = d.jacobian(a2, g)
            fresh = True
        else:
            da = a2 - a
            jac = jac + np.outer(g2 - gv - jac @ da, da) / float(da @ da)  # Broyden: now J da = dG exactly
            gv, fresh = g2, False
        a, gn = a2, gn2
    return a, gn / y_norm, it, note


# ---------------------------------------------------------------- the solver


def _round_to_batches(n):
    return max(1, -(-int(n) // BATCH)) * BATCH


def _keep(pool, n_max):
    """The newest draws of ``pool`` that hold at most ``n_max`` draws together (the newest always)."""
    kept, total = [], 0
    for d in reversed(pool):
        if kept and total + d.n > n_max:
            break
        kept.append(d)
        total += d.n
    return kept[::-1]


def _check_size(batch_error, state_error, tol, n0, n_max):
    """Draws (whole batches, from ``n0`` to ``n_max``) for the check of a state whose kernel has Monte Carlo
    error ``state_error``, when one fresh batch has error ``batch_error``.

    The check's residual carries the noise of both, ``sqrt(state_error^2 + batch_error^2 / m)`` for ``m``
    batches, and its Frobenius norm sums thousands of entries, so it sits close to that. Where the state
    leaves room, ``m`` brings that noise to ``CHECK_NOISE tol``; where it does not, the draw is ``n0``: it
    joins the state's pool after its check. Either way the fresh error itself stays below tol."""
    budget = (CHECK_NOISE * tol) ** 2
    # where the state leaves no room, the smallest draw: it joins the pool, and may still pass
    need = batch_error**2 / (budget - state_error**2) if state_error**2 < 0.5 * budget else 0.0
    need = max(need, (batch_error / (0.9 * tol)) ** 2)
    if not need * BATCH < n_max:  # also NaN
        return n_max
    return max(n0, _round_to_batches(need * BATCH))


def solve_ais(act, c_full, p, y, gamma0, beta, samples, seed, tol, max_iter, a0, tau0, g_from, callback, start,
              continuation, ess_floor, prior=None, refit0=None):
    """Solve the depth-1 saddle at ``gamma0``; returns a dict like the other solvers (see ``akviz.anbk``).

    ``samples`` draws per outer iteration (rounded up to whole batches), growing up to ``GROWTH``
    times that where the Monte Carlo error holds the residual above ``tol``. ``prior``: the exact
    prior kernel (the NNGP) on train+test, for the control variates; ``None`` turns them off.
    ``refit0``: a neighbour's last refit (its ``state["refit"]``), the first proposal when no
    continuation step comes before it; ignored unless it was made on the same train+test inputs (its
    components live in their whitened coordinates).
    """
    prob = _Problem(act, c_full, p, y, beta, seed, prior, JACOBIAN_DRAWS, sobol=True)
    inputs = hashlib.sha1(np.ascontiguousarray(c_full, dtype=float).tobytes()).hexdigest()
    if refit0 is not None and refit0.get("inputs") != inputs:
        refit0 = None
    history = []
    a = np.asarray(a0, float)
    tau = tuple(tau0) if tau0 is not None else (1.5, 1.5)
    n0 = n = _round_to_batches(samples)
    n_max = GROWTH * n0

    def record(kind, g, d, mc, ess, **extra):
        rec = {"kind": kind, "gamma0": g, "samples": d.n, "ess": float(ess), "mc_error": float(mc),
               "kappa": max(d.kappa), "tau": list(tau), "seconds": time.perf_counter() - start}
        rec.update(extra)
        history.append(rec)
        return rec

    def fit_tau(d, g, a_at):
        """``tau+-^2 = E[xi^2 | sign]`` under the target, where ``xi | w ~ N(g s(w), 1)``."""
        w, s = d.weights(a_at, g)
        gs = g * s
        out = []
        for side in (gs > 0, gs < 0):
            mass = w[side].sum()
            out.append(max(1.0, math.sqrt(float((w[side] * (gs[side] ** 2 + 1)).sum() / mass))) if mass > 0 else 1.0)
        return tuple(out)

    def start_point(a, g, g_prev, refit):
        """``a``, or ``a g_prev / g`` (the same ``b = gamma0 a``) where ``a`` does not normalise at ``g`` (the fresh
        mixture's tail slope says); and that fresh mixture where the first draw will use it (no ``refit``)."""
        # with a refit the draw builds its own mixture: the fresh one's tail slopes are all this needs
        prop = prob.proposal(a, g, tau) if refit is None else None
        kappa = prop["kappa"] if prop is not None else prob.tail_slopes(a, g, tau)
        if g_prev > 0 and max(kappa) >= 1:
            return a * g_prev / g, None
        return a, prop

    def state_action(phi, a, log_z):
        """THEORY.md 3.1's ``S`` at the state ``Phi``, ``hatPhi = -g^2 a a^T``."""
        return saddle_action([phi], [-gamma0**2 * np.outer(a, a)], y, gamma0**2, prob.inv_beta, [log_z])

    def accepted(res, mc, ess, kappa):
        """A checked state passes: residual below tol and resolved (its Monte Carlo error below tol too),
        the weights sound, the tilted density normalisable."""
        return res < tol and mc < tol and ess >= ess_floor and kappa < 1

    # predictor steps through intermediate gamma0: one draw and one sample-average solve each
    steps = continuation(g_from, gamma0)
    # a neighbour's mixture guides only a solve that starts right at it, not one that steps there
    g_prev, refit = g_from, (None if steps else refit0)
    for g_step in steps:
        a, prop = start_point(a, g_step, g_prev, None)
        # a step only moves a towards the target's saddle, and the next draw is made afresh: no control variate
        # (whose Gram costs as much as a kernel estimate, for a precision no step needs)
        d = prob.draw(a, g_step, tau, n, prop=prop, control=False)
        a, gres, nit, _ = _newton(d, a, g_step)
        # a step is not checked: its record needs the ESS only (G's last pass has it)
        record("continuation", g_step, d, float("nan"), d.g_value(a, g_step)[1], newton_residual=gres,
               newton_iterations=nit)
        tau, g_prev = fit_tau(d, g_step, a), g_step
        del d
        if max(prob.tail_slopes(a, g_step, tau)) >= 1:  # this step's state is beyond reach already: so is the target
            break

    g = gamma0
    a, prop = start_point(a, g, g_prev, refit)
    phi = None  # the state's kernel, Phi = F_pool(a)
    pool = []  # the state's draws: every draw at this gamma0 so far, newest last, at most n_max in all
    message, res, res_dual = "", float("nan"), float("nan")
    iterations, state_mc = 0, float("nan")
    for it in range(max_iter):
        iterations = it + 1
        log_z = None  # (ln Z, its error) at the state this iteration checks
        d = prob.draw(a, g, tau, n, refit, prop)
        prop = None  # built for the first draw only
        kappa = max(d.kappa)
        if phi is None:  # no state to check yet: the ESS is all this draw's record needs (G's pass gives it)
            fresh, mc_fresh, mc, ess = None, float("nan"), float("nan"), d.g_value(a, g)[1]
        else:
            fresh, mc_fresh, ess = d.estimate(a, g)
            # the state's kernel and the fresh one each carry an error: the larger bounds both the
            # kernels' error bars and what the residual can resolve
            mc = max(mc_fresh, state_mc)
            res = float(np.linalg.norm(fresh - phi) / np.linalg.norm(phi))
            a_fresh = np.linalg.solve(fresh + prob.inv_beta * np.eye(p), y)
            dual = np.outer(a, a)
            res_dual = float(np.linalg.norm(np.outer(a_fresh, a_fresh) - dual) / np.linalg.norm(dual))
        if not math.isfinite(ess) or (fresh is not None and not np.isfinite(fresh).all()):
            message = "the importance weights overflowed (NaN kernels)"
            break
        ok = phi is not None and accepted(res, mc, ess, kappa)
        rec = record("solve", g, d, mc, ess, residual=res, residual_dual=res_dual, fresh_mc_error=mc_fresh)
        if phi is not None:  # the checked state's action: its ln Z from the fresh draw (O(N P))
            log_z = d.log_normaliser(a, g)
            rec.update(log_z=log_z[0], action=state_action(phi, a, log_z[0]), action_mc_error=log_z[1],
                       alignment=[alignment(phi, y)])
        stop = callback is not None and callback(iterations, rec) is False
        # a solved state whose tilted density does not normalise is out of reach: more draws cannot help
        if ok or stop or it == max_iter - 1 or ess < ess_floor or (phi is not None and kappa >= 1):
            if stop and not ok:
                message = f"stopped by the callback after {iterations} iterations"
            break
        tau = fit_tau(d, g, a)
        pool = _keep(pool + [d], n_max)
        state = pool[0] if len(pool) == 1 else _Draws.pooled(pool)
        a, gres, nit, note = _newton(state, a, g)
        phi, state_mc, state_ess = state.estimate(a, g)
        history[-1].update(newton_residual=gres, newton_iterations=nit, state_samples=state.n,
                           state_mc_error=state_mc, state_ess=state_ess)
        refit = d.refit(a, g, phi)
        # the next draw checks this state; the first check draws samples= (a fresh batch's error is not known
        # yet: the first draw's proposal was built away from the solved state)
        n = n0 if not math.isfinite(mc_fresh) else _check_size(mc_fresh * math.sqrt(d.n / BATCH), state_mc, tol,
                                                                n0, n_max)
        del state
        if note and gres > 1e-6:
            history[-1]["note"] = note
    checked = phi is not None
    if not checked:  # no state was checked against fresh draws (max_iter=1 or an early stop): report the draw's
        phi, mc, ess = d.estimate(a, g)
    if log_z is None:  # ln Z at the final a on the final draw (a check has it already)
        log_z = d.log_normaliser(a, g)
    converged = bool(checked and accepted(res, mc, ess, kappa) and not message)
    # out of this method's reach (another solver may still find the saddle), or just not there yet
    beyond_reach = not converged and (kappa >= 1 or ess < ess_floor or "overflow" in message)
    if not message:
        message = _message(converged, iterations, res, mc, ess, kappa, tol, ess_floor, g, beta, d.n)
    w_final, _ = d.weights(a, g)
    first = d.batches[0]
    pool_w = w_final[:POOL]
    final = {"pool": [np.asarray(first["w"][:POOL] @ prob.to_pool)], "w": [pool_w / pool_w.sum()]}
    full = _full_kernel(prob, phi, d, a, g)
    return {
        "phis": [phi], "ms": [g * g * np.outer(a, a)], "final": final, "full": [full], "converged": converged,
        "iterations": iterations, "res_phi": [res], "res_dual": [res_dual], "mc_error": [mc], "ess": [ess],
        "history": history, "message": message, "kappa": kappa, "samples": d.n, "beyond_reach": beyond_reach,
        "log_z": [log_z[0]], "log_z_error": [log_z[1]],
        "state": {"a": np.asarray(a), "tau": tuple(tau), "beta": float(beta), "gamma0": g,
                  "refit": None if refit is None else dict(refit, inputs=inputs)},
    }


def _message(converged, iterations, res, mc, ess, kappa, tol, ess_floor, g, beta, n):
    tail = (f"saddle residual {res:.2e} on fresh draws (Monte Carlo error {mc:.2e}), ESS {100 * ess:.0f}% of "
            f"{n} draws, tail slope kappa {kappa:.3f}")
    if converged:
        return f"converged in {iterations} iterations (adaptive importance sampling): {tail}."
    reach = f"Try a smaller gamma0 (now {g:g}), a larger beta (now {beta:g}) or method='mala'."
    if kappa >= 1:
        cause = "the tilted density does not normalise at this state (kappa >= 1: the xi marginal grows in its tail)"
    elif ess < ess_floor:
        cause = f"the importance weights collapsed (ESS {100 * ess:.1f}% < {100 * ess_floor:.0f}%)"
    elif not math.isfinite(res):
        cause, reach = "no state was checked against fresh draws (max_iter=1)", "Use max_iter >= 2."
    elif res < tol:
        cause = f"the Monte Carlo error is above tol={tol:g}, so the residual is not resolved"
        reach = f"More draws (samples= above {n}) lower the Monte Carlo error."
    else:
        cause = f"the saddle residual did not fall below tol={tol:g} in max_iter={iterations} iterations"
        reach = f"More draws (samples= above {n}) or a larger max_iter lower the Monte Carlo error."
    return f"NOT converged (adaptive importance sampling): {cause}; {tail}. {reach}"


def _full_kernel(prob, phi, d, a, g):
    """Train+test kernel: the train block is the solved ``Phi``; the test rows of the final draw,
    weighted at ``a``, give the others (THEORY.md 3.2)."""
    p, q = phi.shape[0], prob.l_test.shape[0]
    out = np.empty((p + q, p + q))
    out[:p, :p] = phi
    if q == 0:
        return out
    cross, test = d.test_blocks(_test_blocks_fn(prob.act.fn), a, g, prob.l_test)
    out[p:, :p] = cross
    out[:p, p:] = cross.T
    out[p:, p:] = 0.5 * (test + test.T)
    return out
