"""presso's diffusers pipeline: an unconditional UNet2DModel sampled over its scheduler's
searched schedule (presso.diffusion._schedulers).

This file imports nothing of presso: ``presso export --format diffusers`` copies it into the
exported folder as ``pipeline_presso.py``, which ``model_index.json`` names, so that

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)(batch_size=8, generator=g)

samples as presso scored the candidate. It is diffusers' ``DDIMPipeline`` loop, with the
schedule taken from the scheduler's config rather than ``num_inference_steps``.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class PressoSchedulePipeline(DiffusionPipeline):
    """Unconditional sampling over the scheduler's searched time steps."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):  # noqa: ANN001
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size=1,  # noqa: ANN001
        generator=None,  # noqa: ANN001
        noise=None,  # noqa: ANN001 - starting images [n, C, H, W]; drawn from generator if None
        output_type="pil",  # noqa: ANN001 - "pil", "np", or "pt" (a tensor in [-1, 1])
        return_dict=True,  # noqa: ANN001
    ):  # noqa: ANN204
        config = self.unet.config
        if noise is None:
            size = config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            shape = (batch_size, config.in_channels, *size)
            noise = randn_tensor(
                shape, generator=generator, device=self.device, dtype=self.unet.dtype
            )
        x = noise.to(self.device, self.unet.dtype)
        self.scheduler.set_timesteps()  # the searched schedule, from the scheduler's config
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.step(self.unet(x, t).sample, t, x).prev_sample
        if output_type == "pt":
            images = x
        else:
            images = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
