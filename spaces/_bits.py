"""The bitwidth space: one bits choice per unit under a parameter-weighted mean-bits budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace, unit_dims


class MeanBits(Constraint):
    """Parameter-weighted mean bits <= ``limit``, checked in exact rational arithmetic
    so that a configuration exactly on the budget is never refused by rounding."""

    metric = "mean_bits"

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        self._limit = Fraction(str(limit))
        self._tables: dict[int, tuple[np.ndarray, int] | None] = {}

    def value(self, space: SearchSpace, config: Config) -> float:
        return float(self._exact(space, config))

    def feasible(self, space: SearchSpace, config: Config) -> bool:
        return self._exact(space, config) <= self._limit

    def budget(self, space: SearchSpace) -> Budget | None:
        """sum(params x bits) <= limit x params, exact when every level is a whole number."""
        table = self._table(space)
        if table is None:
            return None
        bits_params, total_params = table
        costs = tuple(
            tuple(int(c) for c in bits_params[d, : len(dim.levels)])
            for d, dim in enumerate(space.dims)
        )
        return Budget(costs, math.floor(self._limit * total_params))

    def _exact(self, space: SearchSpace, config: Config) -> Fraction:
        table = self._table(space)
        if table is not None:  # integer bits: exact in int64, and fast (strategies call this a lot)
            bits_params, total_params = table
            total = int(bits_params[np.arange(len(config)), np.asarray(config)].sum())
            return Fraction(total, total_params)
        pairs = [
            (d.weight, Fraction(str(d.levels[i])))
            for d, i in zip(space.dims, config)
            if d.kind == "bits"
        ]
        return sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)

    def _table(self, space: SearchSpace) -> tuple[np.ndarray, int] | None:
        """Per dimension and level, parameters × bits, when every level is a whole number."""
        key = id(space)
        if key not in self._tables:
            dims = [d for d in space.dims if d.kind == "bits"]
            if all(float(v).is_integer() for d in dims for v in d.levels):
                width = max(len(d.levels) for d in space.dims)
                table = np.zeros((len(space.dims), width), dtype=np.int64)
                for i, d in enumerate(space.dims):
                    if d.kind == "bits":
                        table[i, : len(d.levels)] = [d.weight * int(v) for v in d.levels]
                self._tables[key] = (table, sum(d.weight for d in dims))
            else:
                self._tables[key] = None
        return self._tables[key]

    def describe(self) -> str:
        return f"mean_bits <= {self.limit:g}"


def bits_dims(
    units: Sequence[tuple[str, tuple[int, int]]], levels: Sequence[int], *, suffix: str = ""
) -> list[Dimension]:
    """One bitwidth dimension per ``(name, (out_features, in_features))`` unit."""
    ordered = tuple(sorted(int(b) for b in levels))
    return unit_dims(units, ordered, kind="bits", suffix=suffix)


def bits_space(
    units: Sequence[tuple[str, tuple[int, int]]],
    levels: Sequence[int],
    target_mean_bits: float,
) -> SearchSpace:
    """One bitwidth dimension per ``(name, (out_features, in_features))`` unit.

    Raises ValueError when no configuration can meet the budget.
    """
    levels = tuple(sorted(int(b) for b in levels))
    space = SearchSpace(bits_dims(units, levels), [MeanBits(target_mean_bits)])
    if not space.is_feasible(space.lowest()):
        raise ValueError(
            f"mean_bits <= {target_mean_bits:g} cannot be met: the lowest level is {levels[0]} bits"
        )
    return space
