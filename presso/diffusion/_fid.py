"""FID and KID between generated and real images, on the features of presso's digits
classifier, through torchmetrics (its metrics take a custom feature extractor).

KID reads the features standardised by the real images' per-feature mean and deviation: its
polynomial kernel ``(x·y / d + 1)³`` assumes features of about unit scale (Inception's are),
and on the classifier's raw features, tens in size, it came out in the tens of thousands.
FID, a distance between Gaussians, reads the raw features (its values stay comparable with
earlier runs)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

#: KID's subsets and most images per subset (fewer when a sample is smaller).
KID_SUBSETS = 20
KID_SUBSET_SIZE = 100


class FIDScorer:
    """Scores generated images against one fixed set of real images (their features are
    computed once). KID's subsets are drawn with a fixed seed: a score is a function of the
    images alone."""

    def __init__(self, features: nn.Module, real: torch.Tensor) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.features = features.eval()
        self.real = real
        self._fid = FrechetInceptionDistance(
            feature=self.features, reset_real_features=False, normalize=False
        )
        self._fid.update(real, real=True)
        self._standardised = Standardised(self.features, real)

    def __call__(self, fake: torch.Tensor) -> dict[str, float]:
        """``{"fid": ..., "kid": ...}`` of images ``fake`` (in [-1, 1], like the real ones)."""
        from torchmetrics.image.kid import KernelInceptionDistance

        fake = fake.clamp(-1, 1)
        with torch.no_grad():
            self._fid.reset()
            self._fid.update(fake, real=False)
            fid = float(self._fid.compute())
            size = min(KID_SUBSET_SIZE, len(fake), len(self.real))
            with warnings.catch_warnings():  # it keeps every feature: a few thousand here
                warnings.simplefilter("ignore", UserWarning)
                kid = KernelInceptionDistance(
                    feature=self._standardised, subsets=KID_SUBSETS, subset_size=size
                )
            kid.update(self.real, real=True)
            kid.update(fake, real=False)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                kid_mean, _ = kid.compute()
        return {"fid": max(fid, 0.0), "kid": float(kid_mean)}


class Standardised(nn.Module):
    """A feature extractor's features standardised per feature: ``(f - mean) / std``, with the
    mean and deviation of its features over the real images."""

    def __init__(self, features: nn.Module, real: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.num_features = features.num_features
        with torch.no_grad():
            f = features(real).double()
        self.register_buffer("mean", f.mean(0).float())
        self.register_buffer("std", f.std(0).clamp_min(1e-6).float())
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.features(images) - self.mean) / self.std
