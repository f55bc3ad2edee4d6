"""Export a candidate as one ONNX model that ONNX Runtime runs with its low-bit kernels.

``--format onnx``: every quantized layer is a ``com.microsoft.MatMulNBits`` node holding the
run's own codes, scales and zero points (the GPTQ/RTN levels the search scored), at its own
bits; 3-bit layers are carried in the 4-bit layout and 5..7-bit ones in the 8-bit layout with
the same values (ORT 1.32 runs 2, 4 and 8 bits), as the model's ``presso.units`` metadata says.
``--format onnx-qdq``: the same weights as blocked ``DequantizeLinear`` (uint4/uint8) + ``MatMul``.

Dropped blocks and sublayers are absent from the graph. Pruned layers hold the pruned weight's
dense values; pruned and quantized layers are rounded to their bits with RTN, as the evaluator
does. The weights live inside the ``.onnx`` file (an ``<out>.data`` file beside it only for
models past protobuf's 2 GB limit). Inputs ``input_ids`` int64 ``[batch, seq]``, output
``logits``; see :mod:`presso.onnx_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from presso.errors import PressoError
from presso.export._base import Exporter, Source, register
from presso.plan import Plan


def check_group_sizes(plan: Plan) -> None:
    """ONNX graphs hold one group size per model."""
    groups = {e.get("group_size") for e in plan.entries().values() if "bits" in e}
    if len(groups) > 1:
        raise PressoError(f"ONNX export: one group size per model, this plan has {sorted(groups)}")


@register
class OnnxExporter(Exporter):
    name = "onnx"
    help = (
        "ONNX model: MatMulNBits at each layer's bits, dropped blocks removed (onnxruntime runs it)"
    )
    requires = ("onnx",)
    extra = "onnx"
    fmt: ClassVar[str] = "matmulnbits"
    kinds = ("bits", "sparsity", "depth", "structured")

    def check(self, plan: Plan) -> None:
        super().check(plan)
        check_group_sizes(plan)
        quantized = {n: e for n, e in plan.entries().items() if "bits" in e}
        wide = [n for n, e in quantized.items() if not 2 <= int(e["bits"]) <= 8]
        if wide:
            raise PressoError(
                f"--format {self.name}: MatMulNBits holds 2..8-bit codes; {', '.join(wide)} "
                "have other bit widths"
            )
        self._check_groups(quantized)

    def _check_groups(self, quantized: dict[str, dict[str, Any]]) -> None:
        """MatMulNBits blocks are powers of two >= 16 columns: a group must be a multiple of one."""
        from presso.onnx_model import block_size

        bad = []
        for name, entry in quantized.items():
            if entry.get("group_size") is None:
                continue  # per channel: the block divides the layer's width (checked on write)
            try:
                block_size(int(entry["group_size"]))
            except PressoError:
                bad.append(name)
        if bad:
            group = quantized[bad[0]]["group_size"]
            raise PressoError(
                f"--format {self.name}: group size {group} is not a multiple of a power of two "
                f">= 16, which MatMulNBits needs, in {', '.join(bad)}; use --format onnx-qdq"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        from presso.onnx_model import build_onnx

        symmetric = {
            bool(e.get("symmetric", False)) for e in plan.entries().values() if "bits" in e
        }
        options: dict[str, Any] = {
            "weights": source.quantized,
            "sparse": lambda unit, percent: source.sparse(unit, percent).weight,
            "symmetric": symmetric.pop() if symmetric else False,
            "fmt": self.fmt,
            "structures": source.structures(plan),  # pruned heads and channels: smaller MatMuls
        }
        handle = source.handle
        if getattr(handle.model.config, "model_type", None) == "bert":  # an encoder's graph
            from presso.onnx_bert import build_bert_onnx

            build_bert_onnx(handle, plan, out, **options)
        else:
            build_onnx(handle, plan, out, **options)


@register
class OnnxQdqExporter(OnnxExporter):
    name = "onnx-qdq"
    help = "ONNX model: blocked DequantizeLinear (uint4/uint8) + MatMul per quantized layer"
    fmt = "qdq"

    def notice(self, plan: Plan) -> str:
        from presso.onnx_model import SESSION_CONFIG

        entries = ", ".join(f"{k}={v}" for k, v in SESSION_CONFIG.items())
        return (
            "ONNX Runtime's default session fuses DequantizeLinear+MatMul into int8-activation "
            f"MatMulNBits (not what presso scored): set the session config entry {entries} "
            "(SessionOptions.add_session_config_entry; also in the model's "
            "presso.session_config metadata). presso generate does."
        )

    def _check_groups(self, quantized: dict[str, dict[str, Any]]) -> None:
        return None  # DequantizeLinear takes any block size
