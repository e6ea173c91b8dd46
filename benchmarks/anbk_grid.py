"""The aNBK acceptance grid: relu on digits:3v8 (P=100, 200 test), gamma0 along a grid, each solve warm
from the previous one, with the solver ``method="auto"`` picks. Not a test.

Prints one JSON object per line: the solver that produced the result (``ais`` or ``mala``), whether it
converged, its saddle residual on fresh samples, Monte Carlo error, ESS, test loss against the lazy
NNGP ridge predictor's (ridge 1/beta), the action and its error (null where ``ln Z`` is unknown), wall time,
and the first part of the message.

    python benchmarks/anbk_grid.py [--depth 1] [--betas 1 10] [--gammas 0.1 0.25 0.5 1 2] [--samples S] [--max-iter M]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # akviz from this checkout (it is not installed)

import akviz


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--betas", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--method", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=None, help="per solve (default: the solver's own)")
    ap.add_argument("--max-iter", type=int, default=None, help="per solve (default: the solver's own)")
    args = ap.parse_args()
    ds = akviz.load_dataset("digits:3v8", 100, 200, seed=0)
    for beta in args.betas:
        lazy = akviz.lazy_predictor(ds, depth=args.depth, ridge=1.0 / beta)
        prev = None
        for g in args.gammas:
            t0 = time.perf_counter()
            r = akviz.anbk(ds, gamma0=g, beta=beta, depth=args.depth, method=args.method, init=prev, seed=args.seed,
                           samples=args.samples, max_iter=args.max_iter)
            seconds = time.perf_counter() - t0
            summary = r.to_json_dict()  # NaN as null
            print(json.dumps({
                "depth": args.depth, "beta": beta, "gamma0": g, "solver": r.method, "converged": r.converged,
                "residual": r.residual["max"], "mc_error": max(r.mc_error), "ess": min(r.ess),
                "samples": r.samples, "iterations": r.iterations, "test_loss": r.test_loss,
                "nngp_test_loss": lazy.test_loss, "alignment": r.alignment[-1], "action": summary["action"],
                "action_mc_error": summary["action_mc_error"], "seconds": round(seconds, 2),
                "message": r.message[:160]}), flush=True)
            prev = r if r.converged or prev is None else prev


if __name__ == "__main__":
    main()
