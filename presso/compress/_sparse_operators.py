"""The pruning operators: magnitude, Wanda and SparseGPT behind the :class:`Operator` interface.

Their levels are sparsity in integer percent (``kind = "sparsity"``); see :mod:`._sparse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from presso.compress._base import Operator, register
from presso.compress._sparse import (
    PATTERNS,
    SparseWeight,
    magnitude_prune,
    sparsegpt_prune,
    sparsegpt_prune_many,
    wanda_prune,
)


class Pruner(Operator):
    """An operator whose ``level`` is the percentage of weights zeroed, in a ``pattern``
    (``"unstructured"`` or ``"2:4"``)."""

    kind = "sparsity"
    version = 1

    def __init__(self, *, pattern: str = "unstructured") -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        self.pattern = pattern

    def key(self) -> dict[str, Any]:
        return {**super().key(), "pattern": self.pattern}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> SparseWeight:
        return SparseWeight.from_tensors(tensors, meta)

    def _hessian(self, hessian: torch.Tensor | None) -> torch.Tensor:
        if hessian is None:
            raise ValueError(
                f"the {self.name} operator needs the layer's calibration Hessian, got None"
            )
        return hessian


@register
class MagnitudeOperator(Pruner):
    """Zero the smallest ``|w|`` per output row; needs no data."""

    name = "magnitude"
    needs_hessian = False

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None = None
    ) -> SparseWeight:
        return magnitude_prune(weight, level, pattern=self.pattern)


@register
class WandaOperator(Pruner):
    """Wanda: zero the lowest ``|w| * ||x||₂`` per output row; reads only ``diag(H)``."""

    name = "wanda"
    needs_hessian = True

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> SparseWeight:
        return wanda_prune(weight, self._hessian(hessian), level, pattern=self.pattern)


@register
class SparseGptOperator(Pruner):
    """SparseGPT with ``damp`` (fraction of mean diag H) and ``block_size`` (columns per mask
    selection)."""

    name = "sparsegpt"
    needs_hessian = True

    def __init__(
        self, *, pattern: str = "unstructured", damp: float = 0.01, block_size: int = 128
    ) -> None:
        super().__init__(pattern=pattern)
        if not damp > 0:
            raise ValueError(f"damp must be positive, got {damp!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if pattern == "2:4" and block_size % 4:
            raise ValueError(f"the 2:4 pattern needs block_size divisible by 4, got {block_size}")
        self.damp = float(damp)
        self.block_size = block_size

    def key(self) -> dict[str, Any]:
        # block_size changes the mask (scores are re-read once per block), not just rounding.
        return {**super().key(), "damp": self.damp, "block_size": self.block_size}

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> SparseWeight:
        return sparsegpt_prune(
            weight,
            self._hessian(hessian),
            level,
            pattern=self.pattern,
            damp=self.damp,
            block_size=self.block_size,
        )

    def compress_many(
        self, weight: torch.Tensor, levels: Sequence[int], hessian: torch.Tensor | None
    ) -> list[SparseWeight]:
        # One factorization and one column loop for all levels, as GPTQ does.
        return sparsegpt_prune_many(
            weight,
            self._hessian(hessian),
            levels,
            pattern=self.pattern,
            damp=self.damp,
            block_size=self.block_size,
        )
