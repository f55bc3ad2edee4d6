"""The per-unit sensitivity table: what each dimension costs the fitness alone, at each level.

For every dimension ``d`` and level ``l``: the fitness of the configuration with ``d`` at ``l``
and every other dimension at its top level (8 bits, dense, kept), minus the fitness of the
all-top configuration — scored by the search's own evaluator (KL to the dense model, cosine
distance for encoders) on one fixed calibration draw, so every entry compares with every
other. Prefix reuse makes a unit in block ``b`` cost only blocks ``b..`` of a forward pass.

``measure: all`` scores every level so. ``measure: lowest`` (the default: a third of the
cost on bits {2, 3, 4, 8}) scores each unit at its lowest level only and places the levels
in between by the unit's own relative output error from the level database, ``s(l) =
s(lowest) * (e(l) - e(top)) / (e(lowest) - e(top))``: the downstream effect of a unit is
measured, its curve over levels is the layer's. Dimensions with two levels (depth) are exact
either way. ``experiments/benchmarks/bits_search.py`` compares the two tables' rankings.

The table is a cache in the level database's spirit: content-addressed (model, calibration
data, the level databases' keys, the space's dimensions, tokens, draw), written atomically
after every dimension, so a killed build resumes where it stopped, and never read when any
input changed. A file that does not parse, or holds a row of the wrong length, is reported
and rebuilt.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
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
    errors: per dimension, per level, the unit's relative output error (the level database's
        ``unit_errors``): given, each dimension with more than two levels is measured at its
        lowest level only (``measure: lowest``); None measures every level (``measure: all``).
    """

    def __init__(
        self,
        root: Path,
        evaluator: Evaluator,
        *,
        tokens: int = 256,
        sample_seed: int = 0,
        errors: Sequence[Sequence[float]] | None = None,
    ) -> None:
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        self.evaluator = evaluator
        self.space: SearchSpace = evaluator.space
        self.tokens, self.sample_seed = tokens, sample_seed
        top = self.top_config()
        # Per dimension: the curve that places unmeasured levels, or None (measure them all).
        self._curves = [
            _curve(errors[d], top[d]) if errors is not None and len(dim.levels) > 2 else None
            for d, dim in enumerate(self.space.dims)
        ]
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
        as fitness increments over the all-top configuration. Measured entries are kept per
        level, so a ``measure: all`` build reuses what a ``lowest`` one measured."""
        stored = self._load()
        top = self.top_config()
        if stored.get("top") is None:
            stored["top"] = self._score(top)
            self._save(stored)
        rows: dict[str, dict[str, float]] = stored.setdefault("rows", {})
        todo = [
            (d, level)
            for d in range(len(self.space))
            for level in self._measured(d)
            if str(level) not in rows.get(self.space.dims[d].name, {})
        ]
        steps: Iterable[tuple[int, int]] = todo
        if progress is not None and todo:
            steps = progress(todo, len(todo), "sensitivity table")
        for d, level in steps:
            row = rows.setdefault(self.space.dims[d].name, {})
            row[str(level)] = self._score(_set(top, d, level))
            self._save(stored)
        return tuple(
            self._row(d, rows[dim.name], stored["top"]) for d, dim in enumerate(self.space.dims)
        )

    def top_config(self) -> Config:
        return tuple(len(d.levels) - 1 for d in self.space.dims)

    def evaluations(self) -> int:
        """How many evaluations a full build takes."""
        return 1 + sum(len(self._measured(d)) for d in range(len(self.space)))

    def _measured(self, d: int) -> list[int]:
        top = len(self.space.dims[d].levels) - 1
        return [0] if self._curves[d] is not None else list(range(top))

    def _row(self, d: int, row: dict[str, float], base: float) -> tuple[float, ...]:
        curve, top = self._curves[d], len(self.space.dims[d].levels) - 1
        if curve is None:
            return tuple(0.0 if lv == top else row[str(lv)] - base for lv in range(top + 1))
        lowest = row["0"] - base
        return tuple(lowest * share for share in curve)

    def _score(self, config: Config) -> float:
        from presso.evaluation import Request

        result = self.evaluator.evaluate(
            Request(config, tokens=self.tokens, sample_seed=self.sample_seed, tag="sensitivity")
        )
        if not result.ok:
            raise PressoError(
                f"sensitivity table: scoring {self.tokens} tokens failed ({result.error}); the "
                f"entries measured so far are kept in {self.path}: fix the cause and run again"
            )
        return float(result.fitness)  # type: ignore[arg-type]

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"inputs": self._inputs}
        try:
            stored = json.loads(self.path.read_text())
            ok = stored.get("inputs") == self._inputs and _well_formed(stored)
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


def _curve(errors: Sequence[float], top: int) -> list[float] | None:
    """Each level's share of the lowest level's error above the top level's, or None when
    the errors cannot place the levels (missing, not finite, or no error at the lowest)."""
    values = [float(e) for e in errors]
    span = values[0] - values[top] if values and all(map(math.isfinite, values)) else 0.0
    if span <= 0:
        return None
    return [max(0.0, (v - values[top]) / span) for v in values]


def _well_formed(stored: dict[str, Any]) -> bool:
    values = [stored.get("top")]
    rows = stored.get("rows", {})
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
        return False
    values += [v for r in rows.values() for v in r.values()]
    return all(
        v is None or (isinstance(v, float) and math.isfinite(v)) for v in values[:1]
    ) and all(isinstance(v, float) and math.isfinite(v) for v in values[1:])


def _set(config: Config, d: int, level: int) -> Config:
    return config[:d] + (level,) + config[d + 1 :]
