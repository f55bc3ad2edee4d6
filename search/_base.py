"""The ask/tell interface every strategy implements, and the strategy registry.

The runner owns the loop: ``requests = strategy.ask()``, evaluate them (anywhere),
``strategy.tell(requests, results)``. A strategy is a deterministic function of
(space, seed, options, the results it was told): replaying the stored results of an
interrupted run rebuilds its state exactly, which is how ``--resume`` works.
"""

from __future__ import annotations

import inspect
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from presso.errors import shown
from presso.evaluation import Request, Result
from presso.registry import Registry
from presso.spaces import Config, SearchSpace


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


class OptionError(ValueError):
    """A strategy option the strategy cannot run with.

    loc: where: the option's name, then indices into its value (``("stages", 0, 1)``).
    message: what is wrong with it.
    """

    def __init__(self, loc: str | tuple, message: str) -> None:
        self.loc = (loc,) if isinstance(loc, str) else tuple(loc)
        self.message = message
        super().__init__(f"{'.'.join(map(str, self.loc))}: {message}")


def require(ok: bool, option: str | tuple, message: str) -> None:
    """Raise OptionError(option, message) unless ``ok``: a strategy's value checks."""
    if not ok:
        raise OptionError(option, message)


class Strategy(ABC):
    """A search strategy behind ask/tell. Subclasses set ``name`` and register."""

    name: ClassVar[str]
    #: The Context fields the strategy needs (the run measures only what some strategy needs).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: The knob kinds it decides (a space without them is refused); None: any kind.
    kinds: ClassVar[tuple[str, ...] | None] = None
    #: The range of numeric options, ``(least, most)``, either None for no bound; an option
    #: that may be None (null) is checked only when given a number.
    bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {}

    @classmethod
    def needs(cls, options: dict[str, Any]) -> frozenset[str]:
        """The Context fields a strategy built with ``options`` needs."""
        return cls.requires

    @classmethod
    def option_types(cls) -> dict[str, tuple[Any, Any]]:
        """The strategy's options, its constructor's typed keyword-only parameters (``seed``
        and ``context`` aside): name -> (type, default)."""
        hints = typing.get_type_hints(cls.__init__)
        params = inspect.signature(cls.__init__).parameters.values()
        return {
            p.name: (hints[p.name], p.default)
            for p in params
            if p.kind == p.KEYWORD_ONLY and p.name not in ("seed", "context")
        }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked against the option types and then :meth:`check_values`, as the
        constructor will take them (``"3"`` -> 3, YAML lists -> tuples where typed so); raises
        OptionError naming the first bad one. The experiment file's validation calls it, so
        a mistake is reported before any model is loaded."""
        from pydantic import ConfigDict, ValidationError, create_model

        types = cls.option_types()
        for key in options:
            require(
                key in types,
                key,
                f"unknown option of strategy {cls.name!r}; allowed: {', '.join(types) or 'none'}",
            )
        config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
        model = create_model(f"{cls.__name__}Options", __config__=config, **types)
        try:
            checked = dict(model.model_validate(dict(options)))
        except ValidationError as err:
            first = err.errors()[0]
            what = "required" if first["type"] == "missing" else first["msg"]
            kind = types[first["loc"][0]][0]
            expected = kind.__name__ if isinstance(kind, type) else str(kind)
            expected = expected.replace("collections.abc.", "")
            raise OptionError(
                first["loc"], f"{what} (got {shown(first['input'])}); give {expected}"
            ) from None
        cls.check_values(checked)
        return {key: checked[key] for key in options}

    @classmethod
    def check_values(cls, options: dict[str, Any]) -> None:
        """Refuse option values the strategy cannot run with (OptionError naming the option):
        here those out of :attr:`bounds`; ``options`` holds every option, defaults filled in.
        Constructors call it too."""
        for name, (least, most) in cls.bounds.items():
            value = options[name]
            if value is None:
                continue
            if most is None:
                require(least is None or value >= least, name, f"must be >= {least}, got {value}")
            else:
                require(
                    (least is None or value >= least) and value <= most,
                    name,
                    f"must be in [{least}, {most}], got {value}",
                )

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


#: Strategies by name.
STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a strategy to the registry under ``cls.name``."""
    return STRATEGIES.register(cls)


def available() -> list[str]:
    return STRATEGIES.available()


def strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def make_strategy(
    name: str, space: SearchSpace, *, seed: int, context: Context | None = None, **options: Any
) -> Strategy:
    """Build a registered strategy; ``options`` are its keyword-only constructor arguments."""
    return strategy_class(name)(space, seed=seed, context=context, **options)
