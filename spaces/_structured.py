"""The structured space: the percent of heads kept in each attention and of intermediate
channels kept in each FFN, under a budget on the weights kept (ZipLM's knob).

One dimension per attention and per FFN, targeting the unit the operator prunes (``o_proj`` /
``down_proj``; see :mod:`presso.structures`); levels are percents kept from one grid
(``structured.levels``), cheapest first. The budget ``space.kept_params`` is the percent of
the attention and FFN weights (producers and consumers) left, at most; it is a sum of exact
integer costs (kept structures x weights per structure), so ``dp`` and EvoPress hold it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field, field_validator

from presso.schema import MAX_WINDOWS, Strict
from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._kinds import Kind, register

#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "kept_params"
#: The level that keeps every structure.
ALL = 100


class StructuredConfig(Strict):
    """The ``structured:`` section: how heads and FFN channels are removed."""

    operator: Literal["ziplm"] = "ziplm"
    levels: list[int] = Field(
        default_factory=lambda: [100, 75, 50, 25],
        description="percent of each attention's heads and each FFN's channels kept",
    )
    damp: float = Field(0.01, gt=0, lt=1)
    calibration: int = Field(
        16,
        ge=1,
        le=MAX_WINDOWS,
        description="calibration windows whose activations give the Hessians",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 0 < p <= ALL]
        if not v or bad:
            raise ValueError(f"structured levels are percent kept in 1..100, got {bad or v}")
        if len(set(v)) != len(v):
            raise ValueError("levels must be distinct")
        return sorted(v)


@dataclass(frozen=True)
class StructureDimension(Dimension):
    """A structured dimension: ``structures`` heads (KV groups) or channels, of ``weight``
    weights in all, each level a percent of them kept (see :class:`presso.structures.Structure`)."""

    structures: int = 1
    #: Every unit whose weights the structures span (consumer, producers, k/v).
    members: tuple[str, ...] = ()
    #: What each level keeps (``6/9 heads (2/3 KV)``, ``768/1536``), for the views.
    names: tuple[str, ...] = ()

    def level_name(self, index: int) -> str | None:
        return self.names[index] if self.names else None

    def kept_params(self, index: int) -> int:
        """Weights kept at level index ``index`` (exact: every structure holds as many)."""
        return int(self.kept_fraction(index) * self.weight)

    def kept_fraction(self, index: int) -> Fraction:
        """The fraction of the structures (and of each member's weights) kept at ``index``."""
        from presso.structures import kept_structures

        return Fraction(kept_structures(self.levels[index], self.structures), self.structures)


class MaxKept(Constraint):
    """Weights of the attentions and FFNs left, at most ``limit`` percent of theirs."""

    sense = "<="
    metric = BUDGET

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        dims = _structured(space)
        kept = sum(space.dims[d].kept_params(config[d]) for d in dims)
        total = sum(space.dims[d].weight for d in dims)
        return 100.0 * kept / total if total else 100.0

    def budget(self, space: SearchSpace) -> Budget | None:
        """sum(kept weights) <= limit% x weights, exact in integers."""
        mine = set(_structured(space))
        costs = tuple(
            tuple(d.kept_params(i) if j in mine else 0 for i in range(len(d.levels)))  # type: ignore[attr-defined]
            for j, d in enumerate(space.dims)
        )
        total = sum(space.dims[d].weight for d in mine)
        return Budget(costs, math.floor(Fraction(str(self.limit)) * total / 100))

    def describe(self) -> str:
        return f"kept_params <= {self.limit:g}%"


def _structured(space: SearchSpace) -> list[int]:
    return [i for i, d in enumerate(space.dims) if d.kind == StructuredKind.name]


def structured_dims(
    structures: Sequence[tuple[str, int, int]],
    levels: Sequence[int],
    *,
    suffix: str = "",
    members: Sequence[tuple[str, ...]] = (),
    describe: Sequence[Callable[[int], str]] = (),
) -> list[StructureDimension]:
    """One dimension per ``(consumer unit, structures, weights)``, levels ascending (cheapest
    first), with the full level (100) always among them; ``members``: per structure, the units
    its weights are in (for the size and parameter budgets); ``describe``: per structure, what
    a level keeps (:meth:`presso.structures.Structure.describe`)."""
    ordered = tuple(sorted({*(int(p) for p in levels), ALL}))
    return [
        StructureDimension(
            name=name + suffix,
            levels=ordered,
            weight=params,
            group=f"{count}x{params // count}",
            kind=StructuredKind.name,
            target=name,
            structures=count,
            members=tuple(members[i]) if members else (name,),
            names=tuple(describe[i](p) for p in ordered) if describe else (),
        )
        for i, (name, count, params) in enumerate(structures)
    ]


@register
class StructuredKind(Kind):
    """Percent of each attention's heads and each FFN's channels kept (100 keeps all)."""

    name = "structured"
    label = "kept heads / FFN width (%)"
    dense = ALL
    order = -1  # first: a unit's kept columns are then rounded to its bits
    section = "structured"
    config = StructuredConfig
    budget = BUDGET
    space_fields = {
        BUDGET: (
            float | None,
            Field(
                None,
                gt=0,
                le=100,
                description="percent of the attention and FFN weights kept, at most",
            ),
        )
    }
    settings = {"structured_method": "operator"}
    timing_key = "structured_db_s"
    colorscale = "Blues"

    def compressed(self, level: float) -> bool:
        return level < ALL

    def built_levels(self, section: Any) -> list[int]:
        return [p for p in section.levels if p < ALL]

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        from presso.structures import model_structures

        b = setup.handle.block_of(block)
        mine = [s for s in model_structures(setup.handle) if s.block == b]
        dims = structured_dims(
            [(s.consumer, s.count, s.params) for s in mine],
            setup.experiment.structured.levels,
            suffix=suffix,
            members=[(s.consumer, *s.producers, *s.kv) for s in mine],
            describe=[s.describe for s in mine],
        )
        return list(dims)

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        return MaxKept(limit)

    def check(self, experiment: Any, fail: Any, active: bool) -> None:
        c, limit = experiment.structured, getattr(experiment.space, BUDGET)
        if active and "sparsity" in experiment.space.kinds():
            fail(
                ("space", "kind"),
                "structured pruning and unstructured sparsity cannot share the attentions and "
                "FFNs: runtimes build pruned heads and channels dense or quantized, not sparse; "
                "leave out mean_sparsity (or kept_params)",
            )
        if active and limit < min(c.levels):
            fail(
                ("space", BUDGET),
                f"no configuration keeps as little as {limit:g}%: the lowest level keeps "
                f"{min(c.levels)}%; raise kept_params or add a lower level to structured.levels",
            )
        if active and c.calibration > experiment.data.calibration:
            fail(
                ("structured", "calibration"),
                f"{c.calibration} windows asked for, but the calibration pool "
                f"(data.calibration) has {experiment.data.calibration}; lower it",
            )

    def operator_options(self, section: Any) -> dict[str, Any]:
        return {"damp": section.damp}

    def check_model(self, experiment: Any, handle: Any) -> None:
        from presso.errors import PressoError
        from presso.structures import model_structures

        structures = model_structures(handle)  # refuses an architecture it cannot prune
        group = experiment.compress.group_size
        if "bits" not in experiment.space.kinds() or group is None:
            return

        def fits(percent: int) -> bool:  # every kept width a whole number of groups
            return all(s.kept(percent) * s.group_size % group == 0 for s in structures)

        bad = [p for p in experiment.structured.levels if not fits(p)]
        if bad:
            s = next(s for s in structures if s.kept(bad[0]) * s.group_size % group)
            good = [p for p in range(100, 0, -1) if fits(p)]
            raise PressoError(
                f"structured.levels: {bad[0]}% keeps {s.describe(bad[0])} "
                f"{'heads' if s.what == 'heads' else 'channels'} of "
                f"{s.consumer}, {s.kept(bad[0]) * s.group_size} input columns, which "
                f"compress.group_size {group} does not divide, so bits cannot round them; "
                f"use levels whose widths are whole groups (for {experiment.model}: "
                f"{', '.join(map(str, _spread_levels(good)))}, ...) or group_size: null"
            )

    def show(
        self,
        targets: Sequence[str],
        values: Sequence[float],
        *,
        model: Callable[[], Any] | None = None,
    ) -> str | None:
        """Heads (KV heads under GQA) and FFN widths kept per block, out of the model's."""
        from presso.structures import consumers

        if model is None:
            return None
        structures = consumers(model())
        rows: dict[int, dict[str, str]] = {}
        for target, value in zip(targets, values):
            s = structures[target]
            rows.setdefault(s.block, {})[s.what] = f"{s.describe(value)} ({value:g}%)"
        head = ("block", "heads kept", "FFN width kept")
        cells = [[str(b), r.get("heads", "-"), r.get("ffn", "-")] for b, r in sorted(rows.items())]
        widths = [max(len(c[i]) for c in [list(head), *cells]) for i in range(3)]
        lines = [" ".join(f"{c:>{w}}" for c, w in zip(row, widths)) for row in [head, *cells]]
        return "heads and FFN widths of the search's best:\n" + "\n".join(lines)

    def realise(self, db: Any, unit: str, level: int, weight: Any) -> Any:
        # First of the kinds (order): the kept, OBS-updated columns, which bits may round
        # next (the evaluator runs the masked weight of the dense shape).
        return db.load(unit, int(level))


def _spread_levels(levels: Sequence[int], k: int = 6) -> list[int]:
    """Up to ``k`` of ``levels`` (descending), evenly spaced: examples for a message."""
    if len(levels) <= k:
        return list(levels)
    return [levels[round(i * (len(levels) - 1) / (k - 1))] for i in range(k)]
