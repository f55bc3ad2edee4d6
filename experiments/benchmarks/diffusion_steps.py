"""Benchmark: AutoDiffusion's search on presso's built-in digits DDPM, at the same steps and at
the same measured sampling latency.

For each number of steps k (default 4, 6, 10), two searches (strategy ``autodiffusion``,
staged FID selection on 64 then 256 images by default):

* ``searched``: the time steps alone (a steps space), against uniform DDIM (trailing spacing,
  diffusers' schedule) and DPM-Solver++ (2M) at the same k steps;
* ``searched+skips``: time steps and skipped UNet blocks together (a joint space, at most
  ``--blocks-share`` of the k x 7 block runs; a skipped block reuses its last output), against
  the uniform DDIM and DPM-Solver schedules of the fewest steps whose *measured* latency is
  equal or higher (they get at least the candidate's time).

Every schedule is scored held out (``--heldout`` images from held-out noise against the 360
held-out digits, FID and KID on the digits classifier's features), beside the 100-step DDIM
reference, and timed end to end on the torch CPU backend at batch ``--batch`` (round-robin
passes, so load drifts hit all alike), with the cost model's prediction beside each timing
(its MAPE is printed). Writes ``diffusion_steps.json`` beside this file and a PNG sample grid
per schedule under ``--grids``.

    .venv/bin/python experiments/benchmarks/diffusion_steps.py [--steps 4 6 10] [--generations 10]

Figures are FIDs on a 32-feature digits classifier, not Inception: compare them with each
other, not with published FIDs. Timings on a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.paths import atomic_write_text
from presso.plan import Plan
from presso.search import LocalPool, drive, make_strategy

HERE = Path(__file__).resolve().parent
CANDIDATES = 100


def experiment(
    steps: int, args: argparse.Namespace, blocks: int | None = None, profiles: str = "search"
) -> Experiment:
    space: dict[str, Any] = {"kind": "steps", "steps": steps}
    if blocks is not None:
        space = {"kind": "joint", "steps": steps, "blocks": blocks}
    return Experiment.model_validate(
        {
            "model": args.model,
            "data": {"calibration": args.stages[-1][0], "evaluation": args.heldout, "seed": 0},
            "schedule": {"candidates": CANDIDATES},
            "space": space,
            "hardware": {
                "backend": "torch",
                "workload": {"batch": args.batch},
                "threads": 1,
                "repeats": args.repeats,
                # This run's own timings: parts timed in another session (another load on a
                # shared machine) would not compare with the end-to-end timings taken here.
                "profile_db": str(Path(args.profiles) / f"{profiles}.db"),
            },
        }
    )


def search(setup: Setup, args: argparse.Namespace, **extra: Any) -> tuple[Any, int, float, list]:
    """AutoDiffusion on ``setup``'s space: its best configuration, evaluations, seconds, and
    each generation's surviving parent's fitness (the second stage numbered on)."""
    start = time.perf_counter()
    options = {
        "generations": args.generations,
        "offspring": args.offspring,
        "stages": [tuple(s) for s in args.stages],
        **extra,
    }
    strategy = make_strategy("autodiffusion", setup.space, seed=args.seed, **options)
    evaluations = drive(strategy, LocalPool(setup.evaluator()))
    seconds = round(time.perf_counter() - start, 1)
    return strategy.best(), evaluations, seconds, [f for _, f in strategy.history]


def schedule_plan(
    grid: list[int], timesteps: list[int], solver: str = "ddim", skips: dict | None = None
) -> Plan:
    """The plan that samples ``timesteps`` of ``grid`` by ``solver`` with ``skips``."""
    from presso.spaces._skips import skip_target

    dropped = [f"timestep.{t}" for t in grid if t not in set(timesteps)]
    dropped += ["solver.ddim"] if solver != "ddim" else []
    dropped += [skip_target(i, b) for i, names in (skips or {}).items() for b in names]
    return Plan({}, tuple(dropped), {"steps": {"candidates": len(grid)}})


def timed(setup: Setup, plans: dict[str, Plan]) -> dict[str, dict[str, float | None]]:
    """Each plan timed end to end (3 round-robin passes) and predicted by the cost model
    (``setup``'s parts, profiled just before: the same load as the timings)."""
    from presso.cost_models._campaign import interleaved

    setup.prepare()
    todo = [(name, setup.workload, plan) for name, plan in plans.items()]
    measured = {m.op: m.median_ms for m in interleaved(setup.handle, setup.profiler, todo)}
    return {
        name: {"measured_ms": measured[name], "predicted_ms": setup.latency.predict(plan)}
        for name, plan in plans.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits-ddpm")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 6, 10])
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--skip-generations", type=int, default=10)
    p.add_argument("--offspring", type=int, default=8)
    p.add_argument("--stages", type=json.loads, default=[[64, 2], [256, 1]])
    p.add_argument("--blocks-share", type=float, default=0.75)
    p.add_argument("--heldout", type=int, default=360)
    p.add_argument("--batch", type=int, default=16, help="images sampled together when timed")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grids", default=str(HERE / "diffusion_grids"))
    p.add_argument("--out", default=str(HERE / "diffusion_steps.json"))
    p.add_argument("--profiles", default=None, help="folder of this run's profile databases")
    args = p.parse_args()
    if args.profiles is None:
        import tempfile

        args.profiles = tempfile.mkdtemp(prefix="presso-profiles-")
    torch.set_num_threads(1)
    from presso.diffusion._grid import grid_png

    grids = Path(args.grids)
    grids.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": args.model, "options": vars(args), "runs": []}
    started = time.perf_counter()
    first = Setup(experiment(max(args.steps), args))
    first.prepare()  # the sampling parts, timed once into the profile database
    evaluator = first.evaluator()
    grid = evaluator.grid
    per_step = len(first.handle.unet_blocks())
    heldout: dict[str, dict[str, float]] = {}

    def score(name: str, timesteps: list[int], solver: str = "ddim", skips: dict | None = None):
        if name not in heldout:
            heldout[name] = evaluator.heldout_schedule(timesteps, solver, skips)
            grid_png(evaluator.images(timesteps, 64, 0, solver, skips), grids / f"{name}.png")
        return heldout[name]

    plans: dict[str, Plan] = {"ddim-100": schedule_plan(grid, grid)}
    for j in range(1, max(args.steps) + 1):
        uniform = [grid[(i * len(grid)) // j] for i in range(j)]
        plans[f"ddim-{j}"] = schedule_plan(grid, uniform)
        plans[f"dpm-solver-{j}"] = schedule_plan(grid, uniform, "dpm-solver")
    rows = []
    for k in args.steps:
        steps_setup = Setup(experiment(k, args))
        best, n, seconds, history = search(steps_setup, args)
        searched = steps_setup.evaluator().schedule(best)
        blocks = round(args.blocks_share * per_step * k)
        joint = Setup(experiment(k, args, blocks))
        best_joint, n_joint, seconds_joint, joint_history = search(
            joint, args, skip_generations=args.skip_generations
        )
        joint_eval = joint.evaluator()
        joint_steps, _, joint_skips = joint_eval.sampling(best_joint)
        plans[f"searched-{k}"] = schedule_plan(grid, searched)
        plans[f"searched+skips-{k}"] = schedule_plan(grid, joint_steps, skips=joint_skips)
        rows.append(
            {
                "steps": k,
                "searched": searched,
                "search_evaluations": n,
                "search_s": seconds,
                "blocks_budget": blocks,
                "searched_skips": {"timesteps": joint_steps, "skips": joint_skips},
                "skips_evaluations": n_joint,
                "skips_search_s": seconds_joint,
                # Each generation's parent's FID on its selection draw: steps alone; then
                # the joint run, its first stage (generations) then its second (skips).
                "history": history,
                "skips_history": joint_history,
            }
        )
        print(f"{k} steps searched in {seconds + seconds_joint:.0f} s", flush=True)
    latency = timed(Setup(experiment(max(args.steps), args, profiles="check")), plans)
    report["latency"] = latency
    ok = [v for v in latency.values() if v["measured_ms"]]
    errors = [abs(v["predicted_ms"] - v["measured_ms"]) / v["measured_ms"] for v in ok]
    report["latency_mape"] = float(np.mean(errors))
    report["latency_within_10"] = float(np.mean([e <= 0.10 for e in errors]))
    print(f"predicted vs measured sampling latency: MAPE {np.mean(errors):.1%} over {len(ok)}")

    def ms(name: str) -> float:
        return latency[name]["measured_ms"] or float("inf")

    def uniform_at_least(solver: str, target: float, most: int) -> int:
        """The fewest steps whose measured latency is equal or higher than ``target``."""
        return next((j for j in range(1, most + 1) if ms(f"{solver}-{j}") >= target), most)

    for row in rows:
        k = row["steps"]
        uniform = [grid[(i * len(grid)) // k] for i in range(k)]
        row["same_steps"] = {
            "searched": score(f"searched-{k}", row["searched"]),
            "ddim": score(f"ddim-{k}", uniform),
            "dpm_solver": score(f"dpm-solver-{k}", uniform, "dpm-solver"),
            "searched_ms": ms(f"searched-{k}"),
            "ddim_ms": ms(f"ddim-{k}"),
            "dpm_solver_ms": ms(f"dpm-solver-{k}"),
        }
        js = row["searched_skips"]
        target = ms(f"searched+skips-{k}")
        j_ddim = uniform_at_least("ddim", target, k)
        j_dpm = uniform_at_least("dpm-solver", target, k)
        u_ddim = [grid[(i * len(grid)) // j_ddim] for i in range(j_ddim)]
        u_dpm = [grid[(i * len(grid)) // j_dpm] for i in range(j_dpm)]
        skips = {int(i): b for i, b in js["skips"].items()}
        row["same_latency"] = {
            "searched_skips": score(f"searched+skips-{k}", js["timesteps"], "ddim", skips),
            "searched_skips_ms": target,
            "ddim_steps": j_ddim,
            "ddim": score(f"ddim-{j_ddim}", u_ddim),
            "ddim_ms": ms(f"ddim-{j_ddim}"),
            "dpm_solver_steps": j_dpm,
            "dpm_solver": score(f"dpm-solver-{j_dpm}", u_dpm, "dpm-solver"),
            "dpm_solver_ms": ms(f"dpm-solver-{j_dpm}"),
        }
        s, u, d = (row["same_steps"][c]["fid"] for c in ("searched", "ddim", "dpm_solver"))
        print(f"{k} steps: FID searched {s:.2f}, uniform DDIM {u:.2f}, DPM-Solver {d:.2f}")
        lat = row["same_latency"]
        print(
            f"  at >= {target:.1f} ms: searched+skips FID {lat['searched_skips']['fid']:.2f}; "
            f"DDIM-{j_ddim} {lat['ddim']['fid']:.2f} ({lat['ddim_ms']:.1f} ms); "
            f"DPM-Solver-{j_dpm} {lat['dpm_solver']['fid']:.2f} ({lat['dpm_solver_ms']:.1f} ms)"
        )
        report["runs"].append(row)
    report["ddim_100_heldout"] = score("ddim-100", grid)
    report["ddim_100_ms"] = ms("ddim-100")
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(f"100-step DDIM: FID {report['ddim_100_heldout']['fid']:.3f}, {ms('ddim-100'):.0f} ms")
    atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
