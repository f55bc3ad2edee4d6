"""The exact solver over a per-unit sensitivity table, and the fair-uniform baseline.

Both solve the same integer knapsack: pick one level per dimension so that the sum of the
levels' costs stays within the budget (``Constraint.budget``: parameter-bits for mean bits,
parameter-percents for mean sparsity, a count for dropped blocks) and the sum of the levels'
scores is least. For ``dp`` (after HAWQ-V3's ILP and SPDY's dynamic program) the score is the
fitness a unit costs when compressed alone; the model's error is taken as additive over units,
which the search that starts from this solution then corrects. For ``uniform-fill`` the score
is minus the cost: spend every unit of budget the uniform level leaves unused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from presso.search._base import Context, OneShot, register
from presso.spaces import Budget, Config, SearchSpace

#: Most budget states the table may hold; larger budgets are solved on costs rounded up to
#: this resolution (still feasible, optimal up to that rounding).
MAX_STATES = 200_000


def knapsack(budget: Budget, scores: Sequence[Sequence[float]]) -> Config | None:
    """The levels of least total score whose costs sum to at most ``budget.limit``; None when
    no choice fits. Ties go to the lower level index. Exact for integer costs (O(dims x levels
    x limit)); see MAX_STATES."""
    b = budget.reduced()
    if b.limit < 0:
        return None
    costs = [np.asarray(row, dtype=np.int64) for row in b.costs]
    limit = b.limit
    if limit > MAX_STATES:  # round costs up: a rounded solution that fits, fits unrounded
        scale = MAX_STATES / limit
        costs = [np.ceil(row * scale).astype(np.int64) for row in costs]
        limit = MAX_STATES
    best = np.zeros(limit + 1)  # best[c]: least score of the dimensions so far within cost c
    choices = np.zeros((len(costs), limit + 1), dtype=np.int16)
    for d, (row, score) in enumerate(zip(costs, scores)):
        candidates = np.full((len(row), limit + 1), np.inf)
        for level, (cost, value) in enumerate(zip(row, score)):
            if cost <= limit:
                candidates[level, cost:] = best[: limit + 1 - cost] + float(value)
        choices[d] = np.argmin(candidates, axis=0)
        best = candidates[choices[d], np.arange(limit + 1)]
    if not np.isfinite(best[limit]):
        return None
    config, c = [], limit
    for d in range(len(costs) - 1, -1, -1):
        level = int(choices[d, c])
        config.append(level)
        c -= int(costs[d][level])
    return tuple(reversed(config))


def the_budget(space: SearchSpace, strategy: str) -> Budget:
    """The one budget of ``space`` that a knapsack can hold, or a ValueError saying why not.

    Constraints that even the costliest configuration meets bind nothing and are left out
    (``mean_bits: 8`` beside a latency target): the knapsack needs the one that binds."""
    top = tuple(len(d.levels) - 1 for d in space.dims)
    binding = [c for c in space.constraints if not c.feasible(space, top)]
    if not binding:  # every configuration fits: a budget of nothing
        return Budget(tuple((0,) * len(d.levels) for d in space.dims), 0)
    budgets = [c.budget(space) for c in binding]
    if len(binding) != 1 or budgets[0] is None:
        raise ValueError(
            f"{strategy} solves spaces with one binding budget that is a sum over units "
            "(mean_bits, mean_sparsity, dropped, or a latency budget on one kind of knob, "
            f"which is additive); this space has {space.describe()}: use evopress"
        )
    return budgets[0]


def solve(space: SearchSpace, sensitivity: Sequence[Sequence[float]]) -> Config:
    """The configuration of least summed sensitivity within the space's budget."""
    config = knapsack(the_budget(space, "dp"), sensitivity)
    if config is None or not space.is_feasible(config):
        raise ValueError(f"no configuration meets {space.describe()}")
    return config


def spread_ranks(n: int) -> np.ndarray:
    """A rank per position 0..n-1 that interleaves the whole range (van der Corput order:
    0, n/2, n/4, 3n/4, ...), so that the first k ranked positions are spread evenly."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(n)]
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(keys, kind="stable")] = np.arange(n)
    return ranks


def fill_uniform(space: SearchSpace) -> Config:
    """The best uniform configuration with the budget it leaves unused spent exactly (as far
    as whole levels allow): units are raised from the uniform level so that the most budget
    is used; among fillings that use as much, raises spread evenly over the model's depth."""
    start = space.best_uniform()
    if start is None:
        raise ValueError(f"no uniform configuration meets {space.describe()}")
    budget = the_budget(space, "uniform-fill")
    ranks = spread_ranks(len(space))
    # Ties: a tiny penalty, convex in how far a unit is raised (parameters x level-value
    # distance squared: many units one level up before one unit three levels up), then by
    # the unit's spread rank. Scaled to sum to under one (reduced) cost unit, so it never
    # trades spending for spreading.
    n = len(space)
    penalty = [
        [
            (d.weight * (v - d.levels[start[i]]) ** 2 + ranks[i] + 1.0) if lv > start[i] else 0.0
            for lv, v in enumerate(d.levels)
        ]
        for i, d in enumerate(space.dims)
    ]
    tie = 0.5 / max(1.0, sum(max(row) for row in penalty))
    reduced = budget.reduced()
    scores = [
        [
            np.inf if level < start[d] else -cost + tie * penalty[d][level]
            for level, cost in enumerate(reduced.costs[d])
        ]
        for d in range(n)
    ]
    config = knapsack(reduced, scores)
    if config is None or not space.is_feasible(config):  # e.g. costs rounded past MAX_STATES
        return start
    return config


@register
class DP(OneShot):
    """One request: the exact minimum of the per-unit sensitivity table under the budget."""

    name = "dp"
    requires = frozenset({"sensitivity"})

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        table = _check_table(space, (context or Context()).sensitivity, "dp")
        super().__init__(space, solve(space, table), seed=seed, context=context)


@register
class UniformFill(OneShot):
    """One request: uniform, plus the budget uniform leaves unused (:func:`fill_uniform`)."""

    name = "uniform-fill"

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        super().__init__(space, fill_uniform(space), seed=seed, context=context)


def _check_table(
    space: SearchSpace, table: Sequence[Sequence[float]] | None, strategy: str
) -> Sequence[Sequence[float]]:
    if table is None:
        raise ValueError(
            f"{strategy} needs the per-unit sensitivity table (Context.sensitivity), which "
            "presso search measures before the search"
        )
    if len(table) != len(space) or any(
        len(row) != len(d.levels) for row, d in zip(table, space.dims)
    ):
        raise ValueError(f"the sensitivity table does not match the space ({space.describe()})")
    return table
