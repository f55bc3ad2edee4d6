"""Sampling with a time-step schedule: DDIM (eta 0) or DPM-Solver over any descending subset
of the model's training time steps, with the schedulers of presso.diffusion._schedulers (the
ones an export ships). With the uniform schedule DDIM equals diffusers' ``DDIMPipeline``
(tests/test_diffusion.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError

if TYPE_CHECKING:
    import torch


def trailing_grid(train_steps: int, candidates: int) -> list[int]:
    """``candidates`` time steps evenly spaced over ``train_steps``, from the last one down
    (diffusers' ``timestep_spacing="trailing"``): the time steps a schedule chooses from."""
    if not 2 <= candidates <= train_steps or train_steps % candidates:
        raise PressoError(
            f"steps.candidates: {candidates} must divide the model's {train_steps} training "
            f"time steps (e.g. {train_steps // 10} or {train_steps // 20})"
        )
    stride = train_steps // candidates
    return [train_steps - 1 - j * stride for j in range(candidates)]


def uniform_schedule(grid: Sequence[int], steps: int) -> list[int]:
    """Uniform DDIM at ``steps`` steps: every ``len(grid) / steps``-th candidate from the top
    (with a trailing grid, diffusers' trailing DDIM schedule when ``steps`` divides it)."""
    if not 1 <= steps <= len(grid):
        raise ValueError(f"steps must be between 1 and {len(grid)}, got {steps}")
    return [grid[(i * len(grid)) // steps] for i in range(steps)]


def ddim_scheduler(config: dict[str, Any]) -> Any:
    """A DDIMScheduler from a (DDPM) scheduler's config, as DDIMPipeline makes one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


#: How a schedule is sampled: a candidate's solver (presso.spaces._steps), the first the default.
SOLVERS = ("ddim", "dpm-solver")


def scheduler_for(config: dict[str, Any], timesteps: Sequence[int], solver: str = "ddim") -> Any:
    """A diffusers scheduler that samples ``timesteps`` with ``solver`` (``ddim``: DDIM, eta 0;
    ``dpm-solver``: diffusers' DPM-Solver++ 2M), from the model's (DDPM) scheduler config."""
    from presso.diffusion._schedulers import (
        SearchedDDIMScheduler,
        SearchedDPMSolverMultistepScheduler,
    )

    steps = [int(t) for t in timesteps]
    if solver == "ddim":
        return SearchedDDIMScheduler.from_config(config, timesteps=steps)
    if solver != "dpm-solver":
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    options: dict[str, Any] = {}
    if config.get("clip_sample", True) and not config.get("thresholding"):
        # DPM-Solver has no clip_sample; dynamic thresholding with s clamped to [1, range] is
        # the same clip of the predicted image (exactly so for the usual range 1).
        options = {"thresholding": True, "sample_max_value": config.get("clip_sample_range", 1.0)}
    return SearchedDPMSolverMultistepScheduler.from_config(config, timesteps=steps, **options)


def sample(
    unet: Any,
    config: dict[str, Any],
    timesteps: Sequence[int],
    noise: torch.Tensor,
    *,
    solver: str = "ddim",
    skips: dict[int, Sequence[str]] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images in [-1, 1] from ``noise`` ``[n, C, H, W]`` by ``solver`` over ``timesteps``
    (strictly descending training time steps), in batches of ``batch_size``; ``config``: the
    model's scheduler config; ``skips``: per step, the UNet blocks it skips (reusing their
    output of the last step that ran them, see presso.diffusion._pipeline.BlockReuse). No
    time steps at all give the noise back."""
    import torch

    from presso.diffusion._pipeline import BlockReuse

    if not len(timesteps):  # a schedule of no steps (the cheapest point of a front): the noise
        return noise.clone()
    scheduler = scheduler_for(config, timesteps, solver)
    reuse = BlockReuse(unet, skips)
    out = []
    with torch.no_grad():
        for b in range(0, len(noise), batch_size):
            x = noise[b : b + batch_size]
            scheduler.set_timesteps()  # a multistep solver starts each batch afresh
            reuse.reset()
            for i, t in enumerate(scheduler.timesteps):
                with reuse.step(i):
                    eps = unet(x, t).sample
                x = scheduler.step(eps, t, x).prev_sample
            out.append(x)
    return torch.cat(out)


def seeded_noise(seed: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """``n`` standard normal starting images of ``shape`` (C, H, W), the same for a seed."""
    import torch

    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn((n, *shape), generator=gen)


def plan_sampling(plan: Any, train_steps: int) -> tuple[list[int], str, dict[int, list[str]]]:
    """How ``plan`` samples a model of ``train_steps`` training time steps: its schedule
    (descending), solver, and per step the UNet blocks it skips. The candidate grid is the
    plan's ``steps`` setting ``candidates`` (presso.spaces._steps; 100 when it has none)."""
    from presso.spaces._skips import skips_of
    from presso.spaces._steps import solver_of

    candidates = int(plan.settings.get("steps", {}).get("candidates") or 100)
    dropped = set(plan.dropped)
    kept = [t for t in trailing_grid(train_steps, candidates) if f"timestep.{t}" not in dropped]
    return kept, solver_of(plan.dropped), skips_of(plan.dropped)
