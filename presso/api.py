"""presso from Python (a notebook): the objects the CLI uses, tables as pandas DataFrames.

    from presso import api

    exp = api.load_experiment("experiments/smollm2-bits.yaml")   # or a dict
    run = api.run(exp)                    # `presso search`: returns an api.Run
    run.summary.winner                    # the typed RunSummary `presso show` prints
    run.candidates()                      # one row per candidate: metrics and per-unit levels
    run.pareto()                          # the Pareto front, one row per point
    run.evaluations()                     # every evaluation, as Optuna's trials_dataframe
    run.export("search", "plan", "plan.json")
    api.open_run("smollm2-bits", store="runs/presso.db")   # a stored run
    api.profile_timings(backend="onnxruntime")              # a profile database's timings

Tables need pandas (``pip install 'presso[notebook]'``); everything else is what the CLI runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import MissingExtraError, PressoError

if TYPE_CHECKING:
    import pandas as pd

    from presso.config import Experiment
    from presso.plan import Plan
    from presso.store import ResultsStore
    from presso.summary import RunSummary

DEFAULT_STORE = "runs/presso.db"

__all__ = ["Run", "load_experiment", "open_run", "profile_timings", "run", "runs"]


def load_experiment(
    source: str | Path | dict[str, Any], *, name: str | None = None, store: str | None = None
) -> Experiment:
    """An experiment from a YAML file or a dict (validated as ``presso search`` validates a
    file); relative model and corpus paths are taken from the file's folder, or, for a dict,
    the current folder. ``name`` / ``store`` override the run's name and results store."""
    from presso.config import experiment_from_dict, load_experiment, resolve_paths

    if isinstance(source, dict):
        exp = resolve_paths(Path.cwd() / "experiment.yaml", experiment_from_dict(source))
    else:
        path = Path(source)
        exp = resolve_paths(path, load_experiment(path))
    updates = {k: v for k, v in (("name", name), ("store", store)) if v is not None}
    return exp.model_copy(update=updates) if updates else exp


def run(
    experiment: Experiment | str | Path | dict[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Run (or ``resume``) an experiment, as ``presso search`` does; the finished run."""
    from presso.config import Experiment
    from presso.run import run_search

    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    run_search(exp, resume=resume, show_progress=progress)
    return open_run(exp.name or "run", store=exp.store)


def open_run(name: str, *, store: str = DEFAULT_STORE) -> Run:
    """A run stored in ``store`` (an SQLite path or an SQLAlchemy URL), read only."""
    from presso.store import ResultsStore

    results = ResultsStore(store, read_only=True)
    results.open(name)  # a missing run is refused here, naming the runs there
    return Run(name, results)


def runs(store: str = DEFAULT_STORE) -> pd.DataFrame:
    """The runs in ``store``, as ``presso runs`` lists them."""
    from presso.store import ResultsStore

    return _pandas().DataFrame(ResultsStore(store, read_only=True).runs())


class Run:
    """A stored run: its summary and its tables."""

    def __init__(self, name: str, store: ResultsStore) -> None:
        self.name = name
        self.store = store

    def __repr__(self) -> str:
        return f"Run({self.name!r}, store={self.store.label!r})"

    @property
    def summary(self) -> RunSummary:
        """The run's summary, read now (a running search's is unfinished)."""
        return self.store.summary(self.name)

    def candidates(self) -> pd.DataFrame:
        """One row per candidate the run chose (``search``, ``baseline:NAME``): strategy, its
        budget metrics, held-out metrics (``heldout_ppl`` ...), then one column per search
        dimension with its level."""
        summary = self.summary
        rows = {
            name: _row(summary, c.levels, strategy=c.strategy, metrics=c.metrics, heldout=c.heldout)
            for name, c in summary.candidates.items()
        }
        return _frame(rows, "candidate")

    def pareto(self) -> pd.DataFrame:
        """The Pareto front, one row per point (``pareto:I``, as ``--candidate`` names it): its
        objectives as measured, held-out metrics where scored, and its per-dimension levels."""
        summary = self.summary
        rows = {}
        front = summary.front
        for i in range(len(front) if front else 0):
            c = summary.candidate(f"pareto:{i}")
            rows[c.name] = _row(summary, c.levels, metrics=c.metrics, heldout=c.heldout)
        return _frame(rows, "candidate")

    def evaluations(self) -> pd.DataFrame:
        """Every evaluation of the run, one row each, as Optuna's ``trials_dataframe``: phase,
        step, tag, calibration tokens, fitness (the evaluator's metric), each measured metric,
        seconds, error, then one column per search dimension with its level."""
        summary = self.summary
        rows = {}
        for n, r in enumerate(self.store.records(self.store.open(self.name))):
            head = {
                "phase": r.phase,
                "step": r.step,
                "index": r.index,
                "tag": r.tag,
                "tokens": r.tokens,
                "fitness": r.fitness,
            }
            rows[n] = {
                **head,
                **_row(summary, r.levels, metrics=r.metrics),
                "seconds": r.seconds,
                "error": r.error,
            }
        return _frame(rows, "number")

    def plan(self, candidate: str = "search") -> Plan:
        """The candidate's plan (``.to_dict()``: what ``presso export --format plan`` writes)."""
        from presso.export import build_plan

        return build_plan(self.summary, candidate)

    def export(
        self,
        candidate: str = "search",
        format: str = "plan",  # noqa: A002 - the CLI's --format
        out: str | Path | None = None,
        *,
        force: bool = False,
    ) -> str | Path:
        """Write the candidate as ``presso export`` does; the path written, or with no ``out``
        the text of a text format."""
        from presso.export import export

        path = Path(out) if out is not None else None
        text = export(self.summary, candidate, format, path, force=force)
        if text is not None:
            return text
        assert path is not None
        return path


def profile_timings(
    db: str | Path | None = None, *, backend: str | None = None, fingerprint: str | None = None
) -> pd.DataFrame:
    """A profile database's timings (default: the one ``presso profile`` fills), one row per
    measurement: machine fingerprint, backend, op, workload, median and spread in ms, repeats,
    error, and for a linear layer its shape and level (out/in features, bits, sparsity, group)."""
    from presso.cost_models import parse_op
    from presso.profilers import ProfileDatabase

    database = ProfileDatabase(db)
    try:
        rows = []
        for fp, m in database.all_measurements(backend=backend, fingerprint=fingerprint):
            row: dict[str, Any] = {"fingerprint": fp, **m.to_dict()}
            row.pop("detail", None)
            try:
                op = parse_op(m.op)
                row.update(
                    out_features=op.out_features,
                    in_features=op.in_features,
                    bits=op.bits,
                    sparsity=op.sparsity,
                    group_size=op.group_size,
                )
            except PressoError:
                pass  # a whole model or a structure probe: no layer shape
            rows.append(row)
    finally:
        database.close()
    return _pandas().DataFrame(rows)


def _row(
    summary: RunSummary,
    levels: list[float],
    *,
    strategy: str | None = None,
    metrics: dict[str, float] | None = None,
    heldout: dict[str, float] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {} if strategy is None else {"strategy": strategy}
    row.update(metrics or {})
    row.update({f"heldout_{k}": v for k, v in (heldout or {}).items()})
    row.update(summary.unit_levels(levels))
    return row


def _frame(rows: dict[Any, dict[str, Any]], index: str) -> pd.DataFrame:
    pd = _pandas()
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = index
    return frame


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingExtraError("pandas", "notebook", "presso's tables (presso.api)") from None
    return pandas
