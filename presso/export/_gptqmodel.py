"""GPTQModel's ``quantize_config.json``: base bits/group size/symmetry plus ``dynamic`` overrides.

GPTQModel (and vLLM/SGLang when they load its checkpoints) read ``dynamic`` as an ordered map
from a regex over module names to field overrides: a key ``+:REGEX`` overrides ``bits``,
``group_size``, ``sym`` or ``desc_act`` for the modules it matches, ``-:REGEX`` leaves them
unquantized. Matching is ``re.match`` (anchored at the start only), the first matching key
wins, and ``-:`` keys are tried first; so every key written here is an exact, ``$``-anchored
module name. The base fields take the most common (bits, group size, symmetry) of the plan,
and only the modules that differ get a ``+:`` key.

Sparsity and dropped blocks cannot be expressed in a GPTQModel config, and GPTQModel has no
7-bit kernels: such plans are refused, naming the layers.

The helper :func:`quant_key` is shared by the other configuration formats
(``_llmcompressor``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from presso.errors import PressoError, layer_list
from presso.export._base import Exporter, Source, register
from presso.paths import atomic_write_text
from presso.plan import Plan

#: Bit widths of GPTQ checkpoints that GPTQModel (all versions) and vLLM load.
GPTQMODEL_BITS = (2, 3, 4, 5, 6, 8)


def quant_key(unit: dict[str, Any]) -> tuple[int, int | None, bool]:
    """``(bits, group_size, symmetric)`` of a quantized unit of a plan."""
    return unit["bits"], unit["group_size"], unit["symmetric"]


def exact(name: str) -> str:
    """A regex that matches module ``name`` and nothing else (under ``re.match``)."""
    return re.escape(name) + "$"


@register
class GPTQModelExporter(Exporter):
    name = "gptqmodel"
    help = "GPTQModel's quantize_config.json with per-module `dynamic` overrides"
    kinds = ("bits",)

    def check(self, plan: Plan) -> None:
        super().check(plan)
        bad = [
            n for n, u in plan.entries().items() if "bits" in u and u["bits"] not in GPTQMODEL_BITS
        ]
        if bad:
            raise PressoError(
                f"--format {self.name}: GPTQ checkpoints hold {list(GPTQMODEL_BITS)} bits (7 needs "
                f"GPTQModel 7.7's gptq_p format, which vLLM does not load), not "
                f"{sorted({plan.entries()[n]['bits'] for n in bad})}: {layer_list(bad)}; "
                "search without that level (compress.levels)"
            )
        if not any("bits" in u for u in plan.entries().values()):
            raise PressoError(
                f"--format {self.name}: this candidate quantizes no layer; there is nothing to "
                "configure (export it with --format plan)"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        compress = source.summary.experiment.get("compress", {})
        config = quantize_config(
            plan, act_order=bool(compress.get("act_order")), damp=compress.get("damp", 0.01)
        )
        atomic_write_text(out, json.dumps(config, indent=2) + "\n")


def quantize_config(plan: Plan, *, act_order: bool, damp: float) -> dict[str, Any]:
    """The ``quantize_config.json`` dict for ``plan``; ``act_order`` and ``damp`` (fraction of
    the mean Hessian diagonal) are the GPTQ options the run's levels were built with."""
    from presso import __version__

    quantized = {n: quant_key(u) for n, u in plan.entries().items() if "bits" in u}
    # Ties go to the first level in model order, so the same plan always gives the same file.
    base = Counter(quantized.values()).most_common(1)[0][0]
    dynamic: dict[str, dict[str, Any]] = {}
    for name in plan.entries():
        if name not in quantized:
            dynamic[f"-:{exact(name)}"] = {}
            continue
        override = {
            field: value
            for field, value, base_value in zip(
                ("bits", "group_size", "sym"), _gptq_fields(quantized[name]), _gptq_fields(base)
            )
            if value != base_value
        }
        if override:
            dynamic[f"+:{exact(name)}"] = override
    bits, group_size, sym = _gptq_fields(base)
    return {
        "bits": bits,
        "group_size": group_size,
        "sym": sym,
        "desc_act": act_order,
        # presso's act_order fixes every group's grid before reordering ("static groups").
        "static_groups": act_order,
        "act_group_aware": False,
        "true_sequential": True,
        "damp_percent": damp,
        "lm_head": False,
        "quant_method": "gptq",
        "format": "gptq",
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
        "dynamic": dynamic,
        "meta": {
            "quantizer": [f"presso:{__version__}"],
            "presso": {
                "run": plan.about["run"],
                "candidate": plan.about["candidate"],
                "method": next(u["method"] for u in plan.entries().values() if "bits" in u),
            },
        },
    }


def _gptq_fields(key: tuple[int, int | None, bool]) -> tuple[int, int, bool]:
    """GPTQModel's ``(bits, group_size, sym)``: one group per row is ``group_size`` -1."""
    bits, group_size, symmetric = key
    return bits, -1 if group_size is None else group_size, symmetric
