"""Latency as a budget or a reported metric: a candidate's predicted end-to-end ``latency_ms``
on the experiment's backend and workload (a cost model fitted to this machine's measurements).

Measured latency need not fall as bits fall (a 3-bit layer runs in a 4-bit container; an
int8 kernel can beat an int4 one): the strategies' budget filling assumes monotone costs,
so on such a backend they stay feasible but may leave some budget unused.
"""

from __future__ import annotations

from collections.abc import Callable

from presso.spaces._base import Config, Constraint, SearchSpace

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

    def value(self, space: SearchSpace, config: Config) -> float:
        config = tuple(config)
        if config not in self._cache:
            if len(self._cache) > 100_000:  # strategies probe many neighbours; bound the memory
                self._cache.clear()
            self._cache[config] = float(self.predictor(space, config))
        return self._cache[config]

    def describe(self) -> str:
        where = f" on {self.label}" if self.label else ""
        return f"latency_ms <= {self.limit:.4g}{where}"
