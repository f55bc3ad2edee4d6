"""What a profiler measures, and the one interface every backend implements.

A measurement is of one *op* — a linear layer of shape ``out × in`` at a compression level
(bits, sparsity) — under one *workload* (batch, sequence length, prefill or decode), or of a
whole assembled candidate. Timing is real: the backend runs the kernel a deployment would
use for that level (a packed low-bit GEMM, a sparse GEMM, the dense one when the backend has
nothing better), never fake-quantised fp32 weights. A level the backend cannot run comes
back as a failed :class:`Measurement` (``median_ms is None``, ``error`` says why): failure is
data, as in TVM's ``RunnerResult``.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from presso.errors import MissingExtraError, PressoError
from presso.registry import Registry
from presso.spaces._bits import DENSE_BITS, GROUP_SIZE, BitsKind
from presso.spaces._sparsity import SparsityKind

if TYPE_CHECKING:
    from presso.plan import Plan
    from presso.runtimes import Runtime

#: The fewest timed runs of a measurement over weight copies (see Profiler._timed).
MIN_RUNS = 5
#: Seed of the random weights and inputs ops are timed with.
SEED = 0
PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Workload:
    """The input a latency is for.

    batch: sequences per forward. seq_len: tokens per sequence processed in this forward
    for ``prefill``; for ``decode`` one new token per sequence is processed against a KV
    cache of ``seq_len`` tokens. The GEMMs of a linear layer see ``rows`` input rows.
    """

    batch: int = 1
    seq_len: int = 128
    phase: str = "prefill"

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise PressoError(f"workload phase must be one of {PHASES}, got {self.phase!r}")
        if self.batch < 1 or self.seq_len < 1:
            raise PressoError(f"workload batch and seq_len must be >= 1, got {self}")

    @property
    def rows(self) -> int:
        """M of every linear layer's GEMM."""
        return self.batch * self.seq_len if self.phase == "prefill" else self.batch

    @property
    def key(self) -> str:
        return f"b{self.batch}-s{self.seq_len}-{self.phase}"

    @classmethod
    def parse(cls, key: str) -> Workload:
        """The inverse of :attr:`key` (``b1-s128-prefill``)."""
        try:
            b, s, phase = key.split("-")
            return cls(batch=int(b[1:]), seq_len=int(s[1:]), phase=phase)
        except (ValueError, IndexError):
            raise PressoError(
                f"workload {key!r}: expected bBATCH-sSEQ-PHASE, e.g. b1-s128-prefill"
            ) from None


@dataclass(frozen=True)
class LinearOp:
    """A linear layer ``y = x W^T`` with ``W`` of ``out_features × in_features`` at one level.

    bits: 16 means dense (fp32/fp16 as the backend runs dense); 2..8 a weight-only quantized
    layer with ``group_size`` (None: per channel). sparsity: percent of zero weights.
    """

    out_features: int
    in_features: int
    bits: int = DENSE_BITS
    sparsity: int = 0
    group_size: int | None = GROUP_SIZE

    def __post_init__(self) -> None:
        # A dense layer has no groups: one key per dense op, whatever group size was passed.
        if self.bits >= DENSE_BITS and self.group_size is not None:
            object.__setattr__(self, "group_size", None)

    @property
    def key(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"linear-{self.out_features}x{self.in_features}-w{self.bits}-s{self.sparsity}-{g}"

    @property
    def dense(self) -> bool:
        return self.bits >= DENSE_BITS and self.sparsity == 0


@dataclass
class Measurement:
    """A timed op (or a whole model). ``median_ms``/``spread_ms`` are over ``repeats`` runs after
    warm-up (spread = interquartile range); ``detail`` says which kernel ran (e.g. the packed
    width a 3-bit layer runs at). ``median_ms is None`` means it failed; ``error`` says why."""

    backend: str
    op: str
    workload: str
    median_ms: float | None
    spread_ms: float | None = None
    repeats: int = 0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.median_ms is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def levels_plan(
    units: dict[str, tuple[int, int]] | None = None,
    dropped: tuple[str, ...] = (),
    group_size: int | None = GROUP_SIZE,
) -> Plan:
    """The plan of per-unit ``(bits, sparsity)`` (as :class:`LinearOp` levels are given), the
    modules ``dropped`` and the quantization ``group_size``: a probe or a random candidate."""
    from presso.plan import Plan

    levels = {
        u: {BitsKind.name: int(b), SparsityKind.name: int(s)} for u, (b, s) in (units or {}).items()
    }
    return Plan(levels, tuple(dropped), {BitsKind.name: {"group_size": group_size}})


class Profiler(ABC):
    """A measurement backend. Subclasses set ``name``, the ``requires`` packages and the
    ``extra`` that installs them, and implement :meth:`_time_op` and :meth:`_time_model`."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def __init__(
        self,
        *,
        device: str = "cpu",
        warmup: int = 5,
        repeats: int = 25,
        threads: int | None = None,
    ) -> None:
        self.check()
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.threads = threads

    @classmethod
    def check(cls) -> None:
        """Raise a clear error when a package this backend needs is missing."""
        import importlib.util

        for package in cls.requires:
            if importlib.util.find_spec(package) is None:
                raise MissingExtraError(package, cls.extra, f"the {cls.name} profiler")

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that decide this backend's speed (part of the fingerprint)."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for package in self.requires:
            try:
                out[package] = version(package)
            except PackageNotFoundError:
                out[package] = "?"
        return out

    def measure(self, op: LinearOp, workload: Workload) -> Measurement:
        """Time ``op`` under ``workload``; never raises for a level or shape it cannot run."""
        try:
            return self._time_op(op, workload)
        except PressoError as err:
            return Measurement(self.name, op.key, workload.key, None, error=str(err))
        except Exception as err:  # noqa: BLE001 - a kernel failure is data, not a crash
            return Measurement(
                self.name, op.key, workload.key, None, error=f"{type(err).__name__}: {err}"
            )

    def runtime_options(self) -> dict[str, Any]:
        """The options this profiler builds its backend's runtime with (its device, kernels…)."""
        return {"device": self.device}

    def build(self, handle: Any, plan: Plan, levels: Any = None) -> Runtime:
        """``plan`` built on this backend's runtime as this profiler times it (see
        :func:`presso.runtimes.build`; ``levels``: where compressed weights come from)."""
        from presso.runtimes import build

        return build(self.name, handle, plan, levels, **self.runtime_options())

    def _time_runtime(
        self,
        runtime: Runtime,
        vocab: int,
        workload: Workload,
        sync: Callable[[], Any] = lambda: None,
        **detail: Any,
    ) -> Measurement:
        """Time one forward of ``runtime`` under ``workload`` on seeded token ids: prefill is
        one forward of ``batch x seq_len`` tokens; decode one new token per sequence against
        a KV cache of ``seq_len`` tokens, cropped back after each step so that every repeat
        sees the same length."""
        import torch

        if runtime.kind != "causal-lm" and workload.phase == "decode":
            raise PressoError(
                f"the model is an {runtime.kind}: it has no decode phase; use a prefill workload"
            )
        gen = torch.Generator().manual_seed(SEED)
        ids = torch.randint(vocab, (workload.batch, workload.seq_len), generator=gen)
        ids = ids.to(getattr(runtime, "device", "cpu"))
        run: Callable[[], Any]
        if workload.phase == "prefill":
            run = functools.partial(runtime.forward, ids)
        else:
            runtime.start(ids)
            new = ids[:, -1:].contiguous()

            def run() -> None:
                runtime.step(new)
                runtime.crop(workload.seq_len)

        return self._timed(run, op="model", workload=workload, sync=sync, **detail)

    def measure_model(self, handle: Any, plan: Plan, workload: Workload) -> Measurement:
        """Assemble ``plan`` on this backend for real and time one full forward."""
        try:
            return self._time_model(handle, plan, workload)
        except PressoError as err:
            return Measurement(self.name, "model", workload.key, None, error=str(err))
        except Exception as err:  # noqa: BLE001
            return Measurement(
                self.name, "model", workload.key, None, error=f"{type(err).__name__}: {err}"
            )

    @contextmanager
    def keeping_builds(self) -> Iterator[None]:
        """While open, a backend may keep the models it assembles for :meth:`measure_model`
        and time a later call for the same plan and workload on the kept one, without
        assembling it again: interleaved rounds time every candidate several times. Backends
        whose assembly is cheap keep nothing (this default)."""
        yield

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Run torch with ``self.threads`` intra-op threads (if set), restoring its setting
        (every backend's model timing runs torch's ops between its own kernels)."""
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @abstractmethod
    def _time_op(self, op: LinearOp, workload: Workload) -> Measurement: ...

    @abstractmethod
    def _time_model(self, handle: Any, plan: Plan, workload: Workload) -> Measurement: ...

    def _timed(
        self,
        run: Callable[[], Any],
        *,
        op: str,
        workload: Workload,
        sync: Callable[[], Any] = lambda: None,
        calls: int = 1,
        **detail: Any,
    ) -> Measurement:
        """Warm up, then time ``run`` ``repeats`` times; median and interquartile range in ms,
        per call when one ``run`` makes ``calls`` calls (over distinct weight copies).

        ``warmup`` and ``repeats`` count calls: a run over 228 copies is 228 timed calls, so
        it is repeated only until ``repeats`` calls are timed, and at least MIN_RUNS times
        (never more than ``repeats``) for a median and a spread over runs. Timing a 1536x576
        prefill layer over its 228 copies 25 times took 19 of the 27 s it cost on ONNX
        Runtime, with each run already the mean of 228 calls."""
        warmup = min(self.warmup, max(1, math.ceil(self.warmup / calls)))
        repeats = min(self.repeats, max(MIN_RUNS, math.ceil(self.repeats / calls)))
        for _ in range(warmup):
            run()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            sync()
            times.append((time.perf_counter() - start) * 1e3 / calls)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        if calls > 1:
            detail["copies"] = calls
        return Measurement(
            self.name,
            op,
            workload.key,
            statistics.median(times),
            q[2] - q[0],
            len(times),
            detail=detail,
        )


def op_weight_copies(op: LinearOp) -> int:
    """:func:`weight_copies` for ``op``'s weights as the CPU backends hold them: 4-bit
    containers up to 4 bits, bytes up to 8, fp32 dense."""
    carrier = 4 if op.bits <= 4 else 8 if op.bits < DENSE_BITS else 32
    return weight_copies(op.out_features * op.in_features * carrier / 8)


def weight_copies(nbytes: float, *, cap: int = 512) -> int:
    """How many distinct copies of a layer's weights (``nbytes`` each) an op timing cycles
    through: enough to overflow twice the last-level cache. Inside a model a layer's weights
    come from memory — every other layer ran since its last call — so timing one weight over
    and over (served from cache) makes memory-bound decode GEMVs look several times cheaper
    and hides what fewer bits save."""
    return max(1, min(cap, math.ceil(2 * last_level_cache_bytes() / max(nbytes, 1.0))))


def last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs; 32 MiB where it cannot be read)."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=32 * 2**20)


#: Profilers by backend name.
PROFILERS: Registry[type[Profiler]] = Registry("backend", error=PressoError)


def register(cls: type[Profiler]) -> type[Profiler]:
    return PROFILERS.register(cls)


def available() -> list[str]:
    return PROFILERS.available()


def profiler_class(name: str) -> type[Profiler]:
    return PROFILERS.get(name)


def make_profiler(name: str, **options: Any) -> Profiler:
    return PROFILERS.make(name, **options)
