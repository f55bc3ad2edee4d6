"""Sample grids: a PNG of a diffusion model's samples under one schedule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def grid_png(images: torch.Tensor, out: Path, *, columns: int = 8, scale: int = 4) -> None:
    """Write images ``[n, 1, H, W]`` in [-1, 1] as one PNG grid (each pixel ``scale``x)."""
    from presso.paths import atomic_write_bytes

    atomic_write_bytes(Path(out), grid_png_bytes(images, columns=columns, scale=scale))


def grid_png_bytes(images: torch.Tensor, *, columns: int = 8, scale: int = 4) -> bytes:
    """Images ``[n, 1, H, W]`` in [-1, 1] as the bytes of one PNG grid (each pixel ``scale``x)."""
    import io

    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 128, dtype=np.uint8)
    pixels = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            pixels[i]
        )
    image = Image.fromarray(canvas).resize(
        (canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_grid(
    folder: Path,
    name: str,
    out: Path,
    *,
    steps: int = 100,
    timesteps: Sequence[int] | None = None,
    n: int = 64,
    seed: int = 0,
) -> list[int]:
    """Sample ``n`` images of the model in ``folder`` with uniform DDIM at ``steps`` steps (or
    the given ``timesteps``) and write their grid to ``out``; returns the schedule used."""
    from presso.diffusion._model import DiffusionModel
    from presso.diffusion._sample import sample, seeded_noise, trailing_grid

    model = DiffusionModel(folder, name=name, classifier=folder / "classifier.safetensors")
    schedule = list(timesteps or trailing_grid(model.train_steps, steps))
    images = sample(
        model.unet, model.scheduler_config, schedule, seeded_noise(seed, n, model.shape)
    )
    grid_png(images, out)
    return schedule
