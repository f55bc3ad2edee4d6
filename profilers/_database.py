"""The profile database: every measurement taken on this machine, reused by every later search.

SQLite (one file, by default ``<cache>/profiles.sqlite``), keyed by hardware fingerprint ×
backend × op × workload. A measurement is committed as soon as it is taken, so an
interrupted ``presso profile`` resumes where it stopped. Artifacts that make measuring
cheaper next time (TVM's tuned schedules) are kept beside the measurements, as JSON text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from presso.paths import cache_dir
from presso.profilers._base import Measurement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    fingerprint TEXT PRIMARY KEY, facts TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    fingerprint TEXT NOT NULL, backend TEXT NOT NULL, op TEXT NOT NULL, workload TEXT NOT NULL,
    median_ms REAL, spread_ms REAL, repeats INTEGER NOT NULL, error TEXT, detail TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, backend, op, workload));
CREATE TABLE IF NOT EXISTS artifacts (
    fingerprint TEXT NOT NULL, backend TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, backend, key));
"""


def default_path() -> Path:
    return cache_dir() / "profiles.sqlite"


class ProfileDatabase:
    """Measurements and tuning artifacts per machine fingerprint."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: every statement commits at once (a kill loses nothing taken).
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add_machine(self, fingerprint: str, facts: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO machines VALUES (?, ?, ?)",
            (fingerprint, json.dumps(facts, sort_keys=True), time.time()),
        )

    def machine(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT facts FROM machines WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, fingerprint: str, m: Measurement) -> None:
        """Store ``m`` (replacing an earlier measurement of the same op and workload)."""
        self._db.execute(
            "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fingerprint,
                m.backend,
                m.op,
                m.workload,
                m.median_ms,
                m.spread_ms,
                m.repeats,
                m.error,
                json.dumps(m.detail, sort_keys=True),
                time.time(),
            ),
        )

    def get(self, fingerprint: str, backend: str, op: str, workload: str) -> Measurement | None:
        row = self._db.execute(
            "SELECT backend, op, workload, median_ms, spread_ms, repeats, error, detail "
            "FROM measurements WHERE fingerprint = ? AND backend = ? AND op = ? AND workload = ?",
            (fingerprint, backend, op, workload),
        ).fetchone()
        return _measurement(row) if row else None

    def measurements(
        self, fingerprint: str, backend: str, workload: str | None = None
    ) -> list[Measurement]:
        """Every measurement of ``backend`` on this machine (of one workload, if given)."""
        sql = (
            "SELECT backend, op, workload, median_ms, spread_ms, repeats, error, detail "
            "FROM measurements WHERE fingerprint = ? AND backend = ?"
        )
        args: tuple = (fingerprint, backend)
        if workload is not None:
            sql += " AND workload = ?"
            args += (workload,)
        return [_measurement(r) for r in self._db.execute(sql + " ORDER BY op, workload", args)]

    def all_measurements(
        self, *, backend: str | None = None, fingerprint: str | None = None
    ) -> list[tuple[str, Measurement]]:
        """Every stored measurement as ``(machine fingerprint, measurement)`` (of one backend
        or machine, if given): what ``presso.api.profile_timings`` tabulates."""
        sql = (
            "SELECT fingerprint, backend, op, workload, median_ms, spread_ms, repeats, error, "
            "detail FROM measurements WHERE (? IS NULL OR backend = ?) "
            "AND (? IS NULL OR fingerprint = ?) ORDER BY fingerprint, backend, op, workload"
        )
        rows = self._db.execute(sql, (backend, backend, fingerprint, fingerprint))
        return [(r[0], _measurement(r[1:])) for r in rows]

    def put_artifact(self, fingerprint: str, backend: str, key: str, value: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
            (fingerprint, backend, key, value, time.time()),
        )

    def get_artifact(self, fingerprint: str, backend: str, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM artifacts WHERE fingerprint = ? AND backend = ? AND key = ?",
            (fingerprint, backend, key),
        ).fetchone()
        return row[0] if row else None


def _measurement(row: tuple) -> Measurement:
    backend, op, workload, median, spread, repeats, error, detail = row
    return Measurement(backend, op, workload, median, spread, repeats, error, json.loads(detail))
