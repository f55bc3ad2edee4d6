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
from presso.plan import Plan
from presso.summary import RunSummary


def run_summary(run: RunSummary | dict[str, Any]) -> RunSummary:
    """``run`` as a RunSummary (a run's stored study attributes are read as one)."""
    return run if isinstance(run, RunSummary) else RunSummary.from_attrs("", run)


def build_plan(run: RunSummary | dict[str, Any], phase: str) -> Plan:
    """The plan of candidate ``phase`` of a finished run (see :meth:`RunSummary.candidate`)."""
    from presso.spaces._kinds import KINDS, budgets, plan_settings

    summary = run_summary(run)
    cand = summary.candidate(phase)
    exp = summary.experiment
    about = {
        "run": summary.run,
        "candidate": phase,
        "strategy": cand.strategy,
        "model": exp["model"],
        "budget": budgets(exp["space"]),
        **{k.budget: cand.metrics[k.budget] for k in KINDS.values() if k.budget in cand.metrics},
        "metrics": cand.heldout,
    }
    return Plan.from_levels(
        summary.targets, summary.kinds, cand.levels, settings=plan_settings(exp), about=about
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
