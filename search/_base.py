"""The ask/tell interface every strategy implements, and the strategy registry.

The runner owns the loop: ``requests = strategy.ask()``, evaluate them (anywhere),
``strategy.tell(requests, results)``. A strategy is a deterministic function of
(space, seed, options, the results it was told): replaying the stored results of an
interrupted run rebuilds its state exactly, which is how ``--resume`` works.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from presso.spaces import Config, SearchSpace


@dataclass(frozen=True)
class Request:
    """One evaluation to run.

    config: level index per dimension of the space.
    tokens: how many calibration tokens to score on (``None``: the whole calibration pool).
    sample_seed: which calibration sequences (a seeded draw from the pool), so that
        multi-stage selection can score a generation on fresh data.
    tag: what the strategy asked it for (``offspring``, ``stage-2``, ``baseline``...).
    """

    config: Config
    tokens: int | None = None
    sample_seed: int = 0
    tag: str = ""


@dataclass
class Result:
    """What evaluating a request gave. A failure is data: ``fitness`` None and ``error`` set.

    fitness: the objective to minimise (KL divergence to the dense model, in nats/token).
    metrics: anything else measured (e.g. ``kl``, ``tokens``).
    seconds: wall time of the evaluation.
    """

    fitness: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.fitness is not None and math.isfinite(self.fitness)


@dataclass(frozen=True)
class Context:
    """Facts about the problem that some strategies use (heuristics and baselines).

    unit_errors: per dimension, per level index, the unit's relative output error when
        compressed at that level alone (from the level database); used by error-greedy.
    dim_blocks: per dimension, the index of the transformer block it belongs to.
    block_importance: per block, ShortGPT's block influence, 1 - mean cos(input, output) of
        the block's hidden states on calibration tokens (low = the block changes little).
    outlier_ratios: per block, OWL's layerwise outlier distribution: the share of the block's
        weights whose Wanda score |W_ij|·||X_j|| exceeds M times the mean score (M = 5).
    sensitivity: per dimension, per level index, how much the fitness rises when that
        dimension alone is at that level and every other at its top level (8 bits, dense,
        kept), measured by the evaluator (``presso.sensitivity``); the exact solver ``dp``
        minimises its sum, and EvoPress starts from that solution and screens with it.
    """

    unit_errors: tuple[tuple[float, ...], ...] | None = None
    dim_blocks: tuple[int, ...] | None = None
    block_importance: tuple[float, ...] | None = None
    outlier_ratios: tuple[float, ...] | None = None
    sensitivity: tuple[tuple[float, ...], ...] | None = None


class Strategy(ABC):
    """A search strategy behind ask/tell. Subclasses set ``name`` and register."""

    name: ClassVar[str]
    #: The Context fields the strategy needs (the run measures only what some strategy needs).
    requires: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        """The Context fields a strategy built with ``options`` needs."""
        return cls.requires

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        self.space = space
        self.seed = seed
        self.context = context or Context()

    @abstractmethod
    def ask(self) -> list[Request]:
        """The next batch of requests to evaluate; empty once the strategy is finished."""

    @abstractmethod
    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        """The results of the last ``ask()``'s requests, in the same order."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once the strategy has nothing more to ask."""

    @abstractmethod
    def best(self) -> Config | None:
        """The best configuration found so far (None before any successful result)."""

    @property
    def planned(self) -> int | None:
        """Evaluations the strategy plans in all, for progress bars and their ETA (at most
        that many where it may stop early); None where it is not known in advance."""
        return None


def fitness_of(result: Result) -> float:
    """The fitness to rank ``result`` by: a failed evaluation ranks worst (``inf``)."""
    return float(result.fitness) if result.ok else math.inf  # type: ignore[arg-type]


def check_told(
    pending: Sequence[Request], requests: Sequence[Request], results: Sequence[Result]
) -> None:
    """Refuse a tell that does not answer the last ask: a replay that diverged from the
    original run would otherwise rebuild a different state silently."""
    if len(requests) != len(results):
        raise ValueError(f"tell() got {len(requests)} requests but {len(results)} results")
    if list(requests) != list(pending):
        raise ValueError("tell() got requests that are not the ones the last ask() returned")


class OneShot(Strategy):
    """A strategy that proposes one configuration, scored on the whole calibration pool
    (the uniform and heuristic baselines)."""

    def __init__(
        self, space: SearchSpace, config: Config, *, seed: int = 0, context: Context | None = None
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self._request = Request(config, tokens=None, sample_seed=seed, tag=self.name)
        self._told = False
        self._ok = False

    def ask(self) -> list[Request]:
        return [] if self._told else [self._request]

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        check_told(self.ask(), requests, results)
        if requests:
            self._told = True
            self._ok = results[0].ok

    @property
    def finished(self) -> bool:
        return self._told

    def best(self) -> Config | None:
        return self._request.config if self._ok else None

    @property
    def planned(self) -> int:
        return 1


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; available: {', '.join(available())}"
        ) from None


def make_strategy(
    name: str, space: SearchSpace, *, seed: int, context: Context | None = None, **options: Any
) -> Strategy:
    """Build a registered strategy; ``options`` are its keyword-only constructor arguments."""
    return strategy_class(name)(space, seed=seed, context=context, **options)
