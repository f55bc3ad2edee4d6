"""Structural edits that make a compressed model physically smaller: dropping blocks, and
slicing the Linears of pruned heads and FFN channels.

After ``drop_blocks`` the model is an ordinary, shorter model: its block list, the layer
indices its attention layers use to address the KV cache, and its config agree, so it
generates with a KV cache and saves with ``save_pretrained`` like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def drop_blocks(model: Any, blocks_prefix: str, dropped: Iterable[int]) -> None:
    """Remove the blocks at indices ``dropped`` from ``model`` (in place) and renumber the rest."""
    from torch import nn

    parent_name, _, attr = blocks_prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    blocks = getattr(parent, attr)
    gone = set(dropped)
    if not gone <= set(range(len(blocks))):
        raise ValueError(f"blocks {sorted(gone)} are not all in 0..{len(blocks) - 1}")
    kept = [block for i, block in enumerate(blocks) if i not in gone]
    setattr(parent, attr, nn.ModuleList(kept))
    for index, block in enumerate(kept):
        # Attention layers address their slot of the KV cache by layer_idx.
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in gone]
    config.num_hidden_layers = len(kept)


def shrink(model: Any, structure: Any, kept: Any) -> None:
    """Make ``structure`` (a :class:`presso.structures.Structure`) of ``model`` keep only
    ``kept``'s structures (a :class:`presso.compress.StructuredWeight` of its consumer), in
    place: the producers lose the rows of removed heads or channels (under GQA, k/v the rows
    of removed KV heads, so the KV cache holds fewer heads), and the consumer gets the kept,
    updated columns. The attention still reshapes by ``head_dim`` with its query/KV ratio, so it
    runs unchanged with fewer heads."""
    from presso.compress import structure_columns

    _keep_rows(model, structure.producers, kept.kept_columns())
    _keep_rows(model, structure.kv, structure_columns(kept.kept, structure.kv_rows))
    consumer = model.get_submodule(structure.consumer)
    consumer.weight = _parameter(kept.weight, consumer.weight)
    consumer.in_features = kept.weight.shape[1]


def _keep_rows(model: Any, names: Iterable[str], rows: Any) -> None:
    for name in names:
        linear = model.get_submodule(name)
        index = rows.to(linear.weight.device)
        linear.weight = _parameter(linear.weight.data[index], linear.weight)
        if linear.bias is not None:
            linear.bias = _parameter(linear.bias.data[index], linear.bias)
        linear.out_features = index.numel()


def _parameter(value: Any, like: Any) -> Any:
    from torch import nn

    return nn.Parameter(
        value.detach().to(like.device, like.dtype).contiguous(), requires_grad=False
    )
