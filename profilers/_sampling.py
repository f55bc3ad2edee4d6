"""Timing a diffusion model's sampling on the torch backend: a whole candidate end to end,
and the parts its sampling latency adds up from (presso.cost_models._sampling).

A workload's ``batch`` is the images sampled together; a candidate is its plan's schedule,
solver and skipped blocks (presso.diffusion._sample.plan_sampling), sampled from seeded noise
exactly as the evaluator scores it (:func:`presso.diffusion._sample.sample`). The parts, each
timed at the model's resolution and the workload's batch on inputs a real step gave:

* ``block:NAME:run``: one UNet block's forward; ``block:NAME:copy``: the copy of its output
  that :class:`~presso.diffusion._pipeline.BlockReuse` keeps (or hands out, when skipped);
* ``step:unet``: the UNet with every block's output handed back at no cost (time embedding,
  ``conv_in``, the output norm and conv, the Python between them);
* ``step:SOLVER``: one scheduler step; ``setup:SOLVER``: building the scheduler for a schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from presso.profilers._base import SEED, Measurement, Profiler, Workload

if TYPE_CHECKING:
    from presso.plan import Plan

#: The time step the parts are timed at (a block's cost does not depend on it).
PART_TIMESTEP = 500

#: Steps of the schedule a solver's step is timed over (a multistep solver keeps history).
_SOLVER_STEPS = 10


def sampling_workload(handle: Any, batch: int) -> Workload:
    """The workload a diffusion model's sampling is timed under: ``batch`` images at its
    resolution (``seq_len``: pixels per image)."""
    return Workload(batch=int(batch), seq_len=int(handle.size) ** 2, phase="prefill")


def noise(handle: Any, workload: Workload) -> Any:
    """The workload's batch of seeded starting images at the model's resolution."""
    from presso.diffusion._sample import seeded_noise

    return seeded_noise(SEED, workload.batch, handle.shape)


@contextlib.contextmanager
def _one_warmup(profiler: Profiler) -> Iterator[None]:
    """One warm-up run: a whole sampling is already many UNet forwards."""
    warmup = profiler.warmup
    profiler.warmup = 1
    try:
        yield
    finally:
        profiler.warmup = warmup


def time_sampling(profiler: Profiler, handle: Any, plan: Plan, workload: Workload) -> Measurement:
    """One sampling of ``plan`` (its schedule, solver, skipped blocks) of ``workload.batch``
    images, end to end, as the evaluator samples it."""
    import torch

    from presso.diffusion._sample import plan_sampling, sample

    timesteps, solver, skips = plan_sampling(plan, handle.train_steps)
    x = noise(handle, workload)

    def run() -> None:
        sample(
            handle.unet,
            handle.scheduler_config,
            timesteps,
            x,
            solver=solver,
            skips=skips,
            batch_size=workload.batch,
        )

    with profiler._threads(), torch.inference_mode(), _one_warmup(profiler):
        return profiler._timed(
            run, op="model", workload=workload, steps=len(timesteps), solver=solver
        )


def part_names(handle: Any) -> list[str]:
    """The parts :func:`time_parts` times, by name."""
    from presso.diffusion._sample import SOLVERS

    blocks = [f"block:{b}:{what}" for b in handle.unet_blocks() for what in ("run", "copy")]
    solvers = [f"{what}:{s}" for s in SOLVERS for what in ("step", "setup")]
    return [*blocks, "step:unet", *solvers]


def time_parts(profiler: Profiler, handle: Any, workload: Workload) -> dict[str, Measurement]:
    """Each part of :func:`part_names`, timed (a failure is a measurement with its error)."""
    import torch

    timings = {}
    with profiler._threads(), torch.inference_mode():
        runs = _part_runs(handle, workload)
        for name in part_names(handle):
            timings[name] = _measure(profiler, runs[name], name, workload)
    return timings


def _measure(
    profiler: Profiler, run: Callable[[], Any], name: str, workload: Workload
) -> Measurement:
    try:
        return profiler._timed(run, op=name, workload=workload, calls=getattr(run, "calls", 1))
    except Exception as err:  # noqa: BLE001 - a failed timing is data
        return Measurement(
            profiler.name, name, workload.key, None, error=f"{type(err).__name__}: {err}"
        )


def _part_runs(handle: Any, workload: Workload) -> dict[str, Callable[[], Any]]:
    """What each part runs, on the inputs and outputs of one real UNet step (captured by hooks)."""
    import torch

    from presso.diffusion._pipeline import _clone, unet_blocks
    from presso.diffusion._sample import SOLVERS, scheduler_for, trailing_grid, uniform_schedule

    unet = handle.unet
    blocks = unet_blocks(unet)
    x, t = noise(handle, workload), torch.tensor(PART_TIMESTEP)
    inputs: dict[str, tuple[tuple, dict]] = {}
    outputs: dict[str, Any] = {}
    hooks = []
    for name, block in blocks.items():

        def keep(module: Any, args: tuple, kwargs: dict, out: Any, name: str = name) -> None:
            inputs[name], outputs[name] = (args, kwargs), out

        hooks.append(block.register_forward_hook(keep, with_kwargs=True))
    try:
        eps = unet(x, t).sample
    finally:
        for hook in hooks:
            hook.remove()
    runs: dict[str, Callable[[], Any]] = {}
    for name, block in blocks.items():
        args, kwargs = inputs[name]
        runs[f"block:{name}:run"] = lambda b=block, a=args, k=kwargs: b(*a, **k)
        runs[f"block:{name}:copy"] = lambda o=outputs[name]: _clone(o)

    def unet_alone() -> None:
        for name, block in blocks.items():
            block.forward = lambda *a, o=outputs[name], **k: o
        try:
            unet(x, t)
        finally:
            for block in blocks.values():
                del block.forward

    runs["step:unet"] = unet_alone
    grid = trailing_grid(handle.train_steps, handle.train_steps)
    schedule = uniform_schedule(grid, min(_SOLVER_STEPS, len(grid)))
    for solver in SOLVERS:
        scheduler = scheduler_for(handle.scheduler_config, schedule, solver)
        runs[f"setup:{solver}"] = lambda s=solver: scheduler_for(
            handle.scheduler_config, schedule, s
        )
        runs[f"step:{solver}"] = _solver_steps(scheduler, eps, x, len(schedule))
    return runs


def _solver_steps(scheduler: Any, eps: Any, x: Any, steps: int) -> Callable[[], Any]:
    """A whole schedule's scheduler steps: timed as ``steps`` calls, its mean step."""

    def run() -> None:
        scheduler.set_timesteps()
        sample = x
        for t in scheduler.timesteps:
            sample = scheduler.step(eps, t, sample).prev_sample

    run.calls = steps  # type: ignore[attr-defined]
    return run
