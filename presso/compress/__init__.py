"""Compression operators: realise one level (bits) of one Linear weight.

``make_operator("gptq", group_size=128)`` gives an :class:`Operator`; its ``compress`` returns a
:class:`QuantizedWeight` (uint8 codes, per-group float32 scales and zeros).
"""

from __future__ import annotations

# Importing the operator modules registers them with make_operator.
from presso.compress import _gptq_operator, _rtn  # noqa: F401
from presso.compress._base import Compressed, Operator, make_operator
from presso.compress._gptq import gptq_quantize
from presso.compress._hessian import HessianAccumulator, hessian_hooks
from presso.compress._quant import (
    QuantizedWeight,
    QuantSpec,
    quantize_rtn,
    relative_output_error,
)

__all__ = [
    "Compressed",
    "HessianAccumulator",
    "Operator",
    "QuantSpec",
    "QuantizedWeight",
    "gptq_quantize",
    "hessian_hooks",
    "make_operator",
    "quantize_rtn",
    "relative_output_error",
]
