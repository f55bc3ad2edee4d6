"""The hardware and software a measurement was taken on, as a stable fingerprint.

Latencies are only comparable on the same CPU (model, vector extensions, cores available),
the same GPU and driver, and the same library versions; measurements are stored under the
digest of all of these so that a search on another machine never reuses them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from presso.paths import digest

#: CPU flags that change which kernels run (vector widths, int8 dot products, matrix units).
_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def cpu_facts() -> dict[str, Any]:
    """CPU model, the kernel-relevant flags, and the cores this process may use."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in (
                platform.processor(),
                platform.machine(),
            ):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "flags": sorted(f for f in _FLAGS if f in flags),
        "cores": cores,
    }


def gpu_facts() -> dict[str, Any]:
    """The CUDA GPU's name, compute capability and driver (empty without one)."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "driver": _driver_version(),
    }


def _driver_version() -> str:
    path = Path("/proc/driver/nvidia/version")
    if path.exists():
        first = path.read_text(errors="replace").splitlines()[0]
        for word in first.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    return "?"


def fingerprint(device: str, versions: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """``(id, facts)`` for measurements on ``device`` ("cpu" or "cuda") with these library
    ``versions``; the id is a digest of the facts."""
    facts: dict[str, Any] = {
        "device": device,
        **cpu_facts(),
        "versions": dict(sorted(versions.items())),
    }
    if device.startswith("cuda"):
        facts.update(gpu_facts())
    return digest(facts), facts
