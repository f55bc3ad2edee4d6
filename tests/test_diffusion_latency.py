"""Measured sampling latency of diffusion candidates: the parts timed on the torch backend,
the cost model that adds them up, latency budgets on steps / skips spaces, the winners timed
end to end, and NSGA-II's (FID, latency) front."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

from presso.cli import main  # noqa: E402
from presso.plan import Plan  # noqa: E402

TINY = "tiny-ddpm"
SETTINGS = {"steps": {"candidates": 20}}
GRID = [999 - 50 * j for j in range(20)]


def schedule_plan(kept: list[int], skips: tuple[str, ...] = (), solver: str = "ddim") -> Plan:
    """The plan sampling ``kept`` (time steps of GRID) with ``skips`` (``skip.I.BLOCK``)."""
    dropped = tuple(f"timestep.{t}" for t in GRID if t not in kept) + skips
    return Plan({}, dropped + (("solver.ddim",) if solver != "ddim" else ()), SETTINGS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from presso.diffusion._model import load_diffusion

    return load_diffusion(TINY, cache_root=tmp_path_factory.mktemp("ddpm-cache"))


@pytest.fixture(scope="module")
def timed(tiny, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model's sampling parts profiled at batch 4: (profiler, db, workload, model)."""
    from presso.cost_models._sampling import SamplingLatency, profile_sampling
    from presso.profilers import ProfileDatabase, Workload, make_profiler

    profiler = make_profiler("torch", threads=1, repeats=9)
    db = ProfileDatabase(str(tmp_path_factory.mktemp("profiles") / "profiles.db"))
    workload = Workload(batch=4, seq_len=tiny.size**2)
    measured, reused = profile_sampling(tiny, profiler, db, workload)
    assert measured > 0 and reused == 0
    assert profile_sampling(tiny, profiler, db, workload) == (0, measured)  # kept, not redone
    model = SamplingLatency.from_db(tiny, profiler, db, workload, candidates=20)
    return profiler, db, workload, model


def test_the_parts_are_every_block_and_the_step(tiny, timed) -> None:
    _, _, _, model = timed
    assert model.blocks == tuple(tiny.unet_blocks())
    assert all(model.run[b] > 0 and model.copy[b] >= 0 for b in model.blocks)
    assert model.unet > 0 and set(model.step) == set(model.setup) == {"ddim", "dpm-solver"}
    assert model.alpha > 0 and model.dense_ms > 0


def test_predicted_latency_follows_the_candidate(timed) -> None:
    _, _, _, model = timed
    three, six = schedule_plan(GRID[::7]), schedule_plan(GRID[::4][:6])
    assert model.predict(six) > 1.5 * model.predict(three)
    every = tuple(f"skip.{i}.{b}" for i in (1, 2) for b in model.blocks)
    assert model.predict(schedule_plan(GRID[::7], every)) < 0.8 * model.predict(three)
    # Skips past the schedule's end never run, but turn output copies on.
    late = schedule_plan(GRID[::7], ("skip.5.mid_block",))
    assert model.predict(three) < model.predict(late) < model.predict(six)
    assert model.dense_ms == pytest.approx(model.predict(schedule_plan(GRID)))
    assert model.predict(schedule_plan(GRID[::7], solver="dpm-solver")) != model.predict(three)


def test_predictions_match_end_to_end_timings(tiny, timed) -> None:
    """Held-out candidates built and timed for real (round-robin) beside their predictions:
    the validation's error is that of these rows. How close they are depends on the machine's
    load, so it is the benchmark's figure (diffusion_steps.py), not a test's."""
    from presso.cost_models._campaign import validate

    profiler, db, workload, model = timed
    plans = [
        schedule_plan(GRID[::7]),
        schedule_plan(GRID[::2]),
        schedule_plan(
            GRID[::3], ("skip.1.mid_block", "skip.2.up_blocks.0", "skip.4.down_blocks.1")
        ),
        schedule_plan(GRID[:4], solver="dpm-solver"),
    ]
    check = validate(tiny, profiler, db, {"predicted_ms": model}, workload, plans)
    summary = check.summary()
    assert summary["n"] == 4
    measured = [r["measured_ms"] for r in check.rows]
    predicted = [r["predicted_ms"] for r in check.rows]
    assert all(m > 0 for m in measured) and predicted[1] > predicted[0]  # 10 steps against 3
    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    assert summary["mape"] == pytest.approx(sum(errors) / 4)


def _latency_experiment(**space: object) -> dict:
    return {
        "name": "fast",
        "model": TINY,
        "data": {"calibration": 16, "evaluation": 16},
        "schedule": {"candidates": 20},
        "space": {"kind": "steps", **space},
        "search": {
            "strategy": "autodiffusion",
            "options": {"generations": 2, "offspring": 2, "stages": [[8, 2], [16, 1]]},
        },
        "baselines": ["ddim"],
        "runner": {"kind": "local", "threads": 1},
        "hardware": {"backend": "torch", "workload": {"batch": 4}, "repeats": 6},
    }


@pytest.mark.parametrize("space", [{"steps": 4, "speedup": 3}, {"speedup": 5}])
def test_a_speedup_budget_on_steps_is_timed_end_to_end(
    space, write_experiment, tmp_path: Path, capsys
) -> None:
    """With a steps budget, or a latency budget alone (AutoDiffusion then starts from the
    uniform schedule of the most steps it admits)."""
    from presso.store import ResultsStore

    path = write_experiment(_latency_experiment(**space))
    assert main(["search", str(path), "--quiet"]) == 0
    summary = ResultsStore(str(tmp_path / "runs.db")).open("fast").user_attrs["summary"]
    check = summary["latency_check"]
    assert check["backend"] == "torch" and check["workload"] == "b4-s64-prefill"
    assert check["dense_ms"] > 0 and check["predicted_dense_ms"] > 0
    for phase in ("search", "baseline:ddim"):
        c = summary["candidates"][phase]
        assert c["measured_ms"] > 0 and c["latency_ms"] <= check["limit_ms"]
        assert c["measured_speedup"] > 1.5  # about 5x or more: loosely, under load
    if "steps" not in space:  # the most uniform steps under the budget: one more breaks it
        steps = summary["candidates"]["baseline:ddim"]["levels"][:-1].count(1)
        assert 1 <= steps < 20
        assert check["limit_ms"] < check["predicted_dense_ms"] * (steps + 1) / 20 * 1.2
    assert main(["show", "fast", "--store", str(tmp_path / "runs.db")]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "predicted" in out


def test_a_latency_budget_needs_the_torch_backend(write_experiment, capsys) -> None:
    exp = _latency_experiment(steps=4, speedup=3)
    exp["hardware"]["backend"] = "onnxruntime"
    assert main(["search", str(write_experiment(exp)), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "hardware.backend" in err and "torch" in err and "Traceback" not in err


def test_nsga2_gives_a_fid_latency_front_over_steps_and_skips(
    write_experiment, tmp_path: Path, capsys
) -> None:
    from presso.store import ResultsStore

    exp = _latency_experiment(kind="joint", steps=4, blocks=14)
    exp.update(
        name="front",
        objectives=["fid", "latency_ms"],
        search={"strategy": "nsga2", "options": {"population": 6, "generations": 3}},
    )
    path = write_experiment(exp)
    assert main(["search", str(path), "--quiet"]) == 0
    summary = ResultsStore(str(tmp_path / "runs.db")).open("front").user_attrs["summary"]
    front = summary["pareto"]
    assert front["objectives"] == ["fid", "latency_ms"] and len(front["points"]) >= 2
    points = sorted(front["points"], key=lambda p: p[1])
    # A front: the slower points have the better FID; configurations that score alike (the
    # schedules of no step, whatever they skip) are one point.
    assert all(a[0] > b[0] and a[1] < b[1] for a, b in zip(points, points[1:]))
    assert points[0][0] > points[-1][0] and points[0][1] < points[-1][1]
    assert {"fid", "kid"} <= set(front["heldout"][0])
    assert main(["show", "front", "--store", str(tmp_path / "runs.db"), "--pareto"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front over fid, latency_ms" in out and "held-out FID" in out


def test_presso_profile_times_a_diffusion_model_and_validates(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "profiles.db")
    args = ["profile", TINY, "--backend", "torch", "--workload", "b2-s1-prefill", "--db", db]
    assert main([*args, "--repeats", "6", "--validate", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sampling at b2-s64-prefill" in out and "mid_block" in out
    assert "validation (3 random schedules measured end to end): MAPE" in out
    assert main([*args, "--repeats", "6", "--quiet"]) == 0  # kept: nothing timed again
    assert "0 timed" in capsys.readouterr().out
    assert main([*args[:3], "onnxruntime", *args[4:], "--quiet"]) != 0
    assert "timed on torch only" in capsys.readouterr().err
