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
import os
import time
from pathlib import Path
from typing import Any

import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.paths import cache_dir, digest
from presso.search import LocalPool, Request, Result, Strategy, drive, make_strategy

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
    parser.add_argument(
        "--record",
        default=None,
        help="evaluations record to resume from (default: one per label, budget and options "
        "under the presso cache)",
    )
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
    fresh = {
        "label": args.label,
        "budget": args.budget,
        "options": options,
        "table_evaluations": table,
        "table_tokens": table * tokens_per,
        "table_s": table_s,
        "curve": [],
    }
    # A run cut off (or stopped by a session's end) goes on where it stopped: every evaluation
    # is appended to the record as it finishes, and a restart replays the record into the
    # strategy (the runner's resume) instead of evaluating again.
    key = digest(
        [args.label, args.budget, {k: v for k, v in options.items() if k != "generations"}]
    )
    default_record = cache_dir() / "benchmarks" / f"convergence-{args.label}-{key}.jsonl"
    record = Path(args.record) if args.record else default_record
    record.parent.mkdir(parents=True, exist_ok=True)
    stored = _read_record(record)
    report = fresh
    if stored and out.exists():
        kept = json.loads(out.read_text())
        if _same_run(kept, fresh):
            report = {**kept, "options": options}
    if stored:
        print(f"resuming from {record}: {len(stored)} evaluations recorded", flush=True)
    # References in the same run: every unit at 8 bits (near dense) and uniform.
    top = tuple(len(d.levels) - 1 for d in setup.space.dims)
    report["top_heldout"] = evaluator.heldout(top)
    report["uniform_heldout"] = evaluator.heldout(setup.space.best_uniform())
    done = {point["generation"] for point in report["curve"]}
    spent = report["curve"][-1]["seconds"] if report["curve"] else 0.0
    counts = {"evaluations": 0, "tokens": 0, "generation": 0}
    search_start = time.perf_counter()

    def on_result(step: int, i: int, request: Request, result: Result) -> None:
        _append(record, step, i, request, result)

    def on_step(step: int, strategy: Strategy) -> None:
        requests = asked[0]
        counts["evaluations"] += len(requests)
        calibration = evaluator.data.calibration.numel()
        counts["tokens"] += sum((r.tokens or calibration) for r in requests)
        history = getattr(strategy, "history", [])
        if len(history) <= counts["generation"]:
            return
        generation = counts["generation"] = len(history)
        if generation in done or not (generation % args.every == 0 or strategy.finished):
            return
        point = {
            "generation": generation,
            "evaluations": counts["evaluations"],
            "tokens": counts["tokens"],
            "seconds": spent + time.perf_counter() - search_start,
            "fitness": history[-1][1],
            **evaluator.heldout(strategy.best()),
        }
        report["curve"].append(point)
        print(json.dumps(point), flush=True)
        _write(out, report)

    # drive() asks, then tells; on_step needs the requests of the step it follows.
    asked: list[list[Request]] = [[]]
    ask = strategy.ask

    def remembering_ask() -> list[Request]:
        asked[0] = ask()
        return asked[0]

    strategy.ask = remembering_ask  # type: ignore[method-assign]
    drive(strategy, pool, stored=stored, on_result=on_result, on_step=on_step)
    report["final"] = report["curve"][-1] if report["curve"] else None
    _write(out, report)
    print(f"wrote {out}")


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two reports are of one run (a longer run extends a shorter one)."""

    def key(r: dict[str, Any]) -> list[Any]:
        rest = {k: v for k, v in r["options"].items() if k != "generations"}
        return [r["label"], r["budget"], rest]

    return key(a) == key(b)


def _write(out: Path, report: dict[str, Any]) -> None:
    from presso.paths import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2) + "\n")


def _append(record: Path, step: int, i: int, request: Request, result: Result) -> None:
    line = {
        "step": step,
        "i": i,
        "request": {
            "config": list(request.config),
            "tokens": request.tokens,
            "sample_seed": request.sample_seed,
            "tag": request.tag,
        },
        "result": {
            "fitness": result.fitness,
            "metrics": result.metrics,
            "error": result.error,
            "seconds": result.seconds,
        },
    }
    with record.open("a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_record(record: Path) -> dict[tuple[int, int], tuple[Request, Result]]:
    """The recorded evaluations by (step, position); a line torn by a kill is ignored."""
    stored: dict[tuple[int, int], tuple[Request, Result]] = {}
    if not record.exists():
        return stored
    for line in record.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        q = entry["request"]
        request = Request(tuple(q["config"]), q["tokens"], q["sample_seed"], q["tag"])
        stored[(entry["step"], entry["i"])] = (request, Result(**entry["result"]))
    return stored


if __name__ == "__main__":
    main()
