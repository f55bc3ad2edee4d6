"""The results store: every evaluated candidate of every run, in an Optuna RDB study.

One run is one Optuna study (so optuna-dashboard opens the same file), which says what presso
means, so that Optuna's own queries (``best_trial``, ``best_trials``, its Pareto plots) give
presso's answer:

- Each evaluation of the search is a trial: its parameters are the per-unit levels, its user
  attributes the rest (phase, step, index, tag, tokens, fitness, metrics, seconds, error). Its
  fitness was measured on a sample of calibration tokens that differs between evaluations
  (screening on few tokens, a fresh draw per generation), so values are not comparable: the
  trial is PRUNED, with its fitness as the intermediate value at step = tokens scored (its
  fidelity), or FAIL when it failed.
- The run's answers are its COMPLETE trials, added when it finishes, with values of one
  fidelity: for a single-objective run each candidate (the search's best, each baseline) valued
  by its held-out fitness (``heldout_kl``), so ``best_trial`` is the candidate that wins
  held-out; for a multi-objective run each point of the Pareto front, valued by its objectives
  (directions and metric names set from them), so ``best_trials`` is the front.

The run's experiment and final summary are study user attributes (read back typed, as a
:class:`~presso.summary.RunSummary`, by :meth:`ResultsStore.summary`); the summary is also the
study's note in optuna-dashboard (which cuts attributes over 1024 characters). An SQLite file
by default; any SQLAlchemy URL (PostgreSQL, MySQL) is accepted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from presso.errors import DiskFullError, PressoError, no_room
from presso.summary import RunSummary

if TYPE_CHECKING:
    import optuna

    from presso.evaluation import Request, Result
    from presso.spaces import SearchSpace


# A PostgreSQL URL without a driver (``postgresql://``, and Heroku's ``postgres://``) goes
# through psycopg 3, the `postgres` extra: SQLAlchemy would pick psycopg2, which presso does not
# install, and fail with "Failed to import DB access module".
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_POSTGRES_DRIVER = "postgresql+psycopg"


def storage_url(store: str, *, create: bool = True) -> str:
    """An SQLAlchemy URL for ``store``: URLs pass through (a driverless PostgreSQL URL gets
    psycopg 3), paths become ``sqlite:///PATH`` (whose folder is made, unless ``create`` is
    False)."""
    if "://" in store:
        scheme, rest = store.split("://", 1)
        if scheme in _POSTGRES_SCHEMES:
            scheme, store = _POSTGRES_DRIVER, f"{_POSTGRES_DRIVER}://{rest}"
        if scheme == _POSTGRES_DRIVER:
            check_postgres_driver()
        return store
    path = Path(store).expanduser().resolve()
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def check_postgres_driver() -> None:
    """A clear message, naming the extra, where psycopg 3 is missing."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise PressoError("PostgreSQL needs the psycopg driver: pip install 'presso[postgres]'")


def sqlite_path(store: str) -> Path | None:
    """The file of an SQLite store (a path or an ``sqlite:///`` URL); None for other URLs."""
    m = _SQLITE_URL.match(store)
    if m:
        store = store[m.end() :]
    elif "://" in store:
        return None
    return Path(store).expanduser().resolve()


_SQLITE_URL = re.compile(r"^sqlite(\+\w+)?:///")


def sqlite_read_only(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A connection that SQLite itself keeps read-only (``mode=ro``): it cannot create the file,
    a journal or a table. The path is percent-encoded into the URI, so that names holding
    ``?``, ``#`` or ``%`` open the right file (a URL string would be cut there)."""
    from urllib.parse import quote

    uri = f"file:{quote(path.as_posix())}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)


#: What SQLite says when a read-only connection finds a write to roll back or recover first.
_HOT_JOURNAL = ("SQLITE_READONLY_ROLLBACK", "SQLITE_READONLY_RECOVERY")

#: Tables every presso store has (Optuna's RDB schema); a file without them is someone else's.
STORE_TABLES = ("studies", "study_user_attributes", "trials", "version_info")


def check_store(store: str, *, read_only: bool = True) -> None:
    """Refuse, by reading only, a store path that is no presso results store: missing, empty,
    not SQLite, or SQLite without Optuna's tables. Server URLs are left to their own errors.

    A store holding an unfinished write (a hot journal: a search killed while committing) can
    be read only after a writer rolls it back: refused when ``read_only``, else let through for
    the writer opening it next.
    """
    path = sqlite_path(store)
    if path is None:
        return
    fix = "give --store the file `presso search` wrote"
    if not path.is_file():
        raise PressoError(f"{store}: no results store there (run `presso search` first)")
    if path.stat().st_size == 0:
        raise PressoError(f"{store}: an empty file, not a presso results store; {fix}")
    try:
        con = sqlite_read_only(path, timeout_s=60)
        try:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {row[0] for row in con.execute(sql)}
        finally:
            con.close()
    except sqlite3.Error as err:
        if getattr(err, "sqlite_errorname", "") in _HOT_JOURNAL:
            if not read_only:
                return
            raise PressoError(
                f"{store} holds an unfinished write (was a search killed?); resume that search "
                "(`presso search EXPERIMENT --resume`), which completes it, then read it again"
            ) from None
        raise PressoError(f"{store}: not a presso results store ({err}); {fix}") from None
    if missing := [t for t in STORE_TABLES if t not in tables]:
        raise PressoError(
            f"{store}: an SQLite file that is not a presso results store (no {missing[0]} "
            f"table in it); {fix}"
        )


@dataclass
class Record:
    """One stored evaluation."""

    phase: str
    step: int
    index: int
    levels: list[float]
    tag: str
    tokens: int | None
    sample_seed: int
    fitness: float | None
    metrics: dict[str, float]
    seconds: float
    error: str | None

    @classmethod
    def from_attrs(cls, a: dict[str, Any], value: float | None) -> Record:
        """The record a trial's user attributes describe (a failed trial: no fitness); stores
        written before the fitness was an attribute hold it as the trial's value."""
        value = a.get("fitness", value)
        return cls(
            phase=a["phase"],
            step=a["step"],
            index=a["index"],
            levels=a["levels"],
            tag=a["tag"],
            tokens=a["tokens"],
            sample_seed=a["sample_seed"],
            fitness=value if value is not None and math.isfinite(value) else None,
            metrics=a.get("metrics") or {},
            seconds=a.get("seconds", 0.0),
            error=a.get("error"),
        )


class Evaluation(NamedTuple):
    """One stored evaluation without its levels and metrics: what resuming, counting failures
    and choosing records to read need about every evaluation of a run (a few numbers each,
    where a :class:`Record` holds a value per unit)."""

    trial_id: int
    phase: str
    step: int
    index: int
    tokens: int | None
    fitness: float | None  # finite, else None
    error: bool  # it failed with an error (a cause that may be gone on resume)


#: Records read per query when a run is read in chunks (``ResultsStore.load``).
CHUNK = 2000


class ResultsStore:
    """Runs and their evaluations in one Optuna storage."""

    def __init__(self, store: str, *, must_exist: bool = False, read_only: bool = False) -> None:
        """must_exist: refuse a store that is missing or not presso's (see check_store).
        read_only: that, and open it so that nothing can write to it (reading commands)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.label = store
        if must_exist or read_only:
            check_store(store, read_only=read_only)
        try:
            self.url = storage_url(store, create=not read_only)
            self.storage = _open_storage(self.url, read_only=read_only)
        except PressoError:
            raise
        except Exception as err:
            raise PressoError(
                f"results store {store}: cannot open it: {_first_line(err)}"
            ) from None

    # ------------------------------------------------------------------ runs

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Database errors while reading (a corrupt, locked or foreign store) as one line."""
        from sqlalchemy import exc

        try:
            yield
        except exc.SQLAlchemyError as err:
            raise PressoError(
                f"results store {self.label}: cannot read it: {_first_line(err)}"
            ) from None
        except json.JSONDecodeError as err:  # Optuna keeps attributes as JSON text
            raise PressoError(
                f"results store {self.label} is damaged: a stored attribute is not JSON "
                f"({err.msg}); restore the store from a copy"
            ) from None

    def runs(self) -> list[dict[str, Any]]:
        """Every run, in the order they were made (see ``run_rows``)."""
        with self._reading():
            return [row for row, _ in run_rows(self._sql, self.label)]

    def summary(self, run: str) -> RunSummary:
        """Run ``run`` as every view reads it (its candidates once it has finished)."""
        return RunSummary.from_attrs(run, self.open(run).user_attrs)

    def overview(self, run: str) -> tuple[int, int, Record | None]:
        """A run's evaluations, how many failed, and the best so far (lowest finite fitness),
        counted by the database without loading the evaluations (see ``runs``)."""
        of_run = (
            " FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id"
            " JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :run"
        )
        with self._reading():
            ((evaluations, failed),) = self._sql(
                "SELECT COALESCE(SUM(CASE WHEN a.key = 'phase' THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN a.key = 'error' AND a.value_json != 'null'"
                " THEN 1 ELSE 0 END), 0)" + of_run + " AND a.key IN ('phase', 'error')",
                run=run,
            )
            # JSON's non-finite numbers are no fitness (and SQLite would cast them to 0).
            best = self._sql(
                "SELECT a.trial_id" + of_run + " AND a.key = 'fitness'"
                " AND a.value_json NOT IN ('null', 'NaN', 'Infinity', '-Infinity')"
                " ORDER BY CAST(a.value_json AS DOUBLE PRECISION) LIMIT 1",
                run=run,
            )
            if not best:
                if evaluations > failed:  # a store from before the fitness was an attribute
                    ok = [r for r in self.records(self.open(run)) if r.fitness is not None]
                    return evaluations, failed, min(ok, key=lambda r: r.fitness, default=None)
                return evaluations, failed, None
            attrs = {
                key: json.loads(value)
                for key, value in self._sql(
                    "SELECT key, value_json FROM trial_user_attributes WHERE trial_id = :t",
                    t=best[0][0],
                )
            }
        return int(evaluations), int(failed), Record.from_attrs(attrs, None)

    def _sql(self, sql: str, **params: Any) -> list[tuple]:
        return list(self._stream(sql, **params))

    def _stream(self, sql: str, **params: Any) -> Iterator[tuple]:
        """The rows of ``sql``, fetched as they are used (a server-side cursor on PostgreSQL)."""
        from sqlalchemy import text

        with self.storage.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=CHUNK)
            for row in rows.execute(text(sql), params):
                yield tuple(row)

    def exists(self, run: str) -> bool:
        return any(r["name"] == run for r in self.runs())

    def ensure_new(self, run: str) -> None:
        """Refuse to start a run whose name is taken: results are never overwritten."""
        if self.exists(run):
            raise PressoError(
                f"run {run!r} already exists in {self.url}; continue it with --resume, "
                "or start a new one with --name NEW_NAME"
            )

    def create(
        self, run: str, experiment: dict[str, Any], space: SearchSpace, objectives: list[str]
    ) -> optuna.Study:
        """A new run's study; ``objectives`` name the values of its answers (``-name``: to
        maximise), e.g. ``["heldout_kl"]`` or ``["kl", "mean_bits"]``."""
        import optuna

        from presso.evaluation import Objective

        self.ensure_new(run)
        parsed = [Objective.parse(o) for o in objectives]
        study = optuna.create_study(
            study_name=run, storage=self.storage, directions=[o.direction for o in parsed]
        )
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what we mean
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in parsed])
        study.set_user_attr("experiment", experiment)
        study.set_user_attr("units", space.names)
        study.set_user_attr("kinds", [d.kind for d in space.dims])
        study.set_user_attr("targets", [d.target for d in space.dims])
        study.set_user_attr("levels", [list(d.levels) for d in space.dims])
        names = [[d.level_name(i) for i in range(len(d.levels))] for d in space.dims]
        if any(n is not None for row in names for n in row):  # e.g. heads and FFN widths
            study.set_user_attr("level_names", names)
        study.set_user_attr("status", "running")
        return study

    def open(self, run: str) -> optuna.Study:
        import optuna

        if not self.exists(run):
            known = ", ".join(r["name"] for r in self.runs()) or "none"
            raise PressoError(f"no run named {run!r} in {self.url}; runs there: {known}")
        with self._reading():
            study = optuna.load_study(study_name=run, storage=self.storage)
            check_attrs(self.label, run, study.user_attrs)
        return study

    # ------------------------------------------------------------------ evaluations

    def record(
        self,
        study: optuna.Study,
        space: SearchSpace,
        phase: str,
        step: int,
        index: int,
        request: Request,
        result: Result,
    ) -> None:
        import optuna

        params = space.to_dict(request.config)
        attrs = {
            "phase": phase,
            "step": step,
            "index": index,
            "tag": request.tag,
            "tokens": request.tokens,
            "sample_seed": request.sample_seed,
            "levels": list(params.values()),
            "fitness": float(result.fitness) if result.ok else None,  # type: ignore[arg-type]
            "metrics": result.metrics,
            "seconds": result.seconds,
            "error": result.error,
        }
        # A screening score, not an answer (see the module doc): its fidelity is the step.
        tokens = int(result.metrics.get("tokens") or request.tokens or 0)
        ok = result.ok
        trial = optuna.trial.create_trial(
            params=params,
            distributions=_distributions(space),
            intermediate_values={tokens: attrs["fitness"]} if ok else None,
            state=optuna.trial.TrialState.PRUNED if ok else optuna.trial.TrialState.FAIL,
            user_attrs=attrs,
        )
        study.add_trial(trial)

    def add_answers(
        self, study: optuna.Study, space: SearchSpace, answers: list[dict[str, Any]]
    ) -> None:
        """The run's answers as COMPLETE trials (see the module doc), each ``{"candidate":
        name, "levels": [...], "values": [...], **more attributes}``; a candidate already
        stored (a finished run resumed after it wrote them) is not added twice."""
        import optuna

        stored = set(self._candidates(study.study_name))
        for answer in answers:
            if answer["candidate"] in stored or len(answer["values"]) != len(study.directions):
                continue  # stored already, or a study made before answers had their objectives
            attrs = {k: v for k, v in answer.items() if k != "values"}
            trial = optuna.trial.create_trial(
                params=dict(zip(space.names, answer["levels"])),
                distributions=_distributions(space),
                values=answer["values"],
                user_attrs=json.loads(json.dumps(attrs)),
            )
            study.add_trial(trial)
            stored.add(answer["candidate"])
        # Not evaluations: what `presso runs` and the dashboard count leaves them out.
        study.set_user_attr("answers", len(stored))

    def _candidates(self, run: str) -> list[str]:
        """The candidates the run's answers hold (by SQL: the evaluations are not read)."""
        with self._reading():
            rows = self._sql(
                "SELECT a.value_json FROM trial_user_attributes a"
                " JOIN trials t ON t.trial_id = a.trial_id"
                " JOIN studies s ON s.study_id = t.study_id"
                " WHERE s.study_name = :run AND a.key = 'candidate'",
                run=run,
            )
        return [json.loads(value) for (value,) in rows]

    def records(self, study: optuna.Study) -> list[Record]:
        """Every evaluation of the run, in the order they were stored (all in memory: a large
        run is better read with ``evaluations`` and ``load``)."""
        return list(self.load(self.evaluations(study.study_name)))

    def evaluations(self, run: str) -> list[Evaluation]:
        """The run's evaluations in the order they were stored, without their levels and
        metrics: one query, its rows streamed (Optuna's ``get_trials`` would load every
        parameter row, 210 per evaluation of SmolLM2)."""
        pick = lambda key: f"MAX(CASE WHEN a.key = '{key}' THEN a.value_json END)"  # noqa: E731
        sql = (
            f"SELECT t.trial_id, {pick('phase')}, {pick('step')}, {pick('index')},"
            f" {pick('tokens')}, {pick('fitness')}, {pick('error')}, MAX(v.value)"
            " FROM trials t JOIN studies s ON s.study_id = t.study_id"
            " JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
            " LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0"
            " WHERE s.study_name = :run"
            " AND a.key IN ('phase', 'step', 'index', 'tokens', 'fitness', 'error')"
            " GROUP BY t.trial_id, t.number ORDER BY t.number"
        )
        out = []
        with self._reading():
            for trial_id, phase, step, index, tokens, fitness, error, value in self._stream(
                sql, run=run
            ):
                if phase is None:
                    continue  # the run's answers, not evaluations
                # Stores from before the fitness was an attribute hold it as the trial's value.
                fit = json.loads(fitness) if fitness is not None else value
                tokens = json.loads(tokens) if tokens is not None else None
                out.append(
                    Evaluation(
                        trial_id=trial_id,
                        phase=json.loads(phase),
                        step=json.loads(step),
                        index=json.loads(index),
                        tokens=tokens,
                        fitness=fit if fit is not None and math.isfinite(fit) else None,
                        error=error is not None and json.loads(error) is not None,
                    )
                )
        return out

    def load(self, evaluations: Iterable[Evaluation], chunk: int = CHUNK) -> Iterator[Record]:
        """The records of ``evaluations``, in their order, read ``chunk`` at a time: a caller
        that keeps only what it needs holds one chunk, however large the run."""
        batch: list[int] = []
        for e in evaluations:
            batch.append(e.trial_id)
            if len(batch) == chunk:
                yield from self._records_of(batch)
                batch = []
        if batch:
            yield from self._records_of(batch)

    def _records_of(self, trial_ids: list[int]) -> list[Record]:
        from sqlalchemy import bindparam, text

        attrs: dict[int, dict[str, Any]] = {t: {} for t in trial_ids}
        select = text(
            "SELECT trial_id, key, value_json FROM trial_user_attributes WHERE trial_id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        with self._reading(), self.storage.engine.connect() as conn:
            for trial_id, key, value in conn.execute(select, {"ids": trial_ids}):
                attrs[trial_id][key] = json.loads(value)
            old = [t for t in trial_ids if "fitness" not in attrs[t]]
            values: dict[int, float] = {}
            if old:  # a store from before the fitness was an attribute
                select = text(
                    "SELECT trial_id, value FROM trial_values"
                    " WHERE objective = 0 AND trial_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True))
                values = dict(conn.execute(select, {"ids": old}).all())
        return [Record.from_attrs(attrs[t], values.get(t)) for t in trial_ids]

    def forget_if_empty(self, run: str) -> bool:
        """Delete run ``run`` if it holds no evaluation (it failed before its first); returns
        whether it was deleted."""
        import optuna

        self.open(run)
        with self._reading():
            ((trials,),) = self._sql(
                "SELECT COUNT(t.trial_id) FROM trials t JOIN studies s"
                " ON s.study_id = t.study_id WHERE s.study_name = :run",
                run=run,
            )
        if trials:
            return False
        optuna.delete_study(study_name=run, storage=self.storage)
        return True

    def close(self) -> None:
        """Release the store's database connections."""
        self.storage.engine.dispose()

    @staticmethod
    def set_summary(study: optuna.Study, summary: dict[str, Any], note: str = "") -> None:
        """Store the run's summary (and, when optuna-dashboard is installed, ``note``, its
        Markdown rendering, as the study's note there); the run is finished."""
        # JSON round trip: only plain data is stored.
        study.set_user_attr("summary", json.loads(json.dumps(summary)))
        if note:
            with contextlib.suppress(ImportError):
                from optuna_dashboard import save_note

                save_note(study, note)
        study.set_user_attr("status", "finished")


#: The study attributes a run's row is made of (see ``run_rows``).
ROW_ATTRS = ("status", "experiment", "summary", "answers", "sweep")


def run_rows(
    query: Callable[..., list[tuple]], label: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every run of a store, in the order they were made, as ``(row, attributes)``: the row is
    what `presso runs` and the dashboard list (name, evaluations, status, started, updated,
    model, strategy, sweep: ``{name, fields, file}`` for a sweep's run), the attributes the
    run's ROW_ATTRS, checked (for readers that show more of it).

    ``query(sql)``: the store's rows for ``sql`` (each reader queries through its own
    connection). Counted in SQL: Optuna's study summaries load every trial of every study (its
    parameters and attributes), minutes for a store of 100,000 evaluations.
    """
    studies = query(
        "SELECT s.study_id, s.study_name, COUNT(t.trial_id), MIN(t.datetime_start),"
        " MAX(t.datetime_complete) FROM studies s LEFT JOIN trials t ON t.study_id = s.study_id"
        " GROUP BY s.study_id, s.study_name ORDER BY s.study_id"
    )
    by_study: dict[int, dict[str, Any]] = {}
    keys = ", ".join(f"'{key}'" for key in ROW_ATTRS)
    for study_id, key, value in query(
        f"SELECT study_id, key, value_json FROM study_user_attributes WHERE key IN ({keys})"
    ):
        by_study.setdefault(study_id, {})[key] = json.loads(value)
    out = []
    for study_id, name, n_trials, started, updated in studies:
        attrs = check_attrs(label, name, by_study.get(study_id, {}))
        exp = attrs.get("experiment") or {}
        row = {
            "name": name,
            # A finished run's answers are trials too, not evaluations.
            "evaluations": n_trials - (attrs.get("answers") or 0),
            "status": attrs.get("status") or "?",
            "started": _seconds(started),
            "updated": _seconds(updated),
            "model": exp.get("model", "?"),
            "strategy": (exp.get("search") or {}).get("strategy", "?"),
            "sweep": attrs.get("sweep"),
        }
        out.append((row, attrs))
    return out


def check_attrs(store: str, run: str, attrs: Any) -> dict[str, Any]:
    """``attrs``, a run's stored attributes, if they have the shape presso writes; else one
    line naming the store, the run and the first attribute that does not (a damaged store)."""
    from pydantic import ValidationError

    try:
        _stored_models().model_validate(attrs)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise PressoError(
            f"results store {store}: run {run!r} is damaged: its {where or 'attributes'} is not "
            f"what presso writes ({first['msg']}); read another run or restore the store from "
            "a copy"
        ) from None
    return attrs


@functools.cache
def _stored_models() -> Any:
    """The shape of a run's stored attributes (only what readers rely on; more is allowed)."""
    from pydantic import BaseModel, ConfigDict

    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")

    number = float | None

    class Experiment(Loose):
        model: str = "?"
        data: dict[str, Any] = {}
        compress: dict[str, Any] = {}
        sparsity: dict[str, Any] = {}
        space: dict[str, Any] = {}
        search: dict[str, Any] = {}

    class Heldout(Loose):
        index: int

    class Pareto(Loose):
        objectives: list[str] = []
        points: list[list[number]] = []
        levels: list[list[number]] = []
        heldout: list[Heldout] = []
        reference: list[number] = []
        hypervolume: number = None

    class Candidate(Loose):
        strategy: str | None = None
        levels: list[number] = []
        heldout: dict[str, Any] = {}

    class Summary(Loose):
        run: str = ""
        candidates: dict[str, Candidate] = {}
        pareto: Pareto | None = None
        timings: dict[str, Any] = {}

    class RunAttrs(Loose):
        experiment: Experiment = Experiment()
        status: str = "?"
        units: list[str] = []
        kinds: list[str] | None = None
        targets: list[str] | None = None
        levels: list[list[number]] | None = None
        summary: Summary | None = None

    return RunAttrs


def _distributions(space: SearchSpace) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution

    return {d.name: CategoricalDistribution(list(d.levels)) for d in space.dims}


def _seconds(value: Any) -> str:
    """A stored time (a datetime, or SQLite's text) to the second, as ISO 8601; "" for none."""
    from datetime import datetime

    if value is None:
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    return value.isoformat(timespec="seconds")


def _first_line(err: BaseException) -> str:
    return (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]


def _open_storage(
    url: str, attempts: int = 6, *, read_only: bool = False
) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``, set up if new, safe when several processes set it up at once.

    Optuna creates a new store's tables and version rows with no lock, so two processes
    opening one new store together (a search and the dashboard, or `presso show`, or two
    sweeps) race, and the loser fails on a table or row the winner just made. That failure
    means the store is being set up: look again shortly and find it done.
    """
    import optuna
    from sqlalchemy import exc

    def storage() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=_engine_kwargs(url, read_only), skip_table_creation=read_only
        )

    path = sqlite_path(url)
    new = path is not None and not (path.is_file() and path.stat().st_size)
    for attempt in range(attempts):
        try:
            opened = storage()
            break
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError) as err:
            if why := no_room(getattr(err, "orig", None), path):
                if new and path is not None:  # half a store, holding nothing: not left behind
                    for leftover in (path, path.with_name(path.name + "-journal")):
                        leftover.unlink(missing_ok=True)
                where = _where(url)
                raise DiskFullError(
                    where, "a new store's tables", why=why, fix=_STORE_FIX
                ) from None
            retry = isinstance(err, exc.IntegrityError) or "already exists" in str(err)
            if not retry or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    if not read_only:
        _on_disk_full(opened.engine, url)
    return opened


_STORE_FIX = " (or give --store a place with room)"


def _where(url: str) -> str:
    """The store's file, or its URL without the password."""
    path = sqlite_path(url)
    if path is not None:
        return str(path)
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _on_disk_full(engine: Any, url: str) -> None:
    """A write the disk has no room for (SQLite's SQLITE_FULL, PostgreSQL's disk_full) raises
    DiskFullError naming the store, instead of a driver error wrapped by Optuna. The database
    rolls the failed transaction back, so everything committed before is kept."""
    from sqlalchemy import event

    path = sqlite_path(url)

    def translate(context: Any) -> BaseException | None:
        if why := no_room(context.original_exception, path):
            return DiskFullError(_where(url), "a result into it", why=why, fix=_STORE_FIX)
        return None

    event.listen(engine, "handle_error", translate)


def _engine_kwargs(url: str, read_only: bool = False) -> dict[str, Any]:
    # Ray workers and the dashboard may read while the driver writes: wait for the lock.
    path = sqlite_path(url)
    if read_only and path is not None:  # SQLite refuses every write, Optuna's set-up included
        return {"creator": lambda: sqlite_read_only(path, timeout_s=60)}
    if read_only and url.startswith("postgresql"):
        return {"connect_args": {"options": "-c default_transaction_read_only=on"}}
    return {"connect_args": {"timeout": 60}} if path is not None else {}
