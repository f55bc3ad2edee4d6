"""Train presso's built-in diffusion model and its FID feature classifier, and cache both.

The built artifact is a folder in diffusers' pipeline layout (``unet/``, ``scheduler/``) plus
``classifier.safetensors`` and ``presso.json`` (how it was trained, its loss and accuracy),
addressed by the digest of its training recipe (the :class:`Recipe`, the code's version), and
written atomically; safetensors files are sealed with their checksum (presso.checksum).
Training is seeded and runs on one thread: the same recipe gives the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.paths import atomic_dir, cache_dir, digest

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Bumped when training changes what a recipe produces (old cache entries are then unused).
TRAIN_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """How a built-in diffusion model is trained: the UNet, the DDPM schedule and the run.

    size: image side in pixels (the 8x8 digits upsampled); channels: the UNet's per level;
    steps: optimizer steps of batch ``batch``; timesteps: the DDPM's training steps;
    classifier_epochs: epochs of the FID feature classifier; features: its feature width.
    """

    size: int = 16
    channels: tuple[int, ...] = (16, 32, 32)
    attention: bool = True
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-3
    ema: float = 0.995
    timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    classifier_epochs: int = 15
    features: int = 32
    seed: int = 0

    def key(self) -> str:
        return digest({"recipe": asdict(self), "version": TRAIN_VERSION})


RECIPES = {
    "digits-ddpm": Recipe(),
    "tiny-ddpm": Recipe(
        size=8, channels=(8, 16), attention=False, steps=30, batch=32, classifier_epochs=2
    ),
}


class DigitFeatures:
    """Factory of the digits classifier (a torch module made lazily: torch is imported only
    when one is built). Its ``forward`` returns the penultimate features (``num_features``
    wide, what FID/KID compare); ``logits`` the class scores it was trained with."""

    @staticmethod
    def build(size: int, features: int) -> nn.Module:
        from torch import nn

        class _Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.num_features = features
                self.body = nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(16, 32, 3, padding=1, stride=2),
                    nn.ReLU(),
                    nn.Conv2d(32, 32, 3, padding=1, stride=2),
                    nn.ReLU(),
                    nn.Flatten(),
                    nn.Linear(32 * math.ceil(size / 4) ** 2, features),
                    nn.ReLU(),
                )
                self.head = nn.Linear(features, 10)

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return self.body(images.float())

            def logits(self, images: torch.Tensor) -> torch.Tensor:
                return self.head(self.forward(images))

        return _Net()


def unet_config(recipe: Recipe) -> dict[str, Any]:
    levels = len(recipe.channels)
    down = ["DownBlock2D"] + ["AttnDownBlock2D" if recipe.attention else "DownBlock2D"] * (
        levels - 1
    )
    up = ["AttnUpBlock2D" if recipe.attention else "UpBlock2D"] * (levels - 1) + ["UpBlock2D"]
    return dict(
        sample_size=recipe.size,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=tuple(recipe.channels),
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(8, recipe.channels[0]),
        attention_head_dim=8,
    )


def cached_folder(name: str, root: Path | None = None) -> Path | None:
    """The cached folder of built-in model ``name``; None where it has not been trained yet."""
    folder = Path(root or cache_dir()) / "diffusion" / f"{name}-{RECIPES[name].key()}"
    return folder if (folder / "presso.json").is_file() else None


def builtin_folder(name: str, root: Path | None = None, *, progress: bool = False) -> Path:
    """The cached folder of built-in model ``name``, trained first if it is missing."""
    from presso.checksum import verify

    recipe = RECIPES[name]
    folder = Path(root or cache_dir()) / "diffusion" / f"{name}-{recipe.key()}"
    if cached_folder(name, root) is not None:
        verify(folder / "unet" / "diffusion_pytorch_model.safetensors")
        verify(folder / "classifier.safetensors")
        return folder
    logging.getLogger("presso").warning("training %s once into %s", name, folder)
    # presso's own cache: a copy trained meanwhile by another process may be replaced.
    with atomic_dir(folder, may_replace=lambda _: True) as tmp:
        train(recipe, tmp, progress=progress)
    return folder


def train(recipe: Recipe, out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Train the UNet and the classifier of ``recipe`` into folder ``out``; returns the
    training report (also written to ``out/presso.json``)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel
    from safetensors.torch import save

    from presso.checksum import write_sealed
    from presso.diffusion._digits import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible, and polite to a shared machine
    try:
        start = time.perf_counter()
        data = load_digits(recipe.size, seed=recipe.seed)
        torch.manual_seed(recipe.seed)
        unet = UNet2DModel(**unet_config(recipe))
        scheduler = DDPMScheduler(
            num_train_timesteps=recipe.timesteps, beta_schedule=recipe.beta_schedule
        )
        loss = _train_unet(unet, scheduler, data.train, recipe, progress)
        unet.save_pretrained(out / "unet", safe_serialization=True)
        weights = out / "unet" / "diffusion_pytorch_model.safetensors"
        write_sealed(weights, weights.read_bytes())
        scheduler.save_pretrained(out / "scheduler")
        net, accuracy = _train_classifier(data, recipe)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        write_sealed(out / "classifier.safetensors", save(state))
        report = {
            "recipe": asdict(recipe),
            "version": TRAIN_VERSION,
            "unet_params": sum(p.numel() for p in unet.parameters()),
            "final_loss": loss,
            "classifier_accuracy": accuracy,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (out / "presso.json").write_text(json.dumps(report, indent=1) + "\n")
        return report
    finally:
        torch.set_num_threads(threads)


def _train_unet(
    unet: nn.Module, scheduler: Any, images: torch.Tensor, recipe: Recipe, progress: bool
) -> float:
    """Epsilon-prediction DDPM training with a cosine learning rate and an EMA of the weights
    (which the UNet ends with); returns the mean loss of the last 100 steps."""
    import copy

    import torch

    gen = torch.Generator().manual_seed(recipe.seed)
    ema = copy.deepcopy(unet).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / recipe.steps))
    )
    steps: Any = range(recipe.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="training the UNet", unit="step", dynamic_ncols=True)
    recent: list[float] = []
    unet.train()
    for _ in steps:
        idx = torch.randint(len(images), (recipe.batch,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(recipe.timesteps, (recipe.batch,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - recipe.ema)
        recent = (recent + [float(loss.detach())])[-100:]
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    return sum(recent) / max(1, len(recent))


def _train_classifier(data: Any, recipe: Recipe) -> tuple[nn.Module, float]:
    """The FID feature classifier trained on the training digits; its held-out accuracy."""
    import torch

    torch.manual_seed(recipe.seed + 1)
    net = DigitFeatures.build(recipe.size, recipe.features)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    net.train()
    for _ in range(recipe.classifier_epochs):
        order = torch.randperm(len(data.train), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(
                net.logits(data.train[idx]), data.train_labels[idx]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        predicted = net.logits(data.heldout).argmax(-1)
    return net, float((predicted == data.heldout_labels).float().mean())


def classifier_file(size: int, root: Path | None = None) -> Path:
    """The digits classifier at ``size`` pixels (for a user's own one-channel UNet), trained
    once and cached like the built-in models."""
    import torch
    from safetensors.torch import save

    from presso.checksum import verify, write_sealed
    from presso.diffusion._digits import load_digits

    recipe = Recipe(size=size)
    key = digest({"classifier": asdict(recipe), "version": TRAIN_VERSION})
    path = Path(root or cache_dir()) / "diffusion" / f"classifier-{size}-{key}.safetensors"
    if path.is_file():
        verify(path)
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, _ = _train_classifier(load_digits(size, seed=recipe.seed), recipe)
    finally:
        torch.set_num_threads(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sealed(path, save({k: v.contiguous() for k, v in net.state_dict().items()}))
    return path
