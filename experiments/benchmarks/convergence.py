"""Benchmark: best-so-far curve of one search on SmolLM2-135M bits, in held-out perplexity.

Drives a strategy on the main job's setup (Bible windows, GPTQ levels {2, 3, 4, 8}, mean bits
``--budget``) and, every ``--every`` generations, scores the current best configuration on the
held-out windows. Evaluations are counted as they are spent, the sensitivity table's
included (``table_evaluations``: the table's entries, each on ``sensitivity.tokens`` tokens),
and tokens too (``tokens``: calibration tokens scored, a cost that compares across stages).
The JSON is rewritten after every checkpoint, so a run cut off keeps its curve.

    # plain EvoPress (the paper's operators, started from uniform) for 10x the main job:
    .venv/bin/python experiments/benchmarks/convergence.py --label plain --generations 160 \\
        --options '{"start": "uniform", "screen": 0}' --every 5
    # presso's default, as the main job runs it:
    .venv/bin/python experiments/benchmarks/convergence.py --label default --generations 16 --every 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import LocalPool, make_strategy

MAIN_JOB = Path(__file__).parents[1] / "smollm2-bits.yaml"


def experiment(budget: float) -> Experiment:
    import yaml

    spec = yaml.safe_load(MAIN_JOB.read_text())
    spec["space"]["mean_bits"] = budget
    spec["name"] = f"convergence-{budget}"
    return Experiment.model_validate(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument(
        "--options", default="{}", help="strategy options (JSON) over the main job's"
    )
    parser.add_argument("--every", type=int, default=1, help="generations between checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"experiments/benchmarks/convergence-{args.label}.json")

    exp = experiment(args.budget)
    options = {**exp.search.options, **json.loads(args.options), "generations": args.generations}
    setup = Setup(exp)
    setup.prepare()
    evaluator = setup.evaluator()
    start = time.perf_counter()
    context = setup.context([(exp.search.strategy, options)], evaluator=evaluator)
    table_s = time.perf_counter() - start
    table = setup.sensitivity_table(evaluator).evaluations() if context.sensitivity else 0
    strategy = make_strategy(exp.search.strategy, setup.space, seed=0, context=context, **options)
    pool = LocalPool(evaluator)
    tokens_per = exp.search.sensitivity.tokens
    report = {
        "label": args.label,
        "budget": args.budget,
        "options": options,
        "table_evaluations": table,
        "table_tokens": table * tokens_per,
        "table_s": table_s,
        "curve": [],
    }
    # References in the same run: every unit at 8 bits (near dense) and uniform.
    top = tuple(len(d.levels) - 1 for d in setup.space.dims)
    report["top_heldout"] = evaluator.heldout(top)
    report["uniform_heldout"] = evaluator.heldout(setup.space.best_uniform())
    evaluations, tokens, generation = 0, 0, 0
    search_start = time.perf_counter()
    while not strategy.finished:
        requests = strategy.ask()
        results = [r for _, r in sorted(pool.map(requests), key=lambda x: x[0])]
        strategy.tell(requests, results)
        evaluations += len(requests)
        tokens += sum((r.tokens or evaluator.data.calibration.numel()) for r in requests)
        history = getattr(strategy, "history", [])
        if len(history) > generation:
            generation = len(history)
            if generation % args.every == 0 or strategy.finished:
                point = {
                    "generation": generation,
                    "evaluations": evaluations,
                    "tokens": tokens,
                    "seconds": time.perf_counter() - search_start,
                    "fitness": history[-1][1],
                    **evaluator.heldout(strategy.best()),
                }
                report["curve"].append(point)
                print(json.dumps(point), flush=True)
                out.write_text(json.dumps(report, indent=2))
    report["final"] = report["curve"][-1] if report["curve"] else None
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
