"""Benchmark: per-layer bits search on SmolLM2-135M, EvoPress against the baselines.

For each mean-bits budget, in one run on this machine: held-out perplexity and KL of EvoPress,
uniform, random and the error-greedy heuristic; evaluations per minute; the cost of one
evaluation relative to a bare forward pass over the same tokens; what prefix reuse saves;
level-database build time; peak memory. Figures are printed as a table and written as JSON.

    .venv/bin/python experiments/benchmarks/bits_search.py [--budgets 2.5 3.0 3.5] [--generations 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import LocalPool, drive, make_strategy
from presso.search._base import Request


def experiment(mean_bits: float, args: argparse.Namespace) -> Experiment:
    return Experiment.model_validate(
        {
            "name": f"bench-{mean_bits}",
            "model": "smollm2-135m",
            "data": {
                "corpus": "bible",
                "seq_len": 256,
                "calibration": 32,
                "evaluation": args.eval_windows,
            },
            "compress": {
                "operator": "gptq",
                "levels": [2, 3, 4, 8],
                "group_size": 64,
                "calibration": 16,
            },
            "space": {"mean_bits": mean_bits},
            "search": {"strategy": "evopress", "seed": 0},
        }
    )


def bare_forward_seconds(setup: Setup, tokens: int) -> float:
    """Seconds of plain model forwards over ``tokens`` calibration tokens (no scoring, no reuse)."""
    windows = setup.data.calibration[: max(1, tokens // setup.data.calibration.shape[1])]
    setup.handle.forward(windows[:1])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(windows), 4):
        setup.handle.forward(windows[i : i + 4])
    return time.perf_counter() - start


def run_strategy(setup: Setup, name: str, options: dict, context, cache_mb: int = 1024) -> dict:
    evaluator = setup.evaluator()
    evaluator._cache.max_bytes = cache_mb * 2**20
    strategy = make_strategy(name, setup.space, seed=0, context=context, **options)
    start = time.perf_counter()
    n = drive(strategy, LocalPool(evaluator))
    seconds = time.perf_counter() - start
    best = strategy.best()
    heldout = evaluator.heldout(best)
    blocks = evaluator.blocks_run + evaluator.blocks_reused
    return {
        "strategy": name,
        "evaluations": n,
        "search_s": seconds,
        "evals_per_min": 60 * n / seconds,
        "blocks_reused_share": evaluator.blocks_reused / blocks if blocks else 0.0,
        "mean_bits": setup.space.constraints[0].value(setup.space, best),
        **heldout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.0, 3.5])
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--random-samples", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--out", default="experiments/benchmarks/bits_search.json")
    args = parser.parse_args()
    torch.set_num_threads(2)

    report: dict = {"budgets": {}}
    first = Setup(experiment(args.budgets[0], args))
    t0 = time.perf_counter()
    _ = first.handle
    report["model_load_s"] = time.perf_counter() - t0
    report["prepare"] = first.prepare()
    report["level_db_bytes"] = first.db.size_bytes()
    context = first.context(["error-greedy"])

    # Cost of one evaluation vs a bare forward pass over the same tokens (2048 tokens, no reuse).
    ev = first.evaluator()
    ev._cache.max_bytes = 0
    tokens = 2048
    bare = bare_forward_seconds(first, tokens)
    start = time.perf_counter()
    ev.evaluate(Request(first.space.uniform(3), tokens=tokens, sample_seed=1))
    report["eval_vs_forward"] = (time.perf_counter() - start) / bare
    report["bare_forward_tokens_per_s"] = tokens / bare

    evo = {
        "generations": args.generations,
        "offspring": args.offspring,
        "stages": [[512, 2], [2048, 1]],
    }
    for budget in args.budgets:
        setup = Setup(experiment(budget, args))
        setup.handle = first.handle  # same model, data and levels: only the budget differs
        setup.data = first.data
        rows = [
            run_strategy(setup, "evopress", evo, context),
            run_strategy(setup, "uniform", {}, context),
            run_strategy(
                setup, "random", {"samples": args.random_samples, "tokens": 2048}, context
            ),
            run_strategy(setup, "error-greedy", {}, context),
        ]
        report["budgets"][str(budget)] = rows
        print_budget(budget, rows)

    if args.budgets:
        # Prefix reuse on vs off, same EvoPress search (what reuse buys in wall time).
        setup = Setup(experiment(args.budgets[0], args))
        setup.handle, setup.data = first.handle, first.data
        short = {**evo, "generations": max(2, args.generations // 4)}
        off = run_strategy(setup, "evopress", short, context, cache_mb=0)
        on = run_strategy(setup, "evopress", short, context, cache_mb=1024)
        report["prefix_reuse"] = {
            "search_s_without": off["search_s"],
            "search_s_with": on["search_s"],
            "speedup": off["search_s"] / on["search_s"],
            "blocks_reused_share": on["blocks_reused_share"],
            "same_result": off["ppl"] == on["ppl"],
        }
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(
        f"\nmodel load {report['model_load_s']:.1f} s; prepare {fmt(report['prepare'])}; "
        f"level database {report['level_db_bytes'] / 2**20:.0f} MiB"
    )
    print(
        f"bare forward: {report['bare_forward_tokens_per_s']:.0f} tokens/s; one evaluation costs "
        f"{report['eval_vs_forward']:.2f}x a bare forward over the same tokens"
    )
    if "prefix_reuse" in report:
        p = report["prefix_reuse"]
        print(
            f"prefix reuse: {p['speedup']:.2f}x faster search ({p['blocks_reused_share']:.0%} of blocks "
            f"reused), same result: {p['same_result']}"
        )
    print(f"peak memory {report['peak_rss_gb']:.2f} GiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def print_budget(budget: float, rows: list[dict]) -> None:
    uniform = next(r for r in rows if r["strategy"] == "uniform")
    print(f"\nmean bits <= {budget}")
    print(
        f"{'strategy':<14}{'mean bits':>10}{'ppl':>10}{'KL':>10}{'vs uniform':>12}{'evals':>7}{'evals/min':>11}"
    )
    for r in rows:
        gain = (uniform["ppl"] - r["ppl"]) / uniform["ppl"]
        print(
            f"{r['strategy']:<14}{r['mean_bits']:>10.3f}{r['ppl']:>10.3f}{r['kl']:>10.4f}"
            f"{gain:>+12.1%}{r['evaluations']:>7}{r['evals_per_min']:>11.1f}",
            flush=True,
        )


def fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in d.items())


if __name__ == "__main__":
    main()
