"""torchao's ``FqnToConfig``, serialised with torchao's own ``config_to_dict`` as JSON.

Load it back and apply it with::

    from torchao.core.config import config_from_dict
    from torchao.quantization import quantize_
    quantize_(model, config_from_dict(json.load(open(PATH))), filter_fn=None)

Every quantized layer gets an ``IntxWeightOnlyConfig``: the one torchao 0.18 weight-only config
that covers 2..8 bits, group-wise (``PerGroup``) or per output channel (``PerAxis(0)``), and
asymmetric or symmetric grids, and that runs on CPU (``Int4WeightOnlyConfig`` packs for CUDA
kernels; ``Int8WeightOnlyConfig`` is symmetric only). Its grids are presso's: an asymmetric
range that includes zero, or a symmetric one of ``2·max|w| / (2**bits - 1)``. Dense layers map
to ``None`` (left alone). torchao rounds to nearest itself, so a GPTQ plan's layers get the
configured grids but not GPTQ's weights. Sparsity and dropped layers are refused.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from presso.export._base import Exporter, Source, register
from presso.paths import atomic_write_text
from presso.plan import Plan


@register
class TorchAOExporter(Exporter):
    name = "torchao"
    help = "torchao FqnToConfig (JSON via torchao's config_to_dict; IntxWeightOnlyConfig per layer)"
    requires = ("torchao",)
    extra = "export"
    kinds = ("bits",)

    def notice(self, plan: Plan) -> str:
        return (
            "torchao quantizes each layer itself, rounding to nearest: the config carries the "
            "plan's bits, group sizes and symmetry, not presso's quantized weights, so a GPTQ run's "
            "held-out figures are not reached (--format hf or onnx carries the weights)"
        )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        from torchao.core.config import config_to_dict

        data = config_to_dict(fqn_to_config(plan))
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")


def fqn_to_config(plan: Plan):  # noqa: ANN201 - torchao.quantization.FqnToConfig
    """The ``FqnToConfig`` of ``plan``: exact module names to per-layer configs (None: dense)."""
    from torchao.quantization import FqnToConfig

    return FqnToConfig(
        fqn_to_config=OrderedDict(
            (name, layer_config(unit) if "bits" in unit else None)
            for name, unit in plan.entries().items()
        )
    )


def layer_config(unit: dict[str, Any]):  # noqa: ANN201 - torchao IntxWeightOnlyConfig
    """The torchao weight-only config for one quantized unit of a plan."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    group_size = unit["group_size"]
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{unit['bits']}"),
        granularity=PerAxis(0) if group_size is None else PerGroup(group_size),
        mapping_type=MappingType.SYMMETRIC if unit["symmetric"] else MappingType.ASYMMETRIC,
    )
