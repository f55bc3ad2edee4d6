"""The sparsity space: a sparsity level per unit under a minimum mean sparsity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field, field_validator

from presso.schema import MAX_WINDOWS, Strict
from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace, unit_dims
from presso.spaces._kinds import Kind, register

#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "mean_sparsity"


def sparsity_level(percent: int) -> bool:
    """Whether ``percent`` is a sparsity level: 0..99 percent of a layer's weights pruned."""
    return 0 <= percent < 100


class SparsityConfig(Strict):
    """The ``sparsity:`` section: how the sparsity levels are built."""

    operator: Literal["sparsegpt", "wanda", "magnitude"] = "sparsegpt"
    levels: list[int] = Field(default_factory=lambda: [0, 30, 40, 50, 60, 70, 80, 90])
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    damp: float = Field(0.01, gt=0, lt=1)
    calibration: int = Field(
        16, ge=1, le=MAX_WINDOWS, description="calibration windows for Wanda/SparseGPT statistics"
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not sparsity_level(s)]
        if not v or bad:
            raise ValueError(f"sparsity levels are percent in 0..99, got {bad or v}")
        if len(set(v)) != len(v):
            raise ValueError("levels must be distinct")
        return sorted(v)


class MeanSparsity(Constraint):
    """Parameter-weighted mean sparsity (percent) of the sparsity dimensions >= ``limit``."""

    sense = ">="
    metric = BUDGET

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        num = den = 0
        for d, i in zip(space.dims, config):
            if d.kind == SparsityKind.name:
                num += d.weight * d.levels[i]
                den += d.weight
        return num / den if den else 0.0

    def budget(self, space: SearchSpace) -> Budget | None:
        """-sum(params x percent) <= -limit x params, exact for whole-number percents."""
        dims = [d for d in space.dims if d.kind == SparsityKind.name]
        if not all(float(v).is_integer() for d in dims for v in d.levels):
            return None
        costs = tuple(
            tuple(-d.weight * int(v) if d.kind == SparsityKind.name else 0 for v in d.levels)
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
    return unit_dims(units, ordered, kind=SparsityKind.name, suffix=suffix)


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


@register
class SparsityKind(Kind):
    """Percent of a unit's weights pruned (0 leaves it dense), under a minimum mean sparsity."""

    name = "sparsity"
    label = "sparsity (%)"
    dense = 0
    order = 0  # before bits: a pruned unit's kept weights are rounded
    section = "sparsity"
    config = SparsityConfig
    budget = BUDGET
    space_fields = {
        BUDGET: (
            float | None,
            Field(
                None, ge=0, lt=100, description="minimum parameter-weighted mean sparsity, percent"
            ),
        )
    }
    settings = {"sparsity_method": "operator", "pattern": "pattern"}
    timing_key = "sparse_db_s"
    colorscale = "Reds"

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        return sparsity_dims(units, setup.experiment.sparsity.levels, suffix=suffix)

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        return MeanSparsity(limit)

    def check(self, experiment: Any, fail: Any, active: bool) -> None:
        c, limit = experiment.sparsity, getattr(experiment.space, BUDGET)
        if active and limit > max(c.levels):
            fail(
                ("space", BUDGET),
                f"no configuration reaches mean_sparsity >= {limit:g}%: the highest "
                f"level is {max(c.levels)}%; lower it or add a higher level to sparsity.levels",
            )
        if active and c.pattern == "2:4" and c.levels != [0, 50]:
            fail(
                ("sparsity", "levels"),
                "the 2:4 pattern has exactly the levels [0, 50]; set levels: [0, 50]",
            )

    def operator_options(self, section: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"pattern": section.pattern}
        if section.operator == "sparsegpt":
            options["damp"] = section.damp
        return options

    def check_model(self, experiment: Any, handle: Any) -> None:
        from presso.errors import PressoError

        if experiment.sparsity.pattern == "2:4":
            bad = sorted({u.shape[1] for u in handle.units if u.shape[1] % 4})
            if bad:
                raise PressoError(
                    f"sparsity.pattern: 2:4 needs input widths divisible by 4, got {bad[0]}"
                )

    def refusal(self, plan: Any, fmt: str) -> str | None:
        from presso.errors import layer_list

        pruned = [f"{n} {s}%" for n, s in plan.compressed(self.name).items()]
        if not pruned:
            return None
        return (
            f"--format {fmt} cannot express sparsity, and this candidate prunes "
            f"{len(pruned)} layers: {layer_list(pruned)}; export its weights with "
            "--format hf (or the plan with --format plan), or choose another candidate"
        )

    def realise(self, db: Any, unit: str, level: int, weight: Any) -> Any:
        return db.weight(unit, int(level))
