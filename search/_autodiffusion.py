"""AutoDiffusion's two-stage evolution of a diffusion model's sampling: the time steps first,
then the time steps and the UNet blocks each step skips together; and uniform DDIM and
DPM-Solver as baselines.

After Li et al. 2023, "AutoDiffusion: Training-Free Optimization of Time Steps and
Architectures for Automated Diffusion Model Acceleration". A schedule is a steps space's kept
time steps (presso.spaces._steps); EvoPress's level switch, within the one group of time steps,
moves a kept step to a skipped one, which is AutoDiffusion's time-step mutation with the number
of steps kept; within the group of (step, block) choices (presso.spaces._skips) it moves a
skip from one step's block to another, with the number of blocks executed kept. Selection is
EvoPress's: children are scored by FID on few images first, the survivors on more (``stages``
in images), all of a stage on the same noise.

One difference from the paper: its first stage searches time steps with the whole UNet, which
a blocks budget forbids; here the first stage keeps a fixed skip pattern that meets the budget
(:func:`skip_pattern`, the deepest blocks first, as DeepCache), so every candidate evaluated
is one the budget admits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from presso.search._base import Context, OneShot, Request, Result, Strategy, check_told, register
from presso.search._evopress import EvoPress, _check_stages
from presso.spaces import Config, SearchSpace

#: The kinds of a schedule's dimensions: time steps (and solver), skipped blocks.
STEPS, SKIPS = "steps", "skips"


def uniform_schedule(space: SearchSpace, solver: str = "ddim") -> Config:
    """The uniform schedule under the space's steps budget: every ``candidates / steps``-th
    candidate time step from the top kept (diffusers' trailing DDIM schedule), sampled by
    ``solver`` (``ddim``, or ``dpm-solver`` where the space has a solver dimension), with the
    blocks :func:`skip_pattern` skips where the space has a blocks budget. Without a steps
    budget (a latency budget alone), the most steps whose uniform schedule the space admits."""
    from presso.spaces._steps import is_timestep

    steps = [d for d, dim in enumerate(space.dims) if is_timestep(dim)]
    limit = next((c.limit for c in space.constraints if c.metric == STEPS), None)
    if limit is not None:
        return _uniform(space, int(limit), solver)
    for k in range(len(steps), 0, -1):
        config = _uniform(space, k, solver)
        if space.is_feasible(config):
            return config
    raise ValueError("no uniform schedule of one step or more meets the space's budget")


def _uniform(space: SearchSpace, k: int, solver: str) -> Config:
    """The uniform ``k``-step schedule of :func:`uniform_schedule`."""
    from presso.spaces._steps import SOLVER, is_timestep

    steps = [d for d, dim in enumerate(space.dims) if is_timestep(dim)]
    kept = {steps[(i * len(steps)) // k] for i in range(k)}
    if SOLVER in space.names:  # kept: DDIM; dropped: DPM-Solver (presso.spaces._steps)
        kept.add(space.names.index(SOLVER))
    if solver != "ddim":
        if SOLVER not in space.names:
            raise ValueError(f"{solver}: this steps space has no solver dimension ({SOLVER})")
        kept.discard(space.names.index(SOLVER))
    kept |= set(skip_pattern(space))
    return tuple(
        dim.levels.index(1) if d in kept else dim.levels.index(0)
        for d, dim in enumerate(space.dims)
    )


def skip_pattern(space: SearchSpace) -> list[int]:
    """The (step, block) dimensions left executed by the fixed skip pattern that meets the
    space's blocks budget: blocks are skipped deepest first (nearest the middle of the UNet,
    as DeepCache keeps the shallow ones), each at every step from the last down, until the
    budget holds. Empty where the space skips no blocks."""
    skips = [d for d, dim in enumerate(space.dims) if dim.kind == SKIPS]
    budget = next((c for c in space.constraints if c.metric == "blocks"), None)
    if not skips or budget is None:
        return skips
    blocks = list(dict.fromkeys(space.dims[d].name.split(".", 2)[2] for d in skips))
    middle = (len(blocks) - 1) / 2
    depth = {b: abs(i - middle) for i, b in enumerate(blocks)}

    def order(d: int) -> tuple[float, int]:
        _, step, block = space.dims[d].name.split(".", 2)
        return (depth[block], -int(step))

    ranked = sorted(skips, key=order)
    skipped = max(0, len(skips) - (int(budget.limit) - budget.always))
    return sorted(ranked[skipped:])


def _subspace(space: SearchSpace, kind: str) -> tuple[SearchSpace, list[int]]:
    """The dimensions of ``kind`` alone, with the constraints on them (a first stage)."""
    index = [d for d, dim in enumerate(space.dims) if dim.kind == kind]
    dims = [space.dims[d] for d in index]
    constraints = [c for c in space.constraints if c.metric == STEPS]
    return SearchSpace(dims, constraints, settings=space.settings), index


@register
class AutoDiffusion(Strategy):
    """AutoDiffusion's evolution: EvoPress over the time steps from the uniform schedule
    (``generations``), then, where the space skips blocks, over the time steps and the skips
    together from the first stage's best (``skip_generations``; default ``generations``).
    ``stages`` in images; no sensitivity table (screening off)."""

    name = "autodiffusion"
    kinds = (STEPS, SKIPS)
    bounds = {
        "generations": (1, None),
        "offspring": (1, None),
        "max_mutations": (1, None),
        "skip_generations": (1, None),
    }

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        generations: int = 30,
        offspring: int = 8,
        stages: Sequence[tuple[int | None, int]] = ((64, 2), (256, 1)),
        max_mutations: int = 2,
        skip_generations: int | None = None,
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self.check_values(
            dict(
                generations=generations,
                offspring=offspring,
                stages=stages,
                max_mutations=max_mutations,
                skip_generations=skip_generations,
            )
        )
        self._evolve = dict(
            offspring=offspring,
            stages=stages,
            max_mutations=max_mutations,
            start="uniform",
            screen=0,
            confirm=0,
        )
        self._skip_generations = skip_generations or generations
        self._start = uniform_schedule(space)
        self._sub, self._index = _subspace(space, STEPS)
        first = [self._start[d] for d in self._index]
        self._first = EvoPress(
            self._sub, seed=seed, generations=generations, initial=first, **self._evolve
        )
        self._second: EvoPress | None = None
        self._maybe_second()

    def _full(self, sub: Config) -> Config:
        """A first-stage configuration in the whole space (the skips of the start)."""
        config = list(self._start)
        for d, level in zip(self._index, sub):
            config[d] = level
        return tuple(config)

    def _maybe_second(self) -> None:
        """Start the second stage once the first has finished with a best (deterministic:
        a replay starts it at the same point)."""
        two = len(self._index) < len(self.space.dims)
        if two and self._second is None and self._first.finished and self._first.best():
            seed = int(np.random.SeedSequence((self.seed, 2)).generate_state(1)[0])
            self._second = EvoPress(
                self.space,
                seed=seed,
                generations=self._skip_generations,
                initial=self._full(self._first.best()),  # type: ignore[arg-type]
                **self._evolve,
            )

    def ask(self) -> list[Request]:
        if self._second is not None:
            return [
                Request(r.config, r.tokens, r.sample_seed, f"skips/{r.tag}")
                for r in self._second.ask()
            ]
        return [
            Request(self._full(r.config), r.tokens, r.sample_seed, r.tag) for r in self._first.ask()
        ]

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        check_told(self.ask(), requests, results)
        if not requests:
            return
        inner = self._second if self._second is not None else self._first
        inner.tell(inner.ask(), results)
        self._maybe_second()

    @property
    def finished(self) -> bool:
        if self._second is not None:
            return self._second.finished
        return self._first.finished

    def best(self) -> Config | None:
        second = self._second.best() if self._second is not None else None
        if second is not None:
            return second
        first = self._first.best()
        return None if first is None else self._full(first)

    @property
    def history(self) -> list[tuple[int, float | None]]:
        """Each generation's surviving parent's fitness, the second stage's numbered on."""
        first = self._first.history
        second = self._second.history if self._second is not None else []
        return [*first, *((g + len(first), f) for g, f in second)]

    @property
    def planned(self) -> int:
        two = len(self._index) < len(self.space.dims)
        per = self._first.planned // max(self._first.generations, 1)
        return self._first.planned + (per * self._skip_generations if two else 0)

    @classmethod
    def check_values(cls, options: dict[str, Any]) -> None:
        super().check_values(options)
        _check_stages(options["stages"])

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        return frozenset()


@register
class DDIM(OneShot):
    """Uniform DDIM at the budget's steps (with the fixed skip pattern where the space skips
    blocks), scored on the whole sample pool (the baseline)."""

    name = "ddim"
    kinds = (STEPS, SKIPS)
    solver = "ddim"

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        super().__init__(space, uniform_schedule(space, self.solver), seed=seed, context=context)


@register
class DPMSolver(DDIM):
    """diffusers' DPM-Solver++ (2M, DPMSolverMultistepScheduler) over the uniform schedule at
    the budget's steps: the baseline a fast solver gives without a search. Scored like DDIM,
    on the same seeded noise."""

    name = "dpm-solver"
    solver = "dpm-solver"
