"""A diffusion model as presso handles it: a diffusers UNet2DModel, its scheduler's config,
and the feature classifier FID is measured with."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from presso.diffusion import BUILTIN_DIFFUSION, KIND, require
from presso.errors import PressoError

#: The one "block" a diffusion model shows the search space: its sampling schedule.
SCHEDULE = "scheduler"


class DiffusionModel:
    """A loaded diffusion model (eval mode) and where it came from.

    kind: ``"diffusion"``; units: none (its knobs are the sampling schedule's time steps);
    identity: a digest of the folder's weights and configs.
    """

    kind = KIND
    tokenizer = None

    def __init__(self, folder: Path, *, name: str, classifier: Path) -> None:
        from diffusers import UNet2DModel

        from presso.checksum import verify

        self.folder, self.name = Path(folder), name
        weights = self.folder / "unet" / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            verify(weights)
        self.unet = UNet2DModel.from_pretrained(self.folder / "unet").eval()
        self.model = self.unet
        self.scheduler_config = _read_json(self.folder / "scheduler" / "scheduler_config.json")
        self.units: list[Any] = []
        self.classifier_path = classifier
        self.identity = _identity(self.folder, classifier)

    @property
    def size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.unet.config.in_channels), self.size, self.size)

    @property
    def train_steps(self) -> int:
        return int(self.scheduler_config["num_train_timesteps"])

    def block_names(self) -> list[str]:
        return [SCHEDULE]

    def unet_blocks(self) -> list[str]:
        """The UNet's blocks a sampling step may skip, in the order it runs them
        (``down_blocks.0`` ... ``mid_block`` ... ``up_blocks.N``)."""
        from presso.diffusion._pipeline import unet_blocks

        return list(unet_blocks(self.unet))

    def restore_dense(self) -> None:
        return None

    @cached_property
    def scheduler(self) -> Any:
        from presso.diffusion._sample import ddim_scheduler

        return ddim_scheduler(self.scheduler_config)

    @cached_property
    def features(self) -> Any:
        """The digits classifier whose penultimate features FID and KID compare."""
        from safetensors.torch import load_file

        from presso.checksum import verify
        from presso.diffusion._train import DigitFeatures

        verify(self.classifier_path)
        state = load_file(self.classifier_path)
        width = state["head.weight"].shape[1]
        net = DigitFeatures.build(self.size, int(width))
        net.load_state_dict(state)
        return net.eval()


def load_diffusion(spec: str, *, cache_root: Path | None = None) -> DiffusionModel:
    """A built-in diffusion model (trained and cached on first use) or a diffusers folder
    (``unet/`` and ``scheduler/``; a ``classifier.safetensors`` beside them, or presso's digits
    classifier at the UNet's size)."""
    require(f"model {spec}")
    from presso.diffusion._train import builtin_folder, classifier_file

    if spec in BUILTIN_DIFFUSION:
        folder = builtin_folder(spec, cache_root, progress=True)
        return DiffusionModel(folder, name=spec, classifier=folder / "classifier.safetensors")
    folder = Path(spec).expanduser()
    config = _read_json(folder / "unet" / "config.json")
    if config.get("in_channels") != 1 or not isinstance(config.get("sample_size"), int):
        raise PressoError(
            f"model: {folder}: FID is measured on presso's digits classifier, which takes "
            "square one-channel images; this UNet's in_channels/sample_size are "
            f"{config.get('in_channels')}/{config.get('sample_size')}"
        )
    own = folder / "classifier.safetensors"
    classifier = own if own.is_file() else classifier_file(config["sample_size"], cache_root)
    return DiffusionModel(folder, name=str(folder), classifier=classifier)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PressoError(f"model: cannot read {path}: {err}") from None


def _identity(folder: Path, classifier: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for path in sorted(folder.glob("unet/*")) + sorted(folder.glob("scheduler/*")) + [classifier]:
        if path.is_file():
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
