"""Objectives of multi-objective strategies: names of entries in ``Result.metrics``.

The evaluator stores the fitness (``kl``, or ``cos_dist`` for encoders) and one entry per
space constraint (``mean_bits``, ``mean_sparsity``, ``dropped``) with every result, so a
Pareto front over accuracy and cost needs no extra measurement. Every objective is
minimised; a leading ``-`` maximises it (``-mean_sparsity``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from presso.evaluation import Objective, Result


class Objectives:
    """Parsed objective names; turns results into minimisation vectors.

    A result that failed or whose metrics lack an objective gets ``inf`` in every entry:
    every evaluated candidate dominates it.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        parsed = [Objective.parse(n) for n in names]
        metrics = [o.metric for o in parsed]
        if not names or not all(metrics):
            raise ValueError(f"objectives must be non-empty metric names, got {names!r}")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {names!r}")
        self.names = names
        self.metrics = tuple(metrics)
        #: +1 for a minimised objective, -1 for a maximised one.
        self.signs = np.array([-1.0 if o.maximise else 1.0 for o in parsed])

    def __len__(self) -> int:
        return len(self.names)

    @property
    def maximise(self) -> tuple[bool, ...]:
        return tuple(bool(s < 0) for s in self.signs)

    def raw(self, result: Result) -> tuple[float, ...] | None:
        """The objective metrics as measured, or None for a failed or incomplete result."""
        if not result.ok:
            return None
        values = [result.metrics.get(m) for m in self.metrics]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        return tuple(float(v) for v in values)  # type: ignore[arg-type]

    def vector(self, result: Result) -> np.ndarray:
        """The minimisation vector of ``result`` (``inf`` everywhere when it is unusable)."""
        raw = self.raw(result)
        if raw is None:
            return np.full(len(self), np.inf)
        return self.signs * np.asarray(raw)

    def unsign(self, vector: np.ndarray) -> tuple[float, ...]:
        """Back from a minimisation vector to the metrics as measured."""
        return tuple(float(v) for v in self.signs * vector)
