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
from presso.plan import Plan, run_dimensions


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


def build_plan(study_attrs: dict[str, Any], phase: str) -> Plan:
    """The plan of candidate ``phase`` (see :func:`candidate_entry`)."""
    from presso.spaces._kinds import KINDS, budgets, plan_settings

    cand = candidate_entry(study_attrs, phase)
    exp = study_attrs["experiment"]
    _, kinds, targets = run_dimensions(study_attrs)
    about = {
        "run": study_attrs["summary"]["run"],
        "candidate": phase,
        "strategy": cand["strategy"],
        "model": exp["model"],
        "budget": budgets(exp["space"]),
        **{k.budget: cand[k.budget] for k in KINDS.values() if k.budget in cand},
        "metrics": cand["heldout"],
    }
    return Plan.from_levels(
        targets, kinds, cand["levels"], settings=plan_settings(exp), about=about
    )


def render(plan: Plan, fmt: str, suffix: str = "") -> str:
    """The file contents for ``fmt``: a plan as JSON (YAML when ``suffix`` is .yaml/.yml), or
    EvoPress's ``layer: level`` lines."""
    if fmt == "evopress":
        return _evopress_text(plan)
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_dump(plan.to_dict(), sort_keys=False)
    return json.dumps(plan.to_dict(), indent=2) + "\n"


def _evopress_text(plan: Plan) -> str:
    """EvoPress's ``layer: level`` lines: bits per layer, sparsity per layer, or 0/1 (dropped/kept)
    per block — one kind per file, as EvoPress writes them."""
    from presso.errors import PressoError
    from presso.spaces._kinds import unit_kinds

    kinds = plan.kinds()
    if len(kinds) > 1:
        raise PressoError(
            "the evopress format holds one kind of level; this candidate mixes several: use --format plan"
        )
    if plan.dropped:
        return "".join(f"{name}: 0\n" for name in plan.dropped)
    kind = kinds[0] if kinds else unit_kinds()[0].name
    return "".join(f"{name}: {plan.level(name, kind)}\n" for name in plan.units)


class TextExporter(Exporter):
    """A format that is one text file (printed to standard output when no --out is given)."""

    def render(self, plan: Plan, suffix: str = "") -> str:
        return render(plan, self.name, suffix)

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        atomic_write_text(out, self.render(plan, out.suffix.lower()))


@register
class PlanExporter(TextExporter):
    name = "plan"
    help = "presso's versioned plan (JSON, or YAML for a .yaml/.yml --out)"


@register
class EvoPressExporter(TextExporter):
    name = "evopress"
    help = "EvoPress's `layer: level` text (one kind of level per file)"
