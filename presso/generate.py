"""Run a chosen candidate on a backend for real: greedy generation, and tokens per second.

The candidate is assembled with the run's own compressed weights (its GPTQ levels), on the
backend's kernels: torch's packed int4/int8 matmuls, TVM's tuned kernels, Triton's on a
GPU, or an ONNX Runtime graph with MatMulNBits. Prefill (the prompt in one forward) and
decode (one token at a time against the KV cache) are timed apart, as their costs differ.
"""

from __future__ import annotations

import time
from typing import Any

from presso.errors import PressoError
from presso.models import cache_kwargs
from presso.plan import Plan
from presso.profilers import make_profiler


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
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if backend == "onnxruntime":
            step = _onnx_stepper(source, handle, plan, threads, device)
        elif hasattr(profiler, "assemble"):
            model = profiler.assemble(handle, plan, weights=source.quantized)
            step = _torch_stepper(model, device)
        else:
            raise PressoError(f"the {backend} backend cannot assemble a whole model yet")
        # Untimed first: one-time costs of the first prefill and decode step (TVM compiling or
        # tuning a kernel for a new row count, first-call allocations) are not throughput.
        _greedy(step, ids, min(2, max_new_tokens))
        tokens, prefill_s, decode_s = _greedy(step, ids, max_new_tokens)
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


def _greedy(step: Any, ids: Any, max_new_tokens: int) -> tuple[list[int], float, float]:
    """Prefill once (``first``: the stepper starts a fresh KV cache), then one token per step;
    the tokens and the seconds of each phase."""
    start = time.perf_counter()
    logits = step(ids.tolist()[0], first=True)
    prefill_s = time.perf_counter() - start
    tokens = ids.tolist()[0] + [int(logits.argmax())]
    start = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        logits = step([tokens[-1]], first=False)
        tokens.append(int(logits.argmax()))
    return tokens, prefill_s, time.perf_counter() - start


def _torch_stepper(model: Any, device: str) -> Any:
    import torch
    from transformers import DynamicCache

    keyword = next(iter(cache_kwargs(model, None)))  # once: not in every timed step
    with_cache: dict[str, Any] = {}

    def step(new: list[int], *, first: bool) -> Any:
        if first:
            with_cache[keyword] = DynamicCache()
        ids = torch.tensor([new], device=device)
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, **with_cache)
        return out.logits[0, -1].float().cpu()

    return step


def _onnx_stepper(source: Any, handle: Any, plan: Plan, threads: int, device: str) -> Any:
    import tempfile
    from pathlib import Path

    import numpy as np

    from presso.onnx_model import build_onnx, make_session

    with tempfile.TemporaryDirectory(prefix="presso-generate-") as tmp:
        path = build_onnx(
            handle,
            plan,
            Path(tmp) / "model.onnx",
            weights=source.quantized,
            sparse=lambda unit, pct: source.sparse(unit, pct).dequantize(),
            kv_cache=True,
        )
        session = make_session(path, threads=threads, device=device)
    pasts = [a for a in session.get_inputs() if a.name.startswith("past_")]
    empty = {a.name: np.zeros((1, a.shape[1], 0, a.shape[3]), dtype=np.float32) for a in pasts}
    state: dict[str, Any] = {}
    outputs = ["logits"] + [a.name.replace("past_", "present_") for a in pasts]

    def step(new: list[int], *, first: bool) -> Any:
        if first:
            state.update(empty)
        feed = {"input_ids": np.array([new], dtype=np.int64), **state}
        logits, *presents = session.run(outputs, feed)
        for a, value in zip(pasts, presents):
            state[a.name] = value
        return logits[0, -1]

    return step
