"""Triton weight-only low-bit GEMM: ``y[M, N] = x[M, K] @ dequant(W)^T`` for packed 2/3/4/8-bit W.

``x`` is fp16 or bf16; products accumulate in fp32; ``W`` comes in the layout of
:mod:`presso.kernels._packing` (int32 words along K, fp16 group scales and zero points).
The kernel streams each packed word from memory once, unpacks it with shifts and masks in
registers, and dequantizes in registers: for memory-bound decode the traffic is the packed
weight (``bits / 16`` of an fp16 weight's) plus one scale and zero per group and column.

Two inner paths, chosen at compile time by the tile:

* ``BLOCK_M == 1`` — GEMV on CUDA cores for decode: one row of ``x`` per program, a
  broadcast multiply and a reduction over K. Codes become floats with the exponent trick
  (``code | 0x4B000000`` read as fp32 is ``2**23 + code``), which avoids the slow int->float
  conversion unit; ``SPLIT_K`` programs share K and add their partial sums atomically, so
  that a 4096-wide layer still fills an H100's 132 SMs at M = 1.
* ``BLOCK_M >= 16`` — ``tl.dot`` on tensor cores for batched decode and prefill.

When a tile of K lies inside one quantization group (``GROUP_SIZE % BLOCK_K == 0``), the
tile's dot product is taken on the raw codes and scaled once per column:
``s * (x . codes - z * sum(x))``; otherwise every weight is dequantized from its own group.

Module import needs ``triton`` (not a GPU); nothing imports this module at ``import presso``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from presso.errors import MissingExtraError, PressoError

try:
    import triton
    import triton.language as tl
except ImportError:
    raise MissingExtraError("triton", "triton", "presso's Triton kernels") from None
from presso.kernels._packing import PackedWeight

#: 2**23 as an fp32 bit pattern: OR-ing a code below 2**23 into it gives the float 2**23 + code.
_MAGIC_BITS = tl.constexpr(0x4B000000)
_MAGIC = tl.constexpr(8388608.0)


@triton.jit
def _unpack_codes(
    w_ptr,  # int32 [K * BITS / 32, N] packed codes (see _packing.py)
    k0,  # first K index of the tile (a multiple of BLOCK_K)
    offs_n,  # [BLOCK_N] output columns of the tile
    n_mask,  # [BLOCK_N] which of them exist (N need not divide by BLOCK_N)
    N,  # row stride of the packed words (= out_features)
    BITS: tl.constexpr,  # 2, 3, 4 or 8
    BLOCK_K: tl.constexpr,  # tile length along K, a multiple of 32
):
    """The codes of rows ``k0 .. k0 + BLOCK_K`` as uint32 ``[ROWS, PER_ROW, BLOCK_N]`` with
    ``k = k0 + PER_ROW * row + slot`` (row-major K order); each packed word is loaded once and
    split into its codes with a shift and a mask in registers."""
    if BITS == 3:
        # Row i holds k = 16 i + j of block b = i // 2: low two bits from plane word
        # 3b + i % 2, high bit from word 3b + 2 at offset 16 (i % 2) + j.
        i = tl.arange(0, BLOCK_K // 16)
        block = k0 // 32 + i // 2
        low_row = 3 * block + i % 2
        high_row = 3 * block + 2
        # Loaded as [ROWS, 1, BLOCK_N] so that the slot axis broadcasts inside each thread.
        mask = n_mask[None, None, :]
        cols = offs_n[None, None, :]
        low = tl.load(w_ptr + low_row[:, None, None] * N + cols, mask=mask, other=0)
        high = tl.load(w_ptr + high_row[:, None, None] * N + cols, mask=mask, other=0)
        # Logical shifts (uint32): the sign bit is data, not a sign.
        low = low.to(tl.uint32, bitcast=True)
        high = high.to(tl.uint32, bitcast=True)
        j = tl.arange(0, 16)
        low_codes = (low >> (2 * j)[None, :, None]) & 3
        high_shift = (i % 2)[:, None] * 16 + j[None, :]
        high_codes = (high >> high_shift[:, :, None]) & 1
        return low_codes | (high_codes << 2)
    else:
        PER_WORD: tl.constexpr = 32 // BITS
        rows = k0 // PER_WORD + tl.arange(0, BLOCK_K // PER_WORD)
        # Loaded as [ROWS, 1, BLOCK_N] so that the slot axis broadcasts inside each thread.
        words = tl.load(
            w_ptr + rows[:, None, None] * N + offs_n[None, None, :],
            mask=n_mask[None, None, :],
            other=0,
        ).to(tl.uint32, bitcast=True)  # logical shifts: the sign bit is data
        shifts = tl.arange(0, PER_WORD) * BITS
        return (words >> shifts[None, :, None]) & ((1 << BITS) - 1)


@triton.jit
def _wq_gemm_kernel(
    x_ptr,  # [M, K] activations, fp16 or bf16, contiguous (row stride K)
    w_ptr,  # [K * BITS / 32, N] int32 packed codes, contiguous (row stride N)
    s_ptr,  # [K / GROUP_SIZE, N] fp16 scales
    z_ptr,  # [K / GROUP_SIZE, N] fp16 zero points (integral codes)
    y_ptr,  # [M, N] output in x's dtype; zero-filled before launch when SPLIT_K > 1
    M,  # rows of x (tokens)
    N,  # out_features
    K,  # in_features (a multiple of BLOCK_K * SPLIT_K)
    BITS: tl.constexpr,  # bits per code: 2, 3, 4 or 8
    GROUP_SIZE: tl.constexpr,  # inputs sharing one scale and zero (K for per-channel grids)
    BLOCK_M: tl.constexpr,  # rows of x per program; 1 selects the CUDA-core GEMV path
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # K per loop step, a multiple of 32
    SPLIT_K: tl.constexpr,  # programs sharing one output tile, each over K / SPLIT_K
    STAGES: tl.constexpr,  # software-pipeline depth of the K loop (loads in flight)
):
    # Codes per row of the unpacked [ROWS, PER_ROW, BLOCK_N] view (see _unpack_codes).
    PER_ROW: tl.constexpr = 16 if BITS == 3 else 32 // BITS
    ROWS: tl.constexpr = BLOCK_K // PER_ROW
    ONE_GROUP: tl.constexpr = GROUP_SIZE % BLOCK_K == 0  # every tile inside one group
    tl.static_assert(BLOCK_K % 32 == 0, "BLOCK_K must be a multiple of 32")
    tl.static_assert(BLOCK_M == 1 or BLOCK_M >= 16, "BLOCK_M must be 1 (GEMV) or >= 16")
    tl.static_assert(BLOCK_M > 1 or ONE_GROUP, "the GEMV path needs GROUP_SIZE % BLOCK_K == 0")
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    k_len = K // SPLIT_K
    k_begin = pid_k * k_len
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # An explicit pipeline depth makes Triton prefetch the packed words (cp.async) on the
    # GEMV path too, not only the loads that feed tl.dot.
    for k0 in tl.range(k_begin, k_begin + k_len, BLOCK_K, num_stages=STAGES):
        codes = _unpack_codes(w_ptr, k0, offs_n, n_mask, N, BITS, BLOCK_K)
        # 2**23 + code as fp32, exactly, without the (slow) int->float conversion unit.
        magic = (codes | _MAGIC_BITS).to(tl.float32, bitcast=True)
        if ONE_GROUP:
            g = k0 // GROUP_SIZE
            scale = tl.load(s_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            zero = tl.load(z_ptr + g * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        if BLOCK_M == 1:
            # x as [ROWS, PER_ROW] in the codes' K order: the big tile is never reshuffled.
            k2 = k0 + tl.arange(0, ROWS)[:, None] * PER_ROW + tl.arange(0, PER_ROW)[None, :]
            x2 = tl.load(x_ptr + pid_m * K + k2).to(tl.float32)
            centred = magic - (zero + _MAGIC)[None, None, :]  # code - zero, exact
            part = tl.sum(tl.sum(x2[:, :, None] * centred, axis=1), axis=0)
            acc += (part * scale)[None, :]
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=m_mask[:, None], other=0.0
            )
            magic = tl.reshape(magic, (BLOCK_K, BLOCK_N))
            if ONE_GROUP:
                # Codes <= 255 are exact in fp16 and bf16: the tensor cores see raw codes,
                # and the tile's grid is applied once per column: s * (x.c - z * sum(x)).
                part = tl.dot(x, (magic - _MAGIC).to(x.dtype))
                x_sum = tl.sum(x.to(tl.float32), axis=1)
                acc += (part - x_sum[:, None] * zero[None, :]) * scale[None, :]
            else:
                # Groups shorter than the tile: each row of it reads its own group's grid.
                grid_offs = (offs_k // GROUP_SIZE)[:, None] * N + offs_n[None, :]
                scale = tl.load(s_ptr + grid_offs, mask=n_mask[None, :], other=0.0)
                zero = tl.load(z_ptr + grid_offs, mask=n_mask[None, :], other=0.0)
                w = (magic - (zero.to(tl.float32) + _MAGIC)) * scale.to(tl.float32)
                acc = tl.dot(x, w.to(x.dtype), acc)
    y = acc.to(y_ptr.dtype.element_ty)
    y_offs = offs_m[:, None] * N + offs_n[None, :]
    y_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptr + y_offs, y, mask=y_mask)
    else:
        tl.atomic_add(y_ptr + y_offs, y, mask=y_mask, sem="relaxed")


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the kernel (an autotuning candidate, or a fixed override).

    block_m: rows of x per program (1: GEMV path; 16, 32, 64, 128: tensor cores).
    block_n, block_k: output columns and K per step. split_k: programs sharing K.
    num_warps, num_stages: Triton's warps per program and software-pipeline depth.
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict[str, int]:
        """The constexpr meta-parameters of this tile, by kernel argument name."""
        return {
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_K": self.block_k,
            "SPLIT_K": self.split_k,
            "STAGES": self.num_stages,
        }

    def to_triton(self) -> triton.Config:
        # Split-K programs add into the output, so it must start at zero on every launch
        # (autotuning runs included): the pre-hook does that.
        return triton.Config(
            self.meta(),
            num_warps=self.num_warps,
            num_stages=self.num_stages,
            pre_hook=_zero_output if self.split_k > 1 else None,
        )

    def problem(self, k: int, group_size: int) -> str | None:
        """Why this tile cannot run a reduction of length ``k`` with groups of ``group_size``,
        or None when it can."""
        if self.block_k % 32 or self.block_k < 32:
            return f"block_k {self.block_k} must be a multiple of 32"
        if k % (self.block_k * self.split_k):
            return f"K={k} is not a multiple of block_k * split_k = {self.block_k * self.split_k}"
        if self.block_m != 1 and self.block_m < 16:
            return f"block_m {self.block_m} must be 1 (GEMV) or >= 16 (tensor cores)"
        if self.block_m == 1 and group_size % self.block_k:
            return f"the GEMV tile (block_m 1) needs block_k {self.block_k} to divide the group size {group_size}"
        return None


def _zero_output(nargs: dict[str, Any]) -> None:
    nargs["y_ptr"].zero_()


#: Decode (M = 1..16). GEMV tiles (block_m 1) are 128 columns per warp, so that each thread
#: holds 4 adjacent columns (one 16-byte load per packed row) and the whole K tile: the
#: reduction over K stays inside the thread. Split-K spreads a 4096-wide layer over every SM.
#: Split-K costs a zero-fill of the output (a second kernel launch) per call, and at M = 1 a
#: 4096 x 4096 4-bit weight (8 MB) takes only ~2.5 us of an H100's HBM time; the last three
#: GEMV tiles hide HBM latency with deep pipelines instead (7 K tiles in flight per program:
#: ~1.8 MB over the whole GPU for N = 4096 at 4 bits). The autotuner, which times the zero-fill
#: with its kernel, chooses (not yet run on a GPU: an estimate). Their block_k is at most 128,
#: as the GEMV path needs it to divide the group; none spills registers on sm_90 (ptxas via
#: Triton's compiler, no GPU needed: 64-168 registers, 5-60 KB of shared memory, 2-8 bits).
DECODE_CONFIGS = [
    TileConfig(1, 128, 64, 1, num_warps=1, num_stages=4),
    TileConfig(1, 128, 64, 4, num_warps=1, num_stages=3),
    TileConfig(1, 128, 128, 8, num_warps=1, num_stages=2),
    TileConfig(1, 128, 32, 16, num_warps=1, num_stages=4),
    TileConfig(1, 128, 32, 1, num_warps=1, num_stages=4),  # short K (small models)
    TileConfig(1, 256, 64, 1, num_warps=2, num_stages=4),
    TileConfig(1, 256, 64, 4, num_warps=2, num_stages=4),
    TileConfig(1, 256, 64, 8, num_warps=2, num_stages=3),
    TileConfig(1, 256, 128, 16, num_warps=2, num_stages=2),
    TileConfig(1, 256, 32, 8, num_warps=2, num_stages=4),
    TileConfig(1, 512, 64, 8, num_warps=4, num_stages=3),
    TileConfig(1, 512, 32, 16, num_warps=4, num_stages=4),
    TileConfig(1, 32, 128, 1, num_warps=1, num_stages=8),  # no split, no zero-fill
    TileConfig(1, 64, 128, 2, num_warps=2, num_stages=8),
    TileConfig(1, 32, 64, 1, num_warps=1, num_stages=8),  # groups of 64
    TileConfig(16, 64, 128, 1, num_warps=4, num_stages=4),
    TileConfig(16, 64, 128, 4, num_warps=4, num_stages=3),
    TileConfig(16, 128, 64, 4, num_warps=4, num_stages=4),
    TileConfig(16, 128, 128, 1, num_warps=4, num_stages=3),
    TileConfig(16, 64, 32, 1, num_warps=4, num_stages=2),  # fits every K and group
]
#: Prefill (M >= 32): larger tiles that reuse each dequantized weight tile across many rows.
#: (128 x 256 x 64 and 128 x 128 x 128 tiles spill registers on sm_90 and are left out.)
PREFILL_CONFIGS = [
    TileConfig(32, 128, 128, 1, num_warps=4, num_stages=4),
    TileConfig(64, 64, 64, 1, num_warps=4, num_stages=4),
    TileConfig(64, 128, 64, 1, num_warps=4, num_stages=4),
    TileConfig(128, 64, 64, 1, num_warps=4, num_stages=4),
    TileConfig(128, 128, 64, 1, num_warps=8, num_stages=3),
    TileConfig(64, 128, 32, 1, num_warps=4, num_stages=4),  # fits every K and group
]
_ALL_CONFIGS = DECODE_CONFIGS + PREFILL_CONFIGS


def _suits(tile: TileConfig, m: int, k: int, group_size: int, x: torch.Tensor) -> bool:
    """Whether autotuning should try ``tile`` for ``m`` rows: valid, and not hopeless."""
    if tile.problem(k, group_size) is not None:
        return False
    if tile.block_m == 1 and m > 8:  # the GEMV path re-reads the weights for every row
        return False
    if tile.block_m == 16 and m > 64:
        return False
    if tile.block_m > 16 and m <= 16:
        return False
    if tile.split_k > 1:
        if m > 64:
            return False
        # bf16 atomic adds are native from Hopper (sm_90) on.
        if (
            x.dtype == torch.bfloat16
            and x.is_cuda
            and torch.cuda.get_device_capability(x.device)[0] < 9
        ):
            return False
    return True


def _prune(configs: list[triton.Config], nargs: dict[str, Any], **meta: Any) -> list[triton.Config]:
    m, k, x, group_size = nargs["M"], nargs["K"], nargs["x_ptr"], meta["GROUP_SIZE"]
    keep = [c for c in configs if _suits(_tile_of(c), m, k, group_size, x)]
    # Tensor-core tiles with block_k = 32 and no split fit every K and group: never empty.
    return keep or [c for c in configs if _tile_of(c).problem(k, group_size) is None][-1:]


def _tile_of(config: triton.Config) -> TileConfig:
    meta = config.kwargs
    return TileConfig(
        meta["BLOCK_M"],
        meta["BLOCK_N"],
        meta["BLOCK_K"],
        meta["SPLIT_K"],
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


_wq_gemm_tuned = triton.autotune(
    configs=[t.to_triton() for t in _ALL_CONFIGS],
    key=["M", "N", "K", "BITS", "GROUP_SIZE"],
    prune_configs_by={"early_config_prune": _prune},
)(_wq_gemm_kernel)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check(x: torch.Tensor, packed: PackedWeight) -> None:
    k = packed.in_features
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise PressoError(f"wq_matmul: x must be float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise PressoError(
            f"wq_matmul: x's last dimension must be in_features={k}, got shape {tuple(x.shape)}"
        )
    if not x.is_contiguous():
        raise PressoError("wq_matmul: x must be contiguous (call .contiguous() first)")
    tensors = {"qweight": packed.qweight, "scales": packed.scales, "zeros": packed.zeros}
    for name, t in tensors.items():
        if t.device != x.device:
            raise PressoError(
                f"wq_matmul: packed.{name} is on {t.device} but x is on {x.device}: "
                "move the weight with packed.to(x.device)"
            )
        if not t.is_contiguous():
            raise PressoError(f"wq_matmul: packed.{name} must be contiguous")
    if x.device.type != "cuda" and not _interpreting():
        raise PressoError(
            f"wq_matmul runs on CUDA tensors, got {x.device} "
            "(on CPU only under TRITON_INTERPRET=1, set before triton is imported)"
        )


def wq_matmul(
    x: torch.Tensor, packed: PackedWeight, *, config: TileConfig | None = None
) -> torch.Tensor:
    """``x [..., K] @ dequant(W)^T -> [..., N]`` in x's dtype (fp16 or bf16), fp32 accumulation.

    config: a fixed tile (skips autotuning, e.g. under the interpreter in tests); by default
    the tile is autotuned once per (M, N, K, bits, group size, dtype) and cached.
    """
    k, n = packed.in_features, packed.out_features
    if config is not None and (problem := config.problem(k, packed.group_size)) is not None:
        raise PressoError(f"wq_matmul: tile {config} cannot run this weight: {problem}")
    _check(x, packed)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    args = (x2, packed.qweight, packed.scales, packed.zeros, y, m, n, k)
    fixed = {"BITS": packed.bits, "GROUP_SIZE": packed.group_size}

    def grid(meta: dict[str, int]) -> tuple[int, int, int]:
        return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]), meta["SPLIT_K"])

    if config is None:
        _wq_gemm_tuned[grid](*args, **fixed)
    else:
        if config.split_k > 1:
            y.zero_()
        _wq_gemm_kernel[grid](
            *args,
            **fixed,
            **config.meta(),
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    return y.reshape(*x.shape[:-1], n)


def chosen_config() -> str | None:
    """The tile the autotuner picked for the most recent autotuned call (for reports)."""
    best = getattr(_wq_gemm_tuned, "best_config", None)
    return None if best is None else str(best)


class WQLinear(torch.nn.Module):
    """A drop-in ``nn.Linear`` replacement whose weight is packed and multiplied by
    :func:`wq_matmul` (fp16/bf16 activations on a CUDA device)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.packed = packed
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = wq_matmul(x.contiguous(), self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        p = self.packed
        return (
            f"in={self.in_features}, out={self.out_features}, bits={p.bits}, group={p.group_size}"
        )
