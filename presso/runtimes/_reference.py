"""The reference runtime: fake-quantized fp32 weights in the model's own layers.

Every compressed unit holds its level's dequantized weight in its ``nn.Linear``; nothing else
changes. It computes what presso's evaluator scores, so the other runtimes are checked
against it (their greedy tokens, their logits).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from presso.runtimes._base import Levels, ModuleRuntime, unit_weight
from presso.runtimes._skip import apply_drops, removed

if TYPE_CHECKING:
    from presso.models import ModelHandle
    from presso.plan import Plan


def build(handle: ModelHandle, plan: Plan, levels: Levels, *, device: str = "cpu") -> ModuleRuntime:
    """A copy of ``handle.model`` (fp32, on ``device``) with each unit's weight at its level of
    ``plan`` and its dropped modules skipped."""
    import torch

    with torch.no_grad():
        model = copy.deepcopy(handle.model)
        for name in handle.unit_names:
            if removed(handle, plan, name):
                continue
            weight = unit_weight(handle, plan, name, levels)
            if weight is None:
                weight = handle.dense_weight(name)
            elif not isinstance(weight, torch.Tensor):
                weight = weight.dequantize()
            model.get_submodule(name).weight.data = weight.detach().clone().float()
        apply_drops(model, handle, plan)
        model.to(device, torch.float32)
    return ModuleRuntime("reference", model.eval(), handle.kind, device=device)
