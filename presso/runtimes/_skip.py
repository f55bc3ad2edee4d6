"""The one implementation of skipping: a dropped block or sublayer, on every runtime.

* a dropped block is removed from a built copy (:func:`presso.surgery.drop_blocks`: the rest
  renumbered, so the KV cache has one layer per block that runs), or, in place (the
  evaluator's model, restored later), passes its input through;
* a dropped ``self_attn`` adds zero to the residual stream. With a KV cache it stores a stub of
  one number per token in its own layer slot: transformers reads the cache's length (positions,
  mask sizes) from its first layer, which may be this one, and no other layer's keys or values
  are touched;
* a dropped ``mlp`` adds zero.

The ONNX graph emitter (:mod:`presso.onnx_model`) leaves the same modules out of the graph; its
cache has no slot for a skipped attention layer, as a graph needs none.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError

if TYPE_CHECKING:
    import torch

    from presso.models import ModelHandle
    from presso.plan import Plan

#: The sublayers a plan may drop inside a block.
SUBLAYERS = ("self_attn", "mlp")


def dropped_modules(handle: ModelHandle, plan: Plan) -> tuple[list[int], list[str]]:
    """The indices of the blocks ``plan`` drops and the names of the sublayers it drops outside
    them; a name that is neither is a PressoError."""
    block_names = handle.block_names()
    blocks, sublayers = [], []
    for name in plan.dropped:
        if name in block_names:
            blocks.append(handle.block_of(name))
        elif name.rpartition(".")[0] in block_names and name.endswith(SUBLAYERS):
            sublayers.append(name)
        else:
            raise PressoError(
                f"plan: cannot drop {name!r}: name a block ({block_names[0]}) or a "
                f"block's self_attn / mlp sublayer"
            )
    return blocks, [n for n in sublayers if handle.block_of(n) not in blocks]


def skip_attention(
    hidden_states: torch.Tensor, *args: Any, layer_idx: int, **kw: Any
) -> tuple[torch.Tensor, None]:
    """A dropped attention sublayer's forward: zero, and a stub in its KV-cache slot."""
    import torch

    # transformers 5.24 renamed the block's ``past_key_values`` keyword to ``cache``.
    cache = kw.get("cache", kw.get("past_key_values"))
    if cache is not None:
        stub = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
        cache.update(stub, stub, layer_idx)
    return torch.zeros_like(hidden_states), None


def skip_mlp(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A dropped MLP sublayer's forward: zero."""
    import torch

    return torch.zeros_like(x)


def skip_block(*args: Any, tuple_output: bool, **kwargs: Any) -> Any:
    """A dropped block's forward, in place: its input, as the block returns it."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) if tuple_output else hidden


def skip_forward(handle: ModelHandle, target: str, *, tuple_output: bool) -> Any:
    """The forward that makes module ``target`` of ``handle`` (a block, its attention or its
    MLP) a no-op on the residual stream, in place (see :func:`set_forward`)."""
    if target in handle.block_names():
        return functools.partial(skip_block, tuple_output=tuple_output)
    if target.endswith("self_attn"):
        layer_idx = getattr(handle.module(target), "layer_idx", handle.block_of(target))
        return functools.partial(skip_attention, layer_idx=layer_idx)
    return skip_mlp


def set_forward(module: Any, forward: Any) -> None:
    """Override a module's forward (instance attribute), or restore its own with None."""
    if forward is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = forward


@functools.cache
def _classes() -> Any:
    from torch import nn

    class SkipAttention(nn.Module):
        """A dropped attention sublayer in a built copy (see :func:`skip_attention`)."""

        def __init__(self, layer_idx: int) -> None:
            super().__init__()
            self.layer_idx = layer_idx  # renumbered by drop_blocks like any attention layer

        def forward(self, hidden_states: Any, *args: Any, **kw: Any) -> Any:
            return skip_attention(hidden_states, *args, layer_idx=self.layer_idx, **kw)

    class SkipMLP(nn.Module):
        """A dropped MLP sublayer in a built copy."""

        def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
            return skip_mlp(x)

    for cls in (SkipAttention, SkipMLP):
        cls.__module__ = __name__
    return SkipAttention, SkipMLP


def apply_drops(model: Any, handle: ModelHandle, plan: Plan) -> None:
    """Skip ``plan``'s dropped sublayers and remove its dropped blocks in ``model``, a built
    copy of ``handle.model`` (in place)."""
    from presso.surgery import drop_blocks

    blocks, sublayers = dropped_modules(handle, plan)
    skip_attention_cls, skip_mlp_cls = _classes()
    for name in sublayers:
        if name.endswith("self_attn"):
            replace(model, name, skip_attention_cls(handle.block_of(name)))
        else:
            replace(model, name, skip_mlp_cls())
    if blocks:
        drop_blocks(model, handle.blocks_prefix, blocks)


def removed(handle: ModelHandle, plan: Plan, unit: str) -> bool:
    """Whether ``unit`` goes with a module ``plan`` drops (no runtime builds its layer)."""
    blocks, sublayers = dropped_modules(handle, plan)
    return handle.block_of(unit) in blocks or unit.startswith(tuple(s + "." for s in sublayers))


def replace(model: Any, name: str, new: Any) -> None:
    """Put module ``new`` at ``name`` in ``model``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
