"""How long a large results store takes to open: ``presso runs``, ``presso show RUN`` and the
dashboard's first page, on a store holding 100,000 evaluated candidates.

The store is made through presso's own store API (``ResultsStore.create`` / ``record``): the
first ``--seed-trials`` evaluations are recorded one by one, as a search records them, with
SmolLM2-sized plans (210 units, 2/3/4/8 bits) and a few failures among them; those rows are
then copied in one SQL transaction (with new trial ids and numbers) up to ``--candidates``,
because recording 100,000 trials one commit at a time takes an hour and says nothing more
about reading them. Before `presso runs` and `presso show` counted in SQL, they took
141 s and 362 s on a store of 10,000 of these evaluations (Optuna's study summaries and
``get_trials`` load every parameter row); the dashboard's first reply held every evaluation. The run is left as a live search leaves it (status ``running``, no
summary), which is the reading path that looks at every evaluation (best so far).

Each command is run as a user runs it, a fresh ``presso`` process (imports included, which
this script also times alone as ``import_s``); the dashboard is served in this process and its
first page's requests (the page, ``/api/runs``, the first ``/api/run``) are timed one by one.

    python experiments/benchmarks/store_load.py            # writes store_load.json beside it
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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


def build_store(path: Path | str, *, candidates: int, seed_trials: int, units: int) -> dict:
    """A store at ``path`` with one run, ``big``, of ``candidates`` evaluations; returns what
    building it took (seconds, size). Copying in SQL needs an SQLite file; any store URL
    takes ``candidates == seed_trials`` (all recorded through the API)."""
    import numpy as np

    from presso.search._base import Request, Result
    from presso.spaces._base import SearchSpace, unit_dims
    from presso.store import ResultsStore

    start = time.perf_counter()
    space = SearchSpace(unit_dims(SMOLLM2_UNITS[:units], [2, 3, 4, 8], kind="bits"))
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
    copied = _replicate(Path(path), copies) if copies > 1 else 0
    return {
        "units": len(space),
        "recorded_through_api": seed_trials,
        "record_s": round(recorded_s, 2),
        "copied_in_sql": copied,
        "build_s": round(time.perf_counter() - start, 2),
        "store_mb": round(Path(path).stat().st_size / 2**20, 1) if copied else None,
    }


def _replicate(path: Path, copies: int) -> int:
    """Copy every trial (and its rows in every trial_* table) ``copies - 1`` times, in one
    transaction; returns the trials added."""
    con = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'trial_%'"
            )
            if name != "trials" and "trial_id" in _columns(con, name)
        ]
        last_id, last_number, n = con.execute(
            "SELECT MAX(trial_id), MAX(number), COUNT(*) FROM trials"
        ).fetchone()
        trial_cols = _columns(con, "trials")
        with con:
            for k in range(1, copies):
                cols = ", ".join(trial_cols)
                shifted = ", ".join(
                    "trial_id + :id" if c == "trial_id" else "number + :num" if c == "number" else c
                    for c in trial_cols
                )
                params = {"id": k * last_id, "num": k * (last_number + 1), "last": last_id}
                con.execute(
                    f"INSERT INTO trials ({cols}) SELECT {shifted} FROM trials "
                    "WHERE trial_id <= :last",
                    params,
                )
                for table in tables:
                    pk = _primary_key(con, table)
                    keep = [c for c in _columns(con, table) if c != pk]
                    select = ", ".join("trial_id + :id" if c == "trial_id" else c for c in keep)
                    con.execute(
                        f"INSERT INTO {table} ({', '.join(keep)}) SELECT {select} FROM {table} "
                        "WHERE trial_id <= :last",
                        params,
                    )
        return (copies - 1) * n
    finally:
        con.close()


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in con.execute(f"PRAGMA table_info({table})")]


def _primary_key(con: sqlite3.Connection, table: str) -> str | None:
    return next((row[1] for row in con.execute(f"PRAGMA table_info({table})") if row[5]), None)


def time_command(*argv: str) -> dict:
    """Wall seconds of a fresh ``presso`` process, and its exit status and output size."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "presso.cli", *argv], capture_output=True, text=True, timeout=3600
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return {
        "seconds": round(seconds, 2),
        "exit": done.returncode,
        "stdout_lines": done.stdout.count("\n"),
        "first_line": done.stdout.splitlines()[0] if done.stdout else done.stderr.strip()[:200],
    }


def time_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import presso.cli, presso.store"], check=True)
    return round(time.perf_counter() - start, 2)


def time_dashboard(store: Path) -> dict:
    """The dashboard's first page: the HTML, the runs list, and the first fetch of the run
    the page opens (``since=0``), each timed alone."""
    from presso.dashboards._server import DashboardServer

    out = {}
    start = time.perf_counter()
    server = DashboardServer([str(store)], port=0).start()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--seed-trials", type=int, default=500)
    parser.add_argument("--units", type=int, default=len(SMOLLM2_UNITS))
    parser.add_argument(
        "--store", help="keep the store here (made if missing; reused as it is if present)"
    )
    parser.add_argument("--out", default=str(HERE / "store_load.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="presso-load-") as tmp:
        store = Path(args.store) if args.store else Path(tmp) / "big.db"
        report: dict = {
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared with other work)",
            "python": platform.python_version(),
        }
        if not store.exists():
            report["build"] = build_store(
                store, candidates=args.candidates, seed_trials=args.seed_trials, units=args.units
            )
            print(f"built: {report['build']}", flush=True)
        report["import_s"] = time_import()
        report["presso_runs"] = time_command("runs", "--store", str(store))
        print(f"presso runs: {report['presso_runs']}", flush=True)
        report["presso_show"] = time_command("show", "big", "--store", str(store))
        print(f"presso show: {report['presso_show']}", flush=True)
        report["dashboard"] = time_dashboard(store)
        print(f"dashboard: {report['dashboard']}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
