"""The tvm profiler backend: ops measured with the TVM kernels, failures as data, and a whole
candidate assembled on the kernels end to end (untuned kernels: fast, numerically real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("tvm")

from presso.errors import PressoError  # noqa: E402
from presso.models import load_model  # noqa: E402
from presso.profilers import (  # noqa: E402
    LinearOp,
    ProfileDatabase,
    Workload,
    available,
    levels_plan,
    make_profiler,
)
from presso.profilers._tvm import carrier_bits, row_bucket  # noqa: E402


@pytest.fixture(scope="module")
def profiler():
    return make_profiler("tvm", trials=0, warmup=1, repeats=3)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_registered_and_cpu_only() -> None:
    assert "tvm" in available()
    with pytest.raises(PressoError, match="only 'cpu'"):
        make_profiler("tvm", device="cuda")


@pytest.mark.parametrize(
    ("bits", "kernel", "carrier"),
    [(2, "int4", 4), (3, "int4", 4), (4, "int4", 4), (6, "int8", 8), (8, "int8", 8)]
    + [(16, "dense", 16)],
)
def test_measures_each_level_in_its_carrier_kernel(
    profiler, bits: int, kernel: str, carrier: int
) -> None:
    m = profiler.measure(LinearOp(32, 64, bits, 0, 16), Workload(1, 4))
    assert m.ok, m.error
    assert m.median_ms > 0 and m.repeats == 3
    assert m.detail["kernel"] == kernel and m.detail["carrier_bits"] == carrier


def test_sparse_level_is_measured_but_not_exploited(profiler) -> None:
    m = profiler.measure(LinearOp(32, 64, 16, 50, 16), Workload(1, 1, "decode"))
    assert m.ok and m.detail["sparsity_exploited"] is False


def test_unrunnable_shape_is_a_failed_measurement(profiler) -> None:
    m = profiler.measure(LinearOp(32, 60, 4, 0, 16), Workload(1, 4))
    assert not m.ok and "does not divide" in m.error


def test_carrier_bits_refuses_widths_between_8_and_16() -> None:
    with pytest.raises(PressoError, match="12-bit"):
        carrier_bits(12)


def test_profiler_tunes_once_per_database(tmp_path: Path) -> None:
    from presso.kernels import _tvm_gemm as tg

    db = ProfileDatabase(tmp_path / "p.sqlite")
    p = make_profiler("tvm", trials=2, warmup=1, repeats=2, db=db)
    op, workload = LinearOp(16, 32, 8, 0, 16), Workload(1, 2)
    before = tg.TUNING_RUNS["count"]
    first = p.measure(op, workload)
    assert first.ok and first.detail["tuned"], first.error
    tg._CACHE.clear()
    assert p.measure(op, workload).ok
    assert tg.TUNING_RUNS["count"] == before + 1


def test_assembled_dense_model_matches_torch(profiler, tiny) -> None:
    model = profiler.build(tiny, levels_plan(group_size=16)).model
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, tiny.forward(ids), rtol=1e-4, atol=1e-4)


def test_assembled_quantized_model_matches_fake_quantized_torch(profiler, tiny) -> None:
    from presso.compress._quant import QuantSpec, quantize_rtn

    levels = {tiny.unit_names[0]: (4, 0), tiny.unit_names[1]: (8, 0), tiny.unit_names[5]: (3, 0)}
    model = profiler.build(tiny, levels_plan(units=levels, group_size=16)).model
    ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    try:
        for name, (bits, _) in levels.items():
            q = quantize_rtn(tiny.dense_weight(name), QuantSpec(bits, 16))
            tiny.set_weight(name, q.dequantize())
        expected = tiny.forward(ids)
    finally:
        tiny.restore_dense()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_measures_an_assembled_candidate(profiler, tiny, phase: str) -> None:
    a = levels_plan(
        units={tiny.unit_names[0]: (4, 0), tiny.unit_names[2]: (16, 50)},
        dropped=(tiny.block_names()[1],),
        group_size=16,
    )
    m = profiler.measure_model(tiny, a, Workload(1, 8, phase))
    assert m.ok, m.error
    assert m.detail["dropped"] == [tiny.block_names()[1]]


def test_rows_run_in_power_of_two_kernels(profiler) -> None:
    assert [row_bucket(m) for m in (1, 2, 3, 7, 8, 129)] == [1, 2, 4, 8, 8, 256]
    m = profiler.measure(LinearOp(64, 64, 4, 0, 32), Workload(1, 7, "prefill"))
    assert m.ok and m.detail["kernel_rows"] == 8


def test_ops_are_timed_over_weight_copies_from_memory(profiler) -> None:
    # As the torch and ONNX Runtime backends time them: one weight reused is served from cache.
    m = profiler.measure(LinearOp(64, 64, 4, 0, 32), Workload(1, 1, "decode"))
    assert m.ok and m.detail["copies"] > 1


def test_kernels_run_on_the_profilers_threads(tiny) -> None:
    import os

    from presso.kernels import _tvm_gemm as tg

    cores = int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))
    one = make_profiler("tvm", trials=0, warmup=0, repeats=1, threads=1)
    try:
        assert one.measure(LinearOp(32, 64, 8, 0, 16), Workload(1, 1)).ok
        assert tg.tvm_threads() == 1
        before = torch.get_num_threads()
        assert one.measure_model(tiny, levels_plan(group_size=16), Workload(1, 4)).ok
        assert tg.tvm_threads() == 1 and torch.get_num_threads() == before
    finally:
        every = make_profiler("tvm", trials=0, warmup=0, repeats=1)
        assert every.measure(LinearOp(32, 64, 8, 0, 16), Workload(1, 1)).ok
    assert tg.tvm_threads() == cores
