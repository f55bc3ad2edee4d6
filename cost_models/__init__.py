"""Latency, memory and size models behind one fit / predict / save / load interface.

Per-op latency: :class:`LookupTable` (measured timing table) and :class:`BoostedTrees`
(learned, for what was not measured); per candidate: :class:`CandidateLatency`; bytes:
:func:`disk_bytes`, :func:`memory_bytes`. The campaigns that fill the profile database and
fit and validate these models (``presso profile``): :func:`profile_model`,
:func:`latency_model`, :func:`validate`.
"""

from presso.cost_models._base import CostModel, available, make_cost_model, parse_op, register
from presso.cost_models._campaign import (
    ProfileReport,
    Validation,
    latency_model,
    machine_id,
    profile_model,
    random_assignment,
    unit_ops,
    validate,
)
from presso.cost_models._candidate import CandidateLatency, Structure, UnitSlot
from presso.cost_models._learned import BoostedTrees
from presso.cost_models._lookup import LookupTable
from presso.cost_models._size import disk_bytes, memory_bytes

__all__ = [
    "BoostedTrees",
    "CandidateLatency",
    "CostModel",
    "LookupTable",
    "ProfileReport",
    "Validation",
    "Structure",
    "UnitSlot",
    "available",
    "disk_bytes",
    "latency_model",
    "machine_id",
    "make_cost_model",
    "memory_bytes",
    "parse_op",
    "profile_model",
    "random_assignment",
    "register",
    "unit_ops",
    "validate",
]
