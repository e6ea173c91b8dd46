"""Benchmark: finite-width GD networks vs the aNTK DMFT at the same training time (THEORY.md 4.4).

relu, depth 1, digits:3v8 (P=100, Q=200), gamma0=1, lambda=0.1. The DMFT of
:func:`akviz.antk` describes the whole gradient-flow trajectory, so both sides
are compared at the *same* training time ``t`` (default ``10 / lambda``):
``antk(..., max_time=t)`` stops exactly at ``t`` and ``train_network(...,
max_time=t)`` lands exactly on it (last GD step shortened).

Prints JSON lines:

* one per DMFT run (``--samples`` neurons, antithetic, each ``--dmft-seeds``);
  the reference is the mean of their test predictions, and the seed-to-seed
  RMS difference is the DMFT's own noise (one run's error ``rms_pair /
  sqrt(2)``, the reference's that over ``sqrt(k)`` for ``k`` seeds);
* one per network (width, seed) with the correlation and RMS gap of its test
  predictions to the reference;
* per width, the mean and spread (sample std) over seeds;
* optionally (``--dmft-widths``) DMFT runs with ``S = N`` neurons against the
  same reference: at depth 1 a width-``N`` network *is* an ``N``-neuron sample
  of the DMFT (``h0 = x W / sqrt(D) ~ N(0, C)``), so its gap should match these
  up to the time discretisation (GD vs the DMFT integrator).

The DMFT integrator's step control matters here: with antk's default
``rtol=0.02`` the relu trajectory at ``t = 100`` is off by an RMS of 0.036 on
the test predictions (S=4096, same population, against ``rtol=0.005``), more
than the width-512 network's own error; hence ``--rtol 0.005`` by default.
``t = 100 / lambda`` takes ~80 000 GD steps (20 min at N=4096 on 2 shared
cores) and ~3x the DMFT steps of ``t = 10 / lambda``.

Not a test. Example (the measurement of issue 5; ~40 min on 2 shared CPU cores)::

    python benchmarks/width_scaling_antk.py --widths 512 1024 2048 4096 --seeds 0 1 2 \\
        --samples 8192 --dmft-seeds 0 1 --rtol 0.005 --cache /tmp/cache
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # akviz from this checkout (it is not installed)

import akviz
import akviz.network as network
from akviz.compare import compare_predictions


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def cached(path, fn):
    """``fn() -> (predictions, info)``, cached in ``path`` (.npz) when a cache folder is given."""
    if path and os.path.exists(path):
        z = np.load(path, allow_pickle=True)
        return z["pred"], z["info"].item()
    pred, info = fn()
    if path:
        np.savez(path, pred=pred, info=np.asarray(info, dtype=object))
    return pred, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits:3v8")
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--gamma0", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--time", type=float, default=None, help="training time t (default 10 / lambda)")
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=8192, help="DMFT neurons of the reference")
    ap.add_argument("--dmft-seeds", type=int, nargs="*", default=[0, 1],
                    help="seeds of the reference DMFT runs (none: only train and cache the networks)")
    ap.add_argument("--rtol", type=float, default=0.005, help="DMFT integrator step control")
    ap.add_argument("--safety", type=float, default=network.LR_SAFETY,
                    help="GD step eta (lambda_max(NTK_t) + lambda) (adaptive)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--dmft-widths", type=int, nargs="*", default=[],
                    help="also run the DMFT with S = N neurons (seeds 1000 + --seeds) against the reference")
    ap.add_argument("--cache", default=None, help="folder for cached predictions (reruns reuse them)")
    args = ap.parse_args()

    lam, g0 = args.weight_decay, args.gamma0
    t = 10.0 / lam if args.time is None else args.time
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    ds = akviz.load_dataset(args.dataset, args.n_train, args.n_test, 0)
    tag = f"g{g0}_l{lam}_t{t:g}"

    def dmft(samples, seed, rtol=args.rtol):
        def run():
            t0 = time.perf_counter()
            r = akviz.antk(ds, gamma0=g0, weight_decay=lam, samples=samples, seed=seed, max_time=t,
                           rtol=rtol, max_steps=1_000_000)
            return r.test_predictions, {"final_time": r.final_time, "steps": r.iterations,
                                        "feature_gap": r.feature_gap, "residual": r.residual,
                                        "test_loss": r.test_loss, "seconds": time.perf_counter() - t0}
        path = args.cache and os.path.join(args.cache, f"dmft_{tag}_S{samples}_s{seed}_r{rtol:g}.npz")
        return cached(path, run)

    # ---- reference: the DMFT at S neurons, several seeds
    refs = []
    for s in args.dmft_seeds:
        pred, info = dmft(args.samples, s)
        refs.append(pred)
        print(json.dumps({"dmft": {"samples": args.samples, "seed": s, "rtol": args.rtol, **info}}), flush=True)
    ref = np.mean(refs, axis=0) if refs else None  # no --dmft-seeds: only train (and cache) the networks
    floor = {}
    if len(refs) > 1:
        pairs = [rms(refs[i], refs[j]) for i in range(len(refs)) for j in range(i + 1, len(refs))]
        sigma = float(np.mean(pairs)) / math.sqrt(2)  # one run's RMS error
        floor = {"dmft_seed_to_seed_rms": pairs, "dmft_single_run_rms_error": sigma,
                 "reference_rms_error": sigma / math.sqrt(len(refs))}
        print(json.dumps({"noise_floor": floor}), flush=True)

    # ---- finite-width networks at the same time t
    network.LR_SAFETY = args.safety  # train_network reads it at call time (adaptive step)
    rows = []
    for width in args.widths:
        per = []
        for seed in args.seeds:
            def run():
                t0 = time.perf_counter()
                lr0 = network.default_lr(ds.x_train, depth=1, activation="relu", weight_decay=lam,
                                         safety=args.safety)
                steps = int(round(20 * t / lr0))
                r = akviz.train_network(ds, width=width, depth=1, activation="relu", gamma0=g0, weight_decay=lam,
                                        steps=steps, seed=seed, max_time=t, dtype=args.dtype,
                                        record_every=max(1, steps // 200))
                return r.test_predictions, {"final_time": r.final_time, "steps": r.steps, "diverged": r.diverged,
                                            "test_loss": r.test_loss, "seconds": time.perf_counter() - t0}
            path = args.cache and os.path.join(
                args.cache, f"net_{tag}_N{width}_s{seed}_k{args.safety:g}_{args.dtype}.npz")
            pred, info = cached(path, run)
            if ref is None:
                print(json.dumps({"network": {"width": width, "seed": seed, **info}}), flush=True)
                continue
            cmp = compare_predictions(ref, pred, ds.y_test)
            row = {"width": width, "seed": seed, "correlation": cmp["correlation"], "rms": cmp["rms_difference"],
                   "relative_rms": cmp["relative_rms"], **info}
            per.append(row)
            print(json.dumps({"network": row}), flush=True)
        if not per:
            continue
        r_ = [p["rms"] for p in per]
        c_ = [p["correlation"] for p in per]
        agg = {"width": width, "seeds": len(per), "rms_mean": float(np.mean(r_)),
               "rms_std": float(np.std(r_, ddof=1)) if len(r_) > 1 else float("nan"),
               "correlation_mean": float(np.mean(c_)), "correlation_min": float(np.min(c_)),
               "rms_mean_times_sqrt_width": float(np.mean(r_) * math.sqrt(width))}
        rows.append(agg)
        print(json.dumps({"width_summary": agg}), flush=True)

    # ---- the DMFT with S = N neurons: what a width-N network should look like
    dmft_rows = []
    for width in args.dmft_widths if ref is not None else []:
        r_ = []
        for seed in args.seeds:
            pred, info = dmft(width, 1000 + seed)  # seeds apart from the reference's
            r_.append(rms(ref, pred))
        agg = {"samples": width, "seeds": len(r_), "rms_mean": float(np.mean(r_)),
               "rms_std": float(np.std(r_, ddof=1)) if len(r_) > 1 else float("nan")}
        dmft_rows.append(agg)
        print(json.dumps({"dmft_at_width": agg}), flush=True)

    print(json.dumps({"benchmark": "width_scaling_antk", "time": t, "gamma0": g0, "weight_decay": lam,
                      "samples": args.samples, "dmft_seeds": args.dmft_seeds, "rtol": args.rtol,
                      "safety": args.safety, "dtype": args.dtype, **floor, "widths": rows,
                      "dmft_widths": dmft_rows}))


if __name__ == "__main__":
    main()
