"""The profiling campaign: fill the profile database for a model's search space, fit the
latency model that prices candidates, and validate its prices end to end.

``presso profile`` runs :func:`profile_model`: every distinct linear shape of the model at
every level, under every workload, plus the assembled dense model with one block (and one
attention, one MLP) removed — each measured once per machine and kept in the profile
database, so an interrupted run resumes and later searches reuse it. :func:`latency_model`
turns those measurements into a :class:`CandidateLatency`; :func:`validate` assembles random
candidates for real, measures them end to end, and reports how far the predictions are off.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.errors import MissingExtraError, PressoError
from presso.paths import digest
from presso.profilers import LinearOp, Measurement, ProfileDatabase, Profiler, Workload
from presso.profilers._base import DENSE_BITS, levels_plan
from presso.runtimes._base import unit_levels

if TYPE_CHECKING:
    from presso.plan import Plan

Progress = Callable[[Iterable, int, str], Iterable]


def machine_id(profiler: Profiler, db: ProfileDatabase | None = None) -> str:
    """The fingerprint measurements of ``profiler`` are stored under (threads included: the
    same machine with more threads is another machine for latency)."""
    from presso.profilers import fingerprint

    software = {**profiler.versions(), "threads": str(profiler.threads or "default")}
    fp, facts = fingerprint(profiler.device, software)
    if db is not None:
        db.add_machine(fp, facts)
    return fp


def model_key(handle: Any) -> str:
    """Whole-model measurements are keyed by architecture (not weights: they do not change speed)."""
    config = handle.model.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # diffusers': a dict
    arch = {k: v for k, v in config.items() if not k.startswith(("_", "transformers_version"))}
    return f"model-{handle.name}-{digest(arch, 10)}"


def unit_ops(
    handle: Any,
    bits: Sequence[int],
    sparsity: Sequence[int],
    group_size: int | None,
    structured: Sequence[int] = (),
) -> list[LinearOp]:
    """Each distinct linear shape of the model at each level (bits × sparsity), dense included;
    and, dense and at each bit width, each smaller shape a ``structured`` level (percent of
    heads / FFN channels kept) gives a unit."""
    shapes = sorted({u.shape for u in handle.units})
    ops = []
    for out, inp in shapes:
        for b in sorted(set(bits) | {DENSE_BITS}):
            for s in sorted(set(sparsity) | {0}):
                ops.append(LinearOp(out, inp, b, s, group_size if b < DENSE_BITS else None))
    smaller = sorted(structured_shapes(handle, structured) - set(shapes))
    for out, inp in smaller:  # pruned units run dense or at their bits (not sparse)
        for b in sorted(set(bits) | {DENSE_BITS}):
            ops.append(LinearOp(out, inp, b, 0, group_size if b < DENSE_BITS else None))
    return ops


def structured_shapes(handle: Any, levels: Sequence[int]) -> set[tuple[int, int]]:
    """The ``(out, in)`` shapes of the units of ``handle``'s attentions and FFNs with
    ``levels`` percent of their heads or channels kept."""
    from presso.structures import model_structures

    if not levels:
        return set()
    shape = {u.name: u.shape for u in handle.units}
    out: set[tuple[int, int]] = set()
    for s in model_structures(handle):
        for percent in levels:
            n = s.kept(percent)
            out.add((shape[s.consumer][0], n * s.group_size))
            out |= {(n * s.group_size, shape[p][1]) for p in s.producers}
            out |= {(n * s.kv_rows, shape[k][1]) for k in s.kv}
    return out


def structure_probes(
    handle: Any,
    sublayers: bool,
    low: tuple[int, int | None] | None = None,
    structured: Sequence[int] = (),
) -> dict[str, Plan]:
    """The assembled models whose end-to-end times give the structure: dense; a quarter, half
    and three quarters of the inner blocks removed; half the attentions, half the MLPs; and,
    with ``low = (bits, group_size)``, every unit at ``bits`` (the in-model calibration of
    the layer timings, see :class:`presso.cost_models.CandidateLatency`); with
    ``structured``, every attention and FFN at each of those percents kept (the same
    calibration, for a model whose levels are shapes)."""
    inner = handle.block_names()[1:-1]  # the first and last blocks are never dropped
    probes = {"dense": levels_plan()}
    if low is not None:
        bits, group = low
        units = {u.name: (bits, 0) for u in handle.units}
        probes[uniform_probe(bits, group)] = levels_plan(units, group_size=group)
    for percent in sorted(set(structured)):
        probes[structured_probe(percent)] = uniform_structured(handle, percent)
    for k in sorted({max(1, len(inner) * q // 4) for q in (1, 2, 3)}):
        probes[f"drop-blocks-{k}"] = levels_plan(dropped=_spread(inner, k))
    if sublayers:
        half = max(1, len(inner) // 2)
        chosen = _spread(inner, half)
        probes[f"drop-attn-{half}"] = levels_plan(dropped=tuple(f"{b}.self_attn" for b in chosen))
        probes[f"drop-mlp-{half}"] = levels_plan(dropped=tuple(f"{b}.mlp" for b in chosen))
    return probes


def uniform_probe(bits: int, group_size: int | None) -> str:
    return f"uniform-w{bits}-" + ("ch" if group_size is None else f"g{group_size}")


def structured_probe(percent: int) -> str:
    return f"uniform-structured-{percent}"


def uniform_structured(handle: Any, percent: int) -> Plan:
    """Every attention and FFN of ``handle`` keeping ``percent`` of its heads or channels."""
    from presso.plan import Plan
    from presso.structures import model_structures

    return Plan({s.consumer: {"structured": int(percent)} for s in model_structures(handle)})


def calibration_level(ops: Sequence[LinearOp]) -> tuple[int, int | None] | None:
    """``(bits, group_size)`` of the uniform model that calibrates ``ops``: their lowest
    dense-sparsity bit width (None when they hold no quantized level)."""
    quantized = [op for op in ops if op.bits < DENSE_BITS and op.sparsity == 0]
    if not quantized:
        return None
    low = min(quantized, key=lambda op: op.bits)
    return low.bits, low.group_size


def _spread(names: Sequence[str], k: int) -> tuple[str, ...]:
    """``k`` of ``names``, evenly spaced."""
    idx = np.linspace(0, len(names) - 1, k).round().astype(int)
    return tuple(names[i] for i in sorted(set(idx)))


def has_sublayers(handle: Any) -> bool:
    modules = dict(handle.model.named_modules())
    block = handle.block_names()[0]
    return f"{block}.self_attn" in modules and f"{block}.mlp" in modules


@dataclass
class ProfileReport:
    measured: int = 0
    reused: int = 0
    failed: list[Measurement] = field(default_factory=list)
    seconds: float = 0.0


def profile_model(
    handle: Any,
    profiler: Profiler,
    db: ProfileDatabase,
    workloads: Sequence[Workload],
    ops: Sequence[LinearOp],
    *,
    progress: Progress | None = None,
    structured: Sequence[int] = (),
) -> ProfileReport:
    """Measure what the database lacks for ``ops`` and the model's structure under each
    workload (``structured``: the structured levels below 100 %, whose uniform models
    calibrate the layer timings, with the uniform bit width's where the space has bits)."""
    import time

    start = time.perf_counter()
    fp = machine_id(profiler, db)
    key = model_key(handle)
    todo: list[tuple[str, Workload, Any]] = []
    report = ProfileReport()
    for w in workloads:
        for op in ops:
            todo.append((op.key, w, op))
        low = calibration_level(ops)
        probes = structure_probes(handle, has_sublayers(handle), low, structured)
        for name, plan in probes.items():
            todo.append((f"{key}/{name}", w, plan))
    pending = []
    for op_key, w, what in todo:
        if db.get(fp, profiler.name, op_key, w.key) is not None:
            report.reused += 1
        else:
            pending.append((op_key, w, what))
    # New layer timings are taken now; the structure probes (dense, blocks removed, the
    # calibration model) are timed again with them. A prediction divides the dense model's
    # time by the target: probes from another day (another load, another clock) against
    # layers timed today put the target off by that drift.
    fresh = {w.key for _, w, what in pending if isinstance(what, LinearOp)}
    missing = {(k, w.key) for k, w, _ in pending}
    stale = [
        (k, w, what)
        for k, w, what in todo
        if not isinstance(what, LinearOp) and w.key in fresh and (k, w.key) not in missing
    ]
    pending += stale
    report.reused -= len(stale)
    ops_todo = [(k, w, what) for k, w, what in pending if isinstance(what, LinearOp)]
    models_todo = [(k, w, what) for k, w, what in pending if not isinstance(what, LinearOp)]
    items: Iterable = ops_todo
    if progress is not None and ops_todo:
        items = progress(ops_todo, len(ops_todo), f"profiling layers on {profiler.name}")
    for _, w, op in items:
        _store(db, fp, profiler.measure(op, w), report)
    if models_todo:
        if progress is not None:
            print(f"timing {len(models_todo)} assembled models on {profiler.name}", flush=True)
        for m in interleaved(handle, profiler, models_todo):
            _store(db, fp, m, report)
    report.seconds = time.perf_counter() - start
    return report


def _store(db: ProfileDatabase, fp: str, m: Measurement, report: ProfileReport) -> None:
    db.put(fp, m)
    report.measured += 1
    if not m.ok:
        report.failed.append(m)


def interleaved(
    handle: Any,
    profiler: Profiler,
    todo: Sequence[tuple[str, Workload, Plan]],
    rounds: int = 3,
) -> list[Measurement]:
    """Whole-model times, taken in ``rounds`` round-robin passes and combined (median of the
    per-round medians): the structure is read from differences between these times, so drift
    in the machine's load must hit every probe alike, not one of them."""
    import statistics

    repeats = profiler.repeats
    profiler.repeats = max(3, repeats // rounds)
    per: dict[int, list[Measurement]] = {i: [] for i in range(len(todo))}
    try:
        with profiler.keeping_builds():  # each probe is assembled once, not once per round
            for _ in range(rounds):
                for i, (_, w, plan) in enumerate(todo):
                    if per[i] and not per[i][-1].ok:
                        continue  # a probe that failed once will fail again
                    per[i].append(profiler.measure_model(handle, plan, w))
    finally:
        profiler.repeats = repeats
    out = []
    for i, (key, _, _) in enumerate(todo):
        runs = per[i]
        m = runs[-1]
        m.op = key
        if all(r.ok for r in runs):
            medians = [r.median_ms for r in runs]
            m.median_ms = statistics.median(medians)
            m.spread_ms = max(medians) - min(medians)
            m.repeats = sum(r.repeats for r in runs)
        out.append(m)
    return out


def time_end_to_end(
    handle: Any,
    profiler: Profiler,
    workload: Workload,
    plans: dict[str, Plan],
    dense: Plan | None = None,
) -> dict[str, float | None]:
    """Each plan built for real on the backend and timed end to end, beside the dense model
    (key ``dense``; ``dense``: its plan, when not the plan of no levels), round-robin so that
    load drifts hit all alike: ms, None where it failed. What a latency target is verified
    with — the cost model only predicted it."""
    dense = levels_plan() if dense is None else dense
    todo = [("dense", workload, dense), *((k, workload, p) for k, p in plans.items())]
    return {m.op: (m.median_ms if m.ok else None) for m in interleaved(handle, profiler, todo)}


def latency_model(
    handle: Any,
    profiler: Profiler,
    db: ProfileDatabase,
    workload: Workload,
    *,
    group_size: int | None,
    cost_model: str = "lookup",
    kinds: Collection[str] | None = None,
) -> Any:
    """A CandidateLatency from this machine's measurements (which must exist: profile first).
    ``kinds``: the space's knob kinds; the in-model factor is fitted to the uniform models of
    those only (a bits probe left by another run says nothing about a structured-only space),
    None: to every uniform model measured."""
    from presso.cost_models._base import make_cost_model
    from presso.cost_models._candidate import CandidateLatency, Structure, UnitSlot
    from presso.cost_models._learned import BoostedTrees
    from presso.cost_models._lookup import LookupTable

    fp = machine_id(profiler)
    measurements = db.measurements(fp, profiler.name)
    key = model_key(handle)

    def probe(name: str) -> float | None:
        m = db.get(fp, profiler.name, f"{key}/{name}", workload.key)
        if m is None:
            return None
        if not m.ok:
            raise PressoError(
                f"the {profiler.name} backend could not run {handle.name} end to end at "
                f"{workload.key}: {m.error}"
            )
        return m.median_ms

    sub = has_sublayers(handle)
    probes = structure_probes(handle, sub)
    times = {name: probe(name) for name in probes}
    if any(v is None for v in times.values()):
        raise PressoError(
            f"no measurements of {handle.name} on {profiler.name} at {workload.key} on this "
            f"machine; run `presso profile {handle.name} --backend {profiler.name}` first"
        )

    def removed(prefix: str) -> tuple[int, float] | None:
        found = [(int(n.rsplit("-", 1)[1]), t) for n, t in times.items() if n.startswith(prefix)]
        return found[0] if found else None

    blocks = {int(n.rsplit("-", 1)[1]): t for n, t in times.items() if n.startswith("drop-blocks-")}
    structure = Structure.fit(times["dense"], blocks, removed("drop-attn-"), removed("drop-mlp-"))
    prefix = handle.blocks_prefix + "."
    units = []
    for u in handle.units:
        part = u.name[len(prefix) :].split(".")[1] if sub else ""
        units.append(
            UnitSlot(u.name, u.shape, u.block, part if part in ("self_attn", "mlp") else "")
        )
    calibration: tuple[int, float] | None = None
    wants = (lambda kind: True) if kinds is None else (lambda kind: kind in kinds)
    for bits in range(2, 9) if wants("bits") else ():  # the lowest uniform model measured
        m = db.get(fp, profiler.name, f"{key}/{uniform_probe(bits, group_size)}", workload.key)
        if m is not None and m.ok:
            calibration = (bits, m.median_ms)
            break
    structured: list[tuple[Plan, float]] = []
    for percent in range(1, 100) if wants("structured") else ():
        m = db.get(fp, profiler.name, f"{key}/{structured_probe(percent)}", workload.key)
        if m is not None and m.ok:  # every uniform structured level measured
            structured.append((uniform_structured(handle, percent), m.median_ms))
    ops = make_cost_model(cost_model).fit(measurements)
    fallback = None
    if isinstance(ops, LookupTable):
        try:  # the learned model prices what the table lacks; without scikit-learn, nothing does
            fallback = BoostedTrees().fit(measurements)
        except MissingExtraError:
            pass
    return CandidateLatency(
        ops,
        units,
        handle.block_names(),
        structure,
        workload,
        group_size=group_size,
        fallback=fallback,
        calibration=calibration,
        structures=_structures(handle),
        structured_calibration=structured,
    )


def _structures(handle: Any) -> list[Any]:
    """The model's attentions and FFNs, or none for an architecture presso cannot prune so."""
    from presso.structures import model_structures

    try:
        return model_structures(handle)
    except PressoError:
        return []


def random_assignment(
    handle: Any,
    rng: np.random.Generator,
    *,
    bits: Sequence[int],
    sparsity: Sequence[int] = (0,),
    max_dropped: int = 0,
    group_size: int | None,
) -> Plan:
    """A random candidate: each unit at a random level, up to ``max_dropped`` blocks removed.

    Each candidate draws its own mix of levels (Dirichlet weights) before its units draw
    from it: with one fixed uniform mix every candidate lands near the same mean bits and the
    same latency, and validation could not tell a model that ranks candidates from one that
    predicts a constant.
    """
    levels = [(int(b), int(s)) for b in bits for s in sparsity]
    mix = rng.dirichlet(np.ones(len(levels)))
    picks = rng.choice(len(levels), size=len(handle.units), p=mix)
    units = {u.name: levels[i] for u, i in zip(handle.units, picks)}
    n = int(rng.integers(0, max_dropped + 1)) if max_dropped else 0
    blocks = handle.block_names()
    # Never the first or last block: removing them wrecks a model, nobody would deploy that.
    dropped = tuple(sorted(rng.choice(blocks[1:-1], size=n, replace=False))) if n else ()
    return levels_plan(units, dropped, group_size)


def random_structured(handle: Any, rng: np.random.Generator, levels: Sequence[int]) -> Plan:
    """A random structured candidate: each attention and FFN of ``handle`` keeps a random
    level (percent) of its heads or channels, drawn from a mix of its own (see
    :func:`random_assignment`)."""
    from presso.plan import Plan
    from presso.structures import model_structures

    structures = model_structures(handle)
    mix = rng.dirichlet(np.ones(len(levels)))
    picks = rng.choice(len(levels), size=len(structures), p=mix)
    return Plan({s.consumer: {"structured": int(levels[i])} for s, i in zip(structures, picks)})


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (no ties expected in timings): how well one ordering of
    candidates follows the other, which is what a search needs from a latency model."""
    if len(a) < 3:
        return float("nan")
    ra = np.argsort(np.argsort(np.asarray(a, dtype=np.float64)))
    rb = np.argsort(np.argsort(np.asarray(b, dtype=np.float64)))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class Validation:
    rows: list[dict[str, Any]]

    def errors(self, column: str = "predicted_ms") -> np.ndarray:
        ok = [r for r in self.rows if r["measured_ms"] is not None]
        measured = np.array([r["measured_ms"] for r in ok])
        predicted = np.array([r[column] for r in ok])
        return np.abs(predicted - measured) / measured

    def summary(self, column: str = "predicted_ms") -> dict[str, float]:
        """MAPE, the share within ±10%, and the rank correlation of predicted with measured."""
        e = self.errors(column)
        if not len(e):
            return {
                "mape": float("nan"),
                "within_10": float("nan"),
                "spearman": float("nan"),
                "n": 0,
            }
        ok = [r for r in self.rows if r["measured_ms"] is not None]
        rho = rank_correlation([r["measured_ms"] for r in ok], [r[column] for r in ok])
        return {
            "mape": float(e.mean()),
            "within_10": float((e <= 0.10).mean()),
            "spearman": rho,
            "n": int(len(e)),
        }


def validate(
    handle: Any,
    profiler: Profiler,
    db: ProfileDatabase,
    models: dict[str, Any],
    workload: Workload,
    candidates: Sequence[Plan],
    *,
    progress: Progress | None = None,
) -> Validation:
    """Measure each candidate assembled for real and compare with each model's prediction
    (``models``: column name → CandidateLatency). Candidates the database lacks are timed in
    round-robin passes (as the structure probes are), so drift in the machine's load spreads
    over all of them instead of making some look slow. Measurements are kept in the database."""
    fp = machine_id(profiler, db)
    key = model_key(handle)
    names = [f"{key}/candidate-{a.digest(12)}" for a in candidates]
    found = {n: db.get(fp, profiler.name, n, workload.key) for n in names}
    todo = [(n, workload, a) for n, a in zip(names, candidates) if found[n] is None]
    if todo:
        if progress is not None:
            print(
                f"timing {len(todo)} candidates end to end on {profiler.name} "
                "(3 interleaved rounds)",
                flush=True,
            )
        for m in interleaved(handle, profiler, todo):
            db.put(fp, m)
            found[m.op] = m
    rows = []
    for name, plan in zip(names, candidates):
        m = found[name]
        row: dict[str, Any] = {
            "candidate": name.rsplit("/", 1)[1],
            "dropped": len(plan.dropped),
            "mean_bits": (
                float(np.mean([unit_levels(plan, u)[0] for u in plan.units]))
                if plan.units
                else None
            ),
            "measured_ms": m.median_ms,
            "error": m.error,
        }
        for column, model in models.items():
            row[column] = model.predict(plan)
        rows.append(row)
    return Validation(rows)
