"""Benchmark: AutoDiffusion's time-step search on presso's built-in digits DDPM.

For each number of steps (default 4, 6, 10): the searched schedule (strategy ``autodiffusion``:
EvoPress from uniform DDIM, staged FID selection on 64 then 256 images) against uniform DDIM
(trailing spacing, diffusers' schedule) and DPM-Solver++ (2M) at the same steps, all scored held-out (360 images
from held-out noise against the 360 held-out digits, FID and KID on the digits classifier's
features), and the 100-step DDIM reference. Writes ``diffusion_steps.json`` beside this file
and a PNG sample grid per schedule under ``--grids``.

    .venv/bin/python experiments/benchmarks/diffusion_steps.py [--steps 4 6 10] [--generations 25]

Figures are FIDs on a 32-feature digits classifier, not Inception: compare them with each
other, not with published FIDs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.paths import atomic_write_text
from presso.search import LocalPool, drive, make_strategy

HERE = Path(__file__).resolve().parent


def experiment(steps: int, args: argparse.Namespace) -> Experiment:
    return Experiment.model_validate(
        {
            "model": args.model,
            "data": {"calibration": 256, "evaluation": 360, "seed": 0},
            "schedule": {"candidates": 100},
            "space": {"kind": "steps", "steps": steps},
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits-ddpm")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 6, 10])
    p.add_argument("--generations", type=int, default=25)
    p.add_argument("--offspring", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grids", default=str(HERE / "diffusion_grids"))
    p.add_argument("--out", default=str(HERE / "diffusion_steps.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    from presso.diffusion._grid import grid_png

    grids = Path(args.grids)
    grids.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model, "generations": args.generations, "runs": []}
    for steps in args.steps:
        setup = Setup(experiment(steps, args))
        evaluator = setup.evaluator()
        start = time.perf_counter()
        options = {"generations": args.generations, "offspring": args.offspring}
        strategy = make_strategy(
            "autodiffusion", setup.space, seed=args.seed, context=None, **options
        )
        evaluations = drive(strategy, LocalPool(evaluator))
        searched = evaluator.schedule(strategy.best())
        baseline = evaluator.schedule(make_strategy("ddim", setup.space, seed=0).ask()[0].config)
        dpm = make_strategy("dpm-solver", setup.space, seed=0).ask()[0].config
        row = {
            "steps": steps,
            "searched": searched,
            "uniform": baseline,
            "searched_heldout": evaluator.heldout_schedule(searched),
            "uniform_heldout": evaluator.heldout_schedule(baseline),
            "dpm_solver_heldout": evaluator.heldout(dpm),
            "evaluations": evaluations,
            "search_s": round(time.perf_counter() - start, 1),
        }
        for name in ("searched", "uniform"):
            images = evaluator.images(row[name], 64, 0)
            grid_png(images, grids / f"{name}-{steps}.png")
        s, u = row["searched_heldout"]["fid"], row["uniform_heldout"]["fid"]
        print(f"{steps} steps: searched {searched} FID {s:.3f} vs uniform {baseline} FID {u:.3f}")
        report["runs"].append(row)
    reference = evaluator.heldout_dense()
    report["ddim_100_heldout"] = reference
    grid_png(evaluator.images(evaluator.grid, 64, 0), grids / "uniform-100.png")
    print(f"100-step DDIM: FID {reference['fid']:.3f}")
    atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
