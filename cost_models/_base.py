"""The cost-model interface: fit on measurements, predict per-op latency, save and load.

A cost model predicts the latency (ms) of linear ops (a layer shape at a level) under a
workload on one backend of one machine, from that machine's profile database. Whole
candidates are priced by :class:`presso.cost_models.CandidateLatency`, which sums the
per-op predictions and adds the measured cost of what is not compressible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from presso.errors import PressoError
from presso.profilers._base import LinearOp, Measurement, Workload
from presso.registry import Registry


def parse_op(key: str) -> LinearOp:
    """The LinearOp a measurement's ``op`` key names (``linear-576x1536-w4-s0-g64``)."""
    try:
        kind, shape, w, s, g = key.split("-")
        if kind != "linear":
            raise ValueError(kind)
        out, inp = shape.split("x")
        group = None if g == "ch" else int(g[1:])
        return LinearOp(int(out), int(inp), int(w[1:]), int(s[1:]), group)
    except ValueError:
        raise PressoError(f"not a linear op key: {key!r}") from None


class CostModel(ABC):
    """Per-op latency in ms. ``fit`` takes the successful linear-op measurements of one backend."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, measurements: Sequence[Measurement]) -> CostModel: ...

    @abstractmethod
    def predict(self, ops: Sequence[LinearOp], workload: Workload) -> np.ndarray:
        """Latency in ms of each op; NaN where the model cannot say."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel: ...

    def save(self, path: str | Path) -> None:
        """As JSON (never pickle: a saved model is data anyone may send you)."""
        import json

        from presso.paths import atomic_write_text

        atomic_write_text(Path(path), json.dumps({"cost_model": self.name, **self.to_dict()}))

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        import json

        data = json.loads(Path(path).read_text())
        kind = data.pop("cost_model", None)
        if kind not in COST_MODELS:
            raise PressoError(f"{path}: not a saved presso cost model (cost_model: {kind!r})")
        return COST_MODELS.get(kind).from_dict(data)


def linear_measurements(measurements: Sequence[Measurement]) -> list[Measurement]:
    """The successful measurements of linear ops (not whole models, not failures)."""
    return [m for m in measurements if m.ok and m.op.startswith("linear-")]


#: Cost models by name.
COST_MODELS: Registry[type[CostModel]] = Registry("cost model", error=PressoError)


def register(cls: type[CostModel]) -> type[CostModel]:
    return COST_MODELS.register(cls)


def available() -> list[str]:
    return COST_MODELS.available()


def make_cost_model(name: str) -> CostModel:
    return COST_MODELS.make(name)
