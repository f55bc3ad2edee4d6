"""Measurement backends behind one ``measure`` interface, and the profile database.

Every backend module is importable without its heavy package (torch, onnxruntime, tvm,
triton are imported when a profiler is made); a missing one is a message naming the extra.
"""

from presso.profilers._base import (
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    available,
    levels_plan,
    make_profiler,
    profiler_class,
    register,
)
from presso.profilers._database import ProfileDatabase
from presso.profilers._fingerprint import fingerprint

__all__ = [
    "LinearOp",
    "Measurement",
    "ProfileDatabase",
    "Profiler",
    "Workload",
    "available",
    "fingerprint",
    "levels_plan",
    "make_profiler",
    "profiler_class",
    "register",
]

from presso.profilers import (
    _onnxruntime,  # noqa: F401,E402  (registers the backend)
    _torch,  # noqa: F401,E402  (registers the backend)
    _triton,  # noqa: F401,E402  (registers the backend)
    _tvm,  # noqa: F401,E402  (registers the backend)
)
