"""The GPTQ operator: :func:`gptq_quantize` behind the :class:`Operator` interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from presso.compress._base import Quantizer, register
from presso.compress._gptq import gptq_quantize, gptq_quantize_many
from presso.compress._quant import QuantizedWeight


@register
class GptqOperator(Quantizer):
    """GPTQ with ``damp`` (fraction of mean diag H), ``block_size`` (columns) and ``act_order``."""

    name = "gptq"
    needs_hessian = True

    def __init__(
        self,
        *,
        group_size: int | None = None,
        symmetric: bool = False,
        damp: float = 0.01,
        block_size: int = 128,
        act_order: bool = False,
    ) -> None:
        super().__init__(group_size=group_size, symmetric=symmetric)
        if not damp > 0:
            raise ValueError(f"damp must be positive, got {damp!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.damp = float(damp)
        self.block_size = block_size
        self.act_order = bool(act_order)

    def key(self) -> dict[str, Any]:
        # block_size is listed although it does not change the result mathematically: float
        # rounding differs, and cached levels must be reproducible bit for bit.
        return {
            **super().key(),
            "damp": self.damp,
            "block_size": self.block_size,
            "act_order": self.act_order,
        }

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> QuantizedWeight:
        if hessian is None:
            raise ValueError("the gptq operator needs the layer's calibration Hessian, got None")
        return gptq_quantize(
            weight,
            hessian,
            self.spec(level),
            damp=self.damp,
            block_size=self.block_size,
            act_order=self.act_order,
        )

    def compress_many(
        self, weight: torch.Tensor, levels: Sequence[int], hessian: torch.Tensor | None
    ) -> list[QuantizedWeight]:
        # One factorization and one column loop for all levels (3-4x faster than one by one).
        if hessian is None:
            raise ValueError("the gptq operator needs the layer's calibration Hessian, got None")
        return gptq_quantize_many(
            weight,
            hessian,
            [self.spec(level) for level in levels],
            damp=self.damp,
            block_size=self.block_size,
            act_order=self.act_order,
        )
