"""Search spaces: dimensions, constraints, encode/decode, and the built-in spaces."""

from __future__ import annotations

from presso.spaces._base import Config, Constraint, Dimension, SearchSpace
from presso.spaces._bits import MeanBits, bits_space

__all__ = ["Config", "Constraint", "Dimension", "MeanBits", "SearchSpace", "bits_space"]
