"""The latency of a whole candidate, from per-op predictions and measured model structure.

    latency = remainder + Σ over kept blocks [ rest_b
                + (attention kept) · (attn_overhead + Σ attention units at their levels)
                + (MLP kept)       · (mlp_overhead  + Σ MLP units at their levels) ]

The per-unit terms come from a per-op cost model (the timing table, with the learned model
where the table has no entry). The other terms are *measured* on assembled models: the
dense one end to end, and the same with several blocks / attentions / MLPs removed (a line
through those points gives one block's cost, robust to a single noisy measurement); what a
removal saves beyond the dense cost of its linear layers is that part's overhead (attention
scores, norms, activations), and what no block accounts for is the remainder (embeddings,
final norm, LM head). Like ZipLM's timing tables, the sum is additive: it
cannot see kernels fusing across layers — validation says how much that matters.

Isolated layer timings need not be what a layer costs inside the model (a packed kernel's
activation conversions, the cache pressure of the layers around it). When the model was
also measured with every unit at one low bit width (``calibration``), one factor α scales
every unit term so that dense and that uniform model are both reproduced:
``α = (dense − uniform) / Σ_units (op_dense − op_uniform)``. A model whose levels are
shapes (pruned heads and FFN channels) is measured at every uniform structured level instead;
α, and how much of each sublayer's overhead shrinks with its heads or channels, are fitted
to all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.cost_models._base import CostModel
from presso.errors import PressoError
from presso.profilers._base import DENSE_BITS, LinearOp, Workload, levels_plan
from presso.runtimes._base import unit_levels

if TYPE_CHECKING:
    from presso.plan import Plan


@dataclass(frozen=True)
class UnitSlot:
    """A compressible linear layer: its name, ``(out, in)`` shape, block index, and which part
    of the block it is in (``self_attn``, ``mlp``, or ``""`` when the block has no such parts)."""

    name: str
    shape: tuple[int, int]
    block: int
    part: str


@dataclass(frozen=True)
class Structure:
    """Measured end-to-end costs: the dense model (ms), and what one block, one attention and
    one MLP cost in it (ms each, the slope of end-to-end time against how many are removed)."""

    dense_ms: float
    block_ms: float
    attn_ms: float | None = None
    mlp_ms: float | None = None

    @classmethod
    def fit(
        cls,
        dense_ms: float,
        blocks: dict[int, float],
        attn: tuple[int, float] | None = None,
        mlp: tuple[int, float] | None = None,
    ) -> Structure:
        """From the dense time and the times with ``k`` blocks removed (``{k: ms}``), and with
        ``k`` attentions / MLPs removed: a least-squares line through all the block points, so
        that no single noisy measurement decides the per-block cost."""
        ks = np.array([0, *blocks], dtype=np.float64)
        ms = np.array([dense_ms, *blocks.values()], dtype=np.float64)
        slope, intercept = np.polyfit(ks, ms, 1)
        dense = float(intercept)

        def per(removed: tuple[int, float] | None) -> float | None:
            return None if removed is None else (dense - removed[1]) / removed[0]

        return cls(dense, float(-slope), per(attn), per(mlp))


class CandidateLatency:
    """Predicts a candidate's end-to-end latency (ms) on one backend, machine and workload."""

    def __init__(
        self,
        ops: CostModel,
        units: Sequence[UnitSlot],
        blocks: Sequence[str],
        structure: Structure,
        workload: Workload,
        *,
        group_size: int | None,
        fallback: CostModel | None = None,
        calibration: tuple[int, float] | None = None,
        structures: Sequence[Any] = (),
        structured_calibration: Sequence[tuple[Plan, float]] = (),
    ) -> None:
        """calibration: ``(bits, ms)``, the measured end-to-end time with every unit at
        ``bits`` (the in-model factor α is fitted to it; without it α = 1).
        structured_calibration: ``(plan, ms)`` pairs, each every attention and FFN at one
        structured level, measured end to end; α (and the share of the overheads that shrinks
        with the heads and channels) is fitted to them, with the uniform-bits model when
        both are given. structures: the model's attentions and FFNs
        (:func:`presso.structures.model_structures`), for plans that prune heads or FFN
        channels: their units are priced at their smaller shapes and the attention / MLP
        overheads shrink with the heads / channels kept (:meth:`_overhead`)."""
        self.ops, self.fallback = ops, fallback
        self.structures = {s.consumer: s for s in structures}
        self.units, self.blocks = list(units), list(blocks)
        self._shapes = {u.name: u.shape for u in self.units}
        self.workload, self.group_size = workload, group_size
        self.structure = structure
        self._cache: dict[tuple, float] = {}
        self.overhead_scaling = 1.0
        self._set_scale(1.0)
        probes = list(structured_calibration)
        if calibration is not None and probes:  # bits and shapes: one fit to every probe
            bits, ms = calibration
            uniform = levels_plan({u.name: (bits, 0) for u in self.units}, group_size=group_size)
            probes.append((uniform, ms))
        elif calibration is not None:
            self._set_scale(self._fit_scale(*calibration))
        if probes:  # a model whose levels are smaller shapes
            self._set_scale(self._fit_structured_scale(probes))

    def _set_scale(self, alpha: float) -> None:
        """Scale every unit term by ``alpha`` and re-derive what the structure probes leave
        to the rest of each block (its overheads are measured totals less the scaled units)."""
        self.scale = alpha
        structure, blocks = self.structure, self.blocks
        dense = self.unit_ms({u.name: (DENSE_BITS, 0) for u in self.units})
        per_block = [0.0] * len(blocks)
        per_part: dict[tuple[int, str], float] = {}
        for u in self.units:
            per_block[u.block] += dense[u.name]
            per_part[(u.block, u.part)] = per_part.get((u.block, u.part), 0.0) + dense[u.name]
        # All blocks have one shape: the middle block's units stand for every block's.
        b = len(blocks) // 2
        self.remainder = structure.dense_ms - len(blocks) * structure.block_ms
        self.attn_overhead = self.mlp_overhead = 0.0
        rest = structure.block_ms - per_block[b]
        if structure.attn_ms is not None and structure.mlp_ms is not None:
            self.attn_overhead = structure.attn_ms - per_part.get((b, "self_attn"), 0.0)
            self.mlp_overhead = structure.mlp_ms - per_part.get((b, "mlp"), 0.0)
            rest -= self.attn_overhead + self.mlp_overhead
        self.block_rest = rest

    def _fit_scale(self, bits: int, uniform_ms: float) -> float:
        """α from the dense and the all-``bits`` model; 1 when the two are too close to tell
        (noise would decide α) or α comes out implausible (a probe measured under load)."""
        saved = sum(self._ms(u, DENSE_BITS, 0) - self._ms(u, bits, 0) for u in self.units)
        measured = self.structure.dense_ms - uniform_ms
        if saved <= 0.05 * self.structure.dense_ms or measured <= 0:
            return 1.0
        alpha = measured / saved
        return alpha if 0.25 <= alpha <= 4.0 else 1.0

    def _fit_structured_scale(self, probes: Sequence[tuple[Plan, float]]) -> float:
        """α and the overhead's scaling share that best reproduce the uniform structured
        models ``probes`` (``(plan, ms)``): least squares of the relative errors of the whole
        prediction, so that one probe alone is reproduced exactly. As :meth:`_fit_scale` from
        a uniform bit width: layers timed alone, each a call of its own, can cost far more
        than their share in the model, and what shrinking them saves with them. Sets
        ``overhead_scaling`` and returns α; α = 1 (and overheads in proportion) when no probe
        saves enough to tell or α comes out implausible."""
        dense = self.structure.dense_ms
        usable = [(plan, ms) for plan, ms in probes if dense - ms > 0.05 * dense]
        if not usable:
            return 1.0

        def loss(alpha: float) -> float:
            self._set_scale(alpha)
            return sum((self.predict(plan) / ms - 1.0) ** 2 for plan, ms in usable)

        fits = []
        # On SmolLM2 decode (ONNX Runtime) the overheads stay whole as heads go (fixed: MAPE
        # 2.4 % over the uniform ladder and random candidates, in proportion: 7.9 %); with
        # long sequences attention scores dominate them. The probes decide.
        for phi in (0.0, 0.5, 1.0):
            self.overhead_scaling = phi
            alpha = _golden_section(loss, 0.05, 4.0)
            fits.append((loss(alpha), phi, alpha))
        _, phi, alpha = min(fits)
        if not 0.05 + 1e-3 < alpha < 4.0 - 1e-3:
            phi, alpha = 1.0, 1.0
        self.overhead_scaling = phi
        return alpha

    def op(self, unit: UnitSlot, bits: int, sparsity: int) -> LinearOp:
        group = self.group_size if bits < DENSE_BITS else None
        return LinearOp(unit.shape[0], unit.shape[1], int(bits), int(sparsity), group)

    def _ms(
        self, unit: UnitSlot, bits: int, sparsity: int, shape: tuple[int, int] | None = None
    ) -> float:
        """Predicted ms of ``unit`` at a level (at ``shape`` when pruned heads or channels
        made it smaller)."""
        shape = shape or unit.shape
        key = (shape, bits, sparsity)
        if key not in self._cache:
            op = self.op(UnitSlot(unit.name, shape, unit.block, unit.part), bits, sparsity)
            value = self.ops.predict([op], self.workload)[0]
            if np.isnan(value) and self.fallback is not None:
                value = self.fallback.predict([op], self.workload)[0]
            if not np.isfinite(value):
                raise PressoError(
                    f"no latency for {op.key} at {self.workload.key}: it was not measured and "
                    "no learned model covers it; run `presso profile` for these levels"
                )
            self._cache[key] = float(value)
        return self.scale * self._cache[key]

    @property
    def dense_ms(self) -> float:
        """The dense model's measured end-to-end latency (what ``speedup`` divides)."""
        return self.structure.dense_ms

    def unit_ms(self, levels: dict[str, tuple[int, int]]) -> dict[str, float]:
        """Predicted ms of each named unit at its ``(bits, sparsity)``."""
        return {u.name: self._ms(u, *levels[u.name]) for u in self.units if u.name in levels}

    def predict(self, plan: Plan) -> float:
        """Predicted end-to-end ms of ``plan`` (units not named are dense)."""
        dropped = set(plan.dropped)
        shapes, kept = self._shrunk(plan)
        total = self.remainder
        for b, block in enumerate(self.blocks):
            if block not in dropped:
                total += self.block_rest
                for part, overhead in (
                    ("self_attn", self.attn_overhead),
                    ("mlp", self.mlp_overhead),
                ):
                    if f"{block}.{part}" not in dropped:
                        total += self._overhead(overhead, kept.get((b, part), 1.0))
        for u in self.units:
            block = self.blocks[u.block]
            if block in dropped or (u.part and f"{block}.{u.part}" in dropped):
                continue
            total += self._ms(u, *unit_levels(plan, u.name), shapes.get(u.name))
        return total

    def _overhead(self, overhead: float, kept: float) -> float:
        """A sublayer's overhead with ``kept`` of its heads or channels: the share
        ``overhead_scaling`` of it that scales with them (attention scores, activations),
        the rest fixed (norms, rotary, residual adds, each op's own call). A negative overhead
        is no such work: it is what the layers timed alone cost beyond their share in the
        model (a call's own overhead, which stays whatever the shape), so it is left as it is."""
        if overhead <= 0:
            return overhead
        phi = self.overhead_scaling
        return overhead * (phi * kept + 1.0 - phi)

    def _shrunk(
        self, plan: Plan
    ) -> tuple[dict[str, tuple[int, int]], dict[tuple[int, str], float]]:
        """The smaller shapes of the units ``plan``'s pruned heads and channels leave, and per
        (block, part) the fraction of its heads or channels kept."""
        shapes: dict[str, tuple[int, int]] = {}
        kept: dict[tuple[int, str], float] = {}
        for unit, percent in plan.compressed("structured").items():
            s = self.structures.get(unit)
            if s is None:
                raise PressoError(f"{unit} has a structured level but is no attention or FFN")
            n = s.kept(percent)
            out, inp = self._shape(s.consumer)
            shapes[s.consumer] = (out, n * s.group_size)
            for name in s.producers:
                shapes[name] = (n * s.group_size, self._shape(name)[1])
            for name in s.kv:
                shapes[name] = (n * s.kv_rows, self._shape(name)[1])
            kept[(s.block, "self_attn" if s.what == "heads" else "mlp")] = n / s.count
        return shapes, kept

    def _shape(self, unit: str) -> tuple[int, int]:
        return self._shapes[unit]

    def describe(self) -> dict[str, Any]:
        s = self.structure
        return {
            "dense_ms": s.dense_ms,
            "block_ms": s.block_ms,
            "remainder_ms": self.remainder,
            "block_rest_ms": self.block_rest,
            "attn_overhead_ms": self.attn_overhead,
            "mlp_overhead_ms": self.mlp_overhead,
            "in_model_scale": self.scale,
            "overhead_scaling": self.overhead_scaling,
        }


def _golden_section(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-6) -> float:
    """The minimum of ``f`` on ``[lo, hi]``, for an ``f`` with one valley there."""
    ratio = (5**0.5 - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2
