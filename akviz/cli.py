"""Command line: ``python -m akviz {datasets,solve,compare}``.

Bad arguments exit with status 2 and one readable line on stderr, never a
traceback; ``solve --json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time


from .export import to_plain
from .jit_cache import enable_compilation_cache

METHODS = ("nngp", "ntk", "anbk", "antk")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (argparse prints usage + message)."""

    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text):
    value = _nonnegative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _add_problem_arguments(parser):
    """Data and network flags shared by ``solve`` and ``compare``."""
    parser.add_argument("--dataset", default="digits:3v8")
    parser.add_argument("--data-dir", default=None, help="folder with MNIST/CIFAR-10 files")
    parser.add_argument("--n-train", type=_positive_int, default=100)
    parser.add_argument("--n-test", type=_positive_int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=_positive_int, default=1, help="number of hidden layers L >= 1")
    parser.add_argument("--activation", default="relu")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m akviz", description="Adaptive kernels of feature-learning infinite-width networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ds = sub.add_parser("datasets", help="list the datasets")
    ds.add_argument("--data-dir", default=None, help="folder with MNIST/CIFAR-10 files (default $AKVIZ_DATA_DIR or ~/.cache/akviz)")
    ds.add_argument("--json", action="store_true", help="print JSON")

    sv = sub.add_parser("solve", help="fit a kernel predictor and report its scores")
    sv.add_argument("--method", choices=METHODS, default="nngp")
    _add_problem_arguments(sv)
    sv.add_argument("--ridge", type=_nonnegative_float, default=None,
                    help="ridge for nngp/ntk (default 1e-2)")
    sv.add_argument("--gamma0", type=_nonnegative_float, default=None, help="feature-learning strength (anbk, antk)")
    sv.add_argument("--beta", type=_positive_float, default=None, help="inverse temperature (anbk)")
    sv.add_argument("--weight-decay", type=_positive_float, default=None, help="weight decay lambda (antk)")
    sv.add_argument("--samples", type=_positive_int, default=None, help="Monte Carlo samples / neurons (anbk, antk)")
    sv.add_argument("--solver", choices=("auto", "exact", "ais", "mala", "hs", "is"), default="auto",
                    help="aNBK solver (anbk; default auto: exact for linear, ais at depth 1, else mala)")
    sv.add_argument("--json", action="store_true", help="print one JSON object")

    cp = sub.add_parser("compare", help="run a theory and a finite-width network on the same data and compare them")
    cp.add_argument("--method", choices=("anbk", "antk"), required=True,
                    help="anbk: Langevin posterior sampling; antk: gradient descent with weight decay")
    cp.add_argument("--width", type=_positive_int, required=True, help="network width N")
    _add_problem_arguments(cp)
    cp.add_argument("--gamma0", type=_positive_float, default=None, help="feature-learning strength")
    cp.add_argument("--beta", type=_positive_float, default=None, help="inverse temperature (anbk)")
    cp.add_argument("--weight-decay", type=_positive_float, default=None, help="weight decay lambda (antk)")
    cp.add_argument("--samples", type=_positive_int, default=None, help="Monte Carlo samples / neurons of the theory")
    cp.add_argument("--steps", type=_positive_int, default=None,
                    help="network steps (GD steps; Langevin steps after burn-in). Default: antk trains to "
                         "t = 100/lambda and the aNTK DMFT is compared at the network's training time; anbk samples "
                         "t = 40 (after a burn-in of t = 10)")
    cp.add_argument("--burn-in", type=_positive_int, default=None, help="Langevin burn-in steps (default t = 10)")
    cp.add_argument("--step-size", type=_positive_float, default=None,
                    help="GD learning rate / Langevin step (default: chosen from the NTK's curvature)")
    cp.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _cmd_datasets(args):
    from .activations import list_activations
    from .data import list_datasets

    rows = list_datasets(args.data_dir)
    if args.json:
        print(json.dumps({"datasets": [{"name": n, "description": d, "available": a} for n, d, a in rows],
                          "activations": list_activations()}))
        return 0
    width = max(len(n) for n, _, _ in rows)
    for name, desc, available in rows:
        print(f"{name:<{width}}  {desc}{'' if available else '  [files not found]'}")
    print(f"\nactivations: {', '.join(list_activations())}")
    return 0


def _require(args, *names):
    for name in names:
        if getattr(args, name) is None:
            raise _UsageError(f"--method {args.method} needs --{name.replace('_', '-')}")


def solve(args) -> dict:
    """Run one solver from parsed arguments; returns the JSON-ready summary."""
    from .activations import get_activation
    from .data import load_dataset
    from .lazy import lazy_predictor

    get_activation(args.activation)  # fail on a bad name before loading data
    start = time.perf_counter()
    ds = load_dataset(args.dataset, args.n_train, args.n_test, args.seed, data_dir=args.data_dir)
    out = {"method": args.method, "dataset": args.dataset, "n_train": args.n_train, "n_test": args.n_test,
           "seed": args.seed, "depth": args.depth, "activation": args.activation}
    if args.method in ("nngp", "ntk"):
        ridge = 1e-2 if args.ridge is None else args.ridge
        r = lazy_predictor(ds, method=args.method, depth=args.depth, activation=args.activation, ridge=ridge)
        out.update(ridge=ridge, test_loss=r.test_loss, train_loss=r.train_loss, test_error=r.test_error,
                   alignment=r.alignment, converged=True)
    elif args.method == "anbk":
        _require(args, "gamma0", "beta")
        from . import anbk

        kw = {} if args.samples is None else {"samples": args.samples}
        r = anbk(ds, gamma0=args.gamma0, beta=args.beta, depth=args.depth, activation=args.activation,
                 seed=args.seed, method=args.solver, **kw)
        out.update(r.to_json_dict())
    else:
        _require(args, "gamma0", "weight_decay")
        from . import antk

        kw = {} if args.samples is None else {"samples": args.samples}
        r = antk(ds, gamma0=args.gamma0, weight_decay=args.weight_decay, depth=args.depth,
                 activation=args.activation, seed=args.seed, **kw)
        out.update(r.to_json_dict())
    out["seconds"] = time.perf_counter() - start
    return to_plain(out)


def compare(args) -> dict:
    """Run a theory (aNBK / aNTK) and the matching finite-width network; returns the JSON-ready comparison."""
    from .activations import get_activation
    from .compare import compare as compare_results
    from .data import load_dataset
    from .network import default_lr, default_step_size, sample_posterior, train_network

    get_activation(args.activation)
    if args.method == "anbk":
        _require(args, "gamma0", "beta")
    else:
        _require(args, "gamma0", "weight_decay")
    if args.method == "antk" and args.width % 2:
        raise _UsageError(f"--width must be even for --method antk (antithetic neuron pairs), got {args.width}")
    start = time.perf_counter()
    ds = load_dataset(args.dataset, args.n_train, args.n_test, args.seed, data_dir=args.data_dir)
    out = {"method": args.method, "dataset": args.dataset, "n_train": args.n_train, "n_test": args.n_test,
           "seed": args.seed, "depth": args.depth, "activation": args.activation, "width": args.width,
           "gamma0": args.gamma0}
    kw = {} if args.samples is None else {"samples": args.samples}
    if args.method == "anbk":
        from . import anbk

        theory = anbk(ds, gamma0=args.gamma0, beta=args.beta, depth=args.depth, activation=args.activation,
                      seed=args.seed, **kw)
        dt = args.step_size or default_step_size(ds.x_train, depth=args.depth, activation=args.activation,
                                                 beta=args.beta)
        steps = args.steps or max(200, int(round(40.0 / dt)))
        burn_in = args.burn_in if args.burn_in is not None else int(round(10.0 / dt))
        thin, chunks = 10, 20
        steps = max(steps, thin * chunks)
        network = sample_posterior(ds, width=args.width, depth=args.depth, activation=args.activation,
                                   gamma0=args.gamma0, beta=args.beta, steps=steps, burn_in=burn_in,
                                   step_size=dt, seed=args.seed, thin=thin, chunks=chunks)
        out["beta"] = args.beta
    else:
        from . import antk

        # default: adaptive step, trained to exactly t = 100 / lambda (at most 20x the steps that takes at
        # the initial step size: the NTK, hence 1/step, grows during training)
        horizon = None if args.steps else 100.0 / args.weight_decay
        steps = args.steps or int(round(20 * horizon / default_lr(
            ds.x_train, depth=args.depth, activation=args.activation, weight_decay=args.weight_decay)))
        network = train_network(ds, width=args.width, depth=args.depth, activation=args.activation,
                                gamma0=args.gamma0, weight_decay=args.weight_decay, steps=steps,
                                lr=args.step_size, seed=args.seed, max_time=horizon,
                                record_every=None if args.steps else max(1, steps // 400))
        # the DMFT describes the whole training trajectory: compare at the network's training time
        # rtol 0.005: the default 0.02 puts the relu trajectory ~0.036 RMS off at t = 100 (network.py docstring)
        theory = antk(ds, gamma0=args.gamma0, weight_decay=args.weight_decay, depth=args.depth,
                      activation=args.activation, seed=args.seed, max_time=network.final_time, rtol=0.005, **kw)
        out.update(weight_decay=args.weight_decay, time=network.final_time)
    cmp = compare_results(theory, network, ds)
    kern, pred = cmp["kernels"], cmp["predictions"]
    out.update(
        theory_converged=bool(theory.converged), theory_message=theory.message,
        network=network.to_json_dict(),
        kernel_relative_frobenius=kern["relative_frobenius"],
        kernel_relative_frobenius_train=kern["relative_frobenius_train"],
        alignment_theory=kern["alignment_theory"], alignment_network=kern["alignment_network"],
        frobenius_theory=kern["frobenius_theory"], frobenius_network=kern["frobenius_network"],
        prediction_correlation=pred["correlation"], prediction_rms_difference=pred["rms_difference"],
        prediction_relative_rms=pred["relative_rms"],
        test_loss_theory=cmp["test_loss_theory"], test_loss_network=cmp["test_loss_network"],
        test_loss_relative_gap=cmp["test_loss_relative_gap"],
    )
    if "test_loss_network_stderr" in cmp:
        out["test_loss_network_stderr"] = cmp["test_loss_network_stderr"]
    out["seconds"] = time.perf_counter() - start
    return to_plain(out)


def _print_summary(summary: dict):
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, list) and value and isinstance(value[0], float):
            value = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        print(f"{key:>14}: {value}")


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        enable_compilation_cache()  # most of a one-off solve is compilation: keep it for the next run
        if args.command == "datasets":
            return _cmd_datasets(args)
        summary = compare(args) if args.command == "compare" else solve(args)
    except _UsageError as exc:
        print(f"akviz: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"akviz: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0
