"""Finite-width mu-P networks that check the theory (THEORY.md 1, 3.3, 4.4).

The network of THEORY.md 1, with ``L`` hidden layers of width ``N``::

    h^1 = x W^0 / sqrt(D),   h^{l+1} = phi(h^l) W^l / sqrt(N),   f = phi(h^L) . w / (gamma0 N)

(row-vector layout: ``W^0`` is ``(D, N)``, ``W^l`` is ``(N, N)``, ``w`` is ``(N,)``;
all entries ``N(0, 1)`` at init / under the prior).

* :func:`train_network`: full-batch gradient descent with weight decay,
  ``theta <- theta - eta (gamma0^2 N grad L + lambda theta)``,
  ``L = 1/2 sum_mu (f(x_mu) - y_mu)^2``; its fixed point is what the aNTK /
  DMFT (:func:`akviz.antk`) describes at infinite width.
* :func:`sample_posterior`: Langevin dynamics whose stationary law is the
  Bayesian posterior of THEORY.md 3,
  ``p(theta) ∝ exp(-(beta N gamma0^2/2) sum_mu (f_mu - y_mu)^2 - |theta|^2/2)``,
  whose wide limit is the aNBK (:func:`akviz.anbk`).

Both run a jit-compiled ``lax.scan`` over steps (one compiled program per
depth/shape, any depth), in ``float32`` by default (``dtype="float64"`` for
exactness checks); kernel averages are accumulated in float64.

Empirical kernels, averaged over the ``N`` neurons of a layer, on train+test
(training block first)::

    Phi^l = phi(h^l) phi(h^l)^T / N
    G^l   = g^l g^l^T / N,   g^L = phi'(h^L) * w,   g^l = phi'(h^l) * (g^{l+1} W^l^T) / sqrt(N)
    NTK   = Phi^L + sum_{l<L} G^{l+1} * Phi^l + G^1 * C      (= gamma0^2 N sum_theta df df)

``g^l = gamma0 N df/dh^l`` as in THEORY.md 1.

Measured against the theory (digits:3v8, P=100, Q=200, relu; 2 shared CPU cores):

* GD, depth 1, gamma0=1, lambda=0.1, against the aNTK DMFT at the *same* training
  time t=100 (``max_time`` lands exactly on it; DMFT 2 x 8192 neurons, ``rtol=0.005``,
  its own RMS error 0.0028): test-prediction RMS gap 0.0117 / 0.0086 / 0.0073 / 0.0063
  (3 seeds each, spread <= 0.0013), correlation 0.99992 / 0.99995 / 0.99997 / 0.99998
  at N = 512 / 1024 / 2048 / 4096; seed-to-seed network error 0.0113 / 0.0080 /
  0.0067 / 0.0046 (``benchmarks/width_scaling_antk.py``). The DMFT's default
  ``rtol=0.02`` is too coarse for this: its relu trajectory at t=100 is 0.036 RMS off
  (one 4096-neuron population, ``rtol=0.02`` vs ``0.005``; ``0.005`` vs ``0.00125``: 0.001).
  At t=1000 with ``rtol=0.02`` (2 x 16384 neurons, seed-to-seed 0.014) the gap stays at
  0.022 / 0.021 for N = 512 / 4096: the integrator, not the network, sets that floor.
* Depth 2 with weight decay (THEORY.md 4.3) is **experimental** and does not
  match: the deep aNTK (4000 neurons, 420 s, not converged: fixed-point residual
  1.78, test MSE 0.0952) is a relaxation towards the 4.3 fixed point, not a
  training trajectory, so networks are compared with its end point. Networks
  trained to t=100 (step safety 0.75): N = 512 (2 seeds) / 1024 / 2048 give
  correlation 0.99942, 0.99911 / 0.99945 / 0.99958, RMS gap 0.031, 0.038 / 0.031 /
  0.027 (network-vs-network floor 0.022-0.037: not resolved), Phi^1 distance
  16.4 % / 16.1 % / 14.7 % against a network floor of 4.6-7.5 %, Phi^2 8.5-6.2 %
  against 2.5-4.7 %, test MSE 0.0924-0.0941 against 0.0952. Longer training
  (N=512 to t=1000, still drifting: 0.007 RMS over the last 400 time units)
  brings Phi^1 only to 12 % and moves the test MSE to 0.0901, away from the theory.
* Langevin, depth 1, gamma0=0.5, beta=1, N=2048: posterior-mean test MSE 0.1540
  +- 0.0003 (dt=0.0101) and 0.1535 +- 0.0002 (dt/2); alignment 0.395 / 0.393,
  ||Phi||_F 20.39 / 20.39, kernels 1.0 % apart (batch-means error 0.7 % each).
  The NNGP predictor scores 0.243.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._precision import float64
from .export import json_number
from .activations import get_activation
from .data import as_arrays
from .kernels import input_kernel, lazy_kernels
from .regression import alignment as _alignment
from .regression import classification_error, mse

#: Most kernel snapshots ``train_network`` keeps in ``history`` (first and last always kept).
MAX_RECORDS = 64


# ----------------------------------------------------------------- validation


def _check_int(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_float(name, value, *, positive=False, allow_zero=True):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or (not allow_zero and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}.")
    return value


def _check_dtype(dtype):
    if dtype in ("float32", np.float32, jnp.float32):
        return jnp.float32
    if dtype in ("float64", np.float64, jnp.float64):
        return jnp.float64
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.")


# ----------------------------------------------------------------- the network


def init_params(key, d, width, depth, dtype=jnp.float32, antithetic=False):
    """``[W^0 (D,N), W^1..W^{L-1} (N,N), w (N,)]``, all ``N(0, 1)``.

    ``antithetic=True`` (``N`` even) pairs the last hidden layer's neurons:
    neuron ``i + N/2`` gets the same incoming weights as neuron ``i`` and the
    opposite readout, so ``f = 0`` at init (to round-off; as in the DMFT, where
    :func:`akviz.antk` samples neurons in pairs ``(h, z), (h, -z)``).
    """
    keys = jax.random.split(key, depth + 1)
    shapes = [(d, width)] + [(width, width)] * (depth - 1)
    params = [jax.random.normal(k, s, dtype) for k, s in zip(keys[:-1], shapes)]
    w = jax.random.normal(keys[-1], (width,), dtype)
    if antithetic:
        half = width // 2
        last = params[-1][:, :half]
        params[-1] = jnp.concatenate([last, last], axis=1)
        w = jnp.concatenate([w[:half], -w[:half]])
    return params + [w]


def _forward(params, x, phi):
    """Preactivations ``[h^1..h^L]`` on the rows of ``x``."""
    ws = params[:-1]
    width = ws[0].shape[1]
    hs = [x @ ws[0] / math.sqrt(x.shape[1])]
    for w in ws[1:]:
        hs.append(phi(hs[-1]) @ w / math.sqrt(width))
    return hs


def _output(params, x, phi, gamma0):
    hs = _forward(params, x, phi)
    w = params[-1]
    return phi(hs[-1]) @ w / (gamma0 * w.shape[0])


def _observables(params, x, phi, dphi, gamma0, c):
    """Per-layer ``Phi^l``, ``G^l`` (L, n, n), empirical NTK (n, n), output (n,), preactivations."""
    hs = _forward(params, x, phi)
    w = params[-1]
    width = w.shape[0]
    feats = [phi(h) for h in hs]
    acc = jnp.float64 if jax.config.jax_enable_x64 else hs[0].dtype
    phis = [(f @ f.T).astype(acc) / width for f in feats]
    g = dphi(hs[-1]) * w
    gs = [None] * len(hs)
    gs[-1] = g
    for layer in range(len(hs) - 1, 0, -1):
        g = dphi(hs[layer - 1]) * (g @ params[layer].T) / math.sqrt(width)
        gs[layer - 1] = g
    gks = [(g @ g.T).astype(acc) / width for g in gs]
    ntk = phis[-1]
    for layer in range(len(hs) - 1):
        ntk = ntk + gks[layer + 1] * phis[layer]
    ntk = ntk + gks[0] * c
    f = (feats[-1] @ w).astype(acc) / (gamma0 * width)
    return jnp.stack(phis), jnp.stack(gks), ntk, f, hs


def empirical_kernels(params, x, *, activation="relu", gamma0=1.0):
    """``(Phi, G, NTK, f)`` of one network on inputs ``x`` (float64 NumPy; Phi/G are ``(L, n, n)``).

    ``params`` as :func:`init_params` returns them (or ``result.params``).
    """
    act = get_activation(activation)

    @float64
    def run():
        xx = jnp.asarray(np.asarray(x, np.float64), params[0].dtype)
        c = jnp.asarray(input_kernel(np.asarray(x, np.float64)))
        phis, gks, ntk, f, _ = _observables(params, xx, act.fn, act.deriv, float(gamma0), c)
        return tuple(np.asarray(v, np.float64) for v in (phis, gks, ntk, f))

    return run()


def _data_loss_grad(params, x, y, f0, phi, gamma0):
    """``gamma0^2 N grad_theta (1/2)|f - f0 - y|^2`` and the residual ``f - f0 - y``."""
    width = params[-1].shape[0]

    def loss(ps):
        r = _output(ps, x, phi, gamma0) - f0 - y
        return 0.5 * jnp.sum(r * r), r

    (_, r), grads = jax.value_and_grad(loss, has_aux=True)(params)
    scale = gamma0**2 * width
    return [scale * g for g in grads], r


# ----------------------------------------------------------------- gradient descent


@dataclasses.dataclass
class NetworkResult:
    """A network trained by gradient descent with weight decay (:func:`train_network`).

    Kernels on train+test are ``(P+Q, P+Q)`` with the training block first.

    Attributes:
      kernels: final ``Phi^l`` on train, ``(L, P, P)``.
      kernels_full: final ``Phi^l`` on train+test, ``(L, P+Q, P+Q)``.
      gradient_kernels_full: final ``G^l``, ``(L, P+Q, P+Q)``.
      ntk_full: final empirical NTK ``gamma0^2 N sum_theta df df``, ``(P+Q, P+Q)``.
      train_predictions, test_predictions: final ``f`` (minus the initial
        output when ``centering="subtract"``).
      train_loss, test_loss, test_error: MSEs ``mean((f - y)^2)`` and sign error.
      alignment: per-layer kernel-target alignment of the final ``Phi^l`` (train).
      history: dict of arrays: ``loss`` and ``lr`` (per step; ``1/2 sum (f-y)^2`` on
        train before the step), ``step``/``time`` (``t = sum of lr``), ``train_loss``,
        ``test_loss``, ``alignment`` (R, L), ``kernels`` (R, L, n, n) ``Phi^l``,
        ``gradient_kernels`` (R, L, n, n), ``ntk`` (R, n, n),
        ``test_predictions`` (R, Q) at the recorded steps (float32 snapshots).
      params: final weights (JAX arrays), for :func:`empirical_kernels`.
      lr (the last step size), steps, final_time, width, depth, activation, gamma0, weight_decay,
      centering, seed, dtype, diverged, message, seconds.
    """

    kernels: np.ndarray
    kernels_full: np.ndarray
    gradient_kernels_full: np.ndarray
    ntk_full: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray
    train_loss: float
    test_loss: float
    test_error: float
    alignment: list
    history: dict
    lr: float
    steps: int
    final_time: float
    width: int
    depth: int
    activation: str
    gamma0: float
    weight_decay: float
    centering: str
    seed: int
    dtype: str
    diverged: bool
    message: str
    seconds: float
    params: Any = dataclasses.field(default=None, repr=False)

    def to_json_dict(self) -> dict:
        num = json_number

        return {
            "method": "gd", "width": self.width, "depth": self.depth, "activation": self.activation,
            "gamma0": self.gamma0, "weight_decay": self.weight_decay, "steps": self.steps, "lr": self.lr,
            "final_time": self.final_time, "centering": self.centering, "seed": self.seed,
            "train_loss": num(self.train_loss), "test_loss": num(self.test_loss),
            "test_error": num(self.test_error), "alignment": [num(a) for a in self.alignment],
            "diverged": self.diverged, "message": self.message, "seconds": num(self.seconds),
        }


#: ``eta (lambda_max(NTK) + lambda)`` the default GD step aims at (2 is the stability limit).
LR_SAFETY = 0.5


def default_lr(x_train, *, depth, activation, weight_decay, safety=LR_SAFETY):
    """``safety / (lambda_max(K_0) + lambda)``: ``K_0`` the lazy NTK on the training inputs.

    Gradient descent on ``1/2 |f - y|^2`` moves ``f`` through the NTK, so the
    error along the top eigenvector contracts by ``1 - eta (k_max + lambda)``
    per step: ``eta < 2 / (k_max + lambda)`` is needed for stability. Feature
    learning grows the NTK during training (digits 3v8, P=100, relu, gamma0=1,
    lambda=0.1: ``k_max`` 14.7 at init, 40 at the aNTK fixed point), so the
    default keeps a factor 4 margin at init (``eta k_max`` = 1.4 at the end).
    """
    k = lazy_kernels(np.asarray(x_train, np.float64), depth=depth, activation=activation).ntk[-1]
    kmax = float(np.linalg.eigvalsh(0.5 * (k + k.T))[-1])
    return safety / (kmax + float(weight_decay))


#: Steps between re-estimates of the NTK's top eigenvalue for the adaptive GD step.
ADAPT_EVERY = 50


@functools.lru_cache(maxsize=16)
def _gd_chunk(phi, dphi, n_steps: int, gamma0: float, lam: float, safety: float, adapt: bool, p: int):
    """Jitted: ``n_steps`` GD steps (lax.scan) then the observables on train+test.

    Training time ``t`` stops exactly at ``t_max``: the step that would pass it is
    shortened, and the steps after it do nothing (their recorded ``eta`` is 0).

    With ``adapt``, every :data:`ADAPT_EVERY` steps (counted globally) the step is
    reset to ``safety / (lambda_max(K_t) + lambda)`` from the current empirical NTK
    on the training inputs.
    """

    def run(params, lr, t, k, x_all, y, f0, c, t_max):
        x_tr = x_all[:p]
        f0_tr = f0[:p]
        c_tr = c[:p, :p]

        def new_lr(ps, lr):
            _, _, ntk, _, _ = _observables(ps, x_tr, phi, dphi, gamma0, c_tr)
            return (safety / (jnp.linalg.eigvalsh(ntk)[-1] + lam)).astype(lr.dtype)

        def step(carry, _):
            ps, lr, t, k = carry
            if adapt:
                lr = jax.lax.cond(k % ADAPT_EVERY == 0, new_lr, lambda ps, lr: lr, ps, lr)
            grads, r = _data_loss_grad(ps, x_tr, y, f0_tr, phi, gamma0)
            # the step that would pass t_max is shortened to land on it; later steps are no-ops (eta = 0)
            last = t + lr >= t_max
            eta = jnp.where(last, jnp.maximum(t_max - t, 0.0), lr)
            new = [(1.0 - eta * lam).astype(q.dtype) * q - eta.astype(q.dtype) * g for q, g in zip(ps, grads)]
            return (new, lr, jnp.where(last, jnp.maximum(t_max, t), t + lr), k + 1), \
                (0.5 * jnp.sum(r.astype(jnp.float64) ** 2), eta)

        (params, lr, t, k), (losses, lrs) = jax.lax.scan(step, (params, lr, t, k), None, length=n_steps)
        phis, gks, ntk, f, _ = _observables(params, x_all, phi, dphi, gamma0, c)
        return params, lr, t, k, losses, lrs, phis, gks, ntk, f - f0

    return jax.jit(run, donate_argnums=(0,))


@float64
def train_network(dataset, *, width: int, depth: int = 1, activation="relu", gamma0: float = 1.0,
                  weight_decay: float = 0.1, steps: int = 3000, lr: Optional[float] = None, seed: int = 0,
                  record_every: Optional[int] = None, centering: str = "antithetic",
                  dtype="float32", max_time: Optional[float] = None,
                  callback: Optional[Callable[[dict], Any]] = None) -> NetworkResult:
    """Train the mu-P network of THEORY.md 1 by full-batch GD with weight decay (THEORY.md 4.4).

    Update: ``theta <- theta - eta (gamma0^2 N grad_theta L + lambda theta)`` with
    ``L = 1/2 sum_mu (f(x_mu) - y_mu)^2``, i.e. the Euler discretisation of the
    gradient flow whose infinite-width limit :func:`akviz.antk` solves; training
    time is ``t = sum of eta`` over the steps.

    Args:
      dataset: a :class:`akviz.Dataset` or ``(x_train, y_train, x_test, y_test)``.
      width: hidden width ``N`` (even with ``centering="antithetic"``).
      depth: hidden layers ``L >= 1``.
      activation: registered activation name.
      gamma0: feature-learning strength ``> 0``.
      weight_decay: ``lambda >= 0``.
      steps: GD steps.
      lr: fixed step size ``eta``. Default ``None``: adaptive, ``eta = 0.5 / (lambda_max(K_t) +
        lambda)`` with ``K_t`` the network's empirical NTK on the training inputs,
        re-estimated every :data:`ADAPT_EVERY` steps. GD is stable for ``eta <
        2/(lambda_max + lambda)`` and the NTK grows during feature learning (x3 for
        relu depth 1 on digits at gamma0=1, x4 at depth 2), so a fixed step chosen at
        init can end in a period-2 oscillation; the adaptive one follows the same
        gradient flow with time ``t = sum eta``. Non-finite losses are reported as
        ``diverged``, never silently.
      seed: initialisation seed.
      record_every: steps between kernel snapshots (default ``steps // 20``).
      centering: ``"antithetic"`` (default): the last hidden layer's neurons come in
        pairs with equal incoming and opposite readout weights, so ``f = 0`` at init
        (to round-off), as in the DMFT of :mod:`akviz.antk` (antithetic neuron pairs), and
        the predictions are the network's own output. ``"subtract"``: independent
        init, and the initial output ``f0`` is subtracted throughout (the loss is
        ``1/2 |f - f0 - y|^2`` and the predictions are ``f - f0``); its fixed point
        is ``Phi(x,X)(Phi + lambda I)^-1 (y + f0_X) - f0(x)`` (THEORY.md 4.2),
        so compare it with the aNTK only as ``N`` grows. ``"none"``: raw output.
      dtype: ``"float32"`` (default, fast) or ``"float64"``.
      max_time: optional training-time horizon: stop at exactly ``t = sum eta = max_time``
        (the last step is shortened to land on it), so that the network can be compared
        with the DMFT of :func:`akviz.antk` at the same time (``steps`` is then the most steps).
      callback: called after each recorded chunk with a dict (``step``, ``time``,
        ``train_loss``, ``test_loss``, ``alignment``); returning ``True`` stops.

    Returns:
      :class:`NetworkResult`. Divergence (non-finite loss) does not raise:
      ``diverged=True`` and a message naming the step size.
    """
    start = time.perf_counter()
    width = _check_int("width", width, 1)
    depth = _check_int("depth", depth, 1)
    steps = _check_int("steps", steps, 1)
    seed = _check_int("seed", seed, 0)
    gamma0 = _check_float("gamma0", gamma0, positive=True)
    lam = _check_float("weight_decay", weight_decay)
    if centering not in ("antithetic", "subtract", "none"):
        raise ValueError(f"centering must be 'antithetic', 'subtract' or 'none', got {centering!r}.")
    if centering == "antithetic" and width % 2:
        raise ValueError(f"width must be even with centering='antithetic' (neuron pairs), got {width}.")
    dt = _check_dtype(dtype)
    act = get_activation(activation)
    x_train, y_train, x_test, y_test = as_arrays(dataset)
    p = x_train.shape[0]
    record_every = max(1, steps // 20) if record_every is None else _check_int("record_every", record_every, 1)
    adapt = lr is None
    if max_time is not None:
        max_time = _check_float("max_time", max_time, positive=True)
    lr = default_lr(x_train, depth=depth, activation=act, weight_decay=lam) if adapt else \
        _check_float("lr", lr, positive=True)

    x_all_np = np.concatenate([x_train, x_test])
    x_all = jnp.asarray(x_all_np, dt)
    c = jnp.asarray(input_kernel(x_all_np))
    y = jnp.asarray(y_train, dt)
    params = init_params(jax.random.PRNGKey(seed), x_train.shape[1], width, depth, dt,
                         antithetic=centering == "antithetic")
    f0 = _output(params, x_all, act.fn, gamma0) if centering == "subtract" else jnp.zeros(len(x_all_np), dt)

    hist = {k: [] for k in ("step", "time", "train_loss", "test_loss", "alignment", "kernels",
                            "gradient_kernels", "ntk", "test_predictions")}
    losses = []

    def record(step, t, phis, gks, ntk, f):
        f = np.asarray(f, np.float64)
        phis = np.asarray(phis)
        hist["step"].append(step)
        hist["time"].append(t)
        hist["train_loss"].append(mse(f[:p], y_train))
        hist["test_loss"].append(mse(f[p:], y_test))
        hist["alignment"].append([_alignment(k[:p, :p], y_train) for k in phis])
        hist["kernels"].append(phis.astype(np.float32))
        hist["gradient_kernels"].append(np.asarray(gks, np.float32))
        hist["ntk"].append(np.asarray(ntk, np.float32))
        hist["test_predictions"].append(f[p:])
        if len(hist["step"]) > MAX_RECORDS:  # thin out, keeping the first and the newest
            for lst in hist.values():
                lst[:] = lst[:-1:2] + [lst[-1]]

    phis, gks, ntk, f, _ = jax.jit(_observables, static_argnums=(2, 3))(params, x_all, act.fn, act.deriv,
                                                                           gamma0, c)
    record(0, 0.0, phis, gks, ntk, np.asarray(f) - np.asarray(f0))
    done, diverged, stopped = 0, False, False
    lr_j, t_j, k_j = jnp.asarray(lr, jnp.float64), jnp.asarray(0.0, jnp.float64), jnp.asarray(0)
    t_max = jnp.asarray(np.inf if max_time is None else max_time, jnp.float64)
    lrs = []
    while done < steps:
        n = min(record_every, steps - done)
        runner = _gd_chunk(act.fn, act.deriv, n, gamma0, lam, LR_SAFETY, adapt, p)
        params, lr_j, t_j, k_j, chunk_losses, chunk_lrs, phis, gks, ntk, f = runner(
            params, lr_j, t_j, k_j, x_all, y, f0, c, t_max)
        chunk_losses, chunk_lrs = np.asarray(chunk_losses), np.asarray(chunk_lrs)
        if max_time is not None and float(t_j) >= max_time:  # drop the no-op steps after t_max
            n = int(np.count_nonzero(chunk_lrs > 0))
            chunk_losses, chunk_lrs = chunk_losses[:n], chunk_lrs[:n]
        done += n
        losses.append(chunk_losses)
        lrs.append(chunk_lrs)
        if not (np.all(np.isfinite(chunk_losses)) and np.all(np.isfinite(np.asarray(f)))):
            diverged = True
            break
        record(done, float(t_j), phis, gks, ntk, f)
        if callback is not None and callback({
                "step": done, "time": float(t_j), "train_loss": hist["train_loss"][-1],
                "test_loss": hist["test_loss"][-1], "alignment": hist["alignment"][-1]}) is True:
            stopped = True
            break
        if max_time is not None and float(t_j) >= max_time:
            break

    if diverged:
        q = len(x_all_np)
        phis = gks = np.full((depth, q, q), np.nan)
        ntk = np.full((q, q), np.nan)
        f = np.full(q, np.nan)
        message = (f"diverged by step {done} (lr={float(lr_j):.3g}; stable needs lr < 2/(lambda_max(NTK) + lambda)); "
                   "lower lr or leave lr=None (adaptive)")
    else:
        phis, gks, ntk, f = (np.asarray(v, np.float64) for v in (phis, gks, ntk, f))
        message = (f"{'stopped by callback after' if stopped else 'ran'} {done} steps (t = {float(t_j):.4g}, "
                   f"lr {'adaptive, final ' if adapt else ''}{float(lr_j):.3g})")
    history = {k: np.asarray(v) for k, v in hist.items()}
    history["loss"] = np.concatenate(losses) if losses else np.zeros(0)
    history["lr"] = np.concatenate(lrs) if lrs else np.zeros(0)
    return NetworkResult(
        kernels=phis[:, :p, :p], kernels_full=phis, gradient_kernels_full=gks, ntk_full=ntk,
        train_predictions=f[:p], test_predictions=f[p:],
        train_loss=mse(f[:p], y_train), test_loss=mse(f[p:], y_test),
        test_error=classification_error(f[p:], y_test) if not diverged else float("nan"),
        alignment=[_alignment(k[:p, :p], y_train) for k in phis], history=history,
        lr=float(lr_j), steps=done, final_time=float(t_j), width=width, depth=depth,
        activation=act.name, gamma0=gamma0, weight_decay=lam, centering=centering, seed=seed,
        dtype=np.dtype(dt).name, diverged=diverged, message=message, seconds=time.perf_counter() - start,
        params=params,
    )


# ----------------------------------------------------------------- Langevin posterior sampling


@dataclasses.dataclass
class PosteriorResult:
    """Posterior samples of a Bayesian mu-P network (:func:`sample_posterior`).

    Kernels on train+test are ``(P+Q, P+Q)`` with the training block first.

    Attributes:
      kernels: posterior-averaged ``Phi^l`` on train, ``(L, P, P)``.
      kernels_full: posterior-averaged ``Phi^l`` on train+test, ``(L, P+Q, P+Q)``.
      kernels_stderr: batch-means standard error of ``kernels_full`` entries.
      train_predictions, test_predictions: posterior-mean ``f``, Rao-Blackwellised:
        the average over samples of ``E[f | features] = Phi^L(x,X)(Phi^L + I/beta)^-1 y``
        with each sample's empirical ``Phi^L`` (the readout is Gaussian given the
        features, so this is exact and has lower variance than averaging ``f``).
      test_predictions_sampled: plain average of the sampled networks' ``f``.
      train_loss, test_loss, test_error: of the posterior mean (Rao-Blackwellised).
      test_loss_stderr: batch-means standard error of ``test_loss``.
      alignment: per-layer alignment of the averaged ``Phi^l`` (train block).
      running_test_loss: test MSE of the running posterior mean after each sample.
      trace: per-sample dict of arrays: ``time``, ``yPhiy`` (``y^T Phi^l y / |y|^2``,
        (S, L)), ``alignment`` (S, L), ``frobenius`` (``||Phi^l||_F``, (S, L)),
        ``train_loss`` (sampled network, ``mean (f - y)^2``).
      preactivations: ``(R, L, k, N)`` snapshots (one per chunk) of ``h^l`` at the
        points ``preactivation_points`` (indices into train+test), for histograms.
      preactivation_points: ``(k,)`` indices into the stacked train+test inputs.
      step_size, steps, burn_in, thin, samples, width, depth, activation, gamma0,
      beta, seed, dtype, diverged, message, seconds.
      params: final weights (JAX arrays).
    """

    kernels: np.ndarray
    kernels_full: np.ndarray
    kernels_stderr: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray
    test_predictions_sampled: np.ndarray
    train_loss: float
    test_loss: float
    test_loss_stderr: float
    test_error: float
    alignment: list
    running_test_loss: np.ndarray
    trace: dict
    preactivations: np.ndarray
    preactivation_points: np.ndarray
    step_size: float
    steps: int
    burn_in: int
    thin: int
    samples: int
    width: int
    depth: int
    activation: str
    gamma0: float
    beta: float
    seed: int
    dtype: str
    diverged: bool
    message: str
    seconds: float
    params: Any = dataclasses.field(default=None, repr=False)

    def to_json_dict(self) -> dict:
        num = json_number

        return {
            "method": "langevin", "width": self.width, "depth": self.depth, "activation": self.activation,
            "gamma0": self.gamma0, "beta": self.beta, "steps": self.steps, "burn_in": self.burn_in,
            "thin": self.thin, "samples": self.samples, "step_size": self.step_size, "seed": self.seed,
            "train_loss": num(self.train_loss), "test_loss": num(self.test_loss),
            "test_loss_stderr": num(self.test_loss_stderr), "test_error": num(self.test_error),
            "alignment": [num(a) for a in self.alignment],
            "frobenius": [num(np.linalg.norm(k)) for k in self.kernels],
            "diverged": self.diverged, "message": self.message, "seconds": num(self.seconds),
        }


def default_step_size(x_train, *, depth, activation, beta, safety=0.05):
    """``safety / (1 + beta * lambda_max(K_0 - Phi_0))`` on the training inputs.

    The readout is sampled exactly (Gibbs), so only the hidden weights take
    Langevin steps. Their drift is ``-theta - grad V`` with
    ``V = (beta N gamma0^2/2)|f - y|^2``; the Gauss-Newton curvature of ``V`` has
    the nonzero eigenvalues of ``beta (K - Phi^L)`` (the hidden-weight part of
    the NTK, gamma0-free), plus 1 from the prior. The Euler error in the
    stationary law grows like ``dt * curvature``, so ``dt`` is a small fraction of
    the inverse curvature, measured on the lazy kernels at init (posterior
    kernels grow with ``gamma0``: hence the margin).
    """
    lk = lazy_kernels(np.asarray(x_train, np.float64), depth=depth, activation=activation)
    hidden = lk.ntk[-1] - lk.nngp[-1]
    kmax = float(np.linalg.eigvalsh(0.5 * (hidden + hidden.T))[-1])
    return safety / (1.0 + float(beta) * max(kmax, 0.0))


def _gibbs_readout(key, feats, y, beta, gamma0):
    """Exact draw of ``w ~ p(w | features)`` (Gaussian), and the ``P x P`` kernel ``Phi = F F^T / N``.

    ``p(w | F) ∝ exp(-(beta/(2N)) |F w - gamma0 N y|^2 - |w|^2/2)``: precision
    ``Lambda = I + U U^T`` with ``U = sqrt(beta/N) F^T``, mean
    ``Lambda^-1 beta gamma0 F^T y``. Perturbation sampling: with
    ``xi ~ N(0, I_N)``, ``eta ~ N(0, I_P)``, ``v = beta gamma0 F^T y + xi + U eta`` has
    covariance ``Lambda``, so ``Lambda^-1 v`` is an exact draw; ``Lambda^-1`` by
    Woodbury through ``I_P + U^T U = I + beta Phi`` (a ``P x P`` Cholesky).
    """
    p, width = feats.shape
    k1, k2 = jax.random.split(key)
    u = math.sqrt(beta / width)
    xi = jax.random.normal(k1, (width,), feats.dtype)
    eta = jax.random.normal(k2, (p,), feats.dtype)
    v = feats.T @ (beta * gamma0 * y + u * eta) + xi
    phi = (feats @ feats.T).astype(jnp.float64) / width
    chol = jax.scipy.linalg.cho_factor(jnp.eye(p) + beta * phi, lower=True)
    s = jax.scipy.linalg.cho_solve(chol, (u * (feats @ v)).astype(jnp.float64))
    w = v - u * (feats.T @ s.astype(feats.dtype))
    return w, phi


@functools.lru_cache(maxsize=16)
def _langevin_chunk(phi, dphi, n_samples: int, thin: int, gamma0: float, beta: float, dt: float,
                    p: int, n_pre: int):
    """Jitted: ``n_samples`` x (``thin`` steps + one observation), averages in float64."""
    a = math.exp(-dt)
    b = -math.expm1(-dt)
    noise = math.sqrt(-math.expm1(-2.0 * dt))

    def run(ws, w, key, x_all, y_tr, pre_idx):
        x_tr = x_all[:p]
        y = y_tr.astype(x_all.dtype)
        ye = y_tr.astype(jnp.float64)

        def step(carry, key):
            ws, w = carry
            k_gibbs, k_noise = jax.random.split(key)

            def feats_fn(hidden):
                return phi(_forward(list(hidden) + [w], x_tr, phi)[-1])

            feats, vjp = jax.vjp(feats_fn, tuple(ws))
            w, _ = _gibbs_readout(k_gibbs, feats, y, beta, gamma0)
            width = w.shape[0]
            r = feats @ w / (gamma0 * width) - y
            # dV/dF for V = (beta N gamma0^2 / 2) |f - y|^2, f = F w / (gamma0 N)
            (grads,) = vjp((beta * gamma0) * r[:, None] * w[None, :])
            keys = jax.random.split(k_noise, len(ws))
            # exponential Euler: the prior's OU part exactly, the likelihood force frozen over the step
            ws = tuple(a * q - b * g + noise * jax.random.normal(k, q.shape, q.dtype)
                       for q, g, k in zip(ws, grads, keys))
            return (ws, w), jnp.mean(r.astype(jnp.float64) ** 2)

        def sample(carry, key):
            (ws, w), sums = carry
            keys = jax.random.split(key, thin)
            (ws, w), tl = jax.lax.scan(step, (ws, w), keys)
            params = list(ws) + [w]
            hs = _forward(params, x_all, phi)
            width = w.shape[0]
            phis = jnp.stack([(phi(h) @ phi(h).T).astype(jnp.float64) / width for h in hs])
            last = phis[-1]
            coef = jnp.linalg.solve(last[:p, :p] + jnp.eye(p) / beta, ye)
            f_rb = last[:, :p] @ coef
            f_raw = (phi(hs[-1]) @ w).astype(jnp.float64) / (gamma0 * width)
            sums = (sums[0] + phis, sums[1] + f_rb, sums[2] + f_raw)
            ypy = jnp.einsum("i,lij,j->l", ye, phis[:, :p, :p], ye) / (ye @ ye)
            fro = jnp.sqrt(jnp.sum(phis[:, :p, :p] ** 2, axis=(1, 2)))
            out = {"yPhiy": ypy, "frobenius": fro, "alignment": ypy / fro, "train_loss": tl[-1],
                   "running": sums[1][p:]}
            return ((ws, w), sums), out

        n = x_all.shape[0]
        depth = len(ws)
        zero = (jnp.zeros((depth, n, n)), jnp.zeros(n), jnp.zeros(n))
        keys = jax.random.split(key, n_samples)
        ((ws, w), sums), out = jax.lax.scan(sample, ((tuple(ws), w), zero), keys)
        running = out.pop("running")  # (n_samples, Q) partial sums of the RB predictor
        hs = _forward(list(ws) + [w], x_all, phi)
        pre = jnp.stack([h[pre_idx].astype(jnp.float64) for h in hs]) if n_pre else jnp.zeros((depth, 0, w.shape[0]))
        return ws, w, sums, out, running, pre

    return jax.jit(run)


@float64
def sample_posterior(dataset, *, width: int, depth: int = 1, activation="relu", gamma0: float = 1.0,
                     beta: float = 1.0, steps: int = 4000, burn_in: int = 1000, step_size: Optional[float] = None,
                     seed: int = 0, thin: int = 10, chunks: int = 20, preactivation_points=None,
                     dtype="float32", callback: Optional[Callable[[dict], Any]] = None) -> PosteriorResult:
    """Sample the Bayesian network posterior of THEORY.md 3 by Langevin dynamics with a Gibbs readout.

    Target: ``p(theta) ∝ exp(-V(theta) - |theta|^2/2)``,
    ``V = (beta N gamma0^2/2) sum_mu (f(x_mu) - y_mu)^2``, at temperature 1 (the
    same law as Langevin on ``N gamma0^2 L + |theta|^2/(2 beta)`` at temperature
    ``1/beta``). One step is two moves, each leaving the posterior invariant:

    1. **Gibbs readout**: given the hidden weights, ``f`` is linear in the readout
       ``w`` and the posterior of ``w`` is exactly Gaussian; it is drawn exactly
       (:func:`_gibbs_readout`, a ``P x P`` Cholesky). This removes the stiff
       direction of THEORY.md 3.3 (curvature ``beta lambda_max(Phi)``) altogether.
    2. **Hidden weights**: one step of the overdamped Langevin SDE
       ``d theta = -(theta + grad V) dt + sqrt(2) dB`` by exponential Euler:
       ``theta' = a theta - (1 - a) grad V + sqrt(1 - a^2) xi``, ``a = exp(-dt)``.
       The noise ``sqrt(2 dt)`` (to first order) against the drift's unit
       friction is what makes the temperature 1 (fluctuation-dissipation);
       the prior's Ornstein-Uhlenbeck part is integrated exactly, so with
       ``V = 0`` the prior ``N(0, 1)`` is preserved for every ``dt``, and the
       only discretisation error is ``O(dt * curvature of V)`` in the
       directions ``V`` acts on. ``step_size`` defaults to
       :func:`default_step_size` (a small fraction of the inverse curvature);
       confirm by halving it (the tests do).

    Args:
      dataset: a :class:`akviz.Dataset` or ``(x_train, y_train, x_test, y_test)``.
      width, depth, activation, gamma0 (``> 0``), beta (``> 0``): the network and posterior.
      steps: Langevin steps after burn-in (rounded down to a multiple of ``thin * chunks``).
      burn_in: steps discarded first (rounded up to a multiple of the chunk length,
        ``thin * (steps // (thin * chunks))``, so that one compiled program does everything).
      step_size: ``dt`` (default :func:`default_step_size`).
      seed: seed of the init (a prior draw) and of the noise.
      thin: steps between kept samples.
      chunks: compiled chunks the sampling is split into (batch means for standard
        errors, one preactivation snapshot and one callback each).
      preactivation_points: indices into train+test (default ``[0, 1, P]``: two
        train points and the first test point) whose preactivations are kept.
      dtype: ``"float32"`` (default) or ``"float64"``.
      callback: called after each chunk with a dict (``chunk``, ``time``,
        ``test_loss``, ``alignment``); returning ``True`` stops early.
    """
    start = time.perf_counter()
    width = _check_int("width", width, 1)
    depth = _check_int("depth", depth, 1)
    steps = _check_int("steps", steps, 1)
    burn_in = _check_int("burn_in", burn_in, 0)
    thin = _check_int("thin", thin, 1)
    chunks = _check_int("chunks", chunks, 1)
    seed = _check_int("seed", seed, 0)
    gamma0 = _check_float("gamma0", gamma0, positive=True)
    beta = _check_float("beta", beta, positive=True)
    dt_ = _check_dtype(dtype)
    act = get_activation(activation)
    x_train, y_train, x_test, y_test = as_arrays(dataset)
    p, q = x_train.shape[0], x_test.shape[0]
    per_chunk = steps // (thin * chunks)
    if per_chunk < 1:
        raise ValueError(f"steps={steps} must be at least thin * chunks = {thin * chunks}.")
    if step_size is None:
        step_size = default_step_size(x_train, depth=depth, activation=act, beta=beta)
    step_size = _check_float("step_size", step_size, positive=True)
    if preactivation_points is None:
        preactivation_points = [0, min(1, p - 1), p]
    pre_idx = np.asarray(preactivation_points, dtype=np.int64).reshape(-1)
    if pre_idx.size and (pre_idx.min() < 0 or pre_idx.max() >= p + q):
        raise ValueError(f"preactivation_points must be indices in [0, {p + q}).")

    x_all_np = np.concatenate([x_train, x_test])
    x_all = jnp.asarray(x_all_np, dt_)
    y_tr = jnp.asarray(y_train)
    key_init, key = jax.random.split(jax.random.PRNGKey(seed))
    params = init_params(key_init, x_train.shape[1], width, depth, dt_)
    ws, w = tuple(params[:-1]), params[-1]
    pre_j = jnp.asarray(pre_idx)

    # Burn-in: whole chunks of the sampling program (one compilation), observations discarded;
    # burn_in is rounded up to a multiple of the chunk length.
    runner = _langevin_chunk(act.fn, act.deriv, per_chunk, thin, gamma0, beta, step_size, p, int(pre_idx.size))
    burn_chunks = -(-burn_in // (per_chunk * thin))
    for _ in range(burn_chunks):
        key, sub = jax.random.split(key)
        ws, w, *_ = runner(ws, w, sub, x_all, y_tr, pre_j)
    burn_in = burn_chunks * per_chunk * thin

    chunk_phis, chunk_rb, chunk_raw, traces, running, pres = [], [], [], [], [], []
    total_rb = np.zeros(q)
    diverged = False
    for i in range(chunks):
        key, sub = jax.random.split(key)
        ws, w, sums, out, run_sums, pre = runner(ws, w, sub, x_all, y_tr, pre_j)
        sums = [np.asarray(s) / per_chunk for s in sums]
        out = {k: np.asarray(v) for k, v in out.items()}
        if not all(np.all(np.isfinite(s)) for s in sums):
            diverged = True
            break
        chunk_phis.append(sums[0]); chunk_rb.append(sums[1]); chunk_raw.append(sums[2])
        traces.append(out)
        run_sums = np.asarray(run_sums)  # partial sums within this chunk
        n_before = i * per_chunk
        for j in range(per_chunk):
            running.append(mse((total_rb + run_sums[j]) / (n_before + j + 1), y_test))
        total_rb = total_rb + run_sums[-1]
        pres.append(np.asarray(pre, np.float32))
        if callback is not None and callback({
                "chunk": i + 1, "chunks": chunks, "time": (burn_in + (i + 1) * per_chunk * thin) * step_size,
                "test_loss": running[-1], "alignment": [float(a) for a in out["alignment"][-1]]}) is True:
            break

    n_done = len(chunk_phis)
    n = p + q
    if diverged or n_done == 0:
        nan_k = np.full((depth, n, n), np.nan)
        phis, se, rb, raw = nan_k, nan_k, np.full(n, np.nan), np.full(n, np.nan)
        message = (f"non-finite values after {n_done} chunks (step_size={step_size:.3g}); lower step_size")
        diverged = True
        loss_se = float("nan")
    else:
        phis = np.mean(chunk_phis, axis=0)
        rb = np.mean(chunk_rb, axis=0)
        raw = np.mean(chunk_raw, axis=0)
        if n_done > 1:
            se = np.std(chunk_phis, axis=0, ddof=1) / math.sqrt(n_done)
            losses = [mse(f[p:], y_test) for f in chunk_rb]
            loss_se = float(np.std(losses, ddof=1) / math.sqrt(n_done))
        else:
            se = np.full_like(phis, np.nan)
            loss_se = float("nan")
        message = (f"{n_done * per_chunk} samples (thin {thin}) after {burn_in} burn-in steps, "
                   f"dt={step_size:.3g}, t={(burn_in + n_done * per_chunk * thin) * step_size:.4g}")
    trace = {k: np.concatenate([t[k] for t in traces]) if traces else np.zeros(0)
             for k in ("yPhiy", "frobenius", "alignment", "train_loss")}
    trace["time"] = (burn_in + thin * np.arange(1, len(trace["train_loss"]) + 1)) * step_size
    return PosteriorResult(
        kernels=phis[:, :p, :p], kernels_full=phis, kernels_stderr=se,
        train_predictions=rb[:p], test_predictions=rb[p:], test_predictions_sampled=raw[p:],
        train_loss=mse(rb[:p], y_train), test_loss=mse(rb[p:], y_test), test_loss_stderr=loss_se,
        test_error=classification_error(rb[p:], y_test) if not diverged else float("nan"),
        alignment=[_alignment(k[:p, :p], y_train) for k in phis],
        running_test_loss=np.asarray(running), trace=trace,
        preactivations=np.stack(pres) if pres else np.zeros((0, depth, pre_idx.size, width), np.float32),
        preactivation_points=pre_idx, step_size=float(step_size), steps=n_done * per_chunk * thin,
        burn_in=burn_in, thin=thin, samples=n_done * per_chunk, width=width, depth=depth,
        activation=act.name, gamma0=gamma0, beta=beta, seed=seed, dtype=np.dtype(dt_).name,
        diverged=diverged, message=message, seconds=time.perf_counter() - start, params=list(ws) + [w],
    )


__all__ = ["NetworkResult", "PosteriorResult", "default_lr", "default_step_size", "empirical_kernels",
           "init_params", "sample_posterior", "train_network"]
