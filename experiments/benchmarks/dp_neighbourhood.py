"""Benchmark: is the dp start a local optimum of the search's own fitness?

When presso's default search returns exactly its start (the sensitivity table's exact optimum,
strategy ``dp``), either the search was too weak to improve it or nothing near it is better.
This script tells the two apart: it scores, on the whole calibration pool (the fitness the
default's final confirmation uses), every single level switch between two units of the same
shape that keeps the budget exactly, and a seeded sample of the moves EvoPress's mutation makes
(1-3 switches; here half of them across shapes, with further units lowered until the child fits,
which the default mutation does not do). It reports how many neighbours beat the start on the
pool and their held-out metric beside the start's. ``perturbed_tables`` looks further away:
dp re-solved on the table with seeded log-normal noise on every entry (sigma 0.1 to 0.8), which
moves 2 to 16 units at once to other informed solutions of the same budget.

    .venv/bin/python experiments/benchmarks/dp_neighbourhood.py [--model minilm-l6] [--bits 3.0]
        [--only perturbed_tables]   # one section, merged into the JSON already there
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from bits_search import experiment

from presso.evaluation import Request
from presso.experiment import Setup
from presso.paths import atomic_write_text
from presso.search import LocalPool, drive, make_strategy
from presso.search._dp import solve
from presso.search._evopress import LevelSwitch

SIGMAS = (0.1, 0.2, 0.4, 0.8)


def single_switches(space, start):  # noqa: ANN001, ANN201
    """Every budget-exact move: one unit a level up, another of its shape a level down."""
    for a, dim_a in enumerate(space.dims):
        for b, dim_b in enumerate(space.dims):
            if a == b or dim_a.group != dim_b.group:
                continue
            if start[a] + 1 >= len(dim_a.levels) or start[b] == 0:
                continue
            child = list(start)
            child[a] += 1
            child[b] -= 1
            if space.is_feasible(tuple(child)):
                yield tuple(child)


def sampled_moves(space, start, n: int, seed: int):  # noqa: ANN001, ANN201
    """``n`` distinct children of EvoPress's mutation, half of them allowed across shapes."""
    rng = np.random.default_rng(seed)
    within = LevelSwitch(max_mutations=3)
    seen = {start}
    for _ in range(50 * n):
        if len(seen) > n:
            break
        child = within(space, start, rng) if rng.random() < 0.5 else cross(space, start, rng)
        if child is not None and child not in seen:
            seen.add(child)
            yield child


def cross(space, start, rng):  # noqa: ANN001, ANN201
    """One unit up, then any other units down one level at a time until the child fits."""
    up = [d for d, dim in enumerate(space.dims) if start[d] < len(dim.levels) - 1]
    a = up[int(rng.integers(len(up)))]
    child = list(start)
    child[a] += 1
    for _ in range(4):
        down = [b for b in range(len(child)) if b != a and child[b] > 0]
        b = down[int(rng.integers(len(down)))]
        child[b] -= 1
        if space.is_feasible(tuple(child)):
            return tuple(child)
    return None


def perturbed_tables(space, start, table, per_sigma: int, seed: int):  # noqa: ANN001, ANN201
    """dp's solutions of the table with multiplicative noise: distinct, other than the start."""
    rng = np.random.default_rng(seed)
    seen = {start}
    for sigma in SIGMAS:
        for _ in range(per_sigma):
            noisy = np.asarray(table) * np.exp(rng.normal(0.0, sigma, size=np.shape(table)))
            child = solve(space, noisy)
            if child not in seen:
                seen.add(child)
                yield child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--bits", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-sigma", type=int, default=10)
    parser.add_argument("--only", choices=["single_switches", "sampled_moves", "perturbed_tables"])
    parser.add_argument("--out", default="experiments/benchmarks/dp_neighbourhood.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = Setup(experiment(args.model, args.bits))
    setup.prepare()
    evaluator = setup.evaluator()
    space = setup.space
    context = setup.context(["dp"], evaluator=evaluator)
    dp = make_strategy("dp", space, seed=0, context=context)
    drive(dp, LocalPool(evaluator))
    start = dp.best()

    def pool(config) -> float:  # noqa: ANN001
        return float(evaluator.evaluate(Request(config, tokens=None)).fitness)

    reference = pool(start)
    out = Path(args.out)
    kept = json.loads(out.read_text()) if args.only and out.exists() else {}
    report = {
        **kept,
        "model": args.model,
        "mean_bits": args.bits,
        "start_levels": space.values(start),
        "start_pool_fitness": reference,
        "start_heldout": evaluator.heldout(start),
    }
    sections = {
        "single_switches": lambda: single_switches(space, start),
        "sampled_moves": lambda: sampled_moves(space, start, args.samples, seed=1),
        "perturbed_tables": lambda: perturbed_tables(
            space, start, context.sensitivity, args.per_sigma, seed=2
        ),
    }
    for name, make in sections.items():
        if args.only and name != args.only:
            continue
        moves = make()
        t = time.perf_counter()
        scored = [(pool(c), c) for c in moves]
        better = sorted((f, c) for f, c in scored if f < reference)
        report[name] = {
            "neighbours": len(scored),
            "units_moved": sorted({sum(a != b for a, b in zip(c, start)) for _, c in scored}),
            "better_on_pool": len(better),
            "best_pool_fitness": min(f for f, _ in scored),
            "better_heldout": [evaluator.heldout(c) for _, c in better[:5]],
            "seconds": time.perf_counter() - t,
        }
        print(f"{name}: {json.dumps(report[name], default=float)}", flush=True)
    report["options"] = {**dataclasses.asdict(LevelSwitch()), "sigmas": SIGMAS}
    atomic_write_text(out, json.dumps(report, indent=2, default=float))
    print(
        f"start: pool fitness {reference:.6f}, held-out {report['start_heldout']}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
