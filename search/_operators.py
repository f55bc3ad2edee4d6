"""Variation and repair operators over configurations (tuples of level indices).

Shared by NSGA-II (selection, crossover, mutation, repair) and the Bayesian strategies
(repair of sampled configurations). Each is a small frozen dataclass called with the space,
its inputs and a NumPy generator, so an algorithm takes them as constructor arguments.
Levels ascend in cost and constraints get no easier as a level index rises, so lowering
levels is always the way back to feasibility, whatever a constraint's sense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from presso.search._random import fill_budget
from presso.spaces import Config, SearchSpace


@dataclass(frozen=True)
class BinaryTournament:
    """Pick two population members at random; the lower rank wins, then the larger crowding
    distance, then the first drawn."""

    def __call__(self, rank: np.ndarray, crowding: np.ndarray, rng: np.random.Generator) -> int:
        a, b = (int(i) for i in rng.integers(len(rank), size=2))
        if (rank[b], -crowding[b]) < (rank[a], -crowding[a]):
            return b
        return a


@dataclass(frozen=True)
class UniformCrossover:
    """With probability ``prob``, each level index from either parent with equal chance;
    otherwise a copy of the first parent."""

    prob: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"crossover probability must be in [0, 1], got {self.prob}")

    def __call__(self, first: Config, second: Config, rng: np.random.Generator) -> Config:
        if rng.random() >= self.prob:
            return first
        pick = rng.random(len(first)) < 0.5
        return tuple(int(b if p else a) for a, b, p in zip(first, second, pick))


@dataclass(frozen=True)
class LevelMutation:
    """Each dimension with probability ``prob`` (None: 1 / dimensions) moves one level up or
    down at random; a dimension at an end of its levels moves inwards."""

    prob: float | None = None

    def __post_init__(self) -> None:
        if self.prob is not None and not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"mutation probability must be in [0, 1], got {self.prob}")

    def __call__(self, space: SearchSpace, config: Config, rng: np.random.Generator) -> Config:
        prob = 1.0 / len(space) if self.prob is None else self.prob
        hits = rng.random(len(config)) < prob
        steps = rng.choice((-1, 1), size=len(config))
        child = list(config)
        for d in np.flatnonzero(hits):
            top = len(space.dims[d].levels) - 1
            if top == 0:
                continue
            step = int(steps[d])
            if not 0 <= child[d] + step <= top:
                step = -step
            child[d] += step
        return tuple(child)


class Repair:
    """Make a configuration feasible by lowering random dimensions that a violated
    constraint depends on, one level at a time; with ``fill``, then raise random units
    while the result stays feasible (:func:`fill_budget`).

    Which dimensions a constraint depends on (mean bits: the bits dimensions; dropped blocks:
    the depth ones) is found once, by moving each dimension from its lowest to its highest
    level.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        base = space.lowest()
        self._depends: list[list[int]] = []
        for constraint in space.constraints:
            low = constraint.value(space, base)
            self._depends.append(
                [
                    d
                    for d, dim in enumerate(space.dims)
                    if len(dim.levels) > 1
                    and constraint.value(space, _set(base, d, len(dim.levels) - 1)) != low
                ]
            )

    def __call__(
        self, config: Config, rng: np.random.Generator, *, fill: bool = False
    ) -> Config | None:
        """A feasible configuration near ``config``; None when lowering cannot reach one."""
        space = self.space
        child = [int(i) for i in config]
        while True:
            violated = [
                k for k, c in enumerate(space.constraints) if not c.feasible(space, tuple(child))
            ]
            if not violated:
                break
            lowerable = [d for d in self._depends[violated[0]] if child[d] > 0]
            if not lowerable:  # the dependence probe missed an interaction: try any unit
                lowerable = [d for d, i in enumerate(child) if i > 0]
            if not lowerable:
                return None
            child[lowerable[int(rng.integers(len(lowerable)))]] -= 1
        result = tuple(child)
        return fill_budget(space, rng, start=result) if fill else result


def drained_fill(space: SearchSpace, rng: np.random.Generator, fraction: float) -> Config:
    """A random configuration of intermediate cost: fill the budget (:func:`fill_budget`),
    then lower random dimensions ``fraction`` of the filled levels, one level at a time.
    Lowering keeps it feasible; ``fraction`` 0 spends the budget, 1 gives the lowest levels.
    """
    child = list(fill_budget(space, rng))
    for _ in range(int(round(min(max(fraction, 0.0), 1.0) * sum(child)))):
        raised = [d for d, i in enumerate(child) if i > 0]
        child[raised[int(rng.integers(len(raised)))]] -= 1
    return tuple(child)


def _set(config: Config, d: int, level: int) -> Config:
    return config[:d] + (level,) + config[d + 1 :]
