"""The dashboard runs headless (streamlit.testing) and draws the right data."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import akviz
from akviz.deep_linear import linear_overlaps

APP = Path(__file__).resolve().parents[1] / "app.py"


def _array(value):
    """A Plotly JSON array: plain lists, or Plotly's typed-array dict {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = tuple(int(v) for v in shape.split(","))
        return flat.reshape(shape) if shape else flat
    return np.asarray(value, float)


@pytest.fixture(autouse=True)
def _no_background_solves(monkeypatch):
    """Slider-neighbour prefetching off (it would load the CPU behind the next tests); one test turns it on."""
    monkeypatch.setenv("AKVIZ_PREFETCH", "0")


def _figures(at):
    return {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def _figure(at, key):
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id]
    assert figs, f"no figure {key!r}; have {list(_figures(at))}"
    return figs[0]


def _app(**query):
    at = AppTest.from_file(str(APP), default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at


def test_deep_linear_page_matches_closed_form():
    at = _small_app("pages/deep_linear.py", beta=10.0)
    fig = _figure(at, "overlaps")
    exact = {t["name"]: _array(t["y"]) for t in fig["data"] if t["name"].startswith("exact")}
    np.testing.assert_allclose(exact["exact, gamma0=1"], linear_overlaps(1.0, 10.0, 4), rtol=1e-12)
    solver = {t["name"]: _array(t["y"]) for t in fig["data"] if t["name"].startswith("solver")}
    np.testing.assert_allclose(solver["solver, gamma0=2"], linear_overlaps(2.0, 10.0, 4), rtol=1e-8)
    # each gamma0's closed-form curve and the solver's markers on it share one colour, and gamma0s differ
    colour = {t["name"]: t.get("line", {}).get("color") or t.get("marker", {}).get("color") for t in fig["data"]}
    for g in ("0.5", "1", "2"):
        assert colour[f"exact, gamma0={g}"] == colour[f"solver, gamma0={g}"] is not None, colour
    assert len({colour[f"exact, gamma0={g}"] for g in ("0.5", "1", "2")}) == 3, colour


# Small, exactly solvable settings keep the page tests fast: the linear aNBK is solved
# by Gaussian integrals, and the figures are compared with direct akviz calls.
SMALL = dict(activation="linear", n_train=20, n_test=20, beta=1.0, gamma0=0.5, samples=1000)


def _small_app(page=None, **extra):
    at = _app(**{**SMALL, **extra}).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def _heatmap_z(fig, title_prefix):
    """z of the first heatmap whose hover label starts with ``title_prefix``."""
    for trace in fig["data"]:
        if trace["type"] == "heatmap" and title_prefix in trace.get("hovertemplate", ""):
            return _array(trace["z"])
    raise AssertionError(f"no heatmap {title_prefix!r}")


def _sorted(k, labels):
    order = np.argsort(labels, kind="stable")
    return np.asarray(k)[np.ix_(order, order)]


def test_kernel_explorer_follows_slider_and_method_toggle():
    at = _small_app()
    ds = akviz.load_dataset("digits:3v8", 20, 20, 0)
    fig = _figure(at, "heatmaps")
    expected = akviz.anbk(ds, gamma0=0.5, beta=1.0, activation="linear").kernels_full[0][:20, :20]
    # heatmaps carry float32 (what is drawn); the downloads keep float64
    np.testing.assert_allclose(_heatmap_z(fig, "aNBK Phi layer 1"), _sorted(expected, ds.labels_train), rtol=1e-6)
    lazy = akviz.nngp(ds.x_train, depth=1, activation="linear")
    diff = _sorted(expected - lazy, ds.labels_train)
    np.testing.assert_allclose(_heatmap_z(fig, "aNBK - NNGP layer 1"), diff, atol=1e-6 * np.abs(diff).max())

    at.sidebar.slider(key="gamma0").set_value(1.5).run()
    assert not at.exception, at.exception
    moved = akviz.anbk(ds, gamma0=1.5, beta=1.0, activation="linear").kernels_full[0][:20, :20]
    np.testing.assert_allclose(_heatmap_z(_figure(at, "heatmaps"), "aNBK Phi layer 1"),
                               _sorted(moved, ds.labels_train), rtol=1e-6)
    assert at.query_params["gamma0"] == "1.5"  # the view is in the URL

    at.sidebar.radio(key="method").set_value("antk").run()
    assert not at.exception, at.exception
    z = _heatmap_z(_figure(at, "heatmaps"), "aNTK Phi layer 1")
    assert z.shape == (20, 20) and np.all(np.isfinite(z))


def test_relu_antk_page_matches_the_library_call_with_the_dashboard_budgets_exactly():
    """The dashboard's relu DMFT ends at a feature-form agreement or a budget in steps and iterations
    (not wall-clock), so the drawn kernels are the same on any machine and under any load: those of
    the library call with the same settings."""
    from dashboard import common

    at = _small_app(activation="relu", method="antk", gamma0=1.35, weight_decay=0.01)
    ds = akviz.load_dataset("digits:3v8", 20, 20, 0)
    ref = akviz.antk(ds, gamma0=1.35, weight_decay=0.01, activation="relu", samples=1000, seed=0,
                     max_steps=common.ANTK_STEPS, tol=common.ANTK_TOL,
                     fixed_point_iterations=common.ANTK_FIXED_POINT_ITERATIONS, max_seconds=common.ANTK_SECONDS)
    assert ref.fixed_point_iterations > 0 and "budget" not in ref.message  # the clock did not end it
    np.testing.assert_allclose(_heatmap_z(_figure(at, "heatmaps"), "aNTK Phi layer 1"),
                               _sorted(ref.kernels_full[0][:20, :20], ds.labels_train), rtol=1e-6)


def test_slider_neighbours_are_prefetched_and_then_drawn_from_the_cache(monkeypatch):
    monkeypatch.setenv("AKVIZ_PREFETCH", "1")
    at = _small_app(gamma0=0.7, beta=2.0)  # settings no other test uses: a fresh problem in the shared cache
    from dashboard import common

    cache = common.solution_cache()
    assert cache.wait_prefetch(timeout=120)
    ds = akviz.load_dataset("digits:3v8", 20, 20, 0)
    at.sidebar.slider(key="gamma0").set_value(0.75).run()
    assert not at.exception, at.exception
    solver_line = next(c.value for c in at.caption if c.value.startswith("Solver:"))
    assert "cached" in solver_line and "warm start" not in solver_line
    moved = akviz.anbk(ds, gamma0=0.75, beta=2.0, activation="linear").kernels_full[0][:20, :20]
    np.testing.assert_allclose(_heatmap_z(_figure(at, "heatmaps"), "aNBK Phi layer 1"),
                               _sorted(moved, ds.labels_train), rtol=1e-6)
    assert not cache.prefetch_errors
    # the background went on through the whole slider range, nearest first, and the page says so
    total = len(common.slider_grid())
    assert len(common.prefetch_order(0.7)) == total - 1 == 39
    assert common.prefetch_order(0.5)[:4] == [0.55, 0.45, 0.6, 0.4]
    assert common.prefetch_order(0.5, previous=0.45)[:4] == [0.55, 0.6, 0.45, 0.65]  # ahead of the move first
    assert common.prefetch_order(0.5, previous=0.55)[:4] == [0.45, 0.4, 0.55, 0.35]
    lines = [c.value for c in at.caption if c.value.startswith("Slider positions solved")]
    assert lines == [f"Slider positions solved: {total} of {total}."]
    jump = akviz.anbk(ds, gamma0=2.0, beta=2.0, activation="linear").kernels_full[0][:20, :20]
    at.sidebar.slider(key="gamma0").set_value(2.0).run()
    solver_line = next(c.value for c in at.caption if c.value.startswith("Solver:"))
    assert "cached" in solver_line and "warm start" not in solver_line  # a jump to the far end: a cache hit
    np.testing.assert_allclose(_heatmap_z(_figure(at, "heatmaps"), "aNBK Phi layer 1"),
                               _sorted(jump, ds.labels_train), rtol=1e-6)


def test_url_state_restores_a_view_and_ignores_bad_values():
    at = _small_app(depth=2, gamma0="banana")
    assert at.sidebar.slider(key="depth").value == 2
    from dashboard.common import URL_STATE

    assert at.sidebar.slider(key="gamma0").value == URL_STATE["gamma0"][0]  # 'banana' is ignored
    fig = _figure(at, "heatmaps")
    assert sum(t["type"] == "heatmap" for t in fig["data"]) == 6  # 2 layers x 3 columns


def test_sweep_page_runs_and_draws_losses_against_baseline():
    at = _small_app("pages/sweep.py")
    at.select_slider(key="sweep_range").set_value((0.25, 1.0))
    at.slider(key="sweep_points").set_value(3)
    at.button(key="run_sweep").click().run()
    assert not at.exception, at.exception
    fig = _figure(at, "sweep_loss")
    curve = next(t for t in fig["data"] if t["name"] == "aNBK")
    gammas = _array(curve["x"])
    np.testing.assert_allclose(gammas, [0.25, 0.5, 1.0])
    ds = akviz.load_dataset("digits:3v8", 20, 20, 0)
    expected = [akviz.anbk(ds, gamma0=g, beta=1.0, activation="linear").test_loss for g in gammas]
    np.testing.assert_allclose(_array(curve["y"]), expected, rtol=1e-8)
    baseline = next(t for t in fig["data"] if t["name"].startswith("NNGP"))
    lazy = akviz.lazy_predictor(ds, method="nngp", depth=1, activation="linear", ridge=1.0)
    np.testing.assert_allclose(_array(baseline["y"]), [lazy.test_loss] * 2, rtol=1e-10)


def test_sweep_marks_unconverged_points_in_their_method_colour(monkeypatch):
    """Points that did not converge (forced: the exact linear solver at tol 1e-20, below its rounding) are circled
    on the loss and the error figure, in the colour of their method's curve."""
    import functools

    monkeypatch.setattr(akviz, "anbk", functools.partial(akviz.anbk, tol=1e-20))
    # a problem no other test solves: the solution cache outlives a test (the prefetch test fills beta=2's range)
    at = _small_app("pages/sweep.py", beta=5.0)
    at.select_slider(key="sweep_range").set_value((0.25, 1.0))
    at.slider(key="sweep_points").set_value(3)
    at.button(key="run_sweep").click().run()
    assert not at.exception, at.exception
    assert "did not converge" in at.warning[0].value
    for key in ("sweep_loss", "sweep_error"):
        traces = {t["name"]: t for t in _figure(at, key)["data"]}
        circles, curve = traces["aNBK not converged"], traces["aNBK"]
        np.testing.assert_allclose(_array(circles["x"]), [0.25, 0.5, 1.0])
        np.testing.assert_allclose(_array(circles["y"]), _array(curve["y"]))
        assert circles["marker"]["color"] == curve["line"]["color"], key


def test_sweep_adds_finite_width_network_markers():
    at = _small_app("pages/sweep.py", method="antk", weight_decay=0.1)
    at.select_slider(key="sweep_range").set_value((0.5, 1.0))
    at.slider(key="sweep_points").set_value(3)
    at.checkbox(key="sweep_networks").check().run()
    at.select_slider(key="sweep_width").set_value(256)
    at.button(key="run_sweep").click().run()
    assert not at.exception, at.exception
    fig = _figure(at, "sweep_loss")
    net = next(t for t in fig["data"] if t["name"].startswith("network N=256"))
    assert len(_array(net["y"])) == 3 and np.all(_array(net["y"]) < 1.0)


def test_dmft_page_animates_the_trajectory():
    at = _small_app("pages/dmft.py", method="antk", weight_decay=0.1)
    fig = _figure(at, "dmft_animation")
    assert len(fig["frames"]) >= 5
    last = fig["frames"][-1]["data"][0]
    assert _array(last["z"]).shape == (20, 20)
    names = [f["name"] for f in fig["frames"]]
    assert len(set(names)) == len(names)  # the slider animates by name
    table = at.dataframe[0].value
    assert {"DMFT output", "feature form", "NTK form"} <= set(table["predictor"])


def test_densities_page_draws_normalised_histograms():
    at = _small_app("pages/densities.py")
    hist = _figure(at, "hist_")
    tilted = next(t for t in hist["data"] if t["name"] == "tilted (aNBK)")
    x, y = _array(tilted["x"]), _array(tilted["y"])
    assert abs(np.sum(y) * (x[1] - x[0]) - 1.0) < 0.05  # a density over its bins
    scatter = _figure(at, "scatter2d")
    assert {t["name"] for t in scatter["data"]} == {"prior", "tilted (aNBK)"}


def test_densities_page_shows_dmft_neurons_for_antk():
    at = _small_app("pages/densities.py", method="antk", weight_decay=0.1)
    hist = _figure(at, "hist_")
    names = {t["name"] for t in hist["data"]}
    assert names == {"DMFT neurons at init", "DMFT neurons at the end"}
    scatter = _figure(at, "scatter2d")
    init = next(t for t in scatter["data"] if t["name"] == "init")
    assert len(_array(init["x"])) > 100


def test_failed_solve_is_not_drawn(monkeypatch):
    """A solve whose chains run away (forced: the escape radius set tiny) is reported and not drawn. Depth 2:
    MALA chains are the solver there (at depth 1 importance sampling may keep the solve, unconverged)."""
    import akviz.anbk_mcmc
    monkeypatch.setattr(akviz.anbk_mcmc, "ESCAPE", 1.0)
    at = _app(n_train=20, n_test=20, gamma0=1.95, beta=20.0, depth=2).run()
    assert not at.exception, at.exception
    assert at.error and "No adaptive kernel" in at.error[0].value
    assert "does not normalise" in at.error[0].value
    assert not [c for c in at.get("plotly_chart") if "heatmaps" in c.proto.id]


def test_unconverged_solve_is_drawn_with_a_warning_the_page_can_act_on(monkeypatch):
    """A relu aNBK solve by MALA chains (depth 2) that misses tol (forced: tol 1e-9) is drawn under a warning
    naming the page's controls."""
    import functools

    monkeypatch.setattr(akviz, "anbk", functools.partial(akviz.anbk, tol=1e-9))
    at = _app(n_train=20, n_test=20, activation="relu", gamma0=0.3, samples=1000, depth=2).run()
    assert not at.exception, at.exception
    assert not at.error
    text = at.warning[0].value
    assert "did not converge" in text and "saddle residual" in text
    assert "1 averaging pass(es)" in text and "Monte Carlo samples in the sidebar" in text
    z = _heatmap_z(_figure(at, "heatmaps"), "aNBK Phi layer 1")
    assert z.shape == (20, 20) and np.all(np.isfinite(z))


def test_network_page_trains_and_compares():
    at = _small_app("pages/network.py", method="antk", weight_decay=0.1)
    at.select_slider(key="net_width").set_value(256)
    at.select_slider(key="net_steps").set_value(1000)
    at.button(key="run_net").click().run()
    assert not at.exception, at.exception
    scatter = _figure(at, "net_scatter")
    points = next(t for t in scatter["data"] if t["name"] == "test points")
    assert _array(points["x"]).shape == (20,)
    table = at.dataframe[0].value
    assert table["width N"].tolist() == [256] and table["correlation"].iloc[0] > 0.9
