"""Latency as a budget or a reported metric: a candidate's predicted end-to-end ``latency_ms``
on the experiment's backend and workload (a cost model fitted to this machine's measurements).

Measured latency need not fall as bits fall (a 3-bit layer runs in a 4-bit container; an
int8 kernel can beat an int4 one): the strategies' budget filling assumes monotone costs,
so on such a backend they stay feasible but may leave some budget unused.

Where the prediction is a sum over the space's dimensions (one kind: each unit's or block's
measured cost at its level, as ZipLM's and SPDY's timing tables), the budget is also an
integer knapsack (:meth:`MaxLatency.budget`), so the exact solver ``dp`` finds the most
accurate configuration under a measured latency target — SPDY's dynamic program.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from presso.spaces._base import Budget, Config, Constraint, SearchSpace

#: The knapsack's latency unit, ms (1 µs): costs are rounded up to it, so a solution that
#: fits the integer budget fits the real one; at most this much per dimension is given away.
RESOLUTION_MS = 1e-3

# Seeded random configurations on which a predictor must be additive before it is solved as one.
_ADDITIVITY_PROBES = 16

#: Predicted latency in ms of a configuration of a space.
Predictor = Callable[[SearchSpace, Config], float]


class MaxLatency(Constraint):
    """Predicted end-to-end latency at most ``limit`` ms. With ``limit`` infinite it only
    reports ``latency_ms`` (stored with every candidate)."""

    metric = "latency_ms"

    def __init__(self, limit_ms: float, predictor: Predictor, *, label: str = "") -> None:
        self.limit = float(limit_ms)
        self.predictor = predictor
        self.label = label
        self._cache: dict[Config, float] = {}
        # The knapsack of the one space this constraint prices (as ``_cache`` assumes too),
        # with that space held, so a later space is never served a stale table.
        self._budget: tuple[SearchSpace, Budget | None] | None = None

    def value(self, space: SearchSpace, config: Config) -> float:
        config = tuple(config)
        if config not in self._cache:
            if len(self._cache) > 100_000:  # strategies probe many neighbours; bound the memory
                self._cache.clear()
            self._cache[config] = float(self.predictor(space, config))
        return self._cache[config]

    def budget(self, space: SearchSpace) -> Budget | None:
        """The limit as an integer knapsack over ``space``'s dimensions in µs, when the
        prediction is additive over them: each level's cost is what it adds to the all-cheapest
        configuration, checked on seeded random configurations (a joint bits x depth space is
        not additive: a dropped block takes its units' costs with it). None otherwise, or for
        a limit that is only reported."""
        if not math.isfinite(self.limit):
            return None
        if self._budget is None or self._budget[0] is not space:
            self._budget = (space, self._knapsack(space))
        return self._budget[1]

    def _knapsack(self, space: SearchSpace) -> Budget | None:
        base = tuple(0 for _ in space.dims)
        fixed = self.value(space, base)
        costs = [
            [
                self.value(space, base[:d] + (lv,) + base[d + 1 :]) - fixed
                for lv in range(len(dim.levels))
            ]
            for d, dim in enumerate(space.dims)
        ]
        rng = np.random.default_rng(0)
        for _ in range(_ADDITIVITY_PROBES):
            config = tuple(int(rng.integers(len(dim.levels))) for dim in space.dims)
            summed = fixed + sum(row[lv] for row, lv in zip(costs, config))
            if not math.isclose(summed, self.value(space, config), rel_tol=1e-9, abs_tol=1e-9):
                return None
        # Costs rounded up and the limit down: whatever fits the integers fits the real limit.
        return Budget(
            tuple(tuple(math.ceil(c / RESOLUTION_MS - 1e-9) for c in row) for row in costs),
            math.floor((self.limit - fixed) / RESOLUTION_MS + 1e-9),
        )

    def describe(self) -> str:
        where = f" on {self.label}" if self.label else ""
        return f"latency_ms <= {self.limit:.4g}{where}"
