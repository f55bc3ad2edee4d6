"""Bayesian optimisation with Optuna's samplers (TPE, GP) behind ask/tell.

The search space is encoded as one level index per dimension: ``IntDistribution(0, levels -
1)`` for TPE, a ``FloatDistribution`` over the same range, rounded, for the GP (see ``GP``).
Optuna samples the box, but only feasible configurations may be evaluated, so
every sample is a *proposal*: it is repaired to feasibility (random levels lowered until the
constraints hold; for a single objective the budget is then filled, since spending it never
hurts accuracy), the proposal trial is closed as FAIL (samplers ignore failed trials), and
the repaired configuration enters the study as a trial of its own, RUNNING while it is
evaluated and told its objective values afterwards. The sampler thus learns from exactly
what was evaluated, and sees the batch's pending configurations (TPE's constant liar, GP's
q-acquisition), which keeps a batch diverse.

Everything is seeded (the samplers, the repair), and a study is rebuilt by replaying the
told results, so a resumed run asks exactly what the original asked.
"""

from __future__ import annotations

import importlib.util
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from presso.errors import MissingExtraError
from presso.pareto import non_dominated
from presso.search._base import Context, Request, Result, Strategy, check_told, register
from presso.search._objectives import Objectives
from presso.search._operators import Repair
from presso.search._random import fill_budget
from presso.spaces import Config, SearchSpace

if TYPE_CHECKING:
    import optuna

# Proposals asked of the sampler (a GP's take a second), repairs of each, then random
# fillings drawn, before a configuration already asked for is accepted again (small spaces
# may hold fewer than ``trials`` distinct ones).
_PROPOSALS = 2
_REPAIRS = 4
_RANDOM_DRAWS = 10


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines (study created, ...): the runner reports progress."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class Bayesian(Strategy):
    """Bayesian optimisation over level indices with an Optuna sampler (see the module doc).

    trials: evaluations in all.
    batch: requests per ``ask()``.
    objectives: metric names to minimise (``-name`` maximises); two or more use the
        sampler's multi-objective mode.
    tokens: calibration tokens per evaluation (None: the whole pool); every evaluation shares
        one calibration draw (``sample_seed`` = seed) so their values compare.
    startup: random trials before the model is used (None: the sampler's default, 10).
    """

    bounds = {"trials": (1, None), "batch": (1, None), "tokens": (1, None), "startup": (0, None)}
    #: Encode level indices as floats (rounded) rather than integers.
    continuous: ClassVar[bool] = False

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        context: Context | None = None,
        trials: int = 32,
        batch: int = 4,
        objectives: Sequence[str] = ("kl",),
        tokens: int | None = None,
        startup: int | None = None,
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        self.check_values(dict(trials=trials, batch=batch, tokens=tokens, startup=startup))
        self.trials, self.batch, self.tokens = trials, batch, tokens
        self.objectives = Objectives(objectives)
        self.repair = Repair(space)
        self._fill = len(self.objectives) == 1
        self._rng = np.random.default_rng(seed)
        self._distributions = _encoding(space, continuous=self.continuous)
        self._study = self._create_study(startup)
        self._seen: set[Config] = set()
        self._pending: list[Request] | None = None
        self._numbers: list[int] = []  # the study trials of the pending requests
        self._told: list[tuple[Config, np.ndarray]] = []

    @abstractmethod
    def _sampler(self, startup: int | None) -> optuna.samplers.BaseSampler:
        """The Optuna sampler, seeded with ``self.seed`` (``startup``: its random trials)."""

    def _create_study(self, startup: int | None) -> optuna.Study:
        import optuna

        directions = ["maximize" if m else "minimize" for m in self.objectives.maximise]
        with _quiet_optuna():
            return optuna.create_study(sampler=self._sampler(startup), directions=directions)

    def ask(self) -> list[Request]:
        if self._pending is None and not self.finished:
            size = min(self.batch, self.trials - len(self._told))
            configs = [self._propose() for _ in range(size)]
            self._pending = [
                Request(c, tokens=self.tokens, sample_seed=self.seed, tag=self.name)
                for c in configs
            ]
        return list(self._pending or [])

    def tell(self, requests: Sequence[Request], results: Sequence[Result]) -> None:
        from optuna.trial import TrialState

        check_told(self.ask(), requests, results)
        for number, request, result in zip(self._numbers, requests, results):
            raw = self.objectives.raw(result)
            with _quiet_optuna():
                if raw is None:
                    self._study.tell(number, state=TrialState.FAIL)
                else:
                    self._study.tell(number, list(raw))
            self._told.append((request.config, self.objectives.vector(result)))
        self._pending, self._numbers = None, []

    @property
    def finished(self) -> bool:
        return len(self._told) >= self.trials

    @property
    def planned(self) -> int:
        return self.trials

    def best(self) -> Config | None:
        """The configuration with the lowest first objective (ties: the next objectives)."""
        front = self._front()
        return min(front, key=lambda m: tuple(m[1]))[0] if front else None

    def front(self) -> list[tuple[Config, tuple[float, ...]]]:
        """The non-dominated evaluated configurations with their objective metrics as
        measured, by first objective."""
        ordered = sorted(self._front(), key=lambda m: tuple(m[1]))
        return [(config, self.objectives.unsign(vector)) for config, vector in ordered]

    def _front(self) -> list[tuple[Config, np.ndarray]]:
        usable = [m for m in self._told if np.isfinite(m[1]).all()]
        if not usable:
            return []
        mask = non_dominated(np.stack([v for _, v in usable]))
        return [m for m, keep in zip(usable, mask) if keep]

    def _propose(self) -> Config:
        """A feasible configuration from the sampler (or, when it keeps proposing ones
        already asked for, a random filling), entered in the study as a RUNNING trial."""
        config: Config | None = None
        for _ in range(_PROPOSALS):
            proposal = self._sample()
            for _ in range(_REPAIRS):  # repair (and fill) are random: a cheap retry first
                config = self.repair(proposal, self._rng, fill=self._fill)
                if config is not None and config not in self._seen:
                    break
            if config is not None and config not in self._seen:
                break
        for _ in range(_RANDOM_DRAWS):
            if config is not None and config not in self._seen:
                break
            config = fill_budget(self.space, self._rng)
        assert config is not None
        self._seen.add(config)
        self._numbers.append(self._add_running(config))
        return config

    def _sample(self) -> Config:
        """One proposal of the sampler; its trial is closed at once as FAIL."""
        from optuna.trial import TrialState

        with _quiet_optuna():
            trial = self._study.ask(self._distributions)
            self._study.tell(trial, state=TrialState.FAIL)
        return tuple(int(round(trial.params[f"d{d}"])) for d in range(len(self.space)))

    def _add_running(self, config: Config) -> int:
        import optuna

        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params={f"d{d}": float(i) if self.continuous else int(i) for d, i in enumerate(config)},
            distributions=self._distributions,
        )
        number = len(self._study.get_trials(deepcopy=False))  # in-memory: numbered 0, 1, ...
        self._study.add_trial(trial)
        return number


def _encoding(
    space: SearchSpace, *, continuous: bool
) -> dict[str, optuna.distributions.BaseDistribution]:
    """One level-index parameter per dimension, named ``d0``, ``d1``... (unit names can be
    long and hold any character); ``continuous``: a float in ``[0, levels - 1]``, rounded."""
    from optuna.distributions import FloatDistribution, IntDistribution

    return {
        f"d{d}": FloatDistribution(0, len(dim.levels) - 1)
        if continuous
        else IntDistribution(0, len(dim.levels) - 1)
        for d, dim in enumerate(space.dims)
    }


@register
class TPE(Bayesian):
    """Bayesian optimisation with Optuna's tree-structured Parzen estimator."""

    name = "tpe"

    def _sampler(self, startup: int | None) -> optuna.samplers.BaseSampler:
        from optuna.samplers import TPESampler

        extra = {} if startup is None else {"n_startup_trials": startup}
        return TPESampler(seed=self.seed, **extra)


@register
class GP(Bayesian):
    """Bayesian optimisation with Optuna's Gaussian-process sampler (needs scipy)."""

    name = "gp"
    # Level indices are ordinal, so a continuous relaxation loses little, and Optuna's GP
    # optimises its acquisition over floats by L-BFGS: about 1 s per proposal at 18
    # dimensions, against some 15 s for its discrete local search over integers.
    continuous = True

    def _sampler(self, startup: int | None) -> optuna.samplers.BaseSampler:
        if importlib.util.find_spec("scipy") is None:
            raise MissingExtraError("scipy", "bayes", "the gp strategy")
        from optuna.samplers import GPSampler

        extra = {} if startup is None else {"n_startup_trials": startup}
        return GPSampler(seed=self.seed, **extra)
