"""Finite-width networks (THEORY.md 3.3, 4.4) against exact oracles, at small sizes.

* the empirical NTK/kernels of the code vs jax autodiff of the network;
* gradient descent at small gamma0 vs discrete-time kernel regression with the
  network's own initial NTK (checks the time scale gamma0^2 N, not only the fixed point);
* gradient descent with weight decay vs the aNTK DMFT (relu, depth 1);
* Langevin on a linear network vs the closed form c_l of THEORY.md 3.3, any depth;
* Langevin at small gamma0 vs the NNGP; step-halving invariance in the stiff case.
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import akviz
from akviz.network import default_lr, default_step_size, empirical_kernels, init_params


def small(n_train=20, n_test=10, seed=0):
    return akviz.load_dataset("digits:3v8", n_train, n_test, seed)


def whitened(p=8, q=4, d=16, seed=0):
    """Inputs with C = x x^T / D = I on train, |y| = 1 (THEORY.md 3.3); test points overlap train."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x_train = np.sqrt(d) * basis[:p]
    x_test = 0.6 * x_train[:q] + 0.8 * np.sqrt(d) * basis[p:p + q]
    y = rng.standard_normal(p)
    y /= np.linalg.norm(y)
    return x_train, y, x_test, np.zeros(q)


def linear_c(gamma0, beta, depth):
    """Closed form of THEORY.md 3.3: c = (1 + gamma0^2 c / (c + 1/beta)^2)^L by fixed-point iteration."""
    c = 1.0
    for _ in range(10_000):
        c = (1.0 + gamma0**2 * c / (c + 1.0 / beta) ** 2) ** depth
    return c


def batch_mean_se(trace, batches=10):
    x = np.asarray(trace)[: len(trace) // batches * batches].reshape(batches, -1, *np.shape(trace)[1:]).mean(1)
    return x.mean(0), x.std(0, ddof=1) / math.sqrt(batches)


# ----------------------------------------------------------------- kernels of one network


@pytest.mark.parametrize("activation,depth", [("tanh", 3), ("relu", 2)])
def test_empirical_kernels_match_autodiff(activation, depth):
    """NTK = Phi^L + sum G^{l+1} * Phi^l + G^1 * C must equal gamma0^2 N sum_theta df df (jax.jacobian)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3))
    width, gamma0 = 12, 0.7
    act = akviz.get_activation(activation)
    with jax.enable_x64(True):
        params = init_params(jax.random.PRNGKey(3), 3, width, depth, jnp.float64)

        def f(ps, xi):
            h = xi @ ps[0] / math.sqrt(3)
            for w in ps[1:-1]:
                h = act.fn(h) @ w / math.sqrt(width)
            return act.fn(h) @ ps[-1] / (gamma0 * width)

        jac = [jax.grad(f)(params, jnp.asarray(xi)) for xi in x]
        flat = np.stack([np.concatenate([np.ravel(g) for g in j]) for j in jac])
        out = [float(f(params, jnp.asarray(xi))) for xi in x]
    phis, gks, ntk, fx = empirical_kernels(params, x, activation=activation, gamma0=gamma0)
    np.testing.assert_allclose(ntk, gamma0**2 * width * flat @ flat.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fx, out, rtol=1e-12, atol=1e-14)
    assert phis.shape == gks.shape == (depth, 5, 5)


def test_antithetic_init_has_zero_output():
    x = np.random.default_rng(0).standard_normal((6, 5))
    with jax.enable_x64(True):
        params = init_params(jax.random.PRNGKey(0), 5, 10, 3, jnp.float64, antithetic=True)
    _, _, _, f = empirical_kernels(params, x, activation="tanh", gamma0=0.3)
    np.testing.assert_allclose(f, 0.0, atol=1e-14)


# ----------------------------------------------------------------- gradient descent


@pytest.mark.parametrize("depth", [1, 2])
def test_gd_small_gamma0_is_kernel_gd_with_initial_ntk(depth):
    """gamma0 -> 0: f_n = K*(K)^-1 (I - (I - eta K)^n) y with the network's own initial NTK K.

    Checks the gradient's gamma0^2 N scale (the time axis), the NTK bookkeeping
    and the antithetic centring (f_0 = 0) at once. A smooth activation: at N=128 a
    relu neuron crossing its kink moves the NTK by O(1/N) in one step.
    """
    ds = small(20, 10)
    p = 20
    lr = default_lr(ds.x_train, depth=depth, activation="erf", weight_decay=0.0)
    r = akviz.train_network(ds, width=128, depth=depth, activation="erf", gamma0=1e-3, weight_decay=0.0,
                            steps=300, lr=lr, record_every=100, dtype="float64", seed=2)
    k0 = r.history["ntk"][0].astype(np.float64)
    with jax.enable_x64(True):
        params = init_params(jax.random.PRNGKey(2), 64, 128, depth, jnp.float64, antithetic=True)
    _, _, k0, f0 = empirical_kernels(params, np.concatenate([ds.x_train, ds.x_test]), activation="erf",
                                     gamma0=1e-3)
    np.testing.assert_allclose(f0, 0.0, atol=1e-10)
    np.testing.assert_allclose(r.history["ntk"][0], k0, rtol=1e-5, atol=1e-5)
    kxx, ktx = k0[:p, :p], k0[p:, :p]
    evals, evecs = np.linalg.eigh(kxx)
    for n, pred in zip(r.history["step"], r.history["test_predictions"]):
        # (K)^-1 (I - (I - eta K)^n) y in the eigenbasis; eta lambda_i < 1 by the default lr
        coef = evecs @ ((1 - (1 - r.lr * evals) ** n) / evals * (evecs.T @ ds.y_train))
        expect = ktx @ coef
        np.testing.assert_allclose(pred, expect, atol=2e-3 * max(1.0, np.abs(expect).max()))
    assert r.history["step"][-1] == 300 and r.final_time == pytest.approx(300 * lr)


def test_gd_fixed_point_identities_at_finite_width():
    """At a GD fixed point with weight decay, exactly at any width (THEORY.md 4.2):

    readout stationarity gives f = Phi(x,X)(Phi + lambda I)^-1 y (feature form) and, for relu
    (1-homogeneous in every layer), f = K(x,X)(K + 2 lambda I)^-1 y with the empirical NTK at
    depth 1, K(K + 2 lambda I)... generalising to (L+1) lambda at depth L. Checks the relative
    scale of the gamma0^2 N gradient and the weight decay, and the kernels' bookkeeping.
    """
    ds = small(20, 10)
    p, lam = 20, 0.5
    for depth in (1, 2):
        r = akviz.train_network(ds, width=64, depth=depth, activation="relu", gamma0=1.0, weight_decay=lam,
                                steps=4000, seed=0, dtype="float64")
        assert not r.diverged
        phi = r.kernels_full[-1]
        feat = phi[:, :p] @ np.linalg.solve(phi[:p, :p] + lam * np.eye(p), ds.y_train)
        ntk = r.ntk_full
        ntk_form = ntk[:, :p] @ np.linalg.solve(ntk[:p, :p] + (depth + 1) * lam * np.eye(p), ds.y_train)
        f = np.concatenate([r.train_predictions, r.test_predictions])
        print(depth, np.abs(feat - f).max(), np.abs(ntk_form - f).max(), r.history["loss"][-1])
        np.testing.assert_allclose(feat, f, atol=1e-3)
        np.testing.assert_allclose(ntk_form, f, atol=1e-3)


def test_gd_max_time_lands_exactly():
    """``max_time`` stops GD at exactly ``t = max_time`` (last step shortened), whatever ``record_every``:
    what a comparison with the DMFT at the same training time needs."""
    ds = small(10, 5)
    lr = 0.01
    r = akviz.train_network(ds, width=32, depth=1, gamma0=1.0, weight_decay=0.1, steps=100, lr=lr,
                            max_time=0.105, record_every=4, dtype="float64")
    assert r.final_time == 0.105 and r.history["time"][-1] == 0.105
    assert r.steps == 11 and r.history["step"][-1] == 11 and len(r.history["lr"]) == 11
    np.testing.assert_allclose(r.history["lr"][:10], lr)
    assert r.history["lr"][-1] == pytest.approx(0.005, rel=1e-9)
    # the shortened step is a GD step of size 0.005 from the state after 10 steps
    a = akviz.train_network(ds, width=32, depth=1, gamma0=1.0, weight_decay=0.1, steps=10, lr=lr,
                            dtype="float64")
    b = akviz.train_network(ds, width=32, depth=1, gamma0=1.0, weight_decay=0.1, steps=11, lr=lr,
                            dtype="float64")
    for q, qa, qb in zip(r.params, a.params, b.params):
        np.testing.assert_allclose(np.asarray(q), 0.5 * (np.asarray(qa) + np.asarray(qb)), rtol=1e-10, atol=1e-12)


def test_gd_weight_decay_matches_antk():
    """relu depth 1, gamma0=1, lambda=0.5, P=20: GD at N=512 to t=120 vs the aNTK DMFT (500 neurons).

    Measured here: correlation 0.9998, relative RMS gap 0.02 (N=256..1024, 2000 DMFT neurons).
    """
    ds = small(20, 10)
    theory = akviz.antk(ds, gamma0=1.0, weight_decay=0.5, samples=500, seed=0)
    assert theory.converged, theory.message
    net = akviz.train_network(ds, width=512, depth=1, activation="relu", gamma0=1.0, weight_decay=0.5,
                              steps=2000, seed=1)
    assert net.final_time > 100
    out = akviz.compare(theory, net, ds)
    print(out["predictions"], out["kernels"]["relative_frobenius"])
    assert out["predictions"]["correlation"] > 0.998
    assert out["predictions"]["relative_rms"] < 0.08
    assert out["kernels"]["relative_frobenius"][0] < 0.08


def test_gd_diverges_readably_with_a_huge_step():
    r = akviz.train_network(small(10, 5), width=32, depth=1, gamma0=1.0, weight_decay=0.1, steps=200, lr=5.0)
    assert r.diverged and "lr" in r.message and np.all(np.isnan(r.test_predictions))


# ----------------------------------------------------------------- Langevin


@pytest.mark.parametrize("depth", [1, 2])
def test_langevin_linear_matches_closed_form(depth):
    """Linear network, C = I, |y| = 1: y^T Phi^l y = c_l = c^(l/L) (THEORY.md 3.3), any depth.

    Also the posterior-mean test predictor vs the exact aNBK (akviz.anbk, linear = exact).
    A wrong temperature, force scale or readout step moves c by far more than the tolerance.
    """
    gamma0, beta = 2.0, 1.0
    ds = whitened()
    c = linear_c(gamma0, beta, depth)
    exact = akviz.anbk(ds, gamma0=gamma0, beta=beta, depth=depth, activation="linear")
    y = ds[1]
    np.testing.assert_allclose([y @ k @ y for k in exact.kernels], [c ** (l / depth) for l in range(1, depth + 1)],
                               rtol=1e-8)
    dt = default_step_size(ds[0], depth=depth, activation="linear", beta=beta)
    r = akviz.sample_posterior(ds, width=256, depth=depth, activation="linear", gamma0=gamma0, beta=beta,
                               steps=int(25 / dt), burn_in=int(4 / dt), seed=3)
    mean, se = batch_mean_se(r.trace["yPhiy"])
    print(f"depth {depth}: c_l exact {[c ** (l / depth) for l in range(1, depth + 1)]}, "
          f"Langevin {mean} +- {se}, dt {dt:.3g}")
    for layer in range(depth):
        expect = c ** ((layer + 1) / depth)
        assert abs(mean[layer] - expect) < 4 * se[layer] + 0.02 * expect, (layer, mean, se, expect)
    cmp = akviz.compare(exact, r, ds)
    assert cmp["kernels"]["relative_frobenius_train"][-1] < 0.1
    assert cmp["predictions"]["correlation"] > 0.98


def test_langevin_small_gamma0_is_nngp():
    """gamma0 -> 0: posterior kernels -> NNGP, posterior mean -> NNGP ridge predictor (ridge 1/beta)."""
    ds = small(20, 10)
    beta = 1.0
    r = akviz.sample_posterior(ds, width=512, depth=2, activation="relu", gamma0=0.02, beta=beta,
                               steps=600, burn_in=100, step_size=0.03, seed=0)
    x_all = np.concatenate([ds.x_train, ds.x_test])
    nngp = np.stack(akviz.lazy_kernels(x_all, depth=2, activation="relu").nngp)
    for layer in range(2):
        assert akviz.relative_frobenius(nngp[layer], r.kernels_full[layer]) < 0.06
    _, te = akviz.kernel_ridge(nngp[-1][:20, :20], nngp[-1][20:, :20], ds.y_train, 1 / beta)
    assert np.abs(r.test_predictions - te).max() < 0.05
    assert r.burn_in == 120 and r.preactivations.shape == (20, 2, 3, 512) and np.all(np.isfinite(r.preactivations))
    assert r.running_test_loss.shape == (r.samples,)


def test_langevin_step_halving_changes_nothing():
    """The stiff case of THEORY.md 3.3 (relu, beta=10, gamma0=1): halving the step changes nothing.

    Twice the default step against the default (the Euler bias is linear in dt, so
    if these agree the default is at least as close to the dt -> 0 limit); alignment,
    y^T Phi y and the posterior-mean test loss agree within noise. With plain
    Euler-Maruyama on the readout THEORY.md saw alignment 0.66 against 0.31 here.
    """
    ds = small(20, 20)
    beta, gamma0 = 10.0, 1.0
    dt = default_step_size(ds.x_train, depth=1, activation="relu", beta=beta)
    res = []
    for factor in (2.0, 1.0):
        h = dt * factor
        thin = int(round(10 / factor))
        r = akviz.sample_posterior(ds, width=128, depth=1, activation="relu", gamma0=gamma0, beta=beta,
                                   steps=int(25 / h), burn_in=int(4 / h), step_size=h, seed=5, thin=thin)
        res.append((batch_mean_se(r.trace["alignment"][:, 0]), batch_mean_se(r.trace["yPhiy"][:, 0]), r))
    (a1, s1), (y1, sy1), r1 = res[0]
    (a2, s2), (y2, sy2), r2 = res[1]
    print(f"alignment {a1:.4f}+-{s1:.4f} vs {a2:.4f}+-{s2:.4f}; yPhiy {y1:.4f}+-{sy1:.4f} vs {y2:.4f}+-{sy2:.4f}; "
          f"test loss {r1.test_loss:.4f}+-{r1.test_loss_stderr:.4f} vs {r2.test_loss:.4f}+-{r2.test_loss_stderr:.4f}")
    assert abs(a1 - a2) < 4 * math.hypot(s1, s2) + 0.005
    assert abs(y1 - y2) < 4 * math.hypot(sy1, sy2) + 0.005 * y2
    assert abs(r1.test_loss - r2.test_loss) < 4 * math.hypot(r1.test_loss_stderr, r2.test_loss_stderr) + 0.01
    # and the posterior moved away from the NNGP: this is the rich regime
    nngp = akviz.lazy_kernels(ds.x_train, depth=1, activation="relu").nngp[0]
    assert a2 > akviz.alignment(nngp, ds.y_train) + 0.05


# ----------------------------------------------------------------- comparison helpers and CLI


def test_compare_helpers_on_plain_arrays():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 6, 6))
    a = a @ a.transpose(0, 2, 1)
    y = np.array([1.0, -1.0, 1.0, 1.0])
    k = akviz.compare_kernels(a, a * 1.1, y)
    np.testing.assert_allclose(k["relative_frobenius"], [0.1, 0.1], rtol=1e-12)
    np.testing.assert_allclose(k["alignment_theory"], k["alignment_network"], rtol=1e-12)
    np.testing.assert_allclose(k["kernel_cosine"], [1.0, 1.0], rtol=1e-12)
    p = akviz.compare_predictions([1.0, -1.0, 0.5], [1.1, -0.9, 0.6], [1.0, -1.0, 1.0])
    assert p["correlation"] == pytest.approx(1.0) and p["rms_difference"] == pytest.approx(0.1)
    assert p["test_loss_theory"] == pytest.approx(0.25 / 3)
    with pytest.raises(ValueError, match="shapes differ"):
        akviz.compare_predictions([1.0, 2.0], [1.0])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "akviz", *args], capture_output=True, text=True, timeout=300)


def test_cli_compare_json():
    out = _cli("compare", "--method", "anbk", "--activation", "linear", "--width", "64", "--n-train", "10",
               "--n-test", "6", "--gamma0", "1", "--beta", "1", "--steps", "400", "--burn-in", "100", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for key in ("kernel_relative_frobenius", "prediction_correlation", "prediction_rms_difference",
                "test_loss_theory", "test_loss_network", "alignment_theory", "alignment_network", "network"):
        assert key in summary
    assert len(summary["kernel_relative_frobenius"]) == 1 and summary["theory_converged"]
    assert summary["kernel_relative_frobenius"][0] < 0.5 and summary["prediction_correlation"] > 0.5


@pytest.mark.parametrize("args", [
    ["--method", "anbk", "--width", "64"],                       # missing --gamma0/--beta
    ["--method", "antk", "--width", "0", "--gamma0", "1", "--weight-decay", "0.1"],
    ["--method", "antk", "--width", "63", "--gamma0", "1", "--weight-decay", "0.1"],
    ["--method", "nngp", "--width", "64"],
])
def test_cli_compare_bad_arguments(args):
    out = _cli("compare", *args, "--json")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("akviz: error:")
