"""The evaluator: assemble a candidate from the level database and score it.

Fitness is the KL divergence from the dense model's next-token distribution to the
candidate's, in nats per token, on calibration windows (for an encoder: one minus the
cosine similarity of its token embeddings to the dense model's). The dense reference is
computed once per model × calibration set and memory-mapped from disk.

Work is not repeated: the output of every transformer block is cached (LRU, bounded in
bytes) under the key (calibration windows, levels of every unit up to that block). A
candidate that shares its first k blocks' levels with one evaluated recently — an EvoPress
child and its parent — starts its forward pass at block k.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.checksum import check, verify, write_sealed
from presso.evaluation import Request, Result, fitness_metric, heldout_metrics
from presso.paths import digest
from presso.runtimes._skip import set_forward, skip_forward
from presso.spaces import KINDS

if TYPE_CHECKING:
    import torch

    from presso.data import CalibrationData
    from presso.leveldb import LevelDatabase
    from presso.models import ModelHandle
    from presso.plan import Plan
    from presso.spaces import Config, SearchSpace


class DenseReference:
    """The dense model's outputs on calibration and evaluation windows, cached on disk.

    Causal LMs store log-probabilities (fp16, ``[n, seq, vocab]``); encoders store last
    hidden states (fp32, ``[n, seq, hidden]``).
    """

    def __init__(self, root: Path, handle: ModelHandle, data: CalibrationData) -> None:
        self.handle = handle
        self.data = data
        self.path = (
            Path(root)
            / f"{digest({'model': handle.identity, 'data': data.fingerprint})}.safetensors"
        )
        self._file: Any = None

    def build(self, *, batch_size: int = 4, progress: Any = None) -> float:
        """Compute and store the reference unless it exists intact (a corrupt one is reported
        and rebuilt, see presso.checksum); returns seconds spent."""
        if self.path.is_file() and check(self.path):
            return 0.0
        import torch
        from safetensors.torch import save

        start = time.perf_counter()
        self.handle.restore_dense()
        out = {}
        for split, windows in (
            ("calibration", self.data.calibration),
            ("evaluation", self.data.evaluation),
        ):
            chunks = range(0, len(windows), batch_size)
            if progress is not None:
                chunks = progress(chunks, len(chunks), f"dense reference ({split})")
            parts = [
                self._reference(self.handle.forward(windows[i : i + batch_size])) for i in chunks
            ]
            out[split] = torch.cat(parts).contiguous()
        write_sealed(self.path, save(out))
        return time.perf_counter() - start

    def _reference(self, output: torch.Tensor) -> torch.Tensor:
        import torch

        if self.handle.kind == "causal-lm":
            return torch.log_softmax(output.float(), dim=-1).half()
        return output.float()

    def get(self, split: str, indices: Sequence[int]) -> torch.Tensor:
        import torch
        from safetensors import safe_open

        if self._file is None:
            verify(self.path)  # a corrupt reference names itself instead of scoring wrongly
            self._file = safe_open(self.path, framework="pt")
        rows = self._file.get_slice(split)
        return torch.stack([rows[i : i + 1][0] for i in indices]).float()


class _BlockCache:
    """LRU of block outputs bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()

    def get(self, key: tuple) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: tuple, value: Any) -> None:
        if key in self._items or self.max_bytes <= 0:
            return
        size = _nbytes(value)
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._items:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped


def _nbytes(value: Any) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return value.numel() * value.element_size() if hasattr(value, "numel") else 0


class Evaluator:
    """Scores configurations of ``space`` for one model (one per process or Ray actor).

    dbs: the level database of each kind of dimension that sets unit weights (``bits``,
        ``sparsity``); a unit with several takes each kind's level in the kinds' order (a
        sparse level, then its kept weights rounded to its bits on the fly; see
        :meth:`presso.spaces.Kind.realise`).
    batch_size: calibration windows per forward pass.
    cache_mb: memory for cached block outputs; 0 turns prefix reuse off.
    """

    def __init__(
        self,
        handle: ModelHandle,
        data: CalibrationData,
        dbs: dict[str, LevelDatabase],
        space: SearchSpace,
        reference: DenseReference,
        *,
        batch_size: int = 4,
        cache_mb: int = 1024,
    ) -> None:
        self.handle = handle
        self.data = data
        self.dbs = dbs
        self.space = space
        self.reference = reference
        self.batch_size = batch_size
        self._cache = _BlockCache(cache_mb * 2**20)
        self._loaded: dict[str, tuple] = {}
        # Unknown until the first apply(), which restores every depth target first: another
        # evaluator of the same model may have left a block skipped.
        self._dropped: set[str] | None = None
        missing = {d.kind for d in space.dims if KINDS.get(d.kind).per_unit} - set(dbs)
        if missing:
            raise ValueError(f"no level database for {sorted(missing)} dimensions")
        dims_blocks = [handle.block_of(d.target) for d in space.dims]
        if dims_blocks != sorted(dims_blocks):
            raise ValueError("space dimensions must follow the model's block order")
        # Per unit: the kinds that set it, in the order their levels apply.
        self._unit_kinds: dict[str, list[str]] = {}
        for d in space.dims:
            if KINDS.get(d.kind).per_unit:
                self._unit_kinds.setdefault(d.target, []).append(d.kind)
        for kinds in self._unit_kinds.values():
            kinds.sort(key=lambda k: KINDS.get(k).order)
        # The modules a plan may drop: every target of a kind that removes modules.
        self._droppable = [d.target for d in space.dims if not KINDS.get(d.kind).per_unit]
        self._tuple_output = self._block_returns_tuple()
        # _prefix_end[b]: how many dimensions belong to blocks 0..b.
        self._prefix_end = [
            int(np.searchsorted(dims_blocks, b, side="right")) for b in range(len(handle.blocks))
        ]
        self.blocks_run = 0
        self.blocks_reused = 0

    # ------------------------------------------------------------------ public

    def evaluate(self, request: Request) -> Result:
        """Fitness of ``request.config`` on the calibration windows it names. Never raises."""
        start = time.perf_counter()
        try:
            indices = self.sample(request.tokens, request.sample_seed)
            self.apply(request.config)
            total, count, nll = 0.0, 0, 0.0
            for i in range(0, len(indices), self.batch_size):
                batch = tuple(indices[i : i + self.batch_size])
                output = self._forward_reusing(request.config, batch)
                ref = self.reference.get("calibration", batch)
                ids = self.data.calibration[list(batch)]
                value, n, batch_nll = self._divergence(ref, output, ids)
                total, count, nll = total + value, count + n, nll + batch_nll
            fitness = total / count
            windows, seq_len = len(indices), self.data.calibration.shape[1]
            metrics = {
                self.fitness_metric: fitness,
                "tokens": float(windows * seq_len),
                # What the constraints measure (e.g. mean_bits): objectives for Pareto fronts.
                **self.space.metrics(request.config),
            }
            if self.handle.kind == "causal-lm":  # calibration perplexity, an objective too
                metrics["ppl"] = math.exp(nll / (windows * (seq_len - 1)))
            return Result(fitness=fitness, metrics=metrics, seconds=time.perf_counter() - start)
        except Exception as err:  # a failed evaluation is data, not a crash of the run
            return Result(
                fitness=None,
                error=f"{type(err).__name__}: {err}",
                seconds=time.perf_counter() - start,
            )

    def heldout(self, config: Config) -> dict[str, float]:
        """Held-out metrics on the evaluation split: ``ppl`` and ``kl`` (causal LM) or ``cos_dist``."""
        self.apply(config)
        return self._heldout()

    def heldout_dense(self) -> dict[str, float]:
        """The dense model's held-out metrics (its ``ppl`` is what candidates compare with;
        its divergence is 0). The model is left dense: the next ``apply`` sets every unit."""
        self.handle.restore_dense()
        self._loaded.clear()
        for target in self._dropped:
            self._set_forward(self.handle.module(target), None)
        self._dropped = set()
        return self._heldout()

    def _heldout(self) -> dict[str, float]:
        windows = self.data.evaluation
        total, nll, count = 0.0, 0.0, 0
        for i in range(0, len(windows), self.batch_size):
            idx = list(range(i, min(i + self.batch_size, len(windows))))
            output = self.handle.forward(windows[idx])
            ref = self.reference.get("evaluation", idx)
            value, n, batch_nll = self._divergence(ref, output, windows[idx])
            total, count, nll = total + value, count + n, nll + batch_nll
        if self.handle.kind == "causal-lm":
            tokens = windows.shape[0] * (windows.shape[1] - 1)
            return {"ppl": math.exp(nll / tokens), "kl": total / count}
        return {"cos_dist": total / count}

    def sample(self, tokens: int | None, seed: int) -> list[int]:
        """Indices of the calibration windows a request with ``tokens`` and ``seed`` uses."""
        pool, seq_len = self.data.calibration.shape
        if tokens is None:
            return list(range(pool))
        n = min(pool, max(1, math.ceil(tokens / seq_len)))
        return sorted(int(i) for i in np.random.default_rng(seed).choice(pool, n, replace=False))

    def apply(self, config: Config) -> None:
        """Set the model to ``config`` of the space (see :meth:`apply_plan`)."""
        self.apply_plan(self.space.plan(config))

    def apply_plan(self, plan: Plan) -> None:
        """Set every unit's weight to its levels in ``plan`` (only units that changed) and
        drop the blocks or sublayers it drops."""
        for unit, kinds in self._unit_kinds.items():
            levels = tuple(sorted((k, plan.level(unit, k)) for k in kinds))
            if self._loaded.get(unit) != levels:
                self.handle.set_weight(unit, self._weight(unit, kinds, plan))
                self._loaded[unit] = levels
        dropped = set(plan.dropped)
        if self._dropped is None:  # restore every droppable module once, then track changes
            for target in self._droppable:
                self._set_forward(self.handle.module(target), None)
            self._dropped = set()
        for target in self._dropped - dropped:
            self._set_forward(self.handle.module(target), None)
        for target in dropped - self._dropped:
            self._set_forward(self.handle.module(target), self._skip_for(target))
        self._dropped = dropped

    def _weight(self, unit: str, kinds: list[str], plan: Plan) -> torch.Tensor:
        """The weight of ``unit`` at its levels of ``kinds`` in ``plan``, each kind realising
        its level on what the kinds before it made."""
        from presso.compress import StructuredWeight

        weight = None
        for name in kinds:
            kind, level = KINDS.get(name), plan.level(unit, name)
            if kind.compressed(level):
                weight = kind.realise(self.dbs[name], unit, level, weight)
        if isinstance(weight, StructuredWeight):  # pruned heads or channels: dense-shaped
            return weight.masked()
        return self.handle.dense_weight(unit) if weight is None else weight

    def _skip_for(self, target: str) -> Any:
        """A forward that makes module ``target`` (a block, its attention or its MLP) a no-op
        on the residual stream (the runtimes' one implementation of skipping)."""
        return skip_forward(self.handle, target, tuple_output=self._tuple_output)

    @staticmethod
    def _set_forward(module: Any, forward: Any) -> None:
        """Override a module's forward (instance attribute), or restore its own with None."""
        set_forward(module, forward)

    def _block_returns_tuple(self) -> bool:
        """Whether this architecture's blocks return a tuple (BERT) or a tensor (Llama)."""
        import torch

        seen: list[bool] = []
        hook = self.handle.blocks[0].register_forward_hook(
            lambda m, i, out: seen.append(isinstance(out, tuple))
        )
        try:
            self.handle.forward(torch.zeros(1, 2, dtype=torch.long))
        finally:
            hook.remove()
        return seen[0]

    # ------------------------------------------------------------------ internals

    @property
    def fitness_metric(self) -> str:
        """The metric ``Result.fitness`` is (see presso.evaluation.METRICS): ``kl`` or ``cos_dist``."""
        return fitness_metric(self.handle.kind)

    @property
    def heldout_metrics(self) -> tuple[str, ...]:
        """The metrics :meth:`heldout` returns, the one to compare candidates by first."""
        return heldout_metrics(self.handle.kind)

    def _divergence(
        self, ref: torch.Tensor, output: torch.Tensor, ids: torch.Tensor
    ) -> tuple[float, int, float]:
        """Summed divergence over tokens, the token count, and (causal LM) the summed
        next-token negative log-likelihood of the windows ``ids`` — from the same log-softmax
        as the KL, which is the costly part over a large vocabulary (0 for encoders)."""
        import torch

        if self.handle.kind == "causal-lm":
            logq = torch.log_softmax(output.float(), dim=-1)
            kl = (ref.exp() * (ref - logq)).sum(-1)
            nll = -logq[:, :-1].gather(-1, ids[:, 1:, None].to(logq.device)).sum()
            return float(kl.sum()), kl.numel(), float(nll)
        cos = torch.nn.functional.cosine_similarity(ref, output.float(), dim=-1)
        return float((1 - cos).sum()), cos.numel(), 0.0

    def _forward_reusing(self, config: Config, batch: tuple[int, ...]) -> torch.Tensor:
        """Forward ``batch`` under ``config``, starting after the deepest cached block."""
        blocks = self.handle.blocks
        keys = [(batch, tuple(config[: self._prefix_end[b]])) for b in range(len(blocks))]
        start, cached = 0, None
        for b in range(len(blocks) - 1, -1, -1):
            cached = self._cache.get(keys[b])
            if cached is not None:
                start = b + 1
                break
        hooks = []
        names = self.handle.block_names()
        for b in range(start):  # skipped: return the cached output of block start-1
            self._set_forward(blocks[b], lambda *args, _out=cached, **kwargs: _out)
        for b in range(start, len(blocks)):
            hooks.append(
                blocks[b].register_forward_hook(
                    lambda m, i, out, _k=keys[b]: self._cache.put(_k, out)
                )
            )
        try:
            output = self.handle.forward(self.data.calibration[list(batch)])
        finally:
            for b in range(start):  # back to its own forward, or to being dropped
                skip = self._skip_for(names[b]) if names[b] in (self._dropped or ()) else None
                self._set_forward(blocks[b], skip)
            for h in hooks:
                h.remove()
        self.blocks_reused += start
        self.blocks_run += len(blocks) - start
        return output
