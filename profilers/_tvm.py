"""The TVM backend: layers timed with the meta_schedule-tuned CPU kernels of ``kernels/``.

A level runs in the kernel that holds its codes: 2-4 bits in the int4 kernel, 5-8 bits in the
int8 kernel (``detail["carrier_bits"]`` says which), 16 bits in the dense fp32 kernel. A pruned
layer runs the same kernel on its pruned weight: these kernels do not skip zeros
(``detail["sparsity_exploited"]`` is False). Tuning records are kept in the profile database,
so each kernel shape is tuned once per machine (and thread count). CPU (llvm) only: CUDA is
not implemented. Kernels run on the profiler's ``threads`` (None: every core), torch's ops in
a timed model too; ops are timed over weight copies cycled from memory, as the torch and ONNX
Runtime backends time them.

End to end, :func:`assemble` gives a copy of the model whose compressed Linear layers call the
TVM kernels (activations and outputs passed by DLPack, no copy) while attention, norms and
embeddings stay in torch.
"""

from __future__ import annotations

import copy
import functools
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
    unit_levels,
    weight_copies,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from presso.compress._quant import QuantizedWeight
    from presso.plan import Plan
    from presso.profilers._database import ProfileDatabase

#: Where real levels come from: ``(unit name, bits) -> QuantizedWeight`` (e.g. GPTQ levels).
WeightSource = Callable[[str, int], "QuantizedWeight"]


def tvm_fingerprint() -> str:
    """This machine's fingerprint for TVM kernels (CPU facts plus the TVM versions): the
    machine tuning records are stored under."""
    from presso.kernels._tvm_gemm import tvm_versions
    from presso.profilers._fingerprint import fingerprint

    return fingerprint("cpu", tvm_versions())[0]


def carrier_bits(bits: int) -> int:
    """The kernel width a ``bits``-wide level runs in: 4 (int4), 8 (int8) or 16 (dense fp32)."""
    if bits >= DENSE_BITS:
        return DENSE_BITS
    if 2 <= bits <= 4:
        return 4
    if 5 <= bits <= 8:
        return 8
    raise PressoError(f"tvm backend: no kernel for {bits}-bit weights (levels are 2..8 or 16)")


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

    def assemble(
        self, handle: Any, plan: Plan, *, weights: WeightSource | None = None
    ) -> nn.Module:
        """:func:`assemble` with this profiler's tuning budget and database."""
        return assemble(handle, plan, profiler=self, weights=weights)

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
        import torch

        from presso.profilers._base import SEED
        from presso.profilers._torch import TorchProfiler

        if handle.kind != "causal-lm" and workload.phase == "decode":
            raise PressoError(
                f"model {handle.name} is an {handle.kind}: it has no decode phase; "
                "use a prefill workload"
            )
        model = self.assemble(handle, plan)
        with self._threads(), torch.inference_mode():
            gen = torch.Generator().manual_seed(SEED)
            shape = (workload.batch, workload.seq_len)
            ids = torch.randint(model.config.vocab_size, shape, generator=gen)
            # Same forward (and decode-step cache handling) as the torch backend times.
            run = TorchProfiler._forward(model, handle.kind, ids, workload.phase)
            return self._timed(
                run,
                op="model",
                workload=workload,
                linear_kernels="tvm",
                trials=self.trials,
                dropped=list(plan.dropped),
            )


def row_bucket(rows: int) -> int:
    """The row count a kernel is compiled for: ``rows`` rounded up to a power of two."""
    return 1 << (max(rows, 1) - 1).bit_length()


def _pruned(weight: torch.Tensor, sparsity: int) -> torch.Tensor:
    from presso.compress._sparse import magnitude_prune

    return magnitude_prune(weight, sparsity).weight


@functools.cache
def _tvm_linear() -> type:
    """The nn.Module class that runs one Linear with a TVM kernel (built on first use: torch is
    not imported with this module)."""
    from torch import nn

    class TvmLinear(nn.Module):
        """``y = x W^T + b`` with ``W`` held in the kernel's layout (packed int4, int8 codes, or
        fp32). Kernels are compiled for a fixed row count: inputs are zero-padded to the next
        power of two, so that prompts of every length share a few tuned kernels."""

        def __init__(
            self,
            tensors: list[torch.Tensor],
            bias: torch.Tensor | None,
            shape: tuple[int, int],
            bits: int,
            group_size: int | None,
            profiler: TvmProfiler,
        ) -> None:
            super().__init__()
            self.out_features, self.in_features = shape
            self.bits, self.carrier = bits, carrier_bits(bits)
            self.group_size = group_size
            self.weights = tensors
            self.bias = None if bias is None else nn.Parameter(bias.detach().float())
            self.profiler = profiler

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import torch

            rows = x.reshape(-1, self.in_features).float()
            m = rows.shape[0]
            bucket = row_bucket(m)
            if bucket != m:
                rows = torch.cat([rows, rows.new_zeros(bucket - m, self.in_features)])
            gemm = self.profiler._kernel(
                bucket, self.out_features, self.in_features, self.carrier, self.group_size
            )
            y = gemm(rows.contiguous(), *self.weights)[:m].view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return (
                f"in={self.in_features}, out={self.out_features}, bits={self.bits} "
                f"(tvm {'dense' if self.carrier == DENSE_BITS else f'int{self.carrier}'} kernel)"
            )

    TvmLinear.__module__ = __name__
    return TvmLinear


def _unit_module(
    handle: Any,
    linear: Any,
    name: str,
    level: tuple[int, int],
    plan: Plan,
    profiler: TvmProfiler,
    weights: WeightSource | None,
) -> nn.Module:
    from presso.compress._quant import QuantSpec, quantize_rtn
    from presso.kernels._tvm_gemm import pack_int4

    bits, sparsity = level
    carrier = carrier_bits(bits)
    weight = handle.dense_weight(name)
    if sparsity:
        weight = _pruned(weight, sparsity)
    if carrier == DENSE_BITS:
        tensors, group = [weight.detach().float().contiguous()], None
    else:
        try:
            if weights is not None:
                q = weights(name, bits)
            else:
                q = quantize_rtn(weight, QuantSpec(bits, plan.group_size))
        except ValueError as err:
            raise PressoError(f"unit {name}: {err}") from None
        codes = pack_int4(q.codes) if carrier == 4 else q.codes.contiguous()
        tensors = [codes, q.scales.contiguous(), q.zeros.contiguous()]
        group = q.spec.group_size
    return _tvm_linear()(tensors, linear.bias, tuple(weight.shape), bits, group, profiler)


def assemble(
    handle: Any,
    plan: Plan,
    *,
    profiler: TvmProfiler | None = None,
    weights: WeightSource | None = None,
) -> nn.Module:
    """A copy of ``handle.model`` with every unit's Linear run by a TVM kernel at its assigned
    ``(bits, sparsity)`` (units not named: the dense fp32 kernel), dropped blocks removed and
    dropped ``self_attn`` / ``mlp`` sublayers made no-ops (as the torch backend does).

    weights: ``(name, bits) -> QuantizedWeight`` (e.g. GPTQ levels); without it units are
    quantized here with RTN at ``plan.group_size`` (right for latency, not for accuracy).
    Kernels compile — and tune, per ``profiler`` — on first use of each shape.
    ``handle.model`` is not modified.
    """
    from presso.profilers._torch import TorchProfiler, _classes
    from presso.surgery import drop_blocks

    profiler = profiler or TvmProfiler()
    blocks, sublayers = TorchProfiler._check_assignment(handle, plan, "dense", None)
    model = copy.deepcopy(handle.model)
    skipped = tuple(s + "." for s in sublayers)
    for name in handle.unit_names:
        if handle.block_of(name) in blocks or name.startswith(skipped):
            continue  # removed with what it is in
        level = unit_levels(plan, name)
        new = _unit_module(handle, model.get_submodule(name), name, level, plan, profiler, weights)
        _replace(model, name, new)
    classes = _classes()
    for name in sublayers:
        skip = (
            classes.SkipAttention(handle.block_of(name))
            if name.endswith("self_attn")
            else (classes.SkipMLP())
        )
        _replace(model, name, skip)
    if blocks:
        drop_blocks(model, handle.blocks_prefix, blocks)
    return model.eval()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
