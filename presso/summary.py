"""A run's summary, typed: what ``presso search`` stores with a finished run and every view
reads — ``presso show`` (text, or ``--json`` for scripts), ``presso export``, ``presso
generate``, the dashboard and the Python API — instead of each parsing the stored dict.

The store keeps the summary as a study attribute (plain JSON, see presso.store); a
:class:`RunSummary` is read from a run's attributes with :meth:`RunSummary.from_attrs`, which
also reads stores written before the summary named its fitness metric.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from presso.errors import PressoError
from presso.evaluation import Objective, label
from presso.spaces import BUDGET_METRICS


@dataclass
class Candidate:
    """One candidate a run chose: ``search`` (the search's winner), ``baseline:NAME`` or
    ``pareto:I`` (point I of the front).

    levels: one value per search dimension (bits, sparsity %, 1 kept / 0 dropped), in the
        order of :attr:`RunSummary.units`.
    metrics: its budget and cost metrics (``mean_bits``, ``size_mb``, ``latency_ms`` ...), as
        measured; for a front point also its calibration objectives.
    heldout: its metrics on the held-out windows (may be empty for a front point).
    """

    name: str
    strategy: str | None
    levels: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)


@dataclass
class Front:
    """The search's Pareto front over ``objectives`` (``-name``: maximised), each point as
    minimised values; held-out metrics for the points that were scored held-out."""

    objectives: list[str]
    points: list[list[float]]
    levels: list[list[float]]
    heldout: dict[int, dict[str, float]] = field(default_factory=dict)
    reference: list[float] | None = None
    hypervolume: float | None = None
    #: Over predicted latency: the held-out points timed end to end (``measured_ms``,
    #: ``measured_speedup``) beside the dense model (``dense_ms``; see presso.run).
    measured: dict[int, dict[str, float]] = field(default_factory=dict)
    dense_ms: float | None = None

    def __len__(self) -> int:
        return len(self.points)

    def metrics(self, i: int) -> dict[str, float]:
        """Point ``i``'s objectives as measured (a maximised one negated back)."""
        parsed = [Objective.parse(o) for o in self.objectives]
        return {o.metric: o.minimised(v) for o, v in zip(parsed, self.points[i])}


#: A chosen candidate's or front point's end-to-end timing (see presso.run), stored beside
#: its held-out metrics.
MEASURED = ("measured_ms", "measured_speedup")
_NOT_HELDOUT = ("index", *MEASURED)


@dataclass
class RunSummary:
    """A run as every view reads it: the experiment, its search space, and once finished, the
    candidates it chose with their held-out metrics, the dense model's, and the Pareto front.

    fitness: the metric the evaluator minimised (``kl``, or ``cos_dist`` for an encoder).
    units / kinds / targets / space_levels: the search dimensions (``model.layers.0.mlp.up_proj``
        or ``...:bits`` in a joint space), their knob kind, the module each acts on, and the
        values each may take.
    level_names: per dimension, what each of its levels keeps in the model's terms (``6/9
        heads (2/3 KV)``), None where the value says it; empty when no dimension has names.
    """

    run: str
    status: str
    experiment: dict[str, Any]
    units: list[str]
    kinds: list[str]
    targets: list[str]
    space_levels: list[list[float]]
    level_names: list[list[str | None]] = field(default_factory=list)
    fitness: str = "kl"
    finished: bool = False
    candidates: dict[str, Candidate] = field(default_factory=dict)
    dense: dict[str, float] = field(default_factory=dict)
    winner: str | None = None
    front: Front | None = None
    evaluations: int | None = None
    evaluated: int | None = None
    failed: int = 0
    first_failure: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: Under a latency budget: the chosen candidates timed end to end (see presso.run).
    latency_check: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_attrs(cls, run: str, attrs: dict[str, Any]) -> RunSummary:
        """The summary of run ``run`` from its stored study attributes (an unfinished run: no
        candidates yet)."""
        units = list(attrs.get("units") or [])
        s = attrs.get("summary") or {}
        candidates = {
            name: Candidate(
                name=name,
                strategy=c.get("strategy"),
                levels=list(c.get("levels") or []),
                metrics={k: v for k, v in c.items() if k not in ("strategy", "levels", "heldout")},
                heldout=dict(c.get("heldout") or {}),
            )
            for name, c in (s.get("candidates") or {}).items()
        }
        pareto = s.get("pareto")
        front = None
        if pareto is not None:
            front = Front(
                objectives=list(pareto.get("objectives") or []),
                points=[list(p) for p in pareto.get("points") or []],
                levels=[list(lv) for lv in pareto.get("levels") or []],
                heldout={
                    h["index"]: {k: v for k, v in h.items() if k not in _NOT_HELDOUT}
                    for h in pareto.get("heldout") or []
                },
                reference=pareto.get("reference"),
                hypervolume=pareto.get("hypervolume"),
                measured={
                    h["index"]: {k: h[k] for k in MEASURED if k in h}
                    for h in pareto.get("heldout") or []
                    if "measured_ms" in h
                },
                dense_ms=pareto.get("dense_ms"),
            )
        return cls(
            run=s.get("run") or run,
            status=attrs.get("status") or "?",
            experiment=attrs.get("experiment") or {},
            units=units,
            kinds=list(attrs.get("kinds") or ["bits"] * len(units)),
            targets=list(attrs.get("targets") or [u.split(":")[0] for u in units]),
            space_levels=[list(lv) for lv in attrs.get("levels") or []],
            level_names=[list(n) for n in attrs.get("level_names") or []],
            fitness=s.get("fitness") or _fitness_of(s),
            finished=bool(s),
            candidates=candidates,
            dense=dict(s.get("dense") or {}),
            winner=s.get("winner"),
            front=front,
            evaluations=s.get("evaluations"),
            evaluated=s.get("evaluated"),
            failed=s.get("failed", 0),
            first_failure=s.get("first_failure"),
            timings=dict(s.get("timings") or {}),
            latency_check=dict(s.get("latency_check") or {}),
        )

    @property
    def heldout_metric(self) -> str:
        """The held-out metric candidates are compared by: perplexity for a causal LM,
        cosine distance for an encoder."""
        return "ppl" if self.fitness == "kl" else self.fitness

    @property
    def labels(self) -> dict[str, str]:
        """How views name what this run measured: ``fitness`` is its evaluator's metric
        (``fitness (KL)``, ``fitness (cosine distance)``), and each held-out metric."""
        out = {"fitness": f"fitness ({_name(self.fitness)})"}
        for metric in dict.fromkeys((self.heldout_metric, self.fitness)):
            out[f"heldout_{metric}"] = f"held-out {_name(metric)}"
        return out

    def candidate(self, name: str) -> Candidate:
        """Candidate ``name`` of the finished run: ``search``, ``baseline:NAME`` or ``pareto:I``
        (point I of the front, numbered as ``presso show RUN --pareto`` lists them)."""
        if not self.finished:
            raise PressoError(
                "this run has not finished: there is no chosen configuration to export yet"
            )
        if name.startswith("pareto:"):
            return self._front_point(name)
        if name not in self.candidates:
            raise PressoError(
                f"no candidate {name!r} in this run; choose one of: {', '.join(self.candidates)}, "
                "or pareto:I for a point of its Pareto front"
            )
        return self.candidates[name]

    def _front_point(self, name: str) -> Candidate:
        front = self.front.levels if self.front else []
        index = name.split(":", 1)[1]
        # isdecimal, not isdigit: int() refuses digits such as '²' that isdigit accepts.
        if not index.isdecimal() or int(index) >= len(front):
            if not front:
                raise PressoError(f"no candidate {name!r}: this run stored no Pareto front")
            if len(front) == 1:
                points = "one point, pareto:0"
            else:
                points = f"{len(front)} points, pareto:0 to pareto:{len(front) - 1}"
            raise PressoError(
                f"no candidate {name!r} in this run: its Pareto front has {points} "
                "(`presso show RUN --pareto` lists them)"
            )
        assert self.front is not None
        i = int(index)
        search = self.candidates.get("search")
        return Candidate(
            name=name,
            strategy=search.strategy if search else "search",
            levels=front[i],
            metrics={**self.front.metrics(i), **self.front.measured.get(i, {})},
            heldout=dict(self.front.heldout.get(i, {})),
        )

    def unit_levels(self, levels: list[float]) -> dict[str, float]:
        """A candidate's ``levels`` (one per search dimension) by dimension name."""
        return dict(zip(self.units, levels))

    def to_json(self) -> dict[str, Any]:
        """The summary as plain data for scripts (``presso show RUN --json``): every field,
        candidates with their levels by unit, the front's points with their metrics."""
        out = asdict(self)
        out["heldout_metric"] = self.heldout_metric
        out["labels"] = self.labels
        for name, c in self.candidates.items():
            out["candidates"][name]["levels"] = self.unit_levels(c.levels)
        if self.front is not None:
            out["front"]["heldout"] = {str(k): v for k, v in self.front.heldout.items()}
            out["front"]["metrics"] = [self.front.metrics(i) for i in range(len(self.front))]
        return json_safe(out)


def _fitness_of(s: dict[str, Any]) -> str:
    """A summary stored before it named its fitness metric: an encoder's candidates were scored
    by cosine distance, a causal LM's by KL."""
    for c in (s.get("candidates") or {}).values():
        heldout = c.get("heldout") or {}
        if "cos_dist" in heldout and "kl" not in heldout:
            return "cos_dist"
    return "kl"


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None: JSON has no such numbers (browsers and most
    parsers refuse them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------- text


def summary_lines(summary: RunSummary) -> list[str]:
    """The candidates beside the dense model (held-out), the winner, and search vs baselines."""
    cands = summary.candidates
    budget = [m for m in BUDGET_METRICS if any(m in c.metrics for c in cands.values())]
    head = "".join(f"{m:>14}" for m in budget)
    div = "held-out KL" if summary.fitness == "kl" else f"held-out {summary.fitness}"
    rows = [(name, c.strategy, c.metrics, c.heldout) for name, c in cands.items()]
    # Perplexity only where there is one (a causal LM): an encoder or a diffusion model has none.
    has_ppl = any("ppl" in h for *_, h in rows)
    ppl_head = f" {'held-out ppl':>13}" if has_ppl else ""
    lines = ["", f"{'candidate':<22} {'strategy':<14}{head}{ppl_head} {div:>12}"]
    if summary.dense:  # the reference every candidate is compared with
        # A divergence from the dense model is 0 there by definition; FID is measured.
        own = {} if summary.fitness == "fid" else {summary.fitness: 0.0}
        rows.insert(0, ("dense", "-", {}, {**summary.dense, **own}))
    for name, strategy, metrics, h in rows:
        ppl = (f" {h['ppl']:>13.3f}" if "ppl" in h else f" {'-':>13}") if has_ppl else ""
        div_value = h.get(summary.fitness, float("nan"))
        values = "".join(f"{metrics[m]:>14.3f}" if m in metrics else f"{'-':>14}" for m in budget)
        lines.append(f"{name:<22} {strategy or '-':<14}{values}{ppl} {div_value:>12.5f}")
    if summary.winner:
        lines.append(f"winner (lowest held-out {_name(summary.fitness)}): {summary.winner}")
    return lines + _versus_baselines(summary) + latency_lines(summary)


def latency_lines(summary: RunSummary) -> list[str]:
    """The chosen candidates' end-to-end times against the dense model's, measured after the
    search, beside the budget the cost model held them to."""
    check = summary.latency_check
    if not check:
        return []
    dense = check.get("dense_ms")
    target = check.get("target_speedup")
    goal = f"target {target:g}x" if target else f"limit {check['limit_ms']:.3f} ms predicted"
    lines = [
        f"measured end to end on {check['backend']} {check['workload']}: dense "
        + (f"{dense:.3f} ms" if dense else "failed")
        + f" ({goal})"
    ]
    for name, c in summary.candidates.items():
        ms, speedup = c.metrics.get("measured_ms"), c.metrics.get("measured_speedup")
        if ms is None:
            lines.append(f"  {name:<22} could not be timed")
            continue
        # Predicted as a speedup: the profile's absolute times may come from another load.
        predicted, base = c.metrics.get("latency_ms"), check.get("predicted_dense_ms")
        pred = f" (predicted {base / predicted:.2f}x)" if predicted and base else ""
        gain = f" = {speedup:.3f}x" if speedup else ""
        met = ""
        if target and speedup:
            met = "  meets it" if speedup >= target else f"  short of {target:g}x"
        lines.append(f"  {name:<22} {ms:.3f} ms{gain}{pred}{met}")
    return lines


def _name(metric: str) -> str:
    """A metric as sentences name it (KL stays in capitals)."""
    return "KL" if metric == "kl" else label(metric)


def _versus_baselines(summary: RunSummary) -> list[str]:
    cands = summary.candidates
    if "search" not in cands:
        return []
    metric = summary.heldout_metric
    heldout = cands["search"].heldout
    if metric not in heldout:
        return []
    s, text = heldout[metric], label(metric)
    baselines = {
        name.removeprefix("baseline:"): c.heldout[metric]
        for name, c in cands.items()
        if name.startswith("baseline:") and metric in c.heldout
    }
    lines = []
    if "uniform" in baselines:
        u = baselines["uniform"]
        lines.append(
            f"search vs uniform: held-out {text} {s:.3f} vs {u:.3f} ({(u - s) / u:+.1%} better)"
        )
    if len(baselines) > 1 or (baselines and "uniform" not in baselines):
        name = min(baselines, key=baselines.__getitem__)
        b = baselines[name]
        lines.append(
            f"search vs the best baseline ({name}): held-out {text} {s:.3f} vs {b:.3f} "
            f"({(b - s) / b:+.1%} better)"
        )
    return lines


def pareto_lines(summary: RunSummary) -> list[str]:
    """The Pareto front (objectives as minimised: ``-name`` negated), the held-out metric
    (perplexity, cosine distance for an encoder, FID for a diffusion model) and end-to-end
    timings where measured, and its hypervolume."""
    front = summary.front
    if front is None or not front.points:
        return ["", "no Pareto front: no evaluation has every objective"]
    objectives = front.objectives
    metric = summary.heldout_metric
    heading = f"held-out {_name(metric)}"
    width = len(heading) + 2  # "held-out cosine distance" is wider than the objectives' 16
    timed = bool(front.measured)
    lines = [
        "",
        f"Pareto front over {', '.join(objectives)}: {len(front)} points",
        f"{'candidate':<11}"
        + "".join(f"{o:>16}" for o in objectives)
        + f"{heading:>{width}}"
        + (f"{'measured ms':>13}{'speedup':>9}" if timed else ""),
    ]
    for i, point in enumerate(front.points):
        value = front.heldout.get(i, {}).get(metric)
        cells = "".join(f"{v:>16.5f}" for v in point)
        line = f"{f'pareto:{i}':<11}{cells}" + (
            f"{value:>{width}.5g}" if value is not None else f"{'-':>{width}}"
        )
        if timed:
            m = front.measured.get(i)
            line += (
                f"{m['measured_ms']:>13.3f}{m['measured_speedup']:>8.2f}x" if m else f"{'-':>13}"
            )
        lines.append(line)
    if timed:
        lines.append(
            f"measured end to end on {summary.experiment.get('hardware', {}).get('backend')}, "
            f"beside the dense model at {front.dense_ms:.3f} ms"
        )
    lines.append("(export one: presso export RUN --candidate pareto:I --format ...)")
    if front.hypervolume is not None:
        ref = ", ".join(f"{r:.4g}" for r in front.reference or [])
        lines.append(f"hypervolume {front.hypervolume:.6g} (reference point {ref})")
    return lines


def summary_note(summary: RunSummary) -> str:
    """The summary as a Markdown note (optuna-dashboard shows it with the study)."""
    failed = summary.failed
    evaluations = "?" if summary.evaluations is None else summary.evaluations
    lines = [
        f"## presso run {summary.run}",
        "",
        f"{evaluations} evaluations over {len(summary.units)} units"
        + (f", {failed} failed (first: {summary.first_failure})" if failed else "")
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


def unit_columns(targets: list[str]) -> list[tuple[str, str]]:
    """Where each unit sits in a blocks × unit-kinds table: ``(row, column)`` per target. Rows
    are block numbers (``-`` outside blocks); columns the shortest trailing part of the name
    that tells the block's units apart — ``q_proj`` in a Llama block, but ``attention.output.
    dense``, ``intermediate.dense`` and ``output.dense`` in a BERT block, whose three ``dense``
    layers are different layers (``block`` for a whole block)."""
    import re

    block = re.compile(r"\.(\d+)(?:\.(.+))?$")
    found = []
    for target in targets:
        m = block.search(target)
        found.append((m.group(1), m.group(2) or "block") if m else ("-", target))
    rests = {rest for _, rest in found}
    short = {}
    for rest in rests:
        parts = rest.split(".")
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            if not any(o != rest and (o == tail or o.endswith("." + tail)) for o in rests):
                short[rest] = tail
                break
        else:
            short[rest] = rest
    return [(row, short[rest]) for row, rest in found]
