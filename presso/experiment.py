"""One experiment end to end: prepare (model, data, level database, dense reference), search,
score the winners on held-out data, and store everything."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from presso.config import Experiment
from presso.errors import PressoError
from presso.paths import cache_dir

Progress = Callable[[Iterable, int, str], Iterable]


class Setup:
    """Everything an evaluator needs, built lazily from a validated experiment.

    measure_latency: with a ``hardware:`` section, profile the backend and price candidates
    (a search); False builds the same space without its latency budget or report, and times
    nothing (an export or a generation, which read the run's weights, not its prices).
    """

    def __init__(
        self,
        experiment: Experiment,
        *,
        cache_root: str | None = None,
        measure_latency: bool = True,
    ) -> None:
        self.experiment = experiment
        self.cache_root = Path(cache_root) if cache_root else cache_dir()
        self.measure_latency = measure_latency and experiment.hardware is not None
        self._level_dbs: dict[str, Any] = {}

    # A Ray actor rebuilds the setup from plain data.
    def to_spec(self) -> dict[str, Any]:
        return {"experiment": self.experiment.to_dict(), "cache_root": str(self.cache_root)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Setup:
        return cls(Experiment.model_validate(spec["experiment"]), cache_root=spec["cache_root"])

    @cached_property
    def handle(self):  # noqa: ANN201 - ModelHandle (a DiffusionModel), imported lazily
        from presso.models import load_model

        return load_model(self.experiment.model)

    @cached_property
    def diffusion(self) -> bool:
        """Whether the model is a diffusion model (its knobs are its sampling time steps)."""
        from presso.diffusion import is_diffusion_model

        return is_diffusion_model(self.experiment.model)

    @cached_property
    def timestep_grid(self) -> list[int]:
        """A diffusion model's candidate time steps (descending), see presso.spaces._steps."""
        from presso.diffusion._sample import trailing_grid

        return trailing_grid(self.handle.train_steps, self.experiment.schedule.candidates)

    @cached_property
    def data(self):  # noqa: ANN201 - CalibrationData
        from presso.data import build_calibration

        d = self.experiment.data
        if self.diffusion:  # the real images FID compares with (the model's size)
            from presso.diffusion._digits import load_digits

            return load_digits(self.handle.size, seed=d.seed)
        return build_calibration(
            self.handle.tokenizer,
            d.corpus,
            seq_len=d.seq_len,
            n_calibration=d.calibration,
            n_eval=d.evaluation,
            seed=d.seed,
            text_field=d.text_field,
        )

    def level_db(self, kind: str):  # noqa: ANN201 - LevelDatabase
        """The level database of ``kind`` (its operator's levels of every unit), made once."""
        if kind not in self._level_dbs:
            from presso.compress import make_operator
            from presso.leveldb import LevelDatabase
            from presso.spaces import KINDS

            k = KINDS.get(kind)
            section = getattr(self.experiment, k.section)
            k.check_model(self.experiment, self.handle)
            operator = make_operator(section.operator, **k.operator_options(section))
            calibration = f"{self.data.fingerprint}/{section.calibration}"
            self._level_dbs[kind] = LevelDatabase(
                self.cache_root / "levels",
                self.handle,
                operator,
                k.built_levels(section),
                calibration=calibration,
            )
        return self._level_dbs[kind]

    @cached_property
    def kinds(self) -> list[str]:
        return self.experiment.space.kinds()

    def dbs(self) -> dict[str, Any]:
        """The level database of each kind in the space that sets unit weights."""
        from presso.spaces import KINDS

        return {k: self.level_db(k) for k in self.kinds if KINDS.get(k).per_unit}

    @cached_property
    def space(self):  # noqa: ANN201 - SearchSpace
        from presso.spaces import KINDS, MaxParams, SearchSpace
        from presso.spaces._kinds import plan_settings

        sp, kinds = self.experiment.space, [KINDS.get(k) for k in self.kinds]
        joint = len(kinds) > 1
        dims, constraints = [], []
        for b, block in enumerate(self.handle.block_names()):
            units = [(u.name, u.shape) for u in self.handle.units if u.block == b]
            for kind in kinds:
                suffix = f":{kind.name}" if joint and kind.per_unit else ""
                dims += kind.dims(self, block, units, suffix=suffix)
        for kind in kinds:
            if getattr(sp, kind.budget) is not None:  # else a latency budget binds alone
                constraints.append(kind.constraint(getattr(sp, kind.budget), dims))
        units = [(u.name, u.params) for u in self.handle.units]
        if sp.max_params is not None:
            constraints.append(MaxParams(sp.max_params, units))
        if sp.max_size_mb is not None:
            constraints.append(self._size(units, sp.max_size_mb))
        reports = (
            [] if sp.max_size_mb is not None or not units else [self._size(units, float("inf"))]
        )
        if self.measure_latency:
            latency = self._latency_constraint()
            (constraints if latency.limit < float("inf") else reports).append(latency)
        settings = plan_settings(self.experiment.to_dict())
        space = SearchSpace(dims, constraints, reports, settings=settings)
        latency = [c for c in constraints if c.metric == "latency_ms"]
        if latency and not latency[0].feasible(space, space.lowest()):
            lowest = latency[0].value(space, space.lowest())
            dense = self.latency.dense_ms
            raise PressoError(
                f"space: even the cheapest levels are predicted at {lowest:.3f} ms on "
                f"{latency[0].label}, over the limit {latency[0].limit:.3f} ms (dense: "
                f"{dense:.3f} ms): this space can run at most {dense / lowest:.2f}x faster; "
                "raise the latency budget (a lower speedup), add a knob that saves more "
                "(lower levels, or kind: joint with dropped blocks), or choose another "
                "backend or workload"
            )
        if not space.is_feasible(space.lowest()):
            raise PressoError(f"space: no configuration meets {space.describe()}")
        return space

    def _size(self, units: list[tuple[str, int]], limit_mb: float):  # noqa: ANN202 - MaxSize
        from presso.spaces import MaxSize

        widths = {u.name: u.shape[1] for u in self.handle.units}
        group = self.experiment.compress.group_size
        return MaxSize(limit_mb, units, group_size=group, in_features=widths)

    # ------------------------------------------------------------------ latency

    @cached_property
    def profiler(self):  # noqa: ANN201 - presso.profilers.Profiler
        from presso.profilers import make_profiler

        hw = self.experiment.hardware
        return make_profiler(hw.backend, device=hw.device, threads=hw.threads, repeats=hw.repeats)

    @cached_property
    def profile_db(self):  # noqa: ANN201 - ProfileDatabase
        from presso.profilers import ProfileDatabase

        return ProfileDatabase(self.experiment.hardware.profile_db)

    @property
    def workload(self):  # noqa: ANN201 - Workload
        from presso.profilers import Workload

        w = self.experiment.hardware.workload
        if self.diffusion:  # images sampled together, at the model's resolution
            from presso.profilers._sampling import sampling_workload

            return sampling_workload(self.handle, w.batch)
        return Workload(batch=w.batch, seq_len=w.seq_len, phase=w.phase)

    def profile(self, progress: Progress | None = None) -> float:
        """Measure on the backend what the profile database lacks for this space; seconds."""
        from presso.cost_models._campaign import profile_model, unit_ops
        from presso.spaces._bits import BitsKind
        from presso.spaces._sparsity import SparsityKind
        from presso.spaces._structured import StructuredKind

        if self.diffusion:  # its UNet blocks and the per-step rest, at the workload's batch
            import time

            from presso.cost_models._sampling import profile_sampling

            start = time.perf_counter()
            profile_sampling(self.handle, self.profiler, self.profile_db, self.workload)
            return time.perf_counter() - start
        # The backends time linear layers at (bits, sparsity) levels, and at the smaller shapes
        # pruned heads and FFN channels leave.
        bits, sparsity = self._levels(BitsKind), self._levels(SparsityKind)
        structured = self._levels(StructuredKind)
        group = self.experiment.compress.group_size
        ops = unit_ops(self.handle, bits, sparsity, group, structured)
        report = profile_model(
            self.handle,
            self.profiler,
            self.profile_db,
            [self.workload],
            ops,
            progress=progress,
            structured=[level for level in structured if level < 100],
        )
        return report.seconds

    def _levels(self, kind: Any) -> list[int]:
        """The levels of ``kind`` in this space (none when the space lacks it)."""
        if kind.name not in self.kinds:
            return []
        return list(getattr(self.experiment, kind.section).levels)

    @cached_property
    def latency(self):  # noqa: ANN201 - CandidateLatency
        from presso.cost_models._campaign import latency_model

        hw = self.experiment.hardware
        if self.diffusion:
            from presso.cost_models._sampling import SamplingLatency

            return SamplingLatency.from_db(
                self.handle,
                self.profiler,
                self.profile_db,
                self.workload,
                candidates=self.experiment.schedule.candidates,
            )
        return latency_model(
            self.handle,
            self.profiler,
            self.profile_db,
            self.workload,
            group_size=self.experiment.compress.group_size,
            cost_model=hw.cost_model,
            kinds=self.kinds,
        )

    def _latency_constraint(self):  # noqa: ANN202 - MaxLatency
        from presso.spaces import MaxLatency

        sp, hw, latency = self.experiment.space, self.experiment.hardware, self.latency

        def predict(space, config) -> float:  # noqa: ANN001
            return latency.predict(space.plan(config))

        limit = float("inf")
        if sp.max_latency_ms is not None:
            limit = sp.max_latency_ms
        if sp.latency_ratio is not None:
            limit = min(limit, sp.latency_ratio * latency.dense_ms)
        if sp.speedup is not None:
            limit = min(limit, latency.dense_ms / sp.speedup)
        label = f"{hw.backend} {self.workload.key}"
        return MaxLatency(limit, predict, label=label)

    @cached_property
    def reference(self):  # noqa: ANN201 - DenseReference
        from presso.evaluator import DenseReference

        return DenseReference(self.cache_root / "reference", self.handle, self.data)

    def prepare(self, progress: Progress | None = None) -> dict[str, float]:
        """Build what is missing (level databases, dense reference, the hardware profile);
        returns timings in seconds."""
        timings = self.prepare_scoring(progress)
        if self.measure_latency:
            timings["profile_s"] = self.profile(progress)
        return timings

    def prepare_scoring(self, progress: Progress | None = None) -> dict[str, float]:
        """Build what scoring needs and is missing: the level databases and dense reference."""
        from presso.spaces import KINDS

        start = time.perf_counter()
        _ = self.data
        timings = {"load_s": time.perf_counter() - start}
        if self.diffusion:  # no levels to build: a schedule is sampled as it is scored
            return timings
        for kind, db in self.dbs().items():
            k = KINDS.get(kind)
            n = getattr(self.experiment, k.section).calibration
            timings[k.timing_key] = db.build(self.data.calibration[:n], progress=progress)
        timings["reference_s"] = self.reference.build(progress=progress)
        return timings

    def evaluator(self):  # noqa: ANN201 - Evaluator
        from presso.evaluator import Evaluator

        e = self.experiment.evaluation
        if self.diffusion:
            from presso.diffusion._evaluator import DiffusionEvaluator

            d = self.experiment.data
            return DiffusionEvaluator(
                self.handle,
                self.space,
                self.timestep_grid,
                self.data.train,
                self.data.heldout,
                pool=d.calibration,
                heldout_images=d.evaluation,
                seed=d.seed,
                batch_size=max(e.batch_size, 64),
            )
        return Evaluator(
            self.handle,
            self.data,
            self.dbs(),
            self.space,
            self.reference,
            batch_size=e.batch_size,
            cache_mb=e.cache_mb,
        )

    def context(  # noqa: ANN201 - search Context
        self,
        strategies: Sequence[str | tuple[str, dict[str, Any]]],
        progress: Progress | None = None,
        evaluator: Any = None,
    ):
        """What the strategies (names, or ``(name, options)``) need to know beyond the space;
        only what one of them needs is computed (see ``Strategy.needs``). ``evaluator``: the
        run's own, which measures the sensitivity table (evaluators that share a model must
        not interleave: each tracks the weights it set)."""
        from presso.importance import dim_blocks
        from presso.search import Context, strategy_class
        from presso.spaces import KINDS

        needs: set[str] = set()
        for item in strategies:
            name, options = (item, {}) if isinstance(item, str) else item
            needs |= strategy_class(name).needs(options)
        space, facts = self.space, {}
        if self.diffusion:  # a schedule's time steps: no blocks, tables or statistics
            return Context()
        facts["dim_blocks"] = dim_blocks(self.handle, space)
        windows = self.data.calibration
        if "sensitivity" in needs:
            facts["sensitivity"] = self.sensitivity(evaluator or self.evaluator(), progress)
        if "unit_errors" in needs and all(KINDS.get(k).per_unit for k in self.kinds):
            facts["unit_errors"] = self._unit_errors()
        if "block_importance" in needs:
            from presso.importance import block_influence

            facts["block_importance"] = tuple(block_influence(self.handle, windows))
        if "outlier_ratios" in needs:
            from presso.importance import outlier_ratios

            facts["outlier_ratios"] = tuple(outlier_ratios(self.handle, windows))
        return Context(**facts)

    def sensitivity(
        self, evaluator: Any, progress: Progress | None = None
    ) -> tuple[tuple[float, ...], ...]:
        """The per-unit sensitivity table (``presso.sensitivity``), measured once and cached."""
        return self.sensitivity_table(evaluator).build(progress)

    def sensitivity_table(self, evaluator: Any, measure: str | None = None):  # noqa: ANN201
        """The experiment's SensitivityTable over ``evaluator`` (``measure``: the file's
        ``search.sensitivity.measure`` unless given: ``lowest`` or ``all``)."""
        from presso.sensitivity import SensitivityTable

        config = self.experiment.search.sensitivity
        measure = measure or config.measure
        errors = self._unit_errors(depth_ok=True) if measure == "lowest" else None
        return SensitivityTable(
            self.cache_root / "sensitivity", evaluator, tokens=config.tokens, errors=errors
        )

    def _unit_errors(self, *, depth_ok: bool = False) -> tuple[tuple[float, ...], ...]:
        """Per dimension, per level, the unit's relative output error compressed alone (from
        the level databases); dimensions of kinds that set no weights (depth, with
        ``depth_ok``) have none: empty rows."""
        from presso.spaces import KINDS

        errors = {kind: db.unit_errors() for kind, db in self.dbs().items()}
        rows = []
        for d in self.space.dims:
            kind = KINDS.get(d.kind)
            if not kind.per_unit and depth_ok:
                rows.append(())
                continue
            rows.append(tuple(_level_error(errors[d.kind][d.target], v, kind) for v in d.levels))
        return tuple(rows)


def _level_error(errors: dict[int, float], value: float, kind: Any) -> float:
    """A unit's stored error at a level; dense levels (16 bits, 0% sparsity) have none."""
    if not kind.compressed(value):
        return errors.get(int(value), 0.0)
    return errors[int(value)]


class EvaluatorFactory:
    """Builds an experiment's evaluator from plain data, in another process (a Ray actor): a
    picklable callable that ``presso.search.RayPool`` calls once per worker.

    build: the worker is on a cluster node that does not share the driver's disk: it keeps its
    caches (tokens, levels, dense reference) under its own node's presso cache and builds what
    is missing there, from the same content address, once per node (a lock keeps the node's
    other workers from building the same files meanwhile). False: it reads the driver's caches.
    """

    def __init__(self, spec: dict[str, Any], *, build: bool = False) -> None:
        self.spec = dict(spec)
        self.build = build

    def __call__(self):  # noqa: ANN204 - presso.evaluator.Evaluator
        if not self.build:
            # Caches (tokens, levels, reference) are where the driver keeps them.
            os.environ["PRESSO_CACHE"] = self.spec["cache_root"]
            return Setup.from_spec(self.spec).evaluator()
        import fcntl

        setup = Setup.from_spec({**self.spec, "cache_root": None})  # this node's cache
        setup.cache_root.mkdir(parents=True, exist_ok=True)
        with open(setup.cache_root / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            setup.prepare_scoring()
        return setup.evaluator()


def default_threads(workers: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
