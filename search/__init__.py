"""Strategies behind one ask/tell interface, and the runner that drives them."""

from __future__ import annotations

from presso.search._autodiffusion import DDIM, AutoDiffusion
from presso.search._base import (
    Context,
    OptionError,
    Request,
    Result,
    Strategy,
    available,
    make_strategy,
    register,
    strategy_class,
)
from presso.search._bayes import GP, TPE, Bayesian
from presso.search._dp import DP, UniformFill, fill_uniform, knapsack, solve
from presso.search._evopress import EvoPress, LevelSwitch
from presso.search._heuristic import ErrorGreedy
from presso.search._nsga2 import NSGA2
from presso.search._owl import OWL
from presso.search._random import RandomSearch
from presso.search._runner import LocalPool, Pool, RayPool, drive
from presso.search._shortgpt import ShortGPT
from presso.search._surrogate import AdditiveSurrogate
from presso.search._uniform import Uniform

__all__ = [
    "DDIM",
    "DP",
    "AutoDiffusion",
    "AdditiveSurrogate",
    "UniformFill",
    "fill_uniform",
    "knapsack",
    "solve",
    "GP",
    "NSGA2",
    "TPE",
    "Bayesian",
    "Context",
    "ErrorGreedy",
    "EvoPress",
    "LevelSwitch",
    "OptionError",
    "OWL",
    "RandomSearch",
    "Request",
    "Result",
    "Strategy",
    "LocalPool",
    "Pool",
    "RayPool",
    "ShortGPT",
    "Uniform",
    "available",
    "make_strategy",
    "drive",
    "register",
    "strategy_class",
]
