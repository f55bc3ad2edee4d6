"""The level database: every (unit, level) compressed once, stored as safetensors on disk.

Content-addressed: the folder name is a hash of model × calibration × operator, so a
change to any input selects a new folder and nothing stale is ever read. Each level is
its own file, written atomically, so an interrupted build resumes where it stopped.
Every file carries a checksum of its content (see presso.checksum), verified once per process:
a corrupt file is reported and rebuilt, never read. Files are memory-mapped when read.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from presso.checksum import check, verify, write_sealed
from presso.paths import atomic_write_text, digest

if TYPE_CHECKING:
    import torch

    from presso.compress import Compressed, Operator
    from presso.models import ModelHandle

MANIFEST = "manifest.json"


class LevelDatabase:
    """Compressed levels of one model's units under one operator and calibration set.

    root: the database root folder (shared by many models and operators).
    calibration: the calibration data's fingerprint; ignored by operators that need no data.
    """

    def __init__(
        self,
        root: Path,
        handle: ModelHandle,
        operator: Operator,
        levels: Sequence[int],
        *,
        calibration: str,
    ) -> None:
        self.handle = handle
        self.operator = operator
        self.levels = tuple(sorted(int(x) for x in levels))
        inputs = {
            "model": handle.identity,
            "operator": operator.key(),
            "calibration": calibration if operator.needs_hessian else None,
        }
        self.key = digest(inputs)
        self.folder = Path(root) / self.key
        self._inputs = inputs
        own = set(operator.units(handle))
        #: The units this database holds levels of (a structured operator's: the consumers).
        self.units = [u for u in handle.units if u.name in own]

    # ------------------------------------------------------------------ paths and queries

    def path(self, unit: str, level: int) -> Path:
        return self.folder / unit / f"{level}.safetensors"

    def missing(self) -> list[tuple[str, int]]:
        """The (unit, level) pairs to build: not built yet, or whose file is corrupt (reported)."""
        return [
            (u.name, lv)
            for u in self.units
            for lv in self.levels
            if not (self.path(u.name, lv).is_file() and check(self.path(u.name, lv)))
        ]

    def is_complete(self) -> bool:
        return not self.missing()

    # ------------------------------------------------------------------ building

    def build(
        self,
        calibration: torch.Tensor | None,
        *,
        batch_size: int = 8,
        progress: Callable[[Iterable, int, str], Iterable] | None = None,
    ) -> float:
        """Compress every missing (unit, level); returns seconds spent (0 if nothing was missing).

        calibration: token windows ``[n, seq_len]`` whose activations give GPTQ its Hessians.
        progress: wraps an iterable for display, ``progress(iterable, total, description)``.
        """
        missing = self.missing()
        if not missing:
            return 0.0
        start = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / MANIFEST, json.dumps(self._manifest(), indent=2))
        units = sorted({u for u, _ in missing}, key=self.handle.unit_names.index)
        hessians = (
            self._hessians(units, calibration, batch_size, progress)
            if self.operator.needs_hessian
            else {}
        )
        by_unit: dict[str, list[int]] = {}
        for unit, level in missing:
            by_unit.setdefault(unit, []).append(level)
        work: Iterable[str] = units
        if progress is not None:
            work = progress(units, len(units), f"building level database ({len(missing)} levels)")
        for unit in work:
            weight = self.handle.dense_weight(unit)
            hessian = hessians.pop(unit, None)
            levels = by_unit[unit]
            operator = self.operator.for_unit(self.handle, unit)
            for level, qw in zip(levels, operator.compress_many(weight, levels, hessian)):
                self._write(unit, level, qw, weight, hessian)
        return time.perf_counter() - start

    def _hessians(
        self,
        units: list[str],
        calibration: torch.Tensor | None,
        batch_size: int,
        progress: Callable[[Iterable, int, str], Iterable] | None,
    ) -> dict[str, torch.Tensor]:
        from presso.compress import hessian_hooks

        if calibration is None:
            raise ValueError(f"operator {self.operator.name} needs calibration data")
        accumulators, remove = hessian_hooks({u: self.handle.linear(u) for u in units})
        batches: Iterable[int] = range(0, len(calibration), batch_size)
        if progress is not None:
            batches = progress(
                batches, len(range(0, len(calibration), batch_size)), "calibration activations"
            )
        try:
            for i in batches:
                self.handle.forward(calibration[i : i + batch_size])
        finally:
            remove()
        return {u: accumulators[u].hessian for u in units}

    def _write(
        self,
        unit: str,
        level: int,
        qw: Compressed,
        weight: torch.Tensor,
        hessian: torch.Tensor | None,
    ) -> None:
        from safetensors.torch import save

        from presso.compress import relative_output_error

        error = relative_output_error(weight, qw.dequantize(), hessian)
        meta = {
            "unit": unit,
            "level": str(level),
            "meta": json.dumps(qw.meta()),
            "relative_error": repr(float(error)),
        }
        tensors = {k: v.contiguous() for k, v in qw.tensors().items()}
        write_sealed(self.path(unit, level), save(tensors, metadata=meta))

    def _manifest(self) -> dict:
        return {
            "inputs": self._inputs,
            "levels": list(self.levels),
            "units": [{"name": u.name, "shape": list(u.shape)} for u in self.units],
        }

    # ------------------------------------------------------------------ reading

    def load(self, unit: str, level: int) -> Compressed:
        """The stored level, memory-mapped from disk."""
        path = self.path(unit, level)
        if not path.is_file():
            raise FileNotFoundError(f"level {level} of {unit} is not built ({path})")
        with _open(path) as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return self.operator.restore(tensors, meta)

    def weight(self, unit: str, level: int) -> torch.Tensor:
        """The dequantised weight of ``unit`` at ``level`` (what the evaluator runs with)."""
        return self.load(unit, level).dequantize()

    def unit_errors(self) -> dict[str, dict[int, float]]:
        """Relative output error of each unit at each level, compressed alone."""
        errors: dict[str, dict[int, float]] = {}
        for u in self.units:
            errors[u.name] = {}
            for level in self.levels:
                with _open(self.path(u.name, level)) as f:
                    value = float(f.metadata()["relative_error"])
                errors[u.name][level] = value if math.isfinite(value) else float("inf")
        return errors

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*.safetensors"))


def _open(path: Path):  # noqa: ANN202 - safetensors' safe_open handle
    """A level file, opened once its checksum holds (CorruptFile, naming it, otherwise)."""
    from safetensors import safe_open

    verify(path)
    return safe_open(path, framework="pt")
