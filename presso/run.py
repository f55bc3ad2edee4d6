"""``presso search``: prepare, run the strategy and the baselines, score the winners held-out.

Phases of a run: ``search`` (the experiment's strategy) then one ``baseline:NAME`` per
baseline. Every evaluation is recorded as it finishes; on ``--resume`` each phase's
strategy is replayed from the store and only what is missing is evaluated.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from presso.config import Experiment
from presso.errors import PressoError
from presso.experiment import EvaluatorFactory, Setup, default_threads
from presso.replay import failures, resume_state
from presso.store import CHUNK, Evaluation, ResultsStore, sqlite_path
from presso.summary import RunSummary, summary_note

Printer = Callable[[str], None]


def run_search(
    exp: Experiment,
    *,
    resume: bool = False,
    store: ResultsStore | None = None,
    show_progress: bool = True,
    echo: Printer = print,
    cache_root: str | None = None,
    sweep: dict[str, Any] | None = None,
) -> RunSummary:
    """Run (or resume) the experiment; returns the run's summary (also stored with the run).
    ``sweep``: the sweep this run belongs to (see presso.sweep), stored with it."""
    import torch

    from presso.evaluation import Objective, Request
    from presso.search import LocalPool, RayPool, drive, make_strategy
    from presso.search._runner import check_address

    check_extras(exp)  # in a moment, before minutes of preparing the model and its levels
    run = exp.name or "run"
    stored_by_phase: dict[str, dict] = {}
    if resume:
        store = store or ResultsStore(exp.store, must_exist=True)
        study = store.open(run)
        _check_same_experiment(study.user_attrs.get("experiment", {}), exp.to_dict(), run)
        if study.user_attrs.get("status") == "finished":
            echo(f"run {run!r} is already finished")
            return RunSummary.from_attrs(run, study.user_attrs)
    elif store is None:
        _check_new_run(exp.store, run)  # the store itself is created with the run, below
    else:
        store.ensure_new(run)
    if exp.runner.kind == "ray":
        check_address(exp.runner.address)  # in seconds, before the model is prepared

    threads = exp.runner.threads or default_threads(
        exp.runner.workers if exp.runner.kind == "ray" else 1
    )
    torch.set_num_threads(threads)
    setup = Setup(exp, cache_root=cache_root)
    progress = _tqdm if show_progress else None
    timings = setup.prepare(progress)
    space = setup.space
    echo(f"model {exp.model}: {len(space)} units; {space.describe()}")
    _check_objectives(exp.objectives or default_objectives(setup), setup)  # before the store
    # The workers before the store too: a Ray cluster that does not answer is said before a
    # run is recorded (the user fixes runner.address and starts again, no --resume needed).
    evaluator = setup.evaluator()
    if exp.runner.kind == "ray":
        pool: Any = RayPool(
            EvaluatorFactory(setup.to_spec(), build=bool(exp.runner.address)),
            workers=exp.runner.workers,
            address=exp.runner.address,
            threads=threads,
        )
    else:
        pool = LocalPool(evaluator)
    context = setup.context(
        [(exp.search.strategy, exp.search.options), *exp.baselines], progress, evaluator
    )
    objectives = exp.objectives or default_objectives(setup)
    phases = [
        (
            "search",
            exp.search.strategy,
            _with_objectives(
                exp.search.strategy, exp.search.options, objectives, bool(exp.objectives)
            ),
        )
    ]
    phases += [(f"baseline:{b}", b, {}) for b in exp.baselines if b != exp.search.strategy]
    multi = "objectives" in phases[0][2]
    fitness = default_objectives(setup)[0]
    # Every strategy is made before the first evaluation: a baseline that cannot work on this
    # space is said now, before the store is touched, not after the search's minutes.
    strategies = {}
    for phase, name, options in phases:
        try:
            strategies[phase] = make_strategy(
                name, space, seed=exp.search.seed, context=context, **options
            )
        except (TypeError, ValueError) as err:
            raise PressoError(f"{phase}: strategy {name!r}: {err}") from None

    created = [] if resume else _missing_paths(exp.store)
    if resume:
        study = store.open(run)
        stored_by_phase, retried = resume_state(store, run, space)
        n = sum(len(v) for v in stored_by_phase.values())
        again = f"; {retried} that failed will be evaluated again" if retried else ""
        echo(f"resuming {run!r}: {n} evaluations already stored{again}")
    else:
        store = store or ResultsStore(exp.store)
        answers = objectives if multi else [f"heldout_{fitness}"]
        study = store.create(run, exp.to_dict(), space, answers)
        if sweep is not None:
            study.set_user_attr("sweep", sweep)
    winners: dict[str, Any] = {}
    search_start = time.perf_counter()
    evaluations = 0
    recorder = _Recorder(store, study, space)
    failed = False
    try:
        for phase, name, _ in phases:
            strategy = strategies[phase]
            bar = _StepBar(
                phase, show_progress, strategy.planned, len(stored_by_phase.get(phase, {}))
            )

            def record(
                step: int,
                index: int,
                request: Request,
                result: Any,
                _phase: str = phase,
                _bar: Any = bar,
            ) -> None:
                recorder.put(_phase, step, index, request, result)
                _bar.saw(result)

            def end_step(step: int, strategy: Any, _bar: Any = bar) -> None:
                recorder.flush()  # a step's evaluations are stored before the next step starts
                _bar.step(step, strategy)

            evaluations += drive(
                strategy,
                pool,
                stored=stored_by_phase.get(phase),
                on_result=record,
                on_step=end_step,
            )
            bar.close()
            best = strategy.best()
            if best is None:
                raise PressoError(
                    f"{phase}: strategy {name!r} found no configuration that could be evaluated"
                )
            winners[phase] = (name, best)
    except Exception:
        failed = True
        raise
    finally:
        pool.close()
        recorder.close()  # also on Ctrl-C: what was evaluated is stored
        if failed and not resume:
            _forget_empty_run(store, run, created)
    search_s = time.perf_counter() - search_start

    summary: dict[str, Any] = {
        "run": run,
        "fitness": evaluator.fitness_metric,
        "timings": {**timings, "search_s": search_s},
        "candidates": {},
    }
    for phase, (name, config) in winners.items():
        heldout = evaluator.heldout(config)
        summary["candidates"][phase] = {
            "strategy": name,
            "levels": space.values(config),
            **space.metrics(config),
            "heldout": heldout,
        }
    if not multi:  # the candidate Optuna's best_trial names too (see presso.store)
        summary["winner"] = min(
            summary["candidates"], key=lambda p: summary["candidates"][p]["heldout"][fitness]
        )
    summary["dense"] = evaluator.heldout_dense()
    if (check := _check_latency(setup, winners, echo)) is not None:
        summary["latency_check"] = check
        for phase, ms in check.pop("candidates").items():
            if ms is not None and check["dense_ms"]:  # else `presso show` says it failed
                speedup = check["dense_ms"] / ms
                summary["candidates"][phase].update(measured_ms=ms, measured_speedup=speedup)
    summary["evaluations"] = evaluations
    stored = store.evaluations(run)
    summary.update(failures(store, stored))
    summary["pareto"] = _pareto(store, stored, objectives, space, evaluator if multi else None)
    if multi and any(Objective.parse(o).metric == "latency_ms" for o in objectives):
        _measure_front(setup, summary["pareto"], echo)
    store.add_answers(study, space, _answers(summary, fitness, multi))
    typed = RunSummary.from_attrs(run, {**study.user_attrs, "summary": summary})
    store.set_summary(study, summary, summary_note(typed))
    return RunSummary.from_attrs(run, study.user_attrs)


def _check_latency(setup: Setup, winners: dict[str, Any], echo: Printer) -> dict | None:
    """Under a latency budget, every chosen candidate built on the backend and timed end to
    end beside the dense model: the budget was met on the cost model's prediction, the user
    asked for a measured speedup. None without a latency budget."""
    space = setup.space
    budget = [c for c in space.constraints if c.metric == "latency_ms"]
    if not budget:
        return None
    hw = setup.experiment.hardware
    echo(f"timing the chosen candidates end to end on {hw.backend} {setup.workload.key} ...")
    plans = {phase: space.plan(config) for phase, (_, config) in winners.items()}
    dense, measured = _time_beside_dense(setup, plans)
    sp = setup.experiment.space
    return {
        "backend": hw.backend,
        "workload": setup.workload.key,
        "limit_ms": budget[0].limit,
        "target_speedup": sp.speedup,
        "dense_ms": dense,
        "predicted_dense_ms": setup.latency.dense_ms,
        "candidates": measured,
    }


def _time_beside_dense(
    setup: Setup, plans: dict[str, Any]
) -> tuple[float | None, dict[str, float | None]]:
    """``plans`` built on the experiment's backend and timed end to end, round-robin beside
    the dense model (for a diffusion model, DDIM over every candidate step): the dense ms and
    each plan's (None where it failed)."""
    from presso.cost_models._campaign import time_end_to_end

    dense = setup.latency.dense_plan() if setup.diffusion else None
    measured = time_end_to_end(setup.handle, setup.profiler, setup.workload, plans, dense)
    return measured.pop("dense"), measured


def _measure_front(setup: Setup, pareto: dict[str, Any], echo: Printer) -> None:
    """A front over predicted latency, its held-out points built on the backend and timed end
    to end beside the dense model (into each held-out entry: ``measured_ms``,
    ``measured_speedup``; the front: ``dense_ms``), so the trade-off shown is a measured one."""
    space = setup.space
    points = {
        str(h["index"]): space.from_dict(dict(zip(space.names, pareto["levels"][h["index"]])))
        for h in pareto["heldout"]
    }
    if not points:
        return
    hw = setup.experiment.hardware
    echo(f"timing {len(points)} points of the front end to end on {hw.backend} ...")
    dense, measured = _time_beside_dense(setup, {i: space.plan(c) for i, c in points.items()})
    pareto["dense_ms"] = dense
    for h in pareto["heldout"]:
        ms = measured.get(str(h["index"]))
        if ms is not None and dense:
            h.update(measured_ms=ms, measured_speedup=dense / ms)


def _answers(summary: dict[str, Any], fitness: str, multi: bool) -> list[dict[str, Any]]:
    """The run's answers as the study's COMPLETE trials (see presso.store): the Pareto front
    valued by its objectives, or each candidate valued by its held-out fitness."""
    from presso.evaluation import Objective

    if not multi:
        return [
            {
                "candidate": phase,
                "levels": c["levels"],
                "values": [c["heldout"][fitness]],
                "strategy": c["strategy"],
                "fidelity": "held-out windows",
                "heldout": c["heldout"],
            }
            for phase, c in summary["candidates"].items()
        ]
    pareto = summary["pareto"]
    heldout = {h["index"]: h for h in pareto.get("heldout", [])}
    return [
        {
            "candidate": f"pareto:{i}",
            "levels": levels,
            # The front is kept as minimised values: a maximised objective is negated back.
            "values": [
                Objective.parse(o).minimised(v) for v, o in zip(point, pareto["objectives"])
            ],
            "fidelity": "calibration, the search's largest sample",
            **({"heldout": heldout[i]} if i in heldout else {}),
        }
        for i, (point, levels) in enumerate(zip(pareto["points"], pareto["levels"]))
    ]


def check_extras(exp: Experiment) -> None:
    """Refuse, before any work, an experiment that needs a package not installed: the ray
    runner, a hardware backend (onnxruntime, tvm, triton), the learned cost model, the gp
    strategy. One line naming the extra to install (:class:`MissingExtraError`)."""
    import importlib.util

    from presso.diffusion import is_diffusion_model, require
    from presso.errors import MissingExtraError

    if is_diffusion_model(exp.model):
        require(f"model {exp.model}")
    needs = []  # (package, extra, what needs it)
    if exp.runner.kind == "ray":
        needs.append(("ray", "ray", "runner.kind: ray"))
    if exp.hardware is not None:
        from presso.profilers import profiler_class

        profiler_class(exp.hardware.backend).check()
        if exp.hardware.cost_model == "learned":
            needs.append(("sklearn", "cost", "hardware.cost_model: learned"))
    if "gp" in (exp.search.strategy, *exp.baselines):
        needs.append(("scipy", "bayes", "the gp strategy"))
    for package, extra, purpose in needs:
        if importlib.util.find_spec(package) is None:
            raise MissingExtraError(package.replace("sklearn", "scikit-learn"), extra, purpose)


def _check_new_run(store: str, run: str) -> None:
    """Refuse a taken run name, or a store file that is not presso's, by reading only: a new
    run's store is created when the run is (a failed preparation leaves none behind)."""
    path = sqlite_path(store)
    if path is not None and not path.exists():
        _check_can_create(path)
        return
    if path is not None and path.stat().st_size == 0:
        return
    ResultsStore(store, must_exist=path is not None).ensure_new(run)


def _check_can_create(path: Path) -> None:
    """Refuse, before the model is prepared, a store file that cannot be made (a read-only
    place, /proc, a file where a folder should be): a folder is made and removed at once in
    the nearest existing folder above it."""
    above = next(p for p in path.parents if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".presso-probe-", dir=above))
    except OSError as err:
        raise PressoError(
            f"store: cannot create {path} ({err.strerror} in {above}); give store: (or --store) "
            "a path in a folder you can write"
        ) from None


def _missing_paths(store: str) -> list[Path]:
    """The store file and the folders above it that do not exist yet (this run creates them)."""
    path = sqlite_path(store)
    if path is None:
        return []
    return [p for p in (path, *path.parents) if not p.exists()]


def _forget_empty_run(store: ResultsStore, run: str, created: list[Path]) -> None:
    """A new run that failed before its first evaluation leaves nothing behind: no record
    blocking its name, and no store file or folder that this run created and nothing else uses."""
    if not store.forget_if_empty(run) or not created or store.runs():
        return
    store.close()
    for path in created:  # the file first, then its folders, innermost first
        with contextlib.suppress(OSError):
            path.unlink() if path.is_file() else path.rmdir()


def _check_objectives(objectives: list[str], setup: Setup) -> None:
    """Refuse, before anything is evaluated, an objective this run does not measure (a front
    over it would come out empty)."""
    from presso.evaluation import Objective, fitness_metric, heldout_metrics

    space = setup.space
    measured = [c.metric for c in (*space.constraints, *space.reports)]
    measured = [fitness_metric(setup.handle.kind), *heldout_metrics(setup.handle.kind), *measured]
    measured = list(dict.fromkeys(measured))
    for name in objectives:
        if (metric := Objective.parse(name).metric) not in measured:
            raise PressoError(
                f"objectives: this run does not measure {metric!r} (model "
                f"{setup.handle.name}, a {', '.join(space.kinds())} space); it measures "
                f"{', '.join(measured)} — use those, or add the budget that measures it"
            )


def default_objectives(setup: Setup) -> list[str]:
    """The run's default objectives (see presso.evaluation.default_objectives)."""
    from presso.evaluation import default_objectives, fitness_metric

    return default_objectives(setup.space.constraints, fitness_metric(setup.handle.kind))


def _with_objectives(strategy: str, options: dict, objectives: list[str], explicit: bool) -> dict:
    """Give a strategy the run's objectives unless its options set their own: always for a
    multi-objective strategy (its default is None), and for a single-objective one (TPE, GP)
    only when the experiment file names objectives."""
    from presso.search import strategy_class

    option = strategy_class(strategy).option_types().get("objectives")
    if option is None or "objectives" in options or not (explicit or option[1] is None):
        return options
    return {**options, "objectives": list(objectives)}


#: Held-out metrics are measured for at most this many points of a Pareto front.
MAX_FRONT_HELDOUT = 12


def _pareto(
    store: ResultsStore,
    evaluations: list[Evaluation],
    objectives: list[str],
    space: Any,
    evaluator: Any,
) -> dict[str, Any]:
    """The search's Pareto front over ``objectives`` (minimised; ``-name`` maximises), among its
    evaluations at the largest calibration size (smaller ones are screening, not comparable).
    With an evaluator, up to MAX_FRONT_HELDOUT front points are also scored held-out.

    The records are read a chunk at a time and only the front so far is kept (with each
    objective's range, for the reference point): a front of a large run costs a front's memory.
    """
    import hashlib

    import numpy as np

    from presso.pareto import hypervolume, non_dominated, reference_point

    search = [e for e in evaluations if e.phase == "search" and e.fitness is not None]
    sizes = {e.tokens for e in search}
    top = None if None in sizes else max(sizes, default=None)
    front: list[tuple[list[float], list]] = []
    seen: set[bytes] = set()  # digests of the levels seen: a configuration counts once
    # ... and so do configurations that score alike on every objective (schedules of no step,
    # whatever they skip): one point of the front each, not one held-out score each.
    scored: set[tuple[float, ...]] = set()
    bounds = None  # each objective's finite minimum and maximum so far
    keep = 2 * CHUNK  # points held before the dominated ones are dropped
    for r in store.load(e for e in search if e.tokens == top):
        values = [_objective(r.metrics, o) for o in objectives]
        digest = hashlib.blake2b(np.asarray(r.levels, dtype=float).tobytes(), digest_size=16)
        if None in values or digest.digest() in seen or tuple(values) in scored:
            continue
        seen.add(digest.digest())
        scored.add(tuple(values))
        point = np.asarray(values, dtype=float)
        if np.isfinite(point).all():
            bounds = np.vstack([point, point]) if bounds is None else bounds
            bounds = np.vstack([np.minimum(bounds[0], point), np.maximum(bounds[1], point)])
        front.append((values, r.levels))
        if len(front) >= keep:  # what a point dominates now it dominates for good
            front = [front[i] for i in np.flatnonzero(non_dominated([v for v, _ in front]))]
            keep = max(keep, 2 * len(front))
    if not front:
        return {"objectives": objectives, "points": [], "levels": [], "hypervolume": 0.0}
    points = np.asarray([v for v, _ in front], dtype=float)
    mask = non_dominated(points)
    chosen = sorted((tuple(points[i]), front[i][1]) for i in np.flatnonzero(mask))
    # The range decides the reference point (see presso.pareto.reference_point): its ends
    # stand for every point seen.
    ref = reference_point(bounds if bounds is not None else points)
    result = {
        "objectives": objectives,
        "points": [list(p) for p, _ in chosen],
        "levels": [lv for _, lv in chosen],
        "hypervolume": float(hypervolume(points[mask], ref)) if len(objectives) in (2, 3) else None,
        "reference": [float(x) for x in ref],
        "heldout": [],
    }
    step = max(1, -(-len(chosen) // MAX_FRONT_HELDOUT))
    for i in range(0, len(chosen), step) if evaluator is not None else ():
        config = space.from_dict(dict(zip(space.names, chosen[i][1])))
        result["heldout"].append({"index": i, **evaluator.heldout(config)})
    return result


def _objective(metrics: dict, name: str) -> float | None:
    from presso.evaluation import Objective

    return Objective.parse(name).of(metrics)


def _check_same_experiment(old: dict, new: dict, run: str) -> None:
    # What does not change the results may differ on resume (e.g. moving to Ray).
    ignore = {"runner", "store"}
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        if old.get(key) != new.get(key):
            raise PressoError(
                f"run {run!r} was started with a different '{key}' section "
                f"({old.get(key)!r}); resume it with the same experiment file, or start a new run with --name"
            )


def _tqdm(iterable: Any, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)


class _Recorder:
    """Writes evaluations to the store on a background thread.

    Optuna inserts a trial's parameters one by one (about 0.2 s for a 210-unit configuration);
    on this thread that overlaps the next evaluation instead of adding to it. ``flush()`` waits
    for every queued write and re-raises one that failed.
    """

    def __init__(self, store: ResultsStore, study: Any, space: Any) -> None:
        self._store, self._study, self._space = store, study, space
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="presso-recorder", daemon=True)
        self._thread.start()

    def put(self, *record: Any) -> None:
        self._queue.put(record)

    def flush(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.flush()

    def _work(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                if self._error is None:
                    self._store.record(self._study, self._space, *record)
            except BaseException as err:  # re-raised in the driving thread by flush()
                self._error = err
            finally:
                self._queue.task_done()


class _StepBar:
    """One progress bar per phase: evaluations done out of the strategy's plan (so an ETA),
    the stored ones a resumed run replays counted as done, and a live best-so-far line."""

    def __init__(self, phase: str, show: bool, planned: int | None = None, stored: int = 0) -> None:
        self.phase = phase
        self.best: float | None = None
        self.failed = 0
        self._bar = None
        if show:
            from tqdm import tqdm

            total = None if planned is None else max(planned, stored)
            self._bar = tqdm(
                desc=phase, unit="eval", total=total, initial=stored, dynamic_ncols=True
            )

    def saw(self, result: Any) -> None:
        if not result.ok:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(1)

    def step(self, step: int, strategy: Any) -> None:
        if self._bar is None:
            return
        info = {"step": step + 1}
        history = getattr(strategy, "history", None)
        if history:
            info["best"] = f"{history[-1][1]:.4f}"
        if self.failed:
            info["failed"] = self.failed
        self._bar.set_postfix(info)

    def close(self) -> None:
        """After a phase finished: the plan was an upper bound (fewer distinct children, a
        confirmation not needed), so the bar ends at what was done, 100%."""
        if self._bar is not None:
            self._bar.total = self._bar.n
            self._bar.refresh()
            self._bar.close()
