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
from presso.paths import digest
from presso.search._base import Request, Result
from presso.spaces._depth import DROPPED

if TYPE_CHECKING:
    import torch

    from presso.data import CalibrationData
    from presso.leveldb import LevelDatabase
    from presso.models import ModelHandle
    from presso.spaces import Config, SearchSpace

#: Level values at or above this many bits mean "leave the unit dense".
DENSE_BITS = 16


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

    dbs: the level database of each kind of dimension that needs one (``bits``, ``sparsity``);
        a unit with both a bits and a sparsity dimension takes its sparse level and rounds
        the kept weights to its bits (round-to-nearest, on the fly; pruned weights stay zero).
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
        missing = {d.kind for d in space.dims if d.kind != "depth"} - set(dbs)
        if missing:
            raise ValueError(f"no level database for {sorted(missing)} dimensions")
        dims_blocks = [handle.block_of(d.target) for d in space.dims]
        if dims_blocks != sorted(dims_blocks):
            raise ValueError("space dimensions must follow the model's block order")
        # Per unit: the dimension index of each kind that sets it.
        self._unit_dims: dict[str, dict[str, int]] = {}
        for i, d in enumerate(space.dims):
            if d.kind != "depth":
                self._unit_dims.setdefault(d.target, {})[d.kind] = i
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
                self._metric: fitness,
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
        """Set every unit's weight to its levels in ``config`` (only units that changed) and
        drop the blocks or sublayers it drops."""
        self.space.validate(config)
        for unit, kinds in self._unit_dims.items():
            levels = tuple(
                sorted((k, self.space.dims[i].levels[config[i]]) for k, i in kinds.items())
            )
            if self._loaded.get(unit) != levels:
                self.handle.set_weight(unit, self._weight(unit, dict(levels)))
                self._loaded[unit] = levels
        dropped = {
            d.target
            for d, i in zip(self.space.dims, config)
            if d.kind == "depth" and d.levels[i] == DROPPED
        }
        if self._dropped is None:  # restore every depth target once, then track changes
            for d in self.space.dims:
                if d.kind == "depth":
                    self._set_forward(self.handle.module(d.target), None)
            self._dropped = set()
        for target in self._dropped - dropped:
            self._set_forward(self.handle.module(target), None)
        for target in dropped - self._dropped:
            self._set_forward(self.handle.module(target), self._skip_for(target))
        self._dropped = dropped

    def _weight(self, unit: str, levels: dict[str, float]) -> torch.Tensor:
        """The weight of ``unit`` at ``levels`` (kind -> level value)."""
        bits, sparsity = levels.get("bits", DENSE_BITS), levels.get("sparsity", 0)
        if sparsity == 0:
            if bits >= DENSE_BITS:
                return self.handle.dense_weight(unit)
            return self.dbs["bits"].weight(unit, int(bits))
        sparse = self.dbs["sparsity"].weight(unit, int(sparsity))
        if bits >= DENSE_BITS:
            return sparse
        from presso.compress import QuantSpec, quantize_rtn

        op = self.dbs["bits"].operator
        spec = QuantSpec(bits=int(bits), group_size=op.group_size, symmetric=op.symmetric)
        return quantize_rtn(sparse, spec).dequantize() * (sparse != 0)

    def _skip_for(self, target: str) -> Any:
        """A forward that makes module ``target`` (a block, its attention or its MLP) a no-op
        on the residual stream: a block passes its input through, a sublayer adds zero."""
        if target in self.handle.block_names():
            tuple_output = self._tuple_output

            def skip_block(*args: Any, **kwargs: Any) -> Any:
                hidden = args[0] if args else kwargs["hidden_states"]
                return (hidden,) if tuple_output else hidden

            return skip_block
        if target.endswith("self_attn"):

            def skip_attention(*args: Any, **kwargs: Any) -> Any:
                import torch

                hidden = args[0] if args else kwargs["hidden_states"]
                return torch.zeros_like(hidden), None

            return skip_attention

        def skip_mlp(x: Any, *args: Any, **kwargs: Any) -> Any:
            import torch

            return torch.zeros_like(x)

        return skip_mlp

    @staticmethod
    def _set_forward(module: Any, forward: Any) -> None:
        """Override a module's forward (instance attribute), or restore its own with None."""
        if forward is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = forward

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
    def _metric(self) -> str:
        return "kl" if self.handle.kind == "causal-lm" else "cos_dist"

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


def make_evaluator(spec: dict[str, Any]) -> Evaluator:
    """Build an evaluator from a plain-data spec (what a Ray actor receives)."""
    from presso.experiment import Setup

    setup = Setup.from_spec(spec)
    if spec.get("build"):
        # A cluster node that does not share the driver's disk: it builds the levels and the
        # dense reference in its own cache, from the same content address, once per node (the
        # lock keeps the node's other workers from building the same files meanwhile).
        import fcntl

        setup.cache_root.mkdir(parents=True, exist_ok=True)
        with open(setup.cache_root / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            setup.prepare_scoring()
    return setup.evaluator()
