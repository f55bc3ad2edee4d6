"""The ``presso`` command: search, runs, show, export, dashboard, report.

A user mistake prints one line (``presso: ...``) and exits with code 2; an interrupted
search says how to resume and exits with 130; a search that finished with failed evaluations
says how many and exits with 3 (its results rest on the others).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso import __version__
from presso.errors import PressoError

if TYPE_CHECKING:
    from presso.summary import RunSummary

DEFAULT_STORE = "runs/presso.db"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except PressoError as err:
        print(f"presso: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "experiment", None):
            again = f"presso search {shlex.quote(args.experiment)} --resume"
            hint = f"; nothing is lost: continue with `{again}`"
        print(f"\npresso: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader of standard output went away (``presso show RUN | head``): stop quietly, as
    Unix tools do, with SIGPIPE's exit status. Standard output is pointed at /dev/null so that
    Python's flush at exit does not raise the same error again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="presso", description="Hardware-aware search for per-layer compression."
    )
    p.add_argument("--version", action="version", version=f"presso {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run (or resume) the search an experiment file describes")
    s.add_argument("experiment", help="experiment YAML file")
    s.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of this experiment"
    )
    s.add_argument("--name", help="run name (default: the experiment's name)")
    s.add_argument(
        "--store", help="results store (SQLite path or SQLAlchemy URL); overrides the file's"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_search)

    sw = sub.add_parser(
        "sweep", help="run the runs a sweep file makes from one experiment (a grid or a list)"
    )
    sw.add_argument("sweep", help="sweep YAML file")
    sw.add_argument(
        "--resume",
        action="store_true",
        help="continue a cut-off sweep: finished runs are kept, cut-off ones continue",
    )
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func=_sweep)

    pr = sub.add_parser(
        "profile", help="measure a model's layers at every level on a backend (profile database)"
    )
    pr.add_argument("model", help="a built-in model name, a model folder or .gguf file")
    pr.add_argument("--backend", required=True, help="torch, onnxruntime, tvm or triton")
    pr.add_argument(
        "--workload",
        nargs="+",
        default=["b1-s128-prefill", "b1-s128-decode"],
        help="bBATCH-sSEQ-PHASE, PHASE prefill or decode (default: b1-s128-prefill b1-s128-decode); "
        "for a diffusion model only BATCH counts (images sampled together)",
    )
    pr.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8], help="bit levels")
    pr.add_argument("--sparsity", type=int, nargs="+", default=[0], help="sparsity levels, %%")
    pr.add_argument(
        "--group-size",
        type=int,
        help="quantization group (0: per channel; default: the largest of 128, 64, 32 that "
        "divides every layer's input width)",
    )
    pr.add_argument("--threads", type=int, default=1, help="threads the backend may use")
    pr.add_argument(
        "--repeats",
        type=int,
        default=25,
        help="timed calls per measurement (a layer timed over N weight copies: N calls a run, "
        "at least 5 runs)",
    )
    pr.add_argument("--device", default="cpu", help="cpu or cuda")
    pr.add_argument("--trials", type=int, default=16, help=TRIALS_HELP)
    pr.add_argument("--db", help="profile database (default: <cache>/profiles.sqlite)")
    pr.add_argument(
        "--validate",
        type=int,
        default=0,
        metavar="K",
        help="also measure K random candidates end to end and report the prediction error",
    )
    pr.add_argument(
        "--max-dropped", type=int, default=2, help="blocks a validation candidate may drop"
    )
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=_profile)

    td = sub.add_parser(
        "train-diffusion",
        help="train a built-in diffusion model and its FID classifier once (then cached)",
    )
    td.add_argument(
        "model", nargs="?", default="digits-ddpm", help="digits-ddpm (default) or tiny-ddpm"
    )
    td.add_argument("--grid", help="also write a PNG grid of 64 samples here")
    td.add_argument("--steps", type=int, default=100, help="DDIM steps of the grid's samples")
    td.set_defaults(func=_train_diffusion)

    r = sub.add_parser("runs", help="list the runs in a results store")
    r.add_argument("--store", default=DEFAULT_STORE)
    r.set_defaults(func=_runs)

    sh = sub.add_parser(
        "show", help="a run's best candidates and per-layer bits, or a sweep's runs"
    )
    sh.add_argument("run", help="a run, or a sweep (its runs' table)")
    sh.add_argument("--pareto", action="store_true", help="the Pareto front and its hypervolume")
    sh.add_argument(
        "--json", action="store_true", help="the run's summary as JSON, for scripts (one object)"
    )
    sh.add_argument("--store", default=DEFAULT_STORE)
    sh.set_defaults(func=_show)

    e = sub.add_parser("export", help="write a run's chosen configuration to a file")
    e.add_argument("run", nargs="?", help="the run to export (`presso runs` lists them)")
    e.add_argument(
        "--format",
        default="plan",
        metavar="FORMAT",
        help="plan (default), evopress, ... (`presso export --formats` lists them)",
    )
    e.add_argument("--formats", action="store_true", help="list the export formats and exit")
    e.add_argument("--candidate", default="search", help=CANDIDATE_HELP)
    e.add_argument("--out", help="output file (.json/.yaml for plans); default: standard output")
    e.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    e.add_argument("--store", default=DEFAULT_STORE)
    e.set_defaults(func=_export)

    g = sub.add_parser(
        "generate", help="run a run's chosen candidate on a backend: greedy text and tokens/s"
    )
    g.add_argument("run")
    g.add_argument("--backend", default="torch", help="torch, onnxruntime, tvm or triton")
    g.add_argument("--candidate", default="search", help=CANDIDATE_HELP)
    g.add_argument("--prompt", default="In the beginning God created", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--trials", type=int, default=16, help=TRIALS_HELP)
    g.add_argument("--store", default=DEFAULT_STORE)
    g.set_defaults(func=_generate)

    d = sub.add_parser("dashboard", help="browse runs, Pareto fronts and configurations, live")
    d.add_argument(
        "stores", nargs="*", metavar="STORE", help=f"results stores (default: {DEFAULT_STORE})"
    )
    d.add_argument(
        "--store",
        action="append",
        default=[],
        dest="store_options",
        metavar="STORE",
        help="a results store, as for every other command (repeat it for several)",
    )
    d.add_argument(
        "--curves",
        action="append",
        default=[],
        metavar="FILE",
        help="a convergence benchmark's report (experiments/benchmarks/convergence.py) to draw "
        "beside the runs; repeat it to overlay several",
    )
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    d.add_argument("--port", type=int, default=8050, help="port (default: 8050; 0: a free one)")
    d.set_defaults(func=_dashboard)

    rp = sub.add_parser("report", help="write a run's dashboard as one self-contained HTML file")
    rp.add_argument("run")
    rp.add_argument("--store", default=DEFAULT_STORE)
    rp.add_argument("--out", help="output .html file (default: RUN-report.html)")
    rp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rp.set_defaults(func=_report)
    return p


def _train_diffusion(args: argparse.Namespace) -> int:
    import json

    from presso.diffusion import BUILTIN_DIFFUSION, require

    if args.model not in BUILTIN_DIFFUSION:
        raise PressoError(
            f"train-diffusion: {args.model!r} is not a built-in diffusion model; "
            f"choose {', '.join(BUILTIN_DIFFUSION)}"
        )
    require("presso train-diffusion")
    from presso.diffusion._train import builtin_folder

    folder = builtin_folder(args.model, progress=True)
    report = json.loads((folder / "presso.json").read_text())
    print(f"{args.model}: {folder}")
    print(
        f"  UNet {report['unet_params']:,} parameters, final loss {report['final_loss']:.4f}; "
        f"classifier held-out accuracy {report['classifier_accuracy']:.3f}; "
        f"trained in {report['seconds']:.0f} s"
    )
    if args.grid:
        from presso.diffusion._grid import sample_grid

        sample_grid(folder, args.model, Path(args.grid), steps=args.steps)
        print(f"  {args.steps}-step DDIM samples: {args.grid}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from presso.config import load_experiment, resolve_paths
    from presso.run import run_search

    path = Path(args.experiment)
    exp = resolve_paths(path, load_experiment(path))
    updates = {}
    if args.name:
        updates["name"] = args.name
    if args.store:
        updates["store"] = args.store
    exp = exp.model_copy(update=updates)
    summary = run_search(exp, resume=args.resume, show_progress=not args.quiet)
    _print_summary(summary)
    show = f"presso show {shlex.quote(exp.name or 'run')} --store {shlex.quote(exp.store)}"
    print(f"\nstored in {exp.store} as run {exp.name!r}: `{show}`")
    return _report_failures(summary)


#: Exit status of a search that finished, but with failed evaluations.
FINISHED_WITH_FAILURES = 3


def _report_failures(summary: RunSummary) -> int:
    """0, or a line on standard error and FINISHED_WITH_FAILURES when evaluations failed."""
    failed = summary.failed
    if not failed:
        return 0
    sys.stdout.flush()  # the line comes after the summary it qualifies
    evaluated = "?" if summary.evaluated is None else summary.evaluated
    print(
        f"presso: {failed} of {evaluated} evaluations failed (first: "
        f"{summary.first_failure}); the results above rest on the others only: fix the "
        "cause and search again under a new --name",
        file=sys.stderr,
    )
    return FINISHED_WITH_FAILURES


CANDIDATE_HELP = "'search' (default), 'baseline:NAME', or 'pareto:I' (`presso show RUN --pareto`)"
TRIALS_HELP = (
    "tvm backend: meta_schedule trials per kernel shape not tuned on this machine yet "
    "(default 16; tuning records are kept in the profile database; 0: default schedules, untuned)"
)


def _at_least(args: argparse.Namespace, **lowest: int) -> None:
    """A PressoError naming the first option below its lowest sensible value (e.g. --threads
    0, which torch would reject with a traceback); options left unset (None) are skipped."""
    for name, low in lowest.items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise PressoError(f"--{name.replace('_', '-')} must be {low} or more, got {value}")


def tuning_options(backend: str, trials: int, db: Any = None) -> dict[str, Any]:
    """The options only the tvm backend takes: its tuning budget and where records go."""
    if trials < 0:
        raise PressoError(f"--trials must be 0 or more, got {trials}")
    if backend != "tvm":
        return {}
    return {"trials": trials, **({"db": db} if db is not None else {})}


def _profile(args: argparse.Namespace) -> int:
    import numpy as np

    from presso.cost_models import (
        latency_model,
        profile_model,
        random_assignment,
        unit_ops,
        validate,
    )
    from presso.models import load_model
    from presso.profilers import ProfileDatabase, Workload, make_profiler
    from presso.run import _tqdm
    from presso.spaces._bits import bits_level
    from presso.spaces._sparsity import sparsity_level

    _at_least(args, threads=1, repeats=1, trials=0, group_size=0, validate=0, max_dropped=0)
    if bad := [b for b in args.bits if not bits_level(b)]:
        raise PressoError(f"--bits: levels are 2..8 bits (or 16, dense), got {bad}")
    if bad := [s for s in args.sparsity if not sparsity_level(s)]:
        raise PressoError(f"--sparsity: levels are percent in 0..99, got {bad}")
    workloads = [Workload.parse(w) for w in args.workload]
    from presso.diffusion import is_diffusion_model

    if is_diffusion_model(args.model):
        return _profile_diffusion(args, workloads)
    db = ProfileDatabase(args.db)
    profiler = make_profiler(
        args.backend,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        **tuning_options(args.backend, args.trials, db),
    )
    handle = load_model(args.model)
    widths = sorted({u.shape[1] for u in handle.units})
    if args.group_size is None:
        group = next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), None)
    else:
        group = args.group_size or None
    if group and any(w % group for w in widths):
        raise PressoError(
            f"--group-size {group} does not divide the input widths {widths} of {handle.name}'s "
            "layers; choose a divisor of them, or 0 for per channel"
        )
    ops = unit_ops(handle, args.bits, args.sparsity, group)
    progress = None if args.quiet else _tqdm
    report = profile_model(handle, profiler, db, workloads, ops, progress=progress)
    print(
        f"{handle.name} on {args.backend} ({args.threads} threads, group size "
        f"{group or 'per channel'}): {report.measured} measured, "
        f"{report.reused} reused from {db.path}, {len(report.failed)} failed, {report.seconds:.0f} s"
    )
    for m in report.failed[:5]:
        print(f"  failed: {m.op} at {m.workload}: {m.error}")
    for w in workloads:
        _print_op_table(db, profiler, handle, w, ops)
        try:
            model = latency_model(handle, profiler, db, w, group_size=group)
        except PressoError as err:
            print(f"  no latency model at {w.key}: {err}")
            continue
        parts = ", ".join(f"{k} {v:.3f}" for k, v in model.describe().items())
        print(f"  structure (ms): {parts}")
        if args.validate:
            rng = np.random.default_rng(args.seed)
            cands = [
                random_assignment(
                    handle,
                    rng,
                    bits=sorted(set(args.bits) | {16}),
                    sparsity=args.sparsity,
                    max_dropped=args.max_dropped,
                    group_size=group,
                )
                for _ in range(args.validate)
            ]
            learned = latency_model(handle, profiler, db, w, group_size=group, cost_model="learned")
            result = validate(
                handle,
                profiler,
                db,
                {"lookup_ms": model, "learned_ms": learned},
                w,
                cands,
                progress=progress,
            )
            for column in ("lookup_ms", "learned_ms"):
                s = result.summary(column)
                print(
                    f"  validation ({column[:-3]}, {s['n']} candidates measured end to end): "
                    f"MAPE {s['mape']:.1%}, within ±10%: {s['within_10']:.0%}, "
                    f"rank correlation {s['spearman']:.2f}"
                )
    return 0


def _profile_diffusion(args: argparse.Namespace, workloads: list) -> int:
    """``presso profile`` of a diffusion model: its sampling's parts per batch (a workload's
    batch, at the model's resolution), the cost model, and ``--validate K`` random schedules
    timed end to end against it."""
    import numpy as np

    from presso.cost_models import validate
    from presso.cost_models._sampling import SamplingLatency, profile_sampling, random_schedule
    from presso.diffusion._model import load_diffusion
    from presso.profilers import ProfileDatabase, make_profiler
    from presso.profilers._sampling import sampling_workload
    from presso.run import _tqdm

    if args.backend != "torch":
        raise PressoError(
            f"--backend {args.backend}: a diffusion model's sampling is timed on torch only"
        )
    handle = load_diffusion(args.model)
    db = ProfileDatabase(args.db)
    profiler = make_profiler(
        "torch", device=args.device, threads=args.threads, repeats=args.repeats
    )
    for batch in sorted({w.batch for w in workloads}):
        w = sampling_workload(handle, batch)
        measured, reused = profile_sampling(handle, profiler, db, w)
        model = SamplingLatency.from_db(handle, profiler, db, w)
        print(f"\n{handle.name} sampling at {w.key} on torch: {measured} timed, {reused} reused")
        for b in model.blocks:
            print(f"  {b:<16} {model.run[b]:8.3f} ms (copy {model.copy[b]:.3f})")
        print(
            f"  per step: UNet rest {model.unet:.3f} ms, overhead {model.step_ms:.3f} ms, blocks "
            f"x{model.alpha:.2f} in the loop; 100-step DDIM {model.dense_ms:.1f} ms predicted"
        )
        if args.validate:
            rng = np.random.default_rng(args.seed)
            plans = [random_schedule(handle, rng) for _ in range(args.validate)]
            progress = None if args.quiet else _tqdm
            s = validate(handle, profiler, db, {"predicted": model}, w, plans, progress=progress)
            s = s.summary("predicted")
            print(
                f"  validation ({s['n']} random schedules measured end to end): MAPE "
                f"{s['mape']:.1%}, within ±10%: {s['within_10']:.0%}, rank correlation "
                f"{s['spearman']:.2f}"
            )
    return 0


def _print_op_table(db, profiler, handle, workload, ops) -> None:  # noqa: ANN001
    """Median ms per layer shape (rows) and level (columns) under one workload."""
    from presso.cost_models import machine_id

    fp = machine_id(profiler)
    levels = sorted({(op.bits, op.sparsity) for op in ops}, key=lambda t: (-t[0], t[1]))
    shapes = sorted({(op.out_features, op.in_features) for op in ops})
    names = [f"w{b}" + (f"s{s}" if s else "") for b, s in levels]
    print(f"\n{workload.key} ({profiler.name}), median ms per layer:")
    print(f"{'out x in':>12}" + "".join(f"{n:>10}" for n in names))
    by_key = {op.key: op for op in ops}
    for out, inp in shapes:
        cells = []
        for b, s in levels:
            op = next(
                o
                for o in by_key.values()
                if (o.out_features, o.in_features, o.bits, o.sparsity) == (out, inp, b, s)
            )
            m = db.get(fp, profiler.name, op.key, workload.key)
            cells.append(f"{m.median_ms:>10.4f}" if m and m.ok else f"{'failed':>10}")
        print(f"{f'{out}x{inp}':>12}" + "".join(cells))


def _runs(args: argparse.Namespace) -> int:
    from presso.store import ResultsStore

    runs = ResultsStore(args.store, read_only=True).runs()
    if not runs:
        print(f"no runs in {args.store}")
        return 0
    w = max(28, *(len(r["name"]) for r in runs))
    print(f"{'run':<{w}} {'status':<9} {'evals':>6}  {'started':<20} model")
    for r in runs:
        print(
            f"{r['name']:<{w}} {r['status']:<9} {r['evaluations']:>6}  {r['started']:<20} {r['model']}"
        )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from presso.sweep import load_sweep, run_sweep, sweep_lines

    sweep = load_sweep(Path(args.sweep))
    rows = run_sweep(sweep, resume=args.resume, show_progress=not args.quiet)
    print("\n".join(sweep_lines(sweep.name, rows)))
    show = f"presso show {shlex.quote(sweep.name)} --store {shlex.quote(sweep.store)}"
    print(f"\nstored in {sweep.store}: `{show}`; compare them in `presso dashboard`")
    return 0


def _show(args: argparse.Namespace) -> int:
    import functools
    import json

    from presso.models import load_model
    from presso.spaces import KINDS
    from presso.store import ResultsStore
    from presso.summary import RunSummary

    store = ResultsStore(args.store, read_only=True)
    runs = store.runs()
    if not any(r["name"] == args.run for r in runs) and any(
        (r.get("sweep") or {}).get("name") == args.run for r in runs
    ):
        from presso.summary import json_safe
        from presso.sweep import sweep_lines, sweep_rows

        rows = sweep_rows(args.store, args.run)
        if args.json:  # the sweep's table as data
            print(json.dumps({"sweep": args.run, "runs": json_safe(rows)}, indent=1))
            return 0
        print("\n".join(sweep_lines(args.run, rows)))
        return 0
    study = store.open(args.run)
    summary = RunSummary.from_attrs(args.run, study.user_attrs)
    evaluations, failed, best = store.overview(args.run)  # counted in SQL: a large run reads fast
    if args.json:
        out = {**summary.to_json(), "stored_evaluations": evaluations, "stored_failed": failed}
        print(json.dumps(out, indent=1))
        return 0
    print(f"run {args.run}: {summary.status}, {evaluations} evaluations ({failed} failed)")
    if not summary.finished:
        if best is not None:
            print(f"best so far: fitness {best.fitness:.5f} ({best.tag}, {best.tokens} tokens)")
        return 0
    _print_summary(summary)
    if args.pareto:
        _print_pareto(summary)
        return 0
    best = summary.candidates["search"]
    spec = summary.experiment.get("model")
    model = functools.partial(load_model, spec) if spec else None  # loaded by a kind that needs it
    for kind in dict.fromkeys(summary.kinds):
        mine = [i for i, k in enumerate(summary.kinds) if k == kind]
        targets = [summary.targets[i] for i in mine]
        values = [best.levels[i] for i in mine]
        label = KINDS.get(kind).label if kind in KINDS else kind
        shown = KINDS.get(kind).show(targets, values, model=model) if kind in KINDS else None
        if shown is not None:  # a kind with its own view (a sampling schedule)
            print(f"\n{shown}")
            continue
        print(f"\nper-layer {label} of the search's best (rows: blocks):")
        print(_bits_grid(targets, values))
    return 0


def _export(args: argparse.Namespace) -> int:
    from presso.export import build_plan, export, formats, make_exporter
    from presso.store import ResultsStore

    if args.formats:
        for name in formats():
            print(f"{name:<16} {make_exporter(name).help}")
        return 0
    if not args.run:
        raise PressoError("presso export: give the RUN to export (`presso runs` lists them)")
    summary = ResultsStore(args.store, read_only=True).summary(args.run)
    out = Path(args.out) if args.out else None
    text = export(summary, args.candidate, args.format, out, force=args.force)
    if text is not None:
        sys.stdout.write(text)
        return 0
    print(f"wrote {out} ({args.format}, candidate {args.candidate})")
    if notice := make_exporter(args.format).notice(build_plan(summary, args.candidate)):
        print(f"note: {notice}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from presso.export import Source, build_plan
    from presso.generate import generate
    from presso.store import ResultsStore

    _at_least(args, max_new_tokens=1, threads=1, trials=0)
    summary = ResultsStore(args.store, read_only=True).summary(args.run)
    plan = build_plan(summary, args.candidate)
    out = generate(
        Source(summary, args.candidate),
        plan,
        args.backend,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        device=args.device,
        options=tuning_options(args.backend, args.trials),
    )
    print(f"{args.prompt}{out['text']}")
    decode = f"{out['decode_tok_s']:.1f}" if out["decode_tok_s"] else "-"
    print(
        f"\n{args.run} ({args.candidate}) on {args.backend}, {args.threads} thread(s): "
        f"prefill {out['prompt_tokens']} tokens at {out['prefill_tok_s']:.1f} tokens/s, "
        f"decode {out['new_tokens']} tokens at {decode} tokens/s"
    )
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from presso.dashboards._server import serve

    stores = [*args.stores, *args.store_options]
    if not stores and not (args.curves and not Path(DEFAULT_STORE).exists()):
        stores = [DEFAULT_STORE]  # curves alone need no store; without them the default is one
    return serve(stores, curves=args.curves, host=args.host, port=args.port)


def _report(args: argparse.Namespace) -> int:
    from presso.dashboards._report import write_report

    out = write_report(
        args.run, store=args.store, out=Path(args.out) if args.out else None, force=args.force
    )
    print(f"wrote {out} (run {args.run}; opens offline in a browser)")
    return 0


def _print_summary(summary: RunSummary) -> None:
    from presso.summary import summary_lines

    print("\n".join(summary_lines(summary)))


def _print_pareto(summary: RunSummary) -> None:
    from presso.summary import pareto_lines

    print("\n".join(pareto_lines(summary)))


def _bits_grid(targets: list[str], levels: list[float]) -> str:
    """Blocks as rows, each unit's short name as a column (as wide as its name)."""
    from presso.summary import unit_columns

    rows: dict[str, dict[str, float]] = {}
    cols: list[str] = []
    for (block, short), value in zip(unit_columns(targets), levels):
        rows.setdefault(block, {})[short] = value
        if short not in cols:
            cols.append(short)
    widths = [max(6, len(c)) for c in cols]
    lines = ["block " + " ".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    order = sorted(rows, key=lambda r: (not r.isdecimal(), int(r) if r.isdecimal() else 0))
    for block in order:
        cells = " ".join(f"{rows[block].get(c, 0):>{w}g}" for c, w in zip(cols, widths))
        lines.append(f"{block:>5} " + cells)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
