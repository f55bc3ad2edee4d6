"""What the search asks, what the evaluator answers, and the metrics it answers in.

A neutral module between the layers: the evaluator (core), the strategies and pools
(``presso.search``), the store and every view (show, export, dashboard) read these types,
and it imports nothing of presso but the space's ``Config`` type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presso.spaces import Config


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

    fitness: the objective to minimise (the evaluator's fitness metric, see
        :func:`fitness_metric`: KL divergence to the dense model in nats/token, or an encoder's
        cosine distance).
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
class Metric:
    """A measured quantity as views name it. Every metric is minimised as measured except
    those a budget bounds from below (``mean_sparsity``, ``dropped``): objectives say which
    way they go (see :class:`Objective`)."""

    name: str
    label: str
    unit: str = ""


#: Every metric presso measures, by the name results, summaries and objectives use.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("kl", "KL divergence", "nats/token"),
        Metric("ppl", "perplexity"),
        Metric("cos_dist", "cosine distance"),
        Metric("mean_bits", "mean bits", "bits"),
        Metric("mean_sparsity", "mean sparsity", "%"),
        Metric("dropped", "dropped blocks"),
        Metric("params", "parameters"),
        Metric("size_mb", "size", "MB"),
        Metric("latency_ms", "latency", "ms"),
        Metric("fid", "FID (digits classifier features)"),
        Metric("kid", "KID (digits classifier features)"),
        Metric("steps", "sampling time steps", "steps"),
        Metric("blocks", "UNet blocks executed", "blocks"),
    )
}


def label(name: str) -> str:
    """How views name metric ``name`` (its own name when presso does not know it)."""
    metric = METRICS.get(name)
    return metric.label if metric else name.replace("_", " ")


def fitness_metric(model_kind: str) -> str:
    """The metric an evaluator of a ``model_kind`` model minimises: ``kl`` for a causal LM
    (divergence of next-token distributions), ``cos_dist`` for an encoder (of embeddings),
    ``fid`` for a diffusion model (of its samples to real images)."""
    return {"causal-lm": "kl", "diffusion": "fid"}.get(model_kind, "cos_dist")


def heldout_metrics(model_kind: str) -> tuple[str, ...]:
    """What an evaluator measures on held-out windows, the one to compare candidates by first."""
    return {"causal-lm": ("ppl", "kl"), "diffusion": ("fid", "kid")}.get(model_kind, ("cos_dist",))


@dataclass(frozen=True)
class Objective:
    """One objective of a Pareto front, as experiment files write it: a metric name, with a
    leading ``-`` to maximise it (``-mean_sparsity``). The one parser of that spelling."""

    metric: str
    maximise: bool = False

    @classmethod
    def parse(cls, name: str) -> Objective:
        return cls(name[1:], True) if name.startswith("-") else cls(name, False)

    @property
    def name(self) -> str:
        return f"-{self.metric}" if self.maximise else self.metric

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.maximise else "minimize"

    def minimised(self, value: float) -> float:
        """``value`` as measured, turned into the value a minimiser compares (negated when
        maximised); also its own inverse."""
        return -value if self.maximise else value

    def of(self, metrics: dict[str, Any]) -> float | None:
        """The minimised value of this objective in ``metrics`` (None when absent)."""
        value = metrics.get(self.metric)
        return None if value is None else self.minimised(value)


def default_objectives(constraints: Sequence[Any], fitness: str = "kl") -> list[str]:
    """The fitness metric and each budget's metric, oriented so that cheaper is better:
    e.g. ``["kl", "mean_bits"]``, ``["kl", "-mean_sparsity"]`` (``constraints``: a space's,
    each with ``metric`` and ``sense``)."""
    budgets = [Objective(c.metric, c.sense != "<=").name for c in constraints]
    return [fitness, *budgets]
