"""Diagnostic (not a test, not a solver of the package): the depth-1 aNBK saddle by radial
integration, sample-average Newton steps and reweighting, to see what limits the residual.

For positively homogeneous ``phi`` (relu) at depth 1, write ``h = R w`` (``R R^T = C`` on
train+test, ``w`` in ``k`` dimensions) and ``w = r theta``. The tilt ``exp(gamma0^2 (a . phi)^2 / 2)``
is ``exp(r^2 s(theta)^2 / 2)`` with ``s = b . phi(R_X theta)``, ``b = gamma0 a``, so the radius
integrates in closed form. With ``q = 1 - s^2`` and ``p'(w) ∝ |w|^2 x`` (the tilted density),
whose direction has density ``∝ q^-(k+2)/2``,

    Phi = k E'[phi(theta) phi(theta)^T] / E'[q]

where both averages are of bounded quantities (``|phi(theta)|`` is bounded on the sphere, ``0 < q <= 1``):
no heavy tail in the estimator. Chains: MALA on ``p'`` with the Hubbard-Stratonovich field drawn
exactly and an exact radial move (``r^2 q ~ chi^2_{k+2}``). For the saddle, the map depends on ``b``
only, and samples drawn at ``b0`` give ``Phi(b)`` nearby by reweighting with ``(q(b)/q(b0))^-(k+2)/2``:
Newton's method solves ``(Phi(b) + I/beta) b = gamma0 y`` on those samples exactly (analytic Jacobian,
steps limited to an effective sample fraction >= 0.5). Each iteration then draws fresh samples at
the new ``b``: the residual ``||Phi_fresh - Phi_state|| / ||Phi_state||`` and the Monte Carlo error
of ``Phi_fresh`` (batch means over 16 chain groups).

``--hold N`` then keeps ``b`` fixed and prints N windows of 256 steps: the trace of ``Phi``, ``E'[q]``
and the fraction of chains with ``s^2 > 0.8`` (the peak of the direction density near the edge of
normalisability), showing how long the chains take to settle at a fixed tilt.

    python benchmarks/anbk_sphere.py --gamma0 0.5 --beta 1
    python benchmarks/anbk_sphere.py --gamma0 1 --beta 1 --chains 4096 --iterations 13 --hold 30
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # akviz from this checkout (it is not installed)

import akviz
from akviz.anbk_mcmc import proposal_noise
from akviz.kernels import input_kernel

GROUPS = 16


def setup(ds):
    """``R`` (train+test rows) with ``R R^T = C``, its train rows, and ``k``."""
    x_all = np.concatenate([ds.x_train, ds.x_test])
    w, v = np.linalg.eigh(input_kernel(x_all))
    keep = w > 1e-10 * w[-1]
    r = v[:, keep] * np.sqrt(w[keep])
    return r, r[: ds.x_train.shape[0]], r.shape[1]


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def chains(r, r_x, w, eps, b, key, n, n_snap):
    """``n_snap`` snapshots, ``n`` steps apart, of unit-sphere features ``phi(R theta)`` (train+test)."""
    r, r_x = jnp.asarray(r.arr), jnp.asarray(r_x.arr, jnp.float32)
    k = r.shape[1]

    def sv(w):
        h = w @ r_x.T
        return jnp.maximum(h, 0.0) @ b, ((h > 0) * b[None, :]) @ r_x

    def step(carry, key):
        w, eps, s, v = carry
        k1, k2, k3, k4 = jax.random.split(key, 4)
        w2 = jnp.sum(w * w, -1)
        t = s * s / w2
        chi2 = 2.0 * jax.random.gamma(k4, (k + 2) / 2.0, w2.shape, w.dtype)
        ok = t < 1
        scale = jnp.where(ok, jnp.sqrt(chi2 / jnp.where(ok, (1 - t) * w2, 1.0)), 1.0)
        w, s = w * scale[:, None], s * scale  # exact radial move (v is scale-free)
        xi = s + jax.random.normal(k3, s.shape, w.dtype)

        def lpg(w, s, v):
            w2 = jnp.sum(w * w, -1)
            return -0.5 * w2 + jnp.log(w2) + xi * s, -w + 2 * w / w2[:, None] + xi[:, None] * v

        lp, gr = lpg(w, s, v)
        prop = w + eps * gr + jnp.sqrt(2 * eps) * proposal_noise(k1, w.shape, w.dtype)
        s2, v2 = sv(prop)
        lp2, gr2 = lpg(prop, s2, v2)
        fwd = jnp.sum((prop - w - eps * gr) ** 2, -1)
        bwd = jnp.sum((w - prop - eps * gr2) ** 2, -1)
        acc = jnp.log(jax.random.uniform(k2, lp.shape, w.dtype)) < lp2 - lp + (fwd - bwd) / (4 * eps)
        eps = jnp.clip(eps * jnp.exp(0.3 * (jnp.mean(acc) - 0.6)), 1e-5, 4.0).astype(eps.dtype)
        a = acc[:, None]
        return (jnp.where(a, prop, w), eps, jnp.where(acc, s2, s), jnp.where(a, v2, v)), None

    def block(carry, key):
        carry, _ = jax.lax.scan(step, carry, jax.random.split(key, n))
        w = carry[0].astype(jnp.float64)
        return carry, jnp.maximum((w / jnp.linalg.norm(w, axis=-1, keepdims=True)) @ r.T, 0.0)

    (w, eps, _, _), feats = jax.lax.scan(block, (w, eps) + sv(w), jax.random.split(key, n_snap))
    return w, eps, jnp.transpose(feats, (1, 0, 2)).reshape(-1, feats.shape[-1])  # chain-major


class Static:
    """A hashable wrapper so that the jitted sampler treats the fixed matrices as constants."""

    def __init__(self, arr):
        self.arr = arr

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


def newton_parts(f_x, q0, b, g, y, inv_beta, m):
    """Residual ``G(b) = (Phi(b) + I/beta) b - gamma0 y`` on reweighted samples, its Jacobian, ESS, min q."""
    s = f_x @ b
    q = 1 - s * s
    lw = jnp.where(q > 0, -m * (jnp.log(jnp.where(q > 0, q, 1.0)) - jnp.log(q0)), -jnp.inf)
    w = jnp.exp(lw - jnp.max(lw))
    k = 2 * m - 2
    num, den = (w * s) @ f_x, jnp.sum(w * q)
    res = k * num / den + inv_beta * b - g * y
    d_num = (f_x * (w * (1 + 2 * m * s * s / q))[:, None]).T @ f_x
    d_den = (w * 2 * (m - 1) * s) @ f_x
    jac = k * (d_num / den - jnp.outer(num, d_den) / den**2) + inv_beta * jnp.eye(f_x.shape[1])
    return res, jac, jnp.sum(w) ** 2 / jnp.sum(w * w) / w.shape[0], jnp.min(q)


newton_parts = jax.jit(newton_parts)


@jax.jit
def kernel_at(f, q0, b, m):
    """``Phi(b)`` (train+test) from samples drawn at ``b0`` (``q0 = q(b0)``)."""
    p = b.shape[0]
    s = f[:, :p] @ b
    q = 1 - s * s
    lw = -m * (jnp.log(q) - jnp.log(q0))
    w = jnp.exp(lw - jnp.max(lw))
    return (2 * m - 2) * ((f * w[:, None]).T @ f) / jnp.sum(w * q)


def newton(f_x, q0, b, g, y, inv_beta, m, ess_min=0.5, iterations=20):
    """Newton on the sample average; a step is halved until ESS >= ess_min and the residual falls."""
    for it in range(iterations):
        res, jac, _, _ = newton_parts(f_x, q0, b, g, y, inv_beta, m)
        step, t = jnp.linalg.solve(jac, -res), 1.0
        while True:
            res2, _, ess, qmin = newton_parts(f_x, q0, b + t * step, g, y, inv_beta, m)
            if qmin > 0 and ess >= ess_min and jnp.linalg.norm(res2) < jnp.linalg.norm(res):
                break
            t *= 0.5
            if t < 1e-4:
                return b, "stuck", it
        b = b + t * step
        if t < 1:
            return b, f"trust-limited step {t:g}", it
        if jnp.linalg.norm(step) < 1e-9 * jnp.linalg.norm(b):
            return b, "solved", it
    return b, "solved", iterations


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gamma0", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--chains", type=int, default=2048)
    ap.add_argument("--snapshots", type=int, default=16)
    ap.add_argument("--steps-between", type=int, default=4)
    ap.add_argument("--burn", type=int, default=0, help="MALA steps at each new b before the snapshots")
    ap.add_argument("--iterations", type=int, default=14)
    ap.add_argument("--hold", type=int, default=0, help="windows of 256 steps at the final b")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with jax.enable_x64(True):
        ds = akviz.load_dataset("digits:3v8", n_train=100, n_test=200, seed=0)
        r, r_x, k = setup(ds)
        rs, rxs = Static(r), Static(r_x)
        p, m = ds.x_train.shape[0], (k + 2) / 2
        y, g, inv_beta = jnp.asarray(ds.y_train), args.gamma0, 1.0 / args.beta
        key = jax.random.PRNGKey(args.seed)
        w = jax.random.normal(key, (args.chains, k), jnp.float32)
        eps, b, state_phi = jnp.float32(0.3), jnp.zeros(p), None
        start = time.perf_counter()
        for it in range(args.iterations):
            key, k1, k2 = jax.random.split(key, 3)
            if args.burn:
                w, eps, _ = chains(rs, rxs, w, eps, jnp.asarray(b, jnp.float32), k2, max(args.burn // 4, 1), 4)
            w, eps, f = chains(rs, rxs, w, eps, jnp.asarray(b, jnp.float32), k1, args.steps_between, args.snapshots)
            s = f[:, :p] @ b
            q0 = 1 - s * s
            fg, qg = f[:, :p].reshape(GROUPS, -1, p), q0.reshape(GROUPS, -1)
            per_group = k * jnp.einsum("gni,gnj->gij", fg, fg) / jnp.sum(qg, 1)[:, None, None]
            fresh = jnp.mean(per_group, 0)
            mc_error = float(jnp.linalg.norm(jnp.std(per_group, 0, ddof=1)) / np.sqrt(GROUPS) / jnp.linalg.norm(fresh))
            residual = None if state_phi is None else \
                float(jnp.linalg.norm(fresh - state_phi) / jnp.linalg.norm(state_phi))
            b_new, how, n_newton = newton(f[:, :p], q0, b, g, y, inv_beta, m)
            state_phi = kernel_at(f[:, :p], q0, b_new, m)
            print(json.dumps({"iteration": it, "residual": residual, "mc_error": mc_error,
                              "b_change": float(jnp.linalg.norm(b_new - b) / max(float(jnp.linalg.norm(b_new)), 1e-300)),
                              "newton": how, "newton_steps": n_newton, "max_s2": float(jnp.max(1 - q0)),
                              "seconds": round(time.perf_counter() - start, 2)}), flush=True)
            b = b_new
        full = kernel_at(f, q0, b, m)
        pred = akviz.kernel_ridge(np.asarray(full[:p, :p]), np.asarray(full[p:, :p]), ds.y_train, inv_beta)[1]
        print(json.dumps({"test_mse": float(np.mean((pred - ds.y_test) ** 2))}), flush=True)
        first = None
        for win in range(args.hold):
            key, k1 = jax.random.split(key)
            w, eps, f = chains(rs, rxs, w, eps, jnp.asarray(b, jnp.float32), k1, 8, 32)
            s = f[:, :p] @ b
            q = 1 - s * s
            phi = k * (f[:, :p].T @ f[:, :p]) / jnp.sum(q)
            first = phi if first is None else first
            print(json.dumps({"hold_window": win, "trace": float(jnp.trace(phi)), "mean_q": float(jnp.mean(q)),
                              "fraction_s2_above_0.8": float(jnp.mean(1 - q > 0.8)),
                              "change_from_first_window": float(jnp.linalg.norm(phi - first) / jnp.linalg.norm(first))}),
                  flush=True)


if __name__ == "__main__":
    main()
