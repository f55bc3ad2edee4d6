"""Score sampling schedules of a diffusion model: FID (and KID) of the images DDIM makes
with a candidate's time steps, against real images.

A request's ``tokens`` is its sample size in images (EvoPress's staged selection: few images
first, more for the survivors); its ``sample_seed`` draws the starting noise, so every
candidate of a stage is scored on the same draws. Search scores compare with the training
digits; held-out scores use other noise and the held-out digits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from presso.evaluation import Request, Result

if TYPE_CHECKING:
    import torch

    from presso.diffusion._model import DiffusionModel
    from presso.plan import Plan

#: Where the held-out noise is drawn from (apart from every search draw's seed).
HELDOUT_SEED = 0x5EED_0F_4E1D


def schedule_of(plan: Plan, grid: Sequence[int]) -> list[int]:
    """The time steps ``plan`` keeps of ``grid`` (descending): a plan drops the others as
    ``timestep.T`` targets (see presso.spaces._steps)."""
    dropped = set(plan.dropped)
    return [t for t in grid if f"timestep.{t}" not in dropped]


def solver_of(plan: Plan) -> str:
    """The solver ``plan`` samples its schedule with (``ddim`` or ``dpm-solver``)."""
    from presso.spaces._steps import solver_of

    return solver_of(plan.dropped)


def skips_of(plan: Plan) -> dict[int, list[str]]:
    """Per step of ``plan``'s schedule, the UNet blocks it skips (see presso.spaces._skips)."""
    from presso.spaces._skips import skips_of

    return skips_of(plan.dropped)


class DiffusionEvaluator:
    """Scores configurations of ``space`` (a steps space) for one diffusion model.

    real: the real images search requests compare with; heldout_real: held-out ones.
    pool: images a request with ``tokens=None`` generates (the largest sample);
    heldout_images: images generated for a held-out score; seed: the data seed.
    """

    fitness_metric = "fid"
    heldout_metrics = ("fid", "kid")

    def __init__(
        self,
        model: DiffusionModel,
        space: Any,
        grid: Sequence[int],
        real: torch.Tensor,
        heldout_real: torch.Tensor,
        *,
        pool: int,
        heldout_images: int,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        from presso.diffusion._fid import FIDScorer

        self.model, self.space, self.grid = model, space, list(grid)
        self.pool, self.heldout_images, self.seed = pool, heldout_images, seed
        self.batch_size = batch_size
        self._search = FIDScorer(model.features, real)
        self._heldout = FIDScorer(model.features, heldout_real)

    def schedule(self, config: Any) -> list[int]:
        return schedule_of(self.space.plan(config), self.grid)

    def solver(self, config: Any) -> str:
        return solver_of(self.space.plan(config))

    def skips(self, config: Any) -> dict[int, list[str]]:
        return skips_of(self.space.plan(config))

    def images(
        self,
        timesteps: Sequence[int],
        n: int,
        seed: int,
        solver: str = "ddim",
        skips: dict[int, list[str]] | None = None,
    ) -> torch.Tensor:
        """``n`` images sampled by ``solver`` over ``timesteps`` from the noise of ``seed``,
        with ``skips`` (per step, the UNet blocks skipped)."""
        from presso.diffusion._sample import sample, seeded_noise

        noise = seeded_noise(seed, n, self.model.shape)
        m = self.model
        return sample(
            m.unet,
            m.scheduler_config,
            timesteps,
            noise,
            solver=solver,
            skips=skips,
            batch_size=self.batch_size,
        )

    def sampling(self, config: Any) -> tuple[list[int], str, dict[int, list[str]]]:
        """How ``config`` samples: its time steps, solver and skipped blocks per step."""
        plan = self.space.plan(config)
        return schedule_of(plan, self.grid), solver_of(plan), skips_of(plan)

    def evaluate(self, request: Request) -> Result:
        start = time.perf_counter()
        try:
            timesteps, solver, skips = self.sampling(request.config)
            n = self.pool if request.tokens is None else min(request.tokens, self.pool)
            scores = self._search(self.images(timesteps, n, request.sample_seed, solver, skips))
        except Exception as err:  # failure is data: the run goes on
            return Result(None, error=f"{type(err).__name__}: {err}")
        # What the constraints measure (steps, latency_ms): objectives for Pareto fronts.
        metrics = {**scores, **self.space.metrics(request.config), "images": float(n)}
        return Result(scores["fid"], metrics, seconds=time.perf_counter() - start)

    def heldout(self, config: Any) -> dict[str, float]:
        return self.heldout_schedule(*self.sampling(config))

    def heldout_schedule(
        self,
        timesteps: Sequence[int],
        solver: str = "ddim",
        skips: dict[int, list[str]] | None = None,
    ) -> dict[str, float]:
        """Held-out FID and KID of a schedule (images from the held-out noise)."""
        images = self.images(timesteps, self.heldout_images, self.heldout_seed, solver, skips)
        return self.heldout_score(images)

    @property
    def heldout_seed(self) -> int:
        """The seed of the held-out noise (``heldout_images`` images of the model's shape)."""
        return self.seed + HELDOUT_SEED

    def heldout_score(self, images: torch.Tensor) -> dict[str, float]:
        """FID and KID of ``images`` (in [-1, 1]) against the held-out real images: how an
        export's own samples are checked against the score presso stored."""
        return self._heldout(images)

    def heldout_dense(self) -> dict[str, float]:
        """The model with every candidate time step (the slowest schedule the space has)."""
        return self.heldout_schedule(self.grid)
