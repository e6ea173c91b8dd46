"""aNTK for depth ``L >= 2`` by the fixed-point equations of THEORY.md 4.3. **EXPERIMENTAL.**

The equations are derived in THEORY.md (not in the paper) and have not yet been
checked against finite-width networks (issue on finite-width networks); treat
every number from here as provisional.

Fixed point (per neuron of layer ``l``, ``kappa = gamma0 / lambda``,
``g^l = phi'(h^l) v^l``; ``Phi^0 = C``, ``G^{L+1} = 1``):

    h^l(x) = kappa sum_mu Delta_mu Phi^{l-1}(x, x_mu) g^l_mu
    v^l(x) = kappa sum_mu Delta_mu G^{l+1}(x, x_mu) phi(h^l_mu)      (v^L = z, constant in x)
    f(x)   = <z phi(h^L(x))> / gamma0 = Phi^L(x, X) Delta / lambda,   Delta = y - f(X)

hence ``f(x) = Phi^L(x, X)(Phi^L + lambda I)^-1 y`` (feature form) and, for
positively homogeneous ``phi``, ``f = K (K + (L+1) lambda I)^-1 y`` with
``K = sum_{l=0..L} G^{l+1} * Phi^l`` (NTK form).

How it is reached: every layer carries ``S`` sampled neurons ``(h^l, v^l)`` on
train+test (antithetic pairs ``(h, v), (h, -v)``, so ``f = 0`` at the seed),
seeded from the lazy (infinite-width, ``gamma0 -> 0``) solution:
``h^l ~ N(0, Phi^{l-1}_lazy)``, ``v^l ~ N(0, G^{l+1}_lazy)``. They then follow the
*depth-1-style* relaxation

    dh^l/dt = gamma0 Phi^{l-1}(., X)(Delta * g^l_X) - lambda h^l
    dv^l/dt = gamma0 G^{l+1}(., X)(Delta * phi(h^l_X)) - lambda v^l

(for ``L = 1`` this is exactly the DMFT of THEORY.md 4.1 once the init memory
has decayed; for ``L >= 2`` it drops the response/memory terms of the true
training dynamics, so it is a damped fixed-point iteration whose fixed points
are exactly those of 4.3, not the training trajectory). Integration:
exponential Euler (exact ``-lambda`` decay, so the step map has the same fixed
points for any step), kernels of the previous step (Jacobi over layers), the
readout error ``Delta`` implicit through the last layer's step Jacobian
``b (Phi^L + G^L * Phi^{L-1})``, adaptive step (relative change ~``rtol``, up to
``lambda dt = -ln 0.4``), one ``jax.lax.while_loop`` per recorded chunk.

The relaxation alone can circle (layer magnitudes exchange like a
predator-prey pair), so from ``lambda t = 10`` on the same step map (fixed
``lambda dt = 0.15``) is Anderson-accelerated (memory 10; on a blow-up it
restarts from the best iterate with a few plain steps, and after repeated
blow-ups retries with a 3x smaller step).

Converged when the DMFT output and the feature form agree to ``tol`` and the
per-neuron fixed-point residual ``max_l max(|h^l - T_h|/|h^l|, |v^l - T_v|/|v^l|)``
is below ``residual_tol`` (default ``sqrt(tol)``).

Validation (tests/test_antk.py): for the linear activation the fixed point is
known in closed form (every layer's features are rank one along
``u(x) = C(x, X) Delta``, ``Phi^l = q_l u u^T``, ``f = c C(., X)(I + c C)^-1 y``
with the scalars fixed by the layer-wise eigen-conditions); the solver is
checked against it. Which non-zero fixed point is reached (there can be
several, and zero is always one) is decided by this relaxation, not by
training; the finite-width check is still to come.

Measured (digits:3v8, P=30 + 20 test, S=200): depth 2, linear, gamma0 in
{1, 1.5, 2, 2.2}: output and both layer kernels match the closed form to
1e-10 (relative), NTK form to 1e-10. Depth 2 relu/tanh at that size: the
feature-form gap goes below 1e-4 but the per-neuron residual stays ~0.2 / 0.02
within 60 s (not converged). Depth 3 (linear) does not converge: the layer
magnitudes keep drifting (kernels off by O(1) factors), reported as
``converged=False``.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .antk import _status_message, interruption, predictor_fields
from .kernels import input_kernel, lazy_kernels
from .regression import alignment as _alignment
from .regression import mse

#: Damping ``1 - exp(-lambda dt_max)`` of the largest step.
MAX_DAMPING = 0.6


class _DState(NamedTuple):
    H: jnp.ndarray      # (L, S, N) preactivations on train+test
    V: jnp.ndarray      # (L, S, N) backward fields (layer L: z, constant in x)
    d: jnp.ndarray      # exp(-lambda t)
    delta: jnp.ndarray  # (P,)
    t: jnp.ndarray
    dt: jnp.ndarray
    res: jnp.ndarray    # feature-form gap on train
    hres: jnp.ndarray   # change per step / damping (fixed-point residual estimate)
    steps: jnp.ndarray
    bad: jnp.ndarray


def _kernels(H, V, phi, dphi):
    """Per-layer Phi^l, G^l (L, N, N) from the populations."""
    S = H.shape[1]
    F = phi(H)
    Gf = dphi(H) * V
    Phi = jnp.einsum("lsa,lsb->lab", F, F) / S
    G = jnp.einsum("lsa,lsb->lab", Gf, Gf) / S
    return F, Gf, Phi, G


def _drives(H, V, delta, C, phi, dphi, p):
    """Fixed-point maps without the factor 1/lambda: gamma0 * (drive of h, drive of v)."""
    L = H.shape[0]
    F, Gf, Phi, G = _kernels(H, V, phi, dphi)
    Kin = jnp.concatenate([C[None], Phi[:-1]], axis=0)                    # Phi^{l-1}
    Kback = jnp.concatenate([G[1:], jnp.ones_like(G[:1])], axis=0)        # G^{l+1}
    dH = jnp.einsum("lsm,lnm->lsn", Gf[:, :, :p] * delta, Kin[:, :, :p])
    dV = jnp.einsum("lsm,lnm->lsn", F[:, :, :p] * delta, Kback[:, :, :p])
    return dH, dV, F, Phi, G, L


def _make_step(phi, dphi, p, implicit=True):
    def one_step(s, C, y, gamma, lam, rtol, dt):
        S = s.H.shape[1]
        a = jnp.exp(-lam * dt)
        b = -jnp.expm1(-lam * dt) / lam
        dH, dV, F, Phi, G, L = _drives(s.H, s.V, s.delta, C, phi, dphi, p)
        H1 = a * s.H + b * gamma * dH
        V1 = a * s.V + b * gamma * dV
        f1 = jnp.mean(V1[-1, :, :p] * phi(H1[-1, :, :p]), axis=0) / gamma
        kin_last = C if s.H.shape[0] == 1 else Phi[-2]
        jac = b * (Phi[-1][:p, :p] + G[-1][:p, :p] * kin_last[:p, :p])
        D = s.delta + jnp.linalg.solve(jnp.eye(p) + jac, y - f1 - s.delta) if implicit else s.delta
        # Re-drive the last layer with the implicit error (other layers: kernels lag one step).
        dH2, dV2, *_ = _drives(s.H, s.V, D, C, phi, dphi, p)
        H2 = a * s.H + b * gamma * dH2
        V2 = a * s.V + b * gamma * dV2
        F2 = phi(H2[-1, :, :p])
        f2 = jnp.mean(V2[-1, :, :p] * F2, axis=0) / gamma
        PhiL = F2.T @ F2 / S
        gap = jnp.linalg.norm(f2 - PhiL @ (y - f2) / lam) / jnp.maximum(jnp.linalg.norm(f2), 1e-300)
        nh = jnp.linalg.norm(H2)
        nv = jnp.linalg.norm(V2)
        ch = jnp.linalg.norm(H2 - s.H) / jnp.maximum(nh, 1e-300)
        cv = jnp.linalg.norm(V2 - s.V) / jnp.maximum(nv, 1e-300)
        cf = jnp.linalg.norm(f2 - (y - s.delta)) / jnp.maximum(jnp.linalg.norm(y), 1e-300)
        err = jnp.maximum(jnp.maximum(ch, cv), cf) / rtol
        omega = -jnp.expm1(-lam * dt)
        new = s._replace(H=H2, V=V2, d=a * s.d, delta=y - f2, t=s.t + dt, dt=dt, res=gap,
                         hres=jnp.maximum(ch, cv) / omega, steps=s.steps + 1)
        ok = jnp.isfinite(err) & jnp.isfinite(nh) & jnp.isfinite(nv) & (nh < 1e150) & (nv < 1e150)
        return new, err, ok

    return one_step


@functools.lru_cache(maxsize=16)
def _deep_step(phi, dphi, p: int, implicit=True):
    """Jitted single step (used by the Anderson phase)."""
    return jax.jit(_make_step(phi, dphi, p, implicit))


@functools.lru_cache(maxsize=16)
def _deep_runner(phi, dphi, chunk: int, p: int):
    one_step = _make_step(phi, dphi, p)

    def run(s, C, y, gamma, lam, rtol, tol, htol, dt_max, t_max):
        start = s.steps
        tr = jnp.full((4, chunk), jnp.nan)

        def cond(carry):
            st, _, _ = carry
            return ((st.steps - start < chunk) & ((st.res > tol) | (st.hres > htol))
                    & (st.t < t_max) & (~st.bad))

        def body(carry):
            st, tr, tries = carry
            dt = jnp.minimum(jnp.minimum(st.dt, dt_max), jnp.maximum(t_max - st.t, 1e-300))
            new, err, ok = one_step(st, C, y, gamma, lam, rtol, dt)
            accept = ok & (err <= 2.0)
            factor = jnp.where(ok, jnp.clip(0.9 / jnp.sqrt(jnp.maximum(err, 1e-12)), 0.2, 2.0), 0.1)
            kept = jax.tree_util.tree_map(lambda u, w: jnp.where(accept, u, w), new, st)
            tries = jnp.where(accept, 0, tries + 1)
            kept = kept._replace(dt=jnp.minimum(dt * factor, dt_max), bad=st.bad | (tries > 40))
            i = st.steps - start
            row = jnp.stack([new.t, 0.5 * jnp.sum(new.delta**2), new.hres, dt])
            tr = jnp.where(accept, tr.at[:, i].set(row), tr)
            return kept, tr, tries

        st, tr, _ = jax.lax.while_loop(cond, body, (s, tr, jnp.asarray(0)))
        return st, tr

    return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _deep_observer(phi, dphi, p: int):
    def observe(H, V, y, C, gamma, lam):
        """Kernels, DMFT output and the per-neuron fixed-point residual, Delta = y - f(X) from the populations."""
        f = jnp.mean(V[-1] * phi(H[-1]), axis=0) / gamma
        delta = y - f[:p]
        dH, dV, F, Phi, G, L = _drives(H, V, delta, C, phi, dphi, p)
        rh = jnp.max(jnp.sqrt(jnp.sum((H - gamma * dH / lam) ** 2, axis=(1, 2)) / jnp.sum(H**2, axis=(1, 2))))
        rv = jnp.max(jnp.sqrt(jnp.sum((V - gamma * dV / lam) ** 2, axis=(1, 2)) / jnp.sum(V**2, axis=(1, 2))))
        return Phi, G, f, jnp.maximum(rh, rv)

    return jax.jit(observe)


def _sample(cov, n, key):
    w, U = np.linalg.eigh(0.5 * (cov + cov.T))
    R = U * np.sqrt(np.clip(w, 0.0, None))[None, :]
    u = np.asarray(jax.random.normal(key, (n, cov.shape[0]), dtype=jnp.float64))
    return u @ R.T


#: Adaptive relaxation up to ``lambda t`` = this before the Anderson phase (the transient and
#: the seed's memory ``exp(-lambda t)`` are gone by then).
RELAX_LAMBDA_T = 10.0
#: Anderson: damping of the underlying step map (lambda dt) and history length.
ANDERSON_LAMBDA_DT = 0.15
ANDERSON_MEMORY = 10
#: Relative step of the Anderson map below which, with 4.3's residual still above ``residual_tol``,
#: the map is taken to sit at a fixed point of its own (see :func:`_anderson`).
SPURIOUS_STEP = 1e-12


def _anderson(st, act, p, C, y, gamma0, lam, tol, htol, max_steps, max_time, max_seconds, start,
              record, full_gap, traj, record_every, lamdt=ANDERSON_LAMBDA_DT):
    """Anderson acceleration (type II, memory ``ANDERSON_MEMORY``) of the exponential-Euler step
    map at ``lambda dt = lamdt``. Restarts its history when the residual grows tenfold over the best seen.

    The map is the step of the relaxation, with the readout error implicit (stable at large steps).
    Its fixed points include those of THEORY.md 4.3, but not only: measured (depth 2, linear,
    gamma0 = 2.2, 30 + 20 points), it came to rest (relative step 5e-15) with kernels 0.1% off and
    4.3's residual 0.9. So where the map stops moving and 4.3's residual does not meet
    ``htol``, the iteration goes on with the readout error explicit, a map whose fixed points are
    exactly 4.3's (same run: converged, residual 1e-9)."""
    step = _deep_step(act.fn, act.deriv, p)
    dt = lamdt / lam
    shape = st.H.shape
    n = st.H.size
    mem = ANDERSON_MEMORY if 2 * n <= 2_000_000 else 4

    def pack(s):
        return jnp.concatenate([s.H.ravel(), s.V.ravel()])

    def unpack(x, s):
        return s._replace(H=x[:n].reshape(shape), V=x[n:].reshape(shape))

    def G(x, s):
        s = unpack(x, s)
        f = jnp.mean(s.V[-1, :, :p] * act.fn(s.H[-1, :, :p]), axis=0) / gamma0
        s = s._replace(delta=y - f)
        new, _, ok = step(s, C, y, jnp.asarray(gamma0), jnp.asarray(lam), jnp.asarray(1.0), jnp.asarray(dt))
        return new, bool(ok)

    x = pack(st)
    Xh, Rh = [], []
    best = np.inf
    stopped = None
    k = fails = 0
    best_x = best_st = explicit = None
    plain = 0
    while True:
        new, ok = G(x, st)
        r = pack(new) - x
        nr = float(jnp.linalg.norm(r) / jnp.maximum(jnp.linalg.norm(x), 1e-300))
        if not ok or not np.isfinite(nr) or nr > 100 * best:
            # Extrapolated into a bad region: back to the best iterate, history cleared, a few plain steps.
            fails += 1
            if fails > 20 or best_x is None:
                if best_x is None:
                    st = new._replace(bad=jnp.asarray(True))
                else:
                    st = unpack(best_x, best_st)
                    stopped = "the Anderson phase diverged (returning its best iterate)"
                break
            x, Xh, Rh, plain = best_x, [], [], 5
            continue
        if nr < best:
            best, best_x, best_st = nr, x, st
        st = new._replace(steps=st.steps + 1)
        traj.append(np.array([[float(st.t)], [0.5 * float(jnp.sum(st.delta**2))], [nr / lamdt], [dt]]))
        k += 1
        if k % 10 == 0:
            gap, res = full_gap(st)
            if gap <= tol and res <= htol:
                break
            if nr < SPURIOUS_STEP and explicit is None:
                # the implicit-error map has stopped moving away from a fixed point of 4.3: one of its
                # own (its error solve is nonlinear); the explicit map's fixed points are exactly 4.3's
                explicit = _deep_step(act.fn, act.deriv, p, implicit=False)
                step, Xh, Rh, best = explicit, [], [], np.inf
        if int(st.steps) >= max_steps or float(st.t) >= max_time:
            break
        stopped = interruption(start, max_seconds, lambda: k % record_every == 0 and record(st))
        if stopped:
            break
        if plain > 0:
            plain -= 1
            x = x + r
            continue
        Xh.append(x)
        Rh.append(r)
        Xh, Rh = Xh[-mem - 1:], Rh[-mem - 1:]
        if len(Xh) > 1:
            dX = jnp.stack([Xh[i + 1] - Xh[i] for i in range(len(Xh) - 1)])
            dR = jnp.stack([Rh[i + 1] - Rh[i] for i in range(len(Rh) - 1)])
            M = dR @ dR.T
            gam = jnp.linalg.solve(M + 1e-14 * jnp.trace(M) * jnp.eye(M.shape[0]), dR @ r)
            x = x + r - gam @ (dX + dR)
        else:
            x = x + r
    return st, stopped


def antk_deep(x_train, y_train, x_test, y_test, *, gamma0, lam, depth, act, samples, seed, tol,
              max_time, max_steps, max_seconds, rtol, init, record_every, callback,
              residual_tol=None):
    """Depth ``>= 2`` aNTK (**EXPERIMENTAL**, module docstring). Returns an :class:`~akviz.antk.ANTKResult`."""
    from .antk import MAX_SNAPSHOTS, ANTKResult, _kernel_predict, _rel_gap

    start = time.perf_counter()
    p = x_train.shape[0]
    L = depth
    x_all = np.concatenate([x_train, x_test])
    n = x_all.shape[0]
    C_full = input_kernel(x_all)
    htol = math.sqrt(tol) if residual_tol is None or residual_tol == np.inf else float(residual_tol)
    lazy = lazy_kernels(x_all, depth=L, activation=act.name)
    notes = ["EXPERIMENTAL depth >= 2 (THEORY.md 4.3 relaxation, not yet checked against finite width)"]

    warm = None
    if init is not None:
        st0 = init.state
        if (st0 is None or init.depth != L or init.activation != act.name or "H" not in st0
                or st0["H"].shape != (L, samples, n) or not np.allclose(init.C, C_full)):
            notes.append("init ignored (different data, samples, depth or activation): cold start")
        else:
            warm = st0
    if warm is None:
        # Seed from the lazy solution: h^l ~ N(0, Phi^{l-1}), v^l ~ N(0, G^{l+1}) (G^{L+1} = 1).
        Gl = [None] * (L + 2)
        Gl[L + 1] = np.ones((n, n))
        for l in range(L, 0, -1):
            Gl[l] = np.asarray(lazy.derivative[l - 1]) * Gl[l + 1]
        keys = jax.random.split(jax.random.PRNGKey(int(seed)), 2 * L)
        half = samples // 2
        H, V = [], []
        for l in range(1, L + 1):
            kin = C_full if l == 1 else np.asarray(lazy.nngp[l - 2])
            h = _sample(kin, half, keys[2 * l - 2])
            if l == L:
                v = np.repeat(np.asarray(jax.random.normal(keys[2 * l - 1], (half, 1), dtype=jnp.float64)), n, axis=1)
            else:
                v = _sample(Gl[l + 1], half, keys[2 * l - 1])
            H.append(np.concatenate([h, h]))
            V.append(np.concatenate([v, -v]))
        H, V = jnp.asarray(np.stack(H)), jnp.asarray(np.stack(V))
    else:
        scale = math.sqrt(gamma0 / init.gamma0)
        H = jnp.asarray(warm["H"]) * scale
        V = jnp.asarray(warm["V"]) * scale

    C = jnp.asarray(C_full)
    y = jnp.asarray(y_train)
    f0 = jnp.mean(V[-1, :, :p] * act.fn(H[-1, :, :p]), axis=0) / gamma0
    dt_max = -math.log1p(-MAX_DAMPING) / lam
    observe = _deep_observer(act.fn, act.deriv, p)
    Phi0, G0, _, _ = observe(H, V, y, C, gamma0, lam)
    K0 = np.asarray(Phi0[-1] + G0[-1] * (Phi0[-2] if L > 1 else C))[:p, :p]
    with np.errstate(all="ignore"):
        rate = np.linalg.norm(K0 @ np.asarray(y - f0)) / max(np.linalg.norm(y_train), 1e-300)
    rate = max(rate, lam) if np.isfinite(rate) else 1e300
    dt0 = min(rtol / rate, dt_max) if warm is None else 0.25 * dt_max
    st = _DState(H=H, V=V, d=jnp.asarray(1.0), delta=y - f0, t=jnp.asarray(0.0), dt=jnp.asarray(dt0),
                 res=jnp.asarray(np.inf), hres=jnp.asarray(np.inf), steps=jnp.asarray(0),
                 bad=jnp.asarray(False))
    runner = _deep_runner(act.fn, act.deriv, int(record_every), p)
    args = (C, y, jnp.asarray(gamma0), jnp.asarray(lam), jnp.asarray(rtol))

    traj = []
    rec = {"t": [], "test": [], "train": [], "align": [], "phi": [], "g": []}
    stopped = None

    def record(s):
        Phi, G, f, _ = observe(s.H, s.V, y, C, gamma0, lam)
        Phi, G, f = np.asarray(Phi), np.asarray(G), np.asarray(f)
        rec["t"].append(float(s.t)); rec["train"].append(mse(f[:p], y_train))
        rec["test"].append(mse(f[p:], y_test)); rec["align"].append(_alignment(Phi[-1][:p, :p], y_train))
        rec["phi"].append(Phi[-1]); rec["g"].append(G[-1])
        if len(rec["phi"]) > MAX_SNAPSHOTS:
            for k in rec:
                rec[k][:] = rec[k][:-1:2] + [rec[k][-1]]
        if callback is not None:
            return callback({"time": rec["t"][-1], "step": int(s.steps), "train_loss": rec["train"][-1],
                             "test_loss": rec["test"][-1], "alignment": rec["align"][-1],
                             "residual": float(s.hres), "feature_gap_train": float(s.res)})
        return None

    def full_gap(s):
        Phi, _, f, r = observe(s.H, s.V, y, C, gamma0, lam)
        Phi, f = np.asarray(Phi[-1]), np.asarray(f)
        if not (np.all(np.isfinite(Phi)) and np.all(np.isfinite(f))):
            return float("nan"), float("nan")
        tr, te = _kernel_predict(Phi, y_train, lam, p)
        return _rel_gap(np.concatenate([tr, te]), f), float(r)

    record(st)
    inner_tol, inner_htol = 0.5 * tol, 0.5 * htol
    while True:
        st, tr = runner(st, *args, jnp.asarray(inner_tol), jnp.asarray(inner_htol),
                        jnp.asarray(dt_max), jnp.asarray(max_time))
        tr = np.asarray(tr)
        traj.append(tr[:, np.isfinite(tr[0])])
        if bool(st.res <= inner_tol) and bool(st.hres <= inner_htol) and not bool(st.bad):
            gap, res = full_gap(st)
            if (gap <= tol and res <= htol) or inner_tol < 1e-4 * tol:
                break
            inner_tol *= 0.25
            inner_htol *= 0.25
        if bool(st.bad) or float(st.t) >= max_time or int(st.steps) >= max_steps or lam * float(st.t) >= RELAX_LAMBDA_T:
            break
        stopped = interruption(start, max_seconds, lambda: record(st))
        if stopped:
            break

    # Phase 2: Anderson-accelerated damped fixed-point iteration of the step map.
    done = (bool(st.bad) or stopped is not None or float(st.t) >= max_time
            or int(st.steps) >= max_steps)
    if not done and not (full_gap(st)[0] <= tol and full_gap(st)[1] <= htol):
        for attempt in range(3):  # on divergence: again from the last good iterate, smaller steps
            st, stopped = _anderson(st, act, p, C, y, gamma0, lam, tol, htol, max_steps, max_time,
                                    max_seconds, start, record, full_gap, traj, record_every,
                                    ANDERSON_LAMBDA_DT / 3**attempt)
            if stopped is None or "diverged" not in stopped:
                break

    Phi, G, f, residual = observe(st.H, st.V, y, C, gamma0, lam)
    Phi, G, f, residual = np.asarray(Phi), np.asarray(G), np.asarray(f), float(residual)
    finite = (all(np.all(np.isfinite(v)) for v in (Phi, G, f)) and np.isfinite(residual)
              and not bool(st.bad))
    gap = full_gap(st)[0] if finite else float("nan")
    if finite and (not rec["t"] or rec["t"][-1] != float(st.t)):
        record(st)
    converged = bool(finite and gap <= tol and residual <= htol)
    iterations = int(st.steps)
    converged = converged and finite
    message = _status_message(finite=finite, converged=converged, stopped=stopped, t=float(st.t),
                              max_time=max_time, iterations=iterations, max_steps=max_steps, gap=gap,
                              residual=residual, notes=notes,
                              overflow="overflow or NaN in the dynamics; kernels are NaN")

    nan_nn = np.full((n, n), np.nan)
    lazy_ntk_tr, lazy_ntk_te = _kernel_predict(np.asarray(lazy.ntk[-1]), y_train, (L + 1) * lam, p)
    lazy_nngp_tr, lazy_nngp_te = _kernel_predict(np.asarray(lazy.nngp[-1]), y_train, lam, p)
    if finite:
        Phis = [C_full] + list(Phi)
        Gs = list(G) + [np.ones((n, n))]
        K = sum(Gs[l] * Phis[l] for l in range(L + 1))
        feat_tr, feat_te = _kernel_predict(Phi[-1], y_train, lam, p)
        ntk_tr, ntk_te = _kernel_predict(K, y_train, (L + 1) * lam, p)
        f_tr, f_te = f[:p], f[p:]
        PhiL, GL = Phi[-1], G[-1]
    else:
        Phi = G = np.full((L, n, n), np.nan)
        PhiL = GL = K = nan_nn
        feat_tr = ntk_tr = f_tr = np.full(p, np.nan)
        feat_te = ntk_te = f_te = np.full(n - p, np.nan)
    tr = np.concatenate(traj, axis=1) if traj else np.zeros((4, 0))
    state = {"H": np.asarray(st.H), "V": np.asarray(st.V)} if finite else None

    def stack(lst):
        return np.stack(lst) if lst else np.zeros((0, n, n))

    return ANTKResult(
        Phi=PhiL, G=GL, K=K, C=C_full,
        kernels=Phi[:, :p, :p], kernels_full=Phi, gradient_kernels_full=G,
        **predictor_fields(f_tr, f_te, feat_tr, feat_te, ntk_tr, ntk_te, lazy_ntk_te, lazy_nngp_te,
                           y_train, y_test, finite),
        alignment=[_alignment(k[:p, :p], y_train) for k in Phi], ntk_alignment=_alignment(K[:p, :p], y_train),
        lazy_ntk_ridge=(L + 1) * lam, lazy_nngp_ridge=lam,
        times=tr[0], trajectory_train_loss=tr[1], trajectory_residual=tr[2], step_sizes=tr[3],
        record_times=np.asarray(rec["t"]), record_test_loss=np.asarray(rec["test"]),
        record_train_loss=np.asarray(rec["train"]), record_alignment=np.asarray(rec["align"]),
        snapshots_phi=stack(rec["phi"]), snapshots_g=stack(rec["g"]),
        converged=converged, iterations=iterations, residual=residual, message=message,
        seconds=time.perf_counter() - start, gamma0=gamma0, weight_decay=lam, depth=L,
        activation=act.name, samples=samples, seed=seed, final_time=float(st.t), state=state,
    )


__all__ = ["antk_deep"]
