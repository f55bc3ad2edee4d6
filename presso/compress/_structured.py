"""Structured pruning with the OBS update (ZipLM, Kurtic et al. 2023, arXiv:2302.04089, Alg. 1):
remove whole input structures of a Linear — FFN intermediate channels or attention heads — and
move their contribution onto the kept columns through the inverse Hessian.

A *structure* is ``group_size`` consecutive input columns: one column of ``down_proj`` (BERT:
``output.dense``) per FFN intermediate channel, ``head_dim`` columns of ``o_proj`` (BERT:
``attention.output.dense``) per attention head. With ``H = (2/n) XᵀX + λI`` (as
:class:`~presso.compress.HessianAccumulator` builds it, damped as GPTQ damps it) and ``Hi = H⁻¹``,
removing structure ``S`` (columns ``S``) and re-fitting the kept columns costs, in output error
``½ tr(ΔW H ΔWᵀ)`` (= mean squared output error per token without the damping),

    ε_S = ½ tr(W_S (Hi_SS)⁻¹ W_Sᵀ),   ΔW = -W_S (Hi_SS)⁻¹ Hi_S:,

and ``Hi`` becomes the inverse Hessian of the kept columns by ``Hi -= Hi_:S (Hi_SS)⁻¹ Hi_S:``.
ZipLM's greedy loop removes the structure with the lowest ``ε_S``, updates ``W`` and ``Hi``, and
repeats; because each update is exact, the weight after ``k`` steps is the least-squares optimum
of the kept columns for the removed set. The removal order does not depend on the target, so one
pass yields every level (a level is the number of structures *kept*).

Grouped-query attention (e.g. SmolLM2: 9 query heads sharing 3 KV heads, 3 per group) removes
**whole KV groups**: a structure is the ``heads_per_group`` query heads of one KV head
(``heads_per_group * head_dim`` columns of ``o_proj``), and the producer loses those query heads'
rows of ``q_proj`` and the KV head's rows of ``k_proj``/``v_proj``. Why not query heads within a
group: the attention then keeps its query/KV ratio, so it is still a plain GQA attention that
every runtime runs — transformers' ``LlamaAttention`` reshapes with ``-1`` heads and a fixed
``num_key_value_groups``, so slicing the four Linears is enough — while uneven groups (some KV
heads serving 3 queries, others 2) fit neither ``repeat_kv`` nor the ONNX/Triton attentions.
Removing a KV head also shrinks ``k_proj``/``v_proj`` and the KV cache, which is what decode
latency pays for; removing query heads alone would leave both. The price is coarser levels
(SmolLM2: 3, 2, 1 or 0 groups kept). Biases are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from presso.compress._gptq import _check, _inverse_cholesky


@dataclass
class StructuredWeight:
    """A Linear weight with whole input structures removed: ``weight`` float32
    ``[out, len(kept) * group_size]`` (the kept columns, OBS-updated), ``kept`` the sorted indices
    of the kept structures (int64), ``in_features`` of the dense weight, and ``error`` the
    predicted output error ``½ tr(ΔW H ΔWᵀ)`` of the damped Hessian (0 when nothing is removed)."""

    weight: torch.Tensor
    kept: torch.Tensor
    group_size: int
    in_features: int
    error: float = 0.0

    def __post_init__(self) -> None:
        if self.weight.dtype != torch.float32 or self.weight.dim() != 2:
            raise ValueError(
                "weight must be a 2-D float32 tensor, "
                f"got {self.weight.dtype} {tuple(self.weight.shape)}"
            )
        if self.weight.shape[1] != self.kept.numel() * self.group_size:
            raise ValueError(
                f"weight has {self.weight.shape[1]} columns, {self.kept.numel()} kept structures "
                f"of {self.group_size} columns need {self.kept.numel() * self.group_size}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, kept in_features)``: the shape of the smaller Linear."""
        return (self.weight.shape[0], self.weight.shape[1])

    def kept_columns(self) -> torch.Tensor:
        """Indices of the kept input columns of the dense weight (int64, ascending): also the rows
        to keep of the producing Linear (up/gate_proj; q_proj for heads)."""
        return structure_columns(self.kept, self.group_size)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight a model of the dense shapes runs with (what the
        level database and the evaluator read, as of every operator): :meth:`masked`. The
        smaller Linear's own weight is :attr:`weight`."""
        return self.masked()

    def masked(self) -> torch.Tensor:
        """The float32 ``[out, in]`` dense-shaped weight: removed columns zero, kept ones updated."""
        full = self.weight.new_zeros(self.weight.shape[0], self.in_features)
        full[:, self.kept_columns()] = self.weight
        return full

    def quantized(self, spec: Any) -> StructuredWeight:
        """The kept columns rounded to ``spec`` (a :class:`presso.compress.QuantSpec`, RTN),
        dequantized: the weight of the smaller Linear quantized as a runtime quantizes it, its
        grid's groups running over the kept columns (not the dense ones, whose groups would
        straddle removed columns). Raises ValueError when the grid does not fit the width."""
        from presso.compress._quant import quantize_rtn

        rounded = quantize_rtn(self.weight, spec).dequantize().to(torch.float32).contiguous()
        return StructuredWeight(rounded, self.kept, self.group_size, self.in_features, self.error)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name: ``weight`` and ``kept``."""
        return {"weight": self.weight, "kept": self.kept}

    def meta(self) -> dict[str, Any]:
        """JSON-ready facts that, with :meth:`tensors`, rebuild this weight."""
        return {"group_size": self.group_size, "in_features": self.in_features, "error": self.error}

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> StructuredWeight:
        """Rebuild from :meth:`tensors` and :meth:`meta` output."""
        missing = {"weight", "kept"} - set(tensors)
        if missing:
            raise ValueError(
                f"StructuredWeight tensors lack {sorted(missing)}; found {sorted(tensors)}"
            )
        return cls(
            tensors["weight"],
            tensors["kept"],
            int(meta["group_size"]),
            int(meta["in_features"]),
            float(meta["error"]),
        )


def structure_columns(kept: torch.Tensor, group_size: int) -> torch.Tensor:
    """Column indices ``[s * group_size + j]`` of structures ``kept``, in order (int64).

    For heads, ``structure_columns(kept, head_dim)`` are also the rows of ``k_proj``/``v_proj`` to
    keep (one KV head per structure) and, with ``group_size = heads_per_group * head_dim``, those of
    ``q_proj``.
    """
    offsets = torch.arange(group_size, device=kept.device)
    return (kept.to(torch.int64)[:, None] * group_size + offsets).reshape(-1)


def obs_prune_channels(
    weight: torch.Tensor, hessian: torch.Tensor, kept: Sequence[int], *, damp: float = 0.01
) -> list[StructuredWeight]:
    """Keep ``kept[i]`` input channels (columns) of ``weight`` ``[out, in]``, one result per level.

    For an FFN: ``weight`` is ``down_proj``'s, ``hessian`` its input Hessian; slice ``gate_proj``
    and ``up_proj`` rows (BERT: ``intermediate.dense``) by :meth:`StructuredWeight.kept_columns`.
    """
    return obs_prune_structures(weight, hessian, kept, group_size=1, damp=damp)


def obs_prune_heads(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    kept_heads: Sequence[int],
    *,
    num_heads: int,
    num_kv_heads: int | None = None,
    damp: float = 0.01,
) -> list[StructuredWeight]:
    """Keep ``kept_heads[i]`` query heads of an attention whose output projection is ``weight``
    ``[hidden, num_heads * head_dim]``, one result per level.

    With grouped-query attention (``num_kv_heads < num_heads``) whole KV groups are removed (see
    the module docstring), so each level must be a multiple of ``num_heads // num_kv_heads``; the
    results' ``kept`` are then KV-head indices and ``group_size`` is ``heads_per_group *
    head_dim``. Slice ``q_proj`` rows by ``kept_columns()`` and ``k_proj``/``v_proj`` rows by
    ``structure_columns(kept, head_dim)``.
    """
    in_features = _check_weight_dims(weight)
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads < 1 or kv_heads < 1 or num_heads % kv_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({kv_heads})"
        )
    if in_features % num_heads:
        raise ValueError(
            f"in_features {in_features} is not divisible by num_heads {num_heads}: "
            "the weight is not an attention output projection with equal heads"
        )
    per_group = num_heads // kv_heads
    for level in kept_heads:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= num_heads:
            raise ValueError(
                f"cannot keep {level!r} query heads: the attention has {num_heads}; "
                f"a level must be an int in 0..{num_heads}"
            )
        if level % per_group:
            raise ValueError(
                f"cannot keep {level} query heads: with {num_heads} query heads sharing "
                f"{kv_heads} KV heads, whole groups of {per_group} are removed; "
                f"use a multiple of {per_group}"
            )
    group_size = in_features // kv_heads
    groups = [level // per_group for level in kept_heads]
    return obs_prune_structures(weight, hessian, groups, group_size=group_size, damp=damp)


def obs_prune_structures(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    kept: Sequence[int],
    *,
    group_size: int = 1,
    damp: float = 0.01,
) -> list[StructuredWeight]:
    """ZipLM's greedy structured OBS: keep ``kept[i]`` of the ``in // group_size`` structures.

    ``hessian`` ``[in, in]`` is ``(2/n) XᵀX`` of the layer's inputs; ``damp`` adds
    ``damp * mean(diag H)`` to its diagonal (as GPTQ). Levels may come in any order and repeat;
    one greedy pass serves them all. Computed in float64; inputs are not modified.
    """
    out, in_features = _check(weight, hessian, damp, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide in_features {in_features}: "
            "structures must be whole groups of consecutive columns"
        )
    n_struct = in_features // group_size
    for level in kept:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= n_struct:
            raise ValueError(
                f"cannot keep {level!r} structures of {group_size} columns: the weight has "
                f"{n_struct} (in_features {in_features}); a level must be an int in 0..{n_struct}"
            )
    if not kept:
        return []
    device = weight.device
    w = weight.detach().to(device, torch.float64).clone()
    h = hessian.detach().to(device, torch.float64)
    upper = _inverse_cholesky(h, damp)
    hinv = upper.T @ upper  # (H + λI)⁻¹

    wanted = set(kept)
    if group_size == 1:
        channels = _greedy_columns(w, hinv, wanted)
        return [channels[level] for level in kept]
    snapshots: dict[int, StructuredWeight] = {}
    alive = torch.ones(n_struct, dtype=torch.bool, device=device)
    columns = torch.arange(in_features, device=device).reshape(n_struct, group_size)
    error = 0.0

    def snapshot() -> None:
        keep = alive.nonzero().reshape(-1)
        cols = structure_columns(keep, group_size)
        snapshots[int(keep.numel())] = StructuredWeight(
            w[:, cols].to(torch.float32).contiguous(), keep, group_size, in_features, error
        )

    if n_struct in wanted:
        snapshot()
    for n_alive in range(n_struct - 1, min(wanted) - 1, -1):
        idx = columns[alive]  # [A, g]
        blocks = hinv[idx[:, :, None], idx[:, None, :]]  # [A, g, g]: Hi_SS of each candidate
        w_s = w[:, idx].permute(1, 2, 0)  # [A, g, out]
        lower = torch.linalg.cholesky(blocks)
        solved = torch.cholesky_solve(w_s, lower)  # (Hi_SS)⁻¹ W_Sᵀ, [A, g, out]
        errors = 0.5 * (w_s * solved).sum(dim=(1, 2))
        best = int(torch.argmin(errors))
        s = idx[best]
        error += float(errors[best])
        # W -= W_S (Hi_SS)⁻¹ Hi_S: ;  Hi -= Hi_:S (Hi_SS)⁻¹ Hi_S:
        w -= solved[best].T @ hinv[s]
        w[:, s] = 0.0  # exactly zero, not zero up to rounding
        hinv -= hinv[:, s] @ torch.cholesky_solve(hinv[s], lower[best])
        hinv[s] = 0.0
        hinv[:, s] = 0.0
        alive[torch.nonzero(alive).reshape(-1)[best]] = False
        if n_alive in wanted:
            snapshot()
    return [snapshots[level] for level in kept]


#: Single-column structures removed per greedy step: this fraction of the alive ones (at least
#: one). ZipLM removes one per step; with SmolLM2's 1536 FFN channels that is 1152 full passes
#: over a 1536² inverse Hessian to reach 25 %, minutes per layer on a loaded 2-core CPU.
CHUNK = 1 / 64


def _greedy_columns(
    w: torch.Tensor, hinv: torch.Tensor, wanted: set[int]
) -> dict[int, StructuredWeight]:
    """The greedy loop for single-column structures (FFN channels), in chunks: each step
    removes the ``max(1, alive * CHUNK)`` columns of lowest single-column error together, with
    the exact joint OBS update of that set (so the weights are still the least-squares optimum
    of the kept columns, and the predicted error exact; only the choice is coarser than
    ZipLM's one-at-a-time greedy, and identical below 128 alive columns). ``w`` float64
    ``[out, in]``, ``hinv`` its damped inverse Hessian; both are compacted to the alive
    columns as they go (ten times fewer passes on SmolLM2's 1536 channels).

    The chunk schedule depends on the alive count only; a level that falls inside a chunk is
    branched off the state before it by a partial step. So a level's weights are the same
    whichever other levels are built in the same pass (stopping the schedule at each level,
    as version 2 did, made a level depend on its neighbours)."""
    in_features = w.shape[1]
    alive = torch.arange(in_features, device=w.device)
    snapshots: dict[int, StructuredWeight] = {}
    error = 0.0

    def snapshot(w: torch.Tensor, alive: torch.Tensor, error: float) -> None:
        snapshots[alive.numel()] = StructuredWeight(
            w.to(torch.float32).contiguous(), alive.clone(), 1, in_features, error
        )

    if in_features in wanted:
        snapshot(w, alive, error)
    lowest = min(wanted)
    while alive.numel() > lowest:
        n = alive.numel()
        k = min(max(1, int(n * CHUNK)), n - lowest)
        errors = 0.5 * w.pow(2).sum(dim=0) / torch.diagonal(hinv)
        order = torch.argsort(errors, stable=True)
        for level in (lv for lv in wanted if n - k < lv < n):  # inside this chunk: branch
            bw, _, balive, berror = _remove_columns(w, hinv, alive, order[: n - level])
            snapshot(bw, balive, error + berror)
        w, hinv, alive, step_error = _remove_columns(w, hinv, alive, order[:k])
        error += step_error
        if alive.numel() in wanted:
            snapshot(w, alive, error)
    return snapshots


def _remove_columns(
    w: torch.Tensor, hinv: torch.Tensor, alive: torch.Tensor, gone: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Remove columns ``gone`` (positions among the alive ones) with their joint OBS update:
    ``W_S (Hi_SS)⁻¹`` moves onto the kept columns. Returns the compacted ``w``, ``hinv``,
    ``alive`` and the error the removal adds; the inputs are not modified."""
    mask = torch.ones(alive.numel(), dtype=torch.bool, device=w.device)
    mask[gone] = False
    keep = mask.nonzero().reshape(-1)
    lower = torch.linalg.cholesky(hinv[gone[:, None], gone[None, :]])
    solved = torch.cholesky_solve(w[:, gone].T, lower)  # (Hi_SS)⁻¹ W_Sᵀ, [k, out]
    error = 0.5 * float((w[:, gone].T * solved).sum())
    cross = hinv[gone[:, None], keep[None, :]]  # Hi_S,kept [k, A-k]
    w = w[:, keep] - solved.T @ cross
    hinv = hinv[keep[:, None], keep[None, :]] - cross.T @ torch.cholesky_solve(cross, lower)
    return w, hinv, alive[keep], error


def _check_weight_dims(weight: torch.Tensor) -> int:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    return weight.shape[1]
