"""The Triton runtime: units at 2, 3, 4 or 8 bits run presso's packed GEMM
(:func:`presso.kernels._triton_gemm.wq_matmul`), the rest stay torch layers.

On a CUDA device the model runs in fp16 (dense layers on cuBLAS) and the kernel's tile is
autotuned per shape. On the CPU — only under ``TRITON_INTERPRET=1``, set before triton is
imported: slow, exact, for tests — the model stays fp32, each packed layer casts its
activations to fp16 and back, and one fixed GEMV tile runs (autotuning would run every tile
through the interpreter). Sparsity is not exploited: a pruned unit runs its pruned weight at
full shape (a dense-bit one in torch).
"""

from __future__ import annotations

import copy
import functools
import os
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.runtimes._base import DENSE_BITS, Levels, ModuleRuntime, unit_levels, unit_weight
from presso.runtimes._skip import apply_drops, removed, replace

if TYPE_CHECKING:
    from presso.models import ModelHandle
    from presso.plan import Plan


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(device: str) -> None:
    """Refuse a device the Triton kernels cannot run on, naming the flag that fixes it."""
    import torch

    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise PressoError(
                "the triton backend needs a CUDA GPU, and torch sees none "
                "(torch.cuda.is_available() is False): run it on a machine with an NVIDIA GPU "
                "and a CUDA build of torch, or choose a CPU backend (torch, onnxruntime, tvm)"
            )
        return
    if device == "cpu" and interpreting():
        return
    raise PressoError(
        f"the triton backend runs on CUDA devices, got device={device!r}: "
        "use device='cuda' (--device cuda on the command line), or a CPU backend "
        "(torch, onnxruntime, tvm)"
    )


@functools.cache
def _triton_linear() -> type:
    import torch
    from torch import nn

    from presso.kernels._triton_gemm import TileConfig, wq_matmul

    class TritonLinear(nn.Module):
        """``y = x W^T + b`` with ``W`` packed (:class:`presso.kernels._packing.PackedWeight`),
        by the Triton kernel; activations enter it in fp16."""

        def __init__(self, packed: Any, bias: torch.Tensor | None, *, fixed: bool) -> None:
            super().__init__()
            self.packed = packed
            self.in_features, self.out_features = packed.in_features, packed.out_features
            self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
            # The interpreter runs one GEMV tile: block_k 32 divides every group it packs.
            self.config = TileConfig(1, 64, 32, 1, num_warps=1, num_stages=1) if fixed else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.to(torch.float16).contiguous()
            y = wq_matmul(rows, self.packed, config=self.config).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(y.dtype)

        def extra_repr(self) -> str:
            p = self.packed
            return f"in={self.in_features}, out={self.out_features}, bits={p.bits}, group={p.group_size}"

    TritonLinear.__module__ = __name__
    return TritonLinear


def build(
    handle: ModelHandle, plan: Plan, levels: Levels, *, device: str = "cuda"
) -> ModuleRuntime:
    """A copy of ``handle.model`` on ``device`` with each unit at 2/3/4/8 bits packed and run
    by the Triton kernel, pruned units at their pruned weight, dropped modules skipped."""
    import torch

    from presso.kernels._packing import PACKED_BITS, pack

    check_device(device)
    on_cpu = device == "cpu"
    dtype = torch.float32 if on_cpu else torch.float16
    packed_units, sparse_units = 0, 0
    with torch.no_grad():
        model = copy.deepcopy(handle.model)
        for name in handle.unit_names:  # the dense weights, whatever the handle holds now
            model.get_submodule(name).weight.data = handle.dense_weight(name).clone()
        model = model.to(device=device, dtype=dtype)
        for name in handle.unit_names:
            if removed(handle, plan, name):
                continue
            bits, sparsity = unit_levels(plan, name)
            sparse_units += sparsity > 0
            weight = unit_weight(handle, plan, name, levels)
            linear = model.get_submodule(name)
            if weight is None:
                continue
            if bits >= DENSE_BITS:
                linear.weight.data = weight.to(device, dtype)
                continue
            if bits not in PACKED_BITS:
                raise PressoError(
                    f"unit {name}: the triton kernels run {PACKED_BITS}-bit weights, not {bits}-bit"
                )
            group = weight.spec.group_size
            if group is not None and linear.in_features % group:
                raise PressoError(
                    f"{name}: group_size {group} does not divide in_features "
                    f"{linear.in_features}; choose a group size that divides every layer's inputs"
                )
            packed = pack(weight).to(device)
            bias = None if linear.bias is None else linear.bias.data
            replace(model, name, _triton_linear()(packed, bias, fixed=on_cpu))
            packed_units += 1
        apply_drops(model, handle, plan)
    detail: dict[str, Any] = {
        "kernel": "presso triton wq_matmul (packed units), torch (the rest)",
        "packed_units": packed_units,
        "dropped": len(plan.dropped),
    }
    if sparse_units:
        detail["sparsity"] = f"not exploited: {sparse_units} sparse units run at full shape"
    return ModuleRuntime("triton", model.eval(), handle.kind, device=device, **detail)
