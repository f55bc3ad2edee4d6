"""Skipped UNet blocks per sampling step of a diffusion model (AutoDiffusion's second stage).

One executed/skipped dimension per (step of the schedule, UNet block), for the steps 1 .. k-1 of
the k that ``space.steps`` allows: step 0 runs every block (nothing is cached before it). A
skipped block gives the output it gave at the last step that ran it
(presso.diffusion._pipeline.BlockReuse). The budget ``space.blocks`` bounds the blocks executed
over the whole sampling: every block of step 0 and the executed ones of the others (the steps
a shorter schedule never reaches count too, so the bound is never exceeded). A plan drops the
skipped ones as ``skip.I.BLOCK`` targets (``skip.2.mid_block``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._kinds import Kind, register

#: The budget's name under ``space:`` and the metric stored with every evaluation.
BUDGET = "blocks"

#: Level values: 0 = the block is skipped at that step (its last output reused), 1 = executed.
SKIPPED, EXECUTED = 0, 1

#: The prefix of a skipped block's target (``skip.2.mid_block``).
PREFIX = "skip."


def skip_target(step: int, block: str) -> str:
    return f"{PREFIX}{step}.{block}"


def skips_of(dropped: Sequence[str]) -> dict[int, list[str]]:
    """Per step, the blocks a plan's dropped targets skip (``{2: ["mid_block"]}``)."""
    out: dict[int, list[str]] = {}
    for target in dropped:
        if target.startswith(PREFIX):
            step, block = target[len(PREFIX) :].split(".", 1)
            out.setdefault(int(step), []).append(block)
    return out


def skips_dims(steps: int, blocks: Sequence[str]) -> list[Dimension]:
    """Executed/skipped dimensions for steps 1 .. ``steps``-1 of a schedule, each over
    ``blocks`` (in the order the UNet runs them); one group: every dimension costs one block."""
    return [
        Dimension(
            name=skip_target(i, block),
            levels=(SKIPPED, EXECUTED),
            weight=1,
            group=SkipsKind.name,
            kind=SkipsKind.name,
        )
        for i in range(1, steps)
        for block in blocks
    ]


class MaxBlocks(Constraint):
    """At most ``limit`` UNet blocks executed over a schedule; ``always``: those of step 0."""

    sense = "<="
    metric = BUDGET

    def __init__(self, limit: int, always: int) -> None:
        self.limit, self.always = float(limit), int(always)

    def value(self, space: SearchSpace, config: Config) -> float:
        executed = sum(
            1
            for d, i in zip(space.dims, config)
            if d.kind == SkipsKind.name and d.levels[i] == EXECUTED
        )
        return float(self.always + executed)

    def budget(self, space: SearchSpace) -> Budget | None:
        costs = tuple(
            tuple(1 if d.kind == SkipsKind.name and v == EXECUTED else 0 for v in d.levels)
            for d in space.dims
        )
        return Budget(costs, int(self.limit) - self.always)

    def describe(self) -> str:
        return f"blocks <= {self.limit:g}"


@register
class SkipsKind(Kind):
    """Execute or skip each UNet block at each step of a diffusion model's sampling schedule."""

    name = "skips"
    label = "executed (1) / skipped (0)"
    dense = EXECUTED
    per_unit = False
    budget = BUDGET
    colorscale = [[0, "#dddddd"], [1, "#2ca02c"]]
    prefix = PREFIX
    space_fields = {
        BUDGET: (
            int | None,
            Field(
                None,
                ge=1,
                le=10_000_000,
                description="UNet blocks executed over a sampling schedule, at most (with "
                "space.steps: AutoDiffusion's second stage skips blocks per step)",
            ),
        ),
    }

    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        return skips_dims(setup.experiment.space.steps, setup.handle.unet_blocks())

    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        from presso.errors import PressoError

        mine = [d for d in dims if d.kind == self.name]
        per_step = len([d for d in mine if d.name.startswith(f"{PREFIX}1.")])
        most = per_step + len(mine)
        if not per_step <= limit < most:
            raise PressoError(
                f"space.blocks: {limit:g}, but the schedule's first step runs all {per_step} "
                f"UNet blocks and its steps run {most} at most; give {per_step} to {most - 1}"
            )
        return MaxBlocks(int(limit), per_step)

    def check(self, experiment: Any, fail: Any, active: bool) -> None:
        if active and (experiment.space.steps or 0) < 2:
            fail(
                ("space", "blocks"),
                "blocks are skipped per sampling step after the first: give space.steps "
                "(2 or more) too, with kind: joint",
            )

    def show(
        self,
        targets: Sequence[str],
        values: Sequence[float],
        *,
        model: Callable[[], Any] | None = None,
    ) -> str | None:
        skipped = skips_of([t for t, v in zip(targets, values) if v == SKIPPED])
        if not skipped:
            return "UNet blocks skipped per step of the search's best: none"
        steps = "; ".join(f"step {i}: {', '.join(b)}" for i, b in sorted(skipped.items()))
        return f"UNet blocks skipped per step of the search's best (reusing their last output): {steps}"
