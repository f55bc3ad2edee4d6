"""Per-block statistics that the literature baselines rank blocks by, from calibration tokens.

- :func:`block_influence`: ShortGPT's Block Influence (Men et al. 2024), how much a block
  changes the hidden states passing through it; ShortGPT drops the blocks that change least.
- :func:`outlier_ratios`: OWL's layerwise outlier distribution (Yin et al. 2023), the share of a
  block's weights whose Wanda score is an outlier; OWL prunes outlier-rich blocks less.
- :func:`dim_blocks`: which block each dimension of a search space belongs to.

These fill :class:`presso.search.Context`'s ``block_importance``, ``outlier_ratios`` and
``dim_blocks``. Every statistic is measured on the dense model (the handle's dense weights are
restored first). torch is imported inside the functions so that ``import presso`` stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from presso.models import ModelHandle
    from presso.spaces import SearchSpace

#: Where an outlier's threshold mean is taken: over all of a block's scores (OWL's code) or
#: over each unit's own scores.
SCOPES = ("block", "unit")


def block_influence(
    handle: ModelHandle, windows: torch.Tensor, *, batch_size: int = 4
) -> list[float]:
    """Per block, ``BI_i = 1 - mean_t cos(h_in_t, h_out_t)`` over every token ``t`` of
    ``windows`` (``[n, seq]`` token ids), where ``h_in``/``h_out`` are the hidden states
    entering and leaving block ``i``. In ``[0, 2]``; low means the block changes little.
    """
    import torch.nn.functional as F

    n = len(handle.blocks)
    cos_sum = [0.0] * n
    tokens = [0] * n

    def hook(i: int, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = output[0] if isinstance(output, tuple) else output
        cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)  # [batch, seq]
        cos_sum[i] += float(cos.double().sum())
        tokens[i] += cos.numel()

    hooks = [
        block.register_forward_hook(
            lambda _m, args, kwargs, out, i=i: hook(i, args, kwargs, out), with_kwargs=True
        )
        for i, block in enumerate(handle.blocks)
    ]
    _forward_with(handle, windows, batch_size, hooks)
    if min(tokens) == 0:
        raise RuntimeError("block_influence: some blocks were never called by the forward pass")
    return [1.0 - s / t for s, t in zip(cos_sum, tokens)]


def outlier_ratios(
    handle: ModelHandle,
    windows: torch.Tensor,
    *,
    m: float = 5.0,
    batch_size: int = 4,
    scope: str = "block",
) -> list[float]:
    """Per block, OWL's layerwise outlier distribution: the fraction (in ``[0, 1]``) of the
    block's Linear weights whose Wanda score ``A_ij = |W_ij| * ||X_j||_2`` exceeds ``m`` times
    the mean score. ``X_j`` is the unit's ``j``-th input feature over every calibration token.

    scope: ``"block"`` (default) takes the mean over all the block's scores together, as OWL's
        reference code does (``lib/prune_all.py``: the block's score matrices are flattened and
        concatenated, then ``check_outlier_mean`` thresholds at ``M * mean``), which matches the
        paper's per-layer mean ``Ā^l``; ``"unit"`` takes each unit's own mean instead. OWL's
        code reports percent; this returns a fraction.

    OWL accumulates ``||X_j||²`` as a running mean over samples; the scale cancels against the
    mean, so the plain sum over tokens is kept here.
    """
    import torch

    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if m <= 0:
        raise ValueError(f"m must be positive, got {m}")
    # Squared input-column norms per unit, float64: sums over many tokens.
    sq_norms = {
        u.name: torch.zeros(
            u.shape[1], dtype=torch.float64, device=handle.dense_weight(u.name).device
        )
        for u in handle.units
    }

    def hook(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["input"]
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        sq_norms[name] += x.pow(2).sum(dim=0)

    hooks = [
        handle.linear(u.name).register_forward_pre_hook(
            lambda _m, args, kwargs, name=u.name: hook(name, args, kwargs), with_kwargs=True
        )
        for u in handle.units
    ]
    _forward_with(handle, windows, batch_size, hooks)

    ratios = []
    for b in range(len(handle.blocks)):
        scores = [
            handle.dense_weight(u.name).abs().double() * sq_norms[u.name].sqrt()[None, :]
            for u in handle.units
            if u.block == b
        ]
        ratios.append(_outlier_ratio(scores, m, scope))
    return ratios


def _outlier_ratio(scores: list[torch.Tensor], m: float, scope: str) -> float:
    """Share of all ``scores`` entries above ``m`` x the mean (of the block, or of their unit)."""
    total = sum(s.numel() for s in scores)
    if total == 0:
        return 0.0
    if scope == "block":
        block_mean = sum(float(s.sum()) for s in scores) / total
        outliers = sum(int((s > m * block_mean).sum()) for s in scores)
    else:
        outliers = sum(int((s > m * s.mean()).sum()) for s in scores)
    return outliers / total


def dim_blocks(handle: ModelHandle, space: SearchSpace) -> tuple[int, ...]:
    """Per dimension of ``space``, the index of the block its target lies in: a unit's block
    for bits/sparsity dimensions, the block itself (or the block holding the ``self_attn`` /
    ``mlp`` sublayer) for depth dimensions."""
    return tuple(handle.block_of(dim.target) for dim in space.dims)


def _forward_with(handle: ModelHandle, windows: torch.Tensor, batch_size: int, hooks: list) -> None:
    """Run the dense model over ``windows`` with ``hooks`` installed, then remove them."""
    try:
        for batch in _batches(handle, windows, batch_size):
            handle.forward(batch)
    finally:
        for h in hooks:
            h.remove()


def _batches(handle: ModelHandle, windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``windows`` in batches of ``batch_size``, after restoring the dense weights."""
    if windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty [n, seq] tensor, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    handle.restore_dense()
    for start in range(0, windows.shape[0], batch_size):
        yield windows[start : start + batch_size]
