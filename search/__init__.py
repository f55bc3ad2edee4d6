"""Strategies behind one ask/tell interface, and the runner that drives them."""

from __future__ import annotations

from presso.search._base import (
    Context,
    Request,
    Result,
    Strategy,
    available,
    make_strategy,
    register,
    strategy_class,
)
from presso.search._evopress import EvoPress, LevelSwitch
from presso.search._heuristic import ErrorGreedy
from presso.search._random import RandomSearch
from presso.search._runner import LocalPool, Pool, RayPool, drive
from presso.search._uniform import Uniform

__all__ = [
    "Context",
    "ErrorGreedy",
    "EvoPress",
    "LevelSwitch",
    "RandomSearch",
    "Request",
    "Result",
    "Strategy",
    "LocalPool",
    "Pool",
    "RayPool",
    "Uniform",
    "available",
    "make_strategy",
    "drive",
    "register",
    "strategy_class",
]
