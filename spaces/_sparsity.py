"""The sparsity space: a sparsity level per unit under a minimum mean sparsity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace, unit_dims


class MeanSparsity(Constraint):
    """Parameter-weighted mean sparsity (percent) of the sparsity dimensions >= ``limit``."""

    sense = ">="
    metric = "mean_sparsity"

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        num = den = 0
        for d, i in zip(space.dims, config):
            if d.kind == "sparsity":
                num += d.weight * d.levels[i]
                den += d.weight
        return num / den if den else 0.0

    def budget(self, space: SearchSpace) -> Budget | None:
        """-sum(params x percent) <= -limit x params, exact for whole-number percents."""
        dims = [d for d in space.dims if d.kind == "sparsity"]
        if not all(float(v).is_integer() for d in dims for v in d.levels):
            return None
        costs = tuple(
            tuple(-d.weight * int(v) if d.kind == "sparsity" else 0 for v in d.levels)
            for d in space.dims
        )
        total = sum(d.weight for d in dims)
        return Budget(costs, math.floor(-Fraction(str(self.limit)) * total))

    def describe(self) -> str:
        return f"mean_sparsity >= {self.limit:g}%"


def sparsity_dims(
    units: Sequence[tuple[str, tuple[int, int]]], levels: Sequence[int], *, suffix: str = ""
) -> list[Dimension]:
    """One sparsity dimension (percent, cheapest = sparsest first) per ``(name, shape)`` unit."""
    ordered = tuple(sorted({int(s) for s in levels}, reverse=True))
    return unit_dims(units, ordered, kind="sparsity", suffix=suffix)


def sparsity_space(
    units: Sequence[tuple[str, tuple[int, int]]], levels: Sequence[int], mean_sparsity: float
) -> SearchSpace:
    """Sparsity per unit; raises ValueError when no configuration reaches ``mean_sparsity``."""
    space = SearchSpace(sparsity_dims(units, levels), [MeanSparsity(mean_sparsity)])
    if not space.is_feasible(space.lowest()):
        raise ValueError(
            f"mean_sparsity >= {mean_sparsity:g}% cannot be met: the highest level is {max(levels)}%"
        )
    return space
