"""The ``triton`` backend: presso's own packed low-bit GEMM (``presso.kernels``) on a CUDA GPU.

A ``w2``/``w3``/``w4``/``w8`` layer is timed with :func:`presso.kernels._triton_gemm.wq_matmul`
on packed weights (the real kernel, autotuned for the shape before timing); a dense layer with
torch's fp16 GEMM (cuBLAS), the baseline a deployment would otherwise run. Sparsity is not
exploited by these kernels: a sparse layer runs at its full shape, and the measurement says so.

Timing: one layer's kernel takes microseconds at decode, less than Python's launch overhead,
so calls are captured in a CUDA graph and replayed; the calls cycle through enough copies of
the weight to exceed twice the GPU's L2 cache, so each call streams its weight from memory
as a layer of a real model does. Reported times are per call.

A whole candidate is timed as :mod:`presso.runtimes._triton` builds it.

Importing this module is light: torch and triton are imported when a profiler is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.profilers._base import (
    DENSE_BITS,
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    register,
)

if TYPE_CHECKING:
    from presso.plan import Plan

#: Kernel calls per CUDA-graph replay, at least: amortises the replay's launch and sync.
_CALLS_PER_REPLAY = 32
#: Weight copies at most (the rotation that keeps weights out of L2).
_MAX_COPIES = 64


def _cuda(device: str) -> Any:
    """torch, after checking that ``device`` is a usable CUDA device."""
    import torch

    if not str(device).startswith("cuda"):
        raise PressoError(
            f"the triton backend runs on CUDA devices, got device={device!r}: "
            "use device='cuda' (--device cuda on the command line), or a CPU backend "
            "(torch, onnxruntime, tvm)"
        )
    if not torch.cuda.is_available():
        raise PressoError(
            "the triton backend needs a CUDA GPU, and torch sees none "
            "(torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU "
            "and a CUDA build of torch, or choose a CPU backend (torch, onnxruntime, tvm)"
        )
    return torch


@register
class TritonProfiler(Profiler):
    """Times packed low-bit layers with presso's Triton GEMM, dense ones with cuBLAS fp16."""

    name = "triton"
    requires = ("triton", "torch")
    extra = "triton"

    def __init__(
        self,
        *,
        device: str = "cuda",
        warmup: int = 5,
        repeats: int = 25,
        threads: int | None = None,
    ) -> None:
        super().__init__(device=device, warmup=warmup, repeats=repeats, threads=threads)
        from presso.runtimes._triton import check_device

        # A CUDA device; or the CPU under TRITON_INTERPRET=1, where models build and run (tests,
        # generate) and timings fail as data: the interpreter's speed is no deployment's.
        check_device(device)

    # ------------------------------------------------------------------ one layer

    def _time_op(self, op: LinearOp, workload: Workload) -> Measurement:
        torch = _cuda(self.device)
        n, k, m = op.out_features, op.in_features, workload.rows
        x = torch.randn(m, k, device=self.device, dtype=torch.float16)
        detail: dict[str, Any] = {"device_name": torch.cuda.get_device_name(self.device)}
        if op.sparsity:
            detail["sparsity"] = (
                f"not exploited: the Triton kernels are dense, so this {op.sparsity}% sparse "
                "layer runs at its full shape"
            )
        if op.bits >= DENSE_BITS:
            weight = torch.randn(n, k, device=self.device, dtype=torch.float16) * 0.02
            calls = self._rotation(weight, lambda w: torch.nn.functional.linear(x, w))
            detail.update(kernel="torch.nn.functional.linear fp16 (cuBLAS)", bits=DENSE_BITS)
            return self._graph_timed(calls, op=op.key, workload=workload, **detail)

        from presso.kernels._triton_gemm import chosen_config, wq_matmul

        packed = self._packed(op)
        calls = self._rotation(packed, lambda p: wq_matmul(x, p))
        calls[0]()  # autotunes once for this (M, N, K, bits, group), outside the timed graph
        detail.update(
            kernel="presso triton wq_matmul",
            bits=op.bits,
            group_size=packed.group_size,
            bits_per_weight=8 * packed.nbytes / (n * k),
            tile=chosen_config(),
        )
        return self._graph_timed(calls, op=op.key, workload=workload, **detail)

    def _packed(self, op: LinearOp) -> Any:
        """A packed random weight of ``op``'s shape and level, on this profiler's device."""
        import torch

        from presso.compress import QuantSpec, quantize_rtn
        from presso.kernels._packing import PACKED_BITS, pack

        k = op.in_features
        if op.bits not in PACKED_BITS:
            raise PressoError(
                f"{op.key}: the triton kernels run {PACKED_BITS}-bit weights, not {op.bits}-bit"
            )
        if op.group_size is not None and k % op.group_size:
            raise PressoError(
                f"{op.key}: group_size {op.group_size} does not divide in_features {k}"
            )
        spec = QuantSpec(bits=op.bits, group_size=op.group_size)
        weight = torch.randn(op.out_features, k, device=self.device) * 0.02
        return pack(quantize_rtn(weight, spec))

    def _rotation(self, weight: Any, call: Callable[[Any], Any]) -> list[Callable[[], Any]]:
        """Calls of ``call`` over enough copies of ``weight`` (a tensor or a PackedWeight) to
        exceed twice the L2 cache, repeated to at least ``_CALLS_PER_REPLAY`` calls."""
        import torch

        l2 = torch.cuda.get_device_properties(self.device).L2_cache_size
        copies = min(_MAX_COPIES, max(1, math.ceil(2 * l2 / max(weight.nbytes, 1))))
        pool = [weight] + [_clone(weight) for _ in range(copies - 1)]
        calls = [lambda w=w: call(w) for w in pool]
        return calls * max(1, math.ceil(_CALLS_PER_REPLAY / len(calls)))

    def _graph_timed(
        self, calls: list[Callable[[], Any]], *, op: str, workload: Workload, **detail: Any
    ) -> Measurement:
        """Per-call median/spread of ``calls``, replayed as one CUDA graph (or, if capture
        fails, launched from Python, which then includes the launch overhead)."""
        torch = _cuda(self.device)
        for call in calls:  # compile, autotune and allocate outside the graph
            call()
        torch.cuda.synchronize()
        run: Callable[[], Any]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for call in calls:
                    call()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for call in calls:
                    call()
            run, detail["timing"] = graph.replay, "CUDA graph replay, per call"
        except Exception as err:  # noqa: BLE001 - fall back to eager launches, and say so
            torch.cuda.synchronize()
            detail["timing"] = f"eager launches, per call (graph capture failed: {err})"

            def run() -> None:
                for call in calls:
                    call()

        m = self._timed(run, op=op, workload=workload, sync=torch.cuda.synchronize, **detail)
        m.median_ms = None if m.median_ms is None else m.median_ms / len(calls)
        m.spread_ms = None if m.spread_ms is None else m.spread_ms / len(calls)
        m.detail["calls_per_run"] = len(calls)
        return m

    # ------------------------------------------------------------------ whole model

    def _time_model(self, handle: Any, plan: Plan, workload: Workload) -> Measurement:
        torch = _cuda(self.device)
        runtime = self.build(handle, plan)
        vocab = getattr(handle.model.config, "vocab_size", 1000)
        return self._time_runtime(
            runtime, vocab, workload, sync=torch.cuda.synchronize, **runtime.detail
        )


def _clone(weight: Any) -> Any:
    from presso.kernels._packing import PackedWeight

    if isinstance(weight, PackedWeight):
        return PackedWeight(
            weight.qweight.clone(),
            weight.scales.clone(),
            weight.zeros.clone(),
            weight.bits,
            weight.group_size,
        )
    return weight.clone()
