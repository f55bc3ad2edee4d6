"""Benchmark: ZipLM's promise, measured — the most accurate model that really runs 1.5/2/3x
faster, by structured pruning (heads and FFN channels) against uniform structured pruning and
against dropping blocks, on ONNX Runtime (1 thread).

For each model (SmolLM2-135M: decode at a KV length of 128, held-out perplexity; MiniLM-L6:
one 128-token sequence, held-out cosine distance to the dense embeddings) and each target:
1. ``structured``: one presso run with ``space: {kind: structured, speedup: T}`` — EvoPress
   from SPDY's dynamic program over the measured latency table (``dp``), both stored, and the
   ``uniform`` baseline (the one kept percent everywhere whose predicted latency fits);
2. ``depth``: the same with ``kind: depth`` — EvoPress, dp, and ShortGPT's block influence;
3. for SmolLM2 (``--joint``), the hardware-aware example ``experiments/smollm2-latency.yaml``:
   NSGA-II over (KL, latency) on bits, structured widths and dropped blocks together.
Each run checks its own winners end to end. The benchmark then times everything once more in
ONE round-robin pass beside the dense model — every uniform structured level (the uniform
ladder), every run's winners, the joint front's points, and the joint space's uniform grid
(every layer at one bit width and one kept percent, ``uniform-w4-50``) — so that all speedups
compare under the same load, and sets each searched model against uniform structured pruning,
against depth dropping and (the joint front) against the uniform grid at the same measured
speed (interpolated between the nearest slower and faster ones: no grid has a level at
exactly that speed).

Runs go to a store (``--store``); a rerun reuses finished runs and resumes unfinished ones, so
once every run has finished a rerun repeats only the timing pass (e.g. on a quieter machine).

    .venv/bin/python experiments/benchmarks/structured.py [--models smollm2-135m minilm-l6]
        [--targets 1.5 2 3] [--generations 6] [--store runs/structured-bench.db]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from presso.config import Experiment, load_experiment
from presso.errors import PressoError
from presso.paths import atomic_write_text
from presso.run import run_search
from presso.store import ResultsStore
from presso.summary import RunSummary

HERE = Path(__file__).resolve().parent
JOINT = HERE.parent / "smollm2-latency.yaml"
LEVELS = [100, 88, 75, 62, 50, 38, 25, 12]


def encoder(model: str) -> bool:
    return "minilm" in model


def experiment(model: str, kind: str, target: float, args: argparse.Namespace) -> Experiment:
    enc = encoder(model)
    phase = "prefill" if enc else "decode"
    return Experiment.model_validate(
        {
            "name": f"{model}-{kind}-{target:g}x",
            "model": model,
            "data": {
                "corpus": "bible",
                "seq_len": 128 if enc else 256,
                "calibration": 32,
                "evaluation": 8,
                "seed": 0,
            },
            "structured": {"levels": LEVELS, "calibration": 16},
            "space": {"kind": kind, "speedup": target},
            "hardware": {
                "backend": "onnxruntime",
                "workload": {"batch": 1, "seq_len": 128, "phase": phase},
                "threads": 1,
            },
            "search": {
                "strategy": "evopress",
                "seed": 0,
                "options": {
                    "generations": args.generations,
                    "offspring": args.offspring,
                    "stages": [[512, 2], [2048, 1]],
                },
            },
            "baselines": ["dp", "uniform"] if kind == "structured" else ["dp", "shortgpt"],
            "store": args.store,
        }
    )


def run(exp: Experiment) -> RunSummary:
    """The run's summary: reused when finished, resumed when killed, else run."""
    path = Path(exp.store)
    names = {r["name"] for r in ResultsStore(str(path)).runs()} if path.exists() else set()
    return run_search(exp, resume=exp.name in names, show_progress=False, echo=lambda *_: None)


def rows(summary: RunSummary, metric: str) -> list[dict]:
    """A run's chosen candidates (or its front's held-out points), with their own check."""
    if summary.front is not None and summary.front.heldout:
        front = summary.front
        return [
            {
                "candidate": f"pareto:{i}",
                "strategy": "nsga2",
                "levels": front.levels[i],
                "predicted_ms": front.metrics(i).get("latency_ms"),
                "run_speedup": front.measured.get(i, {}).get("measured_speedup"),
                metric: h[metric],
            }
            for i, h in sorted(front.heldout.items())
        ]
    return [
        {
            "candidate": phase,
            "strategy": c.strategy,
            "levels": c.levels,
            "predicted_ms": c.metrics.get("latency_ms"),
            "run_speedup": c.metrics.get("measured_speedup"),
            metric: c.heldout[metric],
        }
        for phase, c in summary.candidates.items()
    ]


def timing_pass(model: str, args: argparse.Namespace, metric: str, entry: dict) -> None:
    """One round-robin pass: dense, every uniform structured level, every run's rows; fills
    each row's ``measured_ms`` / ``measured_speedup`` and the uniform ladder (held-out too)."""
    from presso.cost_models._campaign import time_end_to_end
    from presso.experiment import Setup

    setups = {}
    for kind in ("structured", "depth"):
        setups[kind] = Setup(experiment(model, kind, 1.0, args))
        setups[kind].prepare()
    if "joint" in entry["runs"]:
        setups["joint"] = Setup(joint_experiment(args))
        setups["joint"].prepare()
    structured = setups["structured"]
    space = structured.space
    ladder = {
        f"uniform-{p}": tuple(d.levels.index(p) for d in space.dims) for p in reversed(LEVELS)
    }
    plans = {k: space.plan(c) for k, c in ladder.items()}
    grid = uniform_grid(setups["joint"].space) if "joint" in setups else {}
    plans.update({k: setups["joint"].space.plan(c) for k, c in grid.items()})
    for name, cell in entry["runs"].items():
        kind = name.split("@")[0]
        s = setups[kind].space
        for r in cell.get("rows", []):
            config = s.from_dict(dict(zip(s.names, r["levels"])))
            plans[f"{name}/{r['candidate']}"] = s.plan(config)
    start = time.perf_counter()
    measured = time_end_to_end(structured.handle, structured.profiler, structured.workload, plans)
    dense = measured.pop("dense")
    entry["timing"] = {"dense_ms": dense, "plans": len(plans), "s": time.perf_counter() - start}
    for name, cell in entry["runs"].items():
        for r in cell.get("rows", []):
            ms = measured[f"{name}/{r['candidate']}"]
            r.update(measured_ms=ms, measured_speedup=dense / ms if ms else None)
    evaluator = structured.evaluator()
    entry["uniform"] = [
        {
            "candidate": k,
            "kept_percent": int(k.split("-")[1]),
            "predicted_ms": space.metrics(config)["latency_ms"],
            "measured_ms": measured[k],
            "measured_speedup": dense / measured[k] if measured[k] else None,
            metric: evaluator.heldout(config)[metric],
        }
        for k, config in ladder.items()
    ]
    entry["dense"] = evaluator.heldout_dense()
    if grid:
        joint = setups["joint"].evaluator()
        entry["uniform_joint"] = [
            {
                "candidate": k,
                "measured_ms": measured[k],
                "measured_speedup": dense / measured[k] if measured[k] else None,
                metric: joint.heldout(config)[metric],
            }
            for k, config in grid.items()
        ]


def uniform_grid(space) -> dict[str, tuple[int, ...]]:  # noqa: ANN001 - a SearchSpace
    """The joint space's uniform configurations: every layer at one bit width and every
    attention and FFN at one structured level, no block dropped (``uniform-w4-50``), when it
    has both knobs; the baseline its front is set against besides the structured ladder."""
    bits = sorted({v for d in space.dims if d.kind == "bits" for v in d.levels})
    kept = sorted({v for d in space.dims if d.kind == "structured" for v in d.levels})
    if not bits or not kept:
        return {}

    def index(d, b: int, p: int) -> int:  # noqa: ANN001 - a Dimension
        value = {"bits": b, "structured": p}.get(d.kind, d.levels[-1])  # depth: kept
        return d.levels.index(value)

    return {
        f"uniform-w{b}-{p}": tuple(index(d, b, p) for d in space.dims) for b in bits for p in kept
    }


def joint_experiment(args: argparse.Namespace) -> Experiment:
    exp = load_experiment(JOINT)
    return exp.model_copy(update={"store": args.store})


def at_speed(points: list[dict], speedup: float | None, metric: str) -> dict | None:
    """The best of ``points`` at a measured ``speedup``: on their lower envelope (for each
    speed, the least metric at that speed or faster), the points just slower and just faster,
    and the metric interpolated between them linearly in speedup. None beyond the ends."""
    if not speedup:
        return None
    timed = sorted(
        (p for p in points if p.get("measured_speedup")), key=lambda p: -p["measured_speedup"]
    )
    envelope, least = [], float("inf")
    for p in timed:  # fastest first: keep each point better than every faster one
        if p[metric] < least:
            envelope.append(p)
            least = p[metric]
    envelope.reverse()  # slowest first
    slower = [p for p in envelope if p["measured_speedup"] < speedup]
    faster = [p for p in envelope if p["measured_speedup"] >= speedup]
    if not slower or not faster:
        return None
    lo, hi = slower[-1], faster[0]
    t = (speedup - lo["measured_speedup"]) / (hi["measured_speedup"] - lo["measured_speedup"])
    brief = ("candidate", "measured_speedup", metric)
    return {
        "slower": {k: lo[k] for k in brief},
        "faster": {k: hi[k] for k in brief},
        metric: lo[metric] + t * (hi[metric] - lo[metric]),
    }


def compare(entry: dict, metric: str) -> None:
    """Each searched row against uniform structured and depth dropping at its speed."""
    depth = [
        {**r, "candidate": f"{name}/{r['candidate']}"}
        for name, cell in entry["runs"].items()
        if name.startswith("depth")
        for r in cell.get("rows", [])
    ]
    for name, cell in entry["runs"].items():
        for r in cell.get("rows", []):
            r["uniform_same_speed"] = at_speed(entry["uniform"], r["measured_speedup"], metric)
            if not name.startswith("depth"):
                r["depth_same_speed"] = at_speed(depth, r["measured_speedup"], metric)
            if name == "joint" and entry.get("uniform_joint"):
                r["uniform_joint_same_speed"] = at_speed(
                    entry["uniform_joint"], r["measured_speedup"], metric
                )


def versus(u: dict | None, metric: str) -> str:
    if u is None:
        return "-"
    return f"{u[metric]:.4g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "minilm-l6"])
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--kinds", nargs="+", default=["structured", "depth"])
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--offspring", type=int, default=8)
    p.add_argument("--no-joint", dest="joint", action="store_false")
    p.add_argument("--store", default="runs/structured-bench.db")
    p.add_argument("--out", default=str(HERE / "structured.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update({"levels": LEVELS, "backend": "onnxruntime", "threads": 1})
    models = report.setdefault("models", {})

    def save() -> None:
        atomic_write_text(out, json.dumps(report, indent=2, default=str))

    for model in args.models:
        metric = "cos_dist" if encoder(model) else "ppl"
        entry = models[model] = {"metric": metric, "runs": {}}
        todo = [
            (kind, t, experiment(model, kind, t, args)) for t in args.targets for kind in args.kinds
        ]
        if args.joint and not encoder(model):
            todo.append(("joint", None, joint_experiment(args)))
        for kind, target, exp in todo:
            name = kind if target is None else f"{kind}@{target:g}x"
            start = time.perf_counter()
            try:
                summary = run(exp)
            except PressoError as e:  # e.g. no configuration of this kind reaches the target
                entry["runs"][name] = {"run": exp.name, "error": str(e)}
                print(f"{model} {name}: {e}")
                continue
            entry["runs"][name] = {
                "run": exp.name,
                "target": target,
                "s": time.perf_counter() - start,
                "latency_check": summary.latency_check,
                "rows": rows(summary, metric),
            }
            print(f"{model} {name}: done in {entry['runs'][name]['s']:.0f} s")
        timing_pass(model, args, metric, entry)
        compare(entry, metric)
        save()
        dense = entry["dense"][metric]
        print(
            f"\n== {model} on onnxruntime, one timing pass (dense {entry['timing']['dense_ms']:.2f} ms, held-out {metric} {dense:.4g}) =="
        )
        print("uniform structured (percent kept everywhere):")
        for r in entry["uniform"]:
            print(
                f"  {r['kept_percent']:>3}%: {r['measured_speedup'] or 0:5.2f}x  {metric} {r[metric]:.4g}"
            )
        for r in entry.get("uniform_joint", []):
            print(
                f"  {r['candidate']:>16}: {r['measured_speedup'] or 0:5.2f}x  {metric} {r[metric]:.4g}"
            )
        print(
            f"\n{'run':>16} {'candidate':>18} {'speedup':>8} {metric:>10} {'uniform@':>10} {'depth@':>10} {'bits+width@':>11}"
        )
        for name, cell in entry["runs"].items():
            if "error" in cell:
                print(f"{name:>16}: {cell['error']}")
            for r in cell.get("rows", []):
                print(
                    f"{name:>16} {r['candidate']:>18} {r['measured_speedup'] or 0:7.2f}x "
                    f"{r[metric]:10.4g} {versus(r['uniform_same_speed'], metric):>10} "
                    f"{versus(r.get('depth_same_speed'), metric):>10} "
                    f"{versus(r.get('uniform_joint_same_speed'), metric):>11}"
                )
    report["note"] = "measured on a shared 2-core CPU machine; see the issue note for the load"
    save()
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
