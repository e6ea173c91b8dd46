"""Time to the aNTK fixed point vs forward Euler at the paper code's step 1e-3 (issue 4, item 6).

digits:3v8, P=100 + 200 test, S=4000, relu, depth 1, gamma0 in {0.5, 1, 2}, lambda in {0.01, 0.1}.
"Converged" = DMFT output and feature form agree to `--tol` (THEORY.md 4.2). Euler is run with
the same antithetic population for at most `--euler-seconds` per case, or with `--euler-factor F`
for F times that case's cold aNTK time: if it has not reached the agreement by then, the speed-up
is at least F (issue 4 asks for 20). Prints one JSON object. Timings depend on machine load
(report contention with them).

    python benchmarks/bench_antk.py [--quick] [--euler-factor 20]
"""

from __future__ import annotations

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
from akviz.antk import _sample_population, antk
from akviz.kernels import input_kernel


def euler(ds, gamma0, lam, samples, seed, dt, tol, budget_s, check_every=500):
    """Forward Euler of THEORY.md 4.1 (the paper code's method); returns (seconds, steps, gap, reached)."""
    with jax.enable_x64(True):
        x_tr, y_tr, x_te, _ = ds
        p = x_tr.shape[0]
        C = input_kernel(np.concatenate([x_tr, x_te]))
        h, z = _sample_population(C, samples, seed)
        Cx = jnp.asarray(C[:p])
        y = jnp.asarray(y_tr)
        S = samples

        @jax.jit
        def steps(h, z):
            def body(_, carry):
                h, z = carry
                hx = h[:, :p]
                delta = y - (z @ jax.nn.relu(hx)) / (gamma0 * S)
                dh = gamma0 * ((z[:, None] * delta[None, :] * (hx > 0)) @ Cx) - lam * h
                dz = gamma0 * (jax.nn.relu(hx) @ delta) - lam * z
                return h + dt * dh, z + dt * dz
            return jax.lax.fori_loop(0, check_every, body, (h, z))

        def gap(h, z):
            F = np.asarray(jax.nn.relu(h))
            f = np.asarray(z) @ F / (gamma0 * S)
            Phi = F.T @ F / S
            feat = Phi[:, :p] @ np.linalg.solve(Phi[:p, :p] + lam * np.eye(p), y_tr)
            return np.linalg.norm(f - feat) / np.linalg.norm(f)

        h, z = steps(h, z)
        jax.block_until_ready(h)  # compile outside the clock
        h, z = _sample_population(C, samples, seed)
        start = time.perf_counter()
        n = 0
        g = np.inf
        while time.perf_counter() - start < budget_s:
            h, z = steps(h, z)
            n += check_every
            g = gap(h, z)
            if not np.isfinite(g) or g <= tol:
                break
        return time.perf_counter() - start, n, float(g), bool(g <= tol)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one case, short Euler budget")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--euler-seconds", type=float, default=60.0)
    ap.add_argument("--euler-factor", type=float, default=None,
                    help="Euler's budget per case as a multiple of the cold aNTK time (overrides --euler-seconds)")
    ap.add_argument("--antk-seconds", type=float, default=120.0, help="wall-clock budget per aNTK solve")
    args = ap.parse_args()
    ds = akviz.load_dataset("digits:3v8", 100, 200, 0)
    gammas = [1.0] if args.quick else [0.5, 1.0, 2.0]
    lams = [0.1] if args.quick else [0.01, 0.1]
    budget = 15.0 if args.quick else args.euler_seconds
    antk(ds, gamma0=1.0, weight_decay=0.1, samples=args.samples, max_steps=2, fixed_point_iterations=50)  # compile
    cases = []
    for lam in lams:
        prev = None
        for g in gammas:
            cold = antk(ds, gamma0=g, weight_decay=lam, samples=args.samples, tol=args.tol,
                        max_seconds=args.antk_seconds)
            warm = antk(ds, gamma0=g, weight_decay=lam, samples=args.samples, tol=args.tol,
                        max_seconds=args.antk_seconds, init=prev) if prev is not None else None
            prev = cold
            e_budget = budget if args.euler_factor is None else args.euler_factor * cold.seconds
            e_s, e_n, e_gap, e_ok = euler(ds, g, lam, args.samples, 0, 1e-3, args.tol, e_budget)
            case = {
                "gamma0": g, "weight_decay": lam,
                "antk_seconds_cold": cold.seconds, "antk_steps": cold.iterations,
                "antk_fixed_point_iterations": cold.fixed_point_iterations,
                "antk_converged": cold.converged, "antk_feature_gap": cold.feature_gap,
                "antk_ntk_gap": cold.ntk_gap, "antk_residual": cold.residual,
                "antk_message": cold.message,
                "antk_test_loss": cold.test_loss, "lazy_ntk_test_loss": cold.lazy_ntk_test_loss,
                "antk_seconds_warm": None if warm is None else warm.seconds,
                "antk_warm_converged": None if warm is None else warm.converged,
                "euler_budget_seconds": e_budget, "euler_seconds": e_s, "euler_steps": e_n, "euler_feature_gap": e_gap,
                "euler_reached_tol": e_ok,
                "euler_over_antk_cold": e_s / cold.seconds,
                "note": ("neither reached tol: ratio compares budgets, not times to tol"
                         if not (e_ok or cold.converged) else
                         "antk did not reach tol" if not cold.converged else
                         "ratio is a lower bound: Euler did not reach tol within its budget"
                         if not e_ok else ""),
            }
            cases.append(case)
            print(json.dumps(case), flush=True, file=sys.stderr)
    print(json.dumps({"benchmark": "antk", "tol": args.tol, "samples": args.samples,
                      "devices": [str(d) for d in jax.devices()], "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
