"""The TVM backend: layers timed with the meta_schedule-tuned CPU kernels of ``kernels/``.

A level runs in the kernel that holds its codes: 2-4 bits in the int4 kernel, 5-8 bits in the
int8 kernel (``detail["carrier_bits"]`` says which), 16 bits in the dense fp32 kernel. A pruned
layer runs the same kernel on its pruned weight: these kernels do not skip zeros
(``detail["sparsity_exploited"]`` is False). Tuning records are kept in the profile database,
so each kernel shape is tuned once per machine (and thread count). CPU (llvm) only: CUDA is
not implemented. Kernels run on the profiler's ``threads`` (None: every core), torch's ops in
a timed model too; ops are timed over weight copies cycled from memory, as the torch and ONNX
Runtime backends time them.

End to end, a candidate is timed as :mod:`presso.runtimes._tvm` builds it, its layers asking
this profiler for their (tuned) kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.profilers._base import (
    DENSE_BITS,
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    register,
    weight_copies,
)
from presso.runtimes._tvm import carrier_bits, row_bucket

__all__ = ["TvmProfiler", "carrier_bits", "row_bucket", "tvm_fingerprint"]

if TYPE_CHECKING:
    import torch

    from presso.plan import Plan
    from presso.profilers._database import ProfileDatabase


def tvm_fingerprint() -> str:
    """This machine's fingerprint for TVM kernels (CPU facts plus the TVM versions): the
    machine tuning records are stored under."""
    from presso.kernels._tvm_gemm import tvm_versions
    from presso.profilers._fingerprint import fingerprint

    return fingerprint("cpu", tvm_versions())[0]


@register
class TvmProfiler(Profiler):
    """Times ops with TVM's tuned llvm kernels. ``db``: where tuning records live (None: this
    machine's profile database, ``<cache>/profiles.sqlite``, so each kernel shape is tuned once
    per machine); ``trials``: meta_schedule trials per untuned kernel shape (0 compiles each
    kernel's default schedule without tuning)."""

    name = "tvm"
    requires = ("tvm",)
    extra = "tvm"

    def __init__(
        self,
        *,
        device: str = "cpu",
        warmup: int = 5,
        repeats: int = 25,
        threads: int | None = None,
        db: ProfileDatabase | None = None,
        trials: int = 16,
    ) -> None:
        if device != "cpu":
            raise PressoError(
                f"tvm backend: device {device!r} is not supported; only 'cpu' (llvm) is "
                "implemented — use the triton or torch backend on a GPU"
            )
        super().__init__(device=device, warmup=warmup, repeats=repeats, threads=threads)
        self.db = db
        self.trials = trials
        # Compiled kernels by (rows, out, in, bits, group): TvmLinear asks on every forward, and
        # the fingerprint and target behind compile_gemm's own cache cost ~0.75 ms a call.
        self._kernels: dict[tuple[int, int, int, int, int | None], Any] = {}

    def versions(self) -> dict[str, str]:
        from presso.kernels._tvm_gemm import tvm_versions

        return tvm_versions()

    def runtime_options(self) -> dict[str, Any]:
        # A model's layers ask this profiler for their kernels: tuned (per its budget and
        # database) and sized to its threads.
        return {"device": self.device, "kernels": self._kernel}

    def _kernel(self, rows: int, out_f: int, in_f: int, bits: int, group_size: int | None) -> Any:
        from presso.kernels._tvm_gemm import set_threads

        # TVM's pool is per process: size it to this profiler's threads before every kernel
        # (a no-op when unchanged), so tuning, timing and a model's calls all run on them.
        set_threads(self.threads)
        key = (rows, out_f, in_f, bits, group_size)
        kernel = self._kernels.get(key)
        if kernel is None:
            from presso.kernels._tvm_gemm import compile_gemm

            if self.db is None and self.trials > 0:
                from presso.profilers._database import ProfileDatabase

                self.db = ProfileDatabase()
            fp = tvm_fingerprint() if self.db is not None else None
            kernel = self._kernels[key] = compile_gemm(
                *key, trials=self.trials, db=self.db, fingerprint=fp
            )
        return kernel

    def _time_op(self, op: LinearOp, workload: Workload) -> Measurement:
        import torch

        from presso.kernels._tvm_gemm import random_weights

        carrier = carrier_bits(op.bits)
        group = None if carrier == DENSE_BITS else op.group_size
        rows = row_bucket(workload.rows)  # as an assembled model runs them (see TvmLinear)
        gemm = self._kernel(rows, op.out_features, op.in_features, carrier, group)
        x = torch.randn(rows, op.in_features)
        # Distinct weight copies, cycled, as the torch and ONNX Runtime backends time them:
        # inside a model a layer's weights come from memory, not from cache.
        copies = [
            random_weights(gemm.shape, seed=i)
            for i in range(weight_copies(gemm.shape.weight_bytes))
        ]
        if op.sparsity and carrier == DENSE_BITS:
            for weights in copies:
                weights[0] = _pruned(weights[0], op.sparsity)
        out = torch.empty(rows, op.out_features)
        with self._threads():
            return self._timed(
                lambda: [gemm(x, *weights, out=out) for weights in copies],
                op=op.key,
                workload=workload,
                calls=len(copies),
                kernel=gemm.shape.kernel,
                kernel_rows=rows,
                carrier_bits=carrier,
                tuned=gemm.record is not None,
                trials=self.trials,
                sparsity_exploited=False,
            )

    def _time_model(self, handle: Any, plan: Plan, workload: Workload) -> Measurement:
        if handle.kind != "causal-lm" and workload.phase == "decode":
            raise PressoError(
                f"model {handle.name} is an {handle.kind}: it has no decode phase; "
                "use a prefill workload"
            )
        runtime = self.build(handle, plan)
        with self._threads():
            return self._time_runtime(
                runtime,
                handle.model.config.vocab_size,
                workload,
                linear_kernels="tvm",
                trials=self.trials,
                dropped=list(plan.dropped),
            )


def _pruned(weight: torch.Tensor, sparsity: int) -> torch.Tensor:
    from presso.compress._sparse import magnitude_prune

    return magnitude_prune(weight, sparsity).weight
