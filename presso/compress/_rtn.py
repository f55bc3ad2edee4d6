"""Round-to-nearest: each weight to the nearest point of its group's min/max grid, no data."""

from __future__ import annotations

import torch

from presso.compress._base import Quantizer, register
from presso.compress._quant import QuantizedWeight, quantize_rtn


@register
class RtnOperator(Quantizer):
    """Round-to-nearest quantization; ignores the Hessian."""

    name = "rtn"
    needs_hessian = False

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None = None
    ) -> QuantizedWeight:
        return quantize_rtn(weight, self.spec(level))
