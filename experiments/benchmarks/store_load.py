"""How long a large results store takes to open: ``presso runs``, ``presso show RUN``, the
dashboard's first page, resuming the run and ``presso report``, on a store holding 100,000
evaluated candidates, SQLite or (``--postgres``) PostgreSQL.

The store is made through presso's own store API (``ResultsStore.create`` / ``record``): the
first ``--seed-trials`` evaluations are recorded one by one, as a search records them, with
SmolLM2-sized plans (210 units, 2/3/4/8 bits) and a few failures among them; those rows are
then copied in one SQL transaction (with new trial ids, numbers and search steps: each copy
later evaluations of the same run) up to ``--candidates``, because recording 100,000 trials
one commit at a time takes an hour and says nothing more about reading them. Before `presso
runs` and `presso show` counted in SQL, they took 141 s and 362 s on a store of 10,000 of these
evaluations (Optuna's study summaries and ``get_trials`` load every parameter row, as resuming
and `presso report` also did); the dashboard's first reply held every evaluation. The run is
left as a live search leaves it (status ``running``, no summary), which is the reading path
that looks at every evaluation (best so far).

Each command is run as a user runs it, a fresh ``presso`` process (imports included, which
this script also times alone as ``import_s``), with its peak memory; the dashboard is served in
this process and its first page's requests (the page, ``/api/runs``, the first ``/api/run``)
are timed one by one. Resuming is timed up to where evaluating would start: the run's
evaluation list, then every stored result read back in the order the runner replays them.
``--postgres`` starts a throwaway PostgreSQL server (presso.postgres_cluster, as the tests do)
and writes its figures to the output's ``postgres`` section, keeping the others.

    python experiments/benchmarks/store_load.py              # writes store_load.json beside it
    python experiments/benchmarks/store_load.py --postgres   # adds the PostgreSQL figures
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: SmolLM2-135M's linear layers: 30 blocks × 7 (q, k, v, o, gate, up, down), and their shapes.
SMOLLM2_UNITS = [
    (f"model.layers.{b}.{name}", shape)
    for b in range(30)
    for name, shape in (
        ("self_attn.q_proj", (576, 576)),
        ("self_attn.k_proj", (192, 576)),
        ("self_attn.v_proj", (192, 576)),
        ("self_attn.o_proj", (576, 576)),
        ("mlp.gate_proj", (1536, 576)),
        ("mlp.up_proj", (1536, 576)),
        ("mlp.down_proj", (576, 1536)),
    )
]


def smollm2_space(units: int) -> Any:
    """The bits space of SmolLM2's first ``units`` linear layers, levels 2, 3, 4 and 8, under
    a mean of 3 bits (each evaluation's metrics hold its mean bits, as a search's do)."""
    from presso.spaces import MeanBits
    from presso.spaces._base import SearchSpace, unit_dims

    dims = unit_dims(SMOLLM2_UNITS[:units], [2, 3, 4, 8], kind="bits")
    return SearchSpace(dims, [MeanBits(3.0)])


def build_store(path: Path | str, *, candidates: int, seed_trials: int, units: int) -> dict:
    """A store at ``path`` with one run, ``big``, of ``candidates`` evaluations; returns what
    building it took (seconds, size). ``path``: an SQLite file or a store URL (PostgreSQL)."""
    import numpy as np

    from presso.search._base import Request, Result
    from presso.store import ResultsStore, sqlite_path

    start = time.perf_counter()
    space = smollm2_space(units)
    experiment = {
        "name": "big",
        "model": "smollm2-135m",
        "data": {"corpus": "bible", "seq_len": 256, "calibration": 32, "evaluation": 8},
        "compress": {"operator": "gptq", "levels": [2, 3, 4, 8], "group_size": 32},
        "space": {"mean_bits": 3.0},
        "search": {"strategy": "evopress", "seed": 0, "options": {"generations": 10000}},
    }
    store = ResultsStore(str(path))
    study = store.create("big", experiment, space, ["heldout_kl"])
    rng = np.random.default_rng(0)
    for i in range(seed_trials):
        config = tuple(int(x) for x in rng.integers(0, 4, size=len(space)))
        request = Request(config, tokens=4096, sample_seed=i, tag="offspring")
        failed = i % 97 == 13
        fitness = float(rng.gamma(2.0, 0.05))
        result = (
            Result(None, error="RuntimeError: out of memory", seconds=0.1)
            if failed
            else Result(fitness, metrics={**space.metrics(config), "kl": fitness, "tokens": 4096.0})
        )
        store.record(study, space, "search", i // 16, i % 16, request, result)
    store.close()
    recorded_s = time.perf_counter() - start

    copies = candidates // seed_trials
    copied = _replicate(store.url, copies) if copies > 1 else 0
    file = sqlite_path(str(path))
    if file is not None:
        size = file.stat().st_size
    else:
        with ResultsStore(str(path)).storage.engine.connect() as con:
            size = con.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    return {
        "units": len(space),
        "recorded_through_api": seed_trials,
        "record_s": round(recorded_s, 2),
        "copied_in_sql": copied,
        "build_s": round(time.perf_counter() - start, 2),
        "store_mb": round(size / 2**20, 1),
    }


def _replicate(url: str, copies: int) -> int:
    """Copy every trial (and its rows in every trial_* table) ``copies - 1`` times, in one
    transaction, each copy a later part of the run (its trial numbers and search steps after
    the last ones); returns the trials added. SQLite or PostgreSQL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        names = sqlalchemy.inspect(engine).get_table_names()
        columns = {n: [c["name"] for c in sqlalchemy.inspect(engine).get_columns(n)] for n in names}
        keys = {
            n: sqlalchemy.inspect(engine).get_pk_constraint(n)["constrained_columns"] for n in names
        }
        tables = [n for n in names if n.startswith("trial_") and "trial_id" in columns[n]]
        with engine.begin() as con:
            sql = lambda q, **p: con.execute(sqlalchemy.text(q), p)  # noqa: E731
            last_id, last_number, n = sql(
                "SELECT MAX(trial_id), MAX(number), COUNT(*) FROM trials"
            ).one()
            (last_step,) = sql(
                "SELECT MAX(CAST(value_json AS INTEGER)) FROM trial_user_attributes"
                " WHERE key = 'step'"
            ).one()
            for k in range(1, copies):
                params = {
                    "id": k * last_id,
                    "num": k * (last_number + 1),
                    "step": k * (last_step + 1),
                    "last": last_id,
                }
                for table in ["trials", *tables]:
                    # A copied row gets a new id of its own, except a trial (ids shifted).
                    keep = [c for c in columns[table] if table == "trials" or c not in keys[table]]
                    select = ", ".join(_shifted(table, c) for c in keep)
                    sql(
                        f"INSERT INTO {table} ({', '.join(keep)}) SELECT {select} FROM {table} "
                        "WHERE trial_id <= :last",
                        **params,
                    )
            if engine.dialect.name == "postgresql":  # the next ids after the copied ones
                sql(
                    "SELECT setval(pg_get_serial_sequence('trials', 'trial_id'),"
                    " (SELECT MAX(trial_id) FROM trials))"
                )
        return (copies - 1) * n
    finally:
        engine.dispose()


def _shifted(table: str, column: str) -> str:
    """What a copied row's ``column`` is: ids, numbers and search steps moved past the last."""
    if column == "trial_id":
        return "trial_id + :id"
    if table == "trials" and column == "number":
        return "number + :num"
    if table == "trial_user_attributes" and column == "value_json":
        return (
            "CASE WHEN key = 'step' THEN CAST(CAST(value_json AS INTEGER) + :step AS TEXT)"
            " ELSE value_json END"
        )
    return column


def peak_rss_mb() -> int:
    """The most memory this process has held resident (Linux's VmHWM), MB. Not getrusage's
    ru_maxrss: Linux carries that over from the parent through fork and exec, so a child of a
    large benchmark process would report the parent's size."""
    status = Path("/proc/self/status").read_text()
    (kb,) = (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(kb / 1024)


#: A fresh ``presso`` process that says, last on stderr, the most memory it held (VmHWM).
_CHILD = (
    "import sys\n"
    "from presso.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "finally:\n"
    "    status = open('/proc/self/status').read().splitlines()\n"
    "    kb = next(int(s.split()[1]) for s in status if s.startswith('VmHWM:'))\n"
    "    print(f'max_rss_kb={kb}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def time_command(*argv: str) -> dict:
    """Wall seconds of a fresh ``presso`` process, its exit status, output size and peak
    memory (MB resident)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    rss = [line for line in done.stderr.splitlines() if line.startswith("max_rss_kb=")]
    return {
        "seconds": round(seconds, 2),
        "exit": done.returncode,
        "max_rss_mb": round(int(rss[-1].split("=")[1]) / 1024) if rss else None,
        "stdout_lines": done.stdout.count("\n"),
        "first_line": done.stdout.splitlines()[0] if done.stdout else done.stderr.strip()[:200],
    }


def time_resume(store: str, units: int) -> dict:
    """What resuming the run reads before anything is evaluated again, in a fresh process: the
    run's evaluation list, then every stored result in the order the runner replays them
    (``presso.replay``), with the records held at most and the process's peak memory."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--replay", store, "--units", str(units)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"exit": done.returncode}
    return {"seconds": round(time.perf_counter() - start, 2), **json.loads(done.stdout)}


def _replay(store: str, units: int) -> None:
    """The child of ``time_resume``: prints its figures as JSON."""
    from presso.replay import resume_state
    from presso.store import ResultsStore

    start = time.perf_counter()
    stored = ResultsStore(store, read_only=True)
    replay, retried = resume_state(stored, "big", smollm2_space(units))
    listed = time.perf_counter() - start
    for phase in replay.values():
        for key in phase:
            phase[key]
    out = {
        "list_s": round(listed, 2),
        "replay_s": round(time.perf_counter() - start, 2),
        "replayed": sum(len(p) for p in replay.values()),
        "retried": retried,
        "records_held_at_most": max(p.most_held for p in replay.values()),
        "max_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(out))


def time_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import presso.cli, presso.store"], check=True)
    return round(time.perf_counter() - start, 2)


def time_dashboard(store: str) -> dict:
    """The dashboard's first page: the HTML, the runs list, and the first fetch of the run
    the page opens (``since=0``), each timed alone."""
    from presso.dashboards._server import DashboardServer

    out = {}
    start = time.perf_counter()
    server = DashboardServer([store], port=0).start()
    out["start_s"] = round(time.perf_counter() - start, 3)
    try:
        for name, route in (
            ("page", ""),
            ("api_runs", "api/runs"),
            ("api_run_first", "api/run?store=0&run=big&since=0"),
        ):
            start = time.perf_counter()
            with urllib.request.urlopen(server.url + route, timeout=3600) as reply:
                body = reply.read()
            entry = {"seconds": round(time.perf_counter() - start, 3), "bytes": len(body)}
            if route.startswith("api/run?"):
                data = json.loads(body)
                entry["records"] = len(data.get("records", []))
                entry["next"] = data.get("next")
            out[name] = entry
    finally:
        server.close()
    return out


def measure(store: str, units: int, out: Path) -> dict:
    """Every reading command on ``store``, as a user runs it."""
    figures: dict = {}
    figures["presso_runs"] = time_command("runs", "--store", store)
    print(f"presso runs: {figures['presso_runs']}", flush=True)
    figures["presso_show"] = time_command("show", "big", "--store", store)
    print(f"presso show: {figures['presso_show']}", flush=True)
    figures["dashboard"] = time_dashboard(store)
    print(f"dashboard: {figures['dashboard']}", flush=True)
    figures["resume"] = time_resume(store, units)
    print(f"resume: {figures['resume']}", flush=True)
    report = out / "big-report.html"
    figures["presso_report"] = time_command("report", "big", "--store", store, "--out", str(report))
    figures["presso_report"]["mb"] = round(report.stat().st_size / 2**20, 1)
    print(f"presso report: {figures['presso_report']}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--seed-trials", type=int, default=500)
    parser.add_argument("--units", type=int, default=len(SMOLLM2_UNITS))
    parser.add_argument(
        "--store", help="keep the store here (made if missing; reused as it is if present)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="on a throwaway PostgreSQL server instead (presso.postgres_cluster); the figures "
        "go to the output's `postgres` section, the others are kept",
    )
    parser.add_argument("--out", default=str(HERE / "store_load.json"))
    parser.add_argument("--replay", help=argparse.SUPPRESS)  # time_resume's child
    args = parser.parse_args()
    if args.replay:
        _replay(args.replay, args.units)
        return

    out = Path(args.out)
    report: dict = json.loads(out.read_text()) if out.exists() else {}
    figures: dict = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared with other work)",
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="presso-load-") as tmp, contextlib.ExitStack() as on:
        if args.postgres:
            from presso.postgres_cluster import new_database, throwaway_cluster

            store = new_database(on.enter_context(throwaway_cluster()), "load")
        else:
            store = args.store or str(Path(tmp) / "big.db")
        if args.postgres or not Path(store).exists():
            figures["build"] = build_store(
                store, candidates=args.candidates, seed_trials=args.seed_trials, units=args.units
            )
            print(f"built: {figures['build']}", flush=True)
        figures["import_s"] = time_import()
        figures.update(measure(store, args.units, Path(tmp)))
    if args.postgres:
        report["postgres"] = {"server": "PostgreSQL (throwaway cluster, fsync off)", **figures}
    else:
        report = {**figures, **({"postgres": report["postgres"]} if "postgres" in report else {})}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
