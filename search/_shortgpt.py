"""ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant
Than You Expect"): drop the blocks with the lowest Block Influence.

Block Influence ``BI_i = 1 - mean cos(h_in, h_out)`` (:func:`presso.importance.block_influence`)
is low for a block that barely changes the hidden states. The number dropped is the space's
``MinDropped`` limit, so the result uses exactly the depth budget; under another budget (a
latency or speedup target) the fewest lowest-BI blocks whose removal meets it. A space with a depth
dimension per sublayer (a block's attention and MLP apart) ranks each sublayer by its block's
BI, ties broken by dimension order: the lowest-BI block's sublayers go first, in the order the
space lists them (``depth_dims``: attention before MLP when built that way).
"""

from __future__ import annotations

import math

from presso.search._base import Context, OneShot, register
from presso.spaces import DROPPED, KEPT, Config, MinDropped, SearchSpace
from presso.spaces._depth import DepthKind


def shortgpt_config(space: SearchSpace, context: Context) -> Config:
    """The ShortGPT configuration of ``space``: the ``k`` lowest-BI depth dimensions dropped,
    the others kept, other kinds at their ``best_uniform()`` values (lowest levels if none)."""
    depth = [d for d, dim in enumerate(space.dims) if dim.kind == ShortGPT.kinds[0]]
    if not depth:
        raise ValueError(f"shortgpt needs a space with depth dimensions: {space.describe()}")
    limits = [c.limit for c in space.constraints if isinstance(c, MinDropped)]
    k = math.ceil(max(limits) - 1e-9) if limits else None
    if k is not None and k > len(depth):
        raise ValueError(f"cannot drop {k} of {len(depth)} depth dimensions")
    importance, blocks = context.block_importance, context.dim_blocks
    if importance is None or blocks is None:
        raise ValueError(
            "shortgpt needs the blocks' influence and each dimension's block "
            "(Context.block_importance and Context.dim_blocks, from presso.importance)"
        )
    if len(blocks) != len(space):
        raise ValueError(f"dim_blocks has {len(blocks)} entries, the space has {len(space)}")
    if not all(0 <= blocks[d] < len(importance) for d in depth):
        raise ValueError(f"dim_blocks names blocks outside the {len(importance)} importances")

    base = list(space.best_uniform() or space.lowest())
    ranked = sorted(depth, key=lambda d: (importance[blocks[d]], d))

    def dropping(count: int) -> Config:
        config = list(base)
        for rank, d in enumerate(ranked):
            config[d] = space.dims[d].levels.index(DROPPED if rank < count else KEPT)
        return tuple(config)

    counts = [k] if k is not None else range(len(depth) + 1)
    for count in counts:
        if space.is_feasible(config := dropping(count)):
            return config
    raise ValueError(f"the ShortGPT configuration is infeasible: {space.describe()}")


@register
class ShortGPT(OneShot):
    """One request: the lowest-Block-Influence blocks dropped, scored on the whole pool."""

    name = "shortgpt"
    requires = frozenset({"block_importance"})
    kinds = (DepthKind.name,)

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        config = shortgpt_config(space, context or Context())
        super().__init__(space, config, seed=seed, context=context)
