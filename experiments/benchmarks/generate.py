"""Benchmark: a searched candidate generating text end to end on each CPU backend, tokens/s.

What ``presso generate RUN --backend B --threads T`` reports, for every backend of this machine
(torch, onnxruntime, tvm) at 1 and 2 threads, plus TVM with its own idle-worker default
(workers spin ``TVM_THREAD_POOL_SPIN_COUNT=300000`` yields before they sleep; presso's default
lets them sleep at once) — the baseline the thread policy of ``kernels/_tvm_gemm.py`` is
measured against. Ratios are against torch at the same thread count, measured in this run.

Every configuration runs in a fresh process (TVM reads its spin setting once per process),
``--rounds`` times, interleaved, so that a load change on this shared machine hits all of them
alike; a figure is the median decode tokens/s over the rounds (prefill beside it). TVM tunes
each new kernel shape once per machine and thread count (``--trials``), before the timing.

It needs a run in the store: the main job's (``presso search experiments/smollm2-bits.yaml``).

    .venv/bin/python experiments/benchmarks/generate.py [--run smollm2-bits] [--store runs/presso.db]
        [--rounds 3] [--tokens 64] [--trials 16] [--json experiments/benchmarks/generate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from presso.paths import atomic_write_text

# (label, backend, threads, environment)
CONFIGS = (
    ("torch", "torch", 1, {}),
    ("onnxruntime", "onnxruntime", 1, {}),
    ("tvm", "tvm", 1, {}),
    ("torch", "torch", 2, {}),
    ("onnxruntime", "onnxruntime", 2, {}),
    ("tvm", "tvm", 2, {}),
    ("tvm, TVM's spinning workers", "tvm", 2, {"TVM_THREAD_POOL_SPIN_COUNT": "300000"}),
)

CHILD = """
import json, sys
from presso.cli import tuning_options
from presso.export import Source, build_plan
from presso.generate import generate
from presso.store import ResultsStore
run, store, backend, threads, tokens, trials = sys.argv[1:]
study = ResultsStore(store, must_exist=True).open(run)
out = generate(
    Source(study.user_attrs, "search"), build_plan(study.user_attrs, "search"), backend,
    "In the beginning God created", max_new_tokens=int(tokens), threads=int(threads),
    options=tuning_options(backend, int(trials)),
)
print(json.dumps(out))
"""


def one(args: argparse.Namespace, backend: str, threads: int, env: dict[str, str]) -> dict:
    argv = [args.run, args.store, backend, str(threads), str(args.tokens), str(args.trials)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{backend} at {threads} threads failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="smollm2-bits")
    ap.add_argument("--store", default="runs/presso.db")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    print("tuning TVM's kernels once per thread count (untimed) ...", flush=True)
    for threads in (1, 2):
        one(args, "tvm", threads, {})
    runs: dict[int, list[dict]] = {i: [] for i in range(len(CONFIGS))}
    for r in range(args.rounds):
        for i, (label, backend, threads, env) in enumerate(CONFIGS):
            out = one(args, backend, threads, env)
            runs[i].append(out)
            print(
                f"round {r + 1}: {label:<28} {threads} thr  decode {out['decode_tok_s']:6.1f}  "
                f"prefill {out['prefill_tok_s']:6.1f} tok/s",
                flush=True,
            )
    rows = []
    for i, (label, backend, threads, env) in enumerate(CONFIGS):
        decode = statistics.median(o["decode_tok_s"] for o in runs[i])
        prefill = statistics.median(o["prefill_tok_s"] for o in runs[i])
        rows.append(
            {"label": label, "backend": backend, "threads": threads, "env": env,
             "decode_tok_s": decode, "prefill_tok_s": prefill,
             "decode_rounds": [o["decode_tok_s"] for o in runs[i]]}
        )  # fmt: skip
    torch_at = {r["threads"]: r["decode_tok_s"] for r in rows if r["backend"] == "torch"}
    print(f"\n{args.run}, {args.tokens} new tokens, median of {args.rounds} rounds")
    print(f"{'backend':<30}{'threads':>8}{'decode tok/s':>14}{'vs torch':>10}{'prefill':>10}")
    for r in rows:
        r["decode_vs_torch"] = r["decode_tok_s"] / torch_at[r["threads"]]
        print(
            f"{r['label']:<30}{r['threads']:>8}{r['decode_tok_s']:>14.1f}"
            f"{r['decode_vs_torch']:>9.2f}x{r['prefill_tok_s']:>10.1f}"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps({"run": args.run, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
