"""One experiment end to end: prepare (model, data, level database, dense reference), search,
score the winners on held-out data, and store everything."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
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
    def space(self):  # noqa: ANN201 - SearchSpace
        from presso.spaces import bits_space

        units = [(u.name, u.shape) for u in self.handle.units]
        try:
            return bits_space(
                units, self.experiment.compress.levels, self.experiment.space.mean_bits
            )
        except ValueError as err:
            raise PressoError(f"space: {err}") from None

    @cached_property
    def reference(self):  # noqa: ANN201 - DenseReference
        from presso.evaluator import DenseReference

        return DenseReference(self.cache_root / "reference", self.handle, self.data)

    def prepare(self, progress: Progress | None = None) -> dict[str, float]:
        """Build what is missing (level database, dense reference); returns timings in seconds."""
        start = time.perf_counter()
        _ = self.data
        timings = {"load_s": time.perf_counter() - start}
        n = self.experiment.compress.calibration
        timings["level_db_s"] = self.db.build(self.data.calibration[:n], progress=progress)
        timings["reference_s"] = self.reference.build(progress=progress)
        return timings

    def evaluator(self):  # noqa: ANN201 - Evaluator
        from presso.evaluator import Evaluator

        e = self.experiment.evaluation
        return Evaluator(
            self.handle,
            self.data,
            self.db,
            self.space,
            self.reference,
            batch_size=e.batch_size,
            cache_mb=e.cache_mb,
        )

    def context(self):  # noqa: ANN201 - search Context
        from presso.search import Context

        errors = self.db.unit_errors()
        per_dim = []
        for dim in self.space.dims:
            per_dim.append(tuple(0.0 if b >= 16 else errors[dim.name][int(b)] for b in dim.levels))
        return Context(unit_errors=tuple(per_dim))


def default_threads(workers: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // workers)
