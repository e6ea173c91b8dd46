"""Warm-start cache, gamma0 sweeps, downloads and the deep linear closed form."""

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

import akviz
from akviz.deep_linear import linear_overlaps, whitened_task
from akviz.export import to_json_bytes, to_npz_bytes
from akviz.sweep import SolutionCache, sweep


def _fake_solver(calls):
    def solver(g, init):
        calls.append((g, None if init is None else init.gamma0))
        return SimpleNamespace(gamma0=g, converged=g < 1.5, value=g**2)
    return solver


def test_cache_warm_starts_from_nearest_usable_solution():
    cache, calls = SolutionCache(max_entries=10), []
    solver = _fake_solver(calls)
    for g in (0.5, 1.0, 1.6):
        cache.solve("p", g, solver, usable=lambda r: r.converged)
    r, info = cache.solve("p", 1.4, solver, usable=lambda r: r.converged)
    assert info["warm_from"] == 1.0  # 1.6 is nearer but did not converge
    assert calls[-1] == (1.4, 1.0)
    r2, info2 = cache.solve("p", 1.4, solver)
    assert info2["cached"] and r2 is r and len(calls) == 4
    _, other = cache.solve("q", 1.4, solver)
    assert other["warm_from"] is None  # another problem never seeds this one


def test_cache_is_bounded_lru():
    cache = SolutionCache(max_entries=3)
    for g in range(5):
        cache.put("p", g, g)
    assert len(cache) == 3 and cache.get("p", 0) is None and cache.get("p", 4) == 4
    with pytest.raises(ValueError):
        SolutionCache(0)


def test_prefetch_solves_in_background_and_a_foreground_solve_waits_for_it():
    import threading

    cache, calls, started, release = SolutionCache(max_entries=10), [], threading.Event(), threading.Event()
    fast = _fake_solver(calls)

    def slow(g, init):  # holds the worker until released: the foreground must wait, not solve again
        started.set()
        release.wait(10)
        return fast(g, init)

    cache.solve("p", 1.0, fast)
    cache.prefetch("p", [1.05, 0.95], slow)
    assert started.wait(10)  # the background solve of 1.05 is running
    assert cache.background("p") == {"running": [1.05], "queued": 1} and cache.background("q")["queued"] == 0
    timer = threading.Timer(0.2, release.set)
    timer.start()
    r, info = cache.solve("p", 1.05, fast)
    assert info["cached"] and info["prefetched"] and r.gamma0 == 1.05
    assert cache.wait_prefetch(timeout=10)
    assert [c for c in calls if c[0] != 1.0] == [(1.05, 1.0), (0.95, 1.0)]  # each solved once, warm from 1.0
    _, info = cache.solve("p", 0.95, fast)
    assert info["cached"] and len(calls) == 3
    assert cache.cached_gammas("p") == [0.95, 1.0, 1.05] and cache.background("p") == {"running": [], "queued": 0}
    # a new request replaces the pending ones; cached values are skipped; failures are recorded
    cache.prefetch("p", [1.0, 2.0], lambda g, init: 1 / 0)
    assert cache.wait_prefetch(timeout=10)
    assert cache.get("p", 2.0) is None and cache.prefetch_errors[-1][1] == 2.0
    assert "ZeroDivisionError" in cache.prefetch_errors[-1][2] and len(cache.prefetch_errors) == 1
    # a delayed request that a newer one replaces before its delay has passed is never solved
    cache.prefetch("p", [3.0], fast, delay=5.0)
    cache.prefetch("p", [3.5], fast)
    assert cache.wait_prefetch(timeout=10)
    assert cache.get("p", 3.0) is None and cache.get("p", 3.5) is not None


def test_background_solve_pauses_while_a_foreground_solve_computes():
    import threading
    import time

    cache, steps, running = SolutionCache(max_entries=10), [], threading.Event()

    def background(g, init):  # 60 steps of 10 ms, yielding at each like the dashboard's callbacks
        for _ in range(60):
            cache.yield_to_foreground()
            steps.append(time.monotonic())
            running.set()
            time.sleep(0.01)
        return SimpleNamespace(gamma0=g)

    def foreground(g, init):
        cache.yield_to_foreground()  # outside the background thread: returns at once
        begin = time.monotonic()
        time.sleep(0.4)
        return SimpleNamespace(gamma0=g, span=(begin, time.monotonic()))

    cache.prefetch("p", [1.0], background)
    assert running.wait(10)
    r, info = cache.solve("p", 2.0, foreground)
    assert not info["cached"]
    begin, end = r.span
    # at most the step in progress when the foreground began; none in the rest of its 0.4 s
    assert [t for t in steps if begin + 0.05 < t < end] == []
    assert cache.wait_prefetch(timeout=10) and cache.get("p", 1.0) is not None and len(steps) == 60
    assert steps[-1] > end  # it resumed and finished afterwards


def test_sweep_chains_warm_starts_reports_progress_and_stops():
    calls, seen = [], []
    results = sweep(_fake_solver(calls), [0.5, 1.0, 1.6, 2.0], progress=lambda *a: seen.append(a[:3]))
    assert [c[1] for c in calls] == [None, 0.5, 1.0, 1.0]  # 1.6 failed, so 2.0 starts from 1.0
    assert seen[-1] == (4, 4, 2.0) and len(results) == 4
    stop_after_two = iter([False, False, True])
    assert len(sweep(_fake_solver([]), [0.1, 0.2, 0.3], should_stop=lambda: next(stop_after_two))) == 2
    with pytest.raises(ValueError, match="gamma0"):
        sweep(_fake_solver([]), [-1.0])


def test_exports_roundtrip_a_result():
    ds = akviz.load_dataset("digits:0v1", 20, 10)
    r = akviz.lazy_predictor(ds, method="ntk", depth=2)
    summary = json.loads(to_json_bytes(r))
    assert summary["test_loss"] == pytest.approx(r.test_loss) and summary["depth"] == 2
    arrays = np.load(io.BytesIO(to_npz_bytes(r)))
    np.testing.assert_array_equal(arrays["kernels_full"], r.kernels_full)
    assert float(arrays["test_loss"]) == pytest.approx(r.test_loss)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_linear_overlaps_solve_the_self_consistency(depth):
    for gamma0, beta in [(0.5, 1.0), (1.0, 10.0), (2.0, 10.0)]:
        c = linear_overlaps(gamma0, beta, depth)
        c_l = c[-1]
        assert c_l == pytest.approx((1 + gamma0**2 * c_l / (c_l + 1 / beta) ** 2) ** depth, rel=1e-12)
        np.testing.assert_allclose(c, c_l ** (np.arange(1, depth + 1) / depth), rtol=1e-12)
    assert linear_overlaps(1.0, 10.0, 1)[0] == pytest.approx(1.5646, abs=1e-4)  # THEORY.md 3.3
    assert linear_overlaps(2.0, 10.0, 1)[0] == pytest.approx(2.4866, abs=1e-4)
    np.testing.assert_array_equal(linear_overlaps(0.0, 1.0, depth), np.ones(depth))


def test_whitened_task_has_identity_input_kernel():
    ds = whitened_task(6, 3)
    np.testing.assert_allclose(akviz.input_kernel(ds.x_train), np.eye(6), atol=1e-14)
    assert np.linalg.norm(ds.y_train) == pytest.approx(1.0)
