"""The ONNX Runtime backend: each level timed with the kernel an ORT deployment would run.

* dense: ORT's fp32 ``MatMul``;
* 2..8 bits: ``com.microsoft.MatMulNBits`` holding real RTN codes (a seeded random weight, the
  same one the torch backend times). ORT 1.32's CPU kernel runs 2, 4 and 8 bits; 3 bits run in
  the 4-bit layout and 5..7 in the 8-bit one (``carrier_bits`` in ``detail``). Groups must be
  powers of two >= 16 columns wide, or multiples of one (see :mod:`presso.onnx_model`);
* sparsity: ORT has no unstructured-sparse GEMM on CPU, so a pruned layer runs the dense
  ``MatMul`` of the pruned weight (``detail["kernel"] == "dense"``, "no sparse kernel").

Whole candidates are written by :func:`presso.onnx_model.build_onnx` (dropped blocks absent)
and timed one ``InferenceSession.run`` at a time: prefill is one forward of ``batch × seq_len``
tokens; decode is one token per sequence against a KV cache of ``seq_len`` tokens (the cache is
an input, so every repeat sees the same length).

Threads: ``intra_op_num_threads = threads`` when given, else 1 (ORT's own default takes every
core, which makes timings on a shared machine swing and differ from the single-thread tables
the cost models are fitted on).

``accuracy_level`` is MatMulNBits' compute type. The default, 4, quantizes the activations to
int8 per block: the path ORT's CPU deployments use, and the only fast one for 2 and 8 bits (at
level 0, fp32 compute, ORT 1.32 on an AVX2 CPU ran 2- and 8-bit layers ~100x slower than the
dense MatMul at one row, while 4 bits had a packed fp32 kernel). Level 0 is what
:func:`presso.onnx_model.build_onnx` writes by default, since only it reproduces presso's
evaluator exactly; give ``accuracy_level=0`` to time that. The level is part of
:meth:`versions`, so the two are stored apart in the profile database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.paths import cache_dir, digest
from presso.profilers._base import (
    DENSE_BITS,
    SEED,
    LinearOp,
    Measurement,
    Profiler,
    Workload,
    op_weight_copies,
    register,
)

if TYPE_CHECKING:
    import numpy as np

    from presso.models import ModelHandle
    from presso.plan import Plan

#: keeping_builds: at most this many bytes of kept graphs, and never below this much free disk.
KEPT_BYTES = 16 << 30
DISK_RESERVE = 4 << 30


def _check_level(where: str, bits: int, sparsity: int) -> None:
    if not (2 <= bits <= 8 or bits >= DENSE_BITS) or not 0 <= sparsity <= 99:
        raise PressoError(
            f"{where}: level w{bits}-s{sparsity} cannot be run: bits must be 2..8 "
            f"(or {DENSE_BITS} for dense) and sparsity a percent in 0..99"
        )


@register
class OnnxRuntimeProfiler(Profiler):
    """ONNX Runtime's CPU (or CUDA) execution provider; see the module docstring."""

    name = "onnxruntime"
    requires = ("onnxruntime", "onnx")
    extra = "onnx"

    def __init__(self, *, accuracy_level: int = 4, **options: Any) -> None:
        super().__init__(**options)
        if self.device not in ("cpu", "cuda"):
            raise PressoError(
                f"onnxruntime profiler: device must be 'cpu' or 'cuda', not {self.device!r}"
            )
        if accuracy_level not in (0, 1, 2, 3, 4):
            raise PressoError(
                f"onnxruntime profiler: accuracy_level must be 0..4, got {accuracy_level}"
            )
        self.accuracy_level = accuracy_level
        from presso.onnx_model import execution_providers

        execution_providers(self.device)  # no CUDA provider: say so now, not after a build
        # RTN levels of a model's units, kept across candidates: validation assembles many
        # candidates of one model, and quantizing 200 layers costs more than building the graph.
        self._levels: dict[tuple, Any] = {}
        # Inside keeping_builds: the folder of kept graphs, and how long each took to build.
        self._kept: Path | None = None
        self._build_s: dict[str, float] = {}

    def _weights(self, handle: ModelHandle, group_size: int | None) -> Any:
        from presso.compress import QuantSpec, quantize_rtn

        def weight(unit: str, bits: int) -> Any:
            key = (handle.identity, unit, bits, group_size)
            if key not in self._levels:
                spec = QuantSpec(bits=bits, group_size=group_size)
                self._levels[key] = quantize_rtn(handle.dense_weight(unit), spec)
            return self._levels[key]

        return weight

    def runtime_options(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "threads": self.threads or 1,
            "accuracy_level": self.accuracy_level,
        }

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "accuracy_level": str(self.accuracy_level)}

    @contextmanager
    def keeping_builds(self) -> Iterator[None]:
        # Writing a candidate's graph (quantized weights, MatMulNBits packing) costs more than
        # loading a written one: SmolLM2-135M decode, 3 rounds, 13.1 s a candidate rebuilt
        # every round, 8.8 s built once (experiments/benchmarks/interleaved.py).
        # The files (0.1-0.5 GB per candidate of SmolLM2-135M, its fp32 embedding alone 113 MB)
        # live in presso's cache folder, not /tmp, which may be memory, and go when the block
        # ends (after a kill: at the next block, _sweep_kept_builds); _room_to_keep caps them.
        if self._kept is not None:
            yield
            return
        _sweep_kept_builds()
        prefix = f"{_KEPT_PREFIX}{os.getpid()}-"
        with tempfile.TemporaryDirectory(prefix=prefix, dir=cache_dir()) as tmp:
            self._kept, self._build_s = Path(tmp), {}
            try:
                yield
            finally:
                self._kept, self._build_s = None, {}

    def _room_to_keep(self) -> bool:
        """Whether one more graph may be kept: the kept ones stay under KEPT_BYTES in all and
        leave the disk DISK_RESERVE free (a 1B-parameter model's graphs take GBs each). A
        graph that may not is timed as outside keeping_builds, and rebuilt when met again."""
        assert self._kept is not None
        sizes = {}
        for f in filter(Path.is_file, self._kept.iterdir()):  # NAME.onnx and NAME.onnx.data
            stem = f.name.split(".", 1)[0]
            sizes[stem] = sizes.get(stem, 0) + f.stat().st_size
        next_one = max(sizes.values(), default=0)  # the next graph: as big as the largest so far
        free = shutil.disk_usage(self._kept).free
        return sum(sizes.values()) + next_one <= KEPT_BYTES and free - next_one >= DISK_RESERVE

    def _session(self, model: Any) -> Any:
        from presso.onnx_model import make_session

        return make_session(model, threads=self.threads or 1, device=self.device)

    # ------------------------------------------------------------------ ops

    def _time_op(self, op: LinearOp, workload: Workload) -> Measurement:
        import torch

        from presso.compress import magnitude_prune
        from presso.onnx_model import linear_model
        from presso.profilers._torch import quantized_level

        _check_level(op.key, op.bits, op.sparsity)
        gen = torch.Generator().manual_seed(SEED)
        x = torch.randn(workload.rows, op.in_features, generator=gen).numpy()
        detail: dict[str, Any] = {}
        copies = op_weight_copies(op)
        weight = torch.randn(op.out_features, op.in_features, generator=gen) * 0.02
        if op.bits < DENSE_BITS:
            level = quantized_level(weight, op.bits, op.sparsity, op.group_size)
        else:
            level = magnitude_prune(weight, op.sparsity).weight if op.sparsity else weight
        # Distinct weights: a layer in a model is read from memory, and ORT shares equal ones.
        levels = [_rolled(level, i) for i in range(copies)]
        if op.bits < DENSE_BITS:
            detail["kernel"] = "MatMulNBits"
            detail["accuracy_level"] = self.accuracy_level
        else:
            detail["kernel"] = "dense"
        if op.sparsity:
            detail.update(sparsity_exploited=False, note="no sparse kernel in onnxruntime")
        model, facts = linear_model(levels, accuracy_level=self.accuracy_level)
        detail.update({k: v for k, v in facts.items() if k != "bits"})
        session = self._session(model.SerializeToString())
        feed = {"x": x}
        return self._timed(
            lambda: session.run(None, feed), op=op.key, workload=workload, calls=copies, **detail
        )

    # ------------------------------------------------------------------ models

    def _time_model(self, handle: ModelHandle, plan: Plan, workload: Workload) -> Measurement:
        from presso.runtimes._base import Levels
        from presso.runtimes._onnxruntime import build, load

        decode = workload.phase == "decode"
        # The graph depends on the model, the assignment and whether it has a KV cache.
        name = digest([handle.identity, plan.digest(), decode])
        keep = self._kept is not None and (name in self._build_s or self._room_to_keep())
        options = self.runtime_options()
        with contextlib.ExitStack() as stack:
            if keep:
                folder = self._kept
            else:
                folder = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="presso-ort-"))
                )
            path = folder / f"{name}.onnx"
            build_s = self._build_s.get(name) if keep else None
            if build_s is None:
                start = time.perf_counter()
                levels = Levels(quantized=self._weights(handle, plan.group_size))
                runtime = build(handle, plan, levels, **options, kv_cache=decode, path=path)
                build_s = time.perf_counter() - start
                if keep:
                    self._build_s[name] = build_s
            else:
                runtime = load(path, handle.kind, device=self.device, threads=options["threads"])
        # The session as the runtime built it, fed a seeded prompt (prefill) or one token per
        # sequence against a seeded KV cache of seq_len tokens (decode): only the logits are
        # fetched, as a deployment's sampler reads them (an encoder's: its last hidden states).
        session = runtime.session
        output = session.get_outputs()[0].name
        feed = _model_inputs(session, handle, workload)
        carried = {
            u: f["carrier_bits"]
            for u, f in runtime.detail["units"].items()
            if f.get("carrier_bits", 0) != f.get("bits", 0)
        }
        return self._timed(
            lambda: session.run([output], feed),
            op="model",
            workload=workload,
            build_s=round(build_s, 3),
            dropped=list(plan.dropped),
            carried=carried,
            accuracy_level=self.accuracy_level,
        )


_KEPT_PREFIX = "ort-builds-"


def _sweep_kept_builds() -> None:
    """Remove kept-graph folders left by processes that are gone (killed inside
    keeping_builds: their folders hold GBs nobody will read). Folders are named
    ``ort-builds-PID-…``; one whose process still runs (or is not ours to ask) is left."""
    for folder in cache_dir().glob(f"{_KEPT_PREFIX}*"):
        pid = folder.name.removeprefix(_KEPT_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive, another user's


def _rolled(level: Any, i: int) -> Any:
    """Copy ``i`` of a weight (a tensor or a QuantizedWeight): its rows rolled by ``i`` and,
    past the last row, its columns by whole quantization groups — the same values (and RTN
    codes) in other places, distinct for ``rows x groups`` copies, for the price of a copy
    (a fresh random weight and its RTN took ~1/3 of timing a layer over 512 copies)."""
    import torch

    rows = level.shape[0]
    down, across = i % rows, i // rows
    if isinstance(level, torch.Tensor):
        return torch.roll(level, (down, across), (0, 1))
    groups = level.scales.shape[1]
    if groups == 1:  # per channel: one grid a row, which any column shift keeps
        cols, grid_cols = across, 0
    else:  # whole groups, so that every code keeps its group's grid
        cols, grid_cols = across * (level.shape[1] // groups), across
    return dataclasses.replace(
        level,
        codes=torch.roll(level.codes, (down, cols), (0, 1)),
        scales=torch.roll(level.scales, (down, grid_cols), (0, 1)),
        zeros=torch.roll(level.zeros, (down, grid_cols), (0, 1)),
    )


def _model_inputs(session: Any, handle: ModelHandle, workload: Workload) -> dict[str, np.ndarray]:
    """Seeded token ids for this workload and, for decode, a KV cache of ``seq_len`` tokens."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    vocab = handle.model.config.vocab_size
    tokens = 1 if workload.phase == "decode" else workload.seq_len
    feed = {"input_ids": rng.integers(0, vocab, (workload.batch, tokens), dtype=np.int64)}
    for arg in session.get_inputs():
        if arg.name.startswith("past_"):
            _, kv_heads, _, head_dim = arg.shape
            shape = (workload.batch, kv_heads, workload.seq_len, head_dim)
            feed[arg.name] = rng.standard_normal(shape, dtype=np.float32)
    return feed
