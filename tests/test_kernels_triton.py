"""The Triton low-bit GEMM and the triton profiler backend.

* packing: exact round trips and the documented bit layout (in-process, torch only);
* kernel numerics under ``TRITON_INTERPRET=1`` on tiny shapes, every bit width, fp16 and bf16,
  each kernel path (GEMV, tensor cores, split-K, one group per tile or several), in one
  subprocess so that the flag is set before triton is imported and this process is unaffected;
* lowering to sm_90 (H100) machine code without a GPU (subprocess, slow);
* the compiled kernel and the profiler on a real GPU (``gpu``; skipped without CUDA).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from presso.compress import QuantSpec, quantize_rtn
from presso.errors import PressoError
from presso.kernels._packing import PackedWeight, pack, reference_matmul, unpack

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

#: Largest |kernel - reference| relative to max |reference|: the output is rounded to the
#: activation dtype (fp16: 2**-11, bf16: 2**-8 relative), tensor-core tiles with several
#: groups per tile also round each dequantized weight to it, and split-K adds in it.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.2e-2}
#: At K = 4096 split-K tiles add up to 16 partial sums atomically in the output dtype.
GPU_TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def _quantized(n: int, k: int, bits: int, group: int | None, seed: int = 0):
    torch.manual_seed(seed)
    return quantize_rtn(torch.randn(n, k), QuantSpec(bits=bits, group_size=group))


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, None])
def test_pack_round_trip_is_exact(bits: int, group: int | None) -> None:
    qw = _quantized(48, 128, bits, group)
    packed = pack(qw)
    assert packed.qweight.dtype == torch.int32
    assert tuple(packed.qweight.shape) == (128 * bits // 32, 48)
    back = unpack(packed)
    assert torch.equal(back.codes, qw.codes)
    assert torch.equal(back.zeros, qw.zeros)
    assert torch.equal(back.scales, qw.scales.half().float())
    assert back.spec.bits == bits and back.spec.group_size == group


def test_every_code_value_survives_packing() -> None:
    # Codes that use every bit, including the sign bit of the int32 words.
    for bits in (2, 3, 4, 8):
        n, k = 4, 256
        codes = (torch.arange(n * k) % (1 << bits)).reshape(n, k).to(torch.uint8)
        qw = _quantized(n, k, bits, 32)
        qw.codes = codes
        assert torch.equal(unpack(pack(qw)).codes, codes), bits


def test_four_bit_layout_is_gptq_order() -> None:
    # Code k of a column sits in word k // 8 at bit offset 4 * (k % 8).
    qw = _quantized(1, 32, 4, None)
    qw.codes = torch.tensor([[k % 16 for k in range(32)]], dtype=torch.uint8)
    words = pack(qw).qweight[:, 0].tolist()
    expect = [
        sum((k % 16) << (4 * j) for j, k in enumerate(range(w * 8, w * 8 + 8))) for w in range(4)
    ]
    assert [w & 0xFFFFFFFF for w in words] == expect


def test_three_bit_layout_is_two_planes() -> None:
    qw = _quantized(1, 32, 3, None)
    codes = [(5 * k + 3) % 8 for k in range(32)]
    qw.codes = torch.tensor([codes], dtype=torch.uint8)
    low0, low1, high = (w & 0xFFFFFFFF for w in pack(qw).qweight[:, 0].tolist())
    assert low0 == sum((c & 3) << (2 * j) for j, c in enumerate(codes[:16]))
    assert low1 == sum((c & 3) << (2 * j) for j, c in enumerate(codes[16:]))
    assert high == sum((c >> 2) << j for j, c in enumerate(codes))


def test_reference_matmul_is_dequantize_then_matmul() -> None:
    qw = _quantized(16, 64, 4, 32)
    packed = pack(qw)
    x = torch.randn(3, 64)
    w = (
        qw.codes.float() - qw.zeros.repeat_interleave(32, 1)
    ) * qw.scales.half().float().repeat_interleave(32, 1)
    torch.testing.assert_close(reference_matmul(x, packed), x @ w.t(), rtol=1e-5, atol=1e-5)
    # And it tracks the float weight it came from (4-bit RTN: a few percent).
    err = (reference_matmul(x, packed) - x @ qw.dequantize().t()).abs().max()
    assert err < 1e-2


def test_packed_bytes_and_bad_input() -> None:
    packed = pack(_quantized(64, 128, 4, 32))
    # 4 bits per weight, plus an fp16 scale and zero per group and column.
    assert packed.nbytes == 64 * 128 // 2 + 2 * 2 * 64 * (128 // 32)
    with pytest.raises(PressoError, match="multiple of 32"):
        pack(_quantized(8, 48, 4, None))
    with pytest.raises(PressoError, match="float16"):
        PackedWeight(packed.qweight, packed.scales.float(), packed.zeros, 4, 32)


# ------------------------------------------------------------ kernel under the interpreter

# (bits, group, dtype, M, tile=(block_m, block_n, block_k, split_k, num_warps, num_stages)).
# N = 32 and K = 64 throughout; tiles narrower than N give several programs along N.
_TILES = {
    "gemv": (1, 16, 32, 1, 1, 2),
    "gemv-wide": (1, 32, 64, 1, 1, 2),
    "gemv-splitk": (1, 16, 32, 2, 1, 2),
    "dot": (16, 16, 32, 1, 4, 2),
    "dot-groups": (16, 32, 64, 1, 4, 2),
    "dot-splitk": (16, 16, 32, 2, 4, 2),
}
_CASES = []
for _bits in (2, 3, 4, 8):
    for _m in (1, 5):
        _CASES += [
            (_bits, 32, "float16", _m, "gemv"),
            (_bits, None, "float16", _m, "gemv-wide"),
            (_bits, 32, "float16", _m, "gemv-splitk"),
            (_bits, 32, "float16", _m, "dot"),
            (_bits, 32, "float16", _m, "dot-groups"),
            (_bits, None, "float16", _m, "dot-splitk"),
            (_bits, 32, "bfloat16", _m, "gemv"),
            (_bits, None, "bfloat16", _m, "gemv-wide"),
        ]
#: The default run: every bit width, dtype, row count and kernel path at least once.
QUICK = [
    (2, 32, "float16", 1, "gemv"),
    (2, None, "bfloat16", 5, "gemv-wide"),
    (2, 32, "float16", 5, "dot-groups"),
    (3, 32, "float16", 5, "gemv-splitk"),
    (3, 32, "bfloat16", 1, "gemv"),
    (3, 32, "float16", 5, "dot"),
    (4, None, "float16", 1, "gemv-wide"),
    (4, None, "float16", 5, "dot-splitk"),
    (4, 32, "bfloat16", 5, "gemv"),
    (8, 32, "float16", 5, "dot"),
    (8, None, "bfloat16", 1, "gemv-wide"),
    (8, 32, "float16", 1, "gemv-splitk"),
    (8, 32, "float16", 1, "dot-groups"),
]
FULL = [c for c in _CASES if c not in QUICK]
# The interpreter cannot run two bf16 paths that the GPU runs (tl.dot multiplies bf16's raw
# bits there, and it has no bf16 atomic add): those are covered by the gpu tests below.

_SCRIPT = r"""
import json, os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
import torch
from presso.compress import QuantSpec, quantize_rtn
from presso.kernels._packing import pack, reference_matmul
from presso.kernels._triton_gemm import TileConfig, wq_matmul

results = []
for bits, group, dtype, m, tile in json.loads(sys.argv[1]):
    torch.manual_seed(bits * 10 + m)
    packed = pack(quantize_rtn(torch.randn(32, 64), QuantSpec(bits=bits, group_size=group)))
    x = torch.randn(m, 64).to(getattr(torch, dtype))
    b_m, b_n, b_k, split, warps, stages = tile
    config = TileConfig(b_m, b_n, b_k, split, num_warps=warps, num_stages=stages)
    y = wq_matmul(x, packed, config=config)
    ref = reference_matmul(x, packed)
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    results.append({"err": err, "dtype": str(y.dtype), "shape": list(y.shape)})
print(json.dumps(results))
"""


def _python(code: str, *args: str, env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _interpreter_problem() -> str | None:
    """Why this machine's Triton interpreter cannot run any kernel, if it cannot."""
    from importlib.metadata import version

    import numpy
    from packaging.version import Version

    triton, np = Version(version("triton")), Version(numpy.__version__)
    if triton < Version("3.7") and np >= Version("2.4"):
        # Its interpreter turns a program id into an int with int(array), which numpy 2.4
        # refuses; compiled kernels are unaffected (triton-lang/triton#9171).
        return (
            f"Triton {triton}'s interpreter cannot run under numpy {np} (fixed in Triton 3.7): "
            "pip install 'triton>=3.7' or 'numpy<2.4' to run these tests"
        )
    return None


def _interpret(cases: list[tuple]) -> dict[tuple, dict]:
    """Run ``cases`` with the Triton interpreter, all in one subprocess."""
    problem = _interpreter_problem()
    if problem:
        pytest.skip(problem)
    payload = [[b, g, d, m, _TILES[t]] for b, g, d, m, t in cases]
    out = _python(_SCRIPT, json.dumps(payload), env={"TRITON_INTERPRET": "1"}, timeout=900)
    return dict(zip(cases, json.loads(out.strip().splitlines()[-1]), strict=True))


@pytest.fixture(scope="module")
def quick_results() -> dict[tuple, dict]:
    return _interpret(QUICK)


@pytest.fixture(scope="module")
def full_results() -> dict[tuple, dict]:
    return _interpret(FULL)


def _check_case(case: tuple, result: dict) -> None:
    bits, group, dtype, m, tile = case
    assert result["dtype"] == f"torch.{dtype}"
    assert result["shape"] == [m, 32]
    assert result["err"] <= TOLERANCE[dtype], result


def _ids(cases: list[tuple]) -> list[str]:
    return ["-".join(map(str, c)) for c in cases]


@pytest.mark.parametrize("case", QUICK, ids=_ids(QUICK))
def test_kernel_matches_reference_under_interpreter(case: tuple, quick_results: dict) -> None:
    _check_case(case, quick_results[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=_ids(FULL))
def test_kernel_matches_reference_under_interpreter_all(case: tuple, full_results: dict) -> None:
    _check_case(case, full_results[case])


# ----------------------------------------------------------------- host-side checks


def test_wrapper_rejects_bad_input_clearly() -> None:
    from presso.kernels._triton_gemm import TileConfig, wq_matmul

    packed = pack(_quantized(32, 64, 4, 32))
    with pytest.raises(PressoError, match="float16 or bfloat16"):
        wq_matmul(torch.randn(2, 64), packed)
    with pytest.raises(PressoError, match="in_features=64"):
        wq_matmul(torch.randn(2, 48).half(), packed)
    with pytest.raises(PressoError, match="contiguous"):
        wq_matmul(torch.randn(64, 2).half().t(), packed)
    if not HAS_CUDA and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        with pytest.raises(PressoError, match="CUDA tensors"):
            wq_matmul(torch.randn(2, 64).half(), packed)
    with pytest.raises(PressoError, match="divide the group size"):
        wq_matmul(torch.randn(2, 64).half(), packed, config=TileConfig(1, 32, 64))


@pytest.mark.parametrize("k", [64, 576, 1536, 4096, 11008])
@pytest.mark.parametrize("group", [32, 128, None])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 128, 4096])
def test_autotune_candidates_always_fit(k: int, group: int | None, m: int) -> None:
    from presso.kernels._triton_gemm import _prune, _tile_of, _wq_gemm_tuned

    group_size = k if group is None or k % group else group
    x = torch.empty(m, k, dtype=torch.float16)
    kept = _prune(_wq_gemm_tuned.configs, {"M": m, "K": k, "x_ptr": x}, GROUP_SIZE=group_size)
    tiles = [_tile_of(c) for c in kept]
    assert tiles and all(t.problem(k, group_size) is None for t in tiles)
    if m >= 128:  # prefill: no GEMV, no split-K, no thin tiles
        assert all(t.block_m > 16 and t.split_k == 1 for t in tiles)
    if m == 1 and group_size % 32 == 0:  # decode: the GEMV path is among the candidates
        assert any(t.block_m == 1 for t in tiles)


_COMPILE = r"""
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile
from presso.kernels._triton_gemm import DECODE_CONFIGS, PREFILL_CONFIGS, TileConfig, _wq_gemm_kernel

# GEMV + split-K, a deep-pipeline GEMV, tensor cores at M = 16 + split-K, a prefill tile (one
# group per K tile), and a prefill tile whose K tile spans two groups of 32 (per-row grids).
tiles = [(DECODE_CONFIGS[1], 128), (TileConfig(1, 32, 128, 1, num_stages=8, num_warps=1), 128),
         (TileConfig(16, 64, 128, 4), 128), (PREFILL_CONFIGS[2], 128), (PREFILL_CONFIGS[2], 32)]
pointers = dict(x_ptr=None, w_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", y_ptr=None)
for dtype in ("fp16", "bf16"):
    for bits in (2, 3, 4, 8):
        for tile, group in tiles:
            sig = {name: t or f"*{dtype}" for name, t in pointers.items()}
            sig.update({name: "i32" for name in ("M", "N", "K")})
            meta = {"BITS": bits, "GROUP_SIZE": group, **tile.meta()}
            sig.update({name: "constexpr" for name in meta})
            attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 6, 7)}
            src = ASTSource(fn=_wq_gemm_kernel, signature=sig, constexprs=meta, attrs=attrs)
            options = {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
            kernel = triton_compile(src, target=GPUTarget("cuda", 90, 32), options=options)
            assert kernel.asm["cubin"], (dtype, bits, tile)
print("ok")
"""


@pytest.mark.slow
def test_kernel_compiles_for_h100_without_a_gpu(tmp_path: Path) -> None:
    # Triton's compiler and ptxas run on the CPU: each kernel path, for every bit width and
    # both dtypes, must lower to sm_90 (H100) machine code; a GPU is needed only to run it.
    env = {"TRITON_CACHE_DIR": str(tmp_path), "TRITON_DEFAULT_FP_FUSION": "1"}
    assert _python(_COMPILE, env=env, timeout=1800).strip().endswith("ok")


# --------------------------------------------------------------------------- profiler


def test_triton_backend_is_registered_and_needs_a_gpu() -> None:
    from presso.profilers import LinearOp, Workload, available, make_profiler
    from presso.profilers._triton import TritonProfiler

    assert "triton" in available()
    with pytest.raises(PressoError, match="--device cuda"):  # names the CLI flag that fixes it
        make_profiler("triton", device="cpu")
    if HAS_CUDA:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(PressoError, match="needs a CUDA GPU"):
        make_profiler("triton")
    # A profiler that somehow exists on a machine without a GPU measures failures, not crashes.
    profiler = TritonProfiler.__new__(TritonProfiler)
    profiler.device, profiler.warmup, profiler.repeats, profiler.threads = "cuda", 1, 2, None
    m = profiler.measure(LinearOp(64, 64, bits=4, group_size=32), Workload(1, 8, "decode"))
    assert not m.ok and "CUDA GPU" in m.error


# ------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 16, 128])
def test_compiled_kernel_matches_reference(bits: int, dtype: torch.dtype, m: int) -> None:
    from presso.kernels._triton_gemm import wq_matmul

    packed = pack(_quantized(4096, 4096, bits, 128)).to("cuda")
    x = torch.randn(m, 4096, device="cuda").to(dtype)
    y = wq_matmul(x, packed)
    ref = reference_matmul(x, packed)
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    assert y.dtype == dtype and y.shape == (m, 4096)
    assert err <= GPU_TOLERANCE[dtype], err


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("m", [1, 128])
def test_compiled_kernel_with_small_groups(bits: int, m: int) -> None:
    # Group 32: GEMV tiles of K = 32, tensor-core tiles spanning several groups.
    from presso.kernels._triton_gemm import wq_matmul

    packed = pack(_quantized(4096, 4096, bits, 32)).to("cuda")
    x = torch.randn(m, 4096, device="cuda").half()
    ref = reference_matmul(x, packed)
    err = ((wq_matmul(x, packed).float() - ref).abs().max() / ref.abs().max()).item()
    assert err <= GPU_TOLERANCE[torch.float16], err


@pytest.mark.gpu
@gpu
def test_profiler_measures_on_gpu() -> None:
    from presso.profilers import LinearOp, Workload, make_profiler

    profiler = make_profiler("triton", warmup=2, repeats=5)
    for bits in (4, 16):
        m = profiler.measure(
            LinearOp(1024, 1024, bits=bits, group_size=128), Workload(1, 16, "decode")
        )
        assert m.ok and m.median_ms > 0, m.error
        assert m.detail["kernel"]


@pytest.mark.gpu
@gpu
def test_profiler_times_a_model_on_gpu() -> None:
    from presso.models import load_model
    from presso.profilers import Workload, levels_plan, make_profiler

    handle = load_model("tiny-llama")
    units = {name: (4, 0) for name in handle.unit_names}
    profiler = make_profiler("triton", warmup=1, repeats=3)
    for phase in ("prefill", "decode"):
        m = profiler.measure_model(
            handle, levels_plan(units, group_size=32), Workload(1, 16, phase)
        )
        assert m.ok, m.error


def test_model_build_packs_units_and_drops_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The part of measure_model that needs no GPU: which modules become packed layers (built
    # on the CPU, as under the interpreter; nothing runs here).
    from presso.models import load_model
    from presso.profilers import levels_plan
    from presso.runtimes import build
    from presso.runtimes._triton import _triton_linear

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    handle = load_model("tiny-llama")
    names = handle.unit_names
    units = {names[0]: (4, 0), names[1]: (3, 50), names[2]: (16, 0)}
    dropped = (handle.block_names()[3], f"{handle.block_names()[1]}.mlp")
    runtime = build("triton", handle, levels_plan(units, dropped, group_size=32), device="cpu")
    model, detail = runtime.model, runtime.detail
    linear = _triton_linear()
    assert isinstance(model.get_submodule(names[0]), linear)
    assert model.get_submodule(names[1]).packed.bits == 3
    assert not isinstance(model.get_submodule(names[2]), linear)
    assert len(handle.blocks) == 4 and model.config.num_hidden_layers == 3
    assert detail["packed_units"] == 2 and "not exploited" in detail["sparsity"]
    assert isinstance(handle.model.get_submodule(names[0]), torch.nn.Linear)  # handle untouched
    with pytest.raises(PressoError, match="does not divide"):
        build("triton", handle, levels_plan(units, group_size=48), device="cpu")
