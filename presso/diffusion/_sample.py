"""Sampling with a time-step schedule: DDIM (eta 0) over any descending subset of the
model's training time steps.

diffusers' ``DDIMScheduler.step`` assumes evenly spaced steps (it derives the previous time
step from ``num_inference_steps``); :func:`ddim_step` is the same update with the previous time
step given, so a searched, non-uniform schedule samples exactly as DDIM would. With the
uniform schedule it equals diffusers' ``DDIMPipeline`` (tests/test_diffusion.py).
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


def ddim_step(
    scheduler: Any, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step from time step ``t`` to ``t_prev`` (-1: the end), as
    ``DDIMScheduler.step`` computes it with ``eta=0``."""
    config = scheduler.config
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    b_t = 1 - a_t
    if config.prediction_type == "epsilon":
        x0, eps_hat = (x - b_t**0.5 * eps) / a_t**0.5, eps
    elif config.prediction_type == "v_prediction":
        x0, eps_hat = a_t**0.5 * x - b_t**0.5 * eps, a_t**0.5 * eps + b_t**0.5 * x
    else:  # "sample"
        x0, eps_hat = eps, (x - a_t**0.5 * eps) / b_t**0.5
    if config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps_hat


def sample(
    unet: Any,
    scheduler: Any,
    timesteps: Sequence[int],
    noise: torch.Tensor,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images in [-1, 1] from ``noise`` ``[n, C, H, W]`` by DDIM over ``timesteps`` (strictly
    descending training time steps), in batches of ``batch_size``."""
    import torch

    steps = [int(t) for t in timesteps]
    if not steps or any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {steps}")
    out = []
    with torch.no_grad():
        for i in range(0, len(noise), batch_size):
            x = noise[i : i + batch_size]
            for t, t_prev in zip(steps, [*steps[1:], -1]):
                eps = unet(x, torch.tensor(t)).sample
                x = ddim_step(scheduler, eps, t, t_prev, x)
            out.append(x)
    return torch.cat(out)


def seeded_noise(seed: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """``n`` standard normal starting images of ``shape`` (C, H, W), the same for a seed."""
    import torch

    gen = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn((n, *shape), generator=gen)
