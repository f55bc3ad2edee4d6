"""Benchmark: end-to-end timing of candidates in interleaved rounds, graphs kept or rebuilt.

``presso profile`` times its structure probes, and ``--validate K`` its random candidates, as
whole models in 3 round-robin rounds. ONNX Runtime writes each candidate's graph (quantized
weights, MatMulNBits packing) before it can time it; inside ``Profiler.keeping_builds`` the
graph is written once and rounds 2 and 3 load it. This script times the same candidates both
ways in one run, on SmolLM2-135M, and prints the seconds, the ratio, and how far the two ways'
measured medians are apart (they time the same graphs, so only by noise).

    .venv/bin/python experiments/benchmarks/interleaved.py [--candidates 4]
        [--workload b1-s128-decode] [--repeats 15] [--json experiments/benchmarks/interleaved.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from presso.cost_models._campaign import interleaved, random_assignment
from presso.models import load_model
from presso.paths import atomic_write_text
from presso.profilers import Workload, make_profiler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--workload", default="b1-s128-decode")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(Path(__file__).with_name("interleaved.json")))
    args = ap.parse_args()

    handle = load_model(args.model)
    workload = Workload.parse(args.workload)
    rng = np.random.default_rng(args.seed)
    cands = [
        random_assignment(handle, rng, bits=[2, 3, 4, 8, 16], max_dropped=2, group_size=64)
        for _ in range(args.candidates)
    ]
    todo = [(f"candidate-{i}", workload, a) for i, a in enumerate(cands)]
    profiler = make_profiler("onnxruntime", repeats=args.repeats)
    profiler.measure_model(handle, cands[0], workload)  # quantized levels cached: both ways alike

    # ABBA order: the machine's drift over the run falls on both ways alike.
    passes = []
    for way in ("rebuilt", "kept", "kept", "rebuilt"):
        # The baseline disables keeping for this call only; the profiler is otherwise the same.
        if way == "rebuilt":
            profiler.keeping_builds = contextlib.nullcontext  # type: ignore[method-assign]
        start = time.perf_counter()
        measured = interleaved(handle, profiler, todo)
        seconds = time.perf_counter() - start
        vars(profiler).pop("keeping_builds", None)
        failed = [m.error for m in measured if not m.ok]
        if failed:
            raise SystemExit(f"{way}: {failed[0]}")
        passes.append(
            {"way": way, "seconds": seconds, "median_ms": [m.median_ms for m in measured]}
        )
        print(f"{way:>8}: {seconds:6.1f} s for {len(todo)} candidates x 3 rounds", flush=True)

    def mean(way: str, field: str) -> np.ndarray:
        return np.mean([np.asarray(p[field]) for p in passes if p["way"] == way], axis=0)

    base, kept = float(mean("rebuilt", "seconds")), float(mean("kept", "seconds"))
    apart = np.abs(mean("kept", "median_ms") / mean("rebuilt", "median_ms") - 1).tolist()
    # The noise floor: how far two passes of the same way are apart.
    same = [
        float(np.max(np.abs(np.divide(a["median_ms"], b["median_ms"]) - 1)))
        for way in ("rebuilt", "kept")
        for a, b in [[p for p in passes if p["way"] == way]]
    ]
    summary = {
        "speedup": base / kept,
        "seconds_per_candidate": {"rebuilt": base / len(todo), "kept": kept / len(todo)},
        "medians_apart_max": max(apart),
        "same_way_apart_max": max(same),
    }
    print(
        f"kept graphs: {summary['speedup']:.2f}x faster ({base / len(todo):.1f} -> "
        f"{kept / len(todo):.1f} s per candidate); medians of the two ways apart by at most "
        f"{max(apart):.1%}, two passes of one way by {max(same):.1%} (noise)"
    )
    out = {"args": vars(args), "passes": passes, "summary": summary}
    atomic_write_text(Path(args.json), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
