"""Benchmark: finite-width networks, milliseconds per step (GD with weight decay, Langevin).

Prints JSON: for relu on digits:3v8 (P=100, 200 test), each width and depth,
the compiled time per step of ``train_network`` (adaptive step) and
``sample_posterior`` (Gibbs readout + exponential-Euler Langevin), measured on a
second call (the first includes JIT compilation). Not a test.

    python benchmarks/bench_network.py [--widths 512 2048 8192] [--depths 1 2] [--steps 200]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # akviz from this checkout (it is not installed)

import akviz


def per_step(fn, steps):
    fn(steps)  # compile
    t0 = time.perf_counter()
    fn(steps)
    return 1e3 * (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    ds = akviz.load_dataset("digits:3v8", 100, 200, 0)
    rows = []
    for depth in args.depths:
        for width in args.widths:
            gd = per_step(lambda n: akviz.train_network(ds, width=width, depth=depth, gamma0=1.0, weight_decay=0.1,
                                                        steps=n, record_every=n, dtype=args.dtype), args.steps)
            lv = per_step(lambda n: akviz.sample_posterior(ds, width=width, depth=depth, gamma0=0.5, beta=1.0,
                                                           steps=n, burn_in=0, thin=10, chunks=n // 10,
                                                           dtype=args.dtype), args.steps)
            rows.append({"depth": depth, "width": width, "gd_ms_per_step": gd, "langevin_ms_per_step": lv})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"benchmark": "network", "dtype": args.dtype, "rows": rows}))


if __name__ == "__main__":
    main()
