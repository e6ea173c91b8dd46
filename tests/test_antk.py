"""aNTK (THEORY.md section 4) against exact oracles, at small sizes."""

import json

import numpy as np
import pytest
import scipy.linalg

import akviz
from akviz.antk import antk
from akviz.plots import dmft_animation


def small(n_train=20, n_test=10, seed=0):
    return akviz.load_dataset("digits:3v8", n_train, n_test, seed)


@pytest.fixture(scope="module")
def linear_run():
    return antk(small(30, 20), gamma0=1.0, weight_decay=0.1, activation="linear", samples=400,
                tol=1e-9, residual_tol=1e-9, max_steps=3000)


def test_linear_three_forms_agree(linear_run):
    r = linear_run
    assert r.converged, r.message
    # Linear phi: DMFT output, feature form and NTK form are the same function (THEORY 4.2).
    np.testing.assert_allclose(r.feature_test_predictions, r.test_predictions, rtol=0, atol=1e-8)
    np.testing.assert_allclose(r.ntk_test_predictions, r.test_predictions, rtol=0, atol=1e-8)
    np.testing.assert_allclose(r.ntk_train_predictions, r.train_predictions, rtol=0, atol=1e-8)
    assert r.residual < 1e-4


def test_linear_fixed_point_identity_by_hand(linear_run):
    """Recompute f = Phi(x,X)(Phi + lambda I)^-1 y from the returned kernel, independently of the solver."""
    r = linear_run
    p = r.train_predictions.size
    phi = r.Phi
    f = phi[p:, :p] @ np.linalg.solve(phi[:p, :p] + r.weight_decay * np.eye(p), small(30, 20).y_train)
    np.testing.assert_allclose(f, r.test_predictions, atol=1e-8)
    # K = Phi + G * C with G = <z^2> for the linear activation (phi' = 1).
    np.testing.assert_allclose(r.K, r.Phi + r.G * r.C, atol=1e-12)


def test_result_fields_and_json(linear_run):
    r = linear_run
    q = r.C.shape[0]
    assert r.Phi.shape == r.G.shape == r.K.shape == (q, q)
    assert r.kernels_full.shape == (1, q, q)
    assert r.snapshots_phi.shape[1:] == (q, q) and r.snapshots_phi.shape[0] == r.record_times.size >= 2
    assert np.all(np.diff(r.times) > 0)
    d = r.to_json_dict()
    json.dumps(d)
    for key in ("converged", "iterations", "residual", "test_loss", "test_loss_feature_form",
                "test_loss_ntk_form", "train_loss", "test_error", "alignment", "gamma0",
                "weight_decay", "samples"):
        assert key in d
    assert isinstance(d["alignment"], list) and len(d["alignment"]) == 1


def test_lazy_baselines_match_kernel_ridge(linear_run):
    ds = small(30, 20)
    r = linear_run
    lazy = akviz.lazy_predictor(ds, method="ntk", depth=1, activation="linear", ridge=2 * r.weight_decay)
    np.testing.assert_allclose(r.lazy_ntk_test_predictions, lazy.test_predictions, atol=1e-10)
    lazy = akviz.lazy_predictor(ds, method="nngp", depth=1, activation="linear", ridge=r.weight_decay)
    np.testing.assert_allclose(r.lazy_nngp_test_predictions, lazy.test_predictions, atol=1e-10)


def test_lazy_limit_early_times_follow_ntk_gradient_flow():
    """gamma0 -> 0, lambda -> 0: f(t) = (I - exp(-K t)) y on train, K(x,X) K^-1 (I - exp(-K t)) y on test."""
    ds = small(20, 10)
    r = antk(ds, gamma0=1e-4, weight_decay=1e-7, activation="relu", samples=4000, max_time=0.6,
             rtol=1e-3, record_every=1000)
    assert not r.converged and "max_time" in r.message
    t = r.final_time
    assert abs(t - 0.6) < 1e-9
    p = ds.x_train.shape[0]
    # Oracle 1: the sampled init kernel (isolates the integrator and the gamma0 -> 0 limit).
    k0 = r.snapshots_phi[0] + r.snapshots_g[0] * r.C
    decay = np.eye(p) - scipy.linalg.expm(-k0[:p, :p] * t)
    f_train = decay @ ds.y_train
    f_test = k0[p:, :p] @ np.linalg.solve(k0[:p, :p], f_train)
    np.testing.assert_allclose(r.train_predictions, f_train, atol=3e-3 * np.abs(f_train).max())
    np.testing.assert_allclose(r.test_predictions, f_test, atol=3e-3 * np.abs(f_test).max())
    # Oracle 2: the analytic lazy NTK, within Monte Carlo error of 4000 neurons (~3% per kernel entry).
    k = akviz.ntk(np.concatenate([ds.x_train, ds.x_test]), depth=1, activation="relu")
    f_train = (np.eye(p) - scipy.linalg.expm(-k[:p, :p] * t)) @ ds.y_train
    assert np.linalg.norm(r.train_predictions - f_train) < 0.1 * np.linalg.norm(f_train)


def _ensemble(samples, seeds):
    ds = small(16, 16)
    return np.stack([antk(ds, gamma0=1.0, weight_decay=0.1, activation="relu", samples=samples,
                          seed=s, max_time=3.0, record_every=1000).test_predictions for s in seeds])


def test_seeds_agree_within_mc_error_and_variance_halves():
    seeds = range(24)
    f64 = _ensemble(64, seeds)
    f128 = _ensemble(128, seeds)
    var64, var128 = f64.var(axis=0, ddof=1).mean(), f128.var(axis=0, ddof=1).mean()
    ratio = var64 / var128
    # Doubling the neurons halves the Monte Carlo variance (24 seeds x 16 points: ratio within ~25%).
    assert 1.4 < ratio < 2.8, ratio
    # Two seeds at S=128 differ by sqrt(2) sigma per point on average, not more.
    z = (f128[0] - f128[1]) / np.sqrt(2 * f128.var(axis=0, ddof=1))
    assert np.mean(z**2) < 4.0
    # ... and agree in mean: the ensemble means at S=64 and S=128 differ only by MC error.
    se = np.sqrt(var64 / 24 + var128 / 24)
    assert np.abs(f64.mean(0) - f128.mean(0)).mean() < 4 * se


def test_max_time_non_convergence_reported():
    r = antk(small(), gamma0=1.0, weight_decay=0.1, samples=200, max_time=1.0)
    assert r.converged is False
    assert "max_time" in r.message
    assert np.all(np.isfinite(r.Phi))


def test_overflow_caught_not_returned_as_kernels():
    x1, y1, x2, y2 = small()
    with np.errstate(all="ignore"):
        r = antk((x1 * 1e120, y1, x2 * 1e120, y2), gamma0=1.0, weight_decay=0.1, samples=50, max_steps=200)
    assert r.converged is False
    assert np.all(np.isnan(r.Phi)) and np.all(np.isnan(r.K))
    assert "NaN" in r.message or "overflow" in r.message
    json.dumps(r.to_json_dict())


@pytest.mark.parametrize("kwargs", [
    dict(gamma0=0.0, weight_decay=0.1), dict(gamma0=-1.0, weight_decay=0.1),
    dict(gamma0=1.0, weight_decay=0.0), dict(gamma0=1.0, weight_decay=float("nan")),
    dict(gamma0=1.0, weight_decay=0.1, depth=0), dict(gamma0=1.0, weight_decay=0.1, activation="nope"),
    dict(gamma0=1.0, weight_decay=0.1, samples=1), dict(gamma0=1.0, weight_decay=0.1, init="x"),
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        antk(small(), **kwargs)


def test_warm_start_reuses_population(linear_run):
    ds = small(30, 20)
    r = antk(ds, gamma0=1.1, weight_decay=0.1, activation="linear", samples=400, tol=1e-9,
             residual_tol=1e-9, max_steps=3000, init=linear_run)
    assert r.converged, r.message
    assert "cold start" not in r.message
    assert r.iterations < linear_run.iterations
    np.testing.assert_allclose(r.feature_test_predictions, r.test_predictions, atol=1e-8)
    # Incompatible init (different samples) falls back to a cold start, says so.
    r2 = antk(ds, gamma0=1.0, weight_decay=0.1, activation="linear", samples=200, max_time=1.0,
              init=linear_run)
    assert "cold start" in r2.message




@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_dmft_output_matches_feature_form(activation):
    """Issue 4's convergence test: the DMFT output and the feature form agree to 1e-4 on test points."""
    r = antk(small(30, 20), gamma0=1.0, weight_decay=0.1, activation=activation, samples=400,
             tol=1e-5, max_steps=1500)
    assert r.converged, r.message
    gap = np.linalg.norm(r.feature_test_predictions - r.test_predictions) / np.linalg.norm(r.test_predictions)
    assert gap < 1e-4


def test_relu_fixed_point_equations_hold_with_a_filippov_selection():
    """relu's fixed point (THEORY.md 4.2), recomputed by hand from the returned population:
    ``h = (gamma0/lambda) z C(., X)(Delta * m)``, ``z = (gamma0/lambda) relu(h_X) . Delta`` with ``m`` in
    ``phi'(h)``: 1 where h > 0, 0 where h < 0, any fraction only where h = 0 (neurons on the kink)."""
    ds = small(30, 20)
    kw = dict(gamma0=1.0, weight_decay=0.1, activation="relu", samples=400, tol=1e-9, max_steps=1500)
    alone = antk(ds, fixed_point_after=None, **kw)
    r = antk(ds, **kw)
    p = ds.x_train.shape[0]
    st = r.state
    h, z, m = st["d"] * st["h0"] + st["A"] @ r.C[:p], st["z"], st["M"]
    assert np.all((m >= 0) & (m <= 1))
    hx = h[:, :p]
    big = 1e-3 * np.abs(hx).max()
    assert np.all(np.abs(hx[(m > 0.01) & (m < 0.99)]) < big)  # fractions only at the kink
    assert np.all(m[hx > big] > 0.99) and np.all(m[hx < -big] < 0.01)
    f = z @ np.maximum(h, 0) / (r.gamma0 * z.size)
    np.testing.assert_allclose(f[p:], r.test_predictions, rtol=1e-12, atol=1e-12)
    delta, k = ds.y_train - f[:p], r.gamma0 / r.weight_decay
    res_h = np.linalg.norm(h - k * (z[:, None] * (delta * m)) @ r.C[:p]) / np.linalg.norm(h)
    res_z = np.linalg.norm(z - k * np.maximum(hx, 0) @ delta) / np.linalg.norm(z)
    assert max(res_h, res_z) < 2e-3  # measured 4.5e-4
    assert alone.residual > 100 * max(res_h, res_z)  # the integrator alone: 0.29 after 1500 steps
    # the NTK form uses the same selection in G: it agrees with the DMFT output too
    assert r.ntk_gap < 1e-4 < alone.ntk_gap


# ------------------------------------------------- exact oracle: linear activation, any depth


def _linear_fixed_points(c_full, y, p, gamma0, lam, depth):
    """Non-zero fixed points of THEORY.md 4.3 for phi(h) = h, derived by hand (independent of the solver).

    With phi linear every g^l is constant in x and every layer's features are rank one along
    u(x) = C(x, X) Delta: h^l = a_l u, g^l = b_l, Phi^l = q_l u u^T, G^l = <b_l^2>. The per-neuron
    equations give (kappa = gamma0/lambda, s = Delta^T C Delta, G^{L+1} = 1)
        layer 1:   kappa^2 G^2 s = 1,          q_1 = kappa^2 G^1
        layer l:   kappa^2 q_{l-1} G^{l+1} s^2 = 1,   q_l = kappa^2 q_{l-1}^2 s^2 G^l
    and f = Phi^L Delta / lambda = c u with c = q_L s / lambda, Delta = (I + c C_XX)^-1 y, closing
    s = y^T (I + cC)^-1 C (I + cC)^-1 y. Solved in logs for each s, then a scalar root in s.
    Returns a list of dicts (c, q, f on train+test, Phi per layer).
    """
    from scipy.optimize import brentq

    kap, L = gamma0 / lam, depth
    w, U = np.linalg.eigh(c_full[:p, :p])
    yt = U.T @ y

    def s_of_c(c):
        return float(np.sum(w * yt**2 / (1 + c * w) ** 2))

    def logs(sig):
        A, b = np.zeros((2 * L, 2 * L)), np.zeros(2 * L)
        Q, Gm = (lambda l: l - 1), (lambda l: L + l - 1)
        r = 0
        if L >= 2:
            A[r, Gm(2)] = 1
        b[r] = -2 * np.log(kap) - sig
        r += 1
        for l in range(2, L + 1):
            A[r, Q(l - 1)] = 1
            if l + 1 <= L:
                A[r, Gm(l + 1)] = 1
            b[r] = -2 * np.log(kap) - 2 * sig
            r += 1
        A[r, Q(1)], A[r, Gm(1)], b[r] = 1, -1, 2 * np.log(kap)
        r += 1
        for l in range(2, L + 1):
            A[r, Q(l)], A[r, Q(l - 1)], A[r, Gm(l)], b[r] = 1, -2, -1, 2 * np.log(kap) + 2 * sig
            r += 1
        return np.linalg.solve(A, b)

    sols = []
    if L == 1:
        s = 1 / kap**2
        if s_of_c(0) > s:
            c = brentq(lambda c: s_of_c(c) - s, 0, 1e12)
            sols.append((c, [c * lam / s]))
    else:
        def F(sig):
            x = logs(sig)
            return np.log(s_of_c(np.exp(x[L - 1] + sig) / lam)) - sig

        grid = np.linspace(np.log(s_of_c(0)) - 40, np.log(s_of_c(0)), 4000)
        v = [F(g) for g in grid]
        for i in range(len(grid) - 1):
            if np.sign(v[i]) != np.sign(v[i + 1]):
                sig = brentq(F, grid[i], grid[i + 1])
                x = logs(sig)
                sols.append((np.exp(x[L - 1] + sig) / lam, list(np.exp(x[:L]))))
    out = []
    for c, q in sols:
        u = c_full[:, :p] @ np.linalg.solve(np.eye(p) + c * c_full[:p, :p], y)
        out.append(dict(c=c, q=q, f=c * u, Phi=[qq * np.outer(u, u) for qq in q]))
    return out


def test_linear_depth1_matches_closed_form_fixed_point(linear_run):
    """Depth 1, phi linear: f = c C(., X)(I + c C)^-1 y with kappa^2 Delta^T C Delta = 1 (derived by hand)."""
    r = linear_run
    ds = small(30, 20)
    (sol,) = _linear_fixed_points(r.C, ds.y_train, 30, 1.0, 0.1, 1)
    f = np.concatenate([r.train_predictions, r.test_predictions])
    assert np.linalg.norm(f - sol["f"]) < 1e-8 * np.linalg.norm(sol["f"])
    np.testing.assert_allclose(r.kernels_full[0], sol["Phi"][0], atol=1e-8 * np.abs(sol["Phi"][0]).max())


@pytest.mark.parametrize("gamma0", [1.5, 2.2])
def test_depth2_linear_matches_closed_form_fixed_point(gamma0):
    """Depth 2 (EXPERIMENTAL solver): output, per-layer kernels and all three predictor forms
    against the hand-derived rank-one fixed point; the solver reaches the non-trivial stable root."""
    ds = small(30, 20)
    r = antk(ds, gamma0=gamma0, weight_decay=0.1, depth=2, activation="linear", samples=200,
             tol=1e-9, residual_tol=1e-9, max_steps=3000)
    assert r.converged, r.message
    assert "EXPERIMENTAL" in r.message
    sols = _linear_fixed_points(r.C, ds.y_train, 30, gamma0, 0.1, 2)
    sol = max(sols, key=lambda s: s["c"])  # two non-zero roots; the large-c one is the stable one
    f = np.concatenate([r.train_predictions, r.test_predictions])
    assert np.linalg.norm(f - sol["f"]) < 1e-7 * np.linalg.norm(sol["f"])
    assert r.kernels_full.shape == (2,) + r.C.shape
    for l in range(2):
        np.testing.assert_allclose(r.kernels_full[l], sol["Phi"][l], atol=1e-7 * np.abs(sol["Phi"][l]).max())
    np.testing.assert_allclose(r.feature_test_predictions, r.test_predictions, atol=1e-8)
    # NTK form with ridge (L+1) lambda (phi homogeneous).
    np.testing.assert_allclose(r.ntk_test_predictions, r.test_predictions, atol=1e-7)
    assert len(r.to_json_dict()["alignment"]) == 2


def test_depth2_warm_start_continues_along_gamma0():
    """init= (dashboard slider): depth-2 population rescaled from gamma0=1.5 converges at 2.2 to the closed form."""
    ds = small(30, 20)
    kw = dict(weight_decay=0.1, depth=2, activation="linear", samples=200, tol=1e-9, residual_tol=1e-9,
              max_steps=3000)
    r0 = antk(ds, gamma0=1.5, **kw)
    r = antk(ds, gamma0=2.2, init=r0, **kw)
    assert r.converged and "cold start" not in r.message, r.message
    sol = max(_linear_fixed_points(r.C, ds.y_train, 30, 2.2, 0.1, 2), key=lambda s: s["c"])
    f = np.concatenate([r.train_predictions, r.test_predictions])
    assert np.linalg.norm(f - sol["f"]) < 1e-7 * np.linalg.norm(sol["f"])


def test_neuron_preactivations_reproduce_the_feature_kernel():
    """h(t) = exp(-lambda t) h0 + A C(X, .): for phi = identity, <h h^T> over neurons is Phi exactly."""
    ds = akviz.load_dataset("digits:3v8", 20, 10, 0)
    r = akviz.antk(ds, gamma0=1.0, weight_decay=0.1, samples=200, activation="linear")
    h = akviz.neuron_preactivations(r, np.arange(30))
    np.testing.assert_allclose(h["final"].T @ h["final"] / h["final"].shape[0], r.Phi, atol=1e-12)
    c_diag = np.diag(akviz.input_kernel(np.vstack([ds.x_train, ds.x_test])))
    ratio = np.mean(h["init"] ** 2, axis=0) / c_diag  # init: 200 samples of N(0, C)
    assert abs(ratio.mean() - 1.0) < 0.1
    with pytest.raises(ValueError, match="index"):
        akviz.neuron_preactivations(r, [99])


def test_tanh_fixed_point_phase_reaches_the_fixed_point_equations():
    """L-BFGS on the energy after the integrator: the DMFT fixed-point equations of THEORY.md 4.2,
    ``h = (gamma0/lambda) z C(., X)(Delta * phi'(h_X))`` and ``z = (gamma0/lambda) phi(h_X) . Delta``,
    hold per neuron, recomputed here from the returned population."""
    ds = small(30, 20)
    kw = dict(gamma0=1.0, weight_decay=0.1, activation="tanh", samples=400, tol=1e-8)
    r = antk(ds, max_steps=300, **kw)
    assert r.converged, r.message
    assert r.fixed_point_iterations > 0 and "L-BFGS" in r.message
    # the trajectory ends with the integrator's last state and the fixed point, both at its final time
    assert r.record_times[-1] == r.record_times[-2] == r.final_time
    frames = dmft_animation(r.record_times, r.snapshots_phi[:, :30, :30], r.record_train_loss,
                            r.record_test_loss, r.record_alignment, ds.labels_train).frames
    assert frames[-1].name.endswith("(fixed point)") and len({f.name for f in frames}) == len(frames)
    p = ds.x_train.shape[0]
    st = r.state
    h = st["d"] * st["h0"] + st["A"] @ r.C[:p]
    z = st["z"]
    f = z @ np.tanh(h) / (r.gamma0 * z.size)
    np.testing.assert_allclose(f[p:], r.test_predictions, rtol=1e-12, atol=1e-12)
    delta = ds.y_train - f[:p]
    k = r.gamma0 / r.weight_decay
    h_star = k * (z[:, None] * (delta * (1 - np.tanh(h[:, :p]) ** 2))) @ r.C[:p]
    z_star = k * np.tanh(h[:, :p]) @ delta
    assert np.linalg.norm(h - h_star) / np.linalg.norm(h) < 1e-5
    assert np.linalg.norm(z - z_star) / np.linalg.norm(z) < 1e-5
    gap = np.linalg.norm(r.feature_test_predictions - r.test_predictions) / np.linalg.norm(r.test_predictions)
    assert gap < 1e-8
    # The integrator alone, with the same 300 steps, is far from it.
    alone = antk(ds, max_steps=300, fixed_point_after=None, **kw)
    assert not alone.converged and alone.fixed_point_iterations == 0
    assert alone.residual > 100 * r.residual
    # A warm start at a neighbouring gamma0 hands over after one chunk of steps and converges too.
    warm = antk(ds, init=r, **dict(kw, gamma0=1.1))
    assert warm.converged, warm.message
    assert warm.iterations - warm.fixed_point_iterations <= 25


def test_fixed_point_phase_not_run_when_max_time_ends_the_dynamics():
    """``max_time`` asks for the dynamics at that time (finite-width comparisons): no fixed-point phase."""
    r = antk(small(), gamma0=1.0, weight_decay=0.1, samples=200, max_time=1.0)
    assert r.fixed_point_iterations == 0 and "L-BFGS" not in r.message
