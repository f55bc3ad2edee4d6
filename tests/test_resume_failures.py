"""A resumed run evaluates again the stored failures whose cause may be gone (a corrupt file
since repaired, a dead worker), says how many, and ends as if they had never failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from presso.cli import main
from presso.evaluator import Evaluator
from presso.search._base import Result
from presso.store import ResultsStore

from .conftest import tiny_experiment

# The paper's EvoPress: no sensitivity table, so every evaluation the tests count is the search's.
OPTIONS = {
    "generations": 2,
    "offspring": 4,
    "stages": [[128, 2], [256, 1]],
    "start": "uniform",
    "screen": 0,
}


def _records(store: Path, run: str) -> list:
    s = ResultsStore(str(store))
    return s.records(s.open(run))


def _outcome(store: Path, run: str) -> list[tuple]:
    """The evaluations that succeeded (by phase, step, index): what the run's result rests on."""
    recs = _records(store, run)
    return sorted(
        (r.phase, r.step, r.index, tuple(r.levels), r.fitness) for r in recs if not r.error
    )


def test_resume_evaluates_stored_failures_again(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_experiment(tiny_experiment(search={"options": OPTIONS}, baselines=[]))
    store = tmp_path / "runs.db"
    evaluate, calls = Evaluator.evaluate, []

    def flaky(self: Evaluator, request):  # noqa: ANN001, ANN202
        calls.append(request)
        if len(calls) in (2, 3):  # e.g. a level file that was corrupt at the time
            return Result(fitness=None, error="CorruptFile: level.safetensors: does not match")
        if len(calls) == 7:
            raise KeyboardInterrupt
        return evaluate(self, request)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    assert main(["search", str(path), "--quiet"]) == 130
    assert [bool(r.error) for r in _records(store, "tiny")] == [
        False,
        True,
        True,
        False,
        False,
        False,
    ]

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)  # the cause is gone
    capsys.readouterr()
    assert main(["search", str(path), "--quiet", "--resume"]) == 0
    out = capsys.readouterr().out
    assert (
        "resuming 'tiny': 4 evaluations already stored; 2 that failed will be evaluated again"
        in out
    )

    assert main(["search", str(path), "--quiet", "--name", "straight"]) == 0
    assert _outcome(store, "tiny") == _outcome(store, "straight")
    summary = ResultsStore(str(store)).open("tiny").user_attrs["summary"]
    straight = ResultsStore(str(store)).open("straight").user_attrs["summary"]
    assert summary["candidates"] == straight["candidates"]


def test_a_non_finite_measurement_is_replayed_not_retried() -> None:
    from presso.replay import to_replay
    from presso.store import Evaluation

    def stored(n: int, step: int, fitness: float | None, error: bool) -> Evaluation:
        return Evaluation(n, "search", step, 0, 128, fitness, error)

    # step 0: failed, then evaluated again (the later record wins); step 1: NaN, no error
    replay, retried = to_replay(
        [stored(1, 0, None, True), stored(2, 0, 0.5, False), stored(3, 1, None, False)]
    )
    assert retried == 0 and set(replay["search"]) == {(0, 0), (1, 0)}
    assert replay["search"][(0, 0)].trial_id == 2
    replay, retried = to_replay([stored(4, 2, None, True)])
    assert retried == 1 and replay == {}


def test_a_run_with_failed_evaluations_says_so(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_experiment(tiny_experiment(search={"options": OPTIONS}, baselines=[]))
    evaluate, calls = Evaluator.evaluate, []

    def flaky(self: Evaluator, request):  # noqa: ANN001, ANN202
        calls.append(request)
        if len(calls) in (2, 5):  # e.g. a Ray worker that died
            return Result(fitness=None, error="ray worker failed: the actor died\nunexpectedly")
        return evaluate(self, request)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    assert main(["search", str(path), "--quiet"]) == 3
    out, err = capsys.readouterr()
    assert "candidate" in out  # the summary is printed, then qualified
    n = len(calls)
    assert err == (
        f"presso: 2 of {n} evaluations failed (first: ray worker failed: the actor died); the "
        "results above rest on the others only: fix the cause and search again under a new --name\n"
    )
    summary = ResultsStore(str(tmp_path / "runs.db")).open("tiny").user_attrs["summary"]
    assert (summary["failed"], summary["evaluated"]) == (2, n)
    assert main(["search", str(path), "--quiet", "--resume"]) == 3  # finished: it still says so
