"""Optuna's view of a run agrees with presso's: the study's best trial is the winner `presso
show` names, its best trials are the Pareto front `presso show --pareto` prints, screening
evaluations carry their fidelity, and optuna-dashboard's own API shows the whole summary."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from presso.cli import main
from presso.store import ResultsStore, storage_url

from .conftest import tiny_experiment


def _show(capsys: pytest.CaptureFixture, run: str, store: Path, *more: str) -> str:
    capsys.readouterr()
    assert main(["show", run, "--store", str(store), *more]) == 0
    return capsys.readouterr().out


def test_best_trial_is_the_winner_presso_shows(
    write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exp = tiny_experiment(baselines=["uniform", "random"])
    assert main(["search", str(write_experiment(exp))]) == 0
    # Progress bars know each phase's plan: 3 generations of (parent + 4 offspring, 2 survivors),
    # and up to 4 for the dp start's confirmation (3 of the search's candidates and the start).
    bars = capsys.readouterr().err
    assert "/25 [" in bars, "planned: 21 + 4"
    assert "search: 100%" in bars and any(f"{n}/{n}" in bars for n in range(21, 26))
    assert "baseline:random: 100%" in bars
    store = tmp_path / "runs.db"
    shown = _show(capsys, "tiny", store)
    winner = re.search(r"winner \(lowest held-out KL\): (\S+)", shown).group(1)
    dense = re.search(r"^dense\s+-\s.*?([\d.]+)\s+0\.00000$", shown, re.M)
    assert dense and float(dense.group(1)) > 1  # the dense model's held-out perplexity

    study = optuna.load_study(study_name="tiny", storage=storage_url(str(store)))
    summary = study.user_attrs["summary"]
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["heldout_kl"]
    best = study.best_trial
    assert best.user_attrs["candidate"] == winner == summary["winner"]
    chosen = summary["candidates"][winner]
    assert list(best.params.values()) == chosen["levels"]
    assert best.value == chosen["heldout"]["kl"]
    assert summary["dense"]["ppl"] == pytest.approx(float(dense.group(1)), abs=1e-3)

    # One answer per candidate; every evaluation a PRUNED trial whose fitness is the
    # intermediate value at its fidelity (calibration tokens scored).
    trials = study.get_trials(deepcopy=False)
    answers = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["candidate"] for t in answers) == sorted(summary["candidates"])
    evaluations = [t for t in trials if "phase" in t.user_attrs]
    assert ResultsStore(str(store)).runs()[0]["evaluations"] == len(evaluations)  # `presso runs`
    assert {t.state for t in evaluations} == {TrialState.PRUNED}
    steps = {t.user_attrs["phase"]: set() for t in evaluations}
    for t in evaluations:
        ((step, value),) = t.intermediate_values.items()
        assert value == t.user_attrs["fitness"] and step == t.user_attrs["metrics"]["tokens"]
        steps[t.user_attrs["phase"]].add(step)
    # The search's stages, and its confirmation on the whole pool (8 windows of 64 tokens).
    assert steps["search"] <= {128, 256, 8 * 64} and {128, 256} <= steps["search"]
    assert steps["baseline:uniform"] == {8 * 64}


def test_best_trials_are_the_pareto_front(
    write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exp = tiny_experiment(
        name="mo",
        space={"mean_bits": 4.0},
        search={"strategy": "nsga2", "options": {"population": 4, "generations": 3}},
        baselines=[],
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    store = tmp_path / "runs.db"
    shown = _show(capsys, "mo", store, "--pareto")
    rows = [line.split() for line in shown.splitlines() if line.startswith("pareto:")]
    front = {row[0]: [float(v) for v in row[1:3]] for row in rows}

    study = optuna.load_study(study_name="mo", storage=storage_url(str(store)))
    assert study.metric_names == ["kl", "mean_bits"]
    assert len(study.directions) == 2
    best = {t.user_attrs["candidate"]: t.values for t in study.best_trials}
    assert best.keys() == front.keys() and len(front) == len(rows) > 0
    for name, values in best.items():
        assert values == pytest.approx(front[name], abs=1e-5)
    levels = study.user_attrs["summary"]["pareto"]["levels"]
    for t in study.best_trials:
        assert list(t.params.values()) == levels[int(t.user_attrs["candidate"][7:])]


def _get(app, path: str) -> dict:
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


def test_optuna_dashboard_shows_the_summary(write_experiment, tmp_path: Path) -> None:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    assert main(["search", str(write_experiment(tiny_experiment())), "--quiet"]) == 0
    app = optuna_dashboard.wsgi(storage_url(str(tmp_path / "runs.db")))
    (listed,) = _get(app, "/api/studies")["study_summaries"]
    detail = _get(app, f"/api/studies/{listed['study_id']}")
    study = optuna.load_study(study_name="tiny", storage=storage_url(str(tmp_path / "runs.db")))
    summary = study.user_attrs["summary"]

    assert detail["objective_names"] == ["heldout_kl"]
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    note = detail["note"]["body"]
    assert len(note) > 1024  # longer than a user attribute the dashboard shows uncut
    assert f"winner (lowest held-out KL): {summary['winner']}" in note
    assert f"{summary['dense']['ppl']:.3f}" in note
    for phase, c in summary["candidates"].items():
        assert re.search(rf"^{re.escape(phase)} .* {c['heldout']['ppl']:.3f} ", note, re.M)
