"""The bitwidth space: one bits choice per unit under a parameter-weighted mean-bits budget."""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

from presso.spaces._base import Config, Constraint, Dimension, SearchSpace


class MeanBits(Constraint):
    """Parameter-weighted mean bits <= ``limit``, checked in exact rational arithmetic
    so that a configuration exactly on the budget is never refused by rounding."""

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        self._limit = Fraction(str(limit))

    def value(self, space: SearchSpace, config: Config) -> float:
        return float(self._exact(space, config))

    def feasible(self, space: SearchSpace, config: Config) -> bool:
        return self._exact(space, config) <= self._limit

    @staticmethod
    def _exact(space: SearchSpace, config: Config) -> Fraction:
        total = sum(int(w) * Fraction(str(v)) for w, v in zip(space.weights, space.values(config)))
        return total / int(space.weights.sum())

    def describe(self) -> str:
        return f"mean_bits <= {self.limit:g}"


def bits_space(
    units: Sequence[tuple[str, tuple[int, int]]],
    levels: Sequence[int],
    target_mean_bits: float,
) -> SearchSpace:
    """One bitwidth dimension per ``(name, (out_features, in_features))`` unit.

    Raises ValueError when no configuration can meet the budget.
    """
    levels = tuple(sorted(int(b) for b in levels))
    dims = [
        Dimension(name=name, levels=levels, weight=shape[0] * shape[1], group=f"{shape[0]}x{shape[1]}")
        for name, shape in units
    ]
    space = SearchSpace(dims, [MeanBits(target_mean_bits)])
    if not space.is_feasible(space.lowest()):
        raise ValueError(
            f"mean_bits <= {target_mean_bits:g} cannot be met: the lowest level is {levels[0]} bits"
        )
    return space
