"""Sample grids of a diffusion run's configurations, for the dashboard's candidate view.

A grid is ``IMAGES`` images sampled from fixed noise (seed ``SEED``) with the configuration's
time steps, solver and skipped blocks, as the search sampled them: every configuration of a run is shown on
the same draws, so grids compare image by image. The model is loaded once per run, from the
cache only (a dashboard never trains a model), and the last ``KEPT`` grids are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from presso.errors import PressoError

#: Images per grid (four rows of eight), and the seed of their noise.
IMAGES, SEED = 32, 0
#: Grids kept in memory (PNGs of a few kilobytes each).
KEPT = 64


class NoSamples(PressoError):
    """A run or configuration the dashboard cannot sample (not a diffusion run, or its model
    not on this machine)."""


class SampleGrids:
    """PNG sample grids of diffusion runs' configurations, drawn on request, one at a time."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._pngs: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()  # one sampling at a time: the dashboard's torch threads

    def png(self, run: tuple, attrs: dict[str, Any], levels: list[float]) -> bytes:
        """The grid of the configuration with level values ``levels`` (one per dimension, as
        the run stores them) of run ``run`` (its stored attributes ``attrs``)."""
        from presso.summary import RunSummary

        summary = RunSummary.from_attrs("", attrs)
        if "steps" not in summary.kinds:
            raise NoSamples("this run is not a diffusion run: it has no sample grids")
        if len(levels) != len(summary.targets):
            raise ValueError(
                f"levels: {len(levels)} values, but the run has {len(summary.targets)} dimensions"
            )
        key = (run, tuple(levels))
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
            png = self._draw(summary, levels)
            self._pngs[key] = png
            while len(self._pngs) > KEPT:
                self._pngs.popitem(last=False)
            return png

    def _draw(self, summary: Any, levels: list[float]) -> bytes:
        from presso.diffusion._evaluator import schedule_of, skips_of, solver_of
        from presso.diffusion._grid import grid_png_bytes
        from presso.diffusion._sample import sample, seeded_noise, trailing_grid
        from presso.plan import Plan

        exp = summary.experiment
        model = self._model(exp["model"])
        grid = trailing_grid(model.train_steps, exp["schedule"]["candidates"])
        plan = Plan.from_levels(summary.targets, summary.kinds, levels)
        timesteps = schedule_of(plan, grid)
        if not timesteps:
            raise ValueError("levels: this configuration samples no time step")
        noise = seeded_noise(SEED, IMAGES, model.shape)
        images = sample(
            model.unet,
            model.scheduler_config,
            timesteps,
            noise,
            solver=solver_of(plan),
            skips=skips_of(plan),
        )
        return grid_png_bytes(images)

    def _model(self, spec: str) -> Any:
        """The run's diffusion model, loaded once; never trained here."""
        if spec not in self._models:
            self._models[spec] = _load_cached(spec)
        return self._models[spec]


def _load_cached(spec: str) -> Any:
    from presso.diffusion import BUILTIN_DIFFUSION, is_diffusion_model, require
    from presso.diffusion._model import DiffusionModel

    require("sample grids")
    if spec in BUILTIN_DIFFUSION:
        from presso.diffusion._train import cached_folder

        folder = cached_folder(spec)
        if folder is None:
            raise NoSamples(
                f"model {spec} is not trained on this machine; `presso train-diffusion {spec}` (or a "
                "search with it) trains it once, then the grids appear here"
            )
    elif is_diffusion_model(spec):
        folder = Path(spec).expanduser()
    else:
        raise NoSamples(f"model {spec}: no diffusers folder there (moved or deleted?)")
    # The classifier is not needed to sample: only FID reads it.
    return DiffusionModel(folder, name=spec, classifier=folder / "classifier.safetensors")
