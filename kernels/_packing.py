"""The packed low-bit weight format the Triton GEMM reads, and its torch reference.

A :class:`~presso.compress.QuantizedWeight` holds ``codes`` uint8 ``[N, K]`` (``N`` =
out_features, ``K`` = in_features) and float32 ``scales``/``zeros`` ``[N, K / g]``, with
``w = scale * (code - zero)``. :func:`pack` turns it into a :class:`PackedWeight`, laid out
for a kernel that walks ``K`` in tiles and reads ``N`` contiguously (coalesced):

``qweight`` — int32 ``[K * bits / 32, N]``. ``K`` is cut into blocks of 32 consecutive codes;
each block takes exactly ``bits`` int32 words per column (``bits`` bits per weight, no
padding), stored in rows ``bits * b ... bits * b + bits - 1`` for block ``b``. Inside a block,
code ``j`` (``k = 32 b + j``) sits at:

* bits 2, 4, 8 — ``P = 32 / bits`` codes per word: word ``j // P`` of the block, bit offset
  ``bits * (j % P)``. Equivalently: row ``k // P``, shift ``bits * (k % P)`` (the usual
  GPTQ order along ``K``).
* bits 3 — two bit planes, so that no code straddles a word: the low two bits of codes
  0..15 are in word 0 (offset ``2 j``), of codes 16..31 in word 1 (offset ``2 (j - 16)``);
  the high bit of every code is in word 2 (offset ``j``). A kernel unpacks a code with two
  shift-and-mask ops and one or: ``((w[j // 16] >> 2 (j % 16)) & 3) | (((w[2] >> j) & 1) << 2)``.

Words are stored as two's-complement int32 (bit 31 is the sign bit: shift right, then mask).

``scales`` and ``zeros`` — float16 ``[K / g, N]`` (transposed against QuantizedWeight, so a
kernel reads one row of ``N`` per group). ``zeros`` are integral codes (exact in fp16 up to
2048); ``scales`` are rounded to fp16 once here, and :func:`reference_matmul` uses those
rounded scales, so kernel and reference compute the same function.

``K`` must be a multiple of 32 and of the group size ``g`` (per-channel grids: ``g = K``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compress import QuantizedWeight, QuantSpec
from presso.errors import PressoError

#: Bit widths the format (and the Triton kernel) supports.
PACKED_BITS = (2, 3, 4, 8)
#: Codes per packing block along K; every bit width stores one block in ``bits`` words.
BLOCK_CODES = 32


@dataclass
class PackedWeight:
    """A low-bit weight in the kernel's layout (see the module docstring).

    qweight: int32 ``[K * bits / 32, N]``. scales, zeros: float16 ``[K / group_size, N]``.
    bits: 2, 3, 4 or 8. group_size: inputs per grid (``K`` for per-channel grids).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in PACKED_BITS:
            raise PressoError(f"PackedWeight.bits must be one of {PACKED_BITS}, got {self.bits}")
        if self.qweight.dtype != torch.int32 or self.qweight.dim() != 2:
            raise PressoError(
                f"PackedWeight.qweight must be a 2-D int32 tensor, got {self.qweight.dtype} "
                f"{tuple(self.qweight.shape)}"
            )
        k, n = self.in_features, self.out_features
        groups = (k // self.group_size, n)
        for name in ("scales", "zeros"):
            t = getattr(self, name)
            if t.dtype != torch.float16 or tuple(t.shape) != groups:
                raise PressoError(
                    f"PackedWeight.{name} must be float16 of shape {groups}, "
                    f"got {t.dtype} {tuple(t.shape)}"
                )

    @property
    def in_features(self) -> int:
        """K, the reduction length."""
        return self.qweight.shape[0] * 32 // self.bits

    @property
    def out_features(self) -> int:
        """N, the output width."""
        return self.qweight.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes a kernel streams from memory for this weight (codes + scales + zeros)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))

    def to(self, device: torch.device | str) -> PackedWeight:
        """A copy on ``device`` (the kernel needs CUDA tensors, or CPU ones under the
        Triton interpreter)."""
        return PackedWeight(
            self.qweight.to(device),
            self.scales.to(device),
            self.zeros.to(device),
            self.bits,
            self.group_size,
        )


def pack(qw: QuantizedWeight) -> PackedWeight:
    """Pack ``qw`` into the kernel's layout (see the module docstring)."""
    bits = qw.spec.bits
    n, k = qw.shape
    if bits not in PACKED_BITS:
        raise PressoError(
            f"the packed format holds {PACKED_BITS}-bit codes, got {bits} bits: "
            "quantize to one of those widths"
        )
    if k % BLOCK_CODES != 0:
        raise PressoError(
            f"packing needs in_features to be a multiple of {BLOCK_CODES}, got {k}: "
            "pad the layer or leave it dense"
        )
    group_size = qw.spec.group_width(k)
    codes = qw.codes.t().to(torch.int64).reshape(k // BLOCK_CODES, BLOCK_CODES, n)
    words = _pack_blocks(codes, bits).reshape(k * bits // 32, n)
    scales = qw.scales.t().contiguous().to(torch.float16)
    if not torch.isfinite(scales).all():
        raise PressoError("a group's scale overflows float16: this weight cannot be packed")
    return PackedWeight(
        qweight=_to_int32(words),
        scales=scales,
        zeros=qw.zeros.t().contiguous().to(torch.float16),
        bits=bits,
        group_size=group_size,
    )


def _pack_blocks(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` int64 ``[B, 32, N]`` -> words int64 ``[B, bits, N]`` (unsigned 32-bit values)."""
    blocks, _, n = codes.shape
    if bits == 3:
        low = (codes & 3).reshape(blocks, 2, 16, n)
        high = (codes >> 2) & 1
        low_words = (low << (2 * _arange(16, codes)).view(1, 1, 16, 1)).sum(dim=2)
        high_word = (high << _arange(32, codes).view(1, 32, 1)).sum(dim=1, keepdim=True)
        return torch.cat([low_words, high_word], dim=1)
    per_word = 32 // bits
    grouped = codes.reshape(blocks, bits, per_word, n)
    return (grouped << (bits * _arange(per_word, codes)).view(1, 1, per_word, 1)).sum(dim=2)


def unpack(packed: PackedWeight) -> QuantizedWeight:
    """The :class:`QuantizedWeight` that ``packed`` holds (scales as their fp16 values)."""
    bits, n, k = packed.bits, packed.out_features, packed.in_features
    words = packed.qweight.to(torch.int64) & 0xFFFFFFFF
    words = words.reshape(k // BLOCK_CODES, bits, n)
    if bits == 3:
        shifts = 2 * _arange(16, words).view(1, 1, 16, 1)
        low = ((words[:, :2, None, :] >> shifts) & 3).reshape(-1, BLOCK_CODES, n)
        high = (words[:, 2:3, :] >> _arange(32, words).view(1, 32, 1)) & 1
        codes = low | (high << 2)
    else:
        per_word = 32 // bits
        shifts = bits * _arange(per_word, words).view(1, 1, per_word, 1)
        codes = ((words[:, :, None, :] >> shifts) & ((1 << bits) - 1)).reshape(-1, BLOCK_CODES, n)
    group_size = None if packed.group_size == k else packed.group_size
    return QuantizedWeight(
        codes=codes.reshape(k, n).t().contiguous().to(torch.uint8),
        scales=packed.scales.t().contiguous().float(),
        zeros=packed.zeros.t().contiguous().float(),
        spec=QuantSpec(bits=bits, group_size=group_size),
    )


def dequantize(packed: PackedWeight) -> torch.Tensor:
    """The float32 ``[N, K]`` weight that ``packed`` represents."""
    return unpack(packed).dequantize()


def reference_matmul(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """``x [..., K] @ W^T`` in float32, ``W`` dequantized from ``packed``: the function the
    kernel computes, up to its rounding (float32 ``[..., N]``)."""
    w = dequantize(packed).to(x.device)
    return x.float() @ w.t()


def _arange(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=like.device)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> the same bits as int32 (two's complement)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
