"""presso's own kernels for compressed layers, each with a torch reference.

* :mod:`presso.kernels._packing` — the packed low-bit weight format (2/3/4/8 bits in int32
  words along K, fp16 group scales and zeros), ``pack``/``unpack`` and ``reference_matmul``.
* :mod:`presso.kernels._triton_gemm` — the Triton weight-only GEMM ``wq_matmul`` (CUDA GPUs;
  CPU under ``TRITON_INTERPRET=1``) and ``WQLinear``, an ``nn.Linear`` that runs it.
* :mod:`presso.kernels._tvm_gemm` — TVM int4 / int8 / fp32 weight-only GEMMs for the llvm CPU
  target, meta_schedule-tuned once per machine (``compile_gemm``), ``reference_gemm``,
  ``pack_int4``.

Nothing heavy is imported here: names are resolved on first use, so ``import presso`` never
imports torch or triton through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PackedWeight": "_packing",
    "pack": "_packing",
    "unpack": "_packing",
    "reference_matmul": "_packing",
    "wq_matmul": "_triton_gemm",
    "WQLinear": "_triton_gemm",
    "TileConfig": "_triton_gemm",
    "compile_gemm": "_tvm_gemm",
    "reference_gemm": "_tvm_gemm",
    "pack_int4": "_tvm_gemm",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'presso.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"presso.kernels.{_LAZY[name]}"), name)
