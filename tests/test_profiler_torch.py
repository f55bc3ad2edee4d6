"""The torch eager profiler: real packed kernels per level, failures as data, whole candidates
built by the torch runtime (packed units, CSR units, blocks removed) and timed in prefill and decode."""

from __future__ import annotations

import types

import pytest
import torch

from presso.compress import QuantizedWeight, QuantSpec, magnitude_prune, quantize_rtn
from presso.errors import MissingExtraError, PressoError
from presso.evaluator import Evaluator
from presso.models import cache_kwargs, load_model
from presso.plan import Plan
from presso.profilers import LinearOp, Profiler, Workload, levels_plan, make_profiler
from presso.profilers._torch import TorchProfiler, quantized_level
from presso.runtimes._torch import PackedLinear

PREFILL = Workload(batch=1, seq_len=8, phase="prefill")
DECODE = Workload(batch=2, seq_len=16, phase="decode")
BLOCK = "model.layers.2"


@pytest.fixture(scope="module")
def profiler() -> TorchProfiler:
    return make_profiler("torch", warmup=1, repeats=3, threads=1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def exact_profiler() -> TorchProfiler:
    """Packed kernels fed fp32 activations: slow, but equal to the dequantized weights."""
    profiler = make_profiler("torch", warmup=0, repeats=1, packed_dtype="float32")
    return profiler  # type: ignore[return-value]


@pytest.fixture(scope="module")
def handle():
    return load_model("tiny-llama")


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


# ------------------------------------------------------------------ ops


@pytest.mark.parametrize(
    ("bits", "group_size", "kernel"),
    [(16, 128, "dense"), (8, None, "int8pack"), (4, 32, "int4pack"), (3, 64, "int4pack")],
)
def test_op_levels_measure_with_their_kernel(profiler, bits, group_size, kernel) -> None:
    m = profiler.measure(LinearOp(64, 128, bits, 0, group_size), PREFILL)
    assert m.ok, m.error
    assert m.median_ms > 0 and m.repeats == 3
    assert m.detail["kernel"] == kernel
    if bits == 3:  # no 3-bit kernel: it runs in the 4-bit container, and says so
        assert m.detail["carrier_bits"] == 4


def test_sparse_op_reports_the_kernel_it_chose(profiler) -> None:
    m = profiler.measure(LinearOp(64, 128, 16, 50), Workload(batch=1, seq_len=128, phase="decode"))
    assert m.ok, m.error
    assert m.detail["kernel"] in ("csr", "dense")
    assert m.median_ms == min(m.detail["csr_ms"], m.detail["dense_ms"])


def test_low_bit_sparse_op_says_sparsity_is_not_exploited(profiler) -> None:
    m = profiler.measure(LinearOp(64, 128, 4, 50, 32), PREFILL)
    assert m.ok, m.error
    assert m.detail["kernel"] == "int4pack" and m.detail["sparsity_exploited"] is False


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (LinearOp(64, 128, 4, 0, 16), "group_size 32/64/128/256"),
        (LinearOp(40, 128, 4, 0, 32), "multiple of 16"),
        (LinearOp(64, 96, 4, 0, 64), "does not divide"),
        (LinearOp(64, 128, 12, 0), "bits must be 2..8"),
    ],
)
def test_impossible_level_is_a_failed_measurement(profiler, op, message) -> None:
    m = profiler.measure(op, PREFILL)
    assert not m.ok and m.median_ms is None
    assert message in m.error


def test_threads_setting_is_restored(profiler) -> None:
    before = torch.get_num_threads()
    assert profiler.measure(LinearOp(32, 64), PREFILL).ok
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("calls", "runs", "warm"),
    [(1, 25, 5), (2, 13, 3), (10, 5, 1), (228, 5, 1)],
)
def test_runs_over_weight_copies_count_their_calls(calls: int, runs: int, warm: int) -> None:
    # repeats and warmup count calls: a run over many copies is repeated less, at least 5 times.
    profiler = make_profiler("torch", warmup=5, repeats=25)
    made = []
    m = profiler._timed(lambda: made.append(1), op="op", workload=PREFILL, calls=calls)
    assert m.repeats == runs and len(made) == runs + warm
    assert m.detail.get("copies") == (calls if calls > 1 else None)
    few = make_profiler("torch", warmup=1, repeats=3)  # never more runs than asked for
    assert few._timed(lambda: None, op="op", workload=PREFILL, calls=calls).repeats == 3


# ------------------------------------------------------------------ PackedLinear


@pytest.mark.parametrize(
    ("spec", "tolerance"),
    [
        (QuantSpec(4, 32), 1e-5),
        (QuantSpec(3, None), 1e-5),  # per channel: one grid repeated over 64-column groups
        (QuantSpec(2, 64), 1e-5),
        (QuantSpec(4, 256), 1e-5),
        (QuantSpec(7, None), 1e-5),  # centred 7-bit codes fit int8: exact
        (QuantSpec(8, None, symmetric=True), 1e-5),
        (QuantSpec(8, 32), 1e-2),  # grouped 8-bit: re-quantized per channel, not exact
    ],
)
def test_packed_linear_matches_the_dequantized_weight(spec, tolerance) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 256, generator=gen)
    bias = torch.randn(48, generator=gen)
    x = torch.randn(3, 5, 256, generator=gen)
    qw = quantize_rtn(weight, spec)
    layer = PackedLinear.from_quantized(qw, bias, dtype=torch.float32)
    ref = torch.nn.functional.linear(x, qw.dequantize(), bias)
    y = layer(x)
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert _relative_error(y, ref) < tolerance
    assert layer.exact == (tolerance < 1e-3)
    assert layer.carrier_bits == (4 if spec.bits <= 4 else 8)
    # The default (fast) path feeds the kernel bf16 activations and scales: close, not exact.
    fast = PackedLinear.from_quantized(qw, bias)
    assert fast.scales.dtype == torch.bfloat16
    assert _relative_error(fast(x), ref) < max(tolerance, 2e-2)


def test_quantized_level_keeps_pruned_weights_exactly_zero() -> None:
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    w = quantized_level(weight, 3, 50, 32).dequantize()
    assert int((w == 0).sum(dim=1).min()) >= 32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_packed_linear_on_cuda_matches_the_dequantized_weight() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 256, generator=gen)
    x = torch.randn(4, 256, generator=gen)
    for spec in (QuantSpec(4, 128), QuantSpec(8, None, symmetric=True)):
        qw = quantize_rtn(weight, spec)
        layer = PackedLinear.from_quantized(qw, device="cuda")
        y = layer(x.cuda().half()).float().cpu()
        assert _relative_error(y, x @ qw.dequantize().T) < 2e-2  # bf16 activations


# ------------------------------------------------------------------ whole models


def _levels(handle) -> tuple[Plan, dict[str, QuantizedWeight]]:
    """Mixed bits (exactly representable on the kernels), one CSR unit, one block dropped."""
    names = handle.unit_names  # block 0: q k v o gate up down, block 1: ...
    specs = {
        names[0]: QuantSpec(4, 32),
        names[4]: QuantSpec(3, 32),
        names[7]: QuantSpec(2, 64),
        names[13]: QuantSpec(8, None, symmetric=True),
    }
    qws = {name: quantize_rtn(handle.dense_weight(name), spec) for name, spec in specs.items()}
    units = {name: (spec.bits, 0) for name, spec in specs.items()}
    units[names[9]] = (16, 50)
    return levels_plan(units=units, dropped=(BLOCK,), group_size=32), qws


def test_assembled_model_matches_the_evaluators_candidate(profiler, exact_profiler, handle) -> None:
    assignment, qws = _levels(handle)
    ids = torch.randint(1000, (2, 12), generator=torch.Generator().manual_seed(3))
    logits = {}
    for name, p in (("exact", exact_profiler), ("fast", profiler)):
        model = p.build(handle, assignment, lambda unit, bits: qws[unit]).model
        assert len(model.model.layers) == len(handle.blocks) - 1
        with torch.no_grad():
            logits[name] = model(input_ids=ids, use_cache=False).logits
    # The evaluator's way: same dequantized weights set in place, the block skipped by forward.
    for name, qw in qws.items():
        handle.set_weight(name, qw.dequantize())
    sparse = handle.unit_names[9]
    handle.set_weight(sparse, magnitude_prune(handle.dense_weight(sparse), 50).weight)
    evaluator = types.SimpleNamespace(handle=handle, _tuple_output=False)
    Evaluator._set_forward(handle.module(BLOCK), Evaluator._skip_for(evaluator, BLOCK))
    try:
        want = handle.forward(ids)
    finally:
        Evaluator._set_forward(handle.module(BLOCK), None)
        handle.restore_dense()
    assert _relative_error(logits["exact"], want) < 1e-4
    assert _relative_error(logits["fast"], want) < 3e-2  # bf16 activations in packed layers
    assert _relative_error(handle.forward(ids), want) > 0.1  # the candidate is not the dense model


def test_assemble_leaves_the_handles_model_untouched(profiler, handle) -> None:
    assignment, _ = _levels(handle)
    before = {k: v.clone() for k, v in handle.model.state_dict().items()}
    types_before = [type(m) for m in handle.model.modules()]
    profiler.build(handle, assignment)
    assert [type(m) for m in handle.model.modules()] == types_before
    assert handle.model.config.num_hidden_layers == len(handle.blocks) == 4
    after = handle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unassigned_units_are_dense_whatever_the_handle_holds(profiler, handle) -> None:
    name = handle.unit_names[3]
    handle.set_weight(name, torch.zeros_like(handle.dense_weight(name)))
    try:
        model = profiler.build(handle, levels_plan()).model
    finally:
        handle.restore_dense()
    assert torch.equal(model.get_submodule(name).weight, handle.dense_weight(name))


def test_decode_with_dropped_attention_matches_a_full_prefill(exact_profiler, handle) -> None:
    # Block 0's attention owns the cache's first layer, which transformers reads lengths from.
    assignment = levels_plan(
        units={handle.unit_names[5]: (4, 0)},
        dropped=("model.layers.0.self_attn", "model.layers.1.mlp", BLOCK),
        group_size=32,
    )
    model = exact_profiler.build(handle, assignment).model
    ids = torch.randint(1000, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[:, -1]
        cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        for _ in range(2):  # the cache cropped back gives the same step again
            step = model(input_ids=ids[:, -1:], use_cache=True, **cache_kwargs(model, cache)).logits
            cache.crop(-1)
            assert _relative_error(step[:, -1], full) < 1e-4


@pytest.mark.parametrize("workload", [PREFILL, DECODE], ids=lambda w: w.phase)
def test_measure_model_mixed_bits_and_a_dropped_block(profiler, handle, workload) -> None:
    assignment, _ = _levels(handle)
    m = profiler.measure_model(handle, assignment, workload)
    assert m.ok, m.error
    assert m.op == "model" and m.workload == workload.key
    kernels = m.detail["kernels"]
    assert kernels["int4pack"] == 3 and kernels["int8pack"] == 1  # 2, 3, 4 bits share int4pack
    assert kernels.get("csr", 0) + kernels.get("dense-pruned", 0) == 1
    assert sum(kernels.values()) == 7 * (len(handle.blocks) - 1)
    assert m.detail["dropped"] == [BLOCK]


def test_bad_assignments_are_failed_measurements(profiler, handle) -> None:
    for assignment, message in [
        (levels_plan(units={"model.layers.0.nope": (4, 0)}), "not a unit"),
        (levels_plan(dropped=("model.layers.0.input_layernorm",)), "cannot drop"),
        (levels_plan(units={handle.unit_names[0]: (4, 0)}, group_size=48), "does not divide"),
        (levels_plan(units={handle.unit_names[0]: (4, 0)}, group_size=16), "unit model.layers.0"),
    ]:
        m = profiler.measure_model(handle, assignment, PREFILL)
        assert not m.ok and message in m.error


def test_encoder_has_prefill_but_no_decode(profiler) -> None:
    bert = load_model("tiny-bert")
    assignment = levels_plan(
        units={bert.unit_names[0]: (4, 0)}, dropped=(bert.block_names()[1],), group_size=32
    )
    prefill = profiler.measure_model(bert, assignment, PREFILL)
    assert prefill.ok, prefill.error
    decode = profiler.measure_model(bert, assignment, DECODE)
    assert not decode.ok and "no decode phase" in decode.error


# ------------------------------------------------------------------ environment


def test_backend_is_registered_and_reports_torch_version() -> None:
    TorchProfiler.check()
    assert make_profiler("torch").versions()["torch"] == torch.__version__
    with pytest.raises(PressoError, match="device must be"):
        make_profiler("torch", device="tpu")
    with pytest.raises(PressoError, match="packed_dtype must be"):
        make_profiler("torch", packed_dtype="float16")


def test_a_missing_package_names_the_extra() -> None:
    class Needy(Profiler):
        name = "needy"
        requires = ("presso_no_such_package",)
        extra = "needy"

        def _time_op(self, op, workload):  # pragma: no cover - never reached
            raise AssertionError

        def _time_model(self, handle, assignment, workload):  # pragma: no cover
            raise AssertionError

    with pytest.raises(MissingExtraError, match=r"presso\[needy\]"):
        Needy()
