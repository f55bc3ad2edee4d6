"""The TVM runtime: compressed Linear layers run by the tuned llvm GEMMs of ``kernels/``.

A level runs in the kernel that holds its codes: 2-4 bits in the int4 kernel, 5-8 bits in the
int8 kernel, 16 bits in the dense fp32 kernel; a pruned layer runs the same kernel on its
pruned weight (the kernels do not skip zeros). Activations and outputs pass by DLPack, no
copy; attention, norms and embeddings stay in torch. CPU (llvm) only.

Kernels are compiled for a fixed row count: inputs are zero-padded to the next power of two
(:func:`row_bucket`), so that prompts of every length share a few kernels. Which kernel a
shape gets comes from ``kernels``, ``(rows, out, in, carrier bits, group) -> gemm``: the TVM
profiler's (tuned, its records in the profile database), or here untuned ones.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.runtimes._base import DENSE_BITS, Levels, ModuleRuntime, unit_levels, unit_weight
from presso.runtimes._skip import apply_drops, removed, replace

if TYPE_CHECKING:
    import torch
    from torch import nn

    from presso.models import ModelHandle
    from presso.plan import Plan

#: ``(rows, out_features, in_features, carrier bits, group size) -> compiled GEMM``.
KernelSource = Callable[[int, int, int, int, "int | None"], Any]


def carrier_bits(bits: int) -> int:
    """The kernel width a ``bits``-wide level runs in: 4 (int4), 8 (int8) or 16 (dense fp32)."""
    if bits >= DENSE_BITS:
        return DENSE_BITS
    if 2 <= bits <= 4:
        return 4
    if 5 <= bits <= 8:
        return 8
    raise PressoError(f"tvm backend: no kernel for {bits}-bit weights (levels are 2..8 or 16)")


def row_bucket(rows: int) -> int:
    """The row count a kernel is compiled for: ``rows`` rounded up to a power of two."""
    return 1 << (max(rows, 1) - 1).bit_length()


def untuned_kernels() -> KernelSource:
    """Kernels compiled with their default schedule (no tuning): right, and slow."""
    from presso.kernels._tvm_gemm import compile_gemm

    @functools.cache
    def kernel(rows: int, out_f: int, in_f: int, bits: int, group: int | None) -> Any:
        return compile_gemm(rows, out_f, in_f, bits, group, trials=0)

    return kernel


#: Bytes TVM's compiled kernels assume a tensor's data is aligned to (DLPack hands them the
#: pointer as is; an unaligned one crashed the process).
ALIGNMENT = 64


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, contiguous and with its data at an ALIGNMENT-byte boundary (torch allocates so;
    a tensor read from a safetensors file maps it at any offset: SmolLM2's weights sit 40
    bytes past one)."""
    t = t.contiguous()
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


@functools.cache
def _tvm_linear() -> type:
    """The nn.Module class that runs one Linear with a TVM kernel (built on first use: torch is
    not imported with this module)."""
    from torch import nn

    class TvmLinear(nn.Module):
        """``y = x W^T + b`` with ``W`` held in the kernel's layout (packed int4, int8 codes, or
        fp32), rows zero-padded to the kernel's row bucket."""

        def __init__(
            self,
            tensors: list[torch.Tensor],
            bias: torch.Tensor | None,
            shape: tuple[int, int],
            bits: int,
            group_size: int | None,
            kernels: KernelSource,
        ) -> None:
            super().__init__()
            self.out_features, self.in_features = shape
            self.bits, self.carrier = bits, carrier_bits(bits)
            self.group_size = group_size
            self.weights = tensors
            self.bias = None if bias is None else nn.Parameter(bias.detach().float())
            self.kernels = kernels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import torch

            rows = x.reshape(-1, self.in_features).float()
            m = rows.shape[0]
            bucket = row_bucket(m)
            if bucket != m:
                rows = torch.cat([rows, rows.new_zeros(bucket - m, self.in_features)])
            gemm = self.kernels(
                bucket, self.out_features, self.in_features, self.carrier, self.group_size
            )
            y = gemm(aligned(rows), *self.weights)[:m].view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return (
                f"in={self.in_features}, out={self.out_features}, bits={self.bits} "
                f"(tvm {'dense' if self.carrier == DENSE_BITS else f'int{self.carrier}'} kernel)"
            )

    TvmLinear.__module__ = __name__
    return TvmLinear


def _unit_module(
    handle: ModelHandle, linear: Any, name: str, plan: Plan, levels: Levels, kernels: KernelSource
) -> nn.Module:
    from presso.kernels._tvm_gemm import pack_int4

    bits, _ = unit_levels(plan, name)
    carrier = carrier_bits(bits)
    weight = unit_weight(handle, plan, name, levels)
    if weight is None:
        weight = handle.dense_weight(name)
    if carrier == DENSE_BITS:
        tensors, group = [aligned(weight.detach().float())], None
    else:
        codes = pack_int4(weight.codes) if carrier == 4 else weight.codes.contiguous()
        tensors = [aligned(codes), aligned(weight.scales), aligned(weight.zeros)]
        group = weight.spec.group_size
    shape = tuple(linear.weight.shape)
    return _tvm_linear()(tensors, linear.bias, shape, bits, group, kernels)


def build(
    handle: ModelHandle,
    plan: Plan,
    levels: Levels,
    *,
    device: str = "cpu",
    kernels: KernelSource | None = None,
) -> ModuleRuntime:
    """A copy of ``handle.model`` with every unit's Linear run by a TVM kernel at its level of
    ``plan`` (units not named: the dense fp32 kernel) and its dropped modules skipped.
    Kernels compile (and tune, per ``kernels``) on first use of each shape."""
    import torch

    if device != "cpu":
        raise PressoError(
            f"tvm backend: device {device!r} is not supported; only 'cpu' (llvm) is "
            "implemented — use the triton or torch backend on a GPU"
        )
    kernels = kernels or untuned_kernels()
    with torch.no_grad():
        model = copy.deepcopy(handle.model)
        for name in handle.unit_names:
            if removed(handle, plan, name):
                continue  # removed with what it is in
            new = _unit_module(handle, model.get_submodule(name), name, plan, levels, kernels)
            replace(model, name, new)
        apply_drops(model, handle, plan)
    return ModuleRuntime(
        "tvm", model.eval(), handle.kind, linear_kernels="tvm", dropped=list(plan.dropped)
    )
