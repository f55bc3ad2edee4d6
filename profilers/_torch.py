"""The torch eager backend: each level timed with the kernel a torch deployment would run
(the kernels of :mod:`presso.runtimes._torch`, which its module docstring lists); a whole
candidate is timed as that runtime builds it.

* 2-8 bits: the packed int4 / int8 weight-only GEMM over a seeded random weight quantized with
  RTN and packed in the kernel's layout;
* unstructured sparsity (dense bits): the faster of torch's CSR sparse x dense product and the
  dense GEMM of the pruned weight, as a deployment would pick; with low bits, sparsity is not
  exploited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.profilers._base import (
    DENSE_BITS,
    SEED,
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    op_weight_copies,
    register,
)
from presso.runtimes._base import check_level, quantized_level

if TYPE_CHECKING:
    import torch

    from presso.models import ModelHandle
    from presso.plan import Plan

__all__ = ["TorchProfiler", "quantized_level"]


# --------------------------------------------------------------------------- the profiler


@register
class TorchProfiler(Profiler):
    """Torch eager on ``device`` ``"cpu"`` or ``"cuda"`` (see the module docstring for kernels)."""

    name = "torch"
    requires = ("torch",)
    extra = ""

    def __init__(self, *, packed_dtype: str = "bfloat16", **options: Any) -> None:
        """``packed_dtype``: activations of the packed kernels, ``"bfloat16"`` (their fast path)
        or ``"float32"`` (CPU only: exact but slow, for checking numerics); other options as
        :class:`Profiler`."""
        super().__init__(**options)
        import torch

        if self.device not in ("cpu", "cuda"):
            raise PressoError(
                f"torch profiler: device must be 'cpu' or 'cuda', not {self.device!r}"
            )
        if self.device == "cuda" and not torch.cuda.is_available():
            raise PressoError("torch profiler: device 'cuda' asked for, but no CUDA GPU is visible")
        if packed_dtype not in ("bfloat16", "float32") or (
            packed_dtype == "float32" and self.device == "cuda"
        ):
            raise PressoError(
                f"torch profiler: packed_dtype must be 'bfloat16' (or 'float32' on CPU), "
                f"not {packed_dtype!r}"
            )
        self.packed_dtype = getattr(torch, packed_dtype)
        self.dtype = torch.float32 if self.device == "cpu" else torch.float16
        self._sparse_choice: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ ops

    def _time_op(self, op: LinearOp, workload: Workload) -> Measurement:
        import torch
        import torch.nn.functional as F

        from presso.runtimes._torch import PackedLinear

        check_level(op.key, op.bits, op.sparsity)
        gen = torch.Generator().manual_seed(SEED)
        weight = torch.randn(op.out_features, op.in_features, generator=gen) * 0.02
        x = torch.randn(workload.rows, op.in_features, generator=gen).to(self.device, self.dtype)
        # Distinct weight copies, cycled: inside a model a layer is read from memory, not cache.
        n = op_weight_copies(op) if self.device == "cpu" else 1
        with self._threads(), torch.inference_mode():
            if op.bits < DENSE_BITS:
                qw = quantized_level(weight, op.bits, op.sparsity, op.group_size)
                layers = [
                    PackedLinear.from_quantized(qw, device=self.device, dtype=self.packed_dtype)
                    for _ in range(n)
                ]
                layer = layers[0]
                detail: dict[str, Any] = {
                    "kernel": layer.kernel,
                    "carrier_bits": layer.carrier_bits,
                    "exact": layer.exact,
                    "activations": str(layer.scales.dtype).removeprefix("torch."),
                }
                if op.sparsity:
                    detail["sparsity_exploited"] = False
                return self._time(lambda: [f(x) for f in layers], op, workload, calls=n, **detail)
            if op.sparsity:
                return self._time_sparse(op, workload, weight, x)
            ws = [weight.to(self.device, self.dtype).clone() for _ in range(n)]
            return self._time(
                lambda: [F.linear(x, w) for w in ws], op, workload, calls=n, kernel="dense"
            )

    def _time_sparse(
        self, op: LinearOp, workload: Workload, weight: torch.Tensor, x: torch.Tensor
    ) -> Measurement:
        """Time CSR and the dense GEMM of the pruned weight; report the faster."""
        import torch.nn.functional as F

        from presso.compress import magnitude_prune
        from presso.runtimes._torch import SparseLinear

        pruned = magnitude_prune(weight, op.sparsity).weight.to(self.device, self.dtype)
        csr = SparseLinear(pruned, None)
        by_csr = self._time(lambda: csr(x), op, workload, kernel="csr")
        by_dense = self._time(lambda: F.linear(x, pruned), op, workload, kernel="dense")
        best = min((by_csr, by_dense), key=lambda m: m.median_ms or float("inf"))
        best.detail.update(csr_ms=by_csr.median_ms, dense_ms=by_dense.median_ms)
        return best

    def _time(
        self,
        run: Callable[[], Any],
        op: LinearOp,
        workload: Workload,
        *,
        calls: int = 1,
        **detail: Any,
    ) -> Measurement:
        return self._timed(
            run, op=op.key, workload=workload, sync=self._sync, calls=calls, **detail
        )

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    # ------------------------------------------------------------------ models

    def runtime_options(self) -> dict[str, Any]:
        return {"device": self.device, "packed_dtype": self.packed_dtype}

    def _time_model(self, handle: ModelHandle, plan: Plan, workload: Workload) -> Measurement:
        from presso.runtimes import build

        if handle.kind == "diffusion":  # a candidate is a sampling schedule: time one sampling
            from presso.profilers._sampling import time_sampling

            return time_sampling(self, handle, plan, workload)
        if handle.kind != "causal-lm" and workload.phase == "decode":
            raise PressoError(
                f"model {handle.name} is an {handle.kind}: it has no decode phase; "
                f"use a prefill workload"
            )
        with self._threads():
            # Sparse units run whichever kernel this profiler times faster at this workload.
            runtime = build(
                self.name,
                handle,
                plan,
                None,
                **self.runtime_options(),
                sparse_kernel=lambda out, inp, pct: self._fastest_sparse(
                    LinearOp(out, inp, DENSE_BITS, pct), workload
                ),
            )
            vocab = handle.model.config.vocab_size
            return self._time_runtime(runtime, vocab, workload, sync=self._sync, **runtime.detail)

    def _fastest_sparse(self, op: LinearOp, workload: Workload) -> str:
        key = (op.key, workload.key)
        if key not in self._sparse_choice:
            m = self._time_op(op, workload)
            self._sparse_choice[key] = m.detail["kernel"]
        return self._sparse_choice[key]
