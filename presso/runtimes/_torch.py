"""The torch runtime: a candidate on torch's own kernels, in eager mode.

* dense: ``F.linear`` in fp32 on CPU, fp16 on CUDA;
* 2-4 bits: torch's packed int4 weight-only GEMM (``_weight_int4pack_mm_for_cpu``, or
  ``_weight_int4pack_mm`` on CUDA), groups of 32/64/128/256 columns; 2- and 3-bit codes are carried
  in the 4-bit container (torch has no narrower kernel), so they cost what 4 bits cost;
* 5-8 bits: torch's int8 weight-only GEMM (``_weight_int8pack_mm``), one scale per output channel;
* the packed kernels take bf16 activations (cast in and out of each layer) by default: on CPU
  torch vectorizes them only for bf16, and its CUDA int4 kernel takes nothing else
  (``packed_dtype="float32"``: exact, slow, CPU only);
* unstructured sparsity (dense bits): CSR sparse x dense (:class:`SparseLinear`), or the dense
  GEMM of the pruned weight, or whichever a chooser picks (the profiler times both);
  with low bits, sparsity is not exploited;
* pruned heads and FFN channels (the structured kind): smaller ``nn.Linear`` shapes
  (:func:`presso.surgery.shrink`), and under GQA fewer KV heads in the cache; with bits too,
  the smaller shapes packed as above (:func:`presso.runtimes._base.pruned_quantized`).

torch is imported when a runtime is built, not when this module is: the ``nn.Module`` classes
are built on first access through the module's ``__getattr__``.
"""

from __future__ import annotations

import copy
import functools
import types
import warnings
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.runtimes._base import (
    DENSE_BITS,
    Levels,
    ModuleRuntime,
    pruned_quantized,
    structured_weights,
    unit_levels,
    unit_weight,
)
from presso.runtimes._skip import apply_drops, removed, replace
from presso.surgery import shrink

if TYPE_CHECKING:
    import torch

    from presso.compress import QuantizedWeight
    from presso.models import ModelHandle
    from presso.plan import Plan

#: Columns per scale that torch's int4pack kernels accept, widest first.
INT4_GROUPS = (256, 128, 64, 32)
#: How a sparse dense-bit unit runs: CSR, the dense GEMM of its pruned weight, or as a chooser
#: ``(out_features, in_features, sparsity) -> "csr" | "dense"`` decides (the fastest, timed).
SPARSE_KERNELS = ("csr", "dense")
SparseChooser = Callable[[int, int, int], str]


def __getattr__(name: str) -> Any:
    # PackedLinear and SparseLinear subclass nn.Module, so they need torch: built on first use.
    if name in ("PackedLinear", "SparseLinear"):
        return getattr(_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- packing


def _int4_layout(qw: QuantizedWeight, device: str) -> tuple[int, int]:
    """The kernel's group size and inner K tiles for ``qw``; a shape it cannot run is an error."""
    out, in_features = qw.shape
    width = in_features // qw.scales.shape[1]
    # A wider grid (per channel, or 512 columns) is the same grid repeated over narrower groups.
    group = next((g for g in INT4_GROUPS if width % g == 0), None)
    if group is None:
        raise PressoError(
            f"int4pack kernel: a weight grid of {width} input columns (group_size "
            f"{qw.spec.group_size}, in_features {in_features}) is not a multiple of "
            f"32, 64, 128 or 256 columns; use group_size 32/64/128/256"
        )
    if out % 16:
        raise PressoError(
            f"int4pack kernel: out_features {out} is not a multiple of 16, which torch requires"
        )
    tiles = next((t for t in (8, 4, 2) if in_features % (16 * t) == 0), None)
    if tiles is None and device != "cpu":
        raise PressoError(
            f"int4pack CUDA kernel: in_features {in_features} is not a multiple of 32"
        )
    return group, tiles or 2


def _pack_int4(
    qw: QuantizedWeight, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Codes packed for the int4 kernel, its ``[groups, out, 2]`` scales and offsets, group size.

    The kernel computes ``w = scale * (q - 8) + offset``; presso's grid is ``scale * (q - zero)``,
    so ``offset = scale * (8 - zero)``: the same weights, whatever the bits (2..4) of the codes.
    """
    import torch

    if device != "cpu" and dtype != torch.bfloat16:
        raise PressoError("int4pack CUDA kernel: activations must be bfloat16")
    group, tiles = _int4_layout(qw, device)
    reps = (qw.shape[1] // qw.scales.shape[1]) // group
    scales = qw.scales.repeat_interleave(reps, dim=1)
    zeros = qw.zeros.repeat_interleave(reps, dim=1)
    scale_offset = torch.stack([scales, scales * (8 - zeros)], dim=-1).transpose(0, 1)
    scale_offset = scale_offset.contiguous().to(device, dtype)
    codes = qw.codes.to(device)
    if device == "cpu":
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), tiles)
    else:
        pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        packed = torch._convert_weight_to_int4pack(pairs, tiles)
    return packed, scale_offset, group


def _pack_int8(
    qw: QuantizedWeight, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """int8 codes ``[out, in]``, one scale per output row, and whether they are ``qw`` exactly.

    The int8 kernel is symmetric per channel: a per-channel grid whose centred codes fit int8
    (bits <= 7, or a symmetric 8-bit grid) is carried exactly; a grouped or asymmetric 8-bit
    grid is re-quantized per channel from its dequantized weight (what a torch deployment does).
    """
    import torch

    centred = qw.codes.to(torch.int32) - qw.zeros.to(torch.int32).repeat_interleave(
        qw.shape[1] // qw.scales.shape[1], dim=1
    )
    if qw.scales.shape[1] == 1 and -128 <= int(centred.min()) and int(centred.max()) <= 127:
        return centred.to(torch.int8).to(device), qw.scales[:, 0].to(device, dtype), True
    w = qw.dequantize()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return codes.to(device), scale.to(device, dtype), False


# --------------------------------------------------------------------------- modules


@functools.cache
def _classes() -> types.SimpleNamespace:
    import torch
    from torch import nn

    class PackedLinear(nn.Module):
        """A weight-only quantized Linear on torch's packed kernels.

        ``kernel`` is ``"int4pack"`` (bits 2-4 carried as 4-bit codes, grouped scales) or
        ``"int8pack"`` (bits 5-8, one scale per output channel); ``carrier_bits`` the width the
        kernel stores; ``exact`` whether the packed weight equals ``qw.dequantize()`` (up to the
        kernel's arithmetic). Activations enter the kernel in ``scales.dtype``: bf16 by default,
        the only dtype torch vectorizes these kernels for on CPU (fp32 runs them 40-70x slower
        than the dense fp32 GEMM) and the one its CUDA int4 kernel takes.
        """

        def __init__(
            self,
            *,
            kernel: str,
            packed: torch.Tensor,
            scales: torch.Tensor,
            bias: torch.Tensor | None,
            shape: tuple[int, int],
            bits: int,
            group: int,
            exact: bool,
        ) -> None:
            super().__init__()
            self.kernel = kernel
            self.out_features, self.in_features = shape
            self.bits = bits
            self.carrier_bits = 4 if kernel == "int4pack" else 8
            self.group = group
            self.exact = exact
            self.register_buffer("packed", packed)
            self.register_buffer("scales", scales)
            self.register_buffer("bias", bias)

        @classmethod
        def from_quantized(
            cls,
            qw: QuantizedWeight,
            bias: torch.Tensor | None = None,
            *,
            device: str = "cpu",
            dtype: torch.dtype | None = None,
        ) -> PackedLinear:
            """Pack ``qw`` for its kernel, activations in ``dtype`` (default bf16; fp32 runs on
            CPU only, slowly, but exactly); an unsupported group size or shape is a PressoError."""
            dtype = dtype or torch.bfloat16
            bias = None if bias is None else bias.detach().to(device)
            if qw.spec.bits <= 4:
                packed, scales, group = _pack_int4(qw, device, dtype)
                return cls(
                    kernel="int4pack",
                    packed=packed,
                    scales=scales,
                    bias=bias,
                    shape=qw.shape,
                    bits=qw.spec.bits,
                    group=group,
                    exact=True,
                )
            packed, scales, exact = _pack_int8(qw, device, dtype)
            return cls(
                kernel="int8pack",
                packed=packed,
                scales=scales,
                bias=bias,
                shape=qw.shape,
                bits=qw.spec.bits,
                group=qw.shape[1],
                exact=exact,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.reshape(-1, self.in_features).to(self.scales.dtype)
            if self.kernel == "int8pack":
                y = torch._weight_int8pack_mm(rows, self.packed, self.scales)
            elif self.packed.device.type == "cpu":
                y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scales)
            else:
                y = torch._weight_int4pack_mm(rows, self.packed, self.group, self.scales)
            y = y.to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return (
                f"{self.in_features}->{self.out_features}, {self.bits} bits in "
                f"{self.kernel} (group {self.group}, exact={self.exact})"
            )

    class SparseLinear(nn.Module):
        """A pruned Linear run as CSR sparse × dense (``y = (W_csr @ xᵀ)ᵀ``)."""

        def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
            super().__init__()
            self.out_features, self.in_features = weight.shape
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known
                warnings.simplefilter("ignore", UserWarning)
                self.register_buffer("weight", weight.detach().to_sparse_csr())
            self.register_buffer("bias", None if bias is None else bias.detach())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.reshape(-1, self.in_features)
            y = torch.mm(self.weight, rows.t()).t()
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

    for cls in (PackedLinear, SparseLinear):
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return types.SimpleNamespace(
        PackedLinear=PackedLinear,
        SparseLinear=SparseLinear,
    )


# --------------------------------------------------------------------------- build


def build(
    handle: ModelHandle,
    plan: Plan,
    levels: Levels,
    *,
    device: str = "cpu",
    packed_dtype: str | torch.dtype = "bfloat16",
    sparse_kernel: str | SparseChooser = "csr",
) -> ModuleRuntime:
    """A copy of ``handle.model`` on ``device`` (fp32 on CPU, fp16 on CUDA) with ``plan``
    applied for real: units at 2..8 bits become :class:`PackedLinear` (activations in
    ``packed_dtype``), sparse dense-bit units :class:`SparseLinear` or a pruned ``nn.Linear``
    (``sparse_kernel``), dropped modules skipped (:mod:`presso.runtimes._skip`)."""
    import torch

    dtype = torch.float32 if device == "cpu" else torch.float16
    packed = getattr(torch, packed_dtype) if isinstance(packed_dtype, str) else packed_dtype
    if not callable(sparse_kernel) and sparse_kernel not in SPARSE_KERNELS:
        raise PressoError(
            f"sparse_kernel must be one of {', '.join(SPARSE_KERNELS)} or a chooser, "
            f"not {sparse_kernel!r}"
        )
    classes = _classes()
    with torch.no_grad():  # not inference_mode: the built model outlives this call
        model = copy.deepcopy(handle.model)
        modules = dict(model.named_modules())
        for name in handle.unit_names:  # units not assigned run dense, whatever the handle holds
            if handle.linear(name).weight.data_ptr() != handle.dense_weight(name).data_ptr():
                modules[name].weight.data = handle.dense_weight(name).clone()
        model.to(device, dtype)
        kernels: Counter[str] = Counter()
        shrunk: set[str] = set()  # units of pruned heads / FFN channels: smaller, dense
        for structure, kept in structured_weights(handle, plan, levels):
            if not removed(handle, plan, structure.consumer):
                shrink(model, structure, kept)
                shrunk |= {structure.consumer, *structure.producers, *structure.kv}
                kernels[f"structured-{structure.what}"] += 1
                # Members with bits too: the smaller Linear packed at its own shape.
                for name, qw in pruned_quantized(handle, plan, structure, kept, levels).items():
                    try:
                        layer = classes.PackedLinear.from_quantized(
                            qw, model.get_submodule(name).bias, device=device, dtype=packed
                        )
                    except PressoError as err:
                        raise PressoError(f"unit {name}: {err}") from None
                    replace(model, name, layer)
                    kernels[layer.kernel] += 1
        for name in handle.unit_names:
            if removed(handle, plan, name) or name in shrunk:
                continue  # removed with what it is in, or already built smaller
            weight = unit_weight(handle, plan, name, levels)
            bits, sparsity = unit_levels(plan, name)
            linear = modules[name]
            if weight is None:
                kernels["dense"] += 1
            elif bits < DENSE_BITS:
                try:
                    layer = classes.PackedLinear.from_quantized(
                        weight, linear.bias, device=device, dtype=packed
                    )
                except PressoError as err:
                    raise PressoError(f"unit {name}: {err}") from None
                replace(model, name, layer)
                kernels[layer.kernel] += 1
            else:
                pruned = weight.to(device, dtype)
                kernel = sparse_kernel
                if callable(kernel):
                    kernel = kernel(*pruned.shape, sparsity)
                if kernel == "csr":
                    replace(model, name, classes.SparseLinear(pruned, linear.bias))
                    kernels["csr"] += 1
                else:
                    linear.weight.data = pruned
                    kernels["dense-pruned"] += 1
        apply_drops(model, handle, plan)
    return ModuleRuntime(
        "torch",
        model.eval(),
        handle.kind,
        device=device,
        kernels=dict(sorted(kernels.items())),
        dropped=list(plan.dropped),
        dtype=str(dtype).removeprefix("torch."),
        packed_activations=str(packed).removeprefix("torch."),
    )
