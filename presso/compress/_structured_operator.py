"""The structured pruning operator (``ziplm``) behind the :class:`Operator` interface.

Its levels are the percent of a structure's heads or FFN channels kept (``kind =
"structured"``; see :mod:`presso.structures`), and it compresses only the units whose input
columns are structures (``o_proj``, ``down_proj``; BERT's ``output.dense`` layers): each is
pruned and OBS-updated with :func:`~presso.compress.obs_prune_structures`, every level from one
greedy pass. The producers' rows follow from the kept columns, so they need no level of their
own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from presso.compress._base import Operator, register
from presso.compress._structured import StructuredWeight, obs_prune_structures

if TYPE_CHECKING:
    from presso.structures import Structure


@register
class ZipLMOperator(Operator):
    """ZipLM's greedy structured OBS (Kurtic et al. 2023, Alg. 1), damped as GPTQ damps."""

    name = "ziplm"
    kind = "structured"
    needs_hessian = True
    # 2: FFN channels removed in chunks (presso.compress._structured.CHUNK); 3: a level's chunk
    # schedule no longer depends on the other levels built beside it.
    version = 3

    def __init__(self, *, damp: float = 0.01, structure: Structure | None = None) -> None:
        if not 0 < damp < 1:
            raise ValueError(f"damp must be in (0, 1), got {damp!r}")
        self.damp = damp
        self.structure = structure

    def key(self) -> dict[str, Any]:
        return {**super().key(), "damp": self.damp}

    def units(self, handle: Any) -> list[str]:
        from presso.structures import model_structures

        return [s.consumer for s in model_structures(handle)]

    def for_unit(self, handle: Any, unit: str) -> ZipLMOperator:
        from presso.structures import consumers

        structure = consumers(handle).get(unit)
        if structure is None:
            raise ValueError(f"{unit} is no attention output or FFN down projection")
        return ZipLMOperator(damp=self.damp, structure=structure)

    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> StructuredWeight:
        return self.compress_many(weight, [level], hessian)[0]

    def compress_many(
        self, weight: torch.Tensor, levels: Sequence[int], hessian: torch.Tensor | None
    ) -> list[StructuredWeight]:
        if self.structure is None:
            raise ValueError("the ziplm operator prunes one unit's structures: use for_unit()")
        if hessian is None:
            raise ValueError("the ziplm operator needs the layer's calibration Hessian, got None")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int) or not 0 < level <= 100:
                raise ValueError(f"a structured level is a percent kept in 1..100, got {level!r}")
        kept = [self.structure.kept(level) for level in levels]
        return obs_prune_structures(
            weight, hessian, kept, group_size=self.structure.group_size, damp=self.damp
        )

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> StructuredWeight:
        return StructuredWeight.from_tensors(tensors, meta)
