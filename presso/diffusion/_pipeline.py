"""presso's diffusers pipeline: an unconditional UNet2DModel sampled over its scheduler's
searched schedule (presso.diffusion._schedulers), with the searched blocks skipped per step
(:class:`BlockReuse`: a skipped block gives the output it gave at the last step that ran it).

This file imports nothing of presso: ``presso export --format diffusers`` copies it into the
exported folder as ``pipeline_presso.py``, which ``model_index.json`` names, so that

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)(batch_size=8, generator=g)

samples as presso scored the candidate. It is diffusers' ``DDIMPipeline`` loop, with the
schedule taken from the scheduler's config rather than ``num_inference_steps``, and the skipped
blocks from the pipeline's (``model_index.json``'s ``skips``). presso samples with the same
:class:`BlockReuse`.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


def unet_blocks(unet):  # noqa: ANN001, ANN201
    """A UNet2DModel's blocks by name (``down_blocks.0`` ... ``mid_block`` ... ``up_blocks.N``),
    in the order its forward runs them: what a step may skip."""
    blocks = {f"down_blocks.{i}": block for i, block in enumerate(unet.down_blocks)}
    if unet.mid_block is not None:
        blocks["mid_block"] = unet.mid_block
    blocks.update({f"up_blocks.{i}": block for i, block in enumerate(unet.up_blocks)})
    return blocks


class BlockReuse:
    """Runs a UNet2DModel step by step with blocks skipped: a skipped block's output is the one
    it gave at the last step that ran it (DeepCache's feature reuse, in AutoDiffusion's
    per-step architectures). Every output keeps its shape, so any block may be skipped.

    skips: per step of the schedule (0: the first, which runs every block: nothing is cached
        yet), the names of the blocks it skips. With none, the UNet runs untouched.

    A step replaces the blocks' ``forward`` on the UNet itself, and puts them back after it:
    one sampling at a time per UNet (presso evaluates one request at a time per process).
    """

    def __init__(self, unet, skips=None):  # noqa: ANN001
        self.blocks = unet_blocks(unet)
        self.skips = {int(i): set(names) for i, names in (skips or {}).items() if names}
        unknown = set().union(*self.skips.values()) - set(self.blocks)
        if unknown:
            raise ValueError(f"no such UNet blocks: {sorted(unknown)}; it has {list(self.blocks)}")
        if self.skips.get(0):
            raise ValueError("step 0 cannot skip a block: no earlier step's output to reuse")
        self.cache = {}

    def reset(self):  # noqa: ANN201
        """Forget the cached outputs (a new batch starts from its own first step)."""
        self.cache = {}

    @contextlib.contextmanager
    def step(self, i):  # noqa: ANN001, ANN201
        """The UNet's blocks during step ``i``: skipped ones give their cached output, the
        others run and refresh it."""
        if not self.skips:
            yield
            return
        skipped = self.skips.get(int(i), set())
        for name, block in self.blocks.items():
            block.forward = self._reuse(name) if name in skipped else self._run(name, block.forward)
        try:
            yield
        finally:
            for block in self.blocks.values():
                del block.forward  # the class's forward again

    def _run(self, name, forward):  # noqa: ANN001, ANN202
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            out = forward(*args, **kwargs)
            # A copy: the UNet may add to its last output in place (skip_sample).
            self.cache[name] = _clone(out)
            return out

        return run

    def _reuse(self, name):  # noqa: ANN001, ANN202
        def reuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if name not in self.cache:
                raise ValueError(f"{name} is skipped before any step ran it")
            return _clone(self.cache[name])

        return reuse


def _clone(out):  # noqa: ANN001, ANN202
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_clone(o) for o in out)


class PressoSchedulePipeline(DiffusionPipeline):
    """Unconditional sampling over the scheduler's searched time steps."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, skips=None):  # noqa: ANN001
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # Per step of the schedule (keys are strings in JSON), the blocks it skips.
        self.register_to_config(skips={str(k): list(v) for k, v in (skips or {}).items()})

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
        reuse = BlockReuse(self.unet, self.config.skips)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            with reuse.step(i):
                eps = self.unet(x, t).sample
            x = self.scheduler.step(eps, t, x).prev_sample
        if output_type == "pt":
            images = x
        else:
            images = (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
