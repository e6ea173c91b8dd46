"""Diagnostic (a prototype, not a solver of the package): the depth-1 aNBK saddle at the edge of
normalisability as a convex program with a condensate. Not a test.

**Why.** At depth 1 the saddle equation ``(Phi(a) + I/beta) a = y`` (``Phi(a) = <phi phi^T>`` under
``p(w) ∝ N(w; 0, I) exp(g^2 (a . phi(L w))^2 / 2)``, ``g = gamma0``) is the stationarity condition of

    U(a) = log Z(a) / g^2 + |a|^2 / (2 beta) - y . a,      Z(a) = E_{N(0, I)} exp(g^2 (a . phi)^2 / 2),

since ``grad log Z / g^2 = <(a . phi) phi> = Phi(a) a``. ``log Z`` is convex (a log-integral of
exponentials of convex functions), so ``U`` is strictly convex, on the set where ``Z`` is finite.
For relu that set is ``kappa(a) <= 1`` with ``kappa(a) = g max_{|u| = 1, sigma = +-1} sigma a . relu(L u)``:
a maximum of functions linear in ``a``, so an intersection of half-spaces ``g sigma a . v_u <= 1``,
``v_u = relu(L u)``. Where the minimiser sits on that boundary, KKT adds ``sum_i mu_i g sigma_i v_i``
(``mu_i >= 0``) to the gradient; on the boundary ``g sigma_i a . v_i = 1``, so that term is
``sum_i A_i v_i v_i^T a`` with ``A_i = g^2 mu_i``: a *condensate*, rank-one pieces of ``Phi`` along the
ridges of the tilt, carried by draws that run off to infinity along ``u_i``. (At finite width: a few
neurons of norm ``~ sqrt(N)``.) The sample averages cannot see it, which is why the solvers of
``akviz.anbk`` stall at ``gamma0 >= 0.6`` (``beta = 1``) with ``kappa`` at 1 and a map that is steep
along the task direction (README, ``benchmarks/anbk_edge.py``).

**What this script does.** The ``xi`` integral of the Hubbard-Stratonovich form is cut at
``|xi| <= X`` (the weight gains ``ndtr(X - g s) - ndtr(-X - g s)``); the rest is left to the
condensate. Draws come from ``akviz.anbk_ais``'s mixture. Per draw (the sample average fixed) a
log-barrier path (``t`` from 1e-2 to 1e-6) solves ``min U`` subject to the cuts found so far, with
``akviz.anbk_ais._newton``; after each Newton solve a multi-start projected-gradient ascent on the
sphere finds ``kappa``'s maximiser for each sign, and a maximiser with ``kappa > 1 - 1e-3`` becomes a
new cut. Then the next draw checks the state on fresh draws: the residual
``||F_fresh(a) + C - Phi|| / ||Phi||``, ``Phi = F(a) + C``, ``C = sum_i A_i v_i v_i^T``.

**Measured** (digits:3v8, P=100, relu, ``beta = 1``, X = 4, 262144 draws, warm from the AIS
solution at ``gamma0 / 2``; 2-core AMD EPYC). The first two items come from a draft of this file
with the same algorithm and 256 starts; the others from this file with ``--starts 128``:

* ``gamma0 = 0.8``: first draw Monte Carlo error 0.007, ESS 77%; 18 cuts; the condensate is 30% of
  ``||Phi||``; test MSE 0.1356 (NNGP 0.2428); fresh-draw residuals 0.020, 0.021 (Monte Carlo errors
  0.010, 0.013), then the ESS fell to 9% after three refits of the mixture (residual 0.049).
* ``gamma0 = 1``: condensate 41% of ``||Phi||``, test MSE 0.1301 and alignment 0.497, against
  Langevin-sampled networks at N=1024 (``python -m akviz compare --method anbk --width 1024
  --gamma0 1 --beta 1``): 0.1301 +- 0.0003 and 0.5005. Residuals 0.022, 0.027 (Monte Carlo error
  0.012, 0.017).
* ``gamma0 = 1`` with 1048576 draws (``--samples 1048576``): first draw Monte Carlo error 0.0045,
  ESS 60%, condensate 41%, test MSE 0.1295, alignment 0.4977; the second draw's residual 0.0101
  (Monte Carlo error 0.0103, ESS 16%), test MSE 0.1299, alignment 0.4983; 157-199 s a solve.
* ``beta = 10``, ``gamma0 = 1`` (from the AIS state at 0.5, itself not converged): the Newton solves
  stall (``|G| / |y|`` 0.61), the condensate stays under 0.4%, test MSE 0.128-0.130 against 0.1173
  +- 0.0003 for the networks. Not solved.
* Unsolved here: the cuts multiply (18 -> 53 at 0.8; the maximisers seem to fill a face, not a few
  points), the mixture refit lowers the ESS from draw to draw, and a draw's solve takes 40-55 s,
  mostly in the sphere ascents.

    python benchmarks/anbk_condensate.py --beta 1 --gammas 0.8 1 [--cut 4] [--samples 262144]
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
from akviz import anbk_ais
from akviz.activations import get_activation
from akviz.kernels import input_kernel

#: barrier weights along the path; the last one sets the condensate, ``A_i = g^2 t / slack_i``
BARRIER_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def truncated_weights(cut):
    """anbk_ais's per-batch weights with the ``xi`` integral cut at ``|xi| <= cut``."""
    def unnormalised(a, g, f, base):
        s = f @ a
        gs = g * s
        trunc = jax.scipy.special.ndtr(cut - gs) - jax.scipy.special.ndtr(-cut - gs)
        lw = base + 0.5 * gs**2 + jnp.log(jnp.maximum(trunc, 1e-300))
        m = jnp.max(lw)
        return jnp.exp(lw - m), s, m
    return unnormalised


@jax.jit
def _ascend(lmat, b, u):
    """Projected gradient ascent of ``b . relu(L u)`` on the unit sphere, from every row of ``u``."""
    def step(i, u):
        grad = (b * (u @ lmat.T > 0)) @ lmat
        grad = grad - jnp.sum(grad * u, 1, keepdims=True) * u
        u = u + 0.05 * (1 - i / 400) * grad / jnp.maximum(jnp.linalg.norm(grad, axis=1, keepdims=True), 1e-300)
        return u / jnp.linalg.norm(u, axis=1, keepdims=True)
    u = jax.lax.fori_loop(0, 400, step, u)
    return u, jnp.sum(b * jax.nn.relu(u @ lmat.T), 1)


def ridge(lmat, b, previous, starts, rng):
    """``max_u b . relu(L u)`` over the unit sphere (multi-start, from the previous maximisers too)."""
    u = rng.standard_normal((starts, lmat.shape[1]))
    if previous:
        u[: len(previous)] = np.array(previous[:starts])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u, val = _ascend(jnp.asarray(lmat), jnp.asarray(b), jnp.asarray(u))
    i = int(jnp.argmax(val))
    return float(val[i]), np.asarray(u[i])


class _Barrier:
    """A draw's sample average plus the log barrier of the cuts ``g sigma_i v_i . a < 1`` (anbk_ais._newton's interface)."""

    def __init__(self, draws, rows, t):
        self.d, self.rows, self.t, self.y = draws, rows, t, draws.y

    def _terms(self, a):
        slack = 1 - self.rows @ a
        if np.any(slack <= 0):
            return None, None
        return (self.t / slack) @ self.rows, (self.rows.T * (self.t / slack**2)) @ self.rows

    def g_value(self, a, g):
        gv, ess = self.d.g_value(a, g)
        grad, _ = self._terms(a)
        return (gv + grad if grad is not None else np.full_like(gv, np.inf)), ess

    def jacobian(self, a, g):
        gv, jac = self.d.jacobian(a, g)
        grad, hess = self._terms(a)
        return gv + grad, jac + hess


def solve_draw(draws, a, g, lmat, cuts, previous, starts, rng):
    """The barrier path on one draw; cuts (``{"v", "u", "sign"}``) are added as the ridge ascent finds them."""
    gres = float("nan")
    for t in BARRIER_PATH:
        for _ in range(6):
            rows = np.array([g * c["sign"] * c["v"] for c in cuts]).reshape(-1, len(a))
            a, gres, _, _ = anbk_ais._newton(_Barrier(draws, rows, t), a, g)
            new = False
            for sign in (1, -1):
                val, u = ridge(lmat, sign * g * a, previous[sign], starts, rng)
                previous[sign] = [u] + previous[sign][:7]
                v = np.maximum(lmat @ u, 0)
                seen = any(c["sign"] == sign and v @ c["v"] >= (1 - 1e-9) * np.linalg.norm(v) * np.linalg.norm(c["v"])
                           for c in cuts)
                if val > 1 - 1e-3 and not seen:
                    cuts.append({"v": v, "u": u, "sign": sign})
                    new = True
                    if val >= 1:  # back inside: kappa is homogeneous in a
                        a = a * (1 - 1e-3) / val
            if not new:
                break
    slack = np.array([1 - g * c["sign"] * c["v"] @ a for c in cuts])
    return a, g * g * BARRIER_PATH[-1] / slack, gres


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.8, 1.0])
    ap.add_argument("--cut", type=float, default=4.0, help="X: the xi integral is sampled on |xi| <= X")
    ap.add_argument("--samples", type=int, default=1 << 18)
    ap.add_argument("--iterations", type=int, default=4, help="draws per gamma0")
    ap.add_argument("--starts", type=int, default=256, help="starts of the ridge ascent")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # swapped in before anything is compiled: every batch function of anbk_ais then uses the cut weights
    anbk_ais._unnormalised = truncated_weights(args.cut)

    ds = akviz.load_dataset("digits:3v8", 100, 200, seed=0)
    p, y = ds.x_train.shape[0], ds.y_train
    c_full = input_kernel(np.concatenate([ds.x_train, ds.x_test]))
    act = get_activation("relu")
    lam, vec = np.linalg.eigh(c_full)
    keep = lam > 1e-10 * lam[-1]
    l_full = vec[:, keep] * np.sqrt(lam[keep])
    lmat, l_test = l_full[:p], l_full[p:]
    rng = np.random.default_rng(args.seed)
    nngp = akviz.lazy_predictor(ds, depth=1, ridge=1.0 / args.beta).test_loss

    g_prev = 0.5 * args.gammas[0]
    start = akviz.anbk(ds, gamma0=g_prev, beta=args.beta, method="ais", seed=args.seed)
    a, tau = start._state["ais"]["a"], start._state["ais"]["tau"]
    previous = {1: [], -1: []}
    for g in args.gammas:
        t0 = time.perf_counter()
        prob = anbk_ais._Problem(act, c_full, p, y, args.beta, args.seed)
        a = a * g_prev / g  # the same b = gamma0 a: inside the normalisable set
        refit, phi, cuts, cond = None, None, [], None
        for it in range(args.iterations):
            draws = prob.draw(a, g, tau, anbk_ais._round_to_batches(args.samples), refit)
            fresh, mc, ess = draws.estimate(a, g)
            res = float(np.linalg.norm(fresh + cond - phi) / np.linalg.norm(phi)) if phi is not None else None
            t1 = time.perf_counter()
            a, amp, gres = solve_draw(draws, a, g, lmat, cuts, previous, args.starts, rng)
            solve_s = time.perf_counter() - t1
            cond = sum((ai * np.outer(c["v"], c["v"]) for ai, c in zip(amp, cuts)), np.zeros((p, p)))
            phi = draws.estimate(a, g)[0] + cond
            refit = draws.refit(a, g)
            cross, _ = draws.test_blocks(anbk_ais._test_blocks_fn(act.fn), a, g, prob.l_test)
            cross = cross + sum((ai * np.outer(np.maximum(l_test @ c["u"], 0), c["v"]) for ai, c in zip(amp, cuts)),
                                np.zeros((l_test.shape[0], p)))
            pred = cross @ np.linalg.solve(phi + np.eye(p) / args.beta, y)
            print(json.dumps({
                "gamma0": g, "draw": it, "residual": res, "mc_error": mc, "ess": ess, "cuts": len(cuts),
                "condensate_share": float(np.linalg.norm(cond) / np.linalg.norm(phi)),
                "newton_residual": gres, "test_mse": float(np.mean((pred - ds.y_test) ** 2)), "nngp_test_mse": nngp,
                "alignment": float(y @ phi @ y / (np.linalg.norm(phi) * (y @ y))),
                "solve_seconds": round(solve_s, 1), "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        g_prev = g


if __name__ == "__main__":
    main()
