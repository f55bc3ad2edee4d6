"""Benchmark: evaluations per minute in-process against Ray workers, and where the time goes.

The same search (the main job's EvoPress, a few generations, same seed: the same requests in
every mode) runs on SmolLM2 and MiniLM:

- ``in-process``: one evaluator using every core (torch threads = cores), the default runner;
- ``in-process-1``: one evaluator on one thread (what one Ray worker has);
- ``ray-1`` / ``ray-2``: a local Ray instance with 1 or 2 workers of one thread each;
- ``cluster-2`` (``--cluster``): a two-node cluster on this machine (a head node with no CPUs,
  a worker node with 2; own temp dirs and presso caches), the workers building levels and the
  dense reference in their node's cache.

Per mode: pool start-up (Ray connect, actors built: model load, level database, reference),
search wall time, evaluations per minute and its ratio to ``in-process`` measured in the same
run, and for the pools the workers' busy share (evaluation seconds summed over workers, against
wall time x workers): the rest is idle (a stage with fewer requests than workers) or transfer.
Every mode must return the same fitness values as in-process; the script checks it. Ratios are
given against both in-process runs: with every core, and per core (one thread), since on a
machine with as many cores as workers the first bounds what workers can add (cores / the
in-process threading speed-up).

    .venv/bin/python experiments/benchmarks/scaling.py [--models smollm2-135m minilm-l6]
        [--generations 4] [--cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from bits_search import MAIN, experiment

from presso.evaluation import Request
from presso.experiment import EvaluatorFactory, Setup
from presso.paths import atomic_write_text
from presso.search import LocalPool, RayPool, drive, make_strategy
from presso.search._cluster import two_node_cluster


def search(setup: Setup, pool, generations: int, workers: int) -> tuple[list, float, float]:  # noqa: ANN001
    """The main job's EvoPress for ``generations``: (results, wall seconds, busy seconds).
    Each worker first scores the uniform configuration once, untimed: the first evaluation of
    a process reads the levels from disk, which ``ready`` of a pool should not hide."""
    warm = [Request(setup.space.best_uniform(), tokens=512)] * max(1, workers)
    list(pool.map(warm))
    context = setup.context([("evopress", {})], evaluator=setup.evaluator())
    options = {**MAIN, "generations": generations}
    strategy = make_strategy("evopress", setup.space, seed=0, context=context, **options)
    results: list = []

    def record(step: int, i: int, request, result) -> None:  # noqa: ANN001
        results.append((step, i, request.tag, result.fitness, result.seconds))

    start = time.perf_counter()
    drive(strategy, pool, on_result=record)
    wall = time.perf_counter() - start
    return sorted(results), wall, sum(r[4] for r in results)


def row(mode: str, workers: int, ready_s: float, results: list, wall: float, busy: float) -> dict:
    return {
        "mode": mode,
        "workers": workers,
        "ready_s": ready_s,
        "search_s": wall,
        "evaluations": len(results),
        "evals_per_min": 60 * len(results) / wall,
        "busy_share": busy / (wall * max(1, workers)),
    }


def ray_mode(setup: Setup, workers: int, generations: int, address: str | None) -> tuple:
    start = time.perf_counter()
    if address:
        import ray

        ray.init(address=address, log_to_driver=False)
        deadline = time.time() + 180
        while ray.cluster_resources().get("CPU", 0) < workers:  # the worker node has joined
            if time.time() > deadline:
                raise RuntimeError(f"the worker node did not join: {ray.cluster_resources()}")
            time.sleep(0.5)
    factory = EvaluatorFactory(setup.to_spec(), build=bool(address))
    pool = RayPool(factory, workers=workers, address=address, threads=1)
    pool.pids()  # returns once every actor has built its evaluator
    ready = time.perf_counter() - start
    try:
        results, wall, busy = search(setup, pool, generations, workers)
    finally:
        pool.close()
        import ray

        ray.shutdown()
    return ready, results, wall, busy


def bench_model(model: str, generations: int, cluster: bool) -> dict:
    setup = Setup(experiment(model, 3.0))
    setup.prepare()
    rows, reference = [], None
    for mode, threads in (("in-process", os.cpu_count() or 1), ("in-process-1", 1)):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        pool = LocalPool(setup.evaluator())
        ready = time.perf_counter() - start
        results, wall, busy = search(setup, pool, generations, 0)
        reference = reference or results
        rows.append(row(mode, 0, ready, results, wall, busy))
        print(json.dumps(rows[-1]), flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    modes = [("ray-1", 1, None), ("ray-2", 2, None)]
    if cluster:
        modes.append(("cluster-2", 2, "cluster"))
    for mode, workers, where in modes:
        if where == "cluster":
            caches = [Path(tempfile.mkdtemp(prefix="presso-node-")) for _ in range(2)]
            with two_node_cluster((caches[0], caches[1]), cpus=workers) as address:
                ready, results, wall, busy = ray_mode(setup, workers, generations, address)
            for cache in caches:
                shutil.rmtree(cache, ignore_errors=True)
        else:
            ready, results, wall, busy = ray_mode(setup, workers, generations, None)
        rows.append(row(mode, workers, ready, results, wall, busy))
        rows[-1]["same_results"] = [r[:4] for r in results] == [r[:4] for r in reference]
        print(json.dumps(rows[-1]), flush=True)
    base, one = rows[0]["evals_per_min"], rows[1]["evals_per_min"]
    for r in rows:
        r["vs_in_process"] = r["evals_per_min"] / base
        r["vs_one_thread"] = r["evals_per_min"] / one  # per core: what a worker could give
    return {"generations": generations, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "minilm-l6"])
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--cluster", action="store_true", help="also a two-node cluster")
    parser.add_argument("--out", default="experiments/benchmarks/scaling.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    report = {"cores": os.cpu_count(), "search": {**MAIN, "generations": args.generations}}
    for model in args.models:
        report[model] = bench_model(model, args.generations, args.cluster)
        atomic_write_text(Path(args.out), json.dumps(report, indent=2))
        print(f"\n{model}")
        print(
            f"{'mode':<14}{'ready s':>9}{'search s':>10}{'evals/min':>11}{'ratio':>7}{'/1 thr':>7}{'busy':>6}"
        )
        for r in report[model]["rows"]:
            print(
                f"{r['mode']:<14}{r['ready_s']:>9.1f}{r['search_s']:>10.1f}"
                f"{r['evals_per_min']:>11.1f}{r['vs_in_process']:>7.2f}{r['vs_one_thread']:>7.2f}"
                f"{r['busy_share']:>6.2f}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
