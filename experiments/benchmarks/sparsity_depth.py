"""Benchmark: sparsity, depth and multi-objective search on SmolLM2-135M, in one run.

1. Per-unit sparsity at 50/60/70% mean: presso's default (EvoPress from the sensitivity
   table's exact optimum, with surrogate screening) and the paper's EvoPress (from uniform, no
   screening) vs uniform, OWL and dp (held-out perplexity, ratio to the best baseline).
   uniform-fill equals uniform here (every budget is a level).
2. Dropping 4 and 8 of the 30 blocks: the same two searches vs ShortGPT-style block influence
   and dp (the blocks whose lone drop costs least).
3. With ``--multiobjective``: bits with objectives (kl, mean_bits): NSGA-II vs random sampling,
   hypervolume at equal evaluations (same reference point for both).

    .venv/bin/python experiments/benchmarks/sparsity_depth.py [--generations 16] [--multiobjective]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.pareto import hypervolume, non_dominated
from presso.paths import atomic_write_text
from presso.search import LocalPool, drive, make_strategy


def experiment(space: dict, args: argparse.Namespace) -> Experiment:
    return Experiment.model_validate(
        {
            "model": args.model,
            "data": {"corpus": "bible", "seq_len": 256, "calibration": 32, "evaluation": 8},
            "compress": {
                "operator": "gptq",
                "levels": [2, 3, 4, 8],
                "group_size": 64,
                "calibration": 16,
            },
            "sparsity": {
                "operator": args.sparsity_operator,
                "levels": [0, 30, 40, 50, 60, 70, 80, 90],
                "calibration": 16,
            },
            "space": space,
        }
    )


def share(setup: Setup, first: Setup) -> Setup:
    """Reuse the loaded model and data (only the space differs)."""
    setup.handle, setup.data = first.handle, first.data
    return setup


def run(setup: Setup, name: str, options: dict, strategies: list) -> dict:
    evaluator = setup.evaluator()
    context = setup.context(strategies, evaluator=evaluator)
    strategy = make_strategy(name, setup.space, seed=0, context=context, **options)
    start = time.perf_counter()
    n = drive(strategy, LocalPool(evaluator))
    best = strategy.best()
    label = name
    if name == "evopress":
        label = "evopress-plain" if options.get("start") == "uniform" else "default"
    row = {"strategy": label, "evaluations": n, "search_s": time.perf_counter() - start}
    row["table_evaluations"] = (
        setup.sensitivity_table(evaluator).evaluations()
        if "sensitivity" in type(strategy).needs(options)
        else 0
    )
    row.update({c.metric: c.value(setup.space, best) for c in setup.space.constraints})
    row.update(evaluator.heldout(best))
    # The next setup shares this model: give it back whole (every block kept, dense weights).
    evaluator.apply(tuple(len(d.levels) - 1 for d in setup.space.dims))
    setup.handle.restore_dense()
    return row


def compare(
    setup: Setup, evo: dict, baselines: list[str], strategies: list, plain: bool = True
) -> list[dict]:
    """The default and the paper's EvoPress, then the baselines; ratios to the best baseline."""
    rows = [run(setup, "evopress", evo, strategies)]
    if plain:
        rows.append(run(setup, "evopress", {**evo, "start": "uniform", "screen": 0}, strategies))
    rows += [run(setup, b, {}, strategies) for b in baselines]
    best = min(r["ppl"] for r in rows if r["strategy"] in baselines)
    for r in rows:
        r["vs_best_baseline"] = r["ppl"] / best
    return rows


def table(title: str, rows: list[dict], budget: str) -> None:
    print(f"\n{title}")
    print(
        f"{'strategy':<16}{budget:>14}{'ppl':>10}{'KL':>9}{'vs best baseline':>18}{'evals':>7}"
        f"{'+table':>8}{'s':>7}"
    )
    for r in rows:
        print(
            f"{r['strategy']:<16}{r[budget]:>14.2f}{r['ppl']:>10.2f}{r['kl']:>9.4f}"
            f"{r['vs_best_baseline']:>18.3f}{r['evaluations']:>7}{r['table_evaluations']:>8}"
            f"{r['search_s']:>7.0f}",
            flush=True,
        )


def pareto_hv(
    setup: Setup, name: str, options: dict, objectives: list[str], ref: np.ndarray | None
):
    evaluator = setup.evaluator()
    strategy = make_strategy(name, setup.space, seed=0, **options)
    points: list[list[float]] = []

    class Recording(LocalPool):
        def map(self, requests):
            for i, result in super().map(requests):
                if result.ok:
                    points.append([result.metrics[o] for o in objectives])
                yield i, result

    start = time.perf_counter()
    n = drive(strategy, Recording(evaluator))
    return np.asarray(points), n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--multiobjective", action="store_true")
    parser.add_argument("--no-plain", action="store_true", help="skip the paper's EvoPress")
    parser.add_argument("--model", default="smollm2-135m", help="tiny-llama: a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--sparsity", type=float, nargs="*", default=[50, 60, 70])
    parser.add_argument("--drops", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--mo-evaluations", type=int, default=48)
    parser.add_argument("--sparsity-operator", default="sparsegpt")
    parser.add_argument("--out", default="experiments/benchmarks/sparsity_depth.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    evo = {
        "generations": args.generations,
        "offspring": args.offspring,
        "stages": [[512, 2], [2048, 1]],
    }
    report: dict = {}
    out = Path(args.out)

    def save() -> None:
        """After every section, atomically: a long run cut short keeps what it measured."""
        atomic_write_text(out, json.dumps(report, indent=2, default=float))

    first = Setup(
        experiment({"kind": "sparsity", "mean_sparsity": (args.sparsity or [50])[0]}, args)
    )
    report["prepare"] = first.prepare()
    for target in args.sparsity:
        s = share(Setup(experiment({"kind": "sparsity", "mean_sparsity": target}, args)), first)
        baselines = ["uniform", "owl", "dp"]
        rows = compare(s, evo, baselines, [("evopress", evo), *baselines], not args.no_plain)
        report[f"sparsity_{target:g}"] = rows
        table(f"mean sparsity >= {target:g}%", rows, "mean_sparsity")
        save()

    for k in args.drops:
        s = share(Setup(experiment({"kind": "depth", "dropped": k}, args)), first)
        baselines = ["shortgpt", "dp"]
        rows = compare(s, evo, baselines, [("evopress", evo), *baselines], not args.no_plain)
        report[f"depth_{k}"] = rows
        table(f"drop {k} blocks", rows, "dropped")
        save()

    if not args.multiobjective:
        print(f"wrote {out}")
        return
    s = share(Setup(experiment({"kind": "bits", "mean_bits": 4.0}, args)), first)
    s.prepare()
    objectives = ["kl", "mean_bits"]
    pop = 8
    nsga = {
        "population": pop,
        "generations": args.mo_evaluations // pop,
        "objectives": objectives,
        "tokens": 1024,
    }
    rand = {"samples": args.mo_evaluations, "batch": 8, "tokens": 1024}
    p_nsga, n_nsga, t_nsga = pareto_hv(s, "nsga2", nsga, objectives, None)
    p_rand, n_rand, t_rand = pareto_hv(s, "random", rand, objectives, None)
    both = np.vstack([p_nsga, p_rand])
    ref = both.max(axis=0) * 1.1
    hv_n = hypervolume(p_nsga[non_dominated(p_nsga)], ref)
    hv_r = hypervolume(p_rand[non_dominated(p_rand)], ref)
    report["multiobjective"] = {
        "nsga2": {"evaluations": n_nsga, "hypervolume": hv_n, "search_s": t_nsga},
        "random": {"evaluations": n_rand, "hypervolume": hv_r, "search_s": t_rand},
        "reference": ref.tolist(),
        "ratio": hv_n / hv_r if hv_r else None,
    }
    print(
        f"\nNSGA-II vs random over (kl, mean_bits <= 4): hypervolume {hv_n:.4g} vs {hv_r:.4g} "
        f"({hv_n / hv_r:.2f}x) at {n_nsga} vs {n_rand} evaluations"
    )
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
