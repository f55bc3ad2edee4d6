"""Export a run's chosen configuration: presso's versioned plan (JSON/YAML) and EvoPress's text.

A plan names every unit with its compression (method, bits, group size, symmetry), plus
the model, the budget and the held-out metrics the run measured for it.
"""

from __future__ import annotations

import json
from typing import Any

PLAN_VERSION = 1
FORMATS = ("plan", "evopress")


def build_plan(study_attrs: dict[str, Any], phase: str) -> dict[str, Any]:
    """The plan of the winner of ``phase`` (``search`` or ``baseline:NAME``)."""
    from presso.errors import PressoError

    summary = study_attrs.get("summary")
    if not summary:
        raise PressoError(
            "this run has not finished: there is no chosen configuration to export yet"
        )
    candidates = summary["candidates"]
    if phase not in candidates:
        raise PressoError(
            f"no candidate {phase!r} in this run; choose one of: {', '.join(candidates)}"
        )
    cand = candidates[phase]
    exp = study_attrs["experiment"]
    comp = exp["compress"]
    units = {}
    for name, bits in zip(study_attrs["units"], cand["levels"]):
        if bits >= 16:
            units[name] = {"method": "dense"}
        else:
            units[name] = {
                "method": comp["operator"],
                "bits": int(bits),
                "group_size": comp["group_size"],
                "symmetric": comp["symmetric"],
            }
    return {
        "presso_plan": PLAN_VERSION,
        "run": summary["run"],
        "candidate": phase,
        "strategy": cand["strategy"],
        "model": exp["model"],
        "budget": {"mean_bits": exp["space"]["mean_bits"]},
        "mean_bits": cand["mean_bits"],
        "metrics": cand["heldout"],
        "units": units,
    }


def render(plan: dict[str, Any], fmt: str, suffix: str = "") -> str:
    """The file contents for ``fmt``: a plan as JSON (YAML when ``suffix`` is .yaml/.yml), or
    EvoPress's ``layer: level`` lines."""
    if fmt == "evopress":
        return "".join(f"{name}: {u.get('bits', 16)}\n" for name, u in plan["units"].items())
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_dump(plan, sort_keys=False)
    return json.dumps(plan, indent=2) + "\n"
