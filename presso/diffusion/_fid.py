"""FID and KID between generated and real images, on the features of presso's digits
classifier, through torchmetrics (its metrics take a custom feature extractor)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

    def __call__(self, fake: torch.Tensor) -> dict[str, float]:
        """``{"fid": ..., "kid": ...}`` of images ``fake`` (in [-1, 1], like the real ones)."""
        import torch
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
                    feature=self.features, subsets=KID_SUBSETS, subset_size=size
                )
            kid.update(self.real, real=True)
            kid.update(fake, real=False)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                kid_mean, _ = kid.compute()
        return {"fid": max(fid, 0.0), "kid": float(kid_mean)}
