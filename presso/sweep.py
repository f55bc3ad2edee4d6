"""Sweeps: one base experiment, many runs — a grid and/or a list over any of its fields — into
one store (``presso sweep SWEEP.yaml``).

A sweep file::

    name: smollm2-bits-sweep            # default: the file's name
    experiment: smollm2-bits.yaml       # the base: a file (relative to this one) or a mapping
    grid:                               # every combination, in file order
      space.mean_bits: [2.5, 3.0, 3.5, 4.0]
      search.strategy: [evopress, nsga2]
    runs:                               # and/or runs listed one by one (crossed with the grid)
      - {search.seed: 1}
    store: runs/sweep.db                # default: the base's

Each combination is a run of its own, named ``SWEEP.KEY=VALUE,...`` (a key by its last part
where that is unambiguous), validated like an experiment file: a mistake names the sweep
file's line of the field that caused it. With a local runner the runs go one after another;
with ``runner: {kind: ray}`` they run at once as Ray tasks sharing the cluster's CPUs. Every run
records the sweep (name and fields) with itself, which is how ``presso show SWEEP`` and the
dashboard find them again; ``--resume`` skips finished runs and continues cut-off ones.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presso.config import Experiment, read_yaml, resolve_paths, validate_experiment
from presso.errors import PressoError
from presso.summary import RunSummary

KEYS = ("version", "name", "experiment", "grid", "runs", "store")
#: Fields a sweep cannot vary: every run lives in one store, under the name the sweep gives it.
FIXED = ("name", "store", "version")
MAX_RUNS = 1000

Printer = Callable[[str], None]


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name, the fields it sets, and the experiment they give."""

    name: str
    fields: dict[str, Any]
    experiment: Experiment


@dataclass(frozen=True)
class Sweep:
    name: str
    file: Path
    store: str
    runs: list[SweepRun]

    def record(self, run: SweepRun) -> dict[str, Any]:
        """What a run stores about its sweep."""
        return {"name": self.name, "fields": run.fields, "file": str(self.file)}


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file and every run it makes; raises PressoError naming the
    file, line and field."""
    path = Path(path)
    raw, lines = read_yaml(path, noun="sweep file")

    def where(*key: Any) -> str:
        return f"{path}:{lines.get(tuple(key), 1)}"

    for key in raw:
        if key not in KEYS:
            raise PressoError(
                f"{where(key)}: {key}: unknown key; remove it or fix its spelling; allowed "
                f"here: {', '.join(KEYS)}"
            )
    if raw.get("version", 1) != 1:
        raise PressoError(f"{where('version')}: version: only version 1 is known")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*", name):
        raise PressoError(f"{where('name')}: name: letters, digits and _ . = , + - (got {name!r})")
    base = _base(path, raw, lines)
    if "store" in raw:
        if not isinstance(raw["store"], str) or not raw["store"]:
            raise PressoError(f"{where('store')}: store: a path or URL (got {raw['store']!r})")
        base["store"] = raw["store"]
    combos = _combinations(path, raw, lines)
    labels = _labels([fields for fields, _ in combos])
    runs, seen = [], {}
    for (fields, field_lines), label in zip(combos, labels):
        key = json.dumps(fields, sort_keys=True)
        if key in seen:
            raise PressoError(
                f"{path}:{field_lines.get(next(iter(fields), ''), 1)}: the same run twice "
                f"({label}; also on line {seen[key]}); keep one"
            )
        seen[key] = field_lines.get(next(iter(fields), ""), 1)
        run_name = f"{name}.{label}" if label else name
        exp_raw = copy.deepcopy(base)
        for field, value in fields.items():
            _set(exp_raw, field, value, f"{path}:{field_lines[field]}")
        exp_raw["name"] = run_name
        # The base validated alone, so what fails now is what the sweep set: errors name the
        # sweep file, at the line of the field (or of the run) that caused them.
        run_lines = {tuple(f.split(".")): line for f, line in field_lines.items()}
        try:
            exp = validate_experiment(exp_raw, path, run_lines, default_name=run_name)
        except PressoError as err:
            raise PressoError(f"{err} (in run {run_name})") from None
        runs.append(SweepRun(run_name, fields, resolve_paths(path, exp)))
    return Sweep(name, path, runs[0].experiment.store, runs)


def _base(path: Path, raw: dict, lines: dict) -> dict[str, Any]:
    """The base experiment's mapping (validated alone: a mistake in it is the base file's),
    with its model and corpus paths made absolute."""
    given = raw.get("experiment")
    if isinstance(given, str):
        base_file = (path.parent / given).expanduser()
        base, base_lines = read_yaml(base_file)
        exp = validate_experiment(copy.deepcopy(base), base_file, base_lines, default_name="base")
        # The base's own paths are relative to its folder: resolved now, they stay right once
        # its runs are validated and resolved as the sweep file's (what the sweep sets is).
        resolved = resolve_paths(base_file, exp)
        if "model" in base:
            base["model"] = resolved.model
        if isinstance(base.get("data"), dict) and "corpus" in base["data"]:
            base["data"]["corpus"] = resolved.data.corpus
        return base
    if isinstance(given, dict):
        inner = {k[1:]: v for k, v in lines.items() if k[:1] == ("experiment",)}
        validate_experiment(copy.deepcopy(given), path, inner, default_name="base")
        return copy.deepcopy(given)
    raise PressoError(
        f"{path}:{lines.get(('experiment',), 1)}: experiment: required: the base experiment, "
        "a file (relative to the sweep file) or a mapping; add it"
    )


def _combinations(
    path: Path, raw: dict, lines: dict
) -> list[tuple[dict[str, Any], dict[str, int]]]:
    """Every run's fields (dotted key -> value) and the sweep file's line of each."""
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise PressoError(f"{path}:{lines.get(('grid',), 1)}: grid: a mapping FIELD: [VALUES]")
    axes = []
    for field, values in grid.items():
        line = lines.get(("grid", field), 1)
        _check_field(path, line, field)
        if not isinstance(values, list) or not values:
            raise PressoError(
                f"{path}:{line}: grid.{field}: a non-empty list of values (got {values!r})"
            )
        axes.append([(field, v, line) for v in values])
    listed = raw.get("runs")
    if listed is None:
        listed = [{}]
    if not isinstance(listed, list) or not listed:
        raise PressoError(f"{path}:{lines.get(('runs',), 1)}: runs: a list of FIELD: VALUE maps")
    out = []
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict):
            raise PressoError(
                f"{path}:{lines.get(('runs', i), 1)}: runs[{i}]: a mapping FIELD: VALUE "
                f"(got {entry!r})"
            )
        for field in entry:
            _check_field(path, lines.get(("runs", i, field), 1), field)
        for point in itertools.product(*axes):
            fields = {f: v for f, v, _ in point}
            field_lines = {f: line for f, _, line in point}
            for field, value in entry.items():
                fields[field] = value
                field_lines[field] = lines.get(("runs", i, field), 1)
            out.append((fields, field_lines))
            if len(out) > MAX_RUNS:
                raise PressoError(f"{path}: over {MAX_RUNS} runs; split the sweep")
    if not grid and raw.get("runs") is None:
        raise PressoError(f"{path}: no grid and no runs: a sweep varies at least one field")
    return out


def _check_field(path: Path, line: int, field: Any) -> None:
    if not isinstance(field, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.\w+)*", field):
        raise PressoError(
            f"{path}:{line}: {field!r}: a field of the experiment, dotted (e.g. space.mean_bits)"
        )
    if field.split(".")[0] in FIXED:
        raise PressoError(
            f"{path}:{line}: {field}: a sweep sets each run's {field.split('.')[0]} itself; "
            "set the sweep's own name / store instead"
        )


def _set(raw: dict, field: str, value: Any, where: str) -> None:
    *parents, last = field.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PressoError(
                f"{where}: {field}: {'.'.join(parents[: i + 1])} is not a section of the "
                "experiment, so it has no fields"
            )
    node[last] = copy.deepcopy(value)


def _labels(all_fields: list[dict[str, Any]]) -> list[str]:
    """``key=value,...`` per run, over the fields that differ between runs, each key by its
    last part unless two differ only before it."""
    keys = list(dict.fromkeys(k for f in all_fields for k in f))
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in all_fields}) > 1]
    varying = varying or keys
    last = [k.split(".")[-1] for k in varying]
    short = {k: s if last.count(s) == 1 else k for k, s in zip(varying, last)}

    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

    return [",".join(f"{short[k]}={text(f[k])}" for k in varying if k in f) for f in all_fields]


# ---------------------------------------------------------------------- running


def plan_runs(sweep: Sweep, *, resume: bool) -> dict[str, str]:
    """Each run's state before anything starts: ``new``, ``resume`` or ``finished``; refuses a
    sweep whose runs exist already unless resuming (results are never overwritten)."""
    from presso.store import ResultsStore, sqlite_path

    path = sqlite_path(sweep.store)
    existing: dict[str, str] = {}
    if path is None or path.is_file():
        store = ResultsStore(sweep.store, read_only=True) if path else ResultsStore(sweep.store)
        existing = {r["name"]: r["status"] for r in store.runs()}
    states = {}
    for run in sweep.runs:
        status = existing.get(run.name)
        if status is None:
            states[run.name] = "new"
        elif not resume:
            raise PressoError(
                f"run {run.name!r} of sweep {sweep.name!r} already exists in {sweep.store}; "
                "continue the sweep with --resume, or give the sweep another name"
            )
        else:
            states[run.name] = "finished" if status == "finished" else "resume"
    return states


def run_sweep(
    sweep: Sweep, *, resume: bool = False, show_progress: bool = True, echo: Printer = print
) -> list[dict[str, Any]]:
    """Run (or resume) every run of the sweep; returns the sweep's table (see ``sweep_rows``)."""
    states = plan_runs(sweep, resume=resume)
    todo = [r for r in sweep.runs if states[r.name] != "finished"]
    done = len(sweep.runs) - len(todo)
    echo(
        f"sweep {sweep.name}: {len(sweep.runs)} runs into {sweep.store}"
        + (f" ({done} finished before)" if done else "")
    )
    kind = sweep.runs[0].experiment.runner.kind
    if todo and kind == "ray":
        _on_ray(sweep, todo, states, echo)
    else:
        from presso.run import run_search

        for i, run in enumerate(todo, 1):
            echo(f"\n[{i}/{len(todo)}] {run.name}")
            summary = run_search(
                run.experiment,
                resume=states[run.name] == "resume",
                show_progress=show_progress,
                echo=echo,
                sweep=sweep.record(run),
            )
            echo(_one_line(run.name, summary))
    return sweep_rows(sweep.store, sweep.name)


def _on_ray(sweep: Sweep, todo: list[SweepRun], states: dict[str, str], echo: Printer) -> None:
    """The runs as Ray tasks, one CPU each, as many at once as the cluster has CPUs for."""
    from presso.paths import cache_dir
    from presso.search._runner import connect_ray

    runner = todo[0].experiment.runner
    ray = connect_ray(runner.address, cpus=runner.workers)
    task = ray.remote(num_cpus=1, max_retries=0)(_run_task)
    cache = str(cache_dir())
    pending = {
        task.remote(
            run.experiment.to_dict(), states[run.name] == "resume", sweep.record(run), cache
        ): run.name
        for run in todo
    }
    failures = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            echo(_one_line(name, ray.get(ready[0])))
        except Exception as err:  # one run's failure is reported; the others go on
            first = str(getattr(err, "cause", None) or err).strip().splitlines()
            failures.append(f"{name}: {first[-1] if first else type(err).__name__}")
            echo(f"{name}: failed: {failures[-1]}")
    if failures:
        raise PressoError(
            f"{len(failures)} run(s) of sweep {sweep.name} failed ({failures[0]}); fix the "
            "cause and continue with --resume"
        )


def _run_task(experiment: dict, resume: bool, sweep: dict, cache: str) -> RunSummary:
    """One run inside a Ray task: in-process evaluation on the task's one CPU."""
    from presso.run import run_search

    exp = Experiment.model_validate(experiment)
    exp = exp.model_copy(
        update={"runner": exp.runner.model_copy(update={"kind": "local", "threads": 1})}
    )
    return run_search(
        exp, resume=resume, show_progress=False, echo=lambda s: None, sweep=sweep, cache_root=cache
    )


def _one_line(name: str, summary: RunSummary) -> str:
    row = _row(name, {}, summary, "finished")
    metric = row["metric"]
    return (
        f"{name}: finished; held-out {metric} {row['heldout']:.4g}"
        if metric
        else f"{name}: finished"
    )


# ---------------------------------------------------------------------- reading


def sweep_rows(store: str, sweep: str) -> list[dict[str, Any]]:
    """The sweep's runs in the store, in the order they were started: name, fields, status,
    the search's held-out metric and budget, and its best baseline's."""
    from presso.store import ResultsStore

    results = ResultsStore(store, read_only=True)
    rows = []
    for info in results.runs():
        if (info.get("sweep") or {}).get("name") != sweep:
            continue
        attrs = results.open(info["name"]).user_attrs
        rows.append(
            _row(
                info["name"],
                attrs["sweep"]["fields"],
                RunSummary.from_attrs(info["name"], attrs),
                info["status"],
                info["evaluations"],
            )
        )
    return rows


def _row(
    name: str,
    fields: dict[str, Any],
    summary: RunSummary,
    status: str,
    evaluations: int | None = None,
) -> dict[str, Any]:
    from presso.spaces import BUDGET_METRICS

    row: dict[str, Any] = {
        "run": name,
        "fields": fields,
        "status": status,
        "evaluations": evaluations,
    }
    row.update(metric=None, heldout=None, budget=None, best_baseline=None, baseline_heldout=None)
    cands = summary.candidates
    search = cands.get("search")
    if not search:
        return row
    heldout = search.heldout
    metric = next((m for m in ("ppl", "cos_dist", "kl") if m in heldout), None)
    row["metric"], row["heldout"] = metric, heldout.get(metric)
    row["budget"] = {m: search.metrics[m] for m in BUDGET_METRICS if m in search.metrics}
    baselines = {
        p.removeprefix("baseline:"): c.heldout[metric]
        for p, c in cands.items()
        if p.startswith("baseline:") and metric in c.heldout
    }
    if baselines:
        best = min(baselines, key=baselines.__getitem__)
        row["best_baseline"], row["baseline_heldout"] = best, baselines[best]
    return row


def sweep_lines(sweep: str, rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's table as text."""
    if not rows:
        return [f"no runs of sweep {sweep!r} in this store"]
    lines = [
        "",
        f"sweep {sweep}: {len(rows)} runs",
        f"{'run':<44} {'status':<9} {'evals':>6} {'budget':>18} {'held-out':>16} "
        f"{'best baseline':>26}",
    ]
    for r in rows:
        budget = ", ".join(f"{k} {v:.3g}" for k, v in (r["budget"] or {}).items()) or "-"
        held = f"{r['metric']} {r['heldout']:.4g}" if r["metric"] else "-"
        base = f"{r['best_baseline']} {r['baseline_heldout']:.4g}" if r["best_baseline"] else "-"
        evals = r["evaluations"] if r["evaluations"] is not None else "-"
        lines.append(
            f"{r['run']:<44} {r['status']:<9} {evals:>6} {budget:>18} {held:>16} {base:>26}"
        )
    return lines
