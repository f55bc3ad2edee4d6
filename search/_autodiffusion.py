"""AutoDiffusion's first stage: evolve a diffusion model's sampling schedule from uniform DDIM;
and uniform DDIM itself as the baseline.

After Li et al. 2023, "AutoDiffusion: Training-Free Optimization of Time Steps and
Architectures for Automated Diffusion Model Acceleration". A schedule is a steps space's
kept time steps (presso.spaces._steps); EvoPress's level switch, within the one group of time
steps, moves a kept step to a skipped one, which is AutoDiffusion's time-step mutation with
the number of steps kept. Selection is EvoPress's: children are scored by FID on few images
first, the survivors on more (``stages`` in images), all of a stage on the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from presso.search._base import Context, OneShot, Strategy, register
from presso.search._evopress import EvoPress, _check_stages
from presso.spaces import Config, SearchSpace

#: The kind whose dimensions are a schedule's time steps (presso.spaces._steps).
STEPS = "steps"


def uniform_schedule(space: SearchSpace, solver: str = "ddim") -> Config:
    """The uniform schedule under the space's steps budget: every ``candidates / steps``-th
    candidate time step from the top kept (diffusers' trailing DDIM schedule), sampled by
    ``solver`` (``ddim``, or ``dpm-solver`` where the space has a solver dimension)."""
    from presso.spaces._steps import SOLVER, is_timestep

    limit = next((c.limit for c in space.constraints if c.metric == STEPS), None)
    if limit is None:
        raise ValueError("a schedule search needs a steps space with a steps budget")
    steps = [d for d, dim in enumerate(space.dims) if is_timestep(dim)]
    k = int(limit)
    kept = {steps[(i * len(steps)) // k] for i in range(k)}
    if SOLVER in space.names:  # kept: DDIM; dropped: DPM-Solver (presso.spaces._steps)
        kept.add(space.names.index(SOLVER))
    if solver != "ddim":
        if SOLVER not in space.names:
            raise ValueError(f"{solver}: this steps space has no solver dimension ({SOLVER})")
        kept.discard(space.names.index(SOLVER))
    return tuple(
        dim.levels.index(1) if d in kept else dim.levels.index(0)
        for d, dim in enumerate(space.dims)
    )


@register
class AutoDiffusion(EvoPress):
    """Evolution over time-step subsets from uniform DDIM (AutoDiffusion's first stage): EvoPress
    with the uniform schedule as its first parent, ``stages`` in images, and no sensitivity
    table (screening off)."""

    name = "autodiffusion"
    kinds = (STEPS,)
    bounds = {"generations": (1, None), "offspring": (1, None), "max_mutations": (1, None)}

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
    ) -> None:
        super().__init__(
            space,
            seed=seed,
            context=context,
            generations=generations,
            offspring=offspring,
            stages=stages,
            max_mutations=max_mutations,
            start="uniform",
            screen=0,
            confirm=0,
            initial=uniform_schedule(space),
        )

    @classmethod
    def check_values(cls, options: dict[str, Any]) -> None:
        Strategy.check_values.__func__(cls, options)  # type: ignore[attr-defined]
        _check_stages(options["stages"])

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        return frozenset()


@register
class DDIM(OneShot):
    """Uniform DDIM at the budget's steps, scored on the whole sample pool (the baseline)."""

    name = "ddim"
    kinds = (STEPS,)
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
