"""The uniform baseline: every unit at the costliest level value that fits the budget."""

from __future__ import annotations

from collections.abc import Sequence

from presso.search._base import Context, Request, Result, Strategy, register
from presso.search._random import check_told
from presso.spaces import Config, SearchSpace


@register
class Uniform(Strategy):
    """One request: ``space.best_uniform()`` scored on the whole calibration pool."""

    name = "uniform"

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        super().__init__(space, seed=seed, context=context)
        config = space.best_uniform()
        if config is None:
            raise ValueError(
                "no uniform configuration is feasible (no level value shared by every unit "
                f"meets the constraints: {space.describe()})"
            )
        self._request = Request(config, tokens=None, sample_seed=seed, tag="uniform")
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
