"""Search spaces: dimensions, constraints, encode/decode, and the built-in spaces."""

from __future__ import annotations

# The kinds register as they are imported: in the order their sections and budgets appear in
# an experiment file.
from presso.spaces._bits import DENSE_BITS, CompressConfig, MeanBits, bits_dims, bits_space

# isort: split
from presso.spaces._sparsity import MeanSparsity, SparsityConfig, sparsity_dims, sparsity_space

# isort: split
from presso.spaces._depth import DROPPED, KEPT, MinDropped, depth_dims, depth_space

# isort: split
from presso.spaces._steps import MaxSteps, ScheduleConfig, solver_dim, solver_of, steps_dims

# isort: split
from presso.spaces._skips import MaxBlocks, skips_dims, skips_of

# isort: split
from presso.spaces._structured import MaxKept, StructuredConfig, structured_dims

# isort: split
from presso.spaces._base import Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._kinds import KINDS, Kind, kind, unit_kinds
from presso.spaces._latency import MaxLatency
from presso.spaces._size import MaxParams, MaxSize

#: The kinds' budget metrics (``mean_bits``, ``mean_sparsity``, ``dropped``, ``steps``,
#: ``blocks``).
KIND_BUDGETS = tuple(k.budget for k in KINDS.values())
#: Every budget metric a candidate may have: the kinds', then the whole model's.
BUDGET_METRICS = (*KIND_BUDGETS, MaxParams.metric, MaxSize.metric, MaxLatency.metric)

__all__ = [
    "BUDGET_METRICS",
    "DENSE_BITS",
    "DROPPED",
    "KEPT",
    "KINDS",
    "KIND_BUDGETS",
    "Kind",
    "Budget",
    "CompressConfig",
    "Config",
    "Constraint",
    "Dimension",
    "MaxLatency",
    "MaxBlocks",
    "MaxParams",
    "MaxSize",
    "MeanBits",
    "MeanSparsity",
    "MinDropped",
    "MaxSteps",
    "MaxKept",
    "ScheduleConfig",
    "SearchSpace",
    "SparsityConfig",
    "StructuredConfig",
    "bits_dims",
    "bits_space",
    "depth_dims",
    "depth_space",
    "kind",
    "sparsity_dims",
    "sparsity_space",
    "solver_dim",
    "solver_of",
    "skips_dims",
    "skips_of",
    "steps_dims",
    "structured_dims",
    "unit_kinds",
]
