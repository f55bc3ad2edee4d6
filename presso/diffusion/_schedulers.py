"""diffusers schedulers over a searched schedule: any descending subset of the training time
steps, kept in the scheduler's own config (``timesteps``).

This file imports nothing of presso: ``presso export --format diffusers`` copies it into the
exported folder's ``scheduler/``, where diffusers loads it as a custom component
(``trust_remote_code=True``). presso samples with the same classes, so an export reproduces
presso's images by construction, and the tests check it through diffusers' loader.

``SearchedDDIMScheduler`` is DDIM (eta 0): diffusers' ``DDIMScheduler.step`` takes the previous
time step to be ``t - num_train_timesteps // num_inference_steps`` (evenly spaced), so its step
here is the same update with the previous time step read from the schedule. With a uniform
trailing schedule it equals ``DDIMScheduler`` (tests/test_diffusion.py).
``SearchedDPMSolverMultistepScheduler`` is diffusers' DPM-Solver(++) over the same time steps
(its ``set_timesteps`` takes custom ones; only the config key is added).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput


def _with_timesteps(cls):  # noqa: ANN001, ANN202 - a class decorator
    """``cls`` with a keyword ``timesteps`` added to its base class's ``__init__`` signature:
    diffusers reads a scheduler's config keys from that signature, so the searched schedule
    loads from ``scheduler_config.json`` like every other setting (no unknown-key warning)."""
    base = inspect.signature(cls.__mro__[1].__init__)
    extra = inspect.Parameter("timesteps", inspect.Parameter.KEYWORD_ONLY, default=None)
    cls.__init__.__signature__ = base.replace(parameters=[*base.parameters.values(), extra])
    return cls


def _schedule(scheduler, timesteps):  # noqa: ANN001, ANN202
    """The time steps to sample: those given, else the config's; checked descending."""
    steps = [int(t) for t in (timesteps if timesteps is not None else scheduler.config.timesteps)]
    if not steps or any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {steps}")
    if steps[0] >= scheduler.config.num_train_timesteps:
        raise ValueError(f"time step {steps[0]} is not a training time step")
    return steps


@_with_timesteps
class SearchedDDIMScheduler(DDIMScheduler):
    """DDIM (eta 0) over the time steps in ``config.timesteps`` (descending)."""

    def __init__(self, *args, timesteps=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.register_to_config(timesteps=None if timesteps is None else list(timesteps))

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):  # noqa: ANN001
        """The searched schedule (or ``timesteps``); ``num_inference_steps`` alone gives
        diffusers' evenly spaced DDIM schedule."""
        if num_inference_steps is not None and timesteps is None and not self.config.timesteps:
            return super().set_timesteps(num_inference_steps, device)
        steps = _schedule(self, timesteps)
        self.num_inference_steps = len(steps)
        self.timesteps = torch.tensor(steps, dtype=torch.int64, device=device)

    def previous_timestep(self, timestep):  # noqa: ANN001, ANN201
        """The time step after ``timestep`` in the schedule (-1 after the last)."""
        steps = self.timesteps.tolist()
        i = steps.index(int(timestep))
        return steps[i + 1] if i + 1 < len(steps) else -1

    def step(self, model_output, timestep, sample, eta=0.0, return_dict=True, **_):  # noqa: ANN001, ANN201
        """``DDIMScheduler.step`` with ``eta=0`` (``use_clipped_model_output`` off, as its
        default), to the schedule's previous time step."""
        if eta:
            raise ValueError("SearchedDDIMScheduler samples deterministically (eta 0)")
        t, prev = int(timestep), self.previous_timestep(timestep)
        config = self.config
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        if config.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif config.prediction_type == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        elif config.prediction_type == "sample":
            x0, eps = model_output, (sample - a_t**0.5 * model_output) / b_t**0.5
        else:
            raise ValueError(f"prediction_type {config.prediction_type!r} is not supported")
        if config.thresholding:
            x0 = self._threshold_sample(x0)
        elif config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        prev_sample = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        if not return_dict:
            return (prev_sample, x0)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


@_with_timesteps
class SearchedDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver over the time steps in ``config.timesteps`` (descending)."""

    def __init__(self, *args, timesteps=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.register_to_config(timesteps=None if timesteps is None else list(timesteps))

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):  # noqa: ANN001
        if num_inference_steps is not None and timesteps is None and not self.config.timesteps:
            return super().set_timesteps(num_inference_steps, device, mu=mu)
        return super().set_timesteps(device=device, mu=mu, timesteps=_schedule(self, timesteps))
