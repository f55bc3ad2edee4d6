"""Export a pruned or layer-dropped candidate as a smaller, plain Hugging Face folder.

The folder is what ``save_pretrained`` writes (config, safetensors, generation config) plus the
tokenizer and the plan, and loads with ``AutoModelForCausalLM.from_pretrained`` without presso:

* blocks in ``plan.dropped`` are removed physically (:func:`presso.surgery.drop_blocks`):
  the config's ``num_hidden_layers`` shrinks and the kept blocks are renumbered;
* pruned weights are stored as dense tensors whose pruned entries are zero;
* quantized units are stored *dequantized* (the float weights presso evaluated): this format is
  for pruning and depth; quantized candidates belong in ``--format hf``.

A dropped sublayer (``...self_attn`` or ``...mlp`` alone) has no place in a standard config,
where every block has both, so such candidates are refused.

Structured candidates (heads and FFN channels kept) are written with smaller Linears where
the config can say so: one ``intermediate_size`` for every block, and for a Llama one
``num_attention_heads`` / ``num_key_value_heads`` (``head_dim`` kept explicit). Widths that
differ per block, and pruned BERT heads (transformers 5 dropped ``pruned_heads``, and BERT
derives the head size from ``hidden_size / num_attention_heads``), have no config: those are
refused, naming ``--format onnx``, which holds any shape.

The helpers here (the weight presso evaluated for a unit, the candidate as a standalone model)
are shared with the ``hf`` format.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.export._base import Exporter, Source, register
from presso.export._target import export_dir
from presso.plan import Plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from presso.compress import QuantizedWeight

PLAN_FILE = "presso_plan.json"


def refuse_sublayer_drops(plan: Plan, fmt: str) -> None:
    """Refuse a plan that drops an attention or MLP sublayer without its block."""
    # A block is named `<blocks prefix>.<index>`; a sublayer ends in a module name.
    sublayers = [name for name in plan.dropped if not name.rsplit(".", 1)[-1].isdigit()]
    if sublayers:
        raise PressoError(
            f"--format {fmt}: this candidate drops sublayers ({', '.join(sublayers)}), which a "
            "standard Hugging Face config cannot express (every block keeps its attention and "
            "MLP); export it with --format plan, or search with space.granularity: block"
        )


def kept_units(plan: Plan, source: Source) -> dict[str, dict[str, Any]]:
    """The plan's compressed units (bits and/or sparsity) outside the dropped blocks."""
    handle = source.handle
    dropped = {handle.block_of(name) for name in plan.dropped}
    return {
        name: entry
        for name, entry in plan.entries().items()
        if ("bits" in entry or "sparsity" in entry) and handle.block_of(name) not in dropped
    }


def sparse_quantized(sparse: torch.Tensor, entry: dict[str, Any]) -> QuantizedWeight:
    """A pruned weight rounded to ``entry``'s bits as the evaluator does (RTN on its group grid).

    Every grid includes zero as an exact code (see :mod:`presso.compress._quant`), so the pruned
    entries dequantize to exactly zero: the mask is carried by the codes themselves.
    """
    import torch

    from presso.compress import QuantSpec, quantize_rtn

    spec = QuantSpec(
        bits=int(entry["bits"]), group_size=entry["group_size"], symmetric=entry["symmetric"]
    )
    qw = quantize_rtn(sparse, spec)
    if not torch.all(qw.dequantize()[sparse == 0] == 0):
        raise RuntimeError("a pruned weight did not land on its grid's zero code")
    return qw


def unit_weight(source: Source, name: str, entry: dict[str, Any]) -> torch.Tensor:
    """The float32 ``[out, in]`` weight presso evaluated for unit ``name`` under ``entry``."""
    bits, sparsity = entry.get("bits"), entry.get("sparsity")
    if sparsity:
        sparse = source.sparse(name, int(sparsity)).weight
        return sparse if bits is None else sparse_quantized(sparse, entry).dequantize()
    if bits is not None:
        return source.quantized(name, int(bits)).dequantize()
    return source.handle.dense_weight(name)


def standalone_model(
    source: Source, plan: Plan, weights: dict[str, torch.Tensor], structures: list | None = None
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of the model with ``weights`` (unit name -> tensor) set, the heads and channels
    of ``structures`` (:meth:`Source.structures`) removed, and the plan's blocks removed; and
    the new name of every kept unit (later blocks are renumbered)."""
    from presso.surgery import drop_blocks, shrink

    handle = source.handle
    handle.restore_dense()
    model = copy.deepcopy(handle.model)
    for name, weight in weights.items():
        linear = model.get_submodule(name)
        linear.weight.data = weight.to(linear.weight.dtype).contiguous()
    for structure, kept in structures or ():
        shrink(model, structure, kept)
    dropped = sorted(handle.block_of(name) for name in plan.dropped)
    drop_blocks(model, handle.blocks_prefix, dropped)
    prefix = handle.blocks_prefix + "."
    renamed = {}
    for unit in handle.units:
        if unit.block in dropped:
            continue
        new_index = unit.block - sum(1 for b in dropped if b < unit.block)
        rest = unit.name[len(prefix) :].split(".", 1)[1]
        renamed[unit.name] = f"{prefix}{new_index}.{rest}"
    return model, renamed


def save_folder(folder: Path, model: nn.Module, source: Source, plan: Plan) -> None:
    """Write the model (safetensors), its generation config, the tokenizer and the plan."""
    model.save_pretrained(folder)
    source.handle.tokenizer.save_pretrained(folder)
    (folder / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")


@register
class PrunedExporter(Exporter):
    name = "pruned"
    folder = True
    help = (
        "a smaller plain Hugging Face folder: dropped blocks removed, pruned weights as zeros "
        "(quantized units stored dequantized: use hf for those)"
    )
    kinds = ("bits", "sparsity", "depth", "structured")

    def check(self, plan: Plan) -> None:
        super().check(plan)
        refuse_sublayer_drops(plan, self.name)

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        from presso.runtimes._base import rounded_structures

        # A consumer with bits too is stored as its kept columns rounded (dequantized).
        structures = rounded_structures(plan, source.structures(plan))
        widths = uniform_widths(source, plan, structures, self.name)  # before anything is written
        units = kept_units(plan, source)
        quantized = [name for name, entry in units.items() if "bits" in entry]
        if quantized:
            logging.getLogger("presso").warning(
                "--format pruned stores the %d quantized units dequantized (float); "
                "--format hf keeps them compressed",
                len(quantized),
            )
        pruned = {s.consumer for s, _ in structures}
        weights = {
            name: unit_weight(source, name, entry)
            for name, entry in units.items()
            if name not in pruned  # its kept, updated columns come with the structure
        }
        model, _ = standalone_model(source, plan, weights, structures)
        for key, value in widths.items():
            setattr(model.config, key, value)
        with export_dir(out, self.name, plan) as tmp:
            save_folder(tmp, model, source, plan)


def uniform_widths(source: Source, plan: Plan, structures: list, fmt: str) -> dict[str, int]:
    """The config fields that say how wide the kept blocks' attentions and FFNs are after the
    plan's structured pruning (none without it), or a refusal where one field cannot hold them."""
    if not structures:
        return {}
    from presso.structures import FFN, HEADS, model_structures

    handle = source.handle
    config = handle.model.config
    gone = {handle.block_of(name) for name in plan.dropped}
    pruned = {s.consumer: kept for s, kept in structures}
    kept: dict[str, dict[int, int]] = {HEADS: {}, FFN: {}}
    for s in model_structures(handle):
        if s.block not in gone:
            k = pruned[s.consumer].kept.numel() if s.consumer in pruned else s.count
            kept[s.what][s.block] = k * (s.heads_per if s.what == HEADS else 1)
    bert = getattr(config, "model_type", None) == "bert"
    if bert and any(s.what == HEADS for s, _ in structures):
        raise PressoError(
            f"--format {fmt}: this candidate prunes BERT attention heads, which a transformers "
            "config cannot express (transformers 5 has no pruned_heads, and BERT's head size is "
            "hidden_size / num_attention_heads); export it with --format onnx, which ONNX "
            "Runtime runs with the smaller heads"
        )
    for what, per_block in kept.items():
        if len(set(per_block.values())) > 1:
            noun = "query heads" if what == HEADS else "FFN channels"
            shown = ", ".join(f"block {b}: {k}" for b, k in sorted(per_block.items()))
            raise PressoError(
                f"--format {fmt}: this candidate keeps a different number of {noun} per block "
                f"({shown}); a transformers config has one width for every block, so export it "
                "with --format onnx (any width per block), or choose a candidate with uniform "
                "widths"
            )
    fields: dict[str, int] = {}
    if kept[FFN]:
        fields["intermediate_size"] = next(iter(kept[FFN].values()))
    if kept[HEADS] and not bert:
        heads = next(iter(kept[HEADS].values()))
        ratio = config.num_attention_heads // config.num_key_value_heads
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        fields.update(
            num_attention_heads=heads, num_key_value_heads=heads // ratio, head_dim=head_dim
        )
    return fields
