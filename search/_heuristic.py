"""An importance heuristic from layer-wise mixed precision: greedy upgrades by error per bit.

Criterion. The model's error is taken as additive over units, ``E = sum_d e_d(level_d)``
with ``e_d`` the unit's relative output error measured alone (as the HAWQ-style ILPs and
EvoPress's DP baseline do), and the budget is parameter-weighted (bits x parameters). Raising
unit ``d`` one level therefore buys ``e_d(l) - e_d(l+1)`` of error for
``(v_d(l+1) - v_d(l)) * weight_d`` parameter-bits, and the greedy takes the upgrade with the
largest ratio. Weighting the error by the unit's parameter share as well would cancel the
weight out of the ratio and make the heuristic blind to size, spending as many bits on a big
MLP projection as on a small attention projection for the same error reduction.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from presso.search._base import Context, OneShot, register
from presso.spaces import Config, SearchSpace


def greedy_upgrades(space: SearchSpace, unit_errors: Sequence[Sequence[float]]) -> Config:
    """Start at the lowest levels and apply the best error-per-parameter-bit upgrade while
    feasible; stop when no upgrade fits. Ties go to the lower dimension index.

    Assumes constraints are monotone in the levels, so an upgrade that does not fit now never
    will, and its unit is closed for good.
    """
    config = list(space.lowest())
    if not space.is_feasible(tuple(config)):
        raise ValueError(f"the lowest configuration is infeasible: {space.describe()}")
    heap: list[tuple[float, int]] = []
    for d in range(len(space)):
        _push_upgrade(heap, space, unit_errors, config, d)
    while heap:
        _, d = heapq.heappop(heap)
        config[d] += 1
        if space.is_feasible(tuple(config)):
            _push_upgrade(heap, space, unit_errors, config, d)
        else:
            config[d] -= 1
    return tuple(config)


def _push_upgrade(
    heap: list[tuple[float, int]],
    space: SearchSpace,
    unit_errors: Sequence[Sequence[float]],
    config: list[int],
    d: int,
) -> None:
    """Queue unit ``d``'s next one-level upgrade, keyed by minus its error reduction per
    added parameter-bit (heapq is a min-heap)."""
    level, dim = config[d], space.dims[d]
    if level + 1 >= len(dim.levels):
        return
    gain = unit_errors[d][level] - unit_errors[d][level + 1]
    cost = (dim.levels[level + 1] - dim.levels[level]) * dim.weight
    heapq.heappush(heap, (-gain / cost, d))


def _check_unit_errors(space: SearchSpace, context: Context) -> tuple[tuple[float, ...], ...]:
    errors = context.unit_errors
    if errors is None:
        raise ValueError(
            "error-greedy needs the level database's unit errors (Context.unit_errors): "
            "build the level database for this space first"
        )
    if len(errors) != len(space):
        raise ValueError(f"unit_errors has {len(errors)} units, the space has {len(space)}")
    for dim, row in zip(space.dims, errors):
        if len(row) != len(dim.levels):
            raise ValueError(f"{dim.name}: {len(row)} unit errors for {len(dim.levels)} levels")
    return errors


@register
class ErrorGreedy(OneShot):
    """One request: the greedy error-per-bit configuration, scored on the whole pool."""

    name = "error-greedy"
    requires = frozenset({"unit_errors"})

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        errors = _check_unit_errors(space, context or Context())
        super().__init__(space, greedy_upgrades(space, errors), seed=seed, context=context)
