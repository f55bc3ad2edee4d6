"""Export a run's chosen configuration: presso's versioned plan (JSON/YAML) and EvoPress's text.

A plan names every unit with its compression (method, bits, group size, symmetry), plus
the model, the budget and the held-out metrics the run measured for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from presso.export._base import Exporter, Source, register
from presso.paths import atomic_write_text

PLAN_VERSION = 1


def candidate_entry(study_attrs: dict[str, Any], phase: str) -> dict[str, Any]:
    """The candidate ``phase`` of a finished run: ``search`` (the search's winner),
    ``baseline:NAME``, or ``pareto:I`` — point ``I`` of the run's Pareto front, numbered as
    ``presso show RUN --pareto`` lists them. A dict with ``strategy``, ``levels`` (one value per
    search dimension), the metrics known for it, and ``heldout`` (may be empty)."""
    from presso.errors import PressoError

    summary = study_attrs.get("summary")
    if not summary:
        raise PressoError(
            "this run has not finished: there is no chosen configuration to export yet"
        )
    candidates = summary["candidates"]
    if phase.startswith("pareto:"):
        pareto = summary.get("pareto") or {}
        front = pareto.get("levels") or []
        index = phase.split(":", 1)[1]
        # isdecimal, not isdigit: int() refuses digits such as '²' that isdigit accepts.
        if not index.isdecimal() or int(index) >= len(front):
            if not front:
                raise PressoError(f"no candidate {phase!r}: this run stored no Pareto front")
            if len(front) == 1:
                points = "one point, pareto:0"
            else:
                points = f"{len(front)} points, pareto:0 to pareto:{len(front) - 1}"
            raise PressoError(
                f"no candidate {phase!r} in this run: its Pareto front has {points} "
                "(`presso show RUN --pareto` lists them)"
            )
        i = int(index)
        metrics = {
            name.lstrip("-"): (-v if name.startswith("-") else v)
            for name, v in zip(pareto["objectives"], pareto["points"][i])
        }
        heldout = next((h for h in pareto.get("heldout", []) if h["index"] == i), {})
        return {
            "strategy": candidates.get("search", {}).get("strategy", "search"),
            "levels": front[i],
            **metrics,
            "heldout": {k: v for k, v in heldout.items() if k != "index"},
        }
    if phase not in candidates:
        raise PressoError(
            f"no candidate {phase!r} in this run; choose one of: {', '.join(candidates)}, "
            "or pareto:I for a point of its Pareto front"
        )
    return candidates[phase]


def build_plan(study_attrs: dict[str, Any], phase: str) -> dict[str, Any]:
    """The plan of candidate ``phase`` (see :func:`candidate_entry`)."""
    cand = candidate_entry(study_attrs, phase)
    summary = study_attrs["summary"]
    exp = study_attrs["experiment"]
    names = study_attrs["units"]
    kinds = study_attrs.get("kinds") or ["bits"] * len(names)
    targets = study_attrs.get("targets") or names
    units: dict[str, dict[str, Any]] = {}
    dropped = []
    for target, kind, value in zip(targets, kinds, cand["levels"]):
        if kind == "depth":
            if value == 0:
                dropped.append(target)
            continue
        entry = units.setdefault(target, {"method": "dense"})
        if kind == "bits" and value < 16:
            comp = exp["compress"]
            entry.update(
                method=comp["operator"],
                bits=int(value),
                group_size=comp["group_size"],
                symmetric=comp["symmetric"],
            )
        elif kind == "sparsity" and value > 0:
            sp = exp["sparsity"]
            entry.update(sparsity=int(value), sparsity_method=sp["operator"], pattern=sp["pattern"])
    budget = {
        k: v
        for k, v in exp["space"].items()
        if k in ("mean_bits", "mean_sparsity", "dropped") and v is not None
    }
    return {
        "presso_plan": PLAN_VERSION,
        "run": summary["run"],
        "candidate": phase,
        "strategy": cand["strategy"],
        "model": exp["model"],
        "budget": budget,
        **{k: cand[k] for k in ("mean_bits", "mean_sparsity", "dropped") if k in cand},
        "metrics": cand["heldout"],
        "units": units,
        "dropped": dropped,
    }


def render(plan: dict[str, Any], fmt: str, suffix: str = "") -> str:
    """The file contents for ``fmt``: a plan as JSON (YAML when ``suffix`` is .yaml/.yml), or
    EvoPress's ``layer: level`` lines."""
    if fmt == "evopress":
        return _evopress_text(plan)
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_dump(plan, sort_keys=False)
    return json.dumps(plan, indent=2) + "\n"


def _evopress_text(plan: dict[str, Any]) -> str:
    """EvoPress's ``layer: level`` lines: bits per layer, sparsity per layer, or 0/1 (dropped/kept)
    per block — one kind per file, as EvoPress writes them."""
    from presso.errors import PressoError

    units = plan["units"]
    has_bits = any("bits" in u for u in units.values())
    has_sparsity = any("sparsity" in u for u in units.values())
    if sum([has_bits, has_sparsity, bool(plan["dropped"])]) > 1:
        raise PressoError(
            "the evopress format holds one kind of level; this candidate mixes several: use --format plan"
        )
    if plan["dropped"]:
        return "".join(f"{name}: 0\n" for name in plan["dropped"])
    key, dense = ("sparsity", 0) if has_sparsity else ("bits", 16)
    return "".join(f"{name}: {u.get(key, dense)}\n" for name, u in units.items())


class TextExporter(Exporter):
    """A format that is one text file (printed to standard output when no --out is given)."""

    def render(self, plan: dict[str, Any], suffix: str = "") -> str:
        return render(plan, self.name, suffix)

    def write(self, plan: dict[str, Any], out: Path, source: Source) -> None:
        atomic_write_text(out, self.render(plan, out.suffix.lower()))


@register
class PlanExporter(TextExporter):
    name = "plan"
    help = "presso's versioned plan (JSON, or YAML for a .yaml/.yml --out)"


@register
class EvoPressExporter(TextExporter):
    name = "evopress"
    help = "EvoPress's `layer: level` text (one kind of level per file)"
