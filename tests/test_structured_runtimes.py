"""Really smaller models: the torch and ONNX Runtime runtimes build a structured candidate with
smaller Linear shapes and, under GQA, fewer KV heads in the cache, and compute what the masked,
OBS-updated model (the reference runtime, what the evaluator scores) computes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from presso.config import Experiment
from presso.errors import PressoError
from presso.experiment import Setup
from presso.plan import Plan
from presso.runtimes import Levels, build, greedy
from presso.structures import model_structures

from .conftest import tiny_experiment

PROMPT = "def main(args"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(model: str) -> Setup:
    exp = tiny_experiment(
        model=model,
        structured={"levels": [100, 75, 50, 25], "calibration": 4},
        space={"kind": "structured", "kept_params": 60},
    )
    s = Setup(Experiment.model_validate(exp))
    s.level_db("structured").build(s.data.calibration[:4])
    return s


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-bert"])
def setup(request: pytest.FixtureRequest) -> Setup:
    return _setup(request.param)


def _plan(s: Setup) -> Plan:
    """Every structure at its own level: the attentions of blocks 0 and 2 keep half their heads
    (one of tiny-llama's two KV groups), one keeps all; the FFNs keep 75, 50, 25 ... %."""
    levels = {}
    for structure in model_structures(s.handle):
        if structure.what == "heads":
            levels[structure.consumer] = 50 if structure.block % 2 == 0 else 100
        else:
            levels[structure.consumer] = (75, 50, 25)[structure.block % 3]
    plan = Plan.from_levels(list(levels), ["structured"] * len(levels), list(levels.values()))
    assert plan.kinds() == ["structured"]
    return plan


def _levels(s: Setup) -> Levels:
    return Levels(structured=s.level_db("structured").load)


def _ids(s: Setup) -> torch.Tensor:
    return torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))


def test_torch_builds_smaller_linears_equal_to_the_masked_model(setup: Setup) -> None:
    plan, levels = _plan(setup), _levels(setup)
    reference = build("reference", setup.handle, plan, levels)
    small = build("torch", setup.handle, plan, levels)
    ids = _ids(setup)
    want = reference.forward(ids)
    torch.testing.assert_close(small.forward(ids), want, rtol=1e-4, atol=1e-5)
    dense = build("reference", setup.handle, Plan(), levels).forward(ids)
    assert not torch.allclose(want, dense, atol=1e-3)  # something was removed
    # The evaluator scores this very model: the masked, updated weights in the dense shapes.
    setup.evaluator().apply_plan(plan)
    torch.testing.assert_close(setup.handle.forward(ids), want, rtol=1e-5, atol=1e-6)

    modules = dict(small.model.named_modules())
    for s in model_structures(setup.handle):
        kept = s.kept(plan.level(s.consumer, "structured"))
        assert modules[s.consumer].weight.shape[1] == kept * s.group_size
        for name in s.producers:
            assert modules[name].weight.shape[0] == kept * s.group_size
        for name in s.kv:
            assert modules[name].weight.shape[0] == kept * s.kv_rows
    params = sum(p.numel() for p in small.model.parameters())
    assert params < sum(p.numel() for p in setup.handle.model.parameters())
    assert set(small.detail["kernels"]) >= {"structured-heads", "structured-ffn"}


def test_the_kv_cache_is_smaller_for_removed_kv_groups() -> None:
    s = _setup("tiny-llama")
    plan, levels = _plan(s), _levels(s)
    ids = s.handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    reference = build("reference", s.handle, plan, levels)
    tokens = greedy(reference, ids, 5)
    small = build("torch", s.handle, plan, levels)
    assert greedy(small, ids, 5) == tokens
    kv = [layer.keys.shape[1] for layer in small._cache.layers]  # noqa: SLF001
    assert kv == [1, 2, 1, 2]  # blocks 0 and 2 keep one of their two KV heads

    ort = build("onnxruntime", s.handle, plan, levels)
    assert greedy(ort, ids, 5) == tokens
    pasts = [a.shape[1] for a in ort.session.get_inputs() if a.name.startswith("past_key")]
    assert pasts == [1, 2, 1, 2]
    torch.testing.assert_close(
        ort.forward(_ids(s)), reference.forward(_ids(s)), rtol=1e-4, atol=1e-4
    )


def test_onnx_runtime_builds_the_smaller_encoder(setup: Setup) -> None:
    plan, levels = _plan(setup), _levels(setup)
    ids = _ids(setup)
    want = build("reference", setup.handle, plan, levels).forward(ids)
    ort = build("onnxruntime", setup.handle, plan, levels)
    torch.testing.assert_close(ort.forward(ids), want, rtol=1e-4, atol=1e-4)
    dense = build("onnxruntime", setup.handle, Plan())  # the dense graph is transformers' model
    torch.testing.assert_close(
        dense.forward(ids),
        build("reference", setup.handle, Plan()).forward(ids),
        rtol=1e-4,
        atol=1e-4,
    )
    if setup.handle.kind == "encoder":  # a dropped block is not in the graph
        dropped = Plan(plan.units, ("encoder.layer.1",))
        torch.testing.assert_close(
            build("onnxruntime", setup.handle, dropped, levels).forward(ids),
            build("reference", setup.handle, dropped, levels).forward(ids),
            rtol=1e-4,
            atol=1e-4,
        )


def _joint(model: str, group: int) -> Setup:
    """Bits and structured widths on the same layers (a joint space), levels built."""
    exp = tiny_experiment(
        model=model,
        compress={"operator": "rtn", "levels": [4, 8], "group_size": group, "calibration": 4},
        structured={"levels": [100, 75, 50, 25] if group == 32 else [100, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 16, "kept_params": 100},
    )
    s = Setup(Experiment.model_validate(exp))
    for kind in ("bits", "structured"):
        s.level_db(kind).build(s.data.calibration[:4])
    return s


@pytest.mark.parametrize(("model", "group"), [("tiny-llama", 32), ("tiny-bert", 16)])
def test_pruned_heads_and_channels_with_bits_run_what_the_evaluator_scores(
    model: str, group: int
) -> None:
    """Each attention and FFN keeps some of its heads or channels and its layers run at 4 or
    8 bits: the runtimes build the smaller Linears quantized at their own shapes (the
    consumer's kept columns rounded on their own grid, the producers' kept rows of their
    levels) and compute what the evaluator scored."""
    s = _joint(model, group)
    levels = {}
    for structure in model_structures(s.handle):
        percent = 50 if structure.block % 2 == 0 else 100
        bits = 4 if structure.block < 2 else 8
        for unit in (structure.consumer, *structure.producers, *structure.kv):
            levels[unit] = {"bits": bits}
        levels[structure.consumer]["structured"] = percent
    plan = Plan(levels, settings={"bits": {"group_size": group}})
    store = Levels(quantized=s.level_db("bits").load, structured=s.level_db("structured").load)
    ids = _ids(s)
    s.evaluator().apply_plan(plan)
    scored = s.handle.forward(ids)
    reference = build("reference", s.handle, plan, store).forward(ids)
    torch.testing.assert_close(reference, scored, rtol=1e-5, atol=1e-5)
    ort = build("onnxruntime", s.handle, plan, store)
    torch.testing.assert_close(ort.forward(ids), scored, rtol=1e-3, atol=1e-3)
    nbits = [u for u, f in ort.detail["units"].items() if f.get("bits") in (4, 8)]
    assert len(nbits) == len(levels)  # every unit a MatMulNBits, the pruned ones too
    without = Plan(
        {u: {k: v for k, v in e.items() if k != "bits"} for u, e in levels.items()},
        settings={"bits": {"group_size": group}},
    )
    s.evaluator().apply_plan(without)
    assert not torch.allclose(s.handle.forward(ids), scored, atol=1e-3)  # the bits counted
    if model == "tiny-llama":  # torch's packed kernels at the smaller shapes, 4 bits (its
        # int8 kernel runs 8-bit groups per channel, re-quantized: not the scored weights)
        plan = Plan(
            {u: {**e, "bits": 4} for u, e in levels.items()},
            settings={"bits": {"group_size": group}},
        )
        s.evaluator().apply_plan(plan)
        scored = s.handle.forward(ids)
        small = build("torch", s.handle, plan, store, packed_dtype="float32")
        torch.testing.assert_close(small.forward(ids), scored, rtol=1e-5, atol=1e-5)
        kernels = small.detail["kernels"]
        assert kernels.get("structured-heads") and sum(
            n for k, n in kernels.items() if k.startswith("int")
        ) == len(levels)


def test_runtimes_refuse_what_they_cannot_build_of_pruned_layers() -> None:
    s = _setup("tiny-llama")
    unit = "model.layers.0.self_attn.o_proj"
    plan = Plan({unit: {"structured": 50, "sparsity": 50}})
    with pytest.raises(PressoError, match=r"o_proj: its heads are pruned .* 0% sparsity"):
        build("torch", s.handle, plan, _levels(s))
    down = "model.layers.0.mlp.down_proj"  # 75 % of 128 channels: 96 columns, not groups of 64
    plan = Plan({down: {"structured": 75, "bits": 4}}, settings={"bits": {"group_size": 64}})
    with pytest.raises(PressoError, match=r"96 input columns, which groups of 64 do not divide"):
        build("torch", s.handle, plan, _levels(s))
    if importlib.util.find_spec("tvm") is not None:  # runs pruned structures masked, dense
        plan = Plan({down: {"structured": 50, "bits": 4}}, settings={"bits": {"group_size": 32}})
        with pytest.raises(PressoError, match="tvm runtime runs pruned heads .* torch or onnx"):
            build("tvm", s.handle, plan, _levels(s))
    with pytest.raises(PressoError, match="only attention output and FFN down projections"):
        build("torch", s.handle, Plan({"model.layers.0.mlp.up_proj": {"structured": 50}}))


def test_without_stored_levels_the_largest_structures_are_kept() -> None:
    s = _setup("tiny-llama")
    small = build("torch", s.handle, _plan(s))  # latency: shapes right, weights not updated
    reference = build("reference", s.handle, _plan(s))
    ids = _ids(s)
    torch.testing.assert_close(small.forward(ids), reference.forward(ids), rtol=1e-4, atol=1e-5)
    stored = build("reference", s.handle, _plan(s), _levels(s)).forward(ids)
    assert not torch.allclose(stored, reference.forward(ids), atol=1e-4)


def test_a_plan_with_structured_levels_has_its_own_digest() -> None:
    unit = "model.layers.0.mlp.down_proj"
    assert Plan({unit: {"structured": 50}}).digest() != Plan({unit: {"structured": 100}}).digest()
    assert Plan({unit: {"structured": 100}}).digest() == Plan({unit: {}}).digest()
