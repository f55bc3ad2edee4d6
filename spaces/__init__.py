"""Search spaces: dimensions, constraints, encode/decode, and the built-in spaces."""

from __future__ import annotations

from presso.spaces._base import KINDS, Budget, Config, Constraint, Dimension, SearchSpace
from presso.spaces._bits import MeanBits, bits_dims, bits_space
from presso.spaces._depth import DROPPED, KEPT, MinDropped, depth_dims, depth_space
from presso.spaces._latency import MaxLatency
from presso.spaces._size import MaxParams, MaxSize
from presso.spaces._sparsity import MeanSparsity, sparsity_dims, sparsity_space

__all__ = [
    "DROPPED",
    "KEPT",
    "KINDS",
    "Budget",
    "Config",
    "Constraint",
    "Dimension",
    "MaxLatency",
    "MaxParams",
    "MaxSize",
    "MeanBits",
    "MeanSparsity",
    "MinDropped",
    "SearchSpace",
    "bits_dims",
    "bits_space",
    "depth_dims",
    "depth_space",
    "sparsity_dims",
    "sparsity_space",
]
