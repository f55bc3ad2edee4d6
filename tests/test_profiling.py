"""Profiling a model into the database, pricing candidates from it, validating the prices,
and latency inside a search — with real torch measurements on the tiny Llama."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from presso.cli import main
from presso.cost_models._campaign import (
    latency_model,
    machine_id,
    model_key,
    profile_model,
    random_assignment,
    random_structured,
    rank_correlation,
    structure_probes,
    unit_ops,
    validate,
)
from presso.errors import PressoError
from presso.models import load_model
from presso.profilers import ProfileDatabase, Workload, levels_plan, make_profiler
from tests.conftest import tiny_experiment

W = Workload(batch=1, seq_len=8, phase="prefill")


@pytest.fixture(scope="module")
def handle():  # noqa: ANN201
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def profiled(handle, tmp_path_factory):  # noqa: ANN001, ANN201
    """The tiny Llama profiled once on torch: (profiler, database, first report)."""
    profiler = make_profiler("torch", threads=1, repeats=3, warmup=1)
    db = ProfileDatabase(tmp_path_factory.mktemp("profiles") / "p.sqlite")
    ops = unit_ops(handle, [2, 4], [0], 32)
    report = profile_model(handle, profiler, db, [W], ops)
    return profiler, db, report


def test_profile_fills_the_database_and_resumes(handle, profiled) -> None:  # noqa: ANN001
    profiler, db, report = profiled
    shapes = {u.shape for u in handle.units}
    # Each shape at 16, 4 and 2 bits, plus dense / drop-block / drop-attn / drop-mlp models
    # and the all-2-bit model that calibrates layer timings to the model.
    assert report.measured == 3 * len(shapes) + 5 and not report.failed
    again = profile_model(handle, profiler, db, [W], unit_ops(handle, [2, 4], [0], 32))
    assert again.measured == 0 and again.reused == report.measured
    fp = machine_id(profiler)
    assert db.machine(fp)["cores"] >= 1 and db.machine(fp)["versions"]["threads"] == "1"
    stored = db.measurements(fp, "torch", W.key)
    assert all(m.ok and m.median_ms > 0 and m.repeats >= 3 for m in stored)
    assert {m.op for m in stored} >= {f"{model_key(handle)}/dense"}


def test_new_layer_timings_retime_the_structure_probes(handle, tmp_path) -> None:  # noqa: ANN001
    """Levels added later (3 bits) are timed with the model's structure probes again, so the
    dense time a speedup target divides is from the same session as the layers it sums."""
    profiler = make_profiler("torch", threads=1, repeats=3, warmup=1)
    db = ProfileDatabase(tmp_path / "p.sqlite")
    profile_model(handle, profiler, db, [W], unit_ops(handle, [4], [0], 32))
    dense = f"{model_key(handle)}/dense"

    def created() -> float:
        with sqlite3.connect(tmp_path / "p.sqlite") as con:
            sql = "SELECT created FROM measurements WHERE op = ?"
            return con.execute(sql, (dense,)).fetchone()[0]

    first = created()
    same = profile_model(handle, profiler, db, [W], unit_ops(handle, [4], [0], 32))
    assert same.measured == 0 and created() == first
    more = profile_model(handle, profiler, db, [W], unit_ops(handle, [3, 4], [0], 32))
    shapes = {u.shape for u in handle.units}
    # Every probe again: dense, a block removed, attention and MLP removed, and the model at
    # the new lowest width (3 bits), which now calibrates the layer timings.
    assert more.measured == len(shapes) + 5 and not more.failed
    assert created() > first


def test_failed_measurements_are_stored_not_raised(handle, profiled) -> None:  # noqa: ANN001
    profiler, db, _ = profiled
    ops = unit_ops(handle, [4], [0], 48)  # 48 divides no width of the tiny model
    report = profile_model(handle, profiler, db, [W], ops)
    assert report.failed and all("group" in m.error for m in report.failed)
    assert db.get(machine_id(profiler), "torch", report.failed[0].op, W.key).error


def test_latency_model_reproduces_its_measurements(handle, profiled) -> None:  # noqa: ANN001
    profiler, db, _ = profiled
    model = latency_model(handle, profiler, db, W, group_size=32)
    fp, key = machine_id(profiler), model_key(handle)
    probes = structure_probes(handle, True)
    assert sorted(probes) == ["dense", "drop-attn-1", "drop-blocks-1", "drop-mlp-1"]
    for name, assignment in probes.items():  # two points per line: each probe is reproduced
        measured = db.get(fp, "torch", f"{key}/{name}", W.key)
        assert measured.repeats >= 3 * 1 and measured.spread_ms is not None
        assert model.predict(assignment) == pytest.approx(measured.median_ms)
    dense = db.get(fp, "torch", f"{key}/dense", W.key).median_ms
    four = {u.name: (4, 0) for u in handle.units}
    per_unit = model.unit_ms(four)
    dense_units = model.unit_ms({u.name: (16, 0) for u in handle.units})
    expected = dense + sum(per_unit.values()) - sum(dense_units.values())
    assert model.predict(levels_plan(units=four)) == pytest.approx(expected)
    uniform = db.get(fp, "torch", f"{key}/uniform-w2-g32", W.key)
    assert uniform is not None and uniform.ok
    if model.scale != 1.0:  # fitted (not refused as implausible): the probe is reproduced too
        two = levels_plan(units={u.name: (2, 0) for u in handle.units}, group_size=32)
        assert model.predict(two) == pytest.approx(uniform.median_ms)
    with pytest.raises(PressoError, match="presso profile"):
        latency_model(handle, profiler, db, Workload(2, 8), group_size=32)


def test_validation_measures_candidates_for_real_once(handle, profiled) -> None:  # noqa: ANN001
    profiler, db, _ = profiled
    model = latency_model(handle, profiler, db, W, group_size=32)
    rng = np.random.default_rng(0)
    cands = [
        random_assignment(handle, rng, bits=[2, 4, 16], max_dropped=1, group_size=32)
        for _ in range(2)
    ]
    result = validate(handle, profiler, db, {"lookup_ms": model}, W, cands)
    assert [r["measured_ms"] > 0 for r in result.rows] == [True, True]
    assert all(math.isfinite(r["lookup_ms"]) for r in result.rows)
    summary = result.summary("lookup_ms")
    assert summary["n"] == 2 and summary["mape"] >= 0 and 0 <= summary["within_10"] <= 1
    assert math.isnan(summary["spearman"])  # two candidates rank nothing
    # Timed in interleaved rounds: each measurement holds every round's repeats.
    assert all(
        m.repeats >= 3 * 3
        for m in db.measurements(machine_id(profiler), "torch")
        if "candidate-" in m.op
    )
    before = len(db.measurements(machine_id(profiler), "torch"))
    validate(handle, profiler, db, {"lookup_ms": model}, W, cands)  # reused, not re-measured
    assert len(db.measurements(machine_id(profiler), "torch")) == before


def test_structured_candidates_are_priced_at_their_smaller_shapes(handle, tmp_path) -> None:  # noqa: ANN001
    from presso.plan import Plan
    from presso.structures import model_structures

    profiler = make_profiler("torch", threads=1, repeats=3, warmup=1)
    db = ProfileDatabase(tmp_path / "p.sqlite")
    ops = unit_ops(handle, [], [0], 32, structured=[50, 25])
    # tiny-llama: q/o (64, 64), k/v (32, 64), gate/up (128, 64), down (64, 128); at 50 % one of
    # two KV groups and 64 of 128 channels: q (32, 64), k/v (16, 64), o (64, 32), up (64, 64),
    # down (64, 64); at 25 % one group and 32 channels: up (32, 64), down (64, 32).
    assert {(op.out_features, op.in_features) for op in ops} == {
        (64, 64), (32, 64), (128, 64), (64, 128), (16, 64), (64, 32)}  # fmt: skip
    # With bits in the space too, every smaller shape is also timed at each bit width.
    both = unit_ops(handle, [4], [0], 32, structured=[50, 25])
    shapes = {(op.out_features, op.in_features) for op in ops}
    assert {(op.out_features, op.in_features) for op in both if op.bits == 4} == shapes
    assert all(op.group_size == 32 for op in both if op.bits == 4)
    assert profile_model(handle, profiler, db, [W], ops).failed == []
    model = latency_model(handle, profiler, db, W, group_size=32)
    structures = model_structures(handle)
    half = Plan({s.consumer: {"structured": 50} for s in structures})
    dense = model.predict(levels_plan())
    smaller = {
        "q_proj": (32, 64), "k_proj": (16, 64), "v_proj": (16, 64), "o_proj": (64, 32),
        "gate_proj": (64, 64), "up_proj": (64, 64), "down_proj": (64, 64)}  # fmt: skip
    saved = sum(
        model._ms(u, 16, 0) - model._ms(u, 16, 0, smaller[u.name.rsplit(".", 1)[1]])  # noqa: SLF001
        for u in model.units
    )
    positive = [o for o in (model.attn_overhead, model.mlp_overhead) if o > 0]
    overheads = len(handle.blocks) * sum(positive) / 2
    assert model.predict(half) == pytest.approx(dense - saved - overheads)
    # With structured levels named, their uniform models are timed too, and calibrate the
    # layer timings as a uniform bit width does (where the savings are plausible): one probe
    # is reproduced exactly, overheads that shrink with the heads kept included.
    report = profile_model(handle, profiler, db, [W], ops, structured=[25])
    assert report.measured == 1 and not report.failed
    probe = db.get(
        machine_id(profiler), "torch", f"{model_key(handle)}/uniform-structured-25", W.key
    )
    assert probe is not None and probe.ok
    calibrated = latency_model(handle, profiler, db, W, group_size=32)
    assert calibrated.scale == 1.0 or calibrated.predict(
        Plan({s.consumer: {"structured": 25} for s in structures})
    ) == pytest.approx(probe.median_ms, rel=1e-4)
    # A space without structured levels is not fitted to the structured probes.
    mine = latency_model(handle, profiler, db, W, group_size=32, kinds=["structured"])
    assert mine.scale == calibrated.scale
    other = latency_model(handle, profiler, db, W, group_size=32, kinds=["bits", "depth"])
    assert other.scale == 1.0 and other.overhead_scaling == 1.0
    rng = np.random.default_rng(0)
    cands = [half, random_structured(handle, rng, [100, 50, 25])]
    result = validate(handle, profiler, db, {"lookup_ms": model}, W, cands)
    assert all(r["measured_ms"] > 0 and math.isfinite(r["lookup_ms"]) for r in result.rows)


def test_validation_candidates_span_the_range_of_bits(handle) -> None:  # noqa: ANN001
    # Each candidate draws its own level mix: mean bits spread far wider than one fixed uniform
    # mix gives (about 7.3 ± 1.2 over 28 units), so validation sees short and long latencies.
    rng = np.random.default_rng(0)
    cands = [
        random_assignment(handle, rng, bits=[2, 4, 16], max_dropped=1, group_size=32)
        for _ in range(20)
    ]
    means = [np.mean([a.level(u, "bits") for u in a.units]) for a in cands]
    assert max(means) - min(means) > 7
    assert all(set(a.units) == set(handle.unit_names) for a in cands)
    again = random_assignment(
        handle, np.random.default_rng(0), bits=[2, 4, 16], max_dropped=1, group_size=32
    )
    assert again == cands[0]  # seeded


def test_rank_correlation() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([1, 2], [1, 2]))


def test_profile_command(tmp_path, capsys) -> None:  # noqa: ANN001
    db = str(tmp_path / "p.sqlite")
    args = ["profile", "tiny-llama", "--backend", "torch", "--workload", "b1-s8-prefill"]
    args += ["--bits", "4", "--group-size", "32", "--repeats", "3", "--db", db, "--quiet"]
    assert main(args + ["--validate", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "MAPE" in out and "within ±10%" in out and "w4" in out
    assert "rank correlation" in out
    assert main(args) == 0
    assert "0 measured" in capsys.readouterr().out
    assert main(args[:8] + ["--db", db, "--quiet"]) == 0  # the group size that fits: 64
    assert "group size 64" in capsys.readouterr().out
    assert main(["profile", "tiny-llama", "--backend", "tpu", "--db", db]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err
    assert main(args[:8] + ["--group-size", "48", "--db", db]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_search_stores_predicted_latency_and_respects_a_budget(write_experiment) -> None:  # noqa: ANN001
    from presso.config import load_experiment
    from presso.experiment import Setup
    from presso.run import run_search

    hardware = {"backend": "torch", "workload": {"seq_len": 8}, "repeats": 3}
    exp = tiny_experiment(hardware=hardware, space={"mean_bits": 3.0, "max_latency_ms": 1e6})
    exp["search"]["options"] = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
    exp = load_experiment(write_experiment(exp))
    summary = run_search(exp, show_progress=False)
    setup = Setup(exp)
    setup.prepare()
    from presso.store import ResultsStore

    records = ResultsStore(exp.store).records(ResultsStore(exp.store).open(exp.name))
    assert records and all("latency_ms" in r.metrics and "size_mb" in r.metrics for r in records)
    space = setup.space
    for r in records[:3]:
        config = space.from_dict(dict(zip(space.names, r.levels)))
        assert r.metrics["latency_ms"] == pytest.approx(space.metrics(config)["latency_ms"])
    assert "latency_ms" in summary.candidates["search"].metrics


def test_latency_budget_needs_hardware_and_a_known_backend(write_experiment, capsys) -> None:  # noqa: ANN001
    path = write_experiment(tiny_experiment(space={"mean_bits": 3.0, "latency_ratio": 0.5}))
    assert main(["search", str(path)]) == 2
    assert "needs a hardware: section" in capsys.readouterr().err
    path = write_experiment(tiny_experiment(hardware={"backend": "fpga"}), "b.yaml")
    assert main(["search", str(path)]) == 2
    assert "unknown backend 'fpga'" in capsys.readouterr().err


def test_op_timings_cycle_weights_past_the_cache() -> None:
    from presso.profilers import LinearOp
    from presso.profilers._base import last_level_cache_bytes, weight_copies

    llc = last_level_cache_bytes()
    assert llc >= 2**20
    assert weight_copies(4 * llc) == 1 and weight_copies(llc / 4) == 8
    assert weight_copies(1) == 512  # capped
    m = make_profiler("torch", threads=1, repeats=3, warmup=1).measure(LinearOp(64, 64), W)
    assert m.ok and m.detail["copies"] == weight_copies(64 * 64 * 4)


@pytest.mark.parametrize("kind", ["depth", "structured"])
def test_a_speedup_target_is_solved_on_measured_latency_and_timed_end_to_end(
    write_experiment, capsys, kind: str
) -> None:  # noqa: ANN001
    """``space.speedup`` alone (no kind budget): the latency budget is the knapsack dp solves
    (SPDY), evopress starts there, and every chosen candidate is then built and timed end to
    end beside the dense model — what `presso show` reports against the target."""
    from presso.config import load_experiment
    from presso.experiment import Setup
    from presso.search._dp import the_budget
    from presso.store import ResultsStore
    from presso.summary import RunSummary

    hardware = {"backend": "torch", "workload": {"seq_len": 8}, "repeats": 3}
    exp = tiny_experiment(
        hardware=hardware,
        space={"kind": kind, "mean_bits": None, "speedup": 1.0},
        baselines=["dp"],
    )
    if kind == "structured":  # heads and FFN channels (ZipLM), timed as smaller Linears
        exp["structured"] = {"levels": [100, 50, 25], "calibration": 4}
    exp["search"]["options"] = {"generations": 2, "offspring": 2, "stages": [[128, 1]]}
    # The target halfway between dense and the fastest depth this machine measured.
    setup = Setup(load_experiment(write_experiment(exp)))
    setup.prepare()
    try:
        space = setup.space
    except PressoError as err:  # under load, removing blocks can time slower than dense
        if "can run at most" not in str(err):
            raise
        pytest.skip(f"timings too noisy here: {setup.latency.structure}")
    dense, fastest = (
        space.metrics(c)["latency_ms"]
        for c in (tuple(len(d.levels) - 1 for d in space.dims), space.lowest())
    )
    if not fastest < 0.95 * dense:
        pytest.skip(
            f"timings too noisy here to leave a target: dense {dense} ms, fastest {fastest} ms"
        )
    exp["space"]["speedup"] = round(2 * dense / (dense + fastest), 3)
    path = write_experiment(exp)
    assert main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "measured end to end on torch" in out and f"target {exp['space']['speedup']:g}x" in out
    setup = Setup(load_experiment(path))
    setup.prepare()
    space = setup.space
    (latency,) = space.constraints
    assert latency.metric == "latency_ms"
    assert latency.limit == pytest.approx(
        setup.latency.structure.dense_ms / exp["space"]["speedup"]
    )
    assert the_budget(space, "dp").limit > 0  # the latency is the knapsack
    store = ResultsStore(str(path.parent / "runs.db"))
    summary = RunSummary.from_attrs("tiny", store.open("tiny").user_attrs)
    check = summary.latency_check
    assert check["backend"] == "torch" and check["dense_ms"] > 0
    assert check["target_speedup"] == exp["space"]["speedup"]
    for name in ("search", "baseline:dp"):
        c = summary.candidates[name]
        assert c.metrics["latency_ms"] <= latency.limit + 1e-9
        assert c.metrics["measured_ms"] > 0
        assert c.metrics["measured_speedup"] == pytest.approx(
            check["dense_ms"] / c.metrics["measured_ms"]
        )
        assert min(c.levels) < (1 if kind == "depth" else 100)  # something was removed
    assert main(["show", "tiny", "--store", str(path.parent / "runs.db")]) == 0
    assert "measured end to end" in capsys.readouterr().out


def test_a_joint_structured_and_depth_front_over_latency_is_timed_end_to_end(
    write_experiment, capsys
) -> None:  # noqa: ANN001
    """NSGA-II over (KL, predicted latency) on heads/FFN widths and dropped blocks together:
    the front's held-out points are built on the backend and timed beside the dense model,
    and `presso show --pareto` prints the measured trade-off next to the held-out metric."""
    from presso.store import ResultsStore

    exp = tiny_experiment(
        hardware={"backend": "torch", "workload": {"seq_len": 8}, "repeats": 3},
        structured={"levels": [100, 50, 25], "calibration": 4},
        space={"kind": "joint", "mean_bits": None, "kept_params": 100, "dropped": 0},
        objectives=["kl", "latency_ms"],
        baselines=[],
    )
    exp["search"] = {
        "strategy": "nsga2",
        "seed": 0,
        "options": {"population": 6, "generations": 2, "tokens": 128, "start": "dp"},
    }
    path = write_experiment(exp)
    assert main(["search", str(path), "--quiet"]) == 0
    summary = ResultsStore(str(path.parent / "runs.db")).summary("tiny")
    front = summary.front
    assert front is not None and front.measured and front.dense_ms > 0
    assert set(front.measured) == set(front.heldout)  # every held-out point was timed
    kinds = set(summary.kinds)
    assert kinds == {"structured", "depth"}
    for i, m in front.measured.items():
        assert m["measured_speedup"] == pytest.approx(front.dense_ms / m["measured_ms"])
        assert "measured_ms" not in front.heldout[i] and "ppl" in front.heldout[i]
        assert summary.candidate(f"pareto:{i}").metrics["measured_ms"] == m["measured_ms"]
    capsys.readouterr()
    assert main(["show", "tiny", "--store", str(path.parent / "runs.db"), "--pareto"]) == 0
    out = capsys.readouterr().out
    assert "held-out perplexity" in out and "measured ms" in out
    assert "measured end to end on torch" in out


def test_an_unreachable_speedup_says_how_fast_the_space_can_run(write_experiment, capsys) -> None:  # noqa: ANN001
    """A target beyond what the cheapest configuration is predicted to reach is one line,
    before any search: the most this space can give, and what to change; no store is left."""
    exp = tiny_experiment(
        hardware={"backend": "torch", "workload": {"seq_len": 8}, "repeats": 3},
        space={"kind": "depth", "mean_bits": None, "speedup": 1000},
        baselines=["dp"],
    )
    path = write_experiment(exp)
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "this space can run at most" in err and "kind: joint" in err
    assert "Traceback" not in err
    assert not (path.parent / "runs.db").exists()
