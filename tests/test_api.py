"""presso from Python: load an experiment from YAML or a dict, run it, read the summary and the
Pareto front as DataFrames, export a candidate — the objects and answers of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso import api
from presso.cli import main
from presso.errors import PressoError

from .conftest import tiny_experiment

pd = pytest.importorskip("pandas")


def test_a_dict_and_its_yaml_file_give_the_same_run(write_experiment, tmp_path: Path) -> None:  # noqa: ANN001
    exp = {**tiny_experiment(), "store": str(tmp_path / "runs.db")}
    from_dict = api.load_experiment(exp)
    from_file = api.load_experiment(write_experiment(exp))
    assert from_dict == from_file
    run = api.run(from_dict, progress=False)
    again = api.run(api.load_experiment(exp, name="again"), progress=False)
    assert run.summary.winner == again.summary.winner
    assert run.summary.candidates["search"].levels == again.summary.candidates["search"].levels
    assert run.summary.candidates["search"].heldout == again.summary.candidates["search"].heldout

    table = run.candidates()
    summary = run.summary
    assert list(table.index) == ["search", "baseline:uniform"]
    assert table.loc["search", "strategy"] == "evopress"
    assert table.loc["search", "heldout_ppl"] == summary.candidates["search"].heldout["ppl"]
    assert table.loc["search", "mean_bits"] <= 3.0
    assert list(table.loc["search", summary.units]) == summary.candidates["search"].levels
    # Filter and sort as with any DataFrame: the winner is the lowest held-out KL.
    assert table["heldout_kl"].idxmin() == summary.winner

    evaluations = run.evaluations()
    assert len(evaluations) == summary.evaluations
    assert {"phase", "tokens", "fitness", "kl", "mean_bits", summary.units[0]} <= set(evaluations)
    assert evaluations["fitness"].notna().all()

    plan = tmp_path / "plan.json"
    assert run.export("search", "plan", plan) == plan
    assert json.loads(plan.read_text()) == run.plan("search").to_dict()
    assert run.export(format="evopress").startswith("model.layers.0.self_attn.q_proj: ")


def test_pareto_front_as_a_table(write_experiment, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    exp = tiny_experiment(
        name="front",
        search={"strategy": "nsga2", "options": {"population": 4, "generations": 3}},
        baselines=[],
    )
    path = write_experiment(exp)
    run = api.run(path, progress=False)
    front = run.pareto()
    summary = run.summary
    assert len(front) == len(summary.front) > 0
    assert list(front.index) == [f"pareto:{i}" for i in range(len(front))]
    assert {"kl", "mean_bits", *summary.units} <= set(front)
    # The same front `presso show --pareto` prints, and the same plans `presso export` writes.
    store = str(tmp_path / "runs.db")
    capsys.readouterr()
    assert main(["show", "front", "--store", store, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["front"]
    assert front["kl"].tolist() == pytest.approx([m["kl"] for m in shown["metrics"]])
    last = f"pareto:{len(front) - 1}"
    assert run.plan(last).about["candidate"] == last
    assert api.open_run("front", store=store).summary.front == summary.front
    assert "front" in api.runs(store)["name"].tolist()


def test_mistakes_are_one_line() -> None:
    with pytest.raises(PressoError, match=r"<dict>: .*space.*"):
        api.load_experiment(tiny_experiment(space={"mean_bitz": 3.0}))
    with pytest.raises(PressoError, match="no such experiment file"):
        api.load_experiment("nope.yaml")


def test_profile_timings_as_a_table(tmp_path: Path) -> None:
    from presso.profilers import Measurement, ProfileDatabase

    db = ProfileDatabase(tmp_path / "p.sqlite")
    db.put("fp1", Measurement("torch", "linear-64x128-w4-s0-g32", "b1-s8-prefill", 0.5, 0.01, 5))
    db.put("fp1", Measurement("torch", "model-tiny-dense", "b1-s8-prefill", 3.0, 0.1, 5))
    db.put("fp2", Measurement("onnxruntime", "linear-64x128-w8-s0-ch", "b1-s8-prefill", None))
    db.close()
    table = api.profile_timings(tmp_path / "p.sqlite")
    assert len(table) == 3
    linear = table[table["op"] == "linear-64x128-w4-s0-g32"].iloc[0]
    assert (linear["bits"], linear["in_features"], linear["group_size"]) == (4, 128, 32)
    assert linear["median_ms"] == 0.5 and linear["fingerprint"] == "fp1"
    torch_only = api.profile_timings(tmp_path / "p.sqlite", backend="torch")
    assert set(torch_only["backend"]) == {"torch"} and len(torch_only) == 2
