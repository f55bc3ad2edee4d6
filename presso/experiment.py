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
    """Everything an evaluator needs, built lazily from a validated experiment."""

    def __init__(self, experiment: Experiment, *, cache_root: str | None = None) -> None:
        self.experiment = experiment
        self.cache_root = Path(cache_root) if cache_root else cache_dir()

    # A Ray actor rebuilds the setup from plain data.
    def to_spec(self) -> dict[str, Any]:
        return {"experiment": self.experiment.to_dict(), "cache_root": str(self.cache_root)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Setup:
        return cls(Experiment.model_validate(spec["experiment"]), cache_root=spec["cache_root"])

    @cached_property
    def handle(self):  # noqa: ANN201 - ModelHandle, imported lazily
        from presso.models import load_model

        return load_model(self.experiment.model)

    @cached_property
    def data(self):  # noqa: ANN201 - CalibrationData
        from presso.data import build_calibration

        d = self.experiment.data
        return build_calibration(
            self.handle.tokenizer,
            d.corpus,
            seq_len=d.seq_len,
            n_calibration=d.calibration,
            n_eval=d.evaluation,
            seed=d.seed,
            text_field=d.text_field,
        )

    @cached_property
    def db(self):  # noqa: ANN201 - LevelDatabase
        from presso.compress import make_operator
        from presso.leveldb import LevelDatabase

        c = self.experiment.compress
        if c.group_size is not None:
            bad = sorted({u.shape[1] for u in self.handle.units if u.shape[1] % c.group_size})
            if bad:
                raise PressoError(
                    f"compress.group_size: {c.group_size} does not divide the input width {bad[0]} "
                    f"of some of {self.experiment.model}'s layers; choose a divisor of "
                    f"{', '.join(map(str, sorted({u.shape[1] for u in self.handle.units})))}, or null for per-channel"
                )
        options: dict[str, Any] = {"group_size": c.group_size, "symmetric": c.symmetric}
        if c.operator == "gptq":
            options.update(damp=c.damp, act_order=c.act_order)
        operator = make_operator(c.operator, **options)
        levels = [b for b in c.levels if b < 16]
        calibration = f"{self.data.fingerprint}/{c.calibration}"
        return LevelDatabase(
            self.cache_root / "levels", self.handle, operator, levels, calibration=calibration
        )

    @cached_property
    def sparse_db(self):  # noqa: ANN201 - LevelDatabase of the sparsity operator
        from presso.compress import make_operator
        from presso.leveldb import LevelDatabase

        c = self.experiment.sparsity
        options: dict[str, Any] = {"pattern": c.pattern}
        if c.operator == "sparsegpt":
            options["damp"] = c.damp
        if c.pattern == "2:4":
            bad = sorted({u.shape[1] for u in self.handle.units if u.shape[1] % 4})
            if bad:
                raise PressoError(
                    f"sparsity.pattern: 2:4 needs input widths divisible by 4, got {bad[0]}"
                )
        operator = make_operator(c.operator, **options)
        calibration = f"{self.data.fingerprint}/{c.calibration}"
        return LevelDatabase(
            self.cache_root / "levels", self.handle, operator, c.levels, calibration=calibration
        )

    @cached_property
    def kinds(self) -> list[str]:
        return self.experiment.space.kinds()

    def dbs(self) -> dict[str, Any]:
        """The level database of each kind in the space that needs one."""
        out = {}
        if "bits" in self.kinds:
            out["bits"] = self.db
        if "sparsity" in self.kinds:
            out["sparsity"] = self.sparse_db
        return out

    @cached_property
    def space(self):  # noqa: ANN201 - SearchSpace
        from presso.spaces import (
            MaxParams,
            MeanBits,
            MeanSparsity,
            MinDropped,
            SearchSpace,
            bits_dims,
            depth_dims,
            sparsity_dims,
        )

        sp, kinds = self.experiment.space, self.kinds
        joint = len(kinds) > 1
        dims, constraints = [], []
        for b, block in enumerate(self.handle.block_names()):
            units = [(u.name, u.shape) for u in self.handle.units if u.block == b]
            if "bits" in kinds:
                dims += bits_dims(
                    units, self.experiment.compress.levels, suffix=":bits" if joint else ""
                )
            if "sparsity" in kinds:
                dims += sparsity_dims(
                    units, self.experiment.sparsity.levels, suffix=":sparsity" if joint else ""
                )
            if "depth" in kinds:
                dims += depth_dims([(block, self._params(block))], sublayers=self._sublayers(block))
        if "bits" in kinds:
            constraints.append(MeanBits(sp.mean_bits))
        if "sparsity" in kinds:
            constraints.append(MeanSparsity(sp.mean_sparsity))
        if "depth" in kinds:
            n = len([d for d in dims if d.kind == "depth"])
            if sp.dropped >= n:
                raise PressoError(f"space.dropped: {sp.dropped} but the model has only {n} to drop")
            constraints.append(MinDropped(sp.dropped))
        units = [(u.name, u.params) for u in self.handle.units]
        if sp.max_params is not None:
            constraints.append(MaxParams(sp.max_params, units))
        if sp.max_size_mb is not None:
            constraints.append(self._size(units, sp.max_size_mb))
        reports = [] if sp.max_size_mb is not None else [self._size(units, float("inf"))]
        if self.experiment.hardware is not None:
            latency = self._latency_constraint(dims)
            (constraints if latency.limit < float("inf") else reports).append(latency)
        space = SearchSpace(dims, constraints, reports)
        latency = [c for c in constraints if c.metric == "latency_ms"]
        if latency and not latency[0].feasible(space, space.lowest()):
            lowest = latency[0].value(space, space.lowest())
            raise PressoError(
                f"space: even the cheapest levels are predicted at {lowest:.3f} ms on "
                f"{latency[0].label}, over the limit {latency[0].limit:.3f} ms (dense: "
                f"{self.latency.structure.dense_ms:.3f} ms): on this backend low levels are not "
                "faster; raise the latency budget or choose another backend or workload"
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
        return Workload(batch=w.batch, seq_len=w.seq_len, phase=w.phase)

    def profile(self, progress: Progress | None = None) -> float:
        """Measure on the backend what the profile database lacks for this space; seconds."""
        from presso.profiling import profile_model, unit_ops

        bits = self.experiment.compress.levels if "bits" in self.kinds else []
        sparsity = self.experiment.sparsity.levels if "sparsity" in self.kinds else []
        ops = unit_ops(self.handle, bits, sparsity, self.experiment.compress.group_size)
        report = profile_model(
            self.handle, self.profiler, self.profile_db, [self.workload], ops, progress=progress
        )
        return report.seconds

    @cached_property
    def latency(self):  # noqa: ANN201 - CandidateLatency
        from presso.profiling import latency_model

        hw = self.experiment.hardware
        return latency_model(
            self.handle,
            self.profiler,
            self.profile_db,
            self.workload,
            group_size=self.experiment.compress.group_size,
            cost_model=hw.cost_model,
        )

    def _latency_constraint(self, dims: list):  # noqa: ANN001, ANN202 - MaxLatency
        from presso.profilers import Assignment
        from presso.spaces import MaxLatency

        sp, hw = self.experiment.space, self.experiment.hardware
        latency, group = self.latency, self.experiment.compress.group_size
        units = {
            i: (d.target, d.kind) for i, d in enumerate(dims) if d.kind in ("bits", "sparsity")
        }
        depth = [i for i, d in enumerate(dims) if d.kind == "depth"]

        def predict(space, config) -> float:  # noqa: ANN001
            levels: dict[str, list[int]] = {}
            for i, (unit, kind) in units.items():
                value = int(space.dims[i].levels[config[i]])
                entry = levels.setdefault(unit, [16, 0])
                entry[0 if kind == "bits" else 1] = value
            dropped = tuple(
                space.dims[i].target for i in depth if space.dims[i].levels[config[i]] == 0
            )
            assignment = Assignment(
                units={u: (b, s) for u, (b, s) in levels.items()}, dropped=dropped, group_size=group
            )
            return latency.predict(assignment)

        limit = float("inf")
        if sp.max_latency_ms is not None:
            limit = sp.max_latency_ms
        if sp.latency_ratio is not None:
            limit = min(limit, sp.latency_ratio * latency.structure.dense_ms)
        label = f"{hw.backend} {self.workload.key}"
        return MaxLatency(limit, predict, label=label)

    def _params(self, module: str) -> int:
        return sum(p.numel() for p in self.handle.module(module).parameters())

    def _sublayers(self, block: str) -> list[tuple[str, int]]:
        """The block's attention and MLP as depth dimensions (granularity: sublayer)."""
        if self.experiment.space.granularity == "block":
            return []
        names = [f"{block}.self_attn", f"{block}.mlp"]
        modules = dict(self.handle.model.named_modules())
        if not all(n in modules for n in names):
            raise PressoError(
                f"space.granularity: sublayer needs blocks with self_attn and mlp modules "
                f"({self.experiment.model} has none); use granularity: block"
            )
        return [(n, self._params(n)) for n in names]

    @cached_property
    def reference(self):  # noqa: ANN201 - DenseReference
        from presso.evaluator import DenseReference

        return DenseReference(self.cache_root / "reference", self.handle, self.data)

    def prepare(self, progress: Progress | None = None) -> dict[str, float]:
        """Build what is missing (level databases, dense reference, the hardware profile);
        returns timings in seconds."""
        timings = self.prepare_scoring(progress)
        if self.experiment.hardware is not None:
            timings["profile_s"] = self.profile(progress)
        return timings

    def prepare_scoring(self, progress: Progress | None = None) -> dict[str, float]:
        """Build what scoring needs and is missing: the level databases and dense reference."""
        start = time.perf_counter()
        _ = self.data
        timings = {"load_s": time.perf_counter() - start}
        if "bits" in self.kinds:
            n = self.experiment.compress.calibration
            timings["level_db_s"] = self.db.build(self.data.calibration[:n], progress=progress)
        if "sparsity" in self.kinds:
            n = self.experiment.sparsity.calibration
            timings["sparse_db_s"] = self.sparse_db.build(
                self.data.calibration[:n], progress=progress
            )
        timings["reference_s"] = self.reference.build(progress=progress)
        return timings

    def evaluator(self):  # noqa: ANN201 - Evaluator
        from presso.evaluator import Evaluator

        e = self.experiment.evaluation
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

        needs: set[str] = set()
        for item in strategies:
            name, options = (item, {}) if isinstance(item, str) else item
            needs |= strategy_class(name).needs(options)
        space, facts = self.space, {}
        facts["dim_blocks"] = dim_blocks(self.handle, space)
        windows = self.data.calibration
        if "sensitivity" in needs:
            facts["sensitivity"] = self.sensitivity(evaluator or self.evaluator(), progress)
        if "unit_errors" in needs and "depth" not in self.kinds:
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
        the level databases); depth dimensions (with ``depth_ok``) have none: empty rows."""
        errors = {kind: db.unit_errors() for kind, db in self.dbs().items()}
        return tuple(
            ()
            if d.kind == "depth" and depth_ok
            else tuple(_level_error(errors[d.kind][d.target], v, d.kind) for v in d.levels)
            for d in self.space.dims
        )


def _level_error(errors: dict[int, float], value: float, kind: str) -> float:
    """A unit's stored error at a level; dense levels (16 bits, 0% sparsity) have none."""
    if (kind == "bits" and value >= 16) or (kind == "sparsity" and value == 0):
        return errors.get(int(value), 0.0)
    return errors[int(value)]


def default_threads(workers: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
