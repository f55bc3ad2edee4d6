"""The torch eager backend: each level timed with the kernel a torch deployment would run.

* dense: ``F.linear`` in fp32 on CPU, fp16 on CUDA;
* 2-4 bits: torch's packed int4 weight-only GEMM (``_weight_int4pack_mm_for_cpu``, or
  ``_weight_int4pack_mm`` on CUDA), groups of 32/64/128/256 columns; 2- and 3-bit codes are carried
  in the 4-bit container (torch has no narrower kernel), so they cost what 4 bits cost;
* 5-8 bits: torch's int8 weight-only GEMM (``_weight_int8pack_mm``), one scale per output channel;
* the packed kernels take bf16 activations (cast in and out of each layer): on CPU torch
  vectorizes them only for bf16, and its CUDA int4 kernel takes nothing else;
* unstructured sparsity (dense bits): the faster of torch's CSR sparse × dense product and the
  dense GEMM of the pruned weight, as a deployment would pick; with low bits, sparsity is not
  exploited.

Weights are real: a seeded random weight is quantized with :func:`quantize_rtn` and packed in the
kernel's layout. :meth:`TorchProfiler.assemble` builds a whole candidate with the same modules
(:class:`PackedLinear`, :class:`SparseLinear`), blocks physically removed.

torch is imported when a profiler is made, not when this module is (it registers the backend):
the ``nn.Module`` classes are built on first access through the module's ``__getattr__``.
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
from presso.models import cache_kwargs
from presso.profilers._base import (
    DENSE_BITS,
    SEED,
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    op_weight_copies,
    register,
    unit_levels,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from presso.compress import QuantizedWeight
    from presso.models import ModelHandle
    from presso.plan import Plan

#: Columns per scale that torch's int4pack kernels accept, widest first.
INT4_GROUPS = (256, 128, 64, 32)
SPARSE_KERNELS = ("csr", "dense", "fastest")

#: Builds the replacement of a unit: ``(name, bits) -> QuantizedWeight`` (e.g. GPTQ levels).
WeightSource = Callable[[str, int], "QuantizedWeight"]


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

    class SkipAttention(nn.Module):
        """A dropped attention sublayer: adds nothing to the residual stream.

        It still appends a one-number-per-token stub to the KV cache: transformers reads the
        cache's length (positions, mask sizes) from its first layer, which may be this one.
        """

        def __init__(self, layer_idx: int) -> None:
            super().__init__()
            self.layer_idx = layer_idx  # renumbered by drop_blocks like any attention layer

        def forward(
            self, hidden_states: torch.Tensor, *args: Any, **kw: Any
        ) -> tuple[torch.Tensor, None]:
            # transformers 5.24 renamed the block's ``past_key_values`` keyword to ``cache``.
            cache = kw.get("cache", kw.get("past_key_values"))
            if cache is not None:
                stub = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
                cache.update(stub, stub, self.layer_idx)
            return torch.zeros_like(hidden_states), None

    class SkipMLP(nn.Module):
        """A dropped MLP sublayer: adds nothing to the residual stream."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return torch.zeros_like(x)

    for cls in (PackedLinear, SparseLinear):
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return types.SimpleNamespace(
        PackedLinear=PackedLinear,
        SparseLinear=SparseLinear,
        SkipAttention=SkipAttention,
        SkipMLP=SkipMLP,
    )


# --------------------------------------------------------------------------- weights


def quantized_level(
    weight: torch.Tensor, bits: int, sparsity: int, group_size: int | None
) -> QuantizedWeight:
    """``weight`` pruned by magnitude to ``sparsity`` percent, then RTN-quantized to ``bits``.

    Pruned weights keep code ``zero`` (which the asymmetric grid always has), so they stay
    exactly 0 after dequantization.
    """
    import torch

    from presso.compress import QuantSpec, magnitude_prune, quantize_rtn

    try:
        spec = QuantSpec(bits=bits, group_size=group_size)
        pruned = magnitude_prune(weight, sparsity).weight if sparsity else weight
        qw = quantize_rtn(pruned, spec)
    except ValueError as err:
        raise PressoError(f"level w{bits}-s{sparsity}: {err}") from None
    if sparsity:
        width = qw.shape[1] // qw.scales.shape[1]
        zero_codes = qw.zeros.repeat_interleave(width, dim=1).to(torch.uint8)
        qw.codes = torch.where(pruned == 0, zero_codes, qw.codes)
    return qw


def _check_level(where: str, bits: int, sparsity: int) -> None:
    if not (2 <= bits <= 8 or bits >= DENSE_BITS) or not 0 <= sparsity <= 99:
        raise PressoError(
            f"{where}: level w{bits}-s{sparsity} cannot be run: bits must be 2..8 "
            f"(or {DENSE_BITS} for dense) and sparsity a percent in 0..99"
        )


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

        _check_level(op.key, op.bits, op.sparsity)
        gen = torch.Generator().manual_seed(SEED)
        weight = torch.randn(op.out_features, op.in_features, generator=gen) * 0.02
        x = torch.randn(workload.rows, op.in_features, generator=gen).to(self.device, self.dtype)
        # Distinct weight copies, cycled: inside a model a layer is read from memory, not cache.
        n = op_weight_copies(op) if self.device == "cpu" else 1
        with self._threads(), torch.inference_mode():
            if op.bits < DENSE_BITS:
                qw = quantized_level(weight, op.bits, op.sparsity, op.group_size)
                layers = [
                    _classes().PackedLinear.from_quantized(
                        qw, device=self.device, dtype=self.packed_dtype
                    )
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

        pruned = magnitude_prune(weight, op.sparsity).weight.to(self.device, self.dtype)
        csr = _classes().SparseLinear(pruned, None)
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

    def assemble(
        self,
        handle: ModelHandle,
        plan: Plan,
        *,
        weights: WeightSource | None = None,
        sparse_kernel: str = "csr",
        workload: Workload | None = None,
    ) -> nn.Module:
        """A copy of ``handle.model`` on this device with ``assignment`` applied for real.

        Units at 2..8 bits become :class:`PackedLinear` (weights from ``weights(name, bits)``,
        or RTN at ``plan.group_size`` of the dense weight, pruned first if the unit is
        sparse); sparse dense-bit units become :class:`SparseLinear` (``sparse_kernel="csr"``),
        a pruned ``nn.Linear`` (``"dense"``), or whichever this profiler measures faster at
        ``workload`` (``"fastest"``). Dropped blocks are removed; dropped ``self_attn`` / ``mlp``
        sublayers are replaced by no-ops. ``handle.model`` is not modified.
        """
        return self._assemble(handle, plan, weights, sparse_kernel, workload)[0]

    def _assemble(
        self,
        handle: ModelHandle,
        plan: Plan,
        weights: WeightSource | None,
        sparse_kernel: str,
        workload: Workload | None,
    ) -> tuple[nn.Module, Counter[str]]:
        from presso.surgery import drop_blocks

        blocks, sublayers = self._check_assignment(handle, plan, sparse_kernel, workload)
        model = copy.deepcopy(handle.model)
        modules = dict(model.named_modules())
        for name in handle.unit_names:  # units not assigned run dense, whatever the handle holds
            if handle.linear(name).weight.data_ptr() != handle.dense_weight(name).data_ptr():
                modules[name].weight.data = handle.dense_weight(name).clone()
        model.to(self.device, self.dtype)
        kernels: Counter[str] = Counter()
        for name in handle.unit_names:
            if handle.block_of(name) in blocks or name.startswith(
                tuple(s + "." for s in sublayers)
            ):
                continue  # removed with what it is in
            bits, sparsity = unit_levels(plan, name)
            new, kernel = self._unit(
                handle,
                modules[name],
                name,
                bits,
                sparsity,
                plan,
                weights,
                sparse_kernel,
                workload,
            )
            kernels[kernel] += 1
            if new is not None:
                _replace(model, name, new)
        classes = _classes()
        for name in sublayers:
            if name.endswith("self_attn"):
                _replace(model, name, classes.SkipAttention(handle.block_of(name)))
            else:
                _replace(model, name, classes.SkipMLP())
        if blocks:
            drop_blocks(model, handle.blocks_prefix, blocks)
        return model.eval(), kernels

    def _unit(
        self,
        handle: ModelHandle,
        linear: Any,
        name: str,
        bits: int,
        sparsity: int,
        plan: Plan,
        weights: WeightSource | None,
        sparse_kernel: str,
        workload: Workload | None,
    ) -> tuple[nn.Module | None, str]:
        """The module replacing unit ``name`` (None: keep it, maybe re-weighted) and its kernel."""
        from presso.compress import magnitude_prune

        classes = _classes()
        bias = linear.bias
        if bits < DENSE_BITS:
            try:
                if weights is not None:
                    qw = weights(name, bits)
                else:
                    dense = handle.dense_weight(name)
                    qw = quantized_level(dense, bits, sparsity, plan.group_size)
                layer = classes.PackedLinear.from_quantized(
                    qw, bias, device=self.device, dtype=self.packed_dtype
                )
            except PressoError as err:
                raise PressoError(f"unit {name}: {err}") from None
            return layer, layer.kernel
        if sparsity == 0:
            return None, "dense"
        pruned = magnitude_prune(handle.dense_weight(name), sparsity).weight
        pruned = pruned.to(self.device, self.dtype)
        kernel = sparse_kernel
        if kernel == "fastest":
            assert workload is not None
            kernel = self._fastest_sparse(LinearOp(*pruned.shape, DENSE_BITS, sparsity), workload)
        if kernel == "csr":
            return classes.SparseLinear(pruned, bias), "csr"
        linear.weight.data = pruned
        return None, "dense-pruned"

    def _fastest_sparse(self, op: LinearOp, workload: Workload) -> str:
        key = (op.key, workload.key)
        if key not in self._sparse_choice:
            m = self._time_op(op, workload)
            self._sparse_choice[key] = m.detail["kernel"]
        return self._sparse_choice[key]

    @staticmethod
    def _check_assignment(
        handle: ModelHandle, plan: Plan, sparse_kernel: str, workload: Workload | None
    ) -> tuple[list[int], list[str]]:
        """Validate names and levels; the dropped block indices and dropped sublayer names."""
        if sparse_kernel not in SPARSE_KERNELS:
            raise PressoError(
                f"sparse_kernel must be one of {', '.join(SPARSE_KERNELS)}, not {sparse_kernel!r}"
            )
        if sparse_kernel == "fastest" and workload is None:
            raise PressoError("sparse_kernel='fastest' needs the workload to time the kernels at")
        units = set(handle.unit_names)
        for name in plan.units:
            bits, sparsity = unit_levels(plan, name)
            if name not in units:
                raise PressoError(f"plan: {name!r} is not a unit of model {handle.name}")
            _check_level(f"unit {name}", bits, sparsity)
        block_names = handle.block_names()
        blocks, sublayers = [], []
        for name in plan.dropped:
            if name in block_names:
                blocks.append(handle.block_of(name))
            elif name.endswith(("self_attn", "mlp")) and _has_module(handle, name):
                sublayers.append(name)
            else:
                raise PressoError(
                    f"plan: cannot drop {name!r}: name a block ({block_names[0]}) or a "
                    f"block's self_attn / mlp sublayer"
                )
        return blocks, [n for n in sublayers if handle.block_of(n) not in blocks]

    def _time_model(self, handle: ModelHandle, plan: Plan, workload: Workload) -> Measurement:
        import torch

        if handle.kind != "causal-lm" and workload.phase == "decode":
            raise PressoError(
                f"model {handle.name} is an {handle.kind}: it has no decode phase; "
                f"use a prefill workload"
            )
        with self._threads():
            with torch.no_grad():  # not inference_mode: the assembled model outlives this call
                model, kernels = self._assemble(handle, plan, None, "fastest", workload)
            return self._time_forward(model, handle.kind, workload, kernels, plan)

    def _time_forward(
        self,
        model: nn.Module,
        kind: str,
        workload: Workload,
        kernels: Counter[str],
        plan: Plan,
    ) -> Measurement:
        import torch

        with torch.inference_mode():
            gen = torch.Generator().manual_seed(SEED)
            shape = (workload.batch, workload.seq_len)
            ids = torch.randint(model.config.vocab_size, shape, generator=gen).to(self.device)
            run = self._forward(model, kind, ids, workload.phase)
            return self._timed(
                run,
                op="model",
                workload=workload,
                sync=self._sync,
                kernels=dict(sorted(kernels.items())),
                dropped=list(plan.dropped),
                dtype=str(self.dtype).removeprefix("torch."),
                packed_activations=str(self.packed_dtype).removeprefix("torch."),
            )

    @staticmethod
    def _forward(model: nn.Module, kind: str, ids: torch.Tensor, phase: str) -> Callable[[], Any]:
        """One forward of ``model`` on ``ids`` in ``phase``, as a closure to time."""
        import torch

        if kind != "causal-lm":
            mask = torch.ones_like(ids)
            return lambda: model(input_ids=ids, attention_mask=mask)
        if phase == "prefill":
            return lambda: model(input_ids=ids, use_cache=False)
        # Decode: one new token per sequence against the prefilled cache; after each step the
        # cache is cropped back, so every repeat sees seq_len cached tokens.
        cache = model(input_ids=ids, use_cache=True).past_key_values
        new, with_cache = ids[:, -1:], cache_kwargs(model, cache)

        def step() -> None:
            model(input_ids=new, use_cache=True, **with_cache)
            cache.crop(-1)

        return step


def _has_module(handle: ModelHandle, name: str) -> bool:
    try:
        handle.module(name)
    except KeyError:
        return False
    return True


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
