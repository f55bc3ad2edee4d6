"""NSGA-II: a Pareto front of accuracy against cost, by non-dominated sorting and crowding.

After Deb et al. 2002, "A fast and elitist multiobjective genetic algorithm: NSGA-II", on
level indices: binary tournament selection by (rank, crowding distance), uniform crossover,
±1-level mutation, then a repair that lowers levels until the child is feasible, and
(μ+λ) survival. Every candidate is scored on the same calibration draw (``sample_seed`` =
the strategy's seed), so objective values of different generations compare.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from presso.errors import shown
from presso.evaluation import default_objectives
from presso.pareto import crowding_distance, non_dominated, non_dominated_sort
from presso.search._base import (
    Context,
    Request,
    Result,
    Strategy,
    check_told,
    register,
    require,
)
from presso.search._objectives import Objectives
from presso.search._operators import (
    BinaryTournament,
    LevelMutation,
    Repair,
    UniformCrossover,
    drained_fill,
)
from presso.spaces import Budget, Config, Constraint, SearchSpace

# Draws per wanted member before a generation settles for fewer distinct candidates.
_RETRIES = 20

Member = tuple[Config, np.ndarray]  # a configuration and its minimisation vector


@register
class NSGA2(Strategy):
    """NSGA-II behind ask/tell: each ``ask()`` is one generation's batch.

    population: μ, the survivors kept, and λ, the children bred per generation.
    generations: batches in all, the initial population included (at most
        ``population * generations`` evaluations).
    objectives: metric names to minimise (``-name`` maximises); default ``kl`` and the
        first constraint's metric, cheaper being better (``mean_bits``, ``-mean_sparsity``).
    tokens: calibration tokens per evaluation (None: the whole pool).
    crossover_prob: chance that a child mixes its parents rather than copying the first.
    mutation_prob: chance per dimension of a ±1-level move (None: 1 / dimensions).

    start: the initial population besides ``space.best_uniform()``:
        ``random``: configurations spread in cost from the full budget down to the lowest
        levels (:func:`drained_fill`), so the front is searched along its whole length;
        ``dp``: the sensitivity table's optimum at costs spread from the cheapest to the
        costliest (:func:`table_front`, SPDY's dynamic program once per cost), random ones
        where it gives fewer distinct configurations — the front starts where the per-unit
        errors say it is, instead of at random (the table is measured first).
    """

    name = "nsga2"
    bounds = {
        "population": (2, None),
        "generations": (1, None),
        "tokens": (1, None),
        "crossover_prob": (0, 1),
        "mutation_prob": (0, 1),
    }
    #: Values of the ``start`` option.
    starts = ("random", "dp")

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        population: int = 16,
        generations: int = 10,
        objectives: Sequence[str] | None = None,
        tokens: int | None = None,
        crossover_prob: float = 0.9,
        mutation_prob: float | None = None,
        start: str = "random",
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self.check_values(
            dict(
                population=population,
                generations=generations,
                tokens=tokens,
                crossover_prob=crossover_prob,
                mutation_prob=mutation_prob,
                start=start,
            )
        )
        if start == "dp" and self.context.sensitivity is None:
            raise ValueError("start: dp needs the per-unit sensitivity table")
        self.start = start
        self.population, self.generations, self.tokens = population, generations, tokens
        self.objectives = Objectives(objectives or default_objectives(space.constraints))
        self._cost = _cost_constraint(space, self.objectives) if start == "dp" else None
        self.selection = BinaryTournament()
        self.crossover = UniformCrossover(crossover_prob)
        self.mutation = LevelMutation(mutation_prob)
        self.repair = Repair(space)
        self._rng = np.random.default_rng(seed)
        self._seen: set[Config] = set()  # evaluated or asked for
        self._archive: list[Member] = []  # every told candidate, in order
        self._members: list[Member] = []  # the current population
        self._generation = 0
        self._pending: list[Request] | None = None
        self._exhausted = False  # no new distinct child could be bred

    def ask(self) -> list[Request]:
        if self.finished:
            return []
        if self._pending is None:
            first = self._generation == 0
            configs = self._initial() if first else self._breed()
            if not configs:
                self._exhausted = True
                return []
            tag = f"g{self._generation + 1}/{'initial' if first else 'offspring'}"
            self._pending = [
                Request(c, tokens=self.tokens, sample_seed=self.seed, tag=tag) for c in configs
            ]
        return list(self._pending)

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        check_told(self.ask(), requests, results)
        if not requests:
            return
        told = [(q.config, self.objectives.vector(r)) for q, r in zip(requests, results)]
        self._archive += told
        self._members = survive(self._members + told, self.population)
        self._generation += 1
        self._pending = None

    @property
    def finished(self) -> bool:
        return self._exhausted or self._generation >= self.generations

    @property
    def planned(self) -> int:
        return self.population * self.generations

    def best(self) -> Config | None:
        """The configuration with the lowest first objective on the front (ties: the next
        objectives)."""
        front = self._front()
        if not front:
            return None
        return min(front, key=lambda m: tuple(m[1]))[0]

    def front(self) -> list[tuple[Config, tuple[float, ...]]]:
        """The non-dominated configurations of everything evaluated so far, with their
        objective metrics as measured (a maximised one is not negated), by first objective."""
        ordered = sorted(self._front(), key=lambda m: tuple(m[1]))
        return [(config, self.objectives.unsign(vector)) for config, vector in ordered]

    def _front(self) -> list[Member]:
        usable = [m for m in self._archive if np.isfinite(m[1]).all()]
        if not usable:
            return []
        mask = non_dominated(np.stack([v for _, v in usable]))
        return [m for m, keep in zip(usable, mask) if keep]

    @classmethod
    def check_values(cls, options: dict[str, Any]) -> None:
        super().check_values(options)
        start = options["start"]
        require(
            start in cls.starts,
            "start",
            f"must be one of {', '.join(cls.starts)}, got {shown(start)}",
        )

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        return frozenset({"sensitivity"}) if options.get("start") == "dp" else frozenset()

    def _initial(self) -> list[Config]:
        """``best_uniform``, the table's optimum along the cost axis (``start: dp``), and
        random configurations spread in cost (stratified fractions of the filled budget drained
        again)."""
        uniform = self.space.best_uniform()
        configs = [] if uniform is None else [uniform]
        if self.start == "dp":
            assert self.context.sensitivity is not None and self._cost is not None
            for config in table_front(
                self.space, self.context.sensitivity, self._cost, self.population - len(configs)
            ):
                if self.space.is_feasible(config) and config not in configs:
                    configs.append(config)
        self._seen.update(configs)
        spread = self.population - len(configs)
        for i in range(spread):
            for _ in range(_RETRIES):
                config = drained_fill(self.space, self._rng, (i + self._rng.random()) / spread)
                if config not in self._seen:
                    self._seen.add(config)
                    configs.append(config)
                    break
        return configs

    def _breed(self) -> list[Config]:
        """Up to λ distinct feasible children never evaluated before."""
        parents = [config for config, _ in self._members]
        rank, crowding = rank_and_crowding(np.stack([v for _, v in self._members]))
        children: list[Config] = []
        for _ in range(self.population * _RETRIES):
            if len(children) == self.population:
                break
            a = self.selection(rank, crowding, self._rng)
            b = self.selection(rank, crowding, self._rng)
            child = self.crossover(parents[a], parents[b], self._rng)
            child = self.repair(self.mutation(self.space, child, self._rng), self._rng)
            if child is not None and child not in self._seen:
                self._seen.add(child)
                children.append(child)
        return children


def _cost_constraint(space: SearchSpace, objectives: Objectives) -> Constraint:
    """The constraint (or report: latency with no limit) whose metric is the objectives' cost
    axis (``latency_ms``, ``mean_bits`` ...): the first objective after the fitness that the
    space measures."""
    metrics = {c.metric: c for c in (*space.reports, *space.constraints)}
    for metric in objectives.metrics[1:]:
        if metric in metrics:
            return metrics[metric]
    raise ValueError(
        "start: dp spreads the table's optimum along a cost objective that the space "
        f"measures ({', '.join(metrics) or 'none here'}); the objectives are "
        f"{', '.join(objectives.names)}"
    )


#: Integer cost units the table front spreads over (the knapsack's resolution).
_COST_STATES = 4000


def table_front(
    space: SearchSpace,
    table: Sequence[Sequence[float]],
    cost: Constraint,
    count: int,
) -> list[Config]:
    """Up to ``count`` distinct configurations of least summed table error at costs evenly
    spread from the cheapest configuration to the costliest one the constraint allows: each a knapsack solved
    (:func:`presso.search._dp.knapsack`) on each level's cost change from the costliest
    configuration alone — additive even where the cost is not (a dropped block takes its
    other knobs' cost with it), so the seeds are guides; the search prices them exactly."""
    from presso.search._dp import knapsack

    sign = -1.0 if cost.sense == ">=" else 1.0  # a minimum (mean sparsity) is a cost maximised
    top = tuple(len(d.levels) - 1 for d in space.dims)
    at_top = sign * cost.value(space, top)
    deltas = [
        [
            sign * cost.value(space, top[:d] + (lv,) + top[d + 1 :]) - at_top
            for lv in range(len(dim.levels))
        ]
        for d, dim in enumerate(space.dims)
    ]
    low = [min(row) for row in deltas]
    span = sum(max(row) - m for row, m in zip(deltas, low))
    if not span > 0 or count < 1:
        return []
    unit = span / _COST_STATES
    costs = tuple(tuple(int(math.ceil((c - m) / unit)) for c in row) for row, m in zip(deltas, low))
    full = sum(max(row) for row in costs)
    if math.isfinite(cost.limit):  # spread up to the budget, not past it
        full = min(full, math.floor((sign * cost.limit - at_top - sum(low)) / unit))
    out: list[Config] = []
    for i in range(count):
        config = knapsack(Budget(costs, int(full * (i + 1) / count)), table)
        if config is not None and config not in out:
            out.append(config)
    return out


def rank_and_crowding(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's front index and its crowding distance within its front. A front of
    unusable candidates (``inf`` vectors: failures) gets crowding 0."""
    rank = np.zeros(len(points), dtype=np.int64)
    crowding = np.zeros(len(points))
    for k, front in enumerate(non_dominated_sort(points)):
        rank[front] = k
        if np.isfinite(points[front]).all():
            crowding[front] = crowding_distance(points[front])
    return rank, crowding


def survive(members: list[Member], size: int) -> list[Member]:
    """(μ+λ) survival: whole fronts while they fit, then the least crowded of the next."""
    if len(members) <= size:
        return list(members)
    points = np.stack([v for _, v in members])
    rank, crowding = rank_and_crowding(points)
    # Stable: equal (rank, crowding) keep their order, so survival is deterministic.
    order = np.lexsort((-crowding, rank))
    return [members[i] for i in order[:size]]
