"""EvoPress: a (1+λ) evolutionary search with level-switch mutation and multi-stage selection.

After Sieberling et al. 2024, "EvoPress: Towards Optimal Dynamic Model Compression via
Evolutionary Search". Each generation mutates the parent into λ offspring by switching levels
between units of the same shape (so the budget is kept), then selects in stages of growing
calibration size: all candidates are scored on few tokens, the best few on more, and the
single final survivor becomes the next parent.

The parent competes from the first stage of every generation (the authors' quantization
script adds it only at the last stage), so its fitness never gets worse when the fitness is
deterministic. Switches stay within a group (the paper's same-size rule), so apart from slack
taken up by lone up moves each group keeps the share of the budget the start gave it.

Two additions use what is known before evaluating, and both are options (the paper's search
is ``start: uniform, screen: 0``):

- ``start: dp`` begins from the exact minimum of the per-unit sensitivity table (strategy
  ``dp``) instead of uniform. Elitism keeps the parent unless a child beats it on the same
  draw, so the search ends no worse than that baseline on calibration data.
- ``screen: N`` breeds N children per generation, ranks them with an additive surrogate fitted
  to every evaluation so far (:class:`AdditiveSurrogate`, the sensitivity table its prior) and
  evaluates only the ``offspring`` it ranks best: many more mutations are looked at for the
  same number of forward passes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from presso.errors import shown
from presso.search._base import (
    Context,
    OptionError,
    Request,
    Result,
    Strategy,
    check_told,
    fitness_of,
    register,
)
from presso.search._dp import solve
from presso.search._random import fill_budget
from presso.search._surrogate import AdditiveSurrogate
from presso.spaces import Config, SearchSpace

#: Values of EvoPress's ``start`` option.
STARTS = ("auto", "dp", "uniform")

# Mutation draws per wanted child before a generation settles for fewer distinct offspring.
_BREED_RETRIES = 20


def derive_seed(seed: int, generation: int, stage: int) -> int:
    """The calibration draw of one selection stage: fresh per (generation, stage), shared by
    every candidate of the stage so that their fitnesses compare."""
    return int(np.random.SeedSequence((seed, generation, stage)).generate_state(1)[0])


def _shift(config: Config, d: int, step: int) -> Config:
    return config[:d] + (config[d] + step,) + config[d + 1 :]


@dataclass(frozen=True)
class LevelSwitch:
    """Level-switch mutation: move one unit a level up and another of the same group a level
    down, 1..``max_mutations`` times (fewer switches more likely, as in EvoPress).

    Units of one group have the same shape, so a switch between equal level steps keeps the
    parameter-weighted mean bits exactly. Steps may differ (4→8 up, 3→2 down): then further
    same-group partners move down, up to ``max_downs`` in all, until the child fits. When the
    parent sits under the budget, a lone up move that still fits is also allowed, which is how
    a parent with slack comes to use it. Every move is checked with ``space.is_feasible``, so a
    feasible parent never yields an infeasible child.

    attempts: random move draws before falling back to a scan of all single switches.
    max_checks: feasibility checks the scan may spend (it is quadratic in the units).
    """

    max_mutations: int = 3
    max_downs: int = 4
    attempts: int = 64
    max_checks: int = 4096

    def __post_init__(self) -> None:
        if self.max_mutations < 1 or self.max_downs < 1 or self.attempts < 0 or self.max_checks < 0:
            raise ValueError(f"invalid LevelSwitch options: {self}")

    def __call__(self, space: SearchSpace, parent: Config, rng: np.random.Generator) -> Config:
        """A mutated copy of ``parent``; it differs from ``parent`` whenever a single feasible
        move exists (and the scan finds it within ``max_checks``)."""
        draws = rng.integers(1, self.max_mutations + 1, size=2)
        child = parent
        for _ in range(int(draws.min())):
            moved = self.move(space, child, rng)
            if moved is None:
                break
            child = moved
        if child == parent:  # switches may undo each other; one move from the parent cannot
            child = self.move(space, parent, rng) or parent
        return child

    def move(self, space: SearchSpace, config: Config, rng: np.random.Generator) -> Config | None:
        """One feasible move from ``config``; None if none was found."""
        up = [d for d, dim in enumerate(space.dims) if config[d] < len(dim.levels) - 1]
        if not up:
            return None
        for _ in range(self.attempts):
            child = self._draw(space, config, rng, up)
            if child is not None:
                return child
        for a, b in itertools.islice(_scan_order(space, config, rng, up), self.max_checks):
            child = _shift(config, a, +1) if b is None else _shift(_shift(config, a, +1), b, -1)
            if space.is_feasible(child):
                return child
        return None

    def _draw(
        self, space: SearchSpace, config: Config, rng: np.random.Generator, up: list[int]
    ) -> Config | None:
        """A random feasible move, or None: half of the time a lone up move (it fits only
        under slack), else one unit up and same-group partners down, one level at a time,
        until the child fits."""
        a = up[int(rng.integers(len(up)))]
        child = _shift(config, a, +1)
        if rng.random() < 0.5:
            return child if space.is_feasible(child) else None
        group = space.dims[a].group
        for _ in range(self.max_downs):
            peers = [
                b
                for b, dim in enumerate(space.dims)
                if dim.group == group and b != a and child[b] > 0
            ]
            if not peers:
                return None
            child = _shift(child, peers[int(rng.integers(len(peers)))], -1)
            if space.is_feasible(child):
                return child
        return None


def _scan_order(
    space: SearchSpace, config: Config, rng: np.random.Generator, up: list[int]
) -> Iterator[tuple[int, int | None]]:
    """Every single move ``(up, down or None)`` in a random order: lone up moves and
    same-group switches first, then switches across groups, which change the bits and so are
    the last resort (e.g. for spaces where every unit has a shape of its own)."""
    group = [dim.group for dim in space.dims]
    down = [b for b in range(len(config)) if config[b] > 0]
    same: list[tuple[int, int | None]] = [(a, None) for a in up]
    same += [(a, b) for a in up for b in down if b != a and group[b] == group[a]]
    yield from (same[i] for i in rng.permutation(len(same)))
    cross = [(a, b) for a in up for b in down if group[b] != group[a]]
    yield from (cross[i] for i in rng.permutation(len(cross)))


@register
class EvoPress(Strategy):
    """EvoPress behind ask/tell: each ``ask()`` is one selection stage of one generation.

    generations: generations to run (fewer if the parent admits no feasible mutation).
    offspring: λ, children per generation; the parent competes beside them.
    stages: ``(tokens, survivors)`` per selection stage; ``tokens`` become
        ``Request.tokens`` (None: the whole pool); the last stage keeps 1 survivor.
    max_mutations: most level switches per child.
    start: the first parent: ``dp`` (the sensitivity table's exact optimum, see module doc),
        ``uniform`` (the costliest feasible uniform configuration with the budget it leaves
        unused filled by random one-level raises, as the paper), or ``auto``: ``dp`` when the
        context holds a sensitivity table and the space a single sum budget, else ``uniform``.
    screen: children bred per generation and ranked by the surrogate, of which the best
        ``offspring`` are evaluated; 0 (or at most ``offspring``) evaluates every child bred.
    ridge: the surrogate's shrinkage, in pseudo-observations per unit level.
    confirm: when the search started from dp, finish by scoring up to ``confirm`` of the
        search's candidates and that start on the whole calibration pool, and keep the best:
        selection on small draws can drift to a child that only looked better (measured at
        3.5 bits: -1% held-out). The candidates are, in order, the final parent, the
        surrogate's exact optimum under the budget (dp over the table corrected by every
        evaluation), and the other parents the search had, ranked by the surrogate. 1 checks
        the final parent alone; 0 (or false) skips the step.
    initial: an explicit first parent (overrides ``start``).

    ``history`` holds ``(generation, fitness)`` of each generation's surviving parent at the
    last stage (None where that evaluation failed), generations counted from 1.
    """

    name = "evopress"
    bounds = {
        "generations": (1, None),
        "offspring": (1, None),
        "max_mutations": (1, None),
        "screen": (0, None),
        "confirm": (0, None),
    }

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        generations: int = 50,
        offspring: int = 16,
        stages: Sequence[tuple[int | None, int]] = ((1024, 4), (4096, 1)),
        max_mutations: int = 3,
        start: str = "auto",
        screen: int = 64,
        ridge: float = 4.0,
        confirm: int = 3,
        initial: Config | None = None,
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self.check_values(
            dict(
                generations=generations,
                offspring=offspring,
                stages=stages,
                max_mutations=max_mutations,
                start=start,
                screen=screen,
                ridge=ridge,
                confirm=confirm,
            )
        )
        self.generations, self.offspring, self.screen = generations, offspring, screen
        self.stages = _check_stages(stages)
        self._mutation = LevelSwitch(max_mutations=max_mutations)
        self._rng = np.random.default_rng(seed)
        self.start = self._resolve_start(start)
        self._surrogate = AdditiveSurrogate(space, self.context.sensitivity, ridge=ridge)
        self._parent = self._initial(initial)
        self._start = self._parent
        self.confirm = int(confirm) if self.start == "dp" else 0
        self._final: list[Config] | None = None  # the confirmation's candidates while pending
        self._parents: list[Config] = []  # every distinct parent, in order (for confirm)
        self.history: list[tuple[int, float | None]] = []
        self._generation = 0  # index of the generation under way
        self._last = generations  # lowered when the parent cannot be mutated any more
        self._any_ok = False
        self._start_generation()

    def ask(self) -> list[Request]:
        if self._final is not None:
            *searched, start = self._final
            roles = [*(f"candidate-{i}" if i else "parent" for i in range(len(searched))), "start"]
            return [
                Request(config, tokens=None, sample_seed=self.seed, tag=f"final/{role}")
                for config, role in zip(self._final, roles)
            ]
        if self.finished:
            return []
        tokens = self.stages[self._stage][0]
        sample_seed = derive_seed(self.seed, self._generation, self._stage)
        prefix = f"g{self._generation + 1}/s{self._stage + 1}"
        return [
            Request(
                config,
                tokens=tokens,
                sample_seed=sample_seed,
                tag=f"{prefix}/{'parent' if config == self._parent else 'offspring'}",
            )
            for config in self._candidates
        ]

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        check_told(self.ask(), requests, results)
        if not requests:
            return
        self._any_ok = self._any_ok or any(r.ok for r in results)
        for request, result in zip(requests, results):
            if result.ok:
                draw = (request.tokens, request.sample_seed)
                self._surrogate.add(request.config, draw, float(result.fitness))  # type: ignore[arg-type]
        if self._final is not None:  # the best on the pool; ties keep the earlier (the parent)
            scores = [fitness_of(r) for r in results]
            self._parent = self._final[scores.index(min(scores))]
            self._final = None
            return
        # Rank by fitness, failures last; on a tie the parent stays (a broken evaluator must
        # not let the search wander off to unevaluated children).
        ranked = sorted(
            range(len(requests)),
            key=lambda i: (fitness_of(results[i]), self._candidates[i] != self._parent),
        )
        keep = self.stages[self._stage][1]
        self._candidates = [self._candidates[i] for i in ranked[:keep]]
        self._stage += 1
        if self._stage == len(self.stages):
            self._end_generation(fitness_of(results[ranked[0]]))

    @property
    def finished(self) -> bool:
        return self._generation >= self._last and self._final is None

    def best(self) -> Config | None:
        return self._parent if self._any_ok else None

    @property
    def planned(self) -> int:
        """Per generation: the parent and its offspring at the first stage, then the survivors
        of each stage at the next (fewer where breeding finds fewer distinct children)."""
        later = sum(survivors for _, survivors in self.stages[:-1])
        return self.generations * (self.offspring + 1 + later) + (self.confirm + 1) * bool(
            self.confirm
        )

    @classmethod
    def check_values(cls, options: dict[str, Any]) -> None:
        super().check_values(options)
        start, ridge = options["start"], options["ridge"]
        if start not in STARTS:
            raise OptionError("start", f"must be one of {', '.join(STARTS)}, got {shown(start)}")
        if not ridge > 0:
            raise OptionError("ridge", f"must be > 0, got {ridge}")
        _check_stages(options["stages"])

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        """The sensitivity table, unless neither the start nor screening uses it."""
        given = {**_defaults(cls), **options}
        fixed_start = given["start"] == "uniform" or given["initial"] is not None
        screens = given["screen"] > given["offspring"]
        return frozenset({"sensitivity"}) if screens or not fixed_start else frozenset()

    def _resolve_start(self, start: str) -> str:
        """``start`` with ``auto`` resolved; keeps the dp solution for ``_initial``."""
        self._dp: Config | None = None
        table = self.context.sensitivity
        if start == "dp" and table is None:
            raise ValueError("start: dp needs the per-unit sensitivity table")
        if start == "uniform" or table is None:
            return "uniform"
        try:
            self._dp = solve(self.space, table)
        except ValueError:
            if start == "dp":
                raise
            return "uniform"  # auto, e.g. a joint space: no single sum budget to solve
        return "dp"

    def _initial(self, initial: Config | None) -> Config:
        if initial is None and self.start == "dp":
            initial = self._dp
        if initial is not None:
            config = tuple(int(i) for i in initial)
            self.space.validate(config)
            if not self.space.is_feasible(config):
                raise ValueError(
                    f"the initial configuration is infeasible: {self.space.describe()}"
                )
            return config
        # The uniform configuration, with any budget it leaves unused spent on randomly chosen
        # units (e.g. mean 2.5 bits over levels {2, 3, 4, 8}: uniform is 2 bits; half the
        # parameters go to 3). Level switches keep the budget, so slack left at the start
        # would stay unused for most of the search.
        uniform = self.space.best_uniform()
        return fill_budget(self.space, self._rng, start=uniform)

    def _start_generation(self) -> None:
        children = self._breed()
        if not children:  # no feasible move: score the parent once more, then stop
            self._last = self._generation + 1
        self._candidates = [self._parent, *children]
        self._stage = 0

    def _end_generation(self, fitness: float) -> None:
        self._parent = self._candidates[0]
        if self._parent not in self._parents:
            self._parents.append(self._parent)
        self._generation += 1
        self.history.append((self._generation, fitness if math.isfinite(fitness) else None))
        if not self.finished:
            self._start_generation()
        elif self.confirm:
            finalists = self._finalists()
            if finalists != [self._start]:
                self._final = finalists

    def _finalists(self) -> list[Config]:
        """What ``confirm`` scores on the whole pool: up to ``confirm`` distinct candidates of
        the search (see the class doc), then the start."""
        self._surrogate.fit()
        picks = [self._parent]
        try:
            optimum: Config | None = solve(self.space, self._surrogate.table())
        except ValueError:  # the budget admits the start, so this is not expected; skip it
            optimum = None
        others = [c for c in self._parents if c not in (self._parent, self._start)]
        predicted = self._surrogate.predict(others) if others else []
        ranked = [others[i] for i in np.argsort(predicted, kind="stable")]
        for config in [optimum, *ranked]:
            if len(picks) >= self.confirm:
                break
            if config is not None and config not in picks and config != self._start:
                picks.append(config)
        return [c for c in picks if c != self._start] + [self._start]

    def _breed(self) -> list[Config]:
        """Up to λ distinct children, all different from the parent: with screening, the λ
        the surrogate ranks best among ``screen`` bred (ties: the earlier bred)."""
        wanted = max(self.offspring, self.screen)
        children: list[Config] = []
        seen = {self._parent}
        for _ in range(wanted * _BREED_RETRIES):
            if len(children) == wanted:
                break
            child = self._mutation(self.space, self._parent, self._rng)
            if child not in seen:
                seen.add(child)
                children.append(child)
        if len(children) <= self.offspring:
            return children
        self._surrogate.fit()
        predicted = self._surrogate.predict(children)
        order = np.argsort(predicted, kind="stable")[: self.offspring]
        return [children[i] for i in sorted(order)]


def _defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of ``cls``'s constructor (what an option left out means)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _check_stages(stages: Sequence[tuple[int | None, int]]) -> tuple[tuple[int | None, int], ...]:
    """Validate ``(tokens, survivors)`` stages (lists from a YAML file are accepted)."""
    checked = tuple((None if t is None else int(t), int(k)) for t, k in stages)
    if not checked:
        raise OptionError("stages", "give at least one [tokens, survivors] stage")
    for i, (tokens, survivors) in enumerate(checked):
        if survivors < 1 or (tokens is not None and tokens < 1):
            raise OptionError(
                ("stages", i),
                f"[{tokens}, {survivors}]: tokens and survivors must be >= 1 (tokens may be null)",
            )
    if checked[-1][1] != 1:
        raise OptionError(
            ("stages", len(checked) - 1),
            f"the last stage must keep 1 survivor, got {checked[-1][1]}",
        )
    return checked
