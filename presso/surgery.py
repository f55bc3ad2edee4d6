"""Structural edits that make a compressed model physically smaller: dropping blocks.

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
