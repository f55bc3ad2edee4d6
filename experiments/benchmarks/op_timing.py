"""Benchmark: how long `presso profile` takes to time one layer, and whether fewer runs move it.

A layer is timed over distinct weight copies (enough to overflow twice the last-level cache), and
``--repeats`` counts calls: a run over N copies is N calls, so it is repeated only until
``repeats`` calls are timed, at least 5 times (``Profiler._timed``). Before, every run counted
as one, and a 1536x576 prefill layer over 228 copies was run 5 + 25 times. Both are measured
here in one run, alternating (A B A B), on SmolLM2-135M's layer shapes: "runs counted" is
``repeats=25, warmup=5`` (the default), "each run one" the same profiler asked for 25 and 5
runs of its copies (the old count). Printed: seconds per layer, the ratio, and how far the
two ways' medians are apart beside the noise floor (two passes of one way).

    .venv/bin/python experiments/benchmarks/op_timing.py [--backends onnxruntime [torch]]
        [--bits 4 16] [--workloads b1-s128-prefill b1-s128-decode]
        [--json experiments/benchmarks/op_timing.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from presso.paths import atomic_write_text
from presso.profilers import LinearOp, Workload, make_profiler
from presso.profilers._base import op_weight_copies

SHAPES = [(192, 576), (576, 576), (1536, 576), (576, 1536)]  # SmolLM2-135M (out, in)
WARMUP, REPEATS = 5, 25


def one(backend: str, op: LinearOp, workload: Workload, per_run: bool) -> tuple[float, float]:
    """Seconds to measure ``op`` and its median ms; ``per_run``: the old count of runs."""
    n = op_weight_copies(op) if per_run else 1
    profiler = make_profiler(backend, warmup=WARMUP * n, repeats=REPEATS * n)
    start = time.perf_counter()
    m = profiler.measure(op, workload)
    if not m.ok:
        raise SystemExit(f"{backend} {op.key} {workload.key}: {m.error}")
    return time.perf_counter() - start, m.median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["onnxruntime"])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--workloads", nargs="+", default=["b1-s128-prefill", "b1-s128-decode"])
    ap.add_argument("--json", default=str(Path(__file__).with_name("op_timing.json")))
    args = ap.parse_args()

    rows = []
    for backend in args.backends:
        for wl in map(Workload.parse, args.workloads):
            for out, inp in SHAPES:
                for bits in args.bits:
                    op = LinearOp(out, inp, bits=bits, group_size=64 if bits < 16 else None)
                    passes = {True: [], False: []}
                    for per_run in (True, False, True, False):
                        passes[per_run].append(one(backend, op, wl, per_run))
                    old, new = (np.array(passes[k]) for k in (True, False))
                    row = {
                        "backend": backend,
                        "workload": wl.key,
                        "op": op.key,
                        "copies": op_weight_copies(op),
                        "seconds_each_run_one": float(old[:, 0].mean()),
                        "seconds_runs_counted": float(new[:, 0].mean()),
                        "ms_each_run_one": old[:, 1].tolist(),
                        "ms_runs_counted": new[:, 1].tolist(),
                    }
                    row["speedup"] = row["seconds_each_run_one"] / row["seconds_runs_counted"]
                    row["apart"] = abs(new[:, 1].mean() / old[:, 1].mean() - 1)
                    row["noise"] = max(abs(p[1, 1] / p[0, 1] - 1) for p in (old, new))
                    rows.append(row)
                    print(
                        f"{backend:>11} {wl.key:>16} {op.key:>22} x{row['copies']:<4} "
                        f"{row['seconds_each_run_one']:6.2f} -> {row['seconds_runs_counted']:5.2f} s "
                        f"({row['speedup']:4.1f}x)  medians apart {row['apart']:5.1%} "
                        f"(noise {row['noise']:5.1%})",
                        flush=True,
                    )
    summary = {}
    for backend in args.backends:
        mine = [r for r in rows if r["backend"] == backend]
        old = sum(r["seconds_each_run_one"] for r in mine)
        new = sum(r["seconds_runs_counted"] for r in mine)
        summary[backend] = {
            "seconds_each_run_one": old,
            "seconds_runs_counted": new,
            "speedup": old / new,
            "apart_median": float(np.median([r["apart"] for r in mine])),
            "noise_median": float(np.median([r["noise"] for r in mine])),
        }
        s = summary[backend]
        print(
            f"{backend}: {len(mine)} layers in {old:.0f} -> {new:.0f} s ({s['speedup']:.1f}x); "
            f"medians apart by {s['apart_median']:.1%} (median), noise {s['noise_median']:.1%}"
        )
    atomic_write_text(
        Path(args.json),
        json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1) + "\n",
    )


if __name__ == "__main__":
    main()
