"""The depth space: keep or drop each block (or each block's attention and MLP)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace

#: Depth level values: 0 = dropped, 1 = kept (cheapest first).
DROPPED, KEPT = 0, 1


class MinDropped(Constraint):
    """At least ``limit`` depth dimensions (blocks or sublayers) dropped."""

    sense = ">="
    metric = "dropped"

    def __init__(self, limit: int) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        return float(
            sum(
                1
                for d, i in zip(space.dims, config)
                if d.kind == "depth" and d.levels[i] == DROPPED
            )
        )

    def budget(self, space: SearchSpace) -> Budget | None:
        """-(dropped dimensions) <= -limit."""
        costs = tuple(
            tuple(-1 if d.kind == "depth" and v == DROPPED else 0 for v in d.levels)
            for d in space.dims
        )
        return Budget(costs, -math.ceil(self.limit))

    def describe(self) -> str:
        return f"dropped >= {self.limit:g}"


def depth_dims(
    blocks: Sequence[tuple[str, int]], *, sublayers: Sequence[tuple[str, int]] = ()
) -> list[Dimension]:
    """Keep/drop dimensions: one per ``(block name, params)``, or, when ``sublayers`` is given,
    one per ``(sublayer name, params)`` (a block's attention and MLP separately)."""
    items = sublayers or blocks
    return [
        Dimension(name=name, levels=(DROPPED, KEPT), weight=params, group="depth", kind="depth")
        for name, params in items
    ]


def depth_space(
    blocks: Sequence[tuple[str, int]], dropped: int, *, sublayers: Sequence[tuple[str, int]] = ()
) -> SearchSpace:
    """Drop at least ``dropped`` blocks (or sublayers); raises ValueError if there are too few."""
    dims = depth_dims(blocks, sublayers=sublayers)
    if not 0 <= dropped < len(dims):
        raise ValueError(f"dropped must be between 0 and {len(dims) - 1}, got {dropped}")
    return SearchSpace(dims, [MinDropped(dropped)])
