"""scikit-learn's 8x8 digits as diffusion training data: upsampled, scaled to [-1, 1], split
into a training set and a held-out set by a seeded draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Share of the 1797 digits kept out of training (the held-out real images of FID).
HELDOUT_SHARE = 0.2


@dataclass(frozen=True)
class Digits:
    """Images ``[n, 1, size, size]`` in [-1, 1] and their labels, train and held-out."""

    train: torch.Tensor
    train_labels: torch.Tensor
    heldout: torch.Tensor
    heldout_labels: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.train.shape[-1])


def load_digits(size: int = 16, *, seed: int = 0) -> Digits:
    """The digits at ``size`` x ``size`` pixels (bilinear upsampling of the 8x8 originals)."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))
    n_held = int(round(len(images) * HELDOUT_SHARE))
    held, train = order[:n_held], order[n_held:]
    return Digits(images[train], labels[train], images[held], labels[held])
