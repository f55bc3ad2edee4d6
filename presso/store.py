"""The results store: every evaluated candidate of every run, in an Optuna RDB study.

One run is one Optuna study (so optuna-dashboard opens the same file). Each evaluation is a
trial: its parameters are the per-unit levels, its value the fitness, and its user
attributes the rest (phase, step, index, tag, tokens, metrics, seconds, error). The run's
experiment and final summary are study user attributes. An SQLite file by default; any
SQLAlchemy URL (PostgreSQL, MySQL) is accepted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError

if TYPE_CHECKING:
    import optuna

    from presso.search._base import Request, Result
    from presso.spaces import SearchSpace


def storage_url(store: str) -> str:
    """An SQLAlchemy URL for ``store``: URLs pass through, paths become ``sqlite:///PATH``."""
    if "://" in store:
        return store
    path = Path(store).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


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
        """The record a trial's user attributes and value describe (a failed trial: no fitness)."""
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


class ResultsStore:
    """Runs and their evaluations in one Optuna storage."""

    def __init__(self, store: str, *, must_exist: bool = False) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if must_exist and "://" not in store and not Path(store).expanduser().is_file():
            raise PressoError(f"{store}: no results store there (run `presso search` first)")
        self.url = storage_url(store)
        try:
            self.storage = _open_storage(self.url)
        except Exception as err:
            raise PressoError(f"results store {store}: cannot open it: {err}") from None

    # ------------------------------------------------------------------ runs

    def runs(self) -> list[dict[str, Any]]:
        import optuna

        out = []
        for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False):
            attrs = s.user_attrs
            out.append(
                {
                    "name": s.study_name,
                    "trials": s.n_trials,
                    "status": attrs.get("status", "?"),
                    "started": s.datetime_start.isoformat(timespec="seconds")
                    if s.datetime_start
                    else "",
                    "model": attrs.get("experiment", {}).get("model", "?"),
                }
            )
        return out

    def exists(self, run: str) -> bool:
        return any(r["name"] == run for r in self.runs())

    def ensure_new(self, run: str) -> None:
        """Refuse to start a run whose name is taken: results are never overwritten."""
        if self.exists(run):
            raise PressoError(
                f"run {run!r} already exists in {self.url}; continue it with --resume, "
                "or start a new one with --name NEW_NAME"
            )

    def create(self, run: str, experiment: dict[str, Any], space: SearchSpace) -> optuna.Study:
        import optuna

        self.ensure_new(run)
        study = optuna.create_study(study_name=run, storage=self.storage, direction="minimize")
        study.set_user_attr("experiment", experiment)
        study.set_user_attr("units", space.names)
        study.set_user_attr("kinds", [d.kind for d in space.dims])
        study.set_user_attr("targets", [d.target for d in space.dims])
        study.set_user_attr("levels", [list(d.levels) for d in space.dims])
        study.set_user_attr("status", "running")
        return study

    def open(self, run: str) -> optuna.Study:
        import optuna

        if not self.exists(run):
            known = ", ".join(r["name"] for r in self.runs()) or "none"
            raise PressoError(f"no run named {run!r} in {self.url}; runs there: {known}")
        return optuna.load_study(study_name=run, storage=self.storage)

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
        from optuna.distributions import CategoricalDistribution

        params = space.to_dict(request.config)
        dists = {d.name: CategoricalDistribution(list(d.levels)) for d in space.dims}
        attrs = {
            "phase": phase,
            "step": step,
            "index": index,
            "tag": request.tag,
            "tokens": request.tokens,
            "sample_seed": request.sample_seed,
            "levels": list(params.values()),
            "metrics": result.metrics,
            "seconds": result.seconds,
            "error": result.error,
        }
        ok = result.ok
        trial = optuna.trial.create_trial(
            params=params,
            distributions=dists,
            value=float(result.fitness) if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            user_attrs=attrs,
        )
        study.add_trial(trial)

    def records(self, study: optuna.Study) -> list[Record]:
        return [
            Record.from_attrs(t.user_attrs, t.value)
            for t in study.get_trials(deepcopy=False)
            if "phase" in t.user_attrs
        ]

    @staticmethod
    def set_summary(study: optuna.Study, summary: dict[str, Any]) -> None:
        # JSON round trip: only plain data is stored.
        study.set_user_attr("summary", json.loads(json.dumps(summary)))
        study.set_user_attr("status", "finished")


def _open_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``, set up if new, safe when several processes set it up at once.

    Optuna creates a new store's tables and version rows with no lock, so two processes
    opening one new store together (a search and the dashboard, or `presso show`, or two
    sweeps) race, and the loser fails on a table or row the winner just made. That failure
    means the store is being set up: look again shortly and find it done.
    """
    import optuna
    from sqlalchemy import exc

    def storage() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))

    for attempt in range(attempts - 1):
        try:
            return storage()
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError) as err:
            if not (isinstance(err, exc.IntegrityError) or "already exists" in str(err)):
                raise
            time.sleep(0.05 * 2**attempt)
    return storage()


def _engine_kwargs(url: str) -> dict[str, Any]:
    # Ray workers and the dashboard may read while the driver writes: wait for the lock.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
