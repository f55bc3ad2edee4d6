"""Diffusion models: the built-in digits DDPM, sampling with a time-step schedule, FID/KID.

A diffusion model is a diffusers ``UNet2DModel`` with its noise scheduler: a folder in
diffusers' pipeline layout (``unet/`` and ``scheduler/``), or a built-in model that presso
trains itself on scikit-learn's 8x8 digits (no pretrained diffusion weights ship offline).
Its candidates are sampling schedules (see presso.spaces._steps): which of the model's
training time steps DDIM visits. Fitness is FID (and KID) on the features of a digits
classifier presso trains on the same data (no Inception weights can be downloaded here).

This module is light: the heavy parts (diffusers, torchmetrics, scikit-learn) are imported
by the modules that use them; :func:`require` names the extra that installs them.
"""

from __future__ import annotations

from pathlib import Path

#: Built-in diffusion models: name -> what it is (trained by presso on first use, then cached).
BUILTIN_DIFFUSION = {
    "digits-ddpm": "a UNet2DModel DDPM trained by presso on scikit-learn's digits (16x16)",
    "tiny-ddpm": "a tiny UNet2DModel DDPM trained for a few steps on the digits, for tests",
}

#: The model kind (``ModelHandle.kind``) of a diffusion model.
KIND = "diffusion"


def is_diffusion_model(spec: str) -> bool:
    """Whether ``spec`` names a built-in diffusion model or a diffusers folder (``unet/`` and
    ``scheduler/`` in it): a file check, no import."""
    if spec in BUILTIN_DIFFUSION:
        return True
    path = Path(spec).expanduser()
    try:
        return (path / "unet" / "config.json").is_file() and (path / "scheduler").is_dir()
    except (OSError, ValueError):
        return False


def require(purpose: str = "a diffusion model") -> None:
    """Raise MissingExtraError naming the ``diffusion`` extra when a package it needs is absent;
    then load diffusers' models quietly (see :func:`load_diffusers`)."""
    import importlib.util

    from presso.errors import MissingExtraError

    for package in ("diffusers", "torchmetrics", "sklearn"):
        if importlib.util.find_spec(package) is None:
            name = package.replace("sklearn", "scikit-learn")
            raise MissingExtraError(name, "diffusion", purpose)
    load_diffusers()


#: Loggers that speak when diffusers' models first import torchao (see load_diffusers).
_TORCHAO_NOISE = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao")


def load_diffusers() -> None:
    """Import diffusers' model classes, silencing what torchao logs as they first import it.

    Where torchao is installed (presso's export extra brings it), ``from diffusers import
    UNet2DModel`` imports it, and three things are logged, none of which concerns presso:
    torchao's CUDA kernels (``_C*.so``) do not load on a CPU build of torch; torch says
    torchao's enums need no pytree registration any more; and diffusers cannot find torchao's
    old tensor classes, which it registers only to unpickle torchao-quantized checkpoints
    (presso loads safetensors, never pickle). Other warnings, and everything after the
    import, are left alone.
    """
    import logging
    import sys

    if "diffusers.models.unets" in sys.modules:
        return
    loggers = [logging.getLogger(name) for name in _TORCHAO_NOISE]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        from diffusers import UNet2DModel  # noqa: F401
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


__all__ = ["BUILTIN_DIFFUSION", "KIND", "is_diffusion_model", "load_diffusers", "require"]
