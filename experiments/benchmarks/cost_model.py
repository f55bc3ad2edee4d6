"""Benchmark: latency cost models on SmolLM2-135M, per backend, measured in one run.

For each backend (default: every CPU runtime — ONNX Runtime, torch eager and TVM, whose kernels
are tuned with meta_schedule, ``--tvm-trials`` per kernel shape):
1. profiling time — every distinct layer shape at every bit width, plus the model's structure;
2. is latency monotone in bits? per layer shape, and end to end for uniform models;
3. prediction error on held-out random candidates (each with its own mix of per-layer bits,
   up to 3 blocks dropped), each assembled for real and measured end to end (round-robin):
   the timing table (lookup, with the learned model for gaps), the learned model alone, and
   the learned model fitted with every 3-bit measurement held out (how well it prices a level it never saw).

    .venv/bin/python experiments/benchmarks/cost_model.py [--backends onnxruntime torch tvm]
        [--candidates 16] [--max-dropped 3] [--workload b1-s128-decode] [--repeats 15] [--threads 1]
        [--tvm-trials 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from presso.cost_models import BoostedTrees
from presso.cost_models._campaign import (
    interleaved,
    latency_model,
    machine_id,
    profile_model,
    random_assignment,
    unit_ops,
    validate,
)
from presso.models import load_model
from presso.profilers import ProfileDatabase, Workload, levels_plan, make_profiler

BITS = [2, 3, 4, 8]


def monotone(values: list[float]) -> bool:
    """Cost never falls as bits rise (values ordered by ascending bits)."""
    return all(b >= a * 0.95 for a, b in zip(values, values[1:]))  # 5%: timing noise


def per_shape(db: ProfileDatabase, profiler, handle, workload: Workload, group: int) -> list[str]:  # noqa: ANN001
    fp = machine_id(profiler)
    lines = [
        f"{'layer out x in':>16}" + "".join(f"{f'w{b}':>9}" for b in [*BITS, 16]) + "  monotone"
    ]
    for out, inp in sorted({u.shape for u in handle.units}):
        ms = []
        for b in [*BITS, 16]:
            op = [
                o
                for o in unit_ops(handle, [b], [0], group)
                if (o.out_features, o.in_features, o.bits) == (out, inp, b)
            ][0]
            m = db.get(fp, profiler.name, op.key, workload.key)
            ms.append(m.median_ms if m and m.ok else float("nan"))
        lines.append(
            f"{f'{out}x{inp}':>16}" + "".join(f"{v:>9.4f}" for v in ms) + f"  {monotone(ms)}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch", "tvm"])
    parser.add_argument("--tvm-trials", type=int, default=16, help="tuning trials per kernel")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--max-dropped", type=int, default=3)
    parser.add_argument("--workload", default="b1-s128-decode")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--db", default="experiments/benchmarks/cost_model.sqlite")
    parser.add_argument("--out", default="experiments/benchmarks/cost_model.json")
    args = parser.parse_args()

    handle = load_model("smollm2-135m")
    workload = Workload.parse(args.workload)
    db = ProfileDatabase(args.db)
    group = args.group_size
    results = {}
    for backend in args.backends:
        options = {"trials": args.tvm_trials} if backend == "tvm" else {}
        profiler = make_profiler(
            backend, threads=args.threads, repeats=args.repeats, warmup=3, **options
        )
        start = time.perf_counter()
        report = profile_model(handle, profiler, db, [workload], unit_ops(handle, BITS, [0], group))
        profile_s = time.perf_counter() - start
        print(f"\n== {backend} at {workload.key}, {args.threads} thread(s) ==")
        print(
            f"profiling: {report.measured} measurements taken ({report.reused} reused, "
            f"{len(report.failed)} failed) in {profile_s:.0f} s"
        )
        print("\nmedian ms per layer shape and bit width:")
        print("\n".join(per_shape(db, profiler, handle, workload, group)))

        # Uniform models timed round-robin: their ratios are the point, drift must hit all alike.
        probes = [
            (
                f"uniform-w{b}",
                workload,
                levels_plan({u.name: (b, 0) for u in handle.units}, group_size=group),
            )
            for b in [*BITS, 16]
        ]
        uniform = {
            b: (m.median_ms if m.ok else float("nan"))
            for b, m in zip([*BITS, 16], interleaved(handle, profiler, probes))
        }
        print(
            "\nend to end, every layer at one bit width (ms): "
            + ", ".join(f"w{b} {v:.1f}" for b, v in uniform.items())
        )
        print(f"monotone in bits end to end: {monotone([uniform[b] for b in [*BITS, 16]])}")

        lookup = latency_model(handle, profiler, db, workload, group_size=group)
        learned = latency_model(
            handle, profiler, db, workload, group_size=group, cost_model="learned"
        )
        blind = latency_model(
            handle, profiler, db, workload, group_size=group, cost_model="learned"
        )
        all_ms = db.measurements(machine_id(profiler), profiler.name, workload.key)
        blind.ops = BoostedTrees().fit([m for m in all_ms if "-w3-" not in m.op])
        blind._cache.clear()
        rng = np.random.default_rng(0)
        cands = [
            random_assignment(
                handle, rng, bits=[*BITS, 16], max_dropped=args.max_dropped, group_size=group
            )
            for _ in range(args.candidates)
        ]
        start = time.perf_counter()
        models = {"lookup_ms": lookup, "learned_ms": learned, "learned_no_w3_ms": blind}
        result = validate(handle, profiler, db, models, workload, cands)
        validate_s = time.perf_counter() - start
        print(f"\nheld-out candidates measured end to end: {len(cands)} in {validate_s:.0f} s")
        print(
            f"{'candidate':>22}{'dropped':>8}{'bits':>7}{'measured':>10}{'lookup':>9}{'learned':>9}{'no-w3':>9}"
        )
        for r in result.rows:
            measured = f"{r['measured_ms']:.2f}" if r["measured_ms"] else "failed"
            print(
                f"{r['candidate']:>22}{r['dropped']:>8}{r['mean_bits']:>7.2f}{measured:>10}"
                f"{r['lookup_ms']:>9.2f}{r['learned_ms']:>9.2f}{r['learned_no_w3_ms']:>9.2f}"
            )
        summary = {}
        for column in models:
            s = result.summary(column)
            summary[column] = s
            print(
                f"{column[:-3]:>18}: MAPE {s['mape']:.1%}, within ±10%: {s['within_10']:.0%}, "
                f"rank correlation {s['spearman']:.2f} (n={s['n']})"
            )
        results[backend] = {
            "profile_s": profile_s,
            "measurements": report.measured + report.reused,
            "uniform_ms": uniform,
            "validation": summary,
            "rows": result.rows,
            "structure": lookup.describe(),
        }
        # After each backend: a later one that fails (or is killed) keeps the earlier results.
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
