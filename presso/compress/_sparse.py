"""Pruning: zero a given percentage of a Linear weight's entries — by magnitude, by Wanda's
activation-weighted magnitude, or by SparseGPT, which also updates the weights it keeps.

Conventions shared by the three methods:

* a level is ``sparsity`` in integer percent, 0..99; level 0 is the dense weight, unchanged;
* ``"unstructured"``: every output row loses exactly ``floor(in * sparsity / 100)`` weights. The
  comparison is within rows (Wanda's and SparseGPT's choice, adopted for magnitude too) so every
  output neuron keeps the same number of inputs and a level means the same under every method;
* ``"2:4"``: in every group of 4 consecutive weights along the input dimension exactly 2 are
  zero — the pattern that sparse tensor cores run at 2x. Only level 50 (and the dense level 0)
  exist, and ``in_features`` must be divisible by 4.

The result is stored dense (float32 with zeros), so any kernel can run it; a packed format for
2:4 kernels can be derived from it at export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from presso.compress._gptq import _check, _inverse_cholesky

PATTERNS = ("unstructured", "2:4")


@dataclass
class SparseWeight:
    """A pruned ``[out, in]`` weight: ``weight`` float32 with zeros where pruned, the nominal
    ``sparsity`` level (percent) and the ``pattern`` it follows."""

    weight: torch.Tensor
    sparsity: int
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        if self.weight.dtype != torch.float32 or self.weight.dim() != 2:
            raise ValueError(
                "weight must be a 2-D float32 tensor, "
                f"got {self.weight.dtype} {tuple(self.weight.shape)}"
            )
        _pruned_per_row(self.weight.shape[1], self.sparsity, self.pattern)  # validates both

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return (self.weight.shape[0], self.weight.shape[1])

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight to run the model with (zeros included)."""
        return self.weight

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name: just ``weight``."""
        return {"weight": self.weight}

    def meta(self) -> dict[str, Any]:
        """JSON-ready facts that, with :meth:`tensors`, rebuild this weight."""
        return {"sparsity": self.sparsity, "pattern": self.pattern}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> SparseWeight:
        """Rebuild from :meth:`tensors` and :meth:`meta` output."""
        if "weight" not in tensors:
            raise ValueError(f"SparseWeight tensors lack 'weight'; found {sorted(tensors)}")
        return cls(tensors["weight"], int(meta["sparsity"]), str(meta["pattern"]))


def magnitude_prune(
    weight: torch.Tensor, sparsity_percent: int, *, pattern: str = "unstructured"
) -> SparseWeight:
    """Zero the smallest ``|w|`` of each output row (or of each group of 4, for ``"2:4"``)."""
    k = _pruned_per_row(_check_weight(weight), sparsity_percent, pattern)
    w = weight.detach().to(torch.float32).clone()
    if k:
        w[_lowest(w.abs(), k, pattern)] = 0.0
    return SparseWeight(w, sparsity_percent, pattern)


def wanda_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity_percent: int,
    *,
    pattern: str = "unstructured",
) -> SparseWeight:
    """Wanda (Sun et al. 2023, arXiv:2306.11695): zero the lowest ``|W_ij| * ||X_j||₂`` per row.

    ``hessian`` ``[in, in]`` is ``H = (2/n) XᵀX`` (as :class:`HessianAccumulator` builds it), so
    ``||X_j||₂ ∝ sqrt(H_jj)``; the constant factor does not change the ranking within a row. Only
    the diagonal is read. The kept weights are not changed.
    """
    in_features = _check_weight(weight)
    _check_hessian(hessian, in_features)
    k = _pruned_per_row(in_features, sparsity_percent, pattern)
    w = weight.detach().to(torch.float32).clone()
    if k:
        norms = torch.diagonal(hessian.detach()).to(w.device, torch.float32).clamp(min=0).sqrt()
        w[_lowest(w.abs() * norms, k, pattern)] = 0.0
    return SparseWeight(w, sparsity_percent, pattern)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity_percent: int,
    *,
    pattern: str = "unstructured",
    damp: float = 0.01,
    block_size: int = 128,
) -> SparseWeight:
    """SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774): prune column by column, moving each
    pruned weight's error onto the not-yet-visited columns through the inverse Hessian.

    The mask is chosen adaptively: at the start of each block of ``block_size`` columns (for
    ``"2:4"``: of each group of 4) from ``w² / U_jj²``, ``U`` the upper Cholesky factor of
    ``(H + λI)⁻¹`` and ``w`` the weights as updated so far — the OBS saliency of removing ``w``.
    Unstructured, each row prunes its lowest scores among the block's columns, the block's share
    ``floor(i2 * s/100) - floor(i1 * s/100)`` of the row's total, so that the row total is
    exact. The update is GPTQ's (see :mod:`presso.compress._gptq`) with "round to grid" replaced
    by "zero if masked"; ``damp`` (fraction of mean diag H) likewise. ``block_size`` changes the
    mask (scores are re-read per block), so it is part of the method. Inputs are not modified.
    """
    return sparsegpt_prune_many(
        weight, hessian, [sparsity_percent], pattern=pattern, damp=damp, block_size=block_size
    )[0]


def sparsegpt_prune_many(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    levels: Sequence[int],
    *,
    pattern: str = "unstructured",
    damp: float = 0.01,
    block_size: int = 128,
) -> list[SparseWeight]:
    """:func:`sparsegpt_prune` of one weight at several sparsity levels in one pass.

    Each level's result is that of pruning alone: masks are chosen per row, so the levels' copies
    of the weight can be stacked as extra rows and share one factorization and one column loop.
    """
    _, in_features = _check(weight, hessian, damp, block_size)
    counts = [_pruned_per_row(in_features, level, pattern) for level in levels]
    if pattern == "2:4" and block_size % 4:
        raise ValueError(f"2:4 SparseGPT needs block_size divisible by 4, got {block_size}")
    dense = weight.detach().to(torch.float32)
    pruned = [level for level, k in zip(levels, counts) if k]
    results = _sparsegpt_rows(dense, hessian, pruned, pattern, damp, block_size) if pruned else []
    by_level = dict(zip(pruned, results))
    return [
        SparseWeight(by_level[level] if k else dense.clone(), level, pattern)
        for level, k in zip(levels, counts)
    ]


def _sparsegpt_rows(
    dense: torch.Tensor,
    hessian: torch.Tensor,
    levels: list[int],
    pattern: str,
    damp: float,
    block_size: int,
) -> list[torch.Tensor]:
    """The column loop of SparseGPT for ``levels`` (each prunes something); one weight each."""
    out, in_features = dense.shape
    device = dense.device
    n = len(levels)
    w = dense.clone()
    h = hessian.detach().to(device, torch.float64).clone()
    # A column whose input is always zero has no effect on the output: zero it (free to prune).
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_cholesky(h, damp).to(torch.float32)
    u_diag = torch.diagonal(u)

    # Transposed, a column of W is a contiguous row (faster rank-1 updates, as in GPTQ); each
    # level gets its own copy of the weight as extra columns of wt.
    wt = w.T.repeat(1, n).contiguous()
    mask_t = torch.zeros(in_features, n * out, dtype=torch.bool, device=device)
    level_of_row = torch.tensor(levels, device=device).repeat_interleave(out)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        w1 = wt[i1:i2]  # updated in place: each row ends up as its pruned-and-updated value
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        if pattern == "unstructured":
            # This block's share of each row's count: floor(i2 s/100) - floor(i1 s/100).
            share = (i2 * level_of_row) // 100 - (i1 * level_of_row) // 100
            scores = w1.pow(2) / u_diag[i1:i2, None].pow(2)
            mask_t[i1:i2] = _rank(scores) < share
        for i in range(i2 - i1):
            col = i1 + i
            if pattern == "2:4" and col % 4 == 0:
                # Scores of the group's weights as updated by every column before it.
                scores = w1[i : i + 4].pow(2) / u_diag[col : col + 4, None].pow(2)
                mask_t[col : col + 4] = _rank(scores) < 2
            # The error of zeroing the masked weights (zero where kept), scaled as in GPTQ.
            e = torch.div(torch.where(mask_t[col], w1[i], 0.0), u1[i, i], out=err1[i])
            w1[i + 1 :].addr_(u1[i, i + 1 :], e, alpha=-1.0)
            w1[i].masked_fill_(mask_t[col], 0.0)  # exactly zero, not zero up to float rounding
        # The lazy half: the columns after this block get the whole block's update in one GEMM.
        wt[i2:].addmm_(u[i1:i2, i2:].T, err1, alpha=-1.0)
    return [wt[:, k * out : (k + 1) * out].T.contiguous() for k in range(n)]


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """The rank (0 = lowest) of each entry of ``scores`` ``[n, m]`` within its column."""
    order = torch.argsort(scores, dim=0, stable=True)
    ranks = torch.empty_like(order)
    arange = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1)
    ranks.scatter_(0, order, arange.expand_as(order))
    return ranks


def _lowest(scores: torch.Tensor, k: int, pattern: str) -> torch.Tensor:
    """Boolean mask ``[out, in]`` of the ``k`` lowest scores of each row (``"unstructured"``) or
    the 2 lowest of each group of 4 consecutive columns (``"2:4"``)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if pattern == "2:4":
        groups = scores.reshape(scores.shape[0], -1, 4)
        idx = torch.topk(groups, 2, dim=-1, largest=False).indices
        return mask.view_as(groups).scatter_(-1, idx, True).view_as(scores)
    idx = torch.topk(scores, k, dim=1, largest=False).indices
    return mask.scatter_(1, idx, True)


def _pruned_per_row(in_features: int, sparsity_percent: int, pattern: str) -> int:
    """Weights zeroed per output row at ``sparsity_percent``; validates level and pattern."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if (
        isinstance(sparsity_percent, bool)
        or not isinstance(sparsity_percent, int)
        or not 0 <= sparsity_percent <= 99
    ):
        raise ValueError(f"sparsity must be an int percent in 0..99, got {sparsity_percent!r}")
    if pattern == "2:4":
        if sparsity_percent not in (0, 50):
            raise ValueError(
                f"the 2:4 pattern prunes exactly 50% (2 of every 4 weights); got level "
                f"{sparsity_percent}: use levels 50 (or 0 for dense), or pattern 'unstructured'"
            )
        if in_features % 4:
            raise ValueError(f"the 2:4 pattern needs in_features divisible by 4, got {in_features}")
    return in_features * sparsity_percent // 100


def _check_weight(weight: torch.Tensor) -> int:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or infinite entries")
    return weight.shape[1]


def _check_hessian(hessian: torch.Tensor, in_features: int) -> None:
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian must be [{in_features}, {in_features}], got {tuple(hessian.shape)}"
        )
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian has NaN or infinite entries")
