"""Benchmark: per-layer bits search on SmolLM2-135M (and MiniLM), the default search against
every baseline, in one run.

For each mean-bits budget: held-out perplexity and KL of presso's default (EvoPress started
from the sensitivity table's exact optimum, with surrogate screening), the paper's EvoPress
(started from uniform, no screening), and the baselines: uniform, uniform-fill (uniform plus
the budget it leaves unused), random, error-greedy and dp (the exact optimum of the
sensitivity table); evaluations (the table's counted for the strategies that use it), wall
time, and each result's ratio to the best baseline. Also: the sensitivity table's cost, and
how its cheap form (each unit measured at its lowest level) ranks against the full one.
``--encoder`` adds MiniLM at 3.0 bits (cosine distance instead of perplexity).

    .venv/bin/python experiments/benchmarks/bits_search.py [--budgets 2.5 3.0 3.5 4.0] [--encoder]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.paths import atomic_write_text
from presso.search import LocalPool, drive, make_strategy

#: The main job's search (experiments/smollm2-bits.yaml); the default adds nothing to it.
MAIN = {"generations": 16, "offspring": 8, "stages": [[512, 2], [2048, 1]]}
PLAIN = {**MAIN, "start": "uniform", "screen": 0}
BASELINES = ["uniform", "uniform-fill", "random", "error-greedy", "dp"]


def experiment(model: str, mean_bits: float, windows: int | None = None) -> Experiment:
    """The benchmark's experiment; ``windows``: calibration windows (default 32)."""
    encoder = model == "minilm-l6"
    return Experiment.model_validate(
        {
            "name": f"bench-{model}-{mean_bits}",
            "model": model,
            "data": {
                "corpus": "bible",
                "seq_len": 128 if encoder else 256,
                "calibration": windows or 32,
                "evaluation": 8,
            },
            "compress": {
                "operator": "gptq",
                "levels": [2, 3, 4, 8],
                "group_size": 64,
                "calibration": 16,
            },
            "space": {"mean_bits": mean_bits},
        }
    )


def run_strategy(setup: Setup, name: str, options: dict, context, table_evals: int) -> dict:
    evaluator = setup.evaluator()
    strategy = make_strategy(name, setup.space, seed=0, context=context, **options)
    start = time.perf_counter()
    n = drive(strategy, LocalPool(evaluator))
    seconds = time.perf_counter() - start
    best = strategy.best()
    uses_table = "sensitivity" in type(strategy).needs(options)
    return {
        "strategy": label(name, options),
        "evaluations": n,
        "table_evaluations": table_evals if uses_table else 0,
        "search_s": seconds,
        "mean_bits": setup.space.constraints[0].value(setup.space, best),
        "levels": setup.space.values(best),
        **evaluator.heldout(best),
    }


def label(name: str, options: dict) -> str:
    if name != "evopress":
        return name
    return "evopress-plain" if options.get("start") == "uniform" else "default"


def ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare_tables(setup: Setup, evaluator) -> dict:  # noqa: ANN001
    """The cheap table (lowest level measured) against the full one: rank agreement of every
    entry below the top level, and the cost of each."""
    out = {}
    tables = {}
    for measure in ("lowest", "all"):
        t = setup.sensitivity_table(evaluator, measure)
        start = time.perf_counter()
        tables[measure] = np.asarray(t.build())[:, :-1]
        out[f"{measure}_evaluations"] = t.evaluations()
        out[f"{measure}_s"] = time.perf_counter() - start  # 0-ish when cached
    out["spearman_all_entries"] = spearman(tables["lowest"].ravel(), tables["all"].ravel())
    out["spearman_per_level"] = [
        spearman(tables["lowest"][:, lv], tables["all"][:, lv])
        for lv in range(tables["all"].shape[1])
    ]
    return out


def bench_budget(
    setup: Setup, evaluator, table_evals: int, encoder: bool, plain: bool
) -> list[dict]:  # noqa: ANN001
    context = setup.context([("evopress", {}), *BASELINES], evaluator=evaluator)
    rows = [run_strategy(setup, "evopress", MAIN, context, table_evals)]
    if plain:
        rows.append(run_strategy(setup, "evopress", PLAIN, context, table_evals))
    rows += [
        run_strategy(setup, "uniform", {}, context, table_evals),
        run_strategy(setup, "uniform-fill", {}, context, table_evals),
        run_strategy(setup, "random", {"samples": 8, "tokens": 2048}, context, table_evals),
        run_strategy(setup, "error-greedy", {}, context, table_evals),
        run_strategy(setup, "dp", {}, context, table_evals),
    ]
    metric = "cos_dist" if encoder else "ppl"
    best = min(r[metric] for r in rows if r["strategy"] in BASELINES)
    for r in rows:
        r["vs_best_baseline"] = r[metric] / best
    return rows


def reconfirm(path: Path, threads: int) -> None:
    """Apply the default's final step (``confirm``: the final parent against its dp start, on
    the whole calibration pool) to default rows measured before that step existed. The search
    before it is unchanged, so this is what the default now returns; the row records which won."""
    from presso.search import Request

    torch.set_num_threads(threads)
    report = json.loads(path.read_text())
    setups: dict[str, Setup] = {}
    for key, rows in report["budgets"].items():
        model, budget = key.split("@")
        default = next(r for r in rows if r["strategy"] == "default")
        dp = next(r for r in rows if r["strategy"] == "dp")
        if "confirmed" in default:
            continue
        setup = Setup(experiment(model, float(budget)))
        if model in setups:
            setup.handle, setup.data = setups[model].handle, setups[model].data
        setups.setdefault(model, setup)
        setup.prepare()
        evaluator = setup.evaluator()
        pool = {}
        for row in (default, dp):
            config = setup.space.from_dict(dict(zip(setup.space.names, row["levels"])))
            pool[row["strategy"]] = evaluator.evaluate(Request(config, tokens=None)).fitness
        default["confirmed"] = "start" if pool["dp"] < pool["default"] else "search"
        default["pool_fitness"] = pool
        if default["confirmed"] == "start":
            metric = "cos_dist" if "minilm" in model else "ppl"
            for k in ("levels", "mean_bits", metric, "kl", "vs_best_baseline"):
                if k in dp:
                    default[k] = dp[k]
        print(f"{key}: whole-pool fitness {pool}; the default returns its {default['confirmed']}")
        path.write_text(json.dumps(report, indent=2, default=float))


def print_rows(title: str, rows: list[dict], metric: str) -> None:
    print(f"\n{title}")
    print(
        f"{'strategy':<16}{'mean bits':>10}{metric:>11}{'vs best baseline':>18}{'evals':>7}"
        f"{'+table':>8}{'s':>7}"
    )
    for r in rows:
        print(
            f"{r['strategy']:<16}{r['mean_bits']:>10.3f}{r[metric]:>11.4f}"
            f"{r['vs_best_baseline']:>18.3f}{r['evaluations']:>7}{r['table_evaluations']:>8}"
            f"{r['search_s']:>7.0f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.5, 3.0, 3.5, 4.0])
    parser.add_argument("--encoder", action="store_true", help="also MiniLM at 3.0 bits")
    parser.add_argument(
        "--encoder-windows",
        type=int,
        default=None,
        help="MiniLM's calibration windows (default 32 of 128 tokens; 64 gives it SmolLM2's "
        "8192 calibration tokens)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--plain-at",
        type=float,
        nargs="*",
        default=None,
        help="budgets at which the paper's EvoPress runs too (default: every budget)",
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="the causal LM (tiny-llama: a smoke test)"
    )
    parser.add_argument("--out", default="experiments/benchmarks/bits_search.json")
    parser.add_argument("--no-tables", action="store_true", help="skip comparing the two tables")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the budgets run now in --out, keep the others",
    )
    parser.add_argument(
        "--reconfirm",
        action="store_true",
        help="apply the default's final confirmation to the default rows in --out",
    )
    args = parser.parse_args()
    if args.reconfirm:
        reconfirm(Path(args.out), args.threads)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    report: dict = {"budgets": {}, "main_options": MAIN, "plain_options": PLAIN}
    if args.merge and out.exists():  # budgets not run now keep their rows from an earlier run
        report = {**json.loads(out.read_text()), "main_options": MAIN, "plain_options": PLAIN}

    def save() -> None:
        atomic_write_text(out, json.dumps(report, indent=2, default=float))

    cases = [(args.model, b) for b in args.budgets]
    if args.encoder:
        cases.append(("minilm-l6", 3.0))
    first: dict[str, Setup] = {}
    for model, budget in cases:
        windows = args.encoder_windows if model == "minilm-l6" else None
        setup = Setup(experiment(model, budget, windows))
        if model in first:  # same model, data and levels: only the budget differs
            setup.handle, setup.data = first[model].handle, first[model].data
        else:
            first[model] = setup
            report[f"{model}_prepare"] = setup.prepare()
        evaluator = setup.evaluator()
        key = f"{model}_tables"
        if key not in report and not args.no_tables:
            report[key] = compare_tables(setup, evaluator)
            t = report[key]
            print(
                f"{model}: sensitivity table, lowest level only: {t['lowest_evaluations']} "
                f"evaluations; every level: {t['all_evaluations']}; Spearman rank correlation of "
                f"their entries {t['spearman_all_entries']:.3f} (per level "
                f"{', '.join(f'{x:.3f}' for x in t['spearman_per_level'])})"
            )
        table_evals = setup.sensitivity_table(evaluator).evaluations()
        encoder = model == "minilm-l6"
        plain = args.plain_at is None or budget in args.plain_at
        rows = bench_budget(setup, evaluator, table_evals, encoder, plain)
        report["budgets"][f"{model}@{budget}"] = rows
        print_rows(f"{model}, mean bits <= {budget}", rows, "cos_dist" if encoder else "ppl")
        save()
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
