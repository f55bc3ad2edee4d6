"""The bitwidth space: one bits choice per unit under a parameter-weighted mean-bits budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from presso.schema import MAX_WINDOWS, Strict
from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace, unit_dims
from presso.spaces._kinds import Kind, register

if TYPE_CHECKING:
    import torch

#: Bits at or above which a unit is left dense (the level experiment files write for dense).
DENSE_BITS = 16
#: Input columns per quantization group unless an experiment says otherwise.
GROUP_SIZE = 128
#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "mean_bits"


def bits_level(bits: int) -> bool:
    """Whether ``bits`` is a weight level presso builds: 2..8 bits, or 16 (dense)."""
    return 2 <= bits <= 8 or bits == DENSE_BITS


class CompressConfig(Strict):
    """The ``compress:`` section: how the bits levels are built."""

    operator: Literal["gptq", "rtn"] = "gptq"
    levels: list[int] = Field(default_factory=lambda: [2, 3, 4, 8])
    group_size: int | None = Field(GROUP_SIZE, ge=8, le=1 << 16)
    symmetric: bool = False
    damp: float = Field(0.01, gt=0, lt=1)
    act_order: bool = False
    calibration: int = Field(
        16,
        ge=1,
        le=MAX_WINDOWS,
        description="calibration windows whose activations give GPTQ its Hessians",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one level")
        bad = [b for b in v if not bits_level(b)]
        if bad:
            raise ValueError(f"bits must be 2..8 (or 16 for dense), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError("levels must be distinct")
        return sorted(v)


class MeanBits(Constraint):
    """Parameter-weighted mean bits <= ``limit``, checked in exact rational arithmetic
    so that a configuration exactly on the budget is never refused by rounding."""

    metric = BUDGET

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
            if d.kind == BitsKind.name
        ]
        return sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)

    def _table(self, space: SearchSpace) -> tuple[np.ndarray, int] | None:
        """Per dimension and level, parameters × bits, when every level is a whole number."""
        key = id(space)
        if key not in self._tables:
            dims = [d for d in space.dims if d.kind == BitsKind.name]
            if all(float(v).is_integer() for d in dims for v in d.levels):
                width = max(len(d.levels) for d in space.dims)
                table = np.zeros((len(space.dims), width), dtype=np.int64)
                for i, d in enumerate(space.dims):
                    if d.kind == BitsKind.name:
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
    return unit_dims(units, ordered, kind=BitsKind.name, suffix=suffix)


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


@register
class BitsKind(Kind):
    """Weight bits per unit (2..8; 16 leaves it dense), under a mean-bits budget."""

    name = "bits"
    label = "bits"
    dense = DENSE_BITS
    order = 1  # after sparsity: a pruned unit's kept weights are rounded
    section = "compress"
    config = CompressConfig
    budget = BUDGET
    space_fields = {
        BUDGET: (
            float | None,
            Field(None, gt=0, le=DENSE_BITS, description="parameter-weighted mean bits budget"),
        )
    }
    settings = {"method": "operator", "group_size": "group_size", "symmetric": "symmetric"}
    timing_key = "level_db_s"

    def compressed(self, level: float) -> bool:
        return level < DENSE_BITS

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        return bits_dims(units, setup.experiment.compress.levels, suffix=suffix)

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        return MeanBits(limit)

    def check(self, experiment: Any, fail: Any, active: bool) -> None:
        c, limit = experiment.compress, getattr(experiment.space, BUDGET)
        if active and limit < min(c.levels):
            fail(
                ("space", BUDGET),
                f"no configuration can meet mean_bits <= {limit:g}: the lowest level is "
                f"{min(c.levels)} bits; raise mean_bits or add a lower level to compress.levels",
            )
        if active and c.calibration > experiment.data.calibration:
            fail(
                ("compress", "calibration"),
                f"{c.calibration} windows asked for, but the "
                f"calibration pool (data.calibration) has {experiment.data.calibration}; lower it",
            )

    def built_levels(self, section: Any) -> list[int]:
        return [b for b in section.levels if b < DENSE_BITS]

    def operator_options(self, section: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"group_size": section.group_size, "symmetric": section.symmetric}
        if section.operator == "gptq":
            options.update(damp=section.damp, act_order=section.act_order)
        return options

    def check_model(self, experiment: Any, handle: Any) -> None:
        from presso.errors import PressoError

        g = experiment.compress.group_size
        if g is not None:
            widths = sorted({u.shape[1] for u in handle.units})
            bad = [w for w in widths if w % g]
            if bad:
                raise PressoError(
                    f"compress.group_size: {g} does not divide the input width {bad[0]} "
                    f"of some of {experiment.model}'s layers; choose a divisor of "
                    f"{', '.join(map(str, widths))}, or null for per-channel"
                )

    def realise(
        self, db: Any, unit: str, level: int, weight: torch.Tensor | None
    ) -> torch.Tensor | None:
        if weight is None:
            return db.weight(unit, int(level))
        # Already pruned: round the kept weights to ``level`` bits on the fly (RTN on the
        # operator's grid); pruned weights stay zero. Pruned heads or channels: the kept
        # columns are rounded as the smaller Linear the runtimes build (its own groups).
        from presso.compress import QuantSpec, StructuredWeight, quantize_rtn

        op = db.operator
        spec = QuantSpec(bits=int(level), group_size=op.group_size, symmetric=op.symmetric)
        if isinstance(weight, StructuredWeight):
            return weight.quantized(spec)
        return quantize_rtn(weight, spec).dequantize() * (weight != 0)
