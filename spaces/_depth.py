"""The depth space: keep or drop each block (or each block's attention and MLP)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._kinds import Kind, register

#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "dropped"

#: Depth level values: 0 = dropped, 1 = kept (cheapest first).
DROPPED, KEPT = 0, 1


class MinDropped(Constraint):
    """At least ``limit`` depth dimensions (blocks or sublayers) dropped."""

    sense = ">="
    metric = BUDGET

    def __init__(self, limit: int) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        return float(
            sum(
                1
                for d, i in zip(space.dims, config)
                if d.kind == DepthKind.name and d.levels[i] == DROPPED
            )
        )

    def budget(self, space: SearchSpace) -> Budget | None:
        """-(dropped dimensions) <= -limit."""
        costs = tuple(
            tuple(-1 if d.kind == DepthKind.name and v == DROPPED else 0 for v in d.levels)
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
        Dimension(
            name=name,
            levels=(DROPPED, KEPT),
            weight=params,
            group=DepthKind.name,
            kind=DepthKind.name,
        )
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


@register
class DepthKind(Kind):
    """Keep or drop each block (or each block's attention and MLP): a plan lists the dropped."""

    name = "depth"
    label = "kept (1) / dropped (0)"
    dense = KEPT
    per_unit = False
    budget = BUDGET
    colorscale = [[0, "#d62728"], [1, "#2ca02c"]]
    space_fields = {
        BUDGET: (
            int | None,
            Field(None, ge=0, le=100_000, description="blocks (or sublayers) to drop, at least"),
        ),
        "granularity": (Literal["block", "sublayer"], Field("block")),
    }

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        return depth_dims([(block, _params(setup, block))], sublayers=_sublayers(setup, block))

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        from presso.errors import PressoError

        n = len([d for d in dims if d.kind == self.name])
        if limit >= n:
            raise PressoError(f"space.dropped: {limit} but the model has only {n} to drop")
        return MinDropped(limit)

    def refusal(self, plan: Any, fmt: str) -> str | None:
        from presso.errors import layer_list

        dropped = self.dropped(plan.dropped)
        if not dropped:
            return None
        return (
            f"--format {fmt} cannot drop layers, and this candidate drops "
            f"{layer_list(dropped)}; export the smaller model with --format pruned "
            "first, or choose another candidate"
        )


def _params(setup: Any, module: str) -> int:
    return sum(p.numel() for p in setup.handle.module(module).parameters())


def _sublayers(setup: Any, block: str) -> list[tuple[str, int]]:
    """The block's attention and MLP as depth dimensions (granularity: sublayer)."""
    from presso.errors import PressoError

    if setup.experiment.space.granularity == "block":
        return []
    names = [f"{block}.self_attn", f"{block}.mlp"]
    modules = dict(setup.handle.model.named_modules())
    if not all(n in modules for n in names):
        raise PressoError(
            f"space.granularity: sublayer needs blocks with self_attn and mlp modules "
            f"({setup.experiment.model} has none); use granularity: block"
        )
    return [(n, _params(setup, n)) for n in names]
