"""Budgets on what is left of the model: parameters kept, and bytes of the compressed weights.

Both look across kinds: a unit's weights count only if its block (and sublayer) is kept,
scaled by the fraction of its heads or channels kept (structured), by its density
(1 − sparsity), and — for size — by its bits, in the packed format
presso writes (:func:`packed_bytes`, which :func:`presso.cost_models.disk_bytes` uses).
"""

from __future__ import annotations

from collections.abc import Sequence

from presso.spaces._base import Config, Constraint, SearchSpace
from presso.spaces._bits import DENSE_BITS, BitsKind
from presso.spaces._depth import DROPPED, DepthKind
from presso.spaces._sparsity import SparsityKind
from presso.spaces._structured import StructuredKind


class _UnitBudget(Constraint):
    """Shared bookkeeping: for each unit, the dimensions that decide its fate."""

    def __init__(self, limit: float, units: Sequence[tuple[str, int]]) -> None:
        self.limit = float(limit)
        self.units = list(units)
        self._plans: dict[int, list[tuple[int, int | None, int | None, list[int]]]] = {}
        self._structured: dict[int, list[int | None]] = {}

    def _plan(self, space: SearchSpace) -> list[tuple[int, int | None, int | None, list[int]]]:
        """Per unit: (params, its bits dim, its sparsity dim, the depth dims that remove it)."""
        key = id(space)
        if key not in self._plans:
            plan, structured = [], []
            for name, params in self.units:
                bits = sparsity = shrink = None
                depth = []
                for i, d in enumerate(space.dims):
                    if d.target == name and d.kind == BitsKind.name:
                        bits = i
                    elif d.target == name and d.kind == SparsityKind.name:
                        sparsity = i
                    elif d.kind == DepthKind.name and name.startswith(d.target + "."):
                        depth.append(i)
                    elif d.kind == StructuredKind.name and name in d.members:  # type: ignore[attr-defined]
                        shrink = i
                plan.append((params, bits, sparsity, depth))
                structured.append(shrink)
            self._plans[key] = plan
            self._structured[key] = structured
        return self._plans[key]

    def _fractions(self, space: SearchSpace, config: Config) -> list[float]:
        """Per unit, the fraction of its weights its pruned heads or channels leave (1: all)."""
        self._plan(space)
        return [
            1.0 if d is None else float(space.dims[d].kept_fraction(config[d]))  # type: ignore[attr-defined]
            for d in self._structured[id(space)]
        ]

    @staticmethod
    def _kept(space: SearchSpace, config: Config, depth: list[int]) -> bool:
        return all(space.dims[i].levels[config[i]] != DROPPED for i in depth)


class MaxParams(_UnitBudget):
    """Nonzero weights of the compressible units left, at most ``limit`` (pruned and dropped
    weights do not count)."""

    metric = "params"

    def value(self, space: SearchSpace, config: Config) -> float:
        total = 0.0
        for (params, _, sparsity, depth), kept in zip(
            self._plan(space), self._fractions(space, config)
        ):
            if self._kept(space, config, depth):
                s = space.dims[sparsity].levels[config[sparsity]] if sparsity is not None else 0
                total += params * kept * (1 - s / 100)
        return total

    def describe(self) -> str:
        return f"params <= {self.limit:.4g}"


class MaxSize(_UnitBudget):
    """Bytes of the compressible units' weights in their packed format, at most ``limit`` MB."""

    metric = "size_mb"

    def __init__(
        self,
        limit_mb: float,
        units: Sequence[tuple[str, int]],
        *,
        group_size: int | None,
        in_features: dict[str, int],
    ) -> None:
        super().__init__(limit_mb, units)
        self.group_size = group_size
        self.in_features = in_features

    def value(self, space: SearchSpace, config: Config) -> float:
        total = 0.0
        plan, fractions = self._plan(space), self._fractions(space, config)
        for (name, _), (params, bits, sparsity, depth), kept in zip(self.units, plan, fractions):
            if not self._kept(space, config, depth):
                continue
            b = space.dims[bits].levels[config[bits]] if bits is not None else DENSE_BITS
            s = space.dims[sparsity].levels[config[sparsity]] if sparsity is not None else 0
            width = self.in_features[name]
            # Pruned heads or channels remove whole rows or columns: the weight is that much
            # smaller, in the same format (a group grid per row stays as it is).
            packed = packed_bytes(params // width, width, int(b), int(s), self.group_size)
            total += packed * kept
        return total / 1e6

    def describe(self) -> str:
        return f"size_mb <= {self.limit:g}"


def packed_bytes(
    out_features: int, in_features: int, bits: int, sparsity: int, group_size: int | None
) -> float:
    """Bytes of a linear layer's weight in presso's packed format: codes at ``bits`` (dense
    fp16 at 16), an fp16 scale and zero per group when quantized, a 1-bit mask when pruned to
    ``sparsity`` percent (:func:`presso.cost_models.disk_bytes` prices a ``LinearOp`` so)."""
    params = out_features * in_features
    total = params * (1 - sparsity / 100) * min(bits, DENSE_BITS)
    if bits < DENSE_BITS:
        total += params / (group_size or in_features) * 32  # fp16 scale + zero per group
    if sparsity > 0:
        total += params  # 1-bit mask
    return total / 8
