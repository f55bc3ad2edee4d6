"""A learned per-op latency model for the shapes, levels and workloads never measured.

Two stages: a linear model in log space (latency grows as a power of the work, with a
per-level offset) that extrapolates to unseen shapes, and gradient-boosted trees on its
residuals that learn what the line misses (kernel switches, cache cliffs). Features are
what decides a GEMM's cost — log rows (M), log widths, bits, density, group size — and the
target is log latency, so relative errors weigh the same for a 0.01 ms decode GEMV and a
10 ms prefill GEMM. Saving keeps the training points (JSON) and loading refits them:
deterministic, and nothing pickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from presso.cost_models._base import CostModel, linear_measurements, parse_op, register
from presso.errors import MissingExtraError, PressoError
from presso.profilers._base import LinearOp, Measurement, Workload


def features(op: LinearOp, workload: Workload) -> list[float]:
    rows = workload.rows
    return [
        math.log2(rows),
        math.log2(op.out_features),
        math.log2(op.in_features),
        math.log2(op.out_features * op.in_features * rows),  # work
        float(op.bits),
        1.0 - op.sparsity / 100,
        math.log2(op.group_size or op.in_features),
        float(op.dense),
    ]


@register
class BoostedTrees(CostModel):
    """Ridge regression plus scikit-learn's histogram gradient boosting on its residuals, on log
    latency (seeded, deterministic)."""

    name = "learned"

    def __init__(self, *, max_iter: int = 300, learning_rate: float = 0.1, seed: int = 0) -> None:
        self.params = {"max_iter": max_iter, "learning_rate": learning_rate, "seed": seed}
        self.points: list[tuple[str, str, float]] = []
        self._line: Any = None
        self._model: Any = None

    def fit(self, measurements: Sequence[Measurement]) -> BoostedTrees:
        self.points = [
            (m.op, m.workload, float(m.median_ms)) for m in linear_measurements(measurements)
        ]
        return self._refit()

    def _refit(self) -> BoostedTrees:
        try:
            from sklearn.ensemble import HistGradientBoostingRegressor
            from sklearn.linear_model import Ridge
        except ImportError:
            raise MissingExtraError("scikit-learn", "cost", "the learned cost model") from None
        if len(self.points) < 4:
            raise PressoError(
                f"the learned cost model needs at least 4 measurements, got {len(self.points)}; "
                "profile more ops first (presso profile)"
            )
        x = np.array([features(parse_op(o), Workload.parse(w)) for o, w, _ in self.points])
        y = np.log(np.array([ms for _, _, ms in self.points]))
        self._line = Ridge(alpha=1e-3).fit(x, y)
        self._model = HistGradientBoostingRegressor(
            max_iter=self.params["max_iter"],
            learning_rate=self.params["learning_rate"],
            min_samples_leaf=2,
            random_state=self.params["seed"],
        ).fit(x, y - self._line.predict(x))
        return self

    def predict(self, ops: Sequence[LinearOp], workload: Workload) -> np.ndarray:
        if self._model is None:
            raise PressoError("the learned cost model is not fitted; fit it on measurements first")
        if not ops:
            return np.zeros(0)
        x = np.array([features(op, workload) for op in ops])
        return np.exp(self._line.predict(x) + self._model.predict(x))

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "points": self.points}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoostedTrees:
        p = data["params"]
        model = cls(max_iter=p["max_iter"], learning_rate=p["learning_rate"], seed=p["seed"])
        model.points = [(o, w, float(ms)) for o, w, ms in data["points"]]
        return model._refit()
