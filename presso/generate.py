"""Run a chosen candidate on a backend for real: greedy generation, and tokens per second.

The candidate is assembled with the run's own compressed weights (its GPTQ levels), on the
backend's runtime (:mod:`presso.runtimes`): torch's packed int4/int8 matmuls, TVM's tuned
kernels, Triton's (on a GPU, or on the CPU under ``TRITON_INTERPRET=1``), or an ONNX Runtime
graph with MatMulNBits. Prefill (the prompt in one forward) and
decode (one token at a time against the KV cache) are timed apart, as their costs differ.
"""

from __future__ import annotations

import time
from typing import Any

from presso.errors import PressoError
from presso.plan import Plan
from presso.profilers import make_profiler
from presso.runtimes import Levels, Runtime


def generate(
    source: Any,
    plan: Plan,
    backend: str,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    threads: int = 1,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Greedy-generate from ``prompt`` with the candidate on ``backend``; the text, and prefill
    and decode throughput in tokens/s. ``options``: further profiler options (e.g. tvm trials)."""
    import torch

    # The plan and the backend are checked before the model loads (seconds), so that a
    # mistyped backend name fails at once.
    _ = plan.group_size  # refuses a plan whose units mix group sizes
    profiler = make_profiler(backend, device=device, threads=threads, **(options or {}))
    handle = source.handle
    if handle.kind != "causal-lm":
        raise PressoError(f"{handle.name} is an encoder: it does not generate text")
    ids = handle.tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise PressoError("the prompt is empty; give some text with --prompt")
    levels = Levels(
        quantized=source.quantized,
        sparse=lambda unit, pct: source.sparse(unit, pct).dequantize(),
        structured=source.structured,
    )
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runtime = profiler.build(handle, plan, levels)
        # Untimed first: one-time costs of the first prefill and decode step (TVM compiling or
        # tuning a kernel for a new row count, first-call allocations) are not throughput.
        _greedy(runtime, ids, min(2, max_new_tokens))
        tokens, prefill_s, decode_s = _greedy(runtime, ids, max_new_tokens)
    finally:
        torch.set_num_threads(old)
    new = tokens[ids.shape[1] :]
    return {
        "backend": backend,
        "text": handle.tokenizer.decode(new, skip_special_tokens=True),
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": len(new),
        "prefill_tok_s": ids.shape[1] / prefill_s,
        "decode_tok_s": (len(new) - 1) / decode_s if len(new) > 1 and decode_s > 0 else None,
    }


def _greedy(runtime: Runtime, ids: Any, max_new_tokens: int) -> tuple[list[int], float, float]:
    """Prefill once (a fresh KV cache), then one token per step; the tokens and the seconds of
    each phase."""
    import torch

    start = time.perf_counter()
    logits = runtime.start(ids)
    prefill_s = time.perf_counter() - start
    tokens = ids.tolist()[0] + [int(logits[0].argmax())]
    start = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        logits = runtime.step(torch.tensor([[tokens[-1]]]))
        tokens.append(int(logits[0].argmax()))
    return tokens, prefill_s, time.perf_counter() - start
