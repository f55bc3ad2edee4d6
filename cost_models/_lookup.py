"""A timing table: the measured median of every (op, workload), as ZipLM and SPDY use them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from presso.cost_models._base import CostModel, linear_measurements, register
from presso.profilers._base import LinearOp, Measurement, Workload


@register
class LookupTable(CostModel):
    """Exact for what was measured, NaN for anything else."""

    name = "lookup"

    def __init__(self) -> None:
        self.table: dict[str, float] = {}

    def fit(self, measurements: Sequence[Measurement]) -> LookupTable:
        for m in linear_measurements(measurements):
            self.table[f"{m.op}@{m.workload}"] = float(m.median_ms)
        return self

    def predict(self, ops: Sequence[LinearOp], workload: Workload) -> np.ndarray:
        return np.array(
            [self.table.get(f"{op.key}@{workload.key}", np.nan) for op in ops], dtype=np.float64
        )

    def to_dict(self) -> dict[str, Any]:
        return {"table": dict(sorted(self.table.items()))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LookupTable:
        model = cls()
        model.table = {k: float(v) for k, v in data["table"].items()}
        return model
