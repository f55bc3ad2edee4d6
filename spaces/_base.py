"""Search spaces: one dimension per compressible unit, plus constraints.

A configuration is a tuple of level *indices*, one per dimension; ``Dimension.levels``
maps an index to its value (bits, sparsity, ...), ascending in cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.spaces._kinds import KINDS

if TYPE_CHECKING:
    from presso.plan import Plan

Config = tuple[int, ...]


@dataclass(frozen=True)
class Dimension:
    """One searchable choice.

    name: unique in the space; the unit's fully qualified module name for a single-kind space.
    levels: the values it may take, ordered by *cost*, cheapest first — bits ascending
        ``(2, 3, 4, 8)``; sparsity in percent descending ``(70, 60, 50, 0)``; depth ``(0, 1)``
        (dropped, kept). Strategies rely on this order: a higher level index costs more.
    weight: parameters the choice governs, used by parameter-weighted constraints.
    group: dimensions of one group have the same shape, so a level switch between two of them
        moves the same number of parameters up and down.
    kind: a registered kind's name (``presso.spaces.KINDS``: bits, sparsity, depth).
    target: the module the choice applies to (a Linear for bits/sparsity; a block, or its
        ``self_attn`` / ``mlp`` for depth); defaults to ``name``.
    """

    name: str
    levels: tuple[float, ...]
    weight: int
    group: str
    kind: str = "bits"
    target: str = ""

    def __post_init__(self) -> None:
        values = list(self.levels)
        monotone = values == sorted(set(values)) or values == sorted(set(values), reverse=True)
        if not values or not monotone:
            raise ValueError(f"{self.name}: levels must be strictly monotone, got {self.levels}")
        if self.weight <= 0:
            raise ValueError(f"{self.name}: weight must be positive, got {self.weight}")
        if self.kind not in KINDS:
            raise ValueError(
                f"{self.name}: kind must be one of {tuple(KINDS.available())}, got {self.kind!r}"
            )
        if not self.target:
            object.__setattr__(self, "target", self.name)

    def level_name(self, index: int) -> str | None:
        """What level ``index`` keeps, in the model's own terms, where a percent or a bit
        width does not say it (``6/9 heads (2/3 KV)``); None: the level value says it."""
        return None


def unit_dims(
    units: Sequence[tuple[str, tuple[int, int]]],
    levels: Sequence[float],
    *,
    kind: str,
    suffix: str = "",
) -> list[Dimension]:
    """One ``kind`` dimension per ``(name, (out_features, in_features))`` unit, all with
    ``levels`` (already ordered cheapest first); units of one shape share a group."""
    return [
        Dimension(
            name=name + suffix,
            levels=tuple(levels),
            weight=shape[0] * shape[1],
            group=f"{shape[0]}x{shape[1]}",
            kind=kind,
            target=name,
        )
        for name, shape in units
    ]


@dataclass(frozen=True)
class Budget:
    """A constraint written as an integer knapsack: feasible when
    ``sum(costs[d][config[d]]) <= limit``. Exact (no rounding) for the budgets that are sums
    over units: the exact solver (``dp``) and the fair-uniform baseline work on it."""

    costs: tuple[tuple[int, ...], ...]
    limit: int

    def reduced(self) -> Budget:
        """The same budget with each dimension's cheapest level at cost 0 and every cost and
        the limit divided by their common divisor (smaller tables for the solver)."""
        import math

        low = [min(row) for row in self.costs]
        costs = [tuple(c - m for c in row) for row, m in zip(self.costs, low)]
        limit = self.limit - sum(low)
        g = math.gcd(*(c for row in costs for c in row))
        if g > 1:
            costs = [tuple(c // g for c in row) for row in costs]
            limit = limit // g if limit >= 0 else -((-limit + g - 1) // g)
        return Budget(tuple(costs), limit)


class Constraint(ABC):
    """A limit on a configuration: feasible when ``value(config) <= limit`` (or ``>=`` for a
    constraint whose ``sense`` is ``">="``, such as a minimum mean sparsity).

    Constraints must get no easier to meet as any level index rises (levels ascend in cost):
    strategies fill a budget by raising levels until the next raise does not fit.
    """

    sense: str = "<="

    limit: float
    #: The name of the constrained quantity, as stored with every evaluation (``mean_bits``).
    metric: str = "constraint"

    @abstractmethod
    def value(self, space: SearchSpace, config: Config) -> float:
        """The constrained quantity of ``config`` (e.g. mean bits)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description, e.g. ``mean_bits <= 3.0``."""

    def budget(self, space: SearchSpace) -> Budget | None:
        """This constraint as an integer knapsack over ``space``, or None when it is not a sum
        of per-dimension costs (latency, packed size with shared overheads...)."""
        return None

    def feasible(self, space: SearchSpace, config: Config) -> bool:
        if self.sense == ">=":
            return self.value(space, config) >= self.limit - 1e-9
        return self.value(space, config) <= self.limit + 1e-9


class SearchSpace:
    """Dimensions and constraints; encodes configurations to vectors and back."""

    def __init__(
        self,
        dims: Sequence[Dimension],
        constraints: Sequence[Constraint] = (),
        reports: Sequence[Constraint] = (),
        *,
        settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        if not dims:
            raise ValueError("a search space needs at least one dimension")
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ValueError("dimension names must be unique")
        self.dims: tuple[Dimension, ...] = tuple(dims)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)
        #: Quantities stored with every evaluation without limiting anything (latency, size).
        self.reports: tuple[Constraint, ...] = tuple(reports)
        self.weights = np.array([d.weight for d in dims], dtype=np.int64)
        #: Per kind, the plan-entry fields of a compressed unit besides its level (how the
        #: levels were built: ``{"bits": {"method": "gptq", "group_size": 128, ...}}``).
        self.settings: dict[str, dict[str, Any]] = dict(settings or {})

    def __len__(self) -> int:
        return len(self.dims)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def values(self, config: Config) -> list[float]:
        """The level value (e.g. bits) of every dimension."""
        return [d.levels[i] for d, i in zip(self.dims, config, strict=True)]

    def validate(self, config: Config) -> None:
        if len(config) != len(self.dims):
            raise ValueError(f"config has {len(config)} entries, space has {len(self.dims)}")
        for d, i in zip(self.dims, config):
            if not 0 <= i < len(d.levels):
                raise ValueError(f"{d.name}: level index {i} out of range 0..{len(d.levels) - 1}")

    def metrics(self, config: Config) -> dict[str, float]:
        """What the constraints and reports measure of ``config`` (e.g. mean_bits, latency_ms)."""
        return {c.metric: c.value(self, config) for c in (*self.constraints, *self.reports)}

    def is_feasible(self, config: Config) -> bool:
        return all(c.feasible(self, config) for c in self.constraints)

    def encode(self, config: Config) -> np.ndarray:
        """The level values as a float vector."""
        return np.asarray(self.values(config), dtype=np.float64)

    def decode(self, vector: Sequence[float]) -> Config:
        """The nearest level of each dimension to ``vector``'s entry."""
        if len(vector) != len(self.dims):
            raise ValueError(f"vector has {len(vector)} entries, space has {len(self.dims)}")
        return tuple(
            int(np.argmin(np.abs(np.asarray(d.levels) - v))) for d, v in zip(self.dims, vector)
        )

    def kinds(self) -> list[str]:
        """The kinds of dimension in this space, in order of first appearance."""
        return list(dict.fromkeys(d.kind for d in self.dims))

    def uniform(self, level_value: float, kind: str | None = None) -> Config:
        """Every dimension (of ``kind``; others at their lowest level) at ``level_value``."""
        return tuple(
            d.levels.index(level_value) if kind in (None, d.kind) else 0 for d in self.dims
        )

    def best_uniform(self) -> Config | None:
        """The costliest feasible configuration that gives every dimension of a kind one value.

        Several kinds (a joint space) each get their own value; among feasible combinations
        the one with the most level steps wins.
        """
        import itertools

        kinds = self.kinds()
        choices = []
        for kind in kinds:
            dims = [d for d in self.dims if d.kind == kind]
            shared = set(dims[0].levels).intersection(*(d.levels for d in dims))
            choices.append([v for v in dims[0].levels if v in shared])
        best: tuple[int, Config] | None = None
        for values in itertools.product(*choices):
            chosen = dict(zip(kinds, values))
            config = tuple(d.levels.index(chosen[d.kind]) for d in self.dims)
            if self.is_feasible(config) and (best is None or sum(config) > best[0]):
                best = (sum(config), config)
        if best is None:
            return None
        return self._keep_depth(best[1])

    def _keep_depth(self, config: Config) -> Config:
        """Depth has no meaningful uniform value (all kept breaks the budget, all dropped wrecks
        the model): keep blocks in order while the budget allows, i.e. drop the last ones."""
        out = list(config)
        for d, dim in enumerate(self.dims):
            if KINDS.get(dim.kind).per_unit:
                continue
            while out[d] < len(dim.levels) - 1:
                out[d] += 1
                if not self.is_feasible(tuple(out)):
                    out[d] -= 1
                    break
        return tuple(out)

    def lowest(self) -> Config:
        return tuple(0 for _ in self.dims)

    def plan(self, config: Config) -> Plan:
        """The plan of ``config``: each unit's level of each kind, and the modules dropped."""
        from presso.plan import Plan

        self.validate(config)
        return Plan.from_levels(
            [d.target for d in self.dims],
            [d.kind for d in self.dims],
            self.values(config),
            settings=self.settings,
        )

    def to_dict(self, config: Config) -> dict[str, float]:
        return dict(zip(self.names, self.values(config)))

    def from_dict(self, values: dict[str, float]) -> Config:
        missing = set(self.names) - set(values)
        if missing:
            raise ValueError(f"missing units: {sorted(missing)[:3]}...")
        return tuple(d.levels.index(values[d.name]) for d in self.dims)

    def describe(self) -> str:
        cons = ", ".join(c.describe() for c in self.constraints) or "none"
        return f"{len(self.dims)} units, constraints: {cons}"
