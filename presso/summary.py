"""A run's summary as text: what ``presso search`` and ``presso show`` print, and the study's
note in optuna-dashboard (the same lines, as Markdown)."""

from __future__ import annotations

from typing import Any

from presso.spaces import BUDGET_METRICS


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The candidates beside the dense model (held-out), the winner, and search vs baselines."""
    cands = summary["candidates"]
    budget = [m for m in BUDGET_METRICS if any(m in c for c in cands.values())]
    head = "".join(f"{m:>14}" for m in budget)
    lines = [
        "",
        f"{'candidate':<22} {'strategy':<14}{head} {'held-out ppl':>13} {'held-out KL':>12}",
    ]
    rows = [(phase, c["strategy"], c, c["heldout"]) for phase, c in cands.items()]
    if summary.get("dense"):  # the reference every candidate is compared with
        rows.insert(0, ("dense", "-", {}, {**summary["dense"], "kl": 0.0}))
    for phase, strategy, c, h in rows:
        ppl = f"{h['ppl']:.3f}" if "ppl" in h else "-"
        kl = h.get("kl", h.get("cos_dist", float("nan")))
        values = "".join(f"{c[m]:>14.3f}" if m in c else f"{'-':>14}" for m in budget)
        lines.append(f"{phase:<22} {strategy:<14}{values} {ppl:>13} {kl:>12.5f}")
    if winner := summary.get("winner"):
        metric = "KL" if "kl" in cands[winner]["heldout"] else "cosine distance"
        lines.append(f"winner (lowest held-out {metric}): {winner}")
    return lines + _versus_baselines(cands)


def _versus_baselines(cands: dict[str, Any]) -> list[str]:
    if "search" not in cands:
        return []
    heldout = cands["search"]["heldout"]
    metric, label = ("ppl", "perplexity") if "ppl" in heldout else ("cos_dist", "cosine distance")
    if metric not in heldout:
        return []
    s = heldout[metric]
    baselines = {
        phase.removeprefix("baseline:"): c["heldout"][metric]
        for phase, c in cands.items()
        if phase.startswith("baseline:") and metric in c["heldout"]
    }
    lines = []
    if "uniform" in baselines:
        u = baselines["uniform"]
        lines.append(
            f"search vs uniform: held-out {label} {s:.3f} vs {u:.3f} ({(u - s) / u:+.1%} better)"
        )
    if len(baselines) > 1 or (baselines and "uniform" not in baselines):
        name = min(baselines, key=baselines.__getitem__)
        b = baselines[name]
        lines.append(
            f"search vs the best baseline ({name}): held-out {label} {s:.3f} vs {b:.3f} "
            f"({(b - s) / b:+.1%} better)"
        )
    return lines


def pareto_lines(summary: dict[str, Any]) -> list[str]:
    """The Pareto front (objectives as minimised: ``-name`` negated), held-out ppl where
    measured, and its hypervolume."""
    pareto = summary.get("pareto") or {}
    objectives = pareto.get("objectives", [])
    if not pareto.get("points"):
        return ["", "no Pareto front: no evaluation has every objective"]
    heldout = {h["index"]: h for h in pareto.get("heldout", [])}
    lines = [
        "",
        f"Pareto front over {', '.join(objectives)}: {len(pareto['points'])} points",
        f"{'candidate':<11}" + "".join(f"{o:>16}" for o in objectives) + f"{'held-out ppl':>14}",
    ]
    for i, point in enumerate(pareto["points"]):
        ppl = heldout.get(i, {}).get("ppl")
        cells = "".join(f"{v:>16.5f}" for v in point)
        lines.append(f"{f'pareto:{i}':<11}{cells}" + (f"{ppl:>14.3f}" if ppl else f"{'-':>14}"))
    lines.append("(export one: presso export RUN --candidate pareto:I --format ...)")
    if pareto.get("hypervolume") is not None:
        ref = ", ".join(f"{r:.4g}" for r in pareto["reference"])
        lines.append(f"hypervolume {pareto['hypervolume']:.6g} (reference point {ref})")
    return lines


def summary_note(summary: dict[str, Any], units: int) -> str:
    """The summary as a Markdown note (optuna-dashboard shows it with the study)."""
    failed = summary.get("failed", 0)
    lines = [
        f"## presso run {summary['run']}",
        "",
        f"{summary.get('evaluations', '?')} evaluations over {units} units"
        + (f", {failed} failed (first: {summary.get('first_failure')})" if failed else "")
        + ". Trials valued by Optuna are the run's answers (held-out fitness of each candidate, "
        "or the Pareto front); the search's evaluations are PRUNED, their fitness the "
        "intermediate value at step = calibration tokens scored.",
        "",
        "```",
        *summary_lines(summary)[1:],
        *pareto_lines(summary),
        "```",
    ]
    return "\n".join(lines) + "\n"
