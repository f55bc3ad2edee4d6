"""Export a candidate as a Hugging Face folder whose weights are compressed-tensors checkpoints.

The folder holds presso's own quantized levels (the GPTQ/RTN codes the search scored, never a
requantization), written by compressed-tensors' own compressors, and a ``quantization_config``
in config.json with one config group per (bits, group size, symmetry), each targeting its
layers by exact module name. transformers loads it with ``AutoModelForCausalLM.from_pretrained``
when compressed-tensors is installed, and decompresses it on the first forward pass.

Grid conventions. presso stores ``w = scale * (code - zero)`` with unsigned ``code`` and integral
``zero`` in ``[0, 2**bits - 1]``; compressed-tensors stores signed ``q`` in
``[-2**(bits-1), 2**(bits-1) - 1]`` and ``w = scale * (q - zero_point)``. With
``offset = 2**(bits-1)``: ``q = code - offset`` and ``zero_point = zero - offset`` (same scale),
so ``q - zero_point == code - zero`` and the loaded weights equal presso's bit for bit. A
symmetric presso grid has ``zero == offset``, i.e. ``zero_point == 0``: compressed-tensors'
symmetric scheme, which stores no zero point.

Format. Every grid is written ``pack-quantized``: codes packed into int32 words, ``bits`` bits
per weight on disk, so the folder's size is the candidate's ``size_mb`` plus scales and zero
points. Asymmetric grids pack their zero points too (along the output dimension), but
transformers 5.23 builds the compressed model on the meta device, where compressed-tensors 0.20
gives the zero points their unpacked shape ``[out, groups]``, and refuses the packed tensor
(size mismatch, vllm-project/llm-compressor#1618). So the packed zero points are stored padded
with zero words to that shape: transformers takes the tensor as it is (int32), and
compressed-tensors' unpacking reads the packed words first and cuts what follows. That costs 4
bytes per group row (0.25 bit per weight at group size 128); the test that loads the folder
through transformers and matches presso's logits bit for bit guards the layout.

Candidates. Dropped blocks are removed physically first (:mod:`presso.surgery`); units that are
pruned and quantized are rounded to their bits as the evaluator does (pruned entries sit on the
zero code); units that are only pruned are stored as dense tensors with zeros; dropped sublayers
are refused (see :mod:`presso.export._pruned`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.export._base import Exporter, Source, register
from presso.export._pruned import (
    kept_units,
    refuse_sublayer_drops,
    save_folder,
    sparse_quantized,
    standalone_model,
    unit_weight,
)
from presso.export._target import export_dir
from presso.plan import Plan

if TYPE_CHECKING:
    from torch import nn

    from presso.compress import QuantizedWeight

#: compressed-tensors' storage format of presso's grids (see the module docstring).
FORMAT = "pack-quantized"


def quantized_unit(source: Source, name: str, entry: dict[str, Any]) -> QuantizedWeight:
    """The codes, scales and zeros presso evaluated for a quantized unit."""
    if entry.get("sparsity"):
        return sparse_quantized(source.sparse(name, int(entry["sparsity"])).weight, entry)
    return source.quantized(name, int(entry["bits"]))


def quantization_config(grids: dict[str, QuantizedWeight]) -> Any:
    """compressed-tensors' QuantizationConfig: one group per (bits, group size, symmetry),
    targeting its modules by exact name."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    by_spec: dict[Any, list[str]] = {}
    for name, qw in grids.items():
        by_spec.setdefault(qw.spec, []).append(name)
    groups = {}
    for i, (spec, names) in enumerate(by_spec.items()):
        args = QuantizationArgs(
            num_bits=spec.bits,
            type="int",
            symmetric=spec.symmetric,
            strategy="channel" if spec.group_size is None else "group",
            group_size=spec.group_size,
        )
        # The format is set per group: on load compressed-tensors reads it from the scheme.
        groups[f"group_{i}"] = QuantizationScheme(targets=names, weights=args, format=FORMAT)
    return QuantizationConfig(config_groups=groups, format=FORMAT)


def set_grids(model: nn.Module, grids: dict[str, QuantizedWeight]) -> None:
    """Give each quantized module presso's scales and (shifted) zero points."""
    import torch

    for name, qw in grids.items():
        module = model.get_submodule(name)
        offset = 1 << (qw.spec.bits - 1)
        module.weight_scale.data.copy_(qw.scales)
        if qw.spec.symmetric:
            if not torch.all(qw.zeros == offset):
                raise RuntimeError(f"{name}: a symmetric grid with zero != {offset}")
            continue
        module.weight_zero_point.data.copy_((qw.zeros - offset).to(torch.int8))


def pad_zero_points(model: nn.Module, grids: dict[str, QuantizedWeight]) -> None:
    """Store each packed zero point padded with zero words to the unpacked shape transformers
    expects (see the module docstring)."""
    import torch

    for name, qw in grids.items():
        module = model.get_submodule(name)
        if qw.spec.symmetric:
            continue
        packed = module.weight_zero_point.data
        padded = torch.zeros(qw.zeros.shape, dtype=torch.int32)
        padded[: packed.shape[0]] = packed
        module.weight_zero_point = torch.nn.Parameter(padded, requires_grad=False)


def check_codes(model: nn.Module, grids: dict[str, QuantizedWeight]) -> None:
    """Check that the compressed modules hold exactly presso's codes and zero points (shifted by
    the offset), as compressed-tensors unpacks them."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    for name, qw in grids.items():
        state = model.get_submodule(name).state_dict()
        bits, offset = qw.spec.bits, 1 << (qw.spec.bits - 1)
        stored = unpack_from_int32(state["weight_packed"], bits, state["weight_shape"])
        same = torch.equal(stored.to(torch.int16) + offset, qw.codes.to(torch.int16))
        if not qw.spec.symmetric:
            zp = unpack_from_int32(state["weight_zero_point"], bits, qw.zeros.shape, packed_dim=0)
            same = same and torch.equal(zp.to(torch.int16) + offset, qw.zeros.to(torch.int16))
        if not same:
            raise RuntimeError(f"{name}: compressed-tensors did not reproduce presso's codes")


def compress(model: nn.Module, grids: dict[str, QuantizedWeight]) -> Any:
    """Compress ``model``'s quantized modules in place with compressed-tensors' own compressors;
    returns the ModelCompressor (it writes the quantization_config)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    config = quantization_config(grids)
    apply_quantization_config(model, config, show_progress=False)
    set_grids(model, grids)
    # compressed-tensors rounds weight / scale + zero_point: the weights are presso's dequantized
    # codes, so this gives back the codes exactly (checked, not assumed).
    compressor = ModelCompressor(quantization_config=config)
    compressor.compress_model(model)
    pad_zero_points(model, grids)
    check_codes(model, grids)
    return compressor


@register
class HFExporter(Exporter):
    name = "hf"
    folder = True
    help = (
        "Hugging Face folder: presso's quantized levels as compressed-tensors weights + "
        "quantization_config (transformers loads it)"
    )
    requires = ("compressed_tensors",)
    extra = "export"
    kinds = ("bits", "sparsity", "depth")

    def check(self, plan: Plan) -> None:
        super().check(plan)
        refuse_sublayer_drops(plan, self.name)
        wide = [n for n, e in plan.entries().items() if "bits" in e and not 1 <= e["bits"] <= 8]
        if wide:
            raise PressoError(
                f"--format hf: compressed-tensors packs 1..8-bit integers; {', '.join(wide)} "
                "have other bit widths"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        units = kept_units(plan, source)
        grids = {
            name: quantized_unit(source, name, entry)
            for name, entry in units.items()
            if "bits" in entry
        }
        weights = {
            name: grids[name].dequantize() if name in grids else unit_weight(source, name, entry)
            for name, entry in units.items()
        }
        model, renamed = standalone_model(source, plan, weights)
        grids = {renamed[name]: qw for name, qw in grids.items()}
        compressor = compress(model, grids) if grids else None
        with export_dir(out, self.name, plan) as tmp:
            save_folder(tmp, model, source, plan)
            if compressor is not None:
                compressor.update_config(str(tmp))  # writes quantization_config into config.json
