"""The uniform baseline: every unit at the costliest level value that fits the budget."""

from __future__ import annotations

from presso.search._base import Context, OneShot, register
from presso.spaces import SearchSpace


@register
class Uniform(OneShot):
    """One request: ``space.best_uniform()`` scored on the whole calibration pool."""

    name = "uniform"

    def __init__(
        self, space: SearchSpace, *, seed: int = 0, context: Context | None = None
    ) -> None:
        config = space.best_uniform()
        if config is None:
            raise ValueError(
                "no uniform configuration is feasible (no level value shared by every unit "
                f"meets the constraints: {space.describe()})"
            )
        super().__init__(space, config, seed=seed, context=context)
