"""The results store on a real PostgreSQL server: a throwaway cluster on 127.0.0.1, started from
Debian's `postgresql` package for this test session and stopped after it (skipped, with the
reason, where the package is missing). A plain ``postgresql://`` URL works (psycopg 3, the
`postgres` extra); search, runs, show, the dashboard and optuna-dashboard read what SQLite
would hold; runs write to one database concurrently."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from presso.cli import main
from presso.errors import PressoError
from presso.postgres_cluster import new_database, throwaway_cluster, unavailable
from presso.store import ResultsStore, storage_url

from .conftest import tiny_experiment


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields the base URL (no database name)."""
    if why := unavailable():
        pytest.skip(why)
    with throwaway_cluster() as url:
        yield url


def fresh_database(server: str, name: str) -> str:
    return new_database(server, name)


def search(tmp_path: Path, store: str, name: str = "exp.yaml", **overrides: object) -> None:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"store": store, **tiny_experiment(**overrides)}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", str(path), "--quiet"]) == 0


def shown(store: str, capsys: pytest.CaptureFixture) -> str:
    assert main(["show", "tiny", "--store", store]) == 0
    out = capsys.readouterr().out
    # Only the store's own name and the timing differ between two identical runs.
    return "\n".join(line for line in out.splitlines() if store not in line and " s " not in line)


def test_search_and_every_reader_on_postgres(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = fresh_database(server, "readers")
    search(tmp_path, url)
    search(tmp_path, str(tmp_path / "runs.db"), name="sqlite.yaml")
    capsys.readouterr()

    # The same experiment and seed give the same run, whichever database holds it.
    on_pg, on_sqlite = ResultsStore(url), ResultsStore(str(tmp_path / "runs.db"))
    pg, lite = on_pg.records(on_pg.open("tiny")), on_sqlite.records(on_sqlite.open("tiny"))
    assert len(pg) == len(lite) > 10
    assert [(r.levels, r.fitness, r.tag) for r in pg] == [
        (r.levels, r.fitness, r.tag) for r in lite
    ]
    text = shown(url, capsys)
    assert "uniform" in text and len(text.splitlines()) > 5
    assert text == shown(str(tmp_path / "runs.db"), capsys)

    assert main(["runs", "--store", url]) == 0
    assert "tiny" in capsys.readouterr().out

    from presso.dashboards._data import StoreReader, run_json

    reader = StoreReader(url)
    assert [r["name"] for r in reader.runs()] == ["tiny"]
    assert len(run_json(reader, "tiny", 0)["records"]) == len(pg)

    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    app = optuna_dashboard.wsgi(storage_url(url))
    environ: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    environ["wsgi.input"] = io.BytesIO()
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200")
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["tiny"]


def test_runs_write_one_database_concurrently(server: str, tmp_path: Path) -> None:
    url = fresh_database(server, "concurrent")
    procs = []
    for seed in (0, 1, 2):
        path = tmp_path / f"seed{seed}.yaml"
        exp = tiny_experiment(name=f"seed{seed}", search={"seed": seed})
        path.write_text(yaml.safe_dump({"store": url, **exp}))
        code = "import sys, presso.cli; sys.exit(presso.cli.main())"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, "search", str(path), "--quiet"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    store = ResultsStore(url)
    runs = {r["name"]: r for r in store.runs()}
    assert sorted(runs) == ["seed0", "seed1", "seed2"]
    for name in runs:
        records = store.records(store.open(name))
        assert len(records) > 10 and all(r.fitness is not None for r in records)


def test_driverless_url_and_a_missing_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert storage_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("mysql://u@h/db") == "mysql://u@h/db"
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PressoError, match=r"pip install 'presso\[postgres\]'"):
        ResultsStore("postgresql://u@127.0.0.1:1/db")
