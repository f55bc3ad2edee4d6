"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantize a weight column by column, each time
moving the rounding error onto the not-yet-quantized columns through the inverse Hessian.

Column ``i`` is rounded to ``q_i``; with ``U`` the upper Cholesky factor of ``H⁻¹`` the remaining
columns take ``W[:, j] -= (w_i - q_i) / U_ii * U_ij`` for ``j > i`` — the optimal-brain-surgeon
update, written with ``U`` so that no inverse needs re-computing as columns are fixed. Updates are
applied lazily: within a block of ``block_size`` columns exactly, to the rest once per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from presso.compress._quant import QuantizedWeight, QuantSpec, grid

_DAMP_RETRIES = 3  # retries of a failed Cholesky, each with 10x the damping


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> QuantizedWeight:
    """GPTQ-quantize ``weight`` ``[out, in]`` for inputs with Hessian ``hessian`` ``[in, in]``.

    ``damp`` is added to the diagonal as a fraction of its mean; ``block_size`` (columns) only
    trades memory traffic for Python overhead, not the result. ``act_order`` quantizes columns by
    descending ``diag(H)`` with grids fixed up front on the original weight ("static groups"), so
    the packed format is the same with or without it. Inputs are not modified.
    """
    return gptq_quantize_many(
        weight, hessian, [spec], damp=damp, block_size=block_size, act_order=act_order
    )[0]


def gptq_quantize_many(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    specs: Sequence[QuantSpec],
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> list[QuantizedWeight]:
    """:func:`gptq_quantize` of one weight at several specs (e.g. every bit level) in one pass.

    The result for each spec is the same as quantizing alone; the Hessian is factorized once and
    the specs' copies of the weight are stacked as extra rows, so the column loop (Python-bound
    for small layers) runs once instead of once per level.
    """
    out, in_features = _check(weight, hessian, damp, block_size)
    if not specs:
        return []
    widths = {spec.group_width(in_features) for spec in specs}
    if len(widths) != 1:
        raise ValueError("specs quantized together must share one group size")
    width = widths.pop()
    static = act_order or specs[0].group_size is None
    n_specs = len(specs)
    device = weight.device
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(device, torch.float64).clone()

    # A column whose input is always zero has no effect on the output: quantize it as 0.
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    n_groups = in_features // width
    scales = torch.empty(n_specs * out, n_groups, dtype=torch.float32, device=device)
    zeros = torch.empty_like(scales)
    rows = [slice(k * out, (k + 1) * out) for k in range(n_specs)]
    maxq = torch.cat([torch.full((out,), float(spec.maxq), device=device) for spec in specs])
    if static:
        # Every grid depends on the original weight only; with one group per row this is what
        # GPTQ does anyway, since the single group starts before any update.
        for k, spec in enumerate(specs):
            scales[rows[k]], zeros[rows[k]] = grid(w.view(out, n_groups, width), spec)

    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else None
    if perm is not None:
        w = w[:, perm]
        h = h[perm][:, perm]
    group_of = (perm if perm is not None else torch.arange(in_features, device=device)) // width
    group_of_list = group_of.tolist()

    u = _inverse_cholesky(h, damp).to(torch.float32)
    # Transposed, a column of W is a contiguous row: the rank-1 updates below run ~1.5x faster.
    # Each spec gets its own copy of the weight as extra rows of W (columns of wt).
    wt = w.T.repeat(1, n_specs).contiguous()
    codes_t = torch.empty(in_features, n_specs * out, dtype=torch.float32, device=device)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        w1 = wt[i1:i2]  # updated in place: each row ends up as its dequantized value
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of_list[col]
            if not static and col % width == 0:
                current = _updated_rows(wt, err1, u, i1, i2, col, col + width).T
                for k, spec in enumerate(specs):
                    scales[rows[k], g], zeros[rows[k], g] = grid(current[rows[k]], spec)
            scale, zero = scales[:, g], zeros[:, g]
            q = torch.minimum(torch.clamp(torch.round(w1[i] / scale) + zero, min=0.0), maxq)
            codes_t[col] = q
            e = (w1[i] - scale * (q - zero)) / u1[i, i]
            w1[i:].addr_(u1[i, i:], e, alpha=-1.0)
            err1[i] = e
        # The lazy half: the columns after this block get the whole block's update in one GEMM.
        wt[i2:].addmm_(u[i1:i2, i2:].T, err1, alpha=-1.0)

    if perm is not None:
        codes_t = codes_t[torch.argsort(perm)]
    codes = codes_t.T.contiguous().to(torch.uint8)
    return [
        QuantizedWeight(codes[r].contiguous(), scales[r].contiguous(), zeros[r].contiguous(), spec)
        for r, spec in zip(rows, specs)
    ]


def _check(
    weight: torch.Tensor, hessian: torch.Tensor, damp: float, block_size: int
) -> tuple[int, int]:
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian must be [{in_features}, {in_features}] for a weight "
            f"{tuple(weight.shape)}, got {tuple(hessian.shape)}"
        )
    if not (torch.isfinite(weight).all() and torch.isfinite(hessian).all()):
        raise ValueError("weight or hessian has NaN or infinite entries")
    if not damp > 0:
        raise ValueError(f"damp must be positive, got {damp}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return weight.shape[0], in_features


def _updated_rows(
    wt: torch.Tensor, err1: torch.Tensor, u: torch.Tensor, i1: int, i2: int, start: int, stop: int
) -> torch.Tensor:
    """Columns ``start:stop`` of the weight (rows of ``wt``) with every update so far applied.

    Inside the current block ``[i1, i2)`` they are up to date; past it they still lack this
    block's lazy update, added here so that grids do not depend on ``block_size``.
    """
    inside = wt[start : min(stop, i2)]
    if stop <= i2:
        return inside
    # err1's rows not yet quantized are zero, so the full product is the pending update.
    outside = wt[i2:stop] - u[i1:i2, i2:stop].T @ err1
    return torch.cat([inside, outside], dim=0)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, ``λ = damp * mean(diag H)``, in float64.

    A Hessian that is not positive definite even after damping (rank-deficient calibration data
    meets float rounding, or a wrong matrix) is retried with 10x the damping a few times.
    """
    mean_diag = torch.diagonal(h).mean()
    for attempt in range(_DAMP_RETRIES + 1):
        fraction = damp * 10**attempt
        damped = h.clone()
        torch.diagonal(damped).add_(fraction * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper
    raise RuntimeError(
        f"GPTQ: the Hessian is not positive definite even with damping {fraction:g} x mean(diag); "
        "check the calibration inputs (enough tokens, no NaN) or pass a larger damp"
    )
