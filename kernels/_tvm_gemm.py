"""Weight-only low-bit GEMM for the CPU, written in TensorIR and tuned with TVM's meta_schedule.

``y[M, N] = x[M, K] · dequant(W)[N, K]^T`` with fp32 activations ``x`` and output ``y``. Three
kernels share one calling convention (all tensors C-contiguous, on the CPU):

* ``dense`` (bits 16): ``w`` float32 ``[N, K]`` — the baseline, compiled and tuned the same way;
* ``int8`` (bits 8): ``codes`` uint8 ``[N, K]`` plus ``scales``, ``zeros`` float32
  ``[N, K / group_size]``; ``W[n, k] = scales[n, k // g] * (codes[n, k] - zeros[n, k // g])``,
  the grid of :mod:`presso.compress._quant` (zeros in code units);
* ``int4`` (bits 4): the same grid with 4-bit codes, two per byte along K — ``packed`` uint8
  ``[N, K / 2]`` where byte ``packed[n, i]`` holds code ``k = 2i`` in its **low** nibble (bits 0–3)
  and code ``k = 2i + 1`` in its **high** nibble (bits 4–7): ``packed = c[2i] | (c[2i+1] << 4)``.
  This is the order of ONNX Runtime's MatMulNBits; :func:`pack_int4` / :func:`unpack_int4`.

The schedules are presso's own (see "the design space" below): a register-resident
dequantize-and-multiply for decode rows and a BLIS-style panel GEMM for prefill, with a handful of
knobs (tile sizes, unrolling) left as sampled decisions. meta_schedule's generic llvm rules were
used before; with a few dozen trials they reached 7-12x less than torch at M = 256, and a hand-
written space needs no large search to be fast.

Threads: TVM's pool may hold every core this process may use (TVM otherwise caps it at half
the CPUs: one, on this machine); :func:`set_threads` sizes it per use (the tvm profiler: to
its ``threads``, as ``--threads`` does for torch and ONNX Runtime), and idle workers sleep at
once. Measured with ``presso generate`` (SmolLM2-135M, 2 threads, decode tokens/s): workers
that spin 1000 yields or more before sleeping ran at 4-8 tokens/s, sleeping ones at 16-25
(``experiments/benchmarks/generate.py``, design d5: 27.7 against TVM's default 7.1) — a
spinning TVM worker takes a core from torch's threads, which run every op between two linears.

Tuning runs meta_schedule over that space for a bounded number of ``trials`` with a
builder and a runner that work inside this process: meta_schedule's ``LocalBuilder`` starts fresh
worker processes for every batch, and each imports TVM (10–50 s on this machine) before
building anything. Candidates are timed with every argument but ``x`` flushed from the caches,
as a model's layers meet their weights (a schedule that is fastest hot can be 1.5-2x slower
cold). Only the x86 tensor intrinsics are registered (importing all of them loads
the CUDA ones, 40–50 s). The best schedule's trace is kept as JSON text in the
tuning-record store the caller gives (presso's profilers pass their
:class:`~presso.profilers.ProfileDatabase`: an artifact keyed by kernel, shape, group size and
target), so a second :func:`compile_gemm` on the same machine compiles that schedule without
tuning; compiled kernels are also cached in-process.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from presso.errors import MissingExtraError, PressoError

if TYPE_CHECKING:
    import torch


class TuningRecords(Protocol):
    """Where tuning records are kept across processes (presso's ProfileDatabase is one):
    text artifacts by (machine fingerprint, backend, key). Kernels import nothing above them,
    so they name the store by what they call on it."""

    path: Path

    def get_artifact(self, fingerprint: str, backend: str, key: str) -> str | None: ...

    def put_artifact(self, fingerprint: str, backend: str, key: str, value: str) -> None: ...


#: The profile-database backend name under which tuning records are stored.
BACKEND = "tvm"
#: Kernel name by weight bits: 4 → int4, 8 → int8, 16 → dense fp32.
KERNELS = {4: "int4", 8: "int8", 16: "dense"}

#: The design space's version, part of every tuning record's key: a record holds a schedule's
#: trace, which only replays on the TensorIR and design space it was tuned on (and was chosen
#: by how candidates were timed: since d5, with the weights cold).
DESIGN = "d5"
#: Yields an idle TVM worker spins before it sleeps (``TVM_THREAD_POOL_SPIN_COUNT``, unless the
#: user set it). Measured end to end (``presso generate``, see the module docstring).
SPIN_COUNT = 0
#: How many times a tuning search ran in this process (tests check that a cached shape does not).
TUNING_RUNS = {"count": 0}


# --------------------------------------------------------------------------- torch side


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes ``[N, K]`` in ``0..15`` (K even) into ``[N, K / 2]`` bytes: code ``2i``
    in the low nibble, code ``2i + 1`` in the high nibble of byte ``i``."""
    import torch

    if codes.dim() != 2 or codes.shape[1] % 2:
        raise PressoError(f"pack_int4: codes must be [N, K] with K even, got {tuple(codes.shape)}")
    if codes.dtype != torch.uint8 or (codes.numel() and int(codes.max()) > 15):
        raise PressoError("pack_int4: codes must be uint8 values in 0..15")
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: uint8 codes ``[N, 2 * packed.shape[1]]``."""
    import torch

    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def reference_gemm(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int | None,
) -> torch.Tensor:
    """``x [M, K] · (scales * (codes - zeros))^T`` in float32 — the numerics every kernel must
    match. ``codes`` unpacked uint8 ``[N, K]``; ``group_size`` None means one group per row."""
    n, k = codes.shape
    g = k if group_size is None else group_size
    w = (codes.float().view(n, k // g, g) - zeros.unsqueeze(-1)) * scales.unsqueeze(-1)
    return x.float() @ w.view(n, k).T


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class GemmShape:
    """One kernel instance: ``M`` rows of ``x``, ``N`` outputs, ``K`` inputs, weight ``bits``
    (4, 8, or 16 for dense fp32) and ``group_size`` input columns per grid (None: per row)."""

    m: int
    n: int
    k: int
    bits: int
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in KERNELS:
            raise PressoError(
                f"TVM GEMM: no kernel for {self.bits}-bit weights; kernels exist for "
                f"{sorted(KERNELS)} (run 2-3 bits in int4 and 5-7 bits in int8)"
            )
        if min(self.m, self.n, self.k) < 1:
            raise PressoError(f"TVM GEMM: M, N, K must be >= 1, got {self}")
        if self.bits < 16 and self.k % self.group:
            raise PressoError(
                f"TVM GEMM: group_size {self.group_size} does not divide K = {self.k}; "
                "choose a group size that divides the layer's in_features"
            )
        if self.bits == 4 and self.k % 2:
            raise PressoError(f"TVM GEMM: int4 packs two codes per byte, K = {self.k} is odd")

    @property
    def kernel(self) -> str:
        return KERNELS[self.bits]

    @property
    def group(self) -> int:
        return self.k if self.group_size is None else self.group_size

    @property
    def key(self) -> str:
        g = "na" if self.bits == 16 else f"g{self.group}"
        return f"gemm-{self.kernel}-m{self.m}-n{self.n}-k{self.k}-{g}-{DESIGN}"

    def weight_shapes(self) -> list[tuple[tuple[int, ...], str]]:
        """``(shape, dtype)`` of the weight arguments after ``x``, in call order."""
        if self.bits == 16:
            return [((self.n, self.k), "float32")]
        codes = (self.n, self.k // 2) if self.bits == 4 else (self.n, self.k)
        grid = (self.n, self.k // self.group)
        return [(codes, "uint8"), (grid, "float32"), (grid, "float32")]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight arguments: what one call reads besides ``x``."""
        size = {"uint8": 1, "float32": 4}
        return sum(math.prod(s) * size[t] for s, t in self.weight_shapes())


# --------------------------------------------------------------------------- TVM side


def _tvm() -> Any:
    _configure_threads()
    try:
        import tvm
    except ImportError:
        raise MissingExtraError("tvm", "tvm", "the TVM GEMM kernels") from None
    if _POOL["asked"] is None:
        _size_pool(_env_threads())
    return tvm


def _cores() -> int:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(cores or 1)


#: TVM's thread pool as presso last sized it: the count asked for and the count it has (the
#: pool never exceeds the cap it was made with). None: not yet in this process.
_POOL: dict[str, int | None] = {"asked": None, "threads": None}


def _configure_threads() -> None:
    """TVM's thread pool settings, before the pool exists (a user's own values are kept).

    * At most every core this process may use: TVM assumes two hyperthreads per core and
      otherwise caps the pool at half the CPUs — on this 2-core machine one thread. The cap
      is fixed when the pool is made; :func:`set_threads` sizes the pool within it.
    * No pinning: a pinned worker that spins idle after a kernel holds its core, and the
      torch or ONNX Runtime threads that run next share the other one (torch ran 2.6x slower
      for its first calls after a TVM kernel).
    * Idle workers spin for at most SPIN_COUNT yields (TVM's default, 300000, is tenths of a
      second): in a model, torch's threads run the ops between two linears and an idle TVM
      worker spinning all that time takes a core from them (decode ran at a third of the
      speed, see :data:`SPIN_COUNT`). TVM reads it once, when its first worker starts.
    """
    import os

    os.environ.setdefault("TVM_NUM_THREADS", str(_cores()))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))


def _env_threads() -> int:
    import os

    raw = os.environ["TVM_NUM_THREADS"]
    if not raw.strip().isdigit() or int(raw) < 1:
        raise PressoError(
            f"TVM_NUM_THREADS={raw!r} in the environment is not a thread count: "
            "set it to a whole number >= 1, or unset it to use every core"
        )
    return int(raw)


def _size_pool(wanted: int) -> int:
    import tvm_ffi

    if tvm_ffi.get_global_func("runtime.NumThreads")() != wanted:
        # Mode 0: no affinity change. The pool never exceeds the cap it was made with.
        tvm_ffi.get_global_func("runtime.config_threadpool")(0, wanted)
    now = int(tvm_ffi.get_global_func("runtime.NumThreads")())
    _POOL["asked"], _POOL["threads"] = wanted, now
    return now


def set_threads(threads: int | None = None) -> int:
    """Run TVM's parallel loops on ``threads`` threads (None: ``TVM_NUM_THREADS`` if set, else
    every core this process may use); the count the pool has now. Cheap when unchanged, so a
    caller may ask before every kernel call (the pool is per process, shared by all callers)."""
    if threads is None:
        _configure_threads()  # TVM_NUM_THREADS: the user's, else every core
        threads = _env_threads()
    if threads == _POOL["asked"]:
        return int(_POOL["threads"])
    if threads < 1:
        raise PressoError(f"TVM threads must be >= 1, got {threads}")
    _tvm()
    return _size_pool(threads)


def tvm_threads() -> int:
    """How many threads TVM's parallel loops run on now."""
    _tvm()
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def cpu_target() -> dict[str, Any]:
    """The llvm target of this CPU as TVM 0.27 takes it (a dict; ``mcpu`` detected), with the
    threads TVM's pool runs on now as its cores: a schedule tuned on 2 threads is another
    record than one tuned on 1."""
    tvm = _tvm()
    return {
        "kind": "llvm",
        "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
        "num-cores": tvm_threads(),
    }


def _target_key(target: dict[str, Any]) -> str:
    return f"{target['kind']}-{target['mcpu']}-c{target['num-cores']}"


def _register_x86_intrinsics() -> None:
    """Make ``tvm.s_tir.tensor_intrin`` importable with only its x86 intrinsics: the package's
    ``__init__`` also loads CUDA's (40-50 s), and meta_schedule imports it on every tune."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__package__ = name
    sys.modules[name] = package
    importlib.import_module(name + ".x86")


def prim_func(shape: GemmShape) -> Any:
    """The unscheduled TensorIR function ``main(x, *weights, y)`` of ``shape``.

    int4 reduces over byte ``i`` and nibble ``h`` (``k = 2i + h``) rather than over ``k``, so
    that a vector of consecutive ``i`` reads consecutive bytes with one shift for the whole
    vector; ``x`` is regrouped to ``xe[m, h, i] = x[m, 2i + h]`` for the same reason (a
    decode-sized copy the GEMM schedule inlines again)."""
    tvm = _tvm()
    from tvm import te

    m, n, k, g = shape.m, shape.n, shape.k, shape.group
    x = te.placeholder((m, k), "float32", name="x")
    weights = [
        te.placeholder(s, dtype, name=nm)
        for (s, dtype), nm in zip(shape.weight_shapes(), ("w", "scales", "zeros"))
    ]
    if shape.bits == 4:
        packed, scales, zeros = weights
        low4 = tvm.tirx.const(15, "uint8")
        if g % 2 == 0:  # whole bytes per group: written so a vector of bytes shares one scale
            half = g // 2

            def grid(h: Any, i: Any) -> Any:
                return i // half
        else:

            def grid(h: Any, i: Any) -> Any:
                return (2 * i + h) // g

        xe = te.compute((m, 2, k // 2), lambda a, h, i: x[a, 2 * i + h], name="xe")
        w = te.compute(
            (n, 2, k // 2),
            lambda j, h, i: (
                scales[j, grid(h, i)]
                * (
                    ((packed[j, i] >> (h * 4).astype("uint8")) & low4).astype("float32")
                    - zeros[j, grid(h, i)]
                )
            ),
            name="dequant",
        )
        rh = te.reduce_axis((0, 2), name="rh")
        ri = te.reduce_axis((0, k // 2), name="ri")
        y = te.compute(
            (m, n), lambda a, j: te.sum(xe[a, rh, ri] * w[j, rh, ri], axis=[rh, ri]), name="y"
        )
    else:
        if shape.bits == 16:
            (w,) = weights
        else:
            codes, scales, zeros = weights
            w = te.compute(
                (n, k),
                lambda j, c: scales[j, c // g] * (codes[j, c].astype("float32") - zeros[j, c // g]),
                name="dequant",
            )
        r = te.reduce_axis((0, k), name="r")
        y = te.compute((m, n), lambda a, j: te.sum(x[a, r] * w[j, r], axis=r), name="y")
    return te.create_prim_func([x, *weights, y])


# --------------------------------------------------------------------------- the design space
#
# Two schedule families, chosen by M (rows of x), each with a few knobs meta_schedule samples:
#
# * decode (M <= GEMV_ROWS): every weight is used by at most a few rows, so it is dequantized in
#   registers and never stored. The reduction is split into vector lanes along K (rfactor):
#   lanes of consecutive K (bytes, for int4) are dequantized together and multiplied into
#   per-lane accumulators of every row; a final sum folds the lanes. A task accumulates its Nt
#   outputs side by side (independent FMA chains in flight, not one chain per output after
#   another). Knobs: outputs per task (Nt), unrolled lane vectors (U), and parallel or on the
#   calling thread alone: a small GEMV finishes in less time than waking a sleeping worker
#   takes (192x576 int4: 15 us alone, 28 us on 2 threads), a large one gains from a second core.
# * prefill (M > GEMV_ROWS): BLIS-style. Each parallel task owns a panel of Nt outputs,
#   dequantizes it once into a K × Nt fp32 buffer laid out so Nt outputs are contiguous, and
#   runs an Mt × Nt register-blocked micro-kernel over it (Nt/16 AVX-512 vectors × Mt rows of
#   accumulators, one broadcast of x per row and K step). The dequantization is amortized over
#   all M rows. The dense kernel copies its panel the same way. Knobs: (Mt, Nt), K unroll,
#   vectorized or scalar panel fill.

GEMV_ROWS = 8
_PANELS = ((8, 32), (4, 64), (16, 16), (8, 16), (4, 32))  # (Mt, Nt): <= 16 accumulators
_TASK_OUTPUTS = (4, 8, 2, 1)  # decode: outputs per task, accumulated side by side
_ACCUMULATORS = 16  # decode: at most this many accumulator vectors per task
_UNROLLS = (1, 2, 4)


def design_spaces(sch: Any, shape: GemmShape, default: bool = False) -> list[Any]:
    """``shape``'s design space as meta_schedule takes it: one schedule per structural choice
    (copies of ``sch``), each with its numeric knobs left as sampled decisions that a replay
    of its trace re-draws. ``default``: only the untuned schedule — the first structural
    choice with every decision at its first option."""
    if shape.m <= GEMV_ROWS:
        spaces = []
        for parallel in (True,) if default else (True, False):
            space = sch.copy()
            _schedule_decode(space, shape, parallel, default)
            spaces.append(space)
        return spaces
    panels = [(mt, nt) for mt, nt in _PANELS if shape.m % mt == 0 and shape.n % nt == 0]
    panels = panels or [(_largest_divisor(shape.m, 16), _largest_divisor(shape.n, 64))]
    spaces = []
    for panel in panels[:1] if default else panels:
        for vector_fill in (True,) if default else (True, False):
            space = sch.copy()
            _schedule_prefill(space, shape, panel, vector_fill, default)
            spaces.append(space)
    return spaces


def _choose(sch: Any, options: list[int], default: bool) -> Any:
    """A decision among ``options`` (ints), recorded in the trace so that a replay re-draws it
    (the first option if ``default``); used directly as a split factor."""
    if len(options) == 1:
        return options[0]
    return sch.sample_categorical(
        options, [1 / len(options)] * len(options), decision=0 if default else None
    )


def _dividing(options: Any, length: int) -> list[int]:
    return [o for o in options if length % o == 0] or [1]


def _lanes(*lengths: int) -> int:
    """The widest vector (16 fp32 lanes: one AVX-512 register) that divides every length."""
    return next(v for v in (16, 8, 4, 2, 1) if all(n % v == 0 for n in lengths))


def _schedule_decode(sch: Any, shape: GemmShape, parallel: bool, default: bool) -> None:
    y = sch.get_sblock("y")
    if shape.bits < 16:
        sch.compute_inline(sch.get_sblock("dequant"))
    if shape.bits == 4:
        a, j, _, r = sch.get_loops(y)  # (rows, outputs, nibble, bytes)
        length, lanes = shape.k // 2, _lanes(shape.k // 2, shape.group // 2)
    else:
        a, j, r = sch.get_loops(y)
        length = shape.k
        lanes = _lanes(shape.k, shape.group) if shape.bits == 8 else _lanes(shape.k)
    unroll = _choose(sch, _dividing(_UNROLLS, length // lanes), default)
    # Accumulators (outputs x rows vectors) stay within half of AVX-512's 32 registers.
    fit = [o for o in _TASK_OUTPUTS if o * shape.m <= _ACCUMULATORS] or [1]
    outputs = _choose(sch, _dividing(fit, shape.n), default)
    ro, ru, ri = sch.split(r, [None, unroll, lanes])
    rf = sch.rfactor(ri, 2)  # y_rf[a, j, lane]: one accumulator vector per row and output
    loops = sch.get_loops(rf)
    jo, ji = sch.split(loops[1], [None, outputs])
    reductions = loops[2:-1]  # (h,) K-steps, unrolled K-steps
    lane = loops[-1]
    # The task's outputs innermost, unrolled: one output's K steps are a chain of dependent
    # FMAs (latency-bound: 576x576 int4 33 us), several outputs' chains interleave (23 us).
    sch.reorder(jo, *reductions, ji, loops[0], lane)
    if parallel:
        sch.parallel(jo)
    sch.unroll(reductions[-1])
    sch.unroll(ji)
    sch.unroll(loops[0])
    sch.vectorize(lane)
    sch.reverse_compute_at(y, jo)  # fold the lanes once the task's outputs are accumulated
    sch.cache_write(rf, 0, "local")  # the accumulators live in registers
    sch.decompose_reduction(rf, reductions[0])


def _schedule_prefill(
    sch: Any, shape: GemmShape, panel_shape: tuple[int, int], vector_fill: bool, default: bool
) -> None:
    rows, outputs = panel_shape
    y = sch.get_sblock("y")
    if shape.bits == 4:
        sch.compute_inline(sch.get_sblock("xe"))
        panel = sch.get_sblock("dequant")
        sch.transform_layout(panel, ("write", 0), lambda j, h, i: (j // outputs, i, h, j % outputs))
        a, j, rh, r = sch.get_loops(y)
        length = shape.k // 2
    else:
        panel = sch.get_sblock("dequant") if shape.bits == 8 else sch.cache_read(y, 1, "global")
        sch.transform_layout(panel, ("write", 0), lambda j, c: (j // outputs, c, j % outputs))
        a, j, r = sch.get_loops(y)
        rh, length = None, shape.k
    k_unroll = _choose(sch, _dividing((4, 2, 1), length), default)
    ao, ai = sch.split(a, [None, rows])
    jo, ji = sch.split(j, [None, outputs])
    ro, ru = sch.split(r, [None, k_unroll])
    inner = [ru, rh] if rh is not None else [ru]
    sch.reorder(jo, ao, ro, *inner, ai, ji)
    out = sch.cache_write(y, 0, "global")  # the Mt x Nt accumulators of one micro-kernel call
    sch.reverse_compute_at(out, ao)
    sch.compute_at(panel, jo)
    fill = sch.get_loops(panel)[1:]  # (j', i, h) or (j', k): make the Nt outputs innermost
    sch.reorder(*fill[1:], fill[0])
    if vector_fill:
        sch.vectorize(fill[0])
    sch.parallel(jo)
    for loop in (*inner, ai):
        sch.unroll(loop)
    sch.vectorize(ji)
    sch.decompose_reduction(y, ro)
    sch.vectorize(sch.get_loops(out)[-1])


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


_TUNE_REPEATS = 20  # timed calls per candidate schedule while tuning


def _in_process_tools(tvm: Any) -> tuple[Any, Any]:
    """A meta_schedule builder and runner that build and time candidates in this process."""
    import numpy as np
    from tvm.driver import build as tvm_build
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerResult
    from tvm.s_tir.meta_schedule.runner.runner import PyRunnerFuture

    built: dict[str, Any] = {}

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list) -> list:
            results = []
            for item in build_inputs:
                try:
                    module = tvm_build(item.mod, target=item.target)
                except Exception as err:  # noqa: BLE001 - a failed candidate is data
                    results.append(BuilderResult(None, f"{type(err).__name__}: {err}"))
                    continue
                # meta_schedule deletes the artifact's folder after measuring: give it a real one.
                path = tempfile.mkdtemp(prefix="presso-tvm-") + "/kernel"
                built[path] = module
                results.append(BuilderResult(path, None))
            return results

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, secs: list[float] | None, error: str | None) -> None:
            super().__init__()
            self.secs, self.error = secs, error

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            return RunnerResult(self.secs, self.error)

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs: list) -> list:
            device, futures = tvm.cpu(), []
            rng = np.random.default_rng(0)
            for item in runner_inputs:
                module = built.pop(item.artifact_path)
                try:
                    args = [
                        tvm.runtime.tensor(rng.integers(0, 16, size=shape).astype(dtype), device)
                        for _, dtype, shape in (a.as_json() for a in item.args_info)
                    ]
                    # Weights cold, as in a model, where each layer's weights come from
                    # memory and x from the layer before: the flush of every argument but x
                    # runs before each repeat, so one call per repeat. Timed hot, tuning
                    # picked schedules that lose 1.5-2x once weights stream (int8 576x576
                    # with outputs interleaved: 24 us hot, 61 cold; one output at a time:
                    # 26 hot, 38 cold).
                    timer = module.time_evaluator(
                        module.entry_name,
                        device,
                        number=1,
                        repeat=_TUNE_REPEATS,
                        f_preproc="cache_flush_cpu_non_first_arg",
                    )
                    futures.append(Done([float(t) for t in timer(*args).results], None))
                except Exception as err:  # noqa: BLE001
                    futures.append(Done(None, f"{type(err).__name__}: {err}"))
            return futures

    return InProcessBuilder(), InProcessRunner()


def tune(shape: GemmShape, target: dict[str, Any], trials: int) -> dict[str, Any]:
    """Search ``trials`` schedules of ``shape`` with meta_schedule; the best one as a JSON-ready
    record ``{"trace", "run_ms", "trials", "measured", "tune_s"}`` (run_ms: its tuning-time
    median; measured: distinct schedules timed, at most ``trials``)."""
    tvm = _tvm()
    _register_x86_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    mod = tvm.IRModule({"main": prim_func(shape)})
    tvm_target = tvm.target.Target(target)
    builder, runner = _in_process_tools(tvm)
    start = time.perf_counter()
    TUNING_RUNS["count"] += 1
    # meta_schedule logs every round at INFO to the console: keep WARNING and above. Its file
    # handlers of an earlier tune point into a deleted work_dir, and it re-lists existing
    # handlers by name (an unnamed one, e.g. added by pytest, makes it crash): start clean.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    for handler in list(ms_logger.handlers):
        ms_logger.removeHandler(handler)
        handler.close()
    with tempfile.TemporaryDirectory(prefix="presso-tvm-tune-") as work_dir:
        database = ms.tune_tir(
            mod,
            tvm_target,
            work_dir,
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            builder=builder,
            runner=runner,
            database=ms.database.MemoryDatabase(),
            cost_model="random",  # a learned model needs more trials than a few dozen
            # presso's design space, with no mutators: every trial is a fresh sample of the
            # knobs (already-measured samples are skipped), not a mutation of a good one.
            space=ms.space_generator.ScheduleFn(
                lambda sch: design_spaces(sch, shape), sch_rules=[], postprocs=[], mutator_probs={}
            ),
            strategy=ms.search_strategy.EvolutionarySearch(
                population_size=64, genetic_num_iters=1, init_min_unmeasured=16
            ),
            num_tuning_cores=int(target["num-cores"]),
            seed=0,
        )
    records = database.get_top_k(database.commit_workload(mod), 1)
    if not records:
        raise PressoError(
            f"TVM GEMM {shape.key}: no schedule of {trials} trials built and ran; "
            "raise trials or use trials=0 for the untuned kernel"
        )
    best = records[0]
    measured = len(database.get_all_tuning_records())
    secs = sorted(float(t) for t in best.run_secs)
    return {
        "trace": json.loads(json.dumps(best.trace.as_json(remove_postproc=False), default=_json)),
        "run_ms": secs[len(secs) // 2] * 1e3,
        "trials": trials,
        "measured": measured,
        "tune_s": time.perf_counter() - start,
    }


def _json(value: Any) -> Any:
    # TVM containers and scalars in a trace's JSON object: lists, ints, floats, strings.
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return str(value)
    return list(value)


def _compile(shape: GemmShape, target: dict[str, Any], record: dict[str, Any] | None) -> Any:
    """The compiled ``main`` of ``shape``, scheduled by ``record``'s trace (None: the design
    space's default point, untuned)."""
    tvm = _tvm()
    from tvm.s_tir import Schedule

    sch = Schedule(tvm.IRModule({"main": prim_func(shape)}))
    if record is None:
        sch = design_spaces(sch, shape, default=True)[0]
    else:
        from tvm.s_tir.schedule import Trace

        Trace.apply_json_to_schedule(record["trace"], sch)
    return tvm.compile(sch.mod, target=tvm.target.Target(target))["main"]


# --------------------------------------------------------------------------- the entry point


class TvmGemm:
    """A compiled kernel: ``gemm(x, *weights, out=None) -> y`` on torch CPU tensors, passed to
    TVM by DLPack (no copy). ``record`` is the tuning record it was compiled from (None:
    untuned), ``tuned_now`` whether this call had to tune."""

    def __init__(
        self, shape: GemmShape, func: Any, record: dict[str, Any] | None, tuned_now: bool
    ) -> None:
        self.shape = shape
        self.record = record
        self.tuned_now = tuned_now
        self._func = func

    def __call__(self, x: torch.Tensor, *weights: torch.Tensor, out: torch.Tensor | None = None):
        import torch

        if out is None:
            out = torch.empty(self.shape.m, self.shape.n, dtype=torch.float32)
        self._func(x, *weights, out)
        return out

    def check(self, x: torch.Tensor, *weights: torch.Tensor) -> None:
        """Raise a PressoError when the arguments do not fit this kernel (shape, dtype, layout)."""
        expected = [((self.shape.m, self.shape.k), "float32"), *self.shape.weight_shapes()]
        got = [(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in (x, *weights)]
        if got != expected or not all(t.is_contiguous() for t in (x, *weights)):
            raise PressoError(
                f"TVM GEMM {self.shape.key}: arguments {got} do not match {expected} "
                "(contiguous CPU tensors)"
            )


_CACHE: dict[tuple[str, str, int], TvmGemm] = {}


def compile_gemm(
    m: int,
    n: int,
    k: int,
    bits: int,
    group_size: int | None = None,
    *,
    trials: int = 16,
    db: TuningRecords | None = None,
    fingerprint: str | None = None,
) -> TvmGemm:
    """The kernel for ``y[m, n] = x[m, k] · W[n, k]^T`` at ``bits`` (4, 8, 16 = dense fp32).

    trials: meta_schedule trials when no tuning record exists (0: the design space's default
    schedule, untuned). db/fingerprint: where tuning records are read
    from and written to, under which machine (``presso.profilers._tvm.tvm_fingerprint``);
    both or neither.
    Raises PressoError for a shape no kernel can run.
    """
    shape = GemmShape(m, n, k, bits, group_size)
    target = cpu_target()
    key = f"{shape.key}-{_target_key(target)}"
    cached = _CACHE.get((key, str(db.path) if db else "", trials))
    if cached is not None:
        return cached
    record, tuned_now = None, False
    if trials > 0:
        if db is not None and fingerprint is None:
            raise ValueError("compile_gemm: a tuning-record store needs the machine's fingerprint")
        stored = db.get_artifact(fingerprint, BACKEND, key) if db is not None else None
        if stored is not None:
            record = json.loads(stored)
        else:
            record, tuned_now = tune(shape, target, trials), True
            if db is not None:
                db.put_artifact(fingerprint, BACKEND, key, json.dumps(record))
    gemm = TvmGemm(shape, _compile(shape, target, record), record, tuned_now)
    _CACHE[(key, str(db.path) if db else "", trials)] = gemm
    return gemm


def tvm_versions() -> dict[str, str]:
    """What a TVM timing depends on besides the CPU: TVM's versions and presso's design space
    (a new design makes earlier timings and tuning records stale, so it is a new fingerprint)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"presso-tvm-design": DESIGN}
    for package in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "?"
    return out


def random_weights(shape: GemmShape, seed: int = 0) -> list[torch.Tensor]:
    """Random weight arguments of ``shape`` in kernel layout (for timing; values do not matter)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    if shape.bits == 16:
        return [torch.randn(shape.n, shape.k, generator=gen)]
    (codes_shape, _), (grid, _), _ = shape.weight_shapes()
    codes = torch.randint(0, 256, codes_shape, generator=gen, dtype=torch.uint8)
    zeros = torch.randint(0, 16, grid, generator=gen).float()
    return [codes, torch.rand(grid, generator=gen) + 0.5, zeros]


__all__ = [
    "BACKEND",
    "KERNELS",
    "GemmShape",
    "TvmGemm",
    "compile_gemm",
    "cpu_target",
    "pack_int4",
    "prim_func",
    "random_weights",
    "reference_gemm",
    "tune",
    "TuningRecords",
    "unpack_int4",
]
