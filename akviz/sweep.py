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

    def solve(self, problem: Hashable, gamma0: float, solver: Callable, usable: Callable = lambda r: True):
        """Cached result, else ``solver(gamma0, init)`` warm-started from the nearest usable one.

        Returns ``(result, info)`` with ``info = {"cached", "warm_from", "seconds"}``.
        """
        hit = self.get(problem, gamma0)
        if hit is not None:
            return hit, {"cached": True, "warm_from": None, "seconds": 0.0}
        init = self.nearest(problem, gamma0, usable)
        start = time.perf_counter()
        result = solver(gamma0, init)
        seconds = time.perf_counter() - start
        self.put(problem, gamma0, result)
        warm_from = None if init is None else float(getattr(init, "gamma0", np.nan))
        return result, {"cached": False, "warm_from": warm_from, "seconds": seconds}


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
