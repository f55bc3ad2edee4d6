"""Benchmark: low-bit weight-only GEMM kernels against the dense baseline, ratios in one run.

CPU section (``--cpu``, the default): at SmolLM2-135M's linear shapes (N × K = 576×576,
1536×576, 576×1536) and M = 1 (decode) and 256 (prefill) rows, fp32 activations, group 32:

* torch fp32 ``x @ W.T`` (the baseline every ratio is against);
* TVM int4 and int8 (``presso.kernels._tvm_gemm``), meta_schedule-tuned with ``--trials``
  trials per shape, records kept in the profile database (a re-run does not tune again);
* ONNX Runtime ``MatMulNBits`` (4-bit, block 32, uint8 zero points), a one-node graph built
  here with ``onnx.helper`` and checked against the same reference.

At M = 1 a second row, "streamed", cycles every kernel through enough distinct copies of its
weights that the fp32 copies (``--stream-mb``, default 768 MB) exceed every cache of this
machine, as a whole model's weights do in decode; the low-bit copies are 4-8x smaller, which is
the point of them. The plain rows reuse one copy, so their weights stay cache-resident. ORT is
not in the streamed rows (a session per copy oversubscribes the cores with thread pools; one
session of many MatMulNBits nodes, asked for one output, ran all of them per call — measured).

Times are medians over interleaved rounds (every kernel of a shape is timed once per round, so
a load change on this shared machine hits all of them alike). The GPU benchmark (Triton 4-bit
vs torch fp16) is experiments/benchmarks/kernels_gpu.py.

    .venv/bin/python experiments/benchmarks/kernels.py [--cpu] [--trials 32] [--rounds 9]
        [--stream-mb 768] [--json experiments/benchmarks/kernels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from presso.kernels import _tvm_gemm as tg
from presso.paths import atomic_write_text
from presso.profilers import ProfileDatabase

CPU_SHAPES = ((576, 576), (1536, 576), (576, 1536))  # (N, K) of q/o, gate/up, down
CPU_ROWS = (1, 256)
GROUP = 32


def time_ms(run: Callable[[], object], number: int) -> float:
    """Mean ms of ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        run()
    return (time.perf_counter() - start) * 1e3 / number


def interleaved_medians(
    runs: dict[str, Callable[[], object]], rounds: int, number: int
) -> dict[str, float]:
    """Median ms per kernel over ``rounds`` rounds, each timing every kernel once (after one
    warm-up round). Before each timing the kernel runs untimed for as long as it is timed:
    the previous kernel's thread pool (OpenMP, ORT) keeps spinning for a while after its last
    call and would otherwise steal the 2 cores from the next one."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, run in runs.items():
            time_ms(run, number)
            t = time_ms(run, number)
            if r:  # round 0 warms caches and thread pools
                samples[name].append(t)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def ort_matmul_nbits(n: int, k: int, packed: torch.Tensor, scales, zeros) -> Callable:
    """An ONNX Runtime session of one 4-bit MatMulNBits node ``y = x · W^T`` with our codes:
    MatMulNBits stores B as [N, K/block, block/2] bytes, element 2i in the low nibble — the
    layout of :func:`presso.kernels._tvm_gemm.pack_int4` — and zero points packed the same way
    along the blocks of a row. Its threads do not spin between calls: spinning ORT threads
    kept a core busy well into the next kernel's timing (torch and TVM measured 2x slower)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    blocks = k // GROUP
    b = packed.numpy().reshape(n, blocks, GROUP // 2)
    zp = tg.pack_int4(zeros.to(torch.uint8)).numpy().reshape(-1)
    node = helper.make_node(
        "MatMulNBits",
        ["x", "b", "scales", "zp"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=GROUP,
    )
    graph = helper.make_graph(
        [node],
        "matmul_nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        initializer=[
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(scales.numpy().reshape(-1).astype(np.float32), "scales"),
            numpy_helper.from_array(zp, "zp"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {"x": x})[0]


def cpu_rows(
    n: int, k: int, m: int, copies: int, args: argparse.Namespace, db: ProfileDatabase | None
) -> dict[str, float]:
    """Medians (ms) of every CPU kernel at one shape, after checking each against the reference.
    ``copies`` > 1: each call of a kernel takes the next of that many weight copies."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen)
    int4 = tg.compile_gemm(m, n, k, 4, GROUP, trials=args.trials, db=db)
    int8 = tg.compile_gemm(m, n, k, 8, GROUP, trials=args.trials, db=db)
    w32 = [torch.randn(n, k, generator=gen) for _ in range(copies)]
    w4 = [tg.random_weights(int4.shape, seed=1 + c) for c in range(copies)]
    w8 = [tg.random_weights(int8.shape, seed=1 + copies + c) for c in range(copies)]
    ref4 = tg.reference_gemm(x, tg.unpack_int4(w4[0][0]), w4[0][1], w4[0][2], GROUP)
    ref8 = tg.reference_gemm(x, w8[0][0], w8[0][1], w8[0][2], GROUP)
    ort4 = ort_matmul_nbits(n, k, *w4[0])
    x_np = x.numpy()
    y4, y8 = torch.empty(m, n), torch.empty(m, n)
    for got, ref in ((int4(x, *w4[0]), ref4), (int8(x, *w8[0]), ref8)):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-2 * float(ref.abs().max()))
    torch.testing.assert_close(
        torch.from_numpy(ort4(x_np)), ref4, rtol=1e-3, atol=1e-2 * float(ref4.abs().max())
    )
    runs = {
        "torch fp32": cycling([lambda w=w: x @ w.T for w in w32]),
        "tvm int4": cycling([lambda w=w: int4(x, *w, out=y4) for w in w4]),
        "tvm int8": cycling([lambda w=w: int8(x, *w, out=y8) for w in w8]),
    }
    if copies == 1:  # see the module docstring: ORT has no streamed time
        runs["ort nbits4"] = lambda: ort4(x_np)
    number = max(1, int(args.budget_ms / max(0.01, 2 * m * n * k / 20e9 * 1e3)))
    return interleaved_medians(runs, args.rounds, number)


def cycling(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One call that runs the next of ``calls`` each time (round-robin)."""
    if len(calls) == 1:
        return calls[0]
    state = {"i": -1}

    def run() -> object:
        state["i"] = (state["i"] + 1) % len(calls)
        return calls[state["i"]]()

    return run


def cpu(args: argparse.Namespace) -> list[dict]:
    """The CPU section: one row per (N, K, M), medians and ratios vs torch fp32; prints a table."""
    db = None if args.no_db else ProfileDatabase()
    # Every kernel on torch's thread count. TVM's idle workers sleep at once (presso's default,
    # kernels/_tvm_gemm.py): a wake-up per call (~20 us, visible at M = 1) where spinning ones
    # slowed whichever kernel was timed next by up to 2x; TVM_THREAD_POOL_SPIN_COUNT=300000 in
    # the environment times TVM's own default instead.
    tg.set_threads(torch.get_num_threads())
    rows = []
    variants = [(m, False) for m in CPU_ROWS] + [(1, True)]
    for m, streamed in variants:
        for n, k in CPU_SHAPES:
            start = time.perf_counter()
            copies = max(2, int(args.stream_mb * 2**20 / (4 * n * k))) if streamed else 1
            medians = cpu_rows(n, k, m, copies, args, db)
            rows.append({"n": n, "k": k, "m": m, "copies": copies, **medians})
            what = f"M={m}" + (f" streamed ({copies} copies)" if streamed else "")
            print(f"  N×K={n}×{k} {what}: {time.perf_counter() - start:.0f} s", flush=True)
    names = ["torch fp32", "tvm int4", "tvm int8", "ort nbits4"]
    header = f"{'N×K':>10} {'M':>9} " + " ".join(f"{n + ' ms':>14}" for n in names)
    header += " " + " ".join(f"{n.split()[0] + ' ' + n.split()[1] + ' ×':>14}" for n in names[1:])
    print(f"\nCPU ({torch.get_num_threads()} threads), group {GROUP}, tvm trials {args.trials}")
    print(header)
    for r in rows:
        base = r["torch fp32"]
        times = " ".join(f"{r[n]:>14.4f}" if n in r else f"{'-':>14}" for n in names)
        ratios = " ".join(f"{base / r[n]:>14.2f}" if n in r else f"{'-':>14}" for n in names[1:])
        m = f"{r['m']}" + (" strm" if r["copies"] > 1 else "")
        print(f"{r['n']:>5}×{r['k']:<4} {m:>9} {times} {ratios}")
    print("(× = speed-up over torch fp32: torch_ms / kernel_ms; > 1 is faster)")
    return rows


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {"cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the CPU section (default)")
    parser.add_argument("--trials", type=int, default=32, help="meta_schedule trials per shape")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--budget-ms", type=float, default=20.0, help="target ms per timing")
    parser.add_argument(
        "--stream-mb", type=float, default=768.0, help="fp32 weight copies per streamed shape, MB"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--no-db", action="store_true", help="tune without the profile database")
    args = parser.parse_args()
    chosen = [name for name in SECTIONS if getattr(args, name)] or ["cpu"]
    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name in chosen:
        results[name] = SECTIONS[name](args)
        if args.json:  # after every section: a cut-off run keeps what it measured
            atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
