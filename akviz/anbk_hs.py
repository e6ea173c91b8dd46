"""Hubbard-Stratonovich (HS) Monte Carlo for the aNBK saddle point (THEORY.md 3.1, 3.4).

The last layer's tilt is rank one, ``exp(+g^2 s^2 / 2)`` with ``s = a . phi(h)``
and ``g = gamma0``. Writing it as a Gaussian average over an auxiliary
``xi ~ N(0, 1)``,

    exp(g^2 s^2 / 2) = E_xi exp(g xi s),

the tilted single-site density becomes a one-dimensional mixture

    p(h) = ∫ w(xi) p(h | xi) dxi,   p(h | xi) ∝ N(h; 0, Phi^{L-1}) exp(g xi a . phi(h)),
    log w(xi) = -xi^2 / 2 + log Z(g xi),   Z(t) = E_prior exp(t s).

* ``xi`` is integrated by a deterministic trapezoid grid (no sampling).
* ``p(h | xi)`` is always normalisable (linear growth of the exponent). In
  whitened coordinates ``h = R u`` and for relu it is piecewise Gaussian with
  identity covariance; its mode is ``t v_sign(t)`` with ``v_+-`` the local
  maxima of ``F(v) = -|v|^2/2 +- a . relu(R v)`` (scale invariance of relu),
  so each node samples ``u = t v + z``, ``z ~ N(0, I)`` fixed (common random
  numbers) and reweights exactly: ``log(p~/q) = -|u|^2/2 + t s(u) + |z|^2/2``.
  For other activations the same proposal is used (modes by the same
  ascent, which is then only approximate): ESS is reported.
* Non-normalisability of the full tilt shows up only in the ``xi`` integral:
  ``log w(xi)`` rises again at large ``|xi|`` when ``gamma0^2 kappa > 1``.
  The *metastable prescription*: integrate ``xi`` over the basin of the main
  maximum of ``log w``, between the two barriers (the minima of ``log w`` on
  either side). The barrier height (nats) is reported; below ``BARRIER_MIN``
  or without a basin the result is ``converged=False``.

With the nodes, proposal means and base normals fixed, ``a -> Phi(a)`` is a
smooth deterministic map and ``a = (Phi(a) + I/beta)^-1 y`` is solved by
Anderson acceleration to a tight residual; the proposals are then refreshed
at the solution and the solve repeated until they stop moving. The Monte
Carlo standard error is reported separately (batch means over sample groups).

Inner layers (depth >= 2) use importance sampling from their Gaussian prior
with common random numbers (ESS reported) and the exact prior moments as
control variates (``E_prior[phi phi^T]`` in closed form / quadrature,
``E[z z^T] = I``; the HS layer's ``<u u^T>`` likewise uses ``E_q[u u^T] =
I + mu mu^T``). Without them the noise of ``<u u^T> - I``, amplified by
``(Phi^{l})^{-1/2}``, made the inner duals ``hatPhi^l`` pure noise and the
inner importance weights collapse (ESS 3-10% already at gamma0 = 0.05-0.1,
P = 100); with them ESS is 94% / 78% there. The joint state
``(Phi^1..Phi^{L-1}, a)`` is solved by the same Anderson iteration.

Measured limits of the prescription (digits:3v8, P = 100, relu, depth 1):
the basin of ``log w(xi)`` exists up to gamma0 ~ 0.3 (beta = 1) and ~ 0.15
(beta = 10); beyond, ``log w`` turns up ~3 standard deviations from its
maximum with a barrier of ~1 nat or none at all, so the tilted density has no
well-defined metastable state and the result says so.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .anbk_action import log_z_from_groups
from .anbk_mcmc import EIG_CUTOFF as _EIG_CUTOFF
from .anbk_mcmc import KERNEL_EIG_CUTOFF as _KERNEL_EIG_CUTOFF
from .anbk_mcmc import prior_cutoff as _prior_cutoff
from .anbk_mcmc import relative_difference as _rel
from .anbk_mcmc import sym_sqrt_pinv as _sym_sqrt_pinv
from .regression import alignment as _alignment

#: Minimum barrier (nats) between the basin of log w(xi) and the escape region.
BARRIER_MIN = 3.0
#: Sample groups for batch-means standard errors.
GROUPS = 8
#: Scan grid for the xi marginal.
_SCAN_HALF_WIDTH = 14.0
_SCAN_NODES = 113
_SCAN_SAMPLES = 192
#: Integration nodes in the basin.
_NODES = 40


def thin_factor(k):
    """``K = R R^T`` with ``R = V sqrt(Lambda)`` on the numerically non-null eigenspace; returns (R, V)."""
    k = 0.5 * (np.asarray(k) + np.asarray(k).T)
    lam, vec = np.linalg.eigh(k)
    keep = lam > _EIG_CUTOFF * max(lam[-1], 1e-300)
    return vec[:, keep] * np.sqrt(lam[keep]), vec[:, keep]


@functools.lru_cache(maxsize=None)
def hs_functions(phi):
    """Jitted pieces for one activation function ``phi``."""

    def modes(r, a, v0, n_steps=300):
        """Local maxima of ``F(v) = -|v|^2/2 + sig a.phi(R v)`` for sig = +1 (rows of v0[0]) and -1 (v0[1])."""
        def grad_f(v, sig):
            h = v @ r.T
            _, vjp = jax.vjp(phi, h)
            return -v + sig * vjp(jnp.broadcast_to(a, h.shape))[0] @ r

        def body(i, v):
            eta = 0.3 / (1.0 + i / 60.0)
            return jnp.stack([v[0] + eta * grad_f(v[0], 1.0), v[1] + eta * grad_f(v[1], -1.0)])

        v = jax.lax.fori_loop(0, n_steps, body, v0)
        fval = -0.5 * jnp.sum(v * v, -1) + jnp.stack([1.0, -1.0])[:, None] * (phi(v @ r.T) @ a)
        return v, fval

    def node_logs(r, a, g, xi, mu, z):
        """Per-sample log(p~/q) at nodes xi with proposals N(mu_k, I) (u = mu_k + z)."""
        u = mu[:, None, :] + z
        f = phi(u @ r.T)
        s = f @ a
        lr = -jnp.sum(mu[:, None, :] * z, -1) - 0.5 * jnp.sum(mu * mu, -1)[:, None] + g * xi[:, None] * s
        return u, f, lr

    def scan(r, a, g, xi, mu, z):
        """``log Z(g xi)`` and within-node ESS on a grid."""
        _, _, lr = node_logs(r, a, g, xi, mu, z)
        s = z.shape[1]
        log_z = jax.scipy.special.logsumexp(lr, axis=1) - jnp.log(s)
        wn = jax.nn.softmax(lr, axis=1)
        return log_z, 1.0 / (jnp.sum(wn**2, 1) * s)

    def hs_layer(r, a, g, xi, lq, mu, z):
        """Kernels of the HS mixture on the basin nodes (``lq``: log quadrature weight incl. -xi^2/2).

        Returns Phi, <u u^T>, joint weights (n*S,), node ESS (mass-weighted), node masses, log w,
        group kernels (batch means).
        """
        u, f, lr = node_logs(r, a, g, xi, mu, z)
        n, s = lr.shape
        log_z = jax.scipy.special.logsumexp(lr, axis=1) - jnp.log(s)
        logw = lq + log_z
        mass = jax.nn.softmax(logw)
        wn = jax.nn.softmax(lr, axis=1)
        ess_n = 1.0 / (jnp.sum(wn**2, 1) * s)
        w = (mass[:, None] * wn).reshape(-1)
        ff = f.reshape(n * s, -1)
        uu = u.reshape(n * s, -1)
        phi_new = (ff * w[:, None]).T @ ff
        # <u u^T> with the proposal's exact second moment as control variate (E_q[u u^T] = I + mu mu^T):
        # sum_k m_k [I + mu_k mu_k^T + sum_s (w_ks - 1/S) u u^T]; noise vanishes as the tilt weakens
        dw = (mass[:, None] * (wn - 1.0 / s)).reshape(-1)
        suu = jnp.eye(uu.shape[1]) + (mu * mass[:, None]).T @ mu + (uu * dw[:, None]).T @ uu
        return phi_new, suu, w, jnp.sum(mass * ess_n), mass, logw

    def hs_groups(r, a, g, xi, lq, mu, z, groups):
        """Batch means: group j = samples j*S/G.. of every node, node masses re-estimated per group.

        Also each group's ``ln Z`` of the layer, ``ln sum_k e^{lq_k} Z_g(g xi_k) - ln(2 pi)/2``: the basin's
        share of ``E_{xi ~ N(0,1)} E_prior exp(g xi s) = E_prior exp(g^2 s^2 / 2)`` (THEORY.md 3.1's ``Z_L``
        under the metastable prescription); their mean over groups is the estimate over all samples."""
        u, f, lr = node_logs(r, a, g, xi, mu, z)
        n, s = lr.shape
        lrg = lr.reshape(n, groups, s // groups)
        lzg = jax.scipy.special.logsumexp(lrg, axis=2)
        massg = jax.nn.softmax(lq[:, None] + lzg, axis=0)  # (n, G)
        wng = jax.nn.softmax(lrg, axis=2)
        wg = massg[:, :, None] * wng  # (n, G, s/G)
        fg = f.reshape(n, groups, s // groups, -1)
        log_z = (jax.scipy.special.logsumexp(lq[:, None] + lzg, axis=0) - jnp.log(s // groups)
                 - 0.5 * jnp.log(2 * jnp.pi))
        return jnp.einsum("ngs,ngsi,ngsj->gij", wg, fg, fg), log_z

    def prior_layer(r, m, z, groups, prior_phi):
        """Importance sampling of an inner layer from its prior: tilt exp(phi^T M phi / 2).

        Control variates with the exact prior moments (``prior_phi`` = E_prior[phi phi^T], E[z z^T] = I):
        ``<X> = E_prior[X] + sum_s (w_s - 1/S) X_s``, exact as the tilt vanishes.
        """
        f = phi(z @ r.T)
        lt = 0.5 * jnp.sum((f @ m) * f, -1)
        w = jax.nn.softmax(lt)
        s = z.shape[0]
        dw = w - 1.0 / s
        phi_new = prior_phi + (f * dw[:, None]).T @ f
        suu = jnp.eye(z.shape[1]) + (z * dw[:, None]).T @ z
        wg = jax.nn.softmax(lt.reshape(groups, s // groups), axis=1)
        fg = f.reshape(groups, s // groups, -1)
        kg = prior_phi[None] + jnp.einsum("gs,gsi,gsj->gij", wg - groups / s, fg, fg)
        # each group's ln Z = ln E_prior exp(phi^T M phi / 2) (THEORY.md 3.1's Z_l)
        log_z = jax.scipy.special.logsumexp(lt.reshape(groups, s // groups), axis=1) - jnp.log(s // groups)
        return phi_new, suu, w, 1.0 / (jnp.sum(w**2) * s), kg, log_z

    return {"modes": jax.jit(modes, static_argnums=(3,)), "scan": jax.jit(scan),
            "hs_layer": jax.jit(hs_layer), "hs_groups": jax.jit(hs_groups, static_argnums=(7,)),
            "prior_layer": jax.jit(prior_layer, static_argnums=(3,)),
            "sym_sqrt": jax.jit(functools.partial(_sym_sqrt_pinv, cutoff=_KERNEL_EIG_CUTOFF))}  # layer kernels


def _pairs(k):
    k = jnp.asarray(k)
    d = jnp.diag(k)
    return d[:, None], d[None, :], k


def basin(xi, logw, barrier_min=BARRIER_MIN, rise=2.0):
    """Basin of the main maximum of ``log w`` on a grid.

    Main maximum: the highest node with ``|xi| <= 3`` that is a local maximum (else the highest one
    there). On each side we walk outwards tracking the running minimum; an *upturn* is a node more
    than ``rise`` nats above it (escape towards the non-normalisable region). The basin ends at the
    running minimum before the upturn (the barrier), or at the grid end when there is no upturn.
    Returns (lo_index, hi_index, barrier) with barrier = min over sides with an upturn of
    logw[max] - logw[barrier node] (inf when neither side turns up).
    """
    logw = np.asarray(logw)
    central = np.where(np.abs(xi) <= 3.0)[0]
    k0 = int(central[np.argmax(logw[central])])
    ends, barriers = [], []
    for step in (-1, 1):
        k, kmin = k0, k0
        up = False
        while 0 <= k + step < len(xi):
            k += step
            if logw[k] < logw[kmin]:
                kmin = k
            elif logw[k] > logw[kmin] + rise:
                up = True
                break
        ends.append(kmin)
        barriers.append(logw[k0] - logw[kmin] if up else np.inf)
    return ends[0], ends[1], float(min(barriers)), k0


def trapezoid_nodes(lo, hi, n):
    xi = np.linspace(lo, hi, n)
    lq = np.full(n, math.log((hi - lo) / (n - 1)))
    lq[[0, -1]] -= math.log(2.0)
    return xi, lq - 0.5 * xi**2


# ---------------------------------------------------------------- solver


class _Problem:
    """Fixed data of one solve: input factor, base normals (common random numbers), settings."""

    def __init__(self, act, c, y, g, beta, depth, samples, seed):
        self.act, self.phi = act, act.fn
        self.fns = hs_functions(act.fn)
        self.y = np.asarray(y, float)
        self.p = self.y.shape[0]
        self.g, self.beta, self.depth = float(g), float(beta), int(depth)
        self.c = np.asarray(c)
        r1, v1 = thin_factor(c)
        self.r1, self.v1 = r1, v1
        self.r1j = jnp.asarray(r1)
        self.n_nodes = _NODES
        self.s_node = max(GROUPS, (samples // _NODES) // GROUPS * GROUPS)
        self.s_inner = max(GROUPS, samples // GROUPS * GROUPS)
        self.r_last = r1.shape[1] if depth == 1 else self.p
        key = jax.random.PRNGKey(int(seed))
        k_last, k_scan, k_inner, k_modes = jax.random.split(key, 4)
        self.z_last = jax.random.normal(k_last, (self.n_nodes, self.s_node, self.r_last))
        self.z_scan = jax.random.normal(k_scan, (_SCAN_NODES, _SCAN_SAMPLES, self.r_last))
        self.v_starts = jax.random.normal(k_modes, (2, 7, self.r_last))
        self.z_inner = [jax.random.normal(k, (self.s_inner, r1.shape[1] if l == 0 else self.p))
                        for l, k in enumerate(jax.random.split(k_inner, max(depth - 1, 1)))][: depth - 1]
        self.eye = np.eye(self.p)

    # state x = (Phi^1 .. Phi^{L-1} flattened, a)
    def split(self, x):
        pp = self.p * self.p
        inner = [x[l * pp:(l + 1) * pp].reshape(self.p, self.p) for l in range(self.depth - 1)]
        return inner, x[(self.depth - 1) * pp:]

    def join(self, inner, a):
        return np.concatenate([np.asarray(q).ravel() for q in inner] + [np.asarray(a)])

    def r_last_of(self, inner):
        if self.depth == 1:
            return self.r1j
        return self.fns["sym_sqrt"](jnp.asarray(inner[-1]))[0]

    def setup(self, x, v_prev=None):
        """Proposal modes and basin nodes at state x (the reference of the next inner solve)."""
        inner, a = self.split(x)
        r = self.r_last_of(inner)
        aj = jnp.asarray(a)
        starts = self.v_starts
        # deterministic starts: +-R^T a (scaled), previous modes, random directions
        ra = jnp.asarray(a) @ r
        det = jnp.stack([ra, -ra])[:, None, :]
        starts = jnp.concatenate([det, starts], axis=1)
        if v_prev is not None and v_prev.shape[-1] == starts.shape[-1]:
            starts = jnp.concatenate([jnp.asarray(v_prev)[:, None, :], starts], axis=1)
        v, fval = self.fns["modes"](r, aj, starts, 300)
        v, fval = np.asarray(v), np.asarray(fval)
        best = np.argmax(fval, axis=1)
        modes = np.stack([v[0, best[0]], v[1, best[1]]])
        kappa = float(2 * max(fval[0, best[0]], fval[1, best[1]]))  # ray growth rate of the best mode
        xi = np.linspace(-_SCAN_HALF_WIDTH, _SCAN_HALF_WIDTH, _SCAN_NODES)
        mu = self._means(xi, modes)
        log_z, ess_scan = self.fns["scan"](r, aj, self.g, jnp.asarray(xi), jnp.asarray(mu), self.z_scan)
        logw = -0.5 * xi**2 + np.asarray(log_z)
        lo, hi, barrier, k0 = basin(xi, logw)
        # integrate only where the xi marginal is not negligible (e^-30 of its maximum)
        keep = np.where(logw >= logw[k0] - 30.0)[0]
        lo, hi = max(lo, int(keep[keep <= k0].min())), min(hi, int(keep[keep >= k0].max()))
        ok = hi - lo >= 2 and np.isfinite(logw).all()
        nodes, lq = trapezoid_nodes(xi[lo], xi[hi], self.n_nodes) if ok else (None, None)
        return {"modes": modes, "kappa": kappa, "scan_xi": xi, "scan_logw": logw, "scan_ess": np.asarray(ess_scan),
                "lo": xi[lo], "hi": xi[hi], "barrier": barrier, "ok": ok, "xi_max": xi[k0],
                "nodes": nodes, "lq": lq, "mu": None if not ok else jnp.asarray(self._means(nodes, modes))}

    def _means(self, xi, modes):
        t = self.g * xi
        return np.where(t[:, None] >= 0, t[:, None] * modes[0][None], -t[:, None] * modes[1][None])

    def evaluate(self, x, st, full=False):
        """The stationarity map at state x with setup st (fixed samples)."""
        inner, a = self.split(x)
        r = self.r_last_of(inner)
        args = (r, jnp.asarray(a), self.g, jnp.asarray(st["nodes"]), jnp.asarray(st["lq"]), st["mu"], self.z_last)
        phi_l, suu, w_l, ess_l, mass, logw = self.fns["hs_layer"](*args)
        kg_l, lz_l = self.fns["hs_groups"](*args, GROUPS) if full else (None, None)
        phi_l = np.asarray(phi_l)
        phis, ms, ws, esss, kgs, lzs = ([None] * self.depth for _ in range(6))
        phis[-1], ws[-1], esss[-1], kgs[-1], lzs[-1] = phi_l, w_l, float(ess_l), kg_l, lz_l
        a_new = np.linalg.solve(phi_l + self.eye / self.beta, self.y)
        ms[-1] = self.g**2 * np.outer(a_new, a_new)
        suu = np.asarray(suu)
        for l in reversed(range(self.depth - 1)):
            # tilt of layer l+1 (1-based) from the layer above: M = R^+ (<u u^T> - I) R^+
            rinv = np.asarray(self.fns["sym_sqrt"](jnp.asarray(inner[l]))[1])
            m = rinv @ (suu - np.eye(suu.shape[0])) @ rinv
            m = 0.5 * (m + m.T)
            r_l = self.r1j if l == 0 else self.fns["sym_sqrt"](jnp.asarray(inner[l - 1]))[0]
            prior_k = self.c if l == 0 else inner[l - 1]
            pphi = self.act.expectations(*_pairs(prior_k))[0]
            pl, suu_l, w, ess, kg, lz = self.fns["prior_layer"](r_l, jnp.asarray(m), self.z_inner[l], GROUPS, pphi)
            phis[l], ws[l], esss[l], kgs[l], ms[l], lzs[l] = np.asarray(pl), w, float(ess), kg, m, lz
            suu = np.asarray(suu_l)
        x_new = self.join(phis[:-1], a_new)
        res = {"phis": phis, "ms": ms, "ess": esss, "x": x_new, "mass": np.asarray(mass), "logw": np.asarray(logw)}
        if full:
            se = []
            for l in range(self.depth):
                kg = np.asarray(kgs[l])
                s = kg.std(axis=0, ddof=1) / math.sqrt(GROUPS)
                se.append(float(np.linalg.norm(s) / np.linalg.norm(phis[l])))
            res["mc_error"] = se
            # ln Z_l and se(Z)/Z from the groups' estimates (the action's one noisy term)
            groups = [np.asarray(q, float) for q in lzs]
            per_layer = [log_z_from_groups(float(q.max()), np.exp(q - q.max())) for q in groups]
            res["log_z"], res["log_z_error"] = [q[0] for q in per_layer], [q[1] for q in per_layer]
            res["w"] = [np.asarray(w) for w in ws]
            res["r_last"] = np.asarray(r)
        return res


def _anderson_solve(prob, st, x, tol, max_evals, m=6, trust=0.5):
    """Anderson-accelerated fixed point of x -> G(x) on fixed samples. Returns (x, evals, residual, left).

    ``left``: the iterate moved more than ``trust`` (relative) from where the proposals were built
    (they would degenerate): the caller refreshes them there and continues.
    """
    xs, fs = [], []
    res = np.inf
    x_ref = np.array(x)
    n_ref = np.linalg.norm(x_ref)
    for it in range(1, max_evals + 1):
        if np.linalg.norm(x - x_ref) > trust * n_ref:
            x = x_ref + trust * n_ref * (x - x_ref) / np.linalg.norm(x - x_ref)
            return x, it, res, True
        gx = prob.evaluate(x, st)["x"]
        f = gx - x
        res = float(np.linalg.norm(f) / max(np.linalg.norm(gx), 1e-300))
        if not np.isfinite(res):
            return x, it, np.inf, False
        if res < tol:
            return gx, it, res, False
        xs.append(x)
        fs.append(f)
        if len(xs) > m + 1:
            xs.pop(0)
            fs.pop(0)
        if len(xs) == 1:
            x_next = x + f
        else:
            df = np.stack([fs[i + 1] - fs[i] for i in range(len(fs) - 1)], 1)
            dx = np.stack([xs[i + 1] - xs[i] for i in range(len(xs) - 1)], 1)
            gam = np.linalg.lstsq(df, f, rcond=None)[0]
            x_next = x + f - (dx + df) @ gam
        if prob.depth > 1:  # inner kernels must stay PSD
            inner, a = prob.split(x_next)
            if any(np.linalg.eigvalsh(0.5 * (q + q.T))[0] < -1e-10 * np.abs(q).max() for q in inner):
                xs, fs = [], []
                x_next = gx
        x = x_next
    return x, max_evals, res, False


def _no_basin_message(g, st):
    if not st["ok"]:
        why = "log w(xi) has no basin around its main maximum"
    else:
        why = f"the barrier of log w(xi) around the basin is only {st['barrier']:.2g} nats (< {BARRIER_MIN:g})"
    return (f"the tilted density does not normalise at gamma0 = {g:.3g}: {why} (tilt growth "
            f"gamma0^2 kappa = {g**2 * st['kappa']:.3g} along the dominant cone; the metastable saddle is "
            "gone or too shallow); use a smaller gamma0 or a larger beta.")


def solve_hs(act, c, y, g, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, callback, start,
             continuation, ess_floor=0.05, inner_tol=1e-5, max_evals=40):
    """Solve the saddle at gamma0 = g; returns a dict like the other solvers (see anbk).

    Its residual is measured on the solver's own (common) samples, where the fixed point is solved to ~1e-5,
    so it says nothing of the Monte Carlo error: as for the other solvers, ``converged`` also needs that error
    (batch means over sample groups) below ``tol``. (Digits 3-vs-8, relu, ``gamma0 = 0.2``, P = 100: 1.7% with
    163840 samples in 26 s; 7% with 5120 samples at P = 30.)
    """
    sol = _solve_hs_settled(act, c, y, g, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, callback,
                            start, continuation, ess_floor, inner_tol, max_evals)
    noise = max(sol["mc_error"])
    if sol["converged"] and not noise < tol:
        sol["converged"] = False
        sol["message"] = (f"the Monte Carlo error {noise:.2e} is above tol {tol:g}, so the kernels are not resolved "
                          f"to tol (the fixed point itself settled: residual {max(sol['res_phi']):.1e} on the "
                          f"solver's own samples); raise samples (now {samples}): the error falls like "
                          "1/sqrt(samples).")
    return sol


def _solve_hs_settled(act, c, y, g, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, callback, start,
                      continuation, ess_floor=0.05, inner_tol=1e-5, max_evals=40, _bisect=3):
    """``solve_hs`` before its Monte Carlo error is judged: ``converged`` says the proposals settled at a
    fixed point of the map on fixed samples. A warm start whose state has no basin at the target gamma0 (the
    step was too large) is retried through the midpoint gamma0 (up to ``_bisect`` halvings) before failure is
    reported."""
    sol = _solve_hs(act, c, y, g, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, callback,
                    start, continuation, ess_floor, inner_tol, max_evals)
    if sol["converged"] or sol.get("failed_at_start") is not True or _bisect <= 0 or g - g_from < 0.02:
        return sol
    mid = 0.5 * (g + g_from)
    half = _solve_hs_settled(act, c, y, mid, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, None,
                             start, continuation, ess_floor, inner_tol, max_evals, _bisect - 1)
    if not half["converged"]:
        return sol
    out = _solve_hs_settled(act, c, y, g, beta, depth, samples, seed, tol, max_iter, half["state"]["x"],
                            half["state"]["modes"], mid, callback, start, continuation, ess_floor, inner_tol,
                            max_evals, _bisect - 1)
    out["history"] = [dict(h, kind="bisection") for h in half["history"]] + out["history"]
    return out


def _solve_hs(act, c, y, g, beta, depth, samples, seed, tol, max_iter, x0, modes0, g_from, callback, start,
              continuation, ess_floor, inner_tol, max_evals):
    prob = _Problem(act, c, y, g, beta, depth, samples, seed)
    history = []
    x, modes = np.asarray(x0, float), modes0
    state = {"g": g}

    def record(kind, gg, res, extra=None):
        rec = {"iteration": len(history) + 1, "kind": kind, "gamma0": gg, "residual": res,
               "seconds": time.perf_counter() - start}
        if extra:
            rec.update(extra)
        history.append(rec)
        return rec

    # --- continuation in gamma0 (cold starts and big jumps): one proposal refresh per step
    for gs in ([] if g_from > 0 and g <= 2.0 * g_from + 0.1 else continuation(g_from, g)):
        prob.g = gs
        st = prob.setup(x, modes)
        if not st["ok"]:  # (barriers are judged at the target only: off the saddle they are lower)
            return _fail(prob, x, st, history, _no_basin_message(gs, st), state)
        for _ in range(8):
            x, n_ev, res, left = _anderson_solve(prob, st, x, inner_tol * 10, max_evals)
            modes = st["modes"]
            if not left:
                break
            st = prob.setup(x, modes)
            if not st["ok"]:
                return _fail(prob, x, st, history, _no_basin_message(gs, st), state)
        record("continuation", gs, res, {"evaluations": n_ev, "barrier": st["barrier"]})
    prob.g = g
    prev_phi, st, message, converged = None, None, "", False
    ev = None
    for outer in range(1, max_iter + 1):
        st = prob.setup(x, modes)
        modes = st["modes"]
        if not st["ok"] or (outer > 1 and st["barrier"] < BARRIER_MIN):
            out = _fail(prob, x, st, history, _no_basin_message(g, st), state)
            out["failed_at_start"] = outer == 1
            return out
        x, n_ev, res, left = _anderson_solve(prob, st, x, inner_tol, max_evals)
        ev = prob.evaluate(x, st, full=True)
        change = _rel(ev["phis"][-1], prev_phi) if prev_phi is not None else np.inf
        prev_phi = ev["phis"][-1]
        rec = record("refresh", g, res, {"evaluations": n_ev, "barrier": st["barrier"], "ess": ev["ess"],
                                         "mc_error": ev["mc_error"], "refresh_change": change,
                                         "basin": [float(st["lo"]), float(st["hi"])],
                                         "alignment": [_alignment(q, prob.y) for q in ev["phis"]]})
        if callback is not None and callback(rec["iteration"], rec) is False:
            message = "stopped by the callback."
            break
        if left:
            prev_phi = None
            continue
        if res > 1e-3:
            message = (f"the fixed-point iteration did not converge on fixed samples (residual {res:.2e} after "
                       f"{n_ev} map evaluations); use a smaller gamma0, a larger beta or a warm start.")
            break
        noise = max(ev["mc_error"])
        if change < max(tol, 3.0 * math.sqrt(2.0) * noise):
            converged = True
            break
    if ev is None:
        return _fail(prob, x, st, history, message or "no iterations.", state)
    ev2 = prob.evaluate(ev["x"], st)
    res_phi = [_rel(ev2["phis"][l], ev["phis"][l]) for l in range(depth)]
    res_dual = [_rel(ev2["ms"][l], ev["ms"][l]) for l in range(depth)]
    ess = ev["ess"]
    if converged and min(ess) < ess_floor:
        converged = False
        message = (f"importance sampling degenerated (ESS {min(ess):.1%} < {ess_floor:.0%}); "
                   "use a smaller gamma0, a larger beta or more samples.")
    if converged and max(res_phi) >= tol:
        converged = False
        message = f"saddle residual {max(res_phi):.2e} above tol {tol:g}."
    if converged:
        message = (f"converged (Hubbard-Stratonovich, metastable basin xi in [{st['lo']:.2f}, {st['hi']:.2f}], "
                   f"barrier {st['barrier']:.3g} nats): residual {max(res_phi):.1e}, Monte Carlo error "
                   f"{max(ev['mc_error']):.1e}, min ESS {min(ess):.0%}.")
    elif not message:
        message = (f"the proposals did not settle in {max_iter} refreshes (last change {change:.2e}, Monte Carlo "
                   f"error {max(ev['mc_error']):.2e}); raise samples or max_iter.")
    state.update(x=np.asarray(x), modes=modes)
    return {"converged": converged, "message": message, "iterations": len(history), "history": history,
            "phis": ev["phis"], "ms": ev["ms"], "res_phi": res_phi, "res_dual": res_dual,
            "mc_error": ev["mc_error"], "ess": ess, "barrier": st["barrier"], "kappa": st["kappa"],
            "basin": (float(st["lo"]), float(st["hi"])), "final": _final(prob, x, st, ev), "state": state,
            "log_z": ev["log_z"], "log_z_error": ev["log_z_error"],
            "scan": {"xi": st["scan_xi"], "logw": st["scan_logw"]}}


def _final(prob, x, st, ev):
    """Samples and weights per layer in symmetric-square-root whitened coordinates (for test kernels/densities)."""
    pools = []
    inner, _ = prob.split(x)
    for l in range(prob.depth - 1):
        z = np.asarray(prob.z_inner[l])
        pools.append(z @ prob.v1.T if l == 0 else z)
    u = (np.asarray(st["mu"])[:, None, :] + np.asarray(prob.z_last)).reshape(-1, prob.r_last)
    pools.append(u @ prob.v1.T if prob.depth == 1 else u)
    return {"pool": pools, "w": ev["w"], "ms": ev["ms"]}


def _fail(prob, x, st, history, message, state):
    inner, a = prob.split(x)
    nan = [float("nan")] * prob.depth
    state.update(x=np.asarray(x), modes=None)
    phis = [np.full((prob.p, prob.p), np.nan)] * prob.depth
    return {"converged": False, "message": message, "iterations": len(history), "history": history,
            "phis": phis, "ms": phis, "res_phi": [float("inf")] * prob.depth, "res_dual": nan,
            "mc_error": nan, "ess": [0.0] * prob.depth,
            "barrier": float(st["barrier"]) if st else float("nan"),
            "kappa": float(st["kappa"]) if st else float("nan"), "basin": None, "final": None, "state": state,
            "scan": {"xi": st["scan_xi"], "logw": st["scan_logw"]} if st else None}


@functools.lru_cache(maxsize=None)
def _full_fn(phi):
    def full(pool, r, b, lc, z, w):
        f_tr = phi(pool @ r)
        f_te = phi(pool @ b.T + z @ lc)
        fw = f_te * w[:, None]
        return fw.T @ f_tr, fw.T @ f_te
    return jax.jit(full)


def full_kernels(act, phis, c_full, p, final, seed):
    """Train+test kernels by Gaussian conditioning of the test block, layer by layer (THEORY.md 3.2).

    ``final["pool"][l]`` are whitened samples (symmetric-square-root coordinates of the layer's
    train prior) with weights ``final["w"][l]``; the train block is the solved kernel itself.
    """
    fn = _full_fn(act.fn)
    n = c_full.shape[0]
    key = jax.random.PRNGKey(int(seed) + 7919)
    k = np.asarray(c_full)
    out = []
    for l in range(len(phis)):
        prior = k[:p, :p] if l == 0 else phis[l - 1]
        r, rinv = (np.asarray(q) for q in _sym_sqrt_pinv(jnp.asarray(prior), _prior_cutoff(l)))
        new = np.empty((n, n))
        new[:p, :p] = phis[l]
        if n > p:
            b = k[p:, :p] @ rinv
            cond = k[p:, p:] - b @ b.T
            lc = np.asarray(_sym_sqrt_pinv(jnp.asarray(0.5 * (cond + cond.T)))[0])
            pool = jnp.asarray(final["pool"][l])
            key, sub = jax.random.split(key)
            z = jax.random.normal(sub, (pool.shape[0], n - p))
            tp, tt = fn(pool, jnp.asarray(r), jnp.asarray(b), jnp.asarray(lc), z, jnp.asarray(final["w"][l]))
            new[p:, :p], new[:p, p:] = np.asarray(tp), np.asarray(tp).T
            new[p:, p:] = 0.5 * (np.asarray(tt) + np.asarray(tt).T)
        out.append(new)
        k = new
    return out
