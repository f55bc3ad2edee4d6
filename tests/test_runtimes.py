"""Runtimes: every backend builds the same candidate and runs the same numbers, and skipping
a block or sublayer keeps the KV cache right (greedy decoding with the cache equals a plain
full-sequence forward of the same candidate, on every backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from presso.errors import PressoError
from presso.models import load_model
from presso.profilers import levels_plan
from presso.runtimes import Levels, Runtime, available, build, greedy

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def main(args"
NEW = 5
#: The CPU backends, with the options that make each compute what the reference computes.
CPU = {
    "torch": {"packed_dtype": "float32"},
    "onnxruntime": {},
    "tvm": {},
}


def _plan(handle):  # noqa: ANN001, ANN202
    """Units at 4 and 8 bits, one sparse unit, a dropped block, and dropped sublayers — the
    first block's attention among them, whose KV-cache slot transformers reads lengths from."""
    names, blocks = handle.unit_names, handle.block_names()
    units = {n: (4, 0) for n in names[:7]}
    units[names[8]] = (16, 50)
    units[names[-1]] = (8, 0)
    dropped = (blocks[2], f"{blocks[0]}.self_attn", f"{blocks[1]}.mlp")
    return levels_plan(units, dropped, group_size=32)


@pytest.fixture(scope="module")
def handle():  # noqa: ANN201
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def expected(handle) -> tuple[list[int], torch.Tensor]:  # noqa: ANN001
    """Greedy tokens by full-sequence forwards of the reference runtime (no KV cache), and
    the logits each new token was chosen from."""
    ref = build("reference", handle, _plan(handle))
    seq = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    rows = []
    for _ in range(NEW):
        logits = ref.forward(seq)[0, -1]
        rows.append(logits)
        seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    return seq[0, -NEW:].tolist(), torch.stack(rows)


def _decoded(runtime: Runtime, handle, tokens: list[int]) -> torch.Tensor:  # noqa: ANN001
    """The logits of each step of decoding ``tokens`` after the prompt with the KV cache."""
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    rows = [runtime.start(ids)[0]]
    for t in tokens[:-1]:
        rows.append(runtime.step(torch.tensor([[t]]))[0])
    return torch.stack(rows).float()


def test_every_backend_is_a_runtime() -> None:
    assert set(available()) == {"reference", "torch", "onnxruntime", "tvm", "triton"}
    with pytest.raises(PressoError, match="unknown backend 'nope'"):
        build("nope", None, levels_plan())  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["reference", *CPU])
def test_greedy_with_skips_equals_full_forwards(backend: str, handle, expected) -> None:  # noqa: ANN001
    if backend == "tvm":
        pytest.importorskip("tvm")
    tokens, logits = expected
    runtime = build(backend, handle, _plan(handle), **CPU.get(backend, {}))
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert greedy(runtime, ids, NEW) == tokens
    # Each cached step equals the full forward: a skipped attention layer's slot neither broke
    # the positions nor fed another layer's keys. Units at 8 bits with groups run per channel
    # on torch's int8 kernel (re-quantized), hence the tolerance.
    torch.testing.assert_close(_decoded(runtime, handle, tokens), logits, atol=2e-2, rtol=0)
    if backend != "torch":
        torch.testing.assert_close(_decoded(runtime, handle, tokens), logits, atol=1e-4, rtol=0)


def test_the_cache_holds_one_slot_per_block_that_runs(handle) -> None:  # noqa: ANN001
    runtime = build("torch", handle, _plan(handle))
    ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
    runtime.start(ids)
    cache = runtime._cache  # noqa: SLF001 - what the test is about
    assert len(cache.layers) == len(handle.blocks) - 1  # the dropped block has none
    assert cache.get_seq_length() == ids.shape[1]
    stub = cache.layers[0].keys  # block 0's skipped attention: one number per token
    assert stub.shape[-1] == 1 and cache.layers[1].keys.shape[-1] > 1
    runtime.crop(ids.shape[1] - 1)
    assert cache.get_seq_length() == ids.shape[1] - 1


def test_levels_are_taken_from_the_source(handle) -> None:  # noqa: ANN001
    from presso.compress import QuantSpec, quantize_rtn

    calls = []

    def quantized(unit: str, bits: int):  # noqa: ANN202
        calls.append((unit, bits))
        return quantize_rtn(handle.dense_weight(unit), QuantSpec(bits, 32))

    build("torch", handle, _plan(handle), Levels(quantized=quantized))
    # Block 0's attention is dropped: its four projections are never built.
    assert calls == [(u, 4) for u in handle.unit_names[4:7]] + [(handle.unit_names[-1], 8)]
    assert handle.model.get_submodule(handle.unit_names[0]).weight.dtype == torch.float32


_TRITON = r"""
import json, sys, torch
from presso.models import load_model
from presso.runtimes import build, greedy
from tests.test_runtimes import PROMPT, NEW, _decoded, _plan
handle = load_model("tiny-llama")
runtime = build("triton", handle, _plan(handle), device="cpu")
ids = handle.tokenizer(PROMPT, return_tensors="pt").input_ids
tokens = greedy(runtime, ids, NEW)
print(json.dumps({"tokens": tokens, "logits": _decoded(runtime, handle, tokens).tolist()}))
"""


def test_triton_under_the_interpreter_equals_full_forwards(handle, expected) -> None:  # noqa: ANN001
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _TRITON],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    tokens, logits = expected
    assert out["tokens"] == tokens
    # fp16 activations into the kernel: close, not equal.
    torch.testing.assert_close(torch.tensor(out["logits"]), logits, atol=2e-2, rtol=0)


def test_triton_without_a_gpu_names_the_flag(handle) -> None:  # noqa: ANN001
    pytest.importorskip("triton")
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("a GPU or the interpreter is here")
    with pytest.raises(PressoError, match="--device cuda"):
        build("triton", handle, _plan(handle), device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_on_a_gpu_equals_full_forwards(handle, expected) -> None:  # noqa: ANN001
    pytest.importorskip("triton")
    tokens, logits = expected
    runtime = build("triton", handle, _plan(handle), device="cuda")
    # An fp16 model on the GPU: the logits close to the fp32 reference's, the cache consistent.
    decoded = _decoded(runtime, handle, tokens).cpu()
    torch.testing.assert_close(decoded, logits, atol=5e-2, rtol=0)
    full = runtime.forward(torch.tensor([tokens])).float().cpu()
    assert full.isfinite().all()


def test_tvm_kernels_get_aligned_tensors() -> None:
    # TVM's kernels assume 64-byte aligned data; weights mapped from a safetensors file may sit
    # anywhere (SmolLM2's did, and crashed the process).
    pytest.importorskip("tvm")
    from presso.runtimes._tvm import ALIGNMENT, aligned

    buffer = torch.randn(64 * 64 + 16)
    weight = buffer[10 : 10 + 64 * 64].view(64, 64)
    assert weight.data_ptr() % ALIGNMENT
    assert aligned(weight).data_ptr() % ALIGNMENT == 0
    assert torch.equal(aligned(weight), weight)
    ok = torch.randn(8, 8)
    assert aligned(ok) is ok
