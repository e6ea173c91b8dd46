"""Warm starts along gamma0: a bounded cache of solutions and a progress-reporting sweep.

Adaptive-kernel solvers (``anbk``, ``antk``) accept ``init=previous_result``;
a solution at a neighbouring ``gamma0`` is the best starting point. The
dashboard keeps one :class:`SolutionCache` per server so that moving the
``gamma0`` slider warm-starts from the nearest solution already computed.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Hashable, Optional

import numpy as np


class SolutionCache:
    """Least-recently-used store of solver results keyed by ``(problem, gamma0)``.

    ``problem`` is any hashable description of everything but ``gamma0``
    (dataset, sizes, depth, activation, beta / weight decay, samples, seed).
    Thread-safe; holds at most ``max_entries`` results in all.
    """

    def __init__(self, max_entries: int = 64):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1.")
        self.max_entries = int(max_entries)
        self._items: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict = {}  # key -> threading.Event, set when that solve has been stored
        self._pending: list = []  # prefetch requests not started yet (only the latest call's)
        self._worker: Optional[threading.Thread] = None
        self._foreground = 0  # foreground solves computing now (not waiting for a background one)
        self._foreground_done = threading.Condition(self._lock)
        self.prefetch_errors: list = []  # (problem, gamma0, repr(exception)) of failed background solves

    def __len__(self):
        return len(self._items)

    def get(self, problem: Hashable, gamma0: float):
        with self._lock:
            key = (problem, float(gamma0))
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, problem: Hashable, gamma0: float, result) -> None:
        with self._lock:
            key = (problem, float(gamma0))
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def nearest(self, problem: Hashable, gamma0: float, usable: Callable = lambda r: True):
        """The cached result for ``problem`` whose ``gamma0`` is closest (or None)."""
        with self._lock:
            candidates = [(abs(g - gamma0), g, r) for (p, g), r in self._items.items() if p == problem and usable(r)]
        if not candidates:
            return None
        return min(candidates, key=lambda c: c[:2])[2]

    def cached_gammas(self, problem: Hashable) -> list:
        """The ``gamma0`` values cached for ``problem``, ascending."""
        with self._lock:
            return sorted(g for (p, g) in self._items if p == problem)

    def background(self, problem: Hashable) -> dict:
        """What the background worker does for ``problem``: ``{"running": [gamma0...], "queued": n}``."""
        with self._lock:
            running = sorted(g for (p, g) in self._inflight if p == problem)
            queued = sum(1 for item in self._pending if item[0] == problem and item[:2] not in self._items)
        return {"running": running, "queued": queued}

    def solve(self, problem: Hashable, gamma0: float, solver: Callable, usable: Callable = lambda r: True):
        """Cached result, else ``solver(gamma0, init)`` warm-started from the nearest usable one.

        A solve of the same key already running in the background (:meth:`prefetch`) is waited
        for rather than repeated. Returns ``(result, info)`` with
        ``info = {"cached", "warm_from", "seconds"}`` (``"prefetched": True`` when it was waited for).
        """
        start = time.perf_counter()
        with self._lock:
            running = self._inflight.get((problem, float(gamma0)))
        if running is not None:
            running.wait()  # a failed background solve stores nothing: then it is solved here
        hit = self.get(problem, gamma0)
        if hit is not None:
            return hit, {"cached": True, "prefetched": running is not None, "warm_from": None,
                         "seconds": time.perf_counter() - start if running is not None else 0.0}
        init = self.nearest(problem, gamma0, usable)
        with self._lock:
            self._foreground += 1
        try:
            result = solver(gamma0, init)
        finally:
            with self._lock:
                self._foreground -= 1
                self._foreground_done.notify_all()
        seconds = time.perf_counter() - start
        self.put(problem, gamma0, result)
        warm_from = None if init is None else float(getattr(init, "gamma0", np.nan))
        return result, {"cached": False, "warm_from": warm_from, "seconds": seconds}

    def prefetch(self, problem: Hashable, gammas, solver: Callable, usable: Callable = lambda r: True,
                 delay: float = 0.0) -> None:
        """Solve ``gammas`` (in order) in one background thread, each warm-started like :meth:`solve`.

        For an interactive slider: after drawing ``gamma0``, prefetch its neighbours so that the
        next step is a cache hit. A call replaces the requests of the previous call that have not
        started (the user has moved on); the solve in progress finishes and is stored. Values
        already cached or running are skipped. ``solver`` runs outside the caller's thread, so it
        must not touch UI state. Exceptions are recorded in ``prefetch_errors``, never raised.
        ``delay``: seconds to wait before starting these solves (lets the caller finish drawing
        first: the solves would compete with it for the CPU).
        """
        not_before = time.monotonic() + delay
        with self._lock:
            self._pending = [(problem, float(g), solver, usable, not_before) for g in gammas
                             if (problem, float(g)) not in self._items]
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="akviz-prefetch", daemon=True)
                self._worker.start()

    def yield_to_foreground(self) -> None:
        """For a solver's progress callback: in the background thread, wait while a foreground solve
        computes, so that the solve someone waits for gets the CPU (the paused solve resumes
        unchanged); anywhere else, return at once. A foreground solve that waits for a background
        one of the same key does not count, so the two never wait for each other.
        """
        if threading.current_thread() is not self._worker:
            return
        with self._foreground_done:
            while self._foreground > 0:
                self._foreground_done.wait(1.0)

    def wait_prefetch(self, timeout: Optional[float] = None) -> bool:
        """Wait until the background queue is empty; True if it emptied within ``timeout`` seconds."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _work(self):
        while True:
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                problem, gamma0, solver, usable, not_before = self._pending[0]
                wait = not_before - time.monotonic()
                if wait <= 0:
                    self._pending.pop(0)
                    key = (problem, gamma0)
                    if key in self._items or key in self._inflight:
                        continue
                    done = self._inflight[key] = threading.Event()
            if wait > 0:  # sleep outside the lock: a newer request may replace this one meanwhile
                time.sleep(min(wait, 0.1))
                continue
            try:
                init = self.nearest(problem, gamma0, usable)
                self.put(problem, gamma0, solver(gamma0, init))
            except Exception as exc:  # a background failure must not kill the server; the foreground retries
                self.prefetch_errors.append((problem, gamma0, repr(exc)))
            finally:
                with self._lock:
                    del self._inflight[key]
                done.set()


def sweep(solver: Callable, gammas, *, progress: Optional[Callable] = None,
          should_stop: Optional[Callable] = None, usable: Callable = lambda r: r.converged) -> list:
    """Solve at each ``gamma0`` in ``gammas`` (ascending), warm-starting each from the previous.

    Args:
      solver: ``solver(gamma0, init) -> result``.
      progress: ``progress(done, total, gamma0, result)`` after each point.
      should_stop: returns True to stop early; the results so far are returned.
      usable: whether a result may seed the next one (a failed solve does not).
    """
    gammas = [float(g) for g in gammas]
    if any(g < 0 or not np.isfinite(g) for g in gammas):
        raise ValueError("every gamma0 of a sweep must be a finite number >= 0.")
    results, init = [], None
    for i, g in enumerate(gammas):
        if should_stop is not None and should_stop():
            break
        result = solver(g, init)
        results.append(result)
        if usable(result):
            init = result
        if progress is not None:
            progress(i + 1, len(gammas), g, result)
    return results
