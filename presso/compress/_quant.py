"""The integer weight grid shared by every quantization operator, and its packed format.

A weight ``[out, in]`` is cut along ``in`` into groups of ``group_size`` columns; each row of each
group gets one affine grid ``w ≈ scale * (code - zero)`` with integer ``code`` in
``[0, 2**bits - 1]``. Both conventions below come from the GPTQ reference code, so that codes,
scales and zeros can be exported to GPTQ-style checkpoints without conversion:

* asymmetric: the grid spans ``[min(w_min, 0), max(w_max, 0)]`` — zero is always representable,
  so ``zero`` is an integer in ``[0, 2**bits - 1]`` — with ``scale = (max - min) / (2**bits - 1)``
  and ``zero = round(-min / scale)``;
* symmetric: ``zero = 2**(bits - 1)`` for every group and ``scale = 2 * max|w| / (2**bits - 1)``;
  representable values are ``scale * k`` for ``k`` in ``[-2**(bits-1), 2**(bits-1) - 1]``, so
  ``+max|w|`` lands half a step beyond the top code and is clipped by at most ``scale / 2``.

``zero`` is stored in code units as float32 (always an integral value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_TENSOR_NAMES = ("codes", "scales", "zeros")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one weight: ``bits`` per weight (2..8), ``group_size`` input columns per
    grid (``None``: one grid per output row spanning all inputs), ``symmetric`` grid or not."""

    bits: int
    group_size: int | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"QuantSpec.bits must be an int in 2..8, got {self.bits!r}")
        if self.group_size is not None and (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 1
        ):
            raise ValueError(
                f"QuantSpec.group_size must be a positive int or None, got {self.group_size!r}"
            )
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"QuantSpec.symmetric must be a bool, got {self.symmetric!r}")

    @property
    def maxq(self) -> int:
        """The largest code, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def group_width(self, in_features: int) -> int:
        """Columns per group for a weight with ``in_features`` inputs; checks that it divides."""
        if self.group_size is None:
            return in_features
        if in_features % self.group_size != 0:
            raise ValueError(
                f"group_size {self.group_size} does not divide in_features {in_features}: "
                f"choose a group_size that divides it, or None for one group per output channel"
            )
        return self.group_size


def grid(w_group: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The min/max grid of each row of ``w_group`` ``[..., g]``: ``(scale, zero)``, each ``[...]``,
    float32, ``zero`` in code units (see the module docstring for the conventions)."""
    w = w_group.float()
    maxq = spec.maxq
    if spec.symmetric:
        scale = _nonzero(2.0 * w.abs().amax(dim=-1) / maxq)
        zero = torch.full_like(scale, float(1 << (spec.bits - 1)))
    else:
        # Including 0 in the range keeps `zero` an integral code, as GPTQ-format kernels expect.
        lo = w.amin(dim=-1).clamp(max=0.0)
        hi = w.amax(dim=-1).clamp(min=0.0)
        scale = _nonzero((hi - lo) / maxq)
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero row has no range; any positive scale reproduces it exactly (code == zero).
    return torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))


def to_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Round ``w`` to the nearest code of the grid ``(scale, zero)`` (broadcast against ``w``),
    as float32 values in ``[0, 2**bits - 1]``."""
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, spec.maxq)


@dataclass
class QuantizedWeight:
    """A quantized ``[out, in]`` weight: ``codes`` uint8 ``[out, in]``, ``scales`` and ``zeros``
    float32 ``[out, n_groups]`` (``zeros`` in code units); ``w ≈ scales * (codes - zeros)``."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: QuantSpec

    def __post_init__(self) -> None:
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 2:
            raise ValueError(
                "codes must be a 2-D uint8 tensor, "
                f"got {self.codes.dtype} {tuple(self.codes.shape)}"
            )
        out, in_features = self.codes.shape
        n_groups = in_features // self.spec.group_width(in_features)
        for name in ("scales", "zeros"):
            t = getattr(self, name)
            if t.dtype != torch.float32 or tuple(t.shape) != (out, n_groups):
                raise ValueError(
                    f"{name} must be float32 of shape {(out, n_groups)}, "
                    f"got {t.dtype} {tuple(t.shape)}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)`` of the original weight."""
        return (self.codes.shape[0], self.codes.shape[1])

    def rows(self, index: torch.Tensor) -> QuantizedWeight:
        """The output rows ``index`` of this weight (a grid's rows are independent, so these
        are exactly the rows a quantizer gives the smaller weight): a producer's kept rows
        when heads or FFN channels are pruned."""
        return QuantizedWeight(self.codes[index], self.scales[index], self.zeros[index], self.spec)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight that the codes represent."""
        out, in_features = self.codes.shape
        n_groups = self.scales.shape[1]
        codes = self.codes.float().view(out, n_groups, in_features // n_groups)
        w = (codes - self.zeros.unsqueeze(-1)) * self.scales.unsqueeze(-1)
        return w.view(out, in_features)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors by name (``codes``, ``scales``, ``zeros``), e.g. for safetensors."""
        return {"codes": self.codes, "scales": self.scales, "zeros": self.zeros}

    def meta(self) -> dict[str, Any]:
        """JSON-ready facts that, with :meth:`tensors`, rebuild this weight (the spec)."""
        return {
            "bits": self.spec.bits,
            "group_size": self.spec.group_size,
            "symmetric": self.spec.symmetric,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], spec: QuantSpec) -> QuantizedWeight:
        """Rebuild from :meth:`tensors` output; ``spec`` is kept alongside (it is not a tensor)."""
        missing = [name for name in _TENSOR_NAMES if name not in tensors]
        if missing:
            raise ValueError(f"QuantizedWeight tensors lack {missing}; found {sorted(tensors)}")
        return cls(tensors["codes"], tensors["scales"], tensors["zeros"], spec)


def quantize_rtn(weight: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of ``weight`` ``[out, in]`` on per-group min/max grids."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or infinite entries; they cannot be quantized")
    out, in_features = weight.shape
    width = spec.group_width(in_features)
    groups = weight.detach().float().reshape(out, in_features // width, width)
    scale, zero = grid(groups, spec)
    codes = to_codes(groups, scale.unsqueeze(-1), zero.unsqueeze(-1), spec)
    return QuantizedWeight(codes.reshape(out, in_features).to(torch.uint8), scale, zero, spec)


def relative_output_error(
    weight: torch.Tensor, weight_hat: torch.Tensor, hessian: torch.Tensor | None = None
) -> float:
    """Relative squared error of the layer's outputs, ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``.

    With ``H`` the (scaled) second moment of the calibration inputs this is
    ``||ΔW Xᵀ||² / ||W Xᵀ||²`` on those inputs; without a Hessian it falls back to the weight-space
    ``||ΔW||² / ||W||²``. Computed in float64; 0 for a zero weight reproduced exactly.
    """
    w = weight.detach().double()
    dw = w - weight_hat.detach().double().to(w.device)
    if hessian is None:
        num, den = dw.pow(2).sum(), w.pow(2).sum()
    else:
        h = hessian.detach().double().to(w.device)
        num = ((dw @ h) * dw).sum()
        den = ((w @ h) * w).sum()
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)
