"""Runtimes: a candidate built for real on one backend, ready to run.

``build(backend, handle, plan, levels) -> Runtime``: the model of ``handle`` with ``plan``
applied on ``backend``'s kernels — ``reference`` (fake-quantized fp32 weights: what the
evaluator scores), ``torch`` (packed int4/int8 and CSR kernels), ``onnxruntime`` (a graph with
MatMulNBits), ``tvm`` (tuned llvm GEMMs) and ``triton`` (presso's packed GEMM; CUDA, or CPU
under ``TRITON_INTERPRET=1``). Every runtime skips dropped blocks and sublayers the same way
(:mod:`presso.runtimes._skip`), so a skipped attention layer keeps the KV cache right.

Profilers time what runtimes build; ``presso generate`` runs it. Importing this package is
light: each backend's libraries are imported when it builds.
"""

from __future__ import annotations

from presso.runtimes._base import (
    RUNTIMES,
    Levels,
    ModuleRuntime,
    Runtime,
    available,
    build,
    greedy,
    runtime_module,
)

__all__ = [
    "RUNTIMES",
    "Levels",
    "ModuleRuntime",
    "Runtime",
    "available",
    "build",
    "greedy",
    "runtime_module",
]
