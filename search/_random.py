"""Random search: feasible configurations that spend the budget, drawn at random.

A baseline is only fair if it spends what the searched methods spend, so a sample is not a
uniform draw over feasible configurations (those sit far under the budget) but a random
*filling*: start at the lowest levels and raise random units one level at a time until no
raise fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from presso.search._base import (
    Context,
    Request,
    Result,
    Strategy,
    check_told,
    fitness_of,
    register,
)
from presso.spaces import Config, SearchSpace

# Redraws allowed per sample to avoid a configuration already asked for; small spaces may
# hold fewer distinct filled configurations than ``samples``, and then repeats are allowed.
_DEDUP_RETRIES = 10


def fill_budget(
    space: SearchSpace, rng: np.random.Generator, start: Config | None = None
) -> Config:
    """Raise random units of ``start`` (default: the lowest levels) one level at a time while
    the configuration stays feasible; returns a feasible configuration no single raise fits.

    Assumes constraints are monotone in the level indices (levels ascend in cost), so a unit
    whose raise did not fit never will later, and is dropped from the draw for good.
    """
    config = list(space.lowest() if start is None else start)
    if not space.is_feasible(tuple(config)):
        raise ValueError(f"the starting configuration is infeasible: {space.describe()}")
    open_dims = [d for d, dim in enumerate(space.dims) if config[d] < len(dim.levels) - 1]
    while open_dims:
        pick = int(rng.integers(len(open_dims)))
        d = open_dims[pick]
        config[d] += 1
        if space.is_feasible(tuple(config)):
            if config[d] == len(space.dims[d].levels) - 1:
                open_dims.pop(pick)
        else:
            config[d] -= 1
            open_dims.pop(pick)
    return tuple(config)


@register
class RandomSearch(Strategy):
    """``samples`` random budget-filling configurations, asked ``batch`` at a time.

    tokens: calibration tokens per evaluation (``None``: the whole pool); every sample is
        scored on the same calibration draw so that their fitnesses compare.
    """

    name = "random"
    bounds = {"samples": (1, None), "batch": (1, None), "tokens": (1, None)}

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        samples: int = 16,
        batch: int = 8,
        tokens: int | None = None,
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self.check_values(dict(samples=samples, batch=batch, tokens=tokens))
        self.samples, self.batch, self.tokens = samples, batch, tokens
        self._rng = np.random.default_rng(seed)
        self._seen: set[Config] = set()
        self._pending: list[Request] = []
        self._told = 0
        self._best: tuple[float, Config] | None = None

    def ask(self) -> list[Request]:
        if self._pending or self.finished:
            return list(self._pending)
        size = min(self.batch, self.samples - self._told)
        self._pending = [
            Request(self._draw(), tokens=self.tokens, sample_seed=self.seed, tag="random")
            for _ in range(size)
        ]
        return list(self._pending)

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        check_told(self.ask(), requests, results)
        for request, result in zip(requests, results):
            fitness = fitness_of(result)
            if result.ok and (self._best is None or fitness < self._best[0]):
                self._best = (fitness, request.config)
        self._told += len(requests)
        self._pending = []

    @property
    def finished(self) -> bool:
        return self._told >= self.samples

    @property
    def planned(self) -> int:
        return self.samples

    def best(self) -> Config | None:
        return None if self._best is None else self._best[1]

    def _draw(self) -> Config:
        config = fill_budget(self.space, self._rng)
        for _ in range(_DEDUP_RETRIES):
            if config not in self._seen:
                break
            config = fill_budget(self.space, self._rng)
        self._seen.add(config)
        return config
