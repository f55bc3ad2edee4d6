"""Compression operators: realise one level of one Linear weight.

``make_operator("gptq", group_size=128)`` gives an :class:`Operator` whose levels are bits
(``kind == "bits"``); its ``compress`` returns a :class:`QuantizedWeight` (uint8 codes, per-group
float32 scales and zeros). ``make_operator("sparsegpt", pattern="2:4")`` gives one whose levels are
sparsity percent (``kind == "sparsity"``); its ``compress`` returns a :class:`SparseWeight`.
``obs_prune_channels`` / ``obs_prune_heads`` remove whole FFN channels or attention heads with
ZipLM's OBS update and return a :class:`StructuredWeight` (a smaller weight and the kept indices).
"""

from __future__ import annotations

# Importing the operator modules registers them with make_operator.
from presso.compress import (  # noqa: F401
    _gptq_operator,
    _rtn,
    _sparse_operators,
    _structured_operator,
)
from presso.compress._base import Compressed, Operator, Quantizer, make_operator
from presso.compress._gptq import gptq_quantize
from presso.compress._hessian import HessianAccumulator, hessian_hooks
from presso.compress._quant import (
    QuantizedWeight,
    QuantSpec,
    quantize_rtn,
    relative_output_error,
)
from presso.compress._sparse import (
    SparseWeight,
    magnitude_prune,
    sparsegpt_prune,
    wanda_prune,
)
from presso.compress._structured import (
    StructuredWeight,
    obs_prune_channels,
    obs_prune_heads,
    obs_prune_structures,
    structure_columns,
)

__all__ = [
    "Compressed",
    "HessianAccumulator",
    "Operator",
    "QuantSpec",
    "QuantizedWeight",
    "Quantizer",
    "SparseWeight",
    "StructuredWeight",
    "gptq_quantize",
    "hessian_hooks",
    "magnitude_prune",
    "make_operator",
    "obs_prune_channels",
    "obs_prune_heads",
    "obs_prune_structures",
    "quantize_rtn",
    "relative_output_error",
    "sparsegpt_prune",
    "structure_columns",
    "wanda_prune",
]
