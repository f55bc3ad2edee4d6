"""Search spaces: one dimension per compressible unit, plus constraints.

A configuration is a tuple of level *indices*, one per dimension; ``Dimension.levels``
maps an index to its value (bits, sparsity, ...), ascending in cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Config = tuple[int, ...]


@dataclass(frozen=True)
class Dimension:
    """One searchable unit.

    name: the unit's fully qualified module name.
    levels: the values this unit may take, ascending (e.g. bits ``(2, 3, 4, 8)``).
    weight: the unit's parameter count, used by parameter-weighted constraints.
    group: units of one group have the same shape, so a level switch between two of them
        moves the same number of parameters up and down.
    """

    name: str
    levels: tuple[float, ...]
    weight: int
    group: str

    def __post_init__(self) -> None:
        if not self.levels or list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"{self.name}: levels must be strictly ascending, got {self.levels}")
        if self.weight <= 0:
            raise ValueError(f"{self.name}: weight must be positive, got {self.weight}")


class Constraint(ABC):
    """A limit on a configuration: feasible when ``value(config) <= limit``."""

    limit: float
    #: The name of the constrained quantity, as stored with every evaluation (``mean_bits``).
    metric: str = "constraint"

    @abstractmethod
    def value(self, space: SearchSpace, config: Config) -> float:
        """The constrained quantity of ``config`` (e.g. mean bits)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description, e.g. ``mean_bits <= 3.0``."""

    def feasible(self, space: SearchSpace, config: Config) -> bool:
        return self.value(space, config) <= self.limit + 1e-9


class SearchSpace:
    """Dimensions and constraints; encodes configurations to vectors and back."""

    def __init__(self, dims: Sequence[Dimension], constraints: Sequence[Constraint] = ()) -> None:
        if not dims:
            raise ValueError("a search space needs at least one dimension")
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ValueError("dimension names must be unique")
        self.dims: tuple[Dimension, ...] = tuple(dims)
        self.constraints: tuple[Constraint, ...] = tuple(constraints)
        self.weights = np.array([d.weight for d in dims], dtype=np.int64)

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

    def uniform(self, level_value: float) -> Config:
        """Every dimension at the level whose value is ``level_value``."""
        return tuple(d.levels.index(level_value) for d in self.dims)

    def best_uniform(self) -> Config | None:
        """The costliest configuration with one level value for every unit that is feasible."""
        shared = set(self.dims[0].levels).intersection(*(d.levels for d in self.dims))
        for value in sorted(shared, reverse=True):
            config = self.uniform(value)
            if self.is_feasible(config):
                return config
        return None

    def lowest(self) -> Config:
        return tuple(0 for _ in self.dims)

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
