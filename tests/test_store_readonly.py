"""Reading never writes: `presso runs`, `show`, `export`, `generate` and `report` leave a store
byte for byte as it was, and refuse in one line a store that is missing, empty or someone
else's SQLite file; a `presso search` that fails before its first evaluation leaves no store
and no run behind."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from presso.cli import main
from presso.errors import PressoError
from presso.store import ResultsStore

from .conftest import tiny_experiment
from .test_export_target import ATTRS

FEW = {"options": {"generations": 1, "offspring": 2, "stages": [[64, 1]]}}


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('my data')")
    con.commit()
    con.close()


BAD_STORES = {
    "missing": (None, "no results store there"),
    "empty": (lambda p: p.write_bytes(b""), "an empty file, not a presso results store"),
    "foreign": (_foreign, "an SQLite file that is not a presso results store (no studies table"),
    "garbage": (lambda p: p.write_bytes(b"not a database\n" * 500), "not a presso results store"),
}


def _finished_run(path: Path) -> None:
    """A store holding one finished run 'tiny', written by hand (no model, no search)."""
    import optuna

    store = ResultsStore(str(path))
    study = optuna.create_study(study_name="tiny", storage=store.storage)
    for key, value in {**ATTRS, "status": "finished"}.items():
        study.set_user_attr(key, value)
    store.close()


def _attr(key: str, value_json: str):  # noqa: ANN202
    def damage(path: Path) -> None:
        con = sqlite3.connect(path)
        sql = "UPDATE study_user_attributes SET value_json = ? WHERE key = ?"
        assert con.execute(sql, (value_json, key)).rowcount == 1
        con.commit()
        con.close()

    return damage


def _scrambled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data), 7):  # the header page kept: SQLite opens it, then fails
        data[i] = (data[i] * 31 + 7) % 256
    path.write_bytes(bytes(data))


DAMAGED_RUNS = {
    "garbage inside": (_scrambled, "not a presso results store (database disk image is malformed"),
    "bad JSON": (_attr("summary", "{bad"), "is damaged: a stored attribute is not JSON"),
    "summary a list": (_attr("summary", "[1, 2]"), "run 'tiny' is damaged: its summary is not"),
    "experiment a string": (_attr("experiment", '"x"'), "its experiment is not what presso"),
    "candidates a list": (
        _attr("summary", '{"candidates": [1]}'),
        "its summary.candidates is not what presso writes",
    ),
}


def _state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file in ``folder``: content hash and mtime (journals and new files show up too)."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file()
    }


def _commands(store: str, tmp_path: Path) -> list[list[str]]:
    return [
        ["runs", "--store", store],
        ["show", "tiny", "--store", store],
        ["show", "tiny", "--pareto", "--store", store],
        ["export", "tiny", "--store", store],
        ["export", "tiny", "--store", store, "--out", str(tmp_path / "out" / "plan.json")],
        ["generate", "tiny", "--store", store],
        ["report", "tiny", "--store", store, "--out", str(tmp_path / "out" / "r.html")],
    ]


@pytest.mark.parametrize("kind", [*BAD_STORES, *DAMAGED_RUNS])
def test_reading_commands_refuse_a_bad_store_and_leave_it_alone(
    kind: str, write_experiment, tmp_path: Path, capsys
) -> None:
    make, message = BAD_STORES.get(kind) or DAMAGED_RUNS[kind]
    folder = tmp_path / "stores"
    folder.mkdir()
    path = folder / "other.db"
    if kind in DAMAGED_RUNS:
        _finished_run(path)
    if make is not None:
        make(path)
    before = _state(folder)
    resume = ["search", str(write_experiment(tiny_experiment(store=str(path)))), "--resume"]
    for argv in [*_commands(str(path), tmp_path), resume]:
        if argv[0] == "report":
            pytest.importorskip("plotly")
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("presso: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
        assert _state(folder) == before, argv  # byte-identical, no journal, nothing created
    assert not (tmp_path / "out").exists()


def test_reading_a_store_leaves_it_byte_identical(write_experiment, tmp_path: Path, capsys) -> None:
    path = write_experiment(tiny_experiment(search=FEW, baselines=[]))
    assert main(["search", str(path), "--quiet"]) == 0
    before = _state(tmp_path)
    store = str(tmp_path / "runs.db")
    for argv in _commands(store, tmp_path)[:4]:
        assert main(argv) == 0, argv
    assert main(["show", "nope", "--store", store]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err
    assert _state(tmp_path) == before


def test_read_only_store_cannot_write(write_experiment, tmp_path: Path) -> None:
    path = write_experiment(tiny_experiment(search=FEW, baselines=[]))
    assert main(["search", str(path), "--quiet"]) == 0
    store = ResultsStore(str(tmp_path / "runs.db"), read_only=True)
    study = store.open("tiny")
    with pytest.raises(Exception) as err:  # noqa: PT011 - Optuna wraps SQLite's refusal
        study.set_user_attr("status", "changed")
    assert "readonly" in str(err.value.__cause__)
    assert ResultsStore(str(tmp_path / "runs.db")).open("tiny").user_attrs["status"] == "finished"


def test_search_refuses_a_foreign_sqlite_file(write_experiment, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other.db"
    _foreign(other)
    before = _state(tmp_path)
    path = write_experiment(tiny_experiment(store=str(other)))
    assert main(["search", str(path), "--quiet"]) == 2
    assert "not a presso results store" in capsys.readouterr().err
    assert {k: v for k, v in _state(tmp_path).items() if k != "exp.yaml"} == before


def test_a_search_failing_before_its_store_leaves_none(
    write_experiment, tmp_path: Path, capsys
) -> None:
    store = tmp_path / "runs" / "presso.db"
    exp = tiny_experiment(store=str(store), objectives=["kl", "mean_sparsity"], search=FEW)
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 2
    assert "does not measure 'mean_sparsity'" in capsys.readouterr().err
    assert not store.exists() and not store.parent.exists()


def test_a_run_failing_before_its_first_evaluation_leaves_no_record(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import presso.search

    store = tmp_path / "runs" / "presso.db"
    path = write_experiment(tiny_experiment(store=str(store), search=FEW, baselines=[]))
    make_strategy = presso.search.make_strategy

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise PressoError("search.options: a mistake found once the run was recorded")

    monkeypatch.setattr(presso.search, "make_strategy", broken)
    assert main(["search", str(path), "--quiet"]) == 2
    assert not store.exists() and not store.parent.exists()  # the store it made is gone

    monkeypatch.setattr(presso.search, "make_strategy", make_strategy)
    assert main(["search", str(path), "--quiet"]) == 0  # the name is free: no --resume needed
    monkeypatch.setattr(presso.search, "make_strategy", broken)
    other = write_experiment(tiny_experiment(name="other", store=str(store)), "other.yaml")
    assert main(["search", str(other), "--quiet"]) == 2
    assert [r["name"] for r in ResultsStore(str(store)).runs()] == ["tiny"]  # kept; no 'other'
    capsys.readouterr()


def test_an_option_that_fails_only_at_construction_leaves_no_record(
    write_experiment, tmp_path: Path, capsys
) -> None:
    # A first parent of the wrong length passes the option types; only the space refuses it.
    store = tmp_path / "runs" / "presso.db"
    search = {**FEW, "options": {**FEW["options"], "initial": [0]}}
    path = write_experiment(tiny_experiment(store=str(store), search=search, baselines=[]))
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("presso: search: strategy 'evopress': ") and err.count("\n") == 1
    assert not store.exists() and not store.parent.exists()


def _killed_mid_write(src: Path, dst: Path) -> None:
    """Copy store ``src`` to ``dst`` as a search killed while committing leaves it: a hot journal
    beside it, holding the pages to put back."""
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA cache_size = 2")  # spill the transaction's pages into the file
    con.execute("BEGIN")
    con.execute("CREATE TABLE scratch (x BLOB)")
    for _ in range(300):
        con.execute("INSERT INTO scratch VALUES (randomblob(4000))")
    shutil.copy(src, dst)
    shutil.copy(f"{src}-journal", f"{dst}-journal")
    con.execute("ROLLBACK")
    con.close()


def test_a_store_with_an_unfinished_write_is_read_after_resume(tmp_path: Path, capsys) -> None:
    import optuna

    src, folder = tmp_path / "src.db", tmp_path / "stores"
    optuna.create_study(study_name="tiny", storage=ResultsStore(str(src)).url)
    folder.mkdir()
    store = folder / "runs.db"
    _killed_mid_write(src, store)
    before = _state(folder)
    assert main(["runs", "--store", str(store)]) == 2
    assert "holds an unfinished write (was a search killed?)" in capsys.readouterr().err
    assert _state(folder) == before  # reading did not roll it back either
    # What --resume opens (must_exist, for writing) takes it and rolls the write back.
    assert [r["name"] for r in ResultsStore(str(store), must_exist=True).runs()] == ["tiny"]
    assert sorted(_state(folder)) == ["runs.db"]
    assert main(["runs", "--store", str(store)]) == 0
