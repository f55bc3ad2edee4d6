"""OWL (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity"): blocks with more outlier
weights are pruned less.

Allocation, following the reference code (``luuyin/OWL``, ``lib/prune_all.py``,
``prune_wanda_outlier``): the blocks' outlier ratios ``r`` are min-max normalised into a band
of width ``2λ``, ``n_b = 2λ (r_b - min r) / (max r - min r)``, and centred on the target,
``s_b = target - (n_b - mean n)``. Centring on the mean (rather than on the middle of the band,
``target + λ - n_b``) is what keeps the mean sparsity at the target; the mean is weighted by
the blocks' parameters here because presso's budget is, which for equal-sized blocks (a
transformer's) is OWL's plain mean. Equal ratios give every block the target.

A space has discrete levels, so each sparsity dimension of block ``b`` then takes the level
nearest ``s_b`` (ties: the sparser), and the result is repaired and filled: below the target,
the dimensions of the blocks with the *fewest* outliers get one level sparser, in that order,
until the budget is met; then, if ``spend_budget``, the blocks with the *most* outliers get one
level denser each, in that order, while it stays met (as the other baselines spend the budget).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from presso.search._base import Context, OneShot, register
from presso.spaces import Config, MeanSparsity, SearchSpace
from presso.spaces._sparsity import SparsityKind


def owl_sparsities(
    ratios: Sequence[float], target: float, lam: float, weights: Sequence[float] | None = None
) -> list[float]:
    """OWL's per-block sparsity (percent) from per-block outlier ``ratios``: a band ``2 * lam``
    wide, the most outliers lowest, with ``weights``-weighted mean ``target``."""
    r = np.asarray(ratios, dtype=np.float64)
    w = np.ones_like(r) if weights is None else np.asarray(weights, dtype=np.float64)
    spread = r.max() - r.min()
    n = np.zeros_like(r) if spread <= 0 else 2.0 * lam * (r - r.min()) / spread
    return [float(s) for s in target - (n - np.average(n, weights=w))]


def owl_config(space: SearchSpace, context: Context, *, lam: float, spend_budget: bool) -> Config:
    """The OWL configuration of ``space``: sparsity dimensions from the outlier ratios, other
    kinds at their ``best_uniform()`` values (the lowest levels if there is none)."""
    ratios, blocks, target = _check(space, context, lam)
    members: dict[int, list[int]] = {}
    for d, dim in enumerate(space.dims):
        if dim.kind == OWL.kinds[0]:
            members.setdefault(blocks[d], []).append(d)
    order = sorted(members, key=lambda b: (ratios[b], b))  # fewest outliers first
    weights = [sum(space.dims[d].weight for d in members[b]) for b in order]
    sparsity = dict(zip(order, owl_sparsities([ratios[b] for b in order], target, lam, weights)))

    config = list(space.best_uniform() or space.lowest())
    for b, dims in members.items():
        for d in dims:
            # argmin keeps the first of equally near levels: the sparser (cheaper) one.
            config[d] = int(np.argmin(np.abs(np.asarray(space.dims[d].levels) - sparsity[b])))
    _repair(space, config, [d for b in order for d in members[b]])
    if spend_budget:
        _spend(space, config, [members[b] for b in reversed(order)])
    return tuple(config)


def _repair(space: SearchSpace, config: list[int], dims: list[int]) -> None:
    """Make ``dims`` (fewest-outlier blocks first) one level sparser each, in passes over that
    order, until ``config`` is feasible."""
    while not space.is_feasible(tuple(config)):
        lowered = False
        for d in dims:
            if config[d] > 0:
                config[d] -= 1
                lowered = True
                if space.is_feasible(tuple(config)):
                    return
        if not lowered:
            raise ValueError(f"no OWL configuration meets the constraints: {space.describe()}")


def _spend(space: SearchSpace, config: list[int], blocks: list[list[int]]) -> None:
    """Make each block's dimensions (most-outlier blocks first) one level denser while
    ``config`` stays feasible, in passes until no raise fits."""
    raised = True
    while raised:
        raised = False
        for dims in blocks:
            for d in dims:
                if config[d] + 1 < len(space.dims[d].levels):
                    config[d] += 1
                    if space.is_feasible(tuple(config)):
                        raised = True
                    else:
                        config[d] -= 1


def _check(
    space: SearchSpace, context: Context, lam: float
) -> tuple[tuple[float, ...], tuple[int, ...], float]:
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (percent), got {lam}")
    if not any(d.kind == OWL.kinds[0] for d in space.dims):
        raise ValueError(f"owl needs a space with sparsity dimensions: {space.describe()}")
    limits = [c.limit for c in space.constraints if isinstance(c, MeanSparsity)]
    if not limits:
        raise ValueError(f"owl needs a mean-sparsity constraint (its target): {space.describe()}")
    ratios, blocks = context.outlier_ratios, context.dim_blocks
    if ratios is None or blocks is None:
        raise ValueError(
            "owl needs the blocks' outlier ratios and each dimension's block "
            "(Context.outlier_ratios and Context.dim_blocks, from presso.importance)"
        )
    if len(blocks) != len(space):
        raise ValueError(f"dim_blocks has {len(blocks)} entries, the space has {len(space)}")
    used = {b for b, d in zip(blocks, space.dims) if d.kind == OWL.kinds[0]}
    if not all(0 <= b < len(ratios) for b in used):
        raise ValueError(f"dim_blocks names blocks outside the {len(ratios)} outlier ratios")
    return ratios, blocks, max(limits)


@register
class OWL(OneShot):
    """One request: OWL's outlier-weighted layerwise sparsity, scored on the whole pool.

    lam: OWL's λ in percent: block sparsities span a band of ``2 * lam`` around the target.
    spend_budget: after meeting the target, densify the most-outlier blocks while it stays met.
    """

    name = "owl"
    requires = frozenset({"outlier_ratios"})
    kinds = (SparsityKind.name,)
    bounds = {"lam": (0, None)}  # percent

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        lam: float = 8.0,
        spend_budget: bool = True,
    ) -> None:
        config = owl_config(space, context or Context(), lam=lam, spend_budget=spend_budget)
        super().__init__(space, config, seed=seed, context=context)
