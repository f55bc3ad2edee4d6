"""The time-step space of a diffusion model: which of its training time steps DDIM visits.

One keep/skip dimension per candidate time step (the model's training steps on a trailing grid
of ``schedule.candidates``); a candidate's schedule is its kept steps in descending order, and
the budget ``space.steps`` bounds how many (AutoDiffusion's first stage). A plan drops the
skipped steps as ``timestep.T`` targets, as depth drops blocks.

One more keep/skip dimension, ``solver.ddim``, says how the schedule is sampled: kept, by DDIM
(every plan that does not name it); dropped, by DPM-Solver instead (the ``dpm-solver``
baseline). It costs no steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from presso.schema import Strict
from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._kinds import Kind, register

#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "steps"

#: Level values: 0 = the time step is skipped, 1 = sampled (cheapest first).
SKIPPED, KEPT = 0, 1

#: The prefix of a time step's target (``timestep.999``).
PREFIX = "timestep."

#: The target of the solver dimension: kept, DDIM samples the schedule; dropped, DPM-Solver.
SOLVER = "solver.ddim"


class ScheduleConfig(Strict):
    """The ``schedule:`` section: which time steps a diffusion model's schedules choose from."""

    candidates: int = Field(
        100,
        ge=2,
        le=100_000,
        description="candidate time steps: the training steps on a trailing grid of this many "
        "(must divide the model's training steps)",
    )


class MaxSteps(Constraint):
    """At most ``limit`` time steps sampled."""

    sense = "<="
    metric = BUDGET

    def __init__(self, limit: int) -> None:
        self.limit = float(limit)

    def value(self, space: SearchSpace, config: Config) -> float:
        return float(
            sum(1 for d, i in zip(space.dims, config) if is_timestep(d) and d.levels[i] == KEPT)
        )

    def budget(self, space: SearchSpace) -> Budget | None:
        costs = tuple(
            tuple(1 if is_timestep(d) and v == KEPT else 0 for v in d.levels) for d in space.dims
        )
        return Budget(costs, int(self.limit))

    def describe(self) -> str:
        return f"steps <= {self.limit:g}"


def steps_dims(timesteps: Sequence[int]) -> list[Dimension]:
    """Keep/skip dimensions, one per candidate time step (descending)."""
    return [
        Dimension(
            name=f"{PREFIX}{t}",
            levels=(SKIPPED, KEPT),
            weight=1,
            group=StepsKind.name,
            kind=StepsKind.name,
        )
        for t in timesteps
    ]


def solver_dim() -> Dimension:
    """The solver dimension (see the module doc): its own group, so that no level switch of
    a time step trades with it."""
    return Dimension(
        name=SOLVER, levels=(SKIPPED, KEPT), weight=1, group="solver", kind=StepsKind.name
    )


def is_timestep(dim: Dimension) -> bool:
    """Whether ``dim`` keeps or skips a time step (not the solver)."""
    return dim.kind == StepsKind.name and dim.target.startswith(PREFIX)


def solver_of(dropped: Sequence[str]) -> str:
    """The solver a plan samples its schedule with, from its dropped targets."""
    return "dpm-solver" if SOLVER in dropped else "ddim"


def timestep_of(target: str) -> int:
    """The time step a dimension's target names (``timestep.999`` -> 999)."""
    return int(target[len(PREFIX) :])


@register
class StepsKind(Kind):
    """Keep or skip each candidate time step of a diffusion model's sampling schedule."""

    name = "steps"
    label = "sampled (1) / skipped (0)"
    dense = KEPT
    per_unit = False
    section = "schedule"
    config = ScheduleConfig
    budget = BUDGET
    colorscale = [[0, "#dddddd"], [1, "#1f77b4"]]
    prefix = (PREFIX, "solver.")
    # A plan carries its grid, so a backend can sample it without the experiment.
    settings = {"candidates": "candidates"}
    space_fields = {
        BUDGET: (
            int | None,
            Field(
                None, ge=1, le=100_000, description="time steps a sampling schedule has, at most"
            ),
        ),
    }

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        return [*steps_dims(setup.timestep_grid), solver_dim()]

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        from presso.errors import PressoError

        n = len([d for d in dims if is_timestep(d)])
        if not 1 <= limit < n:
            raise PressoError(
                f"space.steps: {limit:g}, but schedules choose from {n} candidate time steps; "
                f"give 1 to {n - 1} (or raise schedule.candidates)"
            )
        return MaxSteps(int(limit))

    def check(self, experiment: Any, fail: Any, active: bool) -> None:
        if not active:
            return
        if experiment.space.steps >= experiment.schedule.candidates:
            fail(
                ("space", "steps"),
                f"{experiment.space.steps} steps, but schedules choose from "
                f"schedule.candidates = {experiment.schedule.candidates} time steps; give fewer "
                "steps or more candidates",
            )

    def show(
        self,
        targets: Sequence[str],
        values: Sequence[float],
        *,
        model: Callable[[], Any] | None = None,
    ) -> str | None:
        kept = [timestep_of(t) for t, v in zip(targets, values) if v == KEPT and t != SOLVER]
        steps = ", ".join(map(str, sorted(kept, reverse=True)))
        solver = solver_of([t for t, v in zip(targets, values) if v != KEPT])
        return f"sampling schedule of the search's best ({len(kept)} time steps, {solver}): {steps}"

    def refusal(self, plan: Any, fmt: str) -> str | None:
        if not self.dropped(plan.dropped):
            return None
        return (
            f"--format {fmt} cannot hold a sampling schedule; export it with --format "
            "diffusers (a pipeline folder) or --format plan (the skipped time steps)"
        )
