"""Benchmark: does the cost model predict the end-to-end latency of structured candidates?

SmolLM2-135M on one backend and workload (default ONNX Runtime, 1 thread, decode at a KV
length of 128):
1. profiling — every distinct Linear shape, dense, and every smaller shape a structured level
   (percent of heads / FFN channels kept) gives a unit, plus the model's structure probes;
2. uniform structured models (every attention and FFN at one level), measured: how much faster
   really smaller models run;
3. held-out random structured candidates (each attention and FFN at a random level, from a
   per-candidate mix), each built for real (smaller Linears, fewer KV heads) and timed end to
   end in round-robin passes, against the lookup model's prediction: MAPE, share within ±10%,
   rank correlation.

Levels are timed with weights that are not the ZipLM ones (largest structures kept): latency
depends on the shapes only.

    .venv/bin/python experiments/benchmarks/structured_cost_model.py [--backend onnxruntime]
        [--candidates 16] [--levels 100 75 50 25] [--workload b1-s128-decode] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from presso.cost_models._campaign import (
    interleaved,
    latency_model,
    profile_model,
    random_structured,
    unit_ops,
    validate,
)
from presso.models import load_model
from presso.paths import atomic_write_text
from presso.plan import Plan
from presso.profilers import ProfileDatabase, Workload, make_profiler
from presso.structures import model_structures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--levels", type=int, nargs="+", default=[100, 75, 50, 25])
    parser.add_argument("--workload", default="b1-s128-decode")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--db", default="experiments/benchmarks/structured_cost_model.sqlite")
    parser.add_argument("--out", default="experiments/benchmarks/structured_cost_model.json")
    args = parser.parse_args()

    handle = load_model(args.model)
    workload = Workload.parse(args.workload)
    db = ProfileDatabase(args.db)
    profiler = make_profiler(args.backend, threads=args.threads, repeats=args.repeats, warmup=3)
    pruned = [p for p in args.levels if p < 100]
    start = time.perf_counter()
    ops = unit_ops(handle, [], [0], None, structured=pruned)
    report = profile_model(handle, profiler, db, [workload], ops, structured=pruned)
    profile_s = time.perf_counter() - start
    print(f"== {args.model} on {args.backend} at {workload.key}, {args.threads} thread(s) ==")
    print(
        f"profiling: {len(ops)} layer shapes; {report.measured} measurements taken "
        f"({report.reused} reused, {len(report.failed)} failed) in {profile_s:.0f} s"
    )
    model = latency_model(handle, profiler, db, workload, group_size=None)
    structures = model_structures(handle)

    def uniform(percent: int) -> Plan:
        return Plan({s.consumer: {"structured": percent} for s in structures})

    probes = [(f"uniform-structured-{p}", workload, uniform(p)) for p in args.levels]
    measured = {
        p: (m.median_ms if m.ok else None)
        for p, m in zip(args.levels, interleaved(handle, profiler, probes))
    }
    dense = measured.get(100)
    print("\nevery attention and FFN at one level (measured ms, predicted ms, speedup):")
    for p in args.levels:
        m, pred = measured[p], model.predict(uniform(p))
        speed = f"{dense / m:.2f}x" if m and dense else "-"
        print(f"  {p:>3}% kept: {m or float('nan'):8.2f} {pred:8.2f}  {speed}")

    rng = np.random.default_rng(0)
    cands = [random_structured(handle, rng, args.levels) for _ in range(args.candidates)]
    start = time.perf_counter()
    result = validate(handle, profiler, db, {"lookup_ms": model}, workload, cands)
    validate_s = time.perf_counter() - start
    print(f"\nheld-out candidates measured end to end: {len(cands)} in {validate_s:.0f} s")
    print(f"{'candidate':>22}{'kept %':>8}{'measured':>10}{'predicted':>10}")
    total = sum(s.params for s in structures)
    for row, plan in zip(result.rows, cands):
        kept = sum(s.kept_params(plan.level(s.consumer, "structured")) for s in structures)
        row["kept_params"] = 100 * kept / total
        got = f"{row['measured_ms']:.2f}" if row["measured_ms"] else "failed"
        print(f"{row['candidate']:>22}{row['kept_params']:>8.1f}{got:>10}{row['lookup_ms']:>10.2f}")
    summary = result.summary("lookup_ms")
    print(
        f"\nlookup: MAPE {summary['mape']:.1%}, within ±10%: {summary['within_10']:.0%}, "
        f"rank correlation {summary['spearman']:.2f} (n={summary['n']})"
    )
    out = {
        "model": args.model,
        "backend": args.backend,
        "workload": workload.key,
        "threads": args.threads,
        "levels": args.levels,
        "profile_s": profile_s,
        "uniform_measured_ms": measured,
        "uniform_predicted_ms": {p: model.predict(uniform(p)) for p in args.levels},
        "validation": summary,
        "rows": result.rows,
        "structure": model.describe(),
        "note": "measured on a shared 2-core machine under load from other jobs",
    }
    atomic_write_text(Path(args.out), json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
