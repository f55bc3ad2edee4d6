"""Read-only access to results stores, shaped as JSON for the dashboard and the report.

The stores are Optuna RDB studies (see presso.store). This module reads their tables with
plain SELECTs (SQLAlchemy Core) rather than through Optuna's storage API, for two reasons:
opening an ``RDBStorage`` may write (table creation, version stamps), and loading trials
through it reads every parameter row — seconds per poll for a thousand evaluations of a
210-unit model — while everything the dashboard shows is in the trials' user attributes.
SQLite files are opened with ``mode=ro``: the dashboard cannot write to them even by mistake.

Every database failure becomes a ``StoreUnavailable`` with a one-line message for the page.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from presso.errors import PressoError
from presso.spaces import KIND_BUDGETS, KINDS
from presso.store import (
    CHUNK,
    Record,
    check_attrs,
    run_rows,
    sqlite_path,
    sqlite_read_only,
    storage_url,
)
from presso.summary import MEASURED, RunSummary, unit_columns
from presso.summary import json_safe as json_safe  # the page's JSON, as --json writes it

#: Trial states presso writes (it adds finished trials only); anything else is still running.
DONE_STATES = ("COMPLETE", "FAIL", "PRUNED")
#: Seconds a read waits for a writer's lock before the page says the store is busy.
BUSY_TIMEOUT_S = 5.0


class StoreUnavailable(PressoError):
    """A store cannot be read right now (busy, corrupt, empty, gone): shown in the page."""


class EmptyStore(StoreUnavailable):
    """The store holds no tables yet: nothing is wrong, nothing has run."""


class NoSuchRun(StoreUnavailable):
    """The store holds no run of that name."""


def check_store_exists(store: str) -> None:
    """Refuse a store path that names no file (a typo must not look like an empty store)."""
    path = sqlite_path(store)
    if path is not None and not path.is_file():
        raise PressoError(f"{store}: no results store there (run `presso search` first)")


class StoreReader:
    """Reads runs and evaluations from one store; never writes."""

    def __init__(self, store: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.label = store
        self.url = storage_url(store, create=False)
        self._path = sqlite_path(store)
        self._busy_timeout_s = busy_timeout_s
        self._engine: Any = None

    # ------------------------------------------------------------------ queries

    def runs(self) -> list[dict[str, Any]]:
        """One row per run: the store's row (see presso.store.run_rows), with the run's
        sweep by name, budget, candidates and how to name its metrics."""
        try:
            rows = run_rows(self._rows, self.label)
        except StoreUnavailable:
            raise
        except PressoError as err:  # a damaged run's attributes
            raise StoreUnavailable(str(err)) from None
        except ValueError as err:  # an attribute that is not JSON
            raise self._damaged(err) from None
        return [_run_row(row, attrs) for row, attrs in rows]

    def attrs(self, run: str) -> dict[str, Any]:
        """The run's study user attributes (experiment, units, levels, status, summary)."""
        rows = self._rows("SELECT study_id FROM studies WHERE study_name = :run", run=run)
        if not rows:
            known = ", ".join(r["name"] for r in self.runs()) or "none"
            raise NoSuchRun(f"no run named {run!r} in {self.label}; runs there: {known}")
        attrs = {
            key: self._loads(value)
            for key, value in self._rows(
                "SELECT key, value_json FROM study_user_attributes WHERE study_id = :sid",
                sid=rows[0][0],
            )
        }
        return self._checked(run, attrs)

    def records(self, run: str, since: int = 0) -> tuple[list[tuple[int, Record]], int]:
        """The run's evaluations numbered ``since`` and later, as ``(number, Record)``, and the
        number to ask from next time (the first still-running trial, else one past the last)."""
        out, next_number, _ = self.page(run, since)
        return out, next_number

    def page(
        self, run: str, since: int = 0, limit: int | None = None
    ) -> tuple[list[tuple[int, Record]], int, bool]:
        """``records`` of at most ``limit`` trials (a large run comes in pages: the first in
        well under a second, not the whole run at once), and whether more follow."""
        trials = self._rows(
            "SELECT t.trial_id, t.number, t.state, v.value, v.value_type FROM trials t"
            " JOIN studies s ON s.study_id = t.study_id"
            " LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0"
            " WHERE s.study_name = :run AND t.number >= :since ORDER BY t.number"
            + (" LIMIT :limit" if limit is not None else ""),
            run=run,
            since=since,
            limit=limit,
        )
        more = limit is not None and len(trials) == limit
        until = trials[-1][1] if trials else since
        attrs = self._attrs(
            " JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = t.study_id"
            " WHERE s.study_name = :run AND t.number >= :since AND t.number <= :until",
            run=run,
            since=since,
            until=until,
        )
        out, pending = [], None
        for trial_id, number, state, value, value_type in trials:
            if _state(state) not in DONE_STATES:
                pending = number if pending is None else min(pending, number)
                continue
            if record := _evaluation(attrs.get(trial_id, {}), state, value, value_type):
                out.append((number, record))
        last = trials[-1][1] + 1 if trials else since
        return out, pending if pending is not None else last, more and pending is None

    def sample(self, run: str, limit: int) -> tuple[list[tuple[int, Record]], dict[str, int]]:
        """At most about ``limit`` of the run's evaluations, chosen by the database, and the
        run's counts (``evaluations``, ``failed``, ``shown``): all of them where there are no
        more, else every one that set a new best of its phase and calibration size (the
        best-so-far lines stay exact) and an even sample of the others. What a report holds."""
        # One row per finished evaluation: its number, phase, calibration size and finite
        # fitness (NULL where it failed); JSON's non-finite numbers are no fitness.
        evaluations = (
            "SELECT t.number AS n,"
            " MAX(CASE WHEN a.key = 'phase' THEN a.value_json END) AS phase,"
            " MAX(CASE WHEN a.key = 'tokens' THEN a.value_json END) AS tokens,"
            " MAX(CASE WHEN a.key = 'fitness' AND a.value_json NOT IN"
            " ('null', 'NaN', 'Infinity', '-Infinity')"
            " THEN CAST(a.value_json AS DOUBLE PRECISION) END) AS fitness"
            " FROM trials t JOIN studies s ON s.study_id = t.study_id"
            " JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
            " WHERE s.study_name = :run AND a.key IN ('phase', 'tokens', 'fitness')"
            f" AND t.state IN {DONE_STATES!r} GROUP BY t.trial_id, t.number"
        )
        # Each with its place among them (k) and the best fitness of its phase and calibration
        # size before it: it set a new best where it beats that.
        ranked = (
            "SELECT n, fitness, ROW_NUMBER() OVER (ORDER BY n) AS k,"
            " MIN(fitness) OVER (PARTITION BY phase, tokens ORDER BY n"
            " ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before"
            f" FROM ({evaluations}) e WHERE phase IS NOT NULL"
        )
        best = "fitness IS NOT NULL AND (before IS NULL OR fitness < before)"
        ((total, ok, bests),) = self._rows(
            f"SELECT COUNT(*), COUNT(fitness), COALESCE(SUM(CASE WHEN {best} THEN 1 ELSE 0 END),"
            f" 0) FROM ({ranked}) r",
            run=run,
        )
        total, ok, bests = int(total), int(ok), int(bests)
        # Every k-th evaluation beside the bests, so that about ``limit`` are shown in all.
        stride = 1 if total <= limit else -(-total // max(1, limit - bests))
        numbers = [
            n
            for (n,) in self._rows(
                f"SELECT n FROM ({ranked}) r WHERE ({best}) OR k % :stride = 0 ORDER BY n",
                run=run,
                stride=stride,
            )
        ]
        records = self.numbered(run, numbers)
        return records, {"evaluations": total, "failed": total - ok, "shown": len(records)}

    def numbered(self, run: str, numbers: list[int]) -> list[tuple[int, Record]]:
        """The run's evaluations of these trial numbers (read in chunks), in number order."""
        out = []
        for start in range(0, len(numbers), CHUNK):
            chunk = {"run": run, "numbers": numbers[start : start + CHUNK]}
            trials = self._rows(
                "SELECT t.trial_id, t.number, t.state, v.value, v.value_type FROM trials t"
                " JOIN studies s ON s.study_id = t.study_id"
                " LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0"
                " WHERE s.study_name = :run AND t.number IN :numbers ORDER BY t.number",
                **chunk,
            )
            attrs = self._attrs(
                " JOIN trials t ON t.trial_id = a.trial_id JOIN studies s"
                " ON s.study_id = t.study_id WHERE s.study_name = :run AND t.number IN :numbers",
                **chunk,
            )
            for trial_id, number, state, value, value_type in trials:
                if record := _evaluation(attrs.get(trial_id, {}), state, value, value_type):
                    out.append((number, record))
        return out

    def _attrs(self, where: str, **params: Any) -> dict[int, dict[str, Any]]:
        """Trial user attributes by trial id, of the trials ``where`` (joined to ``a``) picks."""
        attrs: dict[int, dict[str, Any]] = {}
        for trial_id, key, value in self._rows(
            "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a" + where,
            **params,
        ):
            attrs.setdefault(trial_id, {})[key] = self._loads(value)
        return attrs

    # ------------------------------------------------------------------ plumbing

    def _loads(self, value: str | None) -> Any:
        try:
            return json.loads(value) if value is not None else None
        except ValueError as err:
            raise self._damaged(err) from None

    def _damaged(self, err: ValueError) -> StoreUnavailable:
        return StoreUnavailable(
            f"results store {self.label} is damaged: a stored attribute is not JSON "
            f"({err.args[0].split(':')[0]}); restore the store from a copy"
        )

    def _checked(self, run: str, attrs: dict[str, Any]) -> dict[str, Any]:
        """``attrs`` if shaped as presso writes them, else the damage as the store's error."""
        try:
            return check_attrs(self.label, run, attrs)
        except PressoError as err:
            raise StoreUnavailable(str(err)) from None

    def _rows(self, sql: str, **params: Any) -> list[tuple]:
        import sqlalchemy

        query = sqlalchemy.text(sql)
        # A list parameter is an IN list (``IN :numbers``).
        lists = [k for k, v in params.items() if isinstance(v, list)]
        query = query.bindparams(*(sqlalchemy.bindparam(k, expanding=True) for k in lists))
        try:
            with self._connect().connect() as conn:
                return [tuple(r) for r in conn.execute(query, params)]
        except sqlalchemy.exc.SQLAlchemyError as err:
            raise self._unavailable(err) from None

    def _connect(self) -> Any:
        if self._engine is None:
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            path, timeout = self._path, self._busy_timeout_s
            # NullPool: no file handle is kept between polls.
            kwargs: dict[str, Any] = {"poolclass": NullPool}
            if path is not None:
                kwargs["creator"] = lambda: sqlite_read_only(path, timeout)
            elif self.url.startswith("postgresql"):
                kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
            try:
                url = "sqlite://" if path is not None else self.url
                self._engine = sqlalchemy.create_engine(url, **kwargs)
            except Exception as err:  # a malformed URL or a missing database driver
                raise StoreUnavailable(f"{self.label}: cannot open it: {err}") from None
        return self._engine

    def _unavailable(self, err: Exception) -> StoreUnavailable:
        """The error to show for a database error: one line a person can act on."""
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        low = cause.lower()
        if "no such table" in low or "does not exist" in low:
            if self._has_no_tables():
                return EmptyStore(
                    f"{self.label}: empty store, no runs yet (start one with `presso search`)"
                )
            return StoreUnavailable(
                f"{self.label}: not a presso results store (no Optuna tables in it)"
            )
        return StoreUnavailable(f"{self.label}{self._explain(low, cause)}")

    @staticmethod
    def _explain(low: str, cause: str) -> str:
        if "locked" in low or "busy" in low:
            return " is busy (a search is writing to it); retrying"
        if "not a database" in low or "malformed" in low:
            return ": not a readable results store (the file is corrupt or not SQLite)"
        if "unable to open" in low:
            return ": cannot open it (was the file moved or deleted?)"
        if "readonly" in low or "read-only" in low:
            return (
                " holds an unfinished write (was a search killed?); "
                "resuming that search (`presso search EXPERIMENT --resume`) completes it"
            )
        return f": cannot read it: {cause}"

    def _has_no_tables(self) -> bool:
        import sqlalchemy

        if self._path is None:
            return True
        try:
            with self._connect().connect() as conn:
                sql = sqlalchemy.text("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
                return conn.execute(sql).scalar() == 0
        except sqlalchemy.exc.SQLAlchemyError:
            return False


def _state(value: Any) -> str:
    # Enums come back as their names on SQLite and may come back as enum objects elsewhere.
    return str(getattr(value, "name", value) or "")


def _evaluation(a: dict[str, Any], state: Any, value: Any, value_type: Any) -> Record | None:
    """The Record of a finished trial (as ``ResultsStore.records`` builds it), or None for a
    trial that is no evaluation (the run's answers, trials not written by presso)."""
    if "phase" not in a:
        return None
    ok = _state(state) == "COMPLETE" and _state(value_type) == "FINITE"
    return Record.from_attrs(a, value if ok else None)


def _run_row(row: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    exp = attrs.get("experiment") or {}
    summary = RunSummary.from_attrs(row["name"], attrs)
    return {
        **row,
        "sweep": (row["sweep"] or {}).get("name"),  # the sweep that made the run, if any
        "budget": {k: v for k, v in (exp.get("space") or {}).items() if _finite(v)},
        "candidates": {
            phase: {"strategy": c.strategy, "heldout": c.heldout}
            for phase, c in summary.candidates.items()
        },
        # What the held-out column shows: perplexity, else the evaluator's own divergence.
        "heldout_metrics": [summary.heldout_metric, summary.fitness],
        "labels": summary.labels,
    }


# ---------------------------------------------------------------------- JSON for the page


def unit_grid(targets: list[str]) -> dict[str, Any]:
    """Where each unit sits in a blocks × unit-kinds heatmap: rows are block numbers, columns
    short names (``q_proj`` ... ``down_proj``; ``block`` for a whole block; as many parts as
    tell a block's units apart, see presso.summary.unit_columns)."""
    places = unit_columns(targets)
    rows: list[str] = []
    cols: list[str] = []
    for row, col in places:
        if row not in rows:
            rows.append(row)
        if col not in cols:
            cols.append(col)
    rows.sort(key=lambda r: (not r.isdecimal(), int(r) if r.isdecimal() else 0))
    return {
        "rows": rows,
        "cols": cols,
        "cells": [[rows.index(r), cols.index(c)] for r, c in places],
    }


def record_json(number: int, rec: Record) -> dict[str, Any]:
    """One evaluation for the page; ``tokens`` is the calibration size it was scored on
    (the stored ``None`` means the whole pool, whose size the metrics hold)."""
    tokens = rec.tokens if rec.tokens is not None else rec.metrics.get("tokens")
    return {
        "n": number,
        "phase": rec.phase,
        "step": rec.step,
        "index": rec.index,
        "tag": rec.tag,
        "tokens": int(tokens) if isinstance(tokens, int | float) else None,
        "fitness": rec.fitness,
        "metrics": {k: v for k, v in rec.metrics.items() if _finite(v)},
        "seconds": rec.seconds,
        "error": rec.error,
        "levels": rec.levels,
    }


def meta_json(attrs: dict[str, Any], run: str = "") -> dict[str, Any]:
    """What the page needs about a run besides its evaluations."""
    summary = RunSummary.from_attrs(run, attrs)
    values: dict[str, set[float]] = {}
    for kind, levels in zip(summary.kinds, summary.space_levels):
        values.setdefault(kind, set()).update(v for v in levels if _finite(v))
    return {
        "status": summary.status,
        "experiment": summary.experiment,
        "level_values": {kind: sorted(v) for kind, v in values.items()},
        # Per unit, level value -> what it keeps (heads and FFN widths), where values say less.
        "level_names": [
            {f"{v:g}": n for v, n in zip(levels, names) if n is not None}
            for levels, names in zip(summary.space_levels, summary.level_names)
        ],
        "units": summary.units,
        "kinds": summary.kinds,
        # How the page names and colours each kind's levels, and which metrics are budgets.
        "kind_labels": {k.name: k.label for k in KINDS.values()},
        "kind_colors": {k.name: k.colorscale for k in KINDS.values()},
        "budgets": list(KIND_BUDGETS),
        "grid": unit_grid(summary.targets),
        "finals": finals_json(summary),
        "timings": summary.timings,
        # The evaluator's metric (kl, or cos_dist for an encoder) and how to name each metric.
        "fitness": summary.fitness,
        "labels": summary.labels,
    }


def finals_json(summary: RunSummary) -> list[dict[str, Any]]:
    """The run's finally chosen configurations with their held-out metrics (``heldout_ppl``,
    ``heldout_kl``, ``heldout_cos_dist``) beside their budget metrics: each phase's winner
    (``kind: candidate``) and the Pareto-front points the run scored held-out (``kind: front``)."""
    out = []
    for phase, c in summary.candidates.items():
        metrics = {k: v for k, v in c.metrics.items() if k in KIND_BUDGETS or k in MEASURED}
        metrics.update({f"heldout_{k}": v for k, v in c.heldout.items()})
        out.append(_final(f"final:{phase}", phase, "candidate", c.strategy, c.levels, metrics))
    front = summary.front
    if front is None:
        return out
    for i, heldout in sorted(front.heldout.items()):
        if not isinstance(i, int) or not 0 <= i < min(len(front.points), len(front.levels)):
            continue
        # Budget objectives only: the calibration fitness of a front point is already plotted
        # as the evaluation it came from.
        metrics = {k: v for k, v in front.metrics(i).items() if k in KIND_BUDGETS and _finite(v)}
        metrics.update({f"heldout_{k}": v for k, v in heldout.items()})
        metrics.update(front.measured.get(i, {}))  # timed end to end (a latency objective)
        out.append(_final(f"front:{i}", "search", "front", None, front.levels[i], metrics))
    return out


def _final(
    key: str, phase: str, kind: str, strategy: Any, levels: list, metrics: dict
) -> dict[str, Any]:
    return {
        "key": key,
        "phase": phase,
        "kind": kind,
        "strategy": strategy,
        "levels": levels,
        "metrics": {k: v for k, v in metrics.items() if _finite(v)},
    }


#: Evaluations per reply of the live dashboard: a run of 100,000 comes in pages that each
#: answer in well under a second, the first drawn at once, instead of one reply of minutes.
PAGE = 5000


def run_json(
    reader: StoreReader, run: str, since: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """A run's metadata and its evaluations from number ``since`` on, at most ``limit`` of them
    (the page polls with the returned ``next``, at once while ``more`` says some are left)."""
    attrs = reader.attrs(run)
    records, next_number, more = reader.page(run, since, limit)
    return {
        "run": run,
        "meta": meta_json(attrs, run),
        "records": [record_json(n, r) for n, r in records],
        "next": next_number,
        "more": more,
    }


#: Evaluations a report holds at most (about): a larger run's report holds a sample, chosen by
#: the database (see ``StoreReader.sample``), not every evaluation (tens of MB of page).
REPORT_EVALUATIONS = 5000


def report_run_json(reader: StoreReader, run: str, limit: int = REPORT_EVALUATIONS) -> dict:
    """``run_json`` of a whole run for a report: at most about ``limit`` evaluations, with the
    run's counts (``sample``: evaluations, failed, shown) for the page to say so."""
    attrs = reader.attrs(run)
    records, counts = reader.sample(run, limit)
    return {
        "run": run,
        "meta": meta_json(attrs, run),
        "records": [record_json(n, r) for n, r in records],
        "next": records[-1][0] + 1 if records else 0,
        "more": False,
        "sample": counts,
    }


def export_files(attrs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per candidate, the files ``presso export`` writes: plan JSON, plan YAML, EvoPress text
    (absent where the candidate cannot be written in that format)."""
    files: dict[str, dict[str, str]] = {}
    summary = RunSummary.from_attrs("", attrs)
    for phase in summary.candidates:
        files[phase] = {}
        for fmt in EXPORTS:
            try:
                files[phase][fmt] = export_text(summary, phase, fmt)
            except PressoError:
                continue
    return files


#: Download choices: name → (presso export --format, file suffix).
EXPORTS = {
    "plan.json": ("plan", ".json"),
    "plan.yaml": ("plan", ".yaml"),
    "evopress.txt": ("evopress", ".txt"),
}


def export_text(run: RunSummary | dict[str, Any], phase: str, choice: str) -> str:
    """The text ``presso export --candidate PHASE`` writes for one download choice (``run``:
    its summary, or its stored attributes)."""
    from presso.export import build_plan, render

    if choice not in EXPORTS:
        raise PressoError(f"unknown export {choice!r}; choose one of: {', '.join(EXPORTS)}")
    fmt, suffix = EXPORTS[choice]
    return render(build_plan(run, phase), fmt, suffix)


def export_filename(run: str, phase: str, choice: str) -> str:
    """A safe download name, e.g. ``tiny-baseline-uniform-plan.yaml``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{run}-{phase}-{choice}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
