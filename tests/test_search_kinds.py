"""Sparsity, depth, joint and multi-objective searches end to end from the CLI (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso.cli import main
from presso.store import ResultsStore

from .conftest import tiny_experiment

EVO = {"generations": 2, "offspring": 4, "stages": [[128, 2], [256, 1]]}


def _summary(tmp_path: Path, run: str) -> dict:
    store = ResultsStore(str(tmp_path / "runs.db"))
    return store.open(run).user_attrs["summary"]


def test_sparsity_search_with_owl_baseline(write_experiment, tmp_path: Path, capsys) -> None:
    exp = tiny_experiment(
        name="sparse",
        sparsity={"operator": "wanda", "levels": [0, 25, 50, 75], "calibration": 4},
        space={"kind": "sparsity", "mean_bits": None, "mean_sparsity": 50},
        search={"options": EVO},
        baselines=["uniform", "owl"],
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    summary = _summary(tmp_path, "sparse")
    for phase in ("search", "baseline:uniform", "baseline:owl"):
        assert summary["candidates"][phase]["mean_sparsity"] >= 50 - 1e-9
    assert "mean_sparsity" in capsys.readouterr().out
    out = tmp_path / "plan.json"
    assert main(["export", "sparse", "--store", str(tmp_path / "runs.db"), "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["budget"] == {"mean_sparsity": 50}
    assert all(u.get("sparsity_method", "wanda") == "wanda" for u in plan["units"].values())


def test_depth_search_with_shortgpt_baseline(write_experiment, tmp_path: Path) -> None:
    exp = tiny_experiment(
        name="depth",
        space={"kind": "depth", "mean_bits": None, "dropped": 1},
        search={"options": EVO},
        baselines=["shortgpt"],
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    summary = _summary(tmp_path, "depth")
    assert summary["candidates"]["search"]["dropped"] == 1
    assert summary["candidates"]["baseline:shortgpt"]["levels"].count(0) == 1
    out = tmp_path / "plan.json"
    assert main(["export", "depth", "--store", str(tmp_path / "runs.db"), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["dropped"]) == 1


def test_joint_space(write_experiment, tmp_path: Path, capsys) -> None:
    exp = tiny_experiment(
        name="joint",
        sparsity={"operator": "magnitude", "levels": [0, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 4.0, "mean_sparsity": 25, "dropped": 1},
        search={"options": EVO},
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    best = _summary(tmp_path, "joint")["candidates"]["search"]
    assert best["mean_bits"] <= 4.0 and best["mean_sparsity"] >= 25 and best["dropped"] >= 1
    assert main(["show", "joint", "--store", str(tmp_path / "runs.db")]) == 0
    shown = capsys.readouterr().out
    assert "per-layer bits" in shown and "per-layer sparsity" in shown and "kept (1)" in shown


@pytest.mark.parametrize("strategy", ["nsga2", "tpe"])
def test_multiobjective_pareto(write_experiment, tmp_path: Path, capsys, strategy: str) -> None:
    options = (
        {"population": 4, "generations": 3} if strategy == "nsga2" else {"trials": 8, "batch": 4}
    )
    exp = tiny_experiment(
        name=strategy,
        space={"mean_bits": 4.0},
        search={"strategy": strategy, "options": options},
        baselines=[],
    )
    if strategy == "tpe":  # single-objective by default: objectives named in the file make it MO
        exp["objectives"] = ["kl", "mean_bits"]
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    pareto = _summary(tmp_path, strategy)["pareto"]
    assert pareto["objectives"] == ["kl", "mean_bits"]
    points = pareto["points"]
    assert points and pareto["hypervolume"] > 0
    for a in points:  # no point of the front dominates another
        assert not any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in points)
    assert pareto["heldout"] and "ppl" in pareto["heldout"][0]
    store = str(tmp_path / "runs.db")
    assert main(["show", strategy, "--store", store, "--pareto"]) == 0
    shown = capsys.readouterr().out
    assert "hypervolume" in shown and f"pareto:{len(points) - 1}" in shown

    # Any point of the front leaves presso: its plan holds exactly that point's levels.
    for i, (_kl, mean_bits) in enumerate(points):
        out = tmp_path / f"front-{i}.json"
        args = ["export", strategy, "--store", store, "--candidate", f"pareto:{i}"]
        assert main([*args, "--out", str(out)]) == 0
        plan = json.loads(out.read_text())
        assert plan["candidate"] == f"pareto:{i}" and plan["mean_bits"] == pytest.approx(mean_bits)
        assert [u.get("bits", 16) for u in plan["units"].values()] == pareto["levels"][i]
        assert plan["metrics"] == {
            k: v
            for k, v in next((h for h in pareto["heldout"] if h["index"] == i), {}).items()
            if k != "index"
        }
    capsys.readouterr()
    bad = ["export", strategy, "--store", store, "--candidate", f"pareto:{len(points)}"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert (f"pareto:0 to pareto:{len(points) - 1}" if len(points) > 1 else "one point") in err


def test_a_one_point_front_is_named_in_the_singular() -> None:
    from presso.errors import PressoError
    from presso.summary import RunSummary

    attrs = {"summary": {"candidates": {}, "pareto": {"levels": [[4, 4]], "points": [[0.1, 4]]}}}
    with pytest.raises(
        PressoError,
        match=r"front has one point, pareto:0 \(`presso show RUN --pareto` lists them\)$",
    ):
        RunSummary.from_attrs("r", attrs).candidate("pareto:1")


def test_size_budget_binds_beside_mean_bits(write_experiment, tmp_path: Path) -> None:
    exp = tiny_experiment(
        name="size",
        space={"mean_bits": 4.0, "max_size_mb": 0.07},  # 4-bit everywhere would be ~0.092 MB
        search={"options": EVO},
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    for cand in _summary(tmp_path, "size")["candidates"].values():
        assert cand["size_mb"] <= 0.07 and cand["mean_bits"] <= 4.0
