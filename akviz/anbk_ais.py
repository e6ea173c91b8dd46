"""Depth-1 aNBK by adaptive importance sampling and Newton on the sample average (THEORY.md 3.1, 3.4).

With one hidden layer, ``h = L w`` (``L L^T = C`` on train, ``w ~ N(0, I_k)``,
``k = rank C``), the tilted density is

    p(w) ∝ N(w; 0, I) exp(g^2 s(w)^2 / 2),   s(w) = a . phi(L w),   g = gamma0,

and the saddle point is ``a = (Phi(a) + I/beta)^-1 y`` with ``Phi(a) = <phi phi^T>_p``.

**Proposal.** Hubbard-Stratonovich, ``exp(g^2 s^2/2) = E_{xi ~ N(0,1)} exp(g xi s)``,
makes ``p`` the ``w``-marginal of ``pi(w, xi) ∝ N(w; 0, I) N(xi; 0, 1) exp(g xi s(w))``.
We draw iid from

    q(xi, w) = t_split(xi; tau+, tau-) N(w; mu(xi), I)

* ``mu(xi)`` is the mode of the conditional smoothed by its own noise,
  ``mu = g xi L^T (a ⊙ E_z[phi'(L mu + sqrt(diag C) z)])``, tabulated on a grid
  of ``xi`` (damped fixed-point iteration) and interpolated linearly (extrapolated
  beyond the table, where it is linear). For relu inside one activation pattern
  the conditional *is* ``N(mu, I)``, so the proposal is exact in the ``xi``
  tails, where the tilt acts most.
* ``xi`` has a two-sided Student-t (5 degrees of freedom) with scales ``tau+-``
  fitted to the weighted ``E[xi^2 | sign xi]`` of the previous draw: its tails
  are heavier than the target's Gaussian ones.
* The slope ``kappa = |mu(xi)| / |xi|`` at the table's ends is the tail's
  decay: the ``xi`` marginal falls like ``exp(-(1 - kappa^2) xi^2 / 2)``. At
  ``kappa >= 1`` the tilted density does not normalise, and the result says so.

**Sample-average Newton.** With the draws fixed, the self-normalised weights
``w_n ∝ pi/q`` depend on ``a`` only through ``g xi_n a . phi_n``, so

    G(a) = (F(a) + I/beta) a - y,        F(a) = sum_n w_n phi_n phi_n^T,
    J(a) = F + I/beta + g (T - (F a) m^T),   T = sum_n w_n xi_n s_n phi_n phi_n^T,  m = sum_n w_n xi_n phi_n

is a smooth map solved by Newton with backtracking (``G`` costs ``O(N P)``, a
Jacobian ``O(N P^2)`` and is refreshed only when ``|G|`` falls slowly); a step
may not drop the ESS below ``ESS_TRUST`` of the draw's. ``F`` is a weighted
average of outer products: symmetric positive semi-definite by construction.

**Honesty.** Each outer iteration redraws at the new ``a`` and measures the
state's saddle residual ``||F_fresh(a) - Phi|| / ||Phi||`` on the fresh,
independent draws: it is ``~ sqrt(2)`` times the Monte Carlo error (batch means
over ``GROUPS`` groups of draws) when the state is solved. ``converged`` needs
that residual below ``tol``, ESS above the floor and ``kappa < 1``.
Cold solves go through intermediate ``gamma0`` values (one draw and Newton
solve each), so every proposal is built at a state close to the target's.

Measured (digits 3-vs-8, P = 100, relu, ``beta = 1``, 2^18 draws): see the
README's aNBK section.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .anbk_mcmc import EIG_CUTOFF, GROUPS, proposal_noise, sym_sqrt_pinv

#: Draws per outer iteration (2^18: Monte Carlo error ~0.5% of ||Phi|| at mild tilt, P = 100).
DEFAULT_SAMPLES = 1 << 18
#: Degrees of freedom of the ``xi`` proposal (heavier tails than the target's Gaussian ones).
NU_INT = 5
NU = float(NU_INT)
#: ``xi`` nodes of the proposal-mode table, and its half width in units of ``tau`` (t_5 leaves 1e-5 beyond).
GRID_NODES = 65
GRID_HALF_WIDTH = 14.0
#: Damped fixed-point iterations for the proposal modes.
MODE_ITERATIONS = 200
#: A Newton step may not drop the ESS below this fraction of the draw's own.
ESS_TRUST = 0.3
#: Newton iterations per draw, and the relative ``|G| / |y|`` at which the sample average counts as solved.
NEWTON_ITERATIONS = 25
NEWTON_TOL = 1e-10
#: Draws per chunk when the test blocks are accumulated (bounds memory at ~chunk x (P + Q) floats).
CHUNK = 1 << 15
#: Draws kept (with their weights) for the preactivation densities.
POOL = 1 << 15


# ---------------------------------------------------------------- jitted pieces


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
        def step(_, mu):
            e = slope(mu @ lmat.T, csd)
            return 0.5 * mu + 0.5 * xis[:, None] * ((e * b) @ lmat)
        return jax.lax.fori_loop(0, MODE_ITERATIONS, step, jnp.zeros((xis.shape[0], lmat.shape[1])))
    return modes


@functools.lru_cache(maxsize=None)
def _draw_fn(act, n, k):
    @jax.jit
    def draw(key, lmat, xi0, dxi, modes, tau_p, tau_m):
        # hashed normals (akviz.anbk_mcmc.proposal_noise): threefry made the draw three times slower
        noise = proposal_noise(key, (n, k + NU_INT + 2), jnp.float64)
        z, num, chi = noise[:, :k], noise[:, k], noise[:, k + 1:k + 1 + NU_INT]
        t = jnp.abs(num) / jnp.sqrt(jnp.sum(chi * chi, 1) / NU)  # |Student t_5|
        plus = noise[:, -1] < jax.scipy.special.ndtri(tau_p / (tau_p + tau_m))  # side, P(+) = tau+ / (tau+ + tau-)
        tau = jnp.where(plus, tau_p, tau_m)
        xi = jnp.where(plus, 1.0, -1.0) * tau * t
        pos = (xi - xi0) / dxi
        i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, modes.shape[0] - 2)
        mu = modes[i] + (pos - i)[:, None] * (modes[i + 1] - modes[i])
        w = mu + z
        f = act.fn(w @ lmat.T)
        # log pi - log q, up to a constant (the split t's normaliser 2 / (tau+ + tau-) is common to all)
        base = -0.5 * xi**2 - 0.5 * jnp.sum(w * w, 1) + 0.5 * jnp.sum(z * z, 1) \
            + 0.5 * (NU + 1) * jnp.log1p((xi / tau) ** 2 / NU)
        return xi, f, f.astype(jnp.float32), base, w
    return draw


def _weights(a, g, xi, f, base):
    lw = base + g * xi * (f @ a)
    w = jnp.exp(lw - jnp.max(lw))
    return w / jnp.sum(w)


@jax.jit
def _residual_map(a, g, xi, f, base, inv_beta, y):
    """``G(a)`` and the ESS fraction of the weights at ``a``: O(N P)."""
    w = _weights(a, g, xi, f, base)
    fa = (w * (f @ a)) @ f
    return fa + inv_beta * a - y, 1.0 / (jnp.sum(w * w) * w.shape[0])


@jax.jit
def _jacobian(a, g, xi, f, f32, base, inv_beta, y):
    """``G(a)`` and ``J(a)``; the two Gram matrices in float32 (a Newton direction needs no more, 1.6x faster)."""
    w = _weights(a, g, xi, f, base)
    s = f @ a
    gram = jnp.stack([w, w * xi * s]).astype(jnp.float32)
    big_f, t = (jnp.einsum("kn,np,nq->kpq", gram, f32, f32)).astype(jnp.float64)
    m = (w * xi) @ f
    fa = big_f @ a
    jac = big_f + inv_beta * jnp.eye(a.shape[0]) + g * (t - jnp.outer(fa, m))
    return fa + inv_beta * a - y, jac


@jax.jit
def _estimate(a, g, xi, f, base):
    """``F(a)``, its relative Monte Carlo standard error (batch means of the ratio estimator), ESS fraction."""
    w = _weights(a, g, xi, f, base)
    n, p = f.shape
    fg = f.reshape(GROUPS, n // GROUPS, p)
    wg = w.reshape(GROUPS, n // GROUPS)
    sums = jnp.einsum("gnp,gnq->gpq", fg * wg[..., None], fg)
    big_f = jnp.sum(sums, 0)
    totals = jnp.sum(wg, 1)
    dev = (sums - big_f[None] * totals[:, None, None]) * GROUPS  # linearised ratio, weights sum to 1
    err = jnp.sqrt(jnp.sum(dev**2) / (GROUPS * (GROUPS - 1))) / jnp.linalg.norm(big_f)
    return 0.5 * (big_f + big_f.T), err, 1.0 / (jnp.sum(w * w) * n)


# ---------------------------------------------------------------- the problem


class _Problem:
    """Fixed data of one solve: the whitening factor, the proposal machinery, the draws' size.

    ``w`` lives in the whitened coordinates of the train+test input kernel, ``h = L_full w``
    (``L_full L_full^T = C_full``, rank ``k``): the tilt reads the train rows only, and the test
    preactivations of a draw are its test rows, the conditional Gaussian of THEORY.md 3.2 exactly.
    Directions outside the train rows' span are ``N(0, 1)`` under target and proposal alike.
    """

    def __init__(self, act, c_full, p, y, beta, samples, seed):
        lam, vec = np.linalg.eigh(0.5 * (c_full + c_full.T))
        keep = lam > EIG_CUTOFF * max(lam[-1], 1e-300)
        l_full = vec[:, keep] * np.sqrt(lam[keep])
        self.lmat, self.l_test = jnp.asarray(l_full[:p]), jnp.asarray(l_full[p:])
        c = c_full[:p, :p]
        self.csd = jnp.asarray(np.sqrt(np.maximum(np.diag(c), 1e-300)))
        # symmetric-square-root coordinates of the train prior (the pool convention of akviz.anbk)
        self.to_pool = jnp.asarray((np.asarray(sym_sqrt_pinv(jnp.asarray(c))[1]) @ l_full[:p]).T)
        self.act, self.y, self.inv_beta = act, jnp.asarray(y), 1.0 / float(beta)
        self.n = int(samples)
        self.key = jax.random.PRNGKey(int(seed))
        self.modes = _modes_fn(act)
        self.draw_fn = _draw_fn(act, self.n, l_full.shape[1])

    def proposal(self, a, g, tau):
        """Mode table at ``b = g a`` and its tail slopes ``kappa+-``."""
        half = GRID_HALF_WIDTH * max(tau)
        xis = np.linspace(-half, half, GRID_NODES)
        modes = np.asarray(self.modes(self.lmat, self.csd, jnp.asarray(g * np.asarray(a)), jnp.asarray(xis)))
        kappa = (float(np.linalg.norm(modes[-1]) / half), float(np.linalg.norm(modes[0]) / half))
        return xis, modes, kappa

    def draw(self, a, g, tau):
        xis, modes, kappa = self.proposal(a, g, tau)
        self.key, sub = jax.random.split(self.key)
        xi, f, f32, base, w = self.draw_fn(sub, self.lmat, xis[0], xis[1] - xis[0], jnp.asarray(modes),
                                           tau[0], tau[1])
        return {"xi": xi, "f": f, "f32": f32, "base": base, "w": w, "kappa": kappa}


def _newton(prob, d, a, g):
    """Solve ``G(a) = 0`` on the draws ``d``; returns ``(a, |G|/|y|, newton iterations, note)``."""
    args = (d["xi"], d["f"], d["base"], prob.inv_beta, prob.y)
    jac_args = (d["xi"], d["f"], d["f32"], d["base"], prob.inv_beta, prob.y)
    y_norm = float(jnp.linalg.norm(prob.y))
    a = jnp.asarray(a)
    gv, jac = _jacobian(a, g, *jac_args)
    _, ess_draw = _residual_map(a, g, *args)
    gn = float(jnp.linalg.norm(gv))
    note = ""
    for it in range(NEWTON_ITERATIONS):
        if not math.isfinite(gn) or gn <= NEWTON_TOL * y_norm:
            break
        step = jnp.linalg.solve(jac, -gv)
        t = 1.0
        while t >= 1.0 / 64:
            a2 = a + t * step
            g2, ess2 = _residual_map(a2, g, *args)
            gn2 = float(jnp.linalg.norm(g2))
            if math.isfinite(gn2) and gn2 <= (1 - 1e-4 * t) * gn and float(ess2) >= ESS_TRUST * float(ess_draw):
                break
            t *= 0.5
        else:
            note = "trust region: no step keeps the ESS within reach of the draw's"
            break
        a, gv, slow = a2, g2, gn2 > 0.25 * gn
        gn = gn2
        if slow:  # chord steps stalled: refresh the Jacobian
            gv, jac = _jacobian(a, g, *jac_args)
    return np.asarray(a), gn / y_norm, it, note


# ---------------------------------------------------------------- the solver


def solve_ais(act, c_full, p, y, gamma0, beta, samples, seed, tol, max_iter, a0, tau0, g_from, callback, start,
              continuation, ess_floor):
    """Solve the depth-1 saddle at ``gamma0``; returns a dict like the other solvers (see ``akviz.anbk``)."""
    prob = _Problem(act, c_full, p, y, beta, samples, seed)
    history = []
    a = np.asarray(a0, float)
    tau = tuple(tau0) if tau0 is not None else (1.5, 1.5)

    def record(kind, g, d, est, newton=None, **extra):
        rec = {"kind": kind, "gamma0": g, "ess": float(est[2]), "mc_error": float(est[1]),
               "kappa": max(d["kappa"]), "tau": list(tau), "seconds": time.perf_counter() - start}
        if newton is not None:
            rec.update(newton_residual=newton[1], newton_iterations=newton[2])
        rec.update(extra)
        history.append(rec)
        return rec

    def fit_tau(d, g, a_at):
        w = np.asarray(_weights(jnp.asarray(a_at), g, d["xi"], d["f"], d["base"]))
        xi = np.asarray(d["xi"])
        out = []
        for side in (xi > 0, xi < 0):
            mass = w[side].sum()
            out.append(max(1.0, math.sqrt(float((w[side] * xi[side] ** 2).sum() / mass))) if mass > 0 else 1.0)
        return tuple(out)

    def start_point(a, g, g_prev):
        """``a``, or ``a g_prev / g`` (the same ``b = gamma0 a``) where ``a`` does not normalise at ``g``."""
        if g_prev > 0 and max(prob.proposal(a, g, tau)[2]) >= 1:
            return a * g_prev / g
        return a

    # predictor steps through intermediate gamma0: one draw and one sample-average solve each
    g_prev = g_from
    for g_step in continuation(g_from, gamma0):
        a = start_point(a, g_step, g_prev)
        d = prob.draw(a, g_step, tau)
        a, gres, nit, _ = _newton(prob, d, a, g_step)
        est = _estimate(jnp.asarray(a), g_step, d["xi"], d["f"], d["base"])
        record("continuation", g_step, d, est, (None, gres, nit))
        tau, g_prev = fit_tau(d, g_step, a), g_step
        del d

    g = gamma0
    a = start_point(a, g, g_prev)
    phi = None  # the state's kernel, Phi = F_previous-draws(a)
    converged, message, final_d, res, res_dual, est = False, "", None, float("nan"), float("nan"), None
    iterations = 0
    for it in range(max_iter):
        iterations = it + 1
        d = prob.draw(a, g, tau)
        est = _estimate(jnp.asarray(a), g, d["xi"], d["f"], d["base"])
        fresh, mc, ess = np.asarray(est[0]), float(est[1]), float(est[2])
        kappa = max(d["kappa"])
        if phi is not None:
            res = float(np.linalg.norm(fresh - phi) / np.linalg.norm(phi))
            a_fresh = np.linalg.solve(fresh + prob.inv_beta * np.eye(p), y)
            res_dual = float(np.linalg.norm(np.outer(a_fresh, a_fresh) - np.outer(a, a)) / np.linalg.norm(np.outer(a, a)))
        final_d = d
        if not np.isfinite(fresh).all():
            message = "the importance weights overflowed (NaN kernels)"
            break
        ok = phi is not None and res < tol and ess >= ess_floor and kappa < 1
        rec = record("solve", g, d, est, residual=res, residual_dual=res_dual)
        stop = callback is not None and callback(iterations, rec) is False
        if ok or stop or it == max_iter - 1:
            if stop and not ok:
                message = f"stopped by the callback after {iterations} iterations"
            break
        if ess < ess_floor:
            break
        tau = fit_tau(d, g, a)
        a, gres, nit, note = _newton(prob, d, a, g)
        history[-1].update(newton_residual=gres, newton_iterations=nit)
        phi = np.asarray(_estimate(jnp.asarray(a), g, d["xi"], d["f"], d["base"])[0])
        if note and gres > 1e-6:
            history[-1]["note"] = note
    if phi is None:  # no state was checked against fresh draws (max_iter=1 or an early stop): report the draw's
        phi = fresh
    w_final = np.asarray(_weights(jnp.asarray(a), g, final_d["xi"], final_d["f"], final_d["base"]))
    converged = bool(phi is not fresh and res < tol and ess >= ess_floor and kappa < 1 and not message)
    if not message:
        message = _message(converged, iterations, res, mc, ess, kappa, tol, ess_floor, g, beta)
    final = {"pool": [np.asarray(final_d["w"][:POOL] @ prob.to_pool)],
             "w": [w_final[:POOL] / w_final[:POOL].sum()]}
    full = _full_kernel(prob, phi, final_d, jnp.asarray(w_final))
    return {
        "phis": [phi], "ms": [g * g * np.outer(a, a)], "final": final, "full": [full], "converged": converged,
        "iterations": iterations, "res_phi": [res], "res_dual": [res_dual], "mc_error": [mc], "ess": [ess],
        "history": history, "message": message, "kappa": kappa,
        "state": {"a": np.asarray(a), "tau": tuple(tau), "beta": float(beta), "gamma0": g},
    }


def _message(converged, iterations, res, mc, ess, kappa, tol, ess_floor, g, beta):
    tail = (f"residual {res:.2e} (fresh draws; Monte Carlo error {mc:.2e}), ESS {100 * ess:.0f}%, "
            f"tail slope kappa {kappa:.3f}")
    if converged:
        return f"converged in {iterations} iterations (adaptive importance sampling): {tail}."
    if kappa >= 1:
        cause = ("the tilted density does not normalise at this state (kappa >= 1: the xi marginal grows in its "
                 "tail)")
    elif ess < ess_floor:
        cause = f"the importance weights collapsed (ESS {100 * ess:.1f}% < {100 * ess_floor:.0f}%)"
    elif not math.isfinite(res):
        cause = "no state was checked against fresh draws (max_iter=1)"
    else:
        cause = f"the residual did not fall below tol={tol:g} in max_iter={iterations} iterations"
    return (f"NOT converged (adaptive importance sampling): {cause}; {tail}. Try a smaller gamma0 "
            f"(now {g:g}), a larger beta (now {beta:g}) or method='mala'.")


@functools.lru_cache(maxsize=None)
def _test_blocks_fn(phi):
    @jax.jit
    def blocks(w, f_train, l_test, weights):
        f_test = phi(w @ l_test.T) * weights[:, None]
        return f_test.T @ f_train, f_test.T @ phi(w @ l_test.T)
    return blocks


def _full_kernel(prob, phi, d, weights):
    """Train+test kernel: the train block is the solved ``Phi``; the test rows of the same weighted draws
    give the others (THEORY.md 3.2), accumulated in chunks of ``CHUNK`` draws."""
    p, q = phi.shape[0], prob.l_test.shape[0]
    out = np.empty((p + q, p + q))
    out[:p, :p] = phi
    if q == 0:
        return out
    fn = _test_blocks_fn(prob.act.fn)
    cross, test = 0.0, 0.0
    for lo in range(0, weights.shape[0], CHUNK):
        sl = slice(lo, lo + CHUNK)
        tp, tt = fn(d["w"][sl], d["f"][sl], prob.l_test, weights[sl])
        cross, test = cross + tp, test + tt
    out[p:, :p] = np.asarray(cross)
    out[:p, p:] = out[p:, :p].T
    out[p:, p:] = 0.5 * (np.asarray(test) + np.asarray(test).T)
    return out
