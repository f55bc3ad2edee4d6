"""Convergence benchmarks for the dashboard: best-so-far held-out curves written by
``experiments/benchmarks/convergence.py`` (one JSON report per search), shown beside the runs.

A report is re-read on every poll, so a benchmark still running updates live (it writes its
report atomically, so a read never sees half a file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from presso.errors import PressoError

# The held-out metric of a curve: perplexity for a causal LM, cosine distance for an encoder.
METRICS = ("ppl", "cos_dist")


def check_curves_file(path: str) -> None:
    """Refuse a path that names no readable convergence report before the server starts."""
    load_curve(path)


def load_curve(path: str) -> dict[str, Any]:
    """One report as the page draws it: label, options, the table's evaluations (spent before
    the search), points (evaluations, held-out metric) and the same run's references."""
    file = Path(path)
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise PressoError(
            f"{path}: no such file (a report written by experiments/benchmarks/convergence.py)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PressoError(f"{path}: not a readable convergence report ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("curve"), list):
        raise PressoError(
            f"{path}: no 'curve' list: not a report of experiments/benchmarks/convergence.py"
        )
    metric = next((m for m in METRICS if report["curve"] and m in report["curve"][0]), "ppl")
    points = []
    for i, point in enumerate(report["curve"]):
        if not isinstance(point, dict) or not _number(point.get("evaluations")):
            raise PressoError(f"{path}: curve[{i}] has no number 'evaluations'")
        if not _number(point.get(metric)):
            raise PressoError(f"{path}: curve[{i}] has no number {metric!r}")
        points.append({"evaluations": point["evaluations"], "value": point[metric]})
    table = report.get("table_evaluations", 0)
    return {
        "file": path,
        "label": str(report.get("label", file.stem)),
        "budget": report.get("budget"),
        "options": report.get("options", {}),
        "metric": metric,
        "table_evaluations": table if _number(table) else 0,
        "points": points,
        "references": {
            name: ref[metric]
            for name, ref in (
                ("every unit at its top level", report.get("top_heldout")),
                ("uniform", report.get("uniform_heldout")),
            )
            if isinstance(ref, dict) and _number(ref.get(metric))
        },
    }


def curves_json(paths: list[str]) -> list[dict[str, Any]]:
    """Every report, or its one-line error in its place (a file being replaced, deleted)."""
    out = []
    for path in paths:
        try:
            out.append(load_curve(path))
        except PressoError as err:
            out.append({"file": path, "error": str(err)})
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
