"""The per-unit sensitivity table: what each dimension costs the fitness alone, at each level.

For every dimension ``d`` and level ``l``: the fitness of the configuration with ``d`` at ``l``
and every other dimension at its top level (8 bits, dense, kept), minus the fitness of the
all-top configuration — scored by the search's own evaluator (KL to the dense model, cosine
distance for encoders) on one fixed calibration draw, so every entry compares with every
other. Prefix reuse makes a unit in block ``b`` cost only blocks ``b..`` of a forward pass.

The table is a cache in the level database's spirit: content-addressed (model, calibration
data, the level databases' keys, the space's dimensions, tokens, draw), written atomically
after every dimension, so a killed build resumes where it stopped, and never read when any
input changed. A file that does not parse, or holds a row of the wrong length, is reported
and rebuilt.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.paths import atomic_write_text, digest

if TYPE_CHECKING:
    from presso.evaluator import Evaluator
    from presso.spaces import Config, SearchSpace

#: Bump when the table's meaning changes: old files are then never read.
VERSION = 1

Progress = Callable[[Iterable, int, str], Iterable]


class SensitivityTable:
    """The table of ``space`` for one evaluator's model, data and level databases.

    tokens: calibration tokens each entry is scored on (one draw shared by every entry).
    sample_seed: which draw.
    """

    def __init__(
        self,
        root: Path,
        evaluator: Evaluator,
        *,
        tokens: int = 512,
        sample_seed: int = 0,
    ) -> None:
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        self.evaluator = evaluator
        self.space: SearchSpace = evaluator.space
        self.tokens, self.sample_seed = tokens, sample_seed
        inputs = {
            "version": VERSION,
            "model": evaluator.handle.identity,
            "data": evaluator.data.fingerprint,
            "levels": {kind: db.key for kind, db in sorted(evaluator.dbs.items())},
            "dims": [[d.name, d.kind, list(d.levels)] for d in self.space.dims],
            "tokens": tokens,
            "sample_seed": sample_seed,
        }
        self.path = Path(root) / f"{digest(inputs)}.json"
        self._inputs = inputs

    def build(self, progress: Progress | None = None) -> tuple[tuple[float, ...], ...]:
        """Measure the entries the file lacks (all of them the first time); returns the table
        as fitness increments over the all-top configuration."""
        stored = self._load()
        top = self.top_config()
        if stored.get("top") is None:
            stored["top"] = self._score(top)
            self._save(stored)
        rows: dict[str, list[float]] = stored.setdefault("rows", {})
        todo = [d for d, dim in enumerate(self.space.dims) if dim.name not in rows]
        steps: Iterable[int] = todo
        if progress is not None and todo:
            steps = progress(todo, len(todo), "sensitivity table")
        for d in steps:
            dim = self.space.dims[d]
            rows[dim.name] = [
                stored["top"] if level == top[d] else self._score(_set(top, d, level))
                for level in range(len(dim.levels))
            ]
            self._save(stored)
        base = stored["top"]
        return tuple(tuple(v - base for v in rows[dim.name]) for dim in self.space.dims)

    def top_config(self) -> Config:
        return tuple(len(d.levels) - 1 for d in self.space.dims)

    def evaluations(self) -> int:
        """How many evaluations a full build takes."""
        return 1 + sum(len(d.levels) - 1 for d in self.space.dims)

    def _score(self, config: Config) -> float:
        from presso.search import Request

        result = self.evaluator.evaluate(
            Request(config, tokens=self.tokens, sample_seed=self.sample_seed, tag="sensitivity")
        )
        if not result.ok:
            raise RuntimeError(f"sensitivity table: an evaluation failed: {result.error}")
        return float(result.fitness)  # type: ignore[arg-type]

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"inputs": self._inputs}
        try:
            stored = json.loads(self.path.read_text())
            ok = stored.get("inputs") == self._inputs and _rows_fit(stored, self.space)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            warnings.warn(
                f"{self.path}: the sensitivity table is unreadable or does not match its "
                "inputs; rebuilding it",
                stacklevel=2,
            )
            return {"inputs": self._inputs}
        return stored

    def _save(self, stored: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(stored))


def _rows_fit(stored: dict[str, Any], space: SearchSpace) -> bool:
    top = stored.get("top")
    if top is not None and not (isinstance(top, float) and math.isfinite(top)):
        return False
    lengths = {d.name: len(d.levels) for d in space.dims}
    rows = stored.get("rows", {})
    return isinstance(rows, dict) and all(
        name in lengths
        and isinstance(row, list)
        and len(row) == lengths[name]
        and all(isinstance(v, float) and math.isfinite(v) for v in row)
        for name, row in rows.items()
    )


def _set(config: Config, d: int, level: int) -> Config:
    return config[:d] + (level,) + config[d + 1 :]


def build_table(
    root: Path,
    evaluator: Evaluator,
    *,
    tokens: int,
    progress: Progress | None = None,
) -> tuple[tuple[tuple[float, ...], ...], float]:
    """The sensitivity table of ``evaluator``'s space, and the seconds spent building it."""
    start = time.perf_counter()
    table = SensitivityTable(root, evaluator, tokens=tokens).build(progress)
    return table, time.perf_counter() - start
