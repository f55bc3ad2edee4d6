"""Cost models: the timing table, the learned model, candidate latency arithmetic, sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from presso.cost_models import (
    BoostedTrees,
    CandidateLatency,
    CostModel,
    LookupTable,
    Structure,
    UnitSlot,
    disk_bytes,
    memory_bytes,
    parse_op,
)
from presso.errors import PressoError
from presso.profilers import LinearOp, Measurement, Workload, levels_plan

W = Workload(batch=1, seq_len=16, phase="prefill")


def _m(op: LinearOp, ms: float | None, workload: Workload = W) -> Measurement:
    return Measurement("torch", op.key, workload.key, ms, 0.0, 5, None if ms else "failed")


def _grid() -> list[Measurement]:
    """A latency law a GEMM roughly follows: proportional to work, cheaper at fewer bits."""
    out = []
    for n, k in [(64, 64), (128, 64), (64, 128), (256, 64), (64, 256), (256, 256)]:
        for bits in (2, 4, 8, 16):
            for w in (W, Workload(batch=1, seq_len=64)):
                ms = 1e-4 * n * k * w.rows / 64 * (0.5 + bits / 32)
                out.append(_m(LinearOp(n, k, bits, 0, 32 if bits < 16 else None), ms, w))
    return out


def test_op_keys_round_trip() -> None:
    for op in [LinearOp(576, 1536, 4, 0, 64), LinearOp(192, 576, 16, 50, None)]:
        assert parse_op(op.key) == op
    with pytest.raises(PressoError):
        parse_op("model-x/dense")
    assert Workload.parse("b4-s256-decode") == Workload(4, 256, "decode")
    assert Workload(4, 256, "decode").rows == 4 and Workload(4, 256).rows == 1024
    with pytest.raises(PressoError):
        Workload.parse("batch1")


def test_lookup_is_exact_on_measured_and_nan_elsewhere() -> None:
    ms = _grid()
    table = LookupTable().fit(ms + [_m(LinearOp(32, 32), None)])  # failures are not learned
    op = parse_op(ms[5].op)
    assert table.predict([op], Workload.parse(ms[5].workload))[0] == ms[5].median_ms
    assert math.isnan(table.predict([LinearOp(32, 32)], W)[0])
    assert math.isnan(table.predict([LinearOp(999, 64, 4, 0, 32)], W)[0])


def test_learned_model_interpolates_and_round_trips(tmp_path) -> None:  # noqa: ANN001
    ms = _grid()
    held_out = [m for m in ms if m.op.startswith("linear-128x64-")]
    model = BoostedTrees().fit([m for m in ms if m not in held_out])
    truth = np.array([m.median_ms for m in held_out])
    pred = np.array(
        [model.predict([parse_op(m.op)], Workload.parse(m.workload))[0] for m in held_out]
    )
    # An unseen shape between measured ones: the right order of magnitude, not exact.
    assert np.all(pred / truth < 3) and np.all(pred / truth > 1 / 3)
    model.save(tmp_path / "m.json")
    again = CostModel.load(tmp_path / "m.json")
    ops = [parse_op(m.op) for m in held_out]
    assert np.array_equal(again.predict(ops, W), model.predict(ops, W))
    with pytest.raises(PressoError):
        BoostedTrees().fit(ms[:2])


def _latency(sublayers: bool = True) -> CandidateLatency:
    units = [UnitSlot(f"b.{i}.self_attn.q", (64, 64), i, "self_attn") for i in range(3)] + [
        UnitSlot(f"b.{i}.mlp.up", (256, 64), i, "mlp") for i in range(3)
    ]
    table = LookupTable().fit(_grid())
    dense_units = sum(table.predict([LinearOp(*u.shape)], W)[0] for u in units if u.block == 1)
    # Measured: dense 10 ms; one block costs 2 ms; its attention 0.8 ms, its MLP 1 ms.
    s = Structure(10.0, 2.0, 0.8 if sublayers else None, 1.0 if sublayers else None)
    model = CandidateLatency(table, units, ["b.0", "b.1", "b.2"], s, W, group_size=32)
    assert model.block_rest == pytest.approx(
        2.0 - dense_units - (model.attn_overhead + model.mlp_overhead)
    )
    return model


def test_candidate_latency_adds_up() -> None:
    model = _latency()
    assert model.predict(levels_plan()) == pytest.approx(10.0)  # dense is what was measured
    assert model.predict(levels_plan(dropped=("b.1",))) == pytest.approx(8.0)
    assert model.predict(levels_plan(dropped=("b.2.self_attn",))) == pytest.approx(9.2)
    assert model.predict(levels_plan(dropped=("b.0.mlp",))) == pytest.approx(9.0)
    four = model.predict(levels_plan(units={"b.0.mlp.up": (4, 0)}))
    saved = (
        model.unit_ms({"b.0.mlp.up": (16, 0)})["b.0.mlp.up"]
        - model.unit_ms({"b.0.mlp.up": (4, 0)})["b.0.mlp.up"]
    )
    assert four == pytest.approx(10.0 - saved)
    # A dropped block's units cost nothing, whatever their level.
    assert model.predict(levels_plan(units={"b.1.mlp.up": (2, 0)}, dropped=("b.1",))) == (
        pytest.approx(8.0)
    )


def test_in_model_calibration_reproduces_the_uniform_model() -> None:
    base = _latency()
    four = {u.name: (4, 0) for u in base.units}
    uncalibrated = base.predict(levels_plan(units=four))
    saved = 10.0 - uncalibrated  # what the isolated timings say 4 bits save end to end
    # Inside the model, 4 bits saved 1.5x what the layer timings alone predict.
    measured = 10.0 - 1.5 * saved
    units, table = base.units, base.ops
    s = base.structure
    model = CandidateLatency(
        table, units, base.blocks, s, W, group_size=32, calibration=(4, measured)
    )
    assert model.scale == pytest.approx(1.5)
    assert model.predict(levels_plan()) == pytest.approx(10.0)  # dense still reproduced
    assert model.predict(levels_plan(units=four)) == pytest.approx(measured)
    assert model.predict(levels_plan(dropped=("b.1",))) == pytest.approx(8.0)
    # A probe that contradicts the table (slower than dense) is not believed: α stays 1.
    slow = CandidateLatency(table, units, base.blocks, s, W, group_size=32, calibration=(4, 11.0))
    assert slow.scale == 1.0


def test_unmeasured_level_needs_a_fallback() -> None:
    model = _latency()
    with pytest.raises(PressoError, match="presso profile"):
        model.predict(levels_plan(units={"b.0.mlp.up": (3, 0)}))
    model.fallback = BoostedTrees().fit(_grid())
    assert 0 < model.predict(levels_plan(units={"b.0.mlp.up": (3, 0)})) < 10.0 + 1.0


def test_sizes_follow_the_packed_formats() -> None:
    dense, four = LinearOp(128, 256), LinearOp(128, 256, 4, 0, 64)
    assert disk_bytes(dense) == 128 * 256 * 2
    assert disk_bytes(four) == 128 * 256 / 2 + 128 * 4 * 4  # codes + fp16 scale/zero per group
    sparse = LinearOp(128, 256, 16, 50)
    assert disk_bytes(sparse) == 128 * 256 * 0.5 * 2 + 128 * 256 / 8
    three = LinearOp(128, 256, 3, 0, 64)
    assert memory_bytes(three, carrier_bits=4) == disk_bytes(four)
    assert memory_bytes(sparse, sparse=True) < memory_bytes(dense) / 2 + 128 * 256 * 4


def test_structure_is_a_line_through_the_removal_probes() -> None:
    exact = Structure.fit(30.0, {5: 20.0, 10: 10.0}, attn=(5, 28.0), mlp=(5, 27.0))
    assert exact.dense_ms == pytest.approx(30.0) and exact.block_ms == pytest.approx(2.0)
    assert exact.attn_ms == pytest.approx(0.4) and exact.mlp_ms == pytest.approx(0.6)
    # One noisy probe moves the per-block cost by a third of its error, not all of it.
    noisy = Structure.fit(30.0, {5: 20.0, 10: 10.0, 15: 3.0})
    assert abs(noisy.block_ms - 2.0) < abs((30.0 - 3.0) / 15 - 2.0)


def test_structured_calibration_fits_the_factor_and_how_overheads_shrink() -> None:
    """In the model a pruned layer saves 0.7x what it saves timed alone, and the sublayers'
    overheads (norms, rotary, each op's call) stay whole as heads and channels go: fitted to
    the uniform structured models, the prediction of a mixed candidate is right too. The
    earlier fit (α from one probe's unit savings, overheads in proportion) missed this."""
    from presso.cost_models._campaign import (
        random_structured,
        structured_shapes,
        uniform_structured,
    )
    from presso.models import load_model
    from presso.structures import model_structures

    handle = load_model("tiny-llama")
    shapes = structured_shapes(handle, [75, 50, 25]) | {u.shape for u in handle.units}
    # A layer's time: a fixed part and a part in proportion to its weights.
    table = LookupTable().fit([_m(LinearOp(n, k), 0.02 + n * k / 4e4) for n, k in shapes])
    prefix = handle.blocks_prefix + "."
    units = [
        UnitSlot(u.name, u.shape, u.block, u.name[len(prefix) :].split(".")[1])
        for u in handle.units
    ]
    one_block = [u for u in units if u.block == 0]
    attn = sum(
        table.predict([LinearOp(*u.shape)], W)[0] for u in one_block if u.part == "self_attn"
    )
    mlp = sum(table.predict([LinearOp(*u.shape)], W)[0] for u in one_block if u.part == "mlp")
    n = len(handle.block_names())
    structure = Structure(0.1 + n * (attn + mlp + 0.12), attn + mlp + 0.12, attn + 0.05, mlp + 0.05)

    def model(**kw) -> CandidateLatency:  # noqa: ANN003
        return CandidateLatency(
            table, units, handle.block_names(), structure, W, group_size=None,
            structures=model_structures(handle), **kw)  # fmt: skip

    truth = model()
    truth.overhead_scaling = 0.0
    truth._set_scale(0.7)  # noqa: SLF001
    probes = [(uniform_structured(handle, p), truth.predict(uniform_structured(handle, p)))
              for p in (75, 50, 25)]  # fmt: skip
    fitted = model(structured_calibration=probes)
    assert fitted.overhead_scaling == 0.0
    assert fitted.scale == pytest.approx(0.7, rel=1e-4)
    mixed = random_structured(handle, np.random.default_rng(0), [100, 75, 50, 25])
    assert fitted.predict(mixed) == pytest.approx(truth.predict(mixed), rel=1e-4)
    assert fitted.predict(levels_plan()) == pytest.approx(structure.dense_ms)
    # A probe slower than dense says nothing believable: α stays 1.
    slow = model(structured_calibration=[(probes[0][0], structure.dense_ms * 1.1)])
    assert slow.scale == 1.0
