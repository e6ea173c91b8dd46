"""Diagnostic: what the aNBK saddle residual measures at gamma0 >= 1 (relu, depth 1). Not a test.

Solves with the defaults (warm from ``gamma0 / 2``) on digits:3v8 (P=100), then, at the
solver's state ``Phi`` with the tilt frozen (``m = gamma0 a``, ``a = (Phi + I/beta)^-1 y``):

1. ``F(Phi) = <phi phi^T>`` two independent ways:

   * *chains*: persistent MALA chains with the exact draw of the Hubbard-Stratonovich field
     ``xi | u ~ N(m . phi, 1)``, restarted from the solver's chains. The step is the solver's, written
     out again here on purpose, with threefry normals and a step size that keeps adapting: a
     check of the solver's compiled program rather than a run of it;
   * *stratified*: chains at fixed ``xi`` on a grid (given ``xi`` the tilt is linear and the
     chains mix fast), weighted by ``p(xi) ∝ N(xi; 0, 1) Z(xi)`` with
     ``d log Z / d xi = E_xi[s]``, ``d^2 log Z / d xi^2 = Var_xi[s]``, ``s = m . phi``
     (thermodynamic integration, cubic Hermite between grid points);

   and their residuals ``||F - Phi|| / ||Phi||``, their difference, and how much of ``Phi`` the
   ``xi < -3`` tail carries;
2. a scan along the residual direction ``Phi + omega r``, ``r = F(Phi) - Phi``: the residual's
   component along ``r`` and the rest, and the chains' largest ``|u|^2`` (a run-away means the
   tilted density stops normalising). Where the component changes sign is the saddle along that
   line; ``omega * ||r|| / ||Phi||`` there is the state's distance from it.

    python benchmarks/anbk_edge.py [--gamma0 1] [--beta 1] [--omegas 0.003 0.01 0.03 0.1]

Prints JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # akviz from this checkout (it is not installed)

import akviz
from akviz.anbk_mcmc import relative_difference as rel
from akviz.anbk_mcmc import sym_sqrt_pinv
from akviz.kernels import input_kernel


def chain_runner(r, steps):
    """Jitted: ``steps`` MALA steps of the last-layer chains at a fixed tilt; per-step kernels, max |u|^2."""

    def readout(u, m):
        h = u @ r
        return jax.nn.relu(h), ((h > 0) * m[None, :]) @ r

    def run(u, eps, m, key):
        def step(carry, k):
            u, eps, f, v = carry
            k1, k2, k3 = jax.random.split(k, 3)
            s = f @ m
            xi = s + jax.random.normal(k3, s.shape, u.dtype)
            lp, gr = -0.5 * jnp.sum(u * u, -1) + xi * s, -u + xi[:, None] * v
            prop = u + eps * gr + jnp.sqrt(2 * eps) * jax.random.normal(k1, u.shape, u.dtype)
            f2, v2 = readout(prop, m)
            lp2, gr2 = -0.5 * jnp.sum(prop * prop, -1) + xi * (f2 @ m), -prop + xi[:, None] * v2
            fwd = jnp.sum((prop - u - eps * gr) ** 2, -1)
            bwd = jnp.sum((u - prop - eps * gr2) ** 2, -1)
            ok = jnp.log(jax.random.uniform(k2, lp.shape, u.dtype)) < lp2 - lp + (fwd - bwd) / (4 * eps)
            eps = eps * jnp.exp(0.05 * (jnp.mean(ok) - 0.6))
            ok = ok[:, None]
            u, f, v = jnp.where(ok, prop, u), jnp.where(ok, f2, f), jnp.where(ok, v2, v)
            return (u, eps, f, v), ((f.T @ f) / f.shape[0], jnp.max(jnp.sum(u * u, -1)))

        (u, eps, _, _), (kern, u2) = jax.lax.scan(step, (u, eps) + readout(u, m), jax.random.split(key, steps))
        return u, eps, kern, u2

    return jax.jit(run)


def chains_estimate(run, u, eps, m, seed):
    """Burn in, then average: the kernel, its half-vs-half difference (noise), the largest |u|^2."""
    u, eps, _, u2a = run(u, eps, m, jax.random.PRNGKey(seed))
    u, eps, kern, u2 = run(u, eps, m, jax.random.PRNGKey(seed + 1))
    kern = np.asarray(kern, np.float64)
    half = len(kern) // 2
    return kern.mean(0), kern[:half].mean(0), kern[half:].mean(0), float(max(u2a.max(), u2.max())), u, eps


def stratified_estimate(r, m, xis, per_xi, steps, seed):
    """``<phi phi^T>`` as ``sum_k w_k E_{xi_k}[phi phi^T]``, weights from thermodynamic integration."""
    k_n, p = len(xis), r.shape[0]
    xi_c = jnp.asarray(np.repeat(xis, per_xi), r.dtype)

    def readout(u):
        h = u @ r
        return jax.nn.relu(h), ((h > 0) * m[None, :]) @ r

    @jax.jit
    def run(u, eps, key):
        def lpg(u, f, v):
            return -0.5 * jnp.sum(u * u, -1) + xi_c * (f @ m), -u + xi_c[:, None] * v

        def step(carry, k):
            u, eps, f, v = carry
            k1, k2 = jax.random.split(k)
            lp, gr = lpg(u, f, v)
            prop = u + eps[:, None] * gr + jnp.sqrt(2 * eps)[:, None] * jax.random.normal(k1, u.shape, u.dtype)
            f2, v2 = readout(prop)
            lp2, gr2 = lpg(prop, f2, v2)
            fwd = jnp.sum((prop - u - eps[:, None] * gr) ** 2, -1)
            bwd = jnp.sum((u - prop - eps[:, None] * gr2) ** 2, -1)
            ok = jnp.log(jax.random.uniform(k2, lp.shape, u.dtype)) < lp2 - lp + (fwd - bwd) / (4 * eps)
            rate = ok.reshape(k_n, per_xi).mean(1).repeat(per_xi)  # step size per grid point
            eps = eps * jnp.exp(0.05 * (rate - 0.6))
            ok = ok[:, None]
            u, f, v = jnp.where(ok, prop, u), jnp.where(ok, f2, f), jnp.where(ok, v2, v)
            s = (f @ m).reshape(k_n, per_xi)
            fg = f.reshape(k_n, per_xi, p)
            return (u, eps, f, v), (jnp.einsum("kni,knj->kij", fg, fg) / per_xi,
                                    s.mean(1), (s * s).mean(1))

        (u, eps, _, _), out = jax.lax.scan(step, (u, eps) + readout(u), jax.random.split(key, steps))
        return u, eps, out

    u = jax.random.normal(jax.random.PRNGKey(seed), (k_n * per_xi, p), r.dtype)
    eps = jnp.full((k_n * per_xi,), 0.3, r.dtype)
    u, eps, _ = run(u, eps, jax.random.PRNGKey(seed + 1))  # burn-in
    _, _, (kern, s1, s2) = run(u, eps, jax.random.PRNGKey(seed + 2))
    kern, s1, s2 = np.asarray(kern, np.float64), np.asarray(s1, np.float64), np.asarray(s2, np.float64)

    def combine(kern, s1, s2):
        es = s1.mean(0)
        vs = s2.mean(0) - es**2
        d = np.diff(xis)
        log_z = np.concatenate([[0.0], np.cumsum(d / 2 * (es[:-1] + es[1:]) + d**2 / 12 * (vs[:-1] - vs[1:]))])
        log_z -= log_z[np.argmin(np.abs(xis))]  # Z(0) = 1: the prior
        lw = -(xis**2) / 2 + log_z
        w = np.exp(lw - lw.max())
        tw = np.zeros(k_n)  # trapezoid weights
        tw[:-1] += d / 2 * w[:-1]
        tw[1:] += d / 2 * w[1:]
        tw /= tw.sum()
        return np.einsum("k,kij->ij", tw, kern.mean(0)), tw

    est, tw = combine(kern, s1, s2)
    half = len(kern) // 2
    e1, _ = combine(kern[:half], s1[:half], s2[:half])
    e2, _ = combine(kern[half:], s1[half:], s2[half:])
    per_point = kern.mean(0)
    tail = xis < -3
    tail_share = float(np.linalg.norm(np.einsum("k,kij->ij", tw[tail], per_point[tail])) / np.linalg.norm(est))
    return est, e1, e2, {"tail_mass": float(tw[tail].sum()), "tail_share_of_norm": tail_share,
                         "end_weights": [float(tw[0]), float(tw[-1])]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gamma0", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=384, help="MALA steps per estimate (after as many burn-in)")
    ap.add_argument("--xi-range", type=float, nargs=2, default=(-30.0, 20.0),
                    help="xi grid; the printed end_weights say whether it is wide enough")
    ap.add_argument("--xi-points", type=int, default=96)
    ap.add_argument("--chains-per-xi", type=int, default=64)
    ap.add_argument("--omegas", type=float, nargs="*", default=[0.003, 0.01, 0.03, 0.1])
    args = ap.parse_args()

    ds = akviz.load_dataset("digits:3v8", 100, 200, 0)
    x_train, y_train, _, _ = akviz.data.as_arrays(ds)
    p = len(y_train)
    t0 = time.perf_counter()
    prev = akviz.anbk(ds, gamma0=args.gamma0 / 2, beta=args.beta, seed=args.seed)
    res = akviz.anbk(ds, gamma0=args.gamma0, beta=args.beta, init=prev, seed=args.seed)
    out = {"gamma0": args.gamma0, "beta": args.beta, "solve_seconds": time.perf_counter() - t0,
           "solver": {"converged": res.converged, "residual": res.residual["max"],
                      "mc_error": max(res.mc_error), "test_loss": res.test_loss}}
    mc = res._state["mcmc"]
    phi = np.asarray(mc["phis"][-1])
    r = jnp.asarray(np.asarray(sym_sqrt_pinv(jnp.asarray(input_kernel(x_train)))[0]), jnp.float32)

    def tilt(kern):
        return jnp.asarray(args.gamma0 * np.linalg.solve(kern + np.eye(p) / args.beta, y_train), jnp.float32)

    run = chain_runner(r, args.steps)
    u0, eps0 = jnp.asarray(mc["u"][-1], jnp.float32), jnp.float32(mc["eps"][-1])
    t0 = time.perf_counter()
    est_c, c1, c2, u2, u, eps = chains_estimate(run, u0, eps0, tilt(phi), args.seed + 10)
    t_chains = time.perf_counter() - t0
    xis = np.unique(np.concatenate([np.linspace(*args.xi_range, args.xi_points), [0.0]]))
    t0 = time.perf_counter()
    est_s, s1, s2, tail = stratified_estimate(r, tilt(phi), xis, args.chains_per_xi, args.steps, args.seed + 20)
    t_strat = time.perf_counter() - t0
    res_c, res_s = est_c - phi, est_s - phi
    out["frozen_state"] = {
        "residual_chains": rel(est_c, phi), "noise_chains": rel(c1, c2) / 2, "seconds_chains": t_chains,
        "residual_stratified": rel(est_s, phi), "noise_stratified": rel(s1, s2) / 2, "seconds_stratified": t_strat,
        "chains_vs_stratified": rel(est_c, est_s),
        "cosine_of_residuals": float(np.sum(res_c * res_s) / np.linalg.norm(res_c) / np.linalg.norm(res_s)),
        "max_u2": u2, **tail}
    # scan along the residual direction (the chains' estimate, the solver's own kind)
    d = res_c / np.linalg.norm(res_c)
    scan = [{"omega": 0.0, "step": 0.0, "along": float(np.sum(res_c * d) / np.linalg.norm(phi)),
             "rest": float(np.linalg.norm(res_c - np.sum(res_c * d) * d) / np.linalg.norm(phi)),
             "residual": rel(est_c, phi), "max_u2": u2}]
    for k, om in enumerate(args.omegas):
        kern = phi + om * res_c
        est, e1, e2, u2, _, _ = chains_estimate(run, u, eps, tilt(kern), args.seed + 100 + 10 * k)
        rk = est - kern
        along = float(np.sum(rk * d))
        scan.append({"omega": om, "step": om * float(np.linalg.norm(res_c) / np.linalg.norm(phi)),
                     "along": along / float(np.linalg.norm(kern)),
                     "rest": float(np.linalg.norm(rk - along * d) / np.linalg.norm(kern)),
                     "residual": rel(est, kern), "noise": rel(e1, e2) / 2, "max_u2": u2})
    out["scan"] = scan
    cross = [i for i in range(1, len(scan)) if scan[i]["along"] < 0 <= scan[i - 1]["along"]]
    if cross:  # linear interpolation of the sign change: the saddle along the line
        a, b = scan[cross[0] - 1], scan[cross[0]]
        f = a["along"] / (a["along"] - b["along"])
        out["saddle_along_line"] = {"step": a["step"] + f * (b["step"] - a["step"]),
                                    "slope": (b["along"] - a["along"]) / (b["step"] - a["step"])}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
