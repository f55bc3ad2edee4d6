"""An llm-compressor recipe (YAML) that reproduces a plan with llm-compressor's own algorithms.

The recipe has up to two stages, applied in order by ``llmcompressor.oneshot``:

* ``sparsity_stage`` (only when the plan prunes): one ``SparseGPTModifier`` or
  ``WandaPruningModifier`` whose ``targets`` are the pruned layers' exact module names and whose
  ``sparsity`` is the list of their sparsities (fractions), in model order — llm-compressor
  pairs the i-th sparsity with the i-th matched target, and matches in model order;
* ``quant_stage``: a ``GPTQModifier`` (the plan's method is GPTQ) or ``QuantizationModifier``
  (RTN), with one ``config_groups`` entry per (bits, group size, symmetry) whose ``targets``
  are exact module names, and the dense layers in ``ignore``.

Dropped blocks cannot be expressed (refused, naming them), nor magnitude pruning per layer
(llm-compressor's ``MagnitudePruningModifier`` is a training schedule with one sparsity).
Checked against llm-compressor 0.14's modifiers and compressed-tensors' ``QuantizationArgs``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from presso.errors import PressoError, layer_list
from presso.export._base import Exporter, Source, register
from presso.export._gptqmodel import quant_key
from presso.paths import atomic_write_text
from presso.plan import Plan

#: presso's pruning operators -> llm-compressor's one-shot pruning modifiers.
PRUNING_MODIFIERS = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}


@register
class LLMCompressorExporter(Exporter):
    name = "llmcompressor"
    help = "an llm-compressor recipe (YAML: per-layer config_groups, optional pruning stage)"
    kinds = ("bits", "sparsity")

    def check(self, plan: Plan) -> None:
        super().check(plan)
        pruned = [n for n, u in plan.entries().items() if u.get("sparsity")]
        methods = {plan.entries()[n]["sparsity_method"] for n in pruned}
        unknown = methods - set(PRUNING_MODIFIERS)
        if unknown:
            raise PressoError(
                f"--format {self.name}: llm-compressor has no one-shot per-layer "
                f"{'/'.join(sorted(unknown))} pruning (its MagnitudePruningModifier is a training "
                f"schedule with one sparsity) for {layer_list(pruned)}; search with "
                f"sparsity.operator {' or '.join(PRUNING_MODIFIERS)}"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        compress = source.summary.experiment.get("compress", {})
        recipe = build_recipe(
            plan, act_order=bool(compress.get("act_order")), damp=compress.get("damp", 0.01)
        )
        atomic_write_text(out, render_recipe(plan, recipe))


def build_recipe(plan: Plan, *, act_order: bool, damp: float) -> dict[str, Any]:
    """The recipe dict for ``plan`` (stages -> modifier groups -> modifiers -> arguments);
    ``act_order`` and ``damp`` are the run's GPTQ options."""
    recipe: dict[str, Any] = {}
    sparsity = _sparsity_modifier(plan)
    if sparsity:
        recipe["sparsity_stage"] = {"sparsity_modifiers": sparsity}
    quant = _quant_modifier(plan, act_order=act_order, damp=damp)
    if quant:
        recipe["quant_stage"] = {"quant_modifiers": quant}
    return recipe


def render_recipe(plan: Plan, recipe: dict[str, Any]) -> str:
    import yaml

    header = (
        f"# llm-compressor recipe written by presso: run {plan.about['run']!r}, "
        f"candidate {plan.about['candidate']!r}, model {plan.about['model']}\n"
        "# apply with llmcompressor.oneshot(model=..., dataset=..., recipe=THIS_FILE)\n"
    )
    return header + yaml.safe_dump(recipe, sort_keys=False, width=100)


def _sparsity_modifier(plan: Plan) -> dict[str, Any]:
    pruned = {n: u for n, u in plan.entries().items() if u.get("sparsity")}
    if not pruned:
        return {}
    first = next(iter(pruned.values()))
    return {
        PRUNING_MODIFIERS[first["sparsity_method"]]: {
            "sparsity": [u["sparsity"] / 100 for u in pruned.values()],
            "mask_structure": "2:4" if first["pattern"] == "2:4" else "0:0",
            "targets": list(pruned),
        }
    }


def _quant_modifier(plan: Plan, *, act_order: bool, damp: float) -> dict[str, Any]:
    groups: dict[tuple, list[str]] = defaultdict(list)
    dense = []
    for name, unit in plan.entries().items():
        if "bits" in unit:
            groups[quant_key(unit)].append(name)
        else:
            dense.append(name)
    if not groups:
        return {}
    config_groups = {
        f"group_{i}": {"targets": names, "weights": _weights(*key)}
        for i, (key, names) in enumerate(groups.items())
    }
    gptq = next(u["method"] for u in plan.entries().values() if "bits" in u) == "gptq"
    args: dict[str, Any] = {}
    if gptq:
        # presso's act_order fixes group grids before reordering: llm-compressor's "static".
        args = {"dampening_frac": damp, "actorder": "static" if act_order else None}
    args.update(config_groups=config_groups, ignore=["lm_head", *dense])
    return {"GPTQModifier" if gptq else "QuantizationModifier": args}


def _weights(bits: int, group_size: int | None, symmetric: bool) -> dict[str, Any]:
    """compressed-tensors ``QuantizationArgs`` for a weight-only integer scheme."""
    args: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": symmetric}
    if group_size is None:
        args["strategy"] = "channel"
    else:
        args.update(strategy="group", group_size=group_size)
    return args
