"""TVM low-bit GEMM kernels: numerics against the torch reference, the int4 packing, tuning
records kept in the profile database, and shapes no kernel can run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("tvm")

from presso.errors import PressoError  # noqa: E402
from presso.kernels import _tvm_gemm as tg  # noqa: E402
from presso.profilers import ProfileDatabase  # noqa: E402
from presso.profilers._tvm import tvm_fingerprint  # noqa: E402

M, N, K, G = 4, 32, 64, 16
#: The environment before presso configured TVM (tests collect before any test runs).
ORIGINAL_ENV = dict(os.environ)


def _reference(shape: tg.GemmShape, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    if shape.bits == 16:
        return x @ weights[0].T
    codes = tg.unpack_int4(weights[0]) if shape.bits == 4 else weights[0]
    return tg.reference_gemm(x, codes, weights[1], weights[2], shape.group_size)


def test_pack_int4_round_trips_and_puts_even_codes_in_the_low_nibble() -> None:
    codes = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = tg.pack_int4(codes)
    assert packed.shape == (5, 6)
    assert torch.equal(tg.unpack_int4(packed), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)


def test_pack_int4_refuses_codes_that_do_not_fit() -> None:
    with pytest.raises(PressoError, match="0..15"):
        tg.pack_int4(torch.full((2, 4), 16, dtype=torch.uint8))
    with pytest.raises(PressoError, match="even"):
        tg.pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


def test_reference_matches_quantized_weight_dequantize() -> None:
    from presso.compress._quant import QuantSpec, quantize_rtn

    w, x = torch.randn(N, K), torch.randn(M, K)
    q = quantize_rtn(w, QuantSpec(4, G))
    expected = x @ q.dequantize().T
    got = tg.reference_gemm(x, q.codes, q.scales, q.zeros, G)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("group_size", [G, None])
def test_untuned_kernel_equals_reference(bits: int, group_size: int | None) -> None:
    gemm = tg.compile_gemm(M, N, K, bits, group_size, trials=0)
    weights = tg.random_weights(gemm.shape, seed=bits)
    x = torch.randn(M, K)
    gemm.check(x, *weights)
    y = gemm(x, *weights)
    # fp32 sums of 64 products of O(10) magnitude: ~1e-5 relative.
    torch.testing.assert_close(y, _reference(gemm.shape, x, weights), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("m", [2, 16])  # decode and prefill schedules
def test_int4_kernel_with_odd_groups_equals_reference(m: int) -> None:
    # Odd groups straddle bytes: a byte's two codes can belong to different groups.
    gemm = tg.compile_gemm(m, 16, 12, 4, 3, trials=0)
    weights, x = tg.random_weights(gemm.shape), torch.randn(m, 12)
    torch.testing.assert_close(gemm(x, *weights), _reference(gemm.shape, x, weights))


def test_kernel_runs_real_quantized_weights() -> None:
    from presso.compress._quant import QuantSpec, quantize_rtn

    w, x = torch.randn(N, K), torch.randn(M, K)
    q = quantize_rtn(w, QuantSpec(3, G))  # 3-bit codes run in the int4 container
    gemm = tg.compile_gemm(M, N, K, 4, G, trials=0)
    y = gemm(x, tg.pack_int4(q.codes), q.scales, q.zeros)
    torch.testing.assert_close(y, x @ q.dequantize().T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("k", "bits", "group_size", "message"),
    [(60, 4, 16, "does not divide"), (63, 4, None, "odd"), (64, 3, 16, "no kernel")],
)
def test_shapes_no_kernel_can_run_are_user_errors(
    k: int, bits: int, group_size: int | None, message: str
) -> None:
    with pytest.raises(PressoError, match=message):
        tg.compile_gemm(M, N, k, bits, group_size, trials=0)


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_random_weights_are_seeded_and_as_large_as_the_shape_says(bits: int) -> None:
    shape = tg.GemmShape(M, N, K, bits, G)
    a, b, c = tg.random_weights(shape, 1), tg.random_weights(shape, 1), tg.random_weights(shape, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert shape.weight_bytes == sum(w.numel() * w.element_size() for w in a)


def test_check_names_mismatched_arguments() -> None:
    gemm = tg.compile_gemm(M, N, K, 8, G, trials=0)
    weights = tg.random_weights(gemm.shape)
    with pytest.raises(PressoError, match="do not match"):
        gemm.check(torch.randn(M, K + 1), *weights)


def test_tuning_record_is_stored_and_reused(tmp_path: Path) -> None:
    db = ProfileDatabase(tmp_path / "profiles.sqlite")
    fingerprint = tvm_fingerprint()
    before = tg.TUNING_RUNS["count"]
    gemm = tg.compile_gemm(M, N, K, 4, G, trials=2, db=db, fingerprint=fingerprint)
    assert gemm.tuned_now and tg.TUNING_RUNS["count"] == before + 1
    key = f"{gemm.shape.key}-{tg._target_key(tg.cpu_target())}"
    stored = db.get_artifact(fingerprint, tg.BACKEND, key)
    assert stored is not None and '"trace"' in stored

    tg._CACHE.clear()  # a new process: only the database remembers
    again = tg.compile_gemm(M, N, K, 4, G, trials=2, db=db, fingerprint=fingerprint)
    assert not again.tuned_now and tg.TUNING_RUNS["count"] == before + 1
    assert again.record == gemm.record
    weights, x = tg.random_weights(again.shape), torch.randn(M, K)
    torch.testing.assert_close(
        again(x, *weights), _reference(again.shape, x, weights), rtol=1e-4, atol=1e-3
    )


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_tuned_kernel_at_a_smollm2_shape_equals_reference(bits: int) -> None:
    gemm = tg.compile_gemm(1, 576, 1536, bits, 32, trials=16)
    assert gemm.record is not None and gemm.record["run_ms"] > 0
    weights, x = tg.random_weights(gemm.shape), torch.randn(1, 1536)
    torch.testing.assert_close(
        gemm(x, *weights), _reference(gemm.shape, x, weights), rtol=1e-4, atol=1e-2
    )


def test_kernels_run_on_every_core_unpinned() -> None:
    # TVM's own default is half the CPUs (it assumes hyperthreads): on 2 cores, one thread.
    # And it pins its workers, which then hold a core while they spin idle after a kernel.
    import os

    expected = int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))
    assert tg.set_threads() == expected == tg.tvm_threads()  # the default (tests set others)
    gemm = tg.compile_gemm(M, N, K, 4, G, trials=0)
    gemm(torch.randn(M, K), *tg.random_weights(gemm.shape))  # the pool's workers exist now
    if os.environ.get("TVM_BIND_THREADS", "0") == "0" and Path("/proc/self/task").is_dir():
        allowed = {
            line
            for task in Path("/proc/self/task").iterdir()
            for line in (task / "status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list")
        }
        assert len(allowed) == 1, allowed


def test_the_pool_is_sized_per_caller_and_records_are_kept_per_thread_count() -> None:
    import os

    cores = int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))
    try:
        assert tg.set_threads(1) == 1 and tg.tvm_threads() == 1
        assert tg.cpu_target()["num-cores"] == 1  # a 1-thread schedule is its own record
        gemm = tg.compile_gemm(M, N, K, 8, G, trials=0)
        x, weights = torch.randn(M, K), tg.random_weights(gemm.shape)
        torch.testing.assert_close(
            gemm(x, *weights), _reference(gemm.shape, x, weights), rtol=1e-4, atol=1e-3
        )
        assert tg.set_threads(cores + 3) == cores  # never more than the cap it was made with
    finally:
        assert tg.set_threads(None) == cores
    assert tg.cpu_target()["num-cores"] == cores
    with pytest.raises(PressoError, match="threads must be >= 1"):
        tg.set_threads(0)


def test_idle_workers_do_not_spin_for_long() -> None:
    # TVM's own default (300000 yields) kept a worker spinning through the torch ops between
    # two linears of a model; a user's own setting is kept.
    import os

    tg.tvm_threads()
    spin = ORIGINAL_ENV.get("TVM_THREAD_POOL_SPIN_COUNT", str(tg.SPIN_COUNT))
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == spin


def test_a_bad_thread_count_in_the_environment_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "two")
    with pytest.raises(PressoError, match="TVM_NUM_THREADS='two'.*whole number"):
        tg.set_threads()  # what a profiler without its own thread count asks


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("m", [2, 32])  # a decode and a prefill schedule
def test_every_point_of_the_design_space_equals_reference(bits: int, m: int) -> None:
    # Tuning may pick any point: every structural choice at every combination of its decisions
    # must be exact. N = 96 admits every panel width, K = 64 every unroll.
    import itertools

    import tvm
    import tvm_ffi
    from tvm.s_tir import Schedule
    from tvm.s_tir.schedule import Trace

    shape = tg.GemmShape(m, 96, 64, bits, G)
    mod = tvm.IRModule({"main": tg.prim_func(shape)})
    spaces = tg.design_spaces(Schedule(mod), shape)
    # decode: parallel or not; prefill: (Mt, Nt) pairs dividing 32 x 96, vector fill or not
    assert len(spaces) == (2 if m <= tg.GEMV_ROWS else 2 * 4)
    weights, x = tg.random_weights(shape, seed=m), torch.randn(m, shape.k)
    expected = _reference(shape, x, weights)
    seen = set()
    for space in spaces:
        samples = [i for i in space.trace.insts if i.kind.name == "SampleCategorical"]
        options = [range(len(i.attrs[0])) for i in samples]
        for choice in itertools.product(*options):
            sch = Schedule(mod)
            decisions = {i: tvm.runtime.convert(c) for i, c in zip(samples, choice)}
            Trace(space.trace.insts, decisions).apply_to_schedule(sch, remove_postproc=True)
            seen.add(tvm_ffi.structural_hash(sch.mod))
            func = tvm.compile(sch.mod, target=tvm.target.Target(tg.cpu_target()))["main"]
            y = torch.empty(m, shape.n)
            func(x, *weights, y)
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-3)
    assert len(seen) > len(spaces)  # the decisions are real knobs: other choices, other code


@pytest.mark.parametrize("m", [1, 4, 8])
def test_decode_tasks_keep_their_accumulators_in_registers(m: int) -> None:
    # A decode task accumulates outputs x rows vectors side by side: at most 16 of AVX-512's 32.
    import tvm
    from tvm.s_tir import Schedule

    shape = tg.GemmShape(m, 96, 64, 4, G)
    space = tg.design_spaces(Schedule(tvm.IRModule({"main": tg.prim_func(shape)})), shape)[0]
    unroll, outputs = [
        [int(o) for o in i.attrs[0]]
        for i in space.trace.insts
        if i.kind.name == "SampleCategorical"
    ]
    assert max(outputs) * m <= 16 and 1 in outputs
    assert max(outputs) == {1: 8, 4: 4, 8: 2}[m]


def test_tuning_times_candidates_with_cold_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a model each layer's weights come from memory: tuning must time schedules that way
    # (every argument but x flushed before each timed call), not with weights left in cache.
    import tvm

    asked: list[dict] = []
    original = tvm.runtime.Module.time_evaluator

    def spy(self, *args, **kwargs):
        asked.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tvm.runtime.Module, "time_evaluator", spy)
    record = tg.tune(tg.GemmShape(1, 96, 64, 8, G), tg.cpu_target(), trials=4)
    assert asked and record["run_ms"] > 0
    assert all(
        a["f_preproc"] == "cache_flush_cpu_non_first_arg" and a["number"] == 1 for a in asked
    )


def test_tuning_measures_distinct_schedules() -> None:
    record = tg.tune(tg.GemmShape(32, 96, 64, 4, G), tg.cpu_target(), trials=8)
    assert 1 < record["measured"] <= 8 and record["run_ms"] > 0
