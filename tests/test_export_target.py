"""Where an export may write: --force replaces only what presso wrote, never the current
directory, the home folder or someone's files; mismatched and unwritable targets are one line.

Most tests drive :func:`presso.export.export` with a hand-made finished run and a test-only
folder format (no model is built); one goes through the CLI with a real tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from presso.cli import main
from presso.errors import PressoError
from presso.export import Exporter, Source, export
from presso.export._base import FORMATS
from presso.export._target import MANIFEST, export_dir
from presso.paths import atomic_dir
from presso.plan import Plan

from .conftest import tiny_experiment

#: The least a finished run holds for build_plan: one 4-bit unit, a one-point Pareto front.
ATTRS: dict[str, Any] = {
    "units": ["model.layers.0.mlp.up_proj"],
    "experiment": {
        "model": "tiny-llama",
        "compress": {"operator": "rtn", "group_size": 32, "symmetric": False},
        "space": {"mean_bits": 4.0},
    },
    "summary": {
        "run": "tiny",
        "candidates": {"search": {"strategy": "evopress", "levels": [4], "heldout": {}}},
        "pareto": {"objectives": ["kl", "mean_bits"], "points": [[0.1, 4.0]], "levels": [[4]]},
    },
}


class _FolderExporter(Exporter):
    """Writes two files into a folder, as the hf and pruned formats do (without a model)."""

    name = "test-folder"
    folder = True
    fail = False

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        with export_dir(out, self.name, plan) as tmp:
            (tmp / "model.bin").write_bytes(b"weights")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "plan.json").write_text(json.dumps(plan.to_dict()))
            if self.fail:
                raise RuntimeError("the export failed half way")


@pytest.fixture
def folder_format(monkeypatch: pytest.MonkeyPatch) -> type[_FolderExporter]:
    monkeypatch.setitem(FORMATS._items, _FolderExporter.name, _FolderExporter)
    return _FolderExporter


def _fill(folder: Path) -> dict[str, bytes]:
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "data").mkdir()
    (folder / "data" / "x.csv").write_text("1,2")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_folder_export_writes_a_manifest_and_force_replaces_it(
    folder_format, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    export(ATTRS, "search", "test-folder", out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["model.bin", "sub/plan.json"]
    assert manifest["format"] == "test-folder" and manifest["run"] == "tiny"
    with pytest.raises(PressoError, match="exists; choose another --out or add --force"):
        export(ATTRS, "search", "test-folder", out)
    (out / "model.bin").write_bytes(b"old weights")
    export(ATTRS, "search", "test-folder", out, force=True)
    assert (out / "model.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temporary left


@pytest.mark.parametrize("place", ["cwd", "home", "parent of cwd"])
def test_force_never_replaces_the_current_or_home_folder(
    folder_format, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, place: str
) -> None:
    folder = tmp_path / "work"
    before = _fill(folder)
    (folder / MANIFEST).write_text(json.dumps({"presso_export": 1, "files": list(before)}))
    before = _snapshot(folder)
    if place == "home":
        monkeypatch.setenv("HOME", str(folder))
        monkeypatch.chdir(tmp_path)
        out = Path("~").expanduser()
    elif place == "cwd":
        monkeypatch.chdir(folder)
        out = Path(".")
    else:
        (folder / "inner").mkdir()
        monkeypatch.chdir(folder / "inner")
        out = Path("..")
    with pytest.raises(PressoError, match="presso never replaces, even with --force"):
        export(ATTRS, "search", "test-folder", out, force=True)
    assert _snapshot(folder) == before


def test_force_refuses_a_folder_presso_did_not_write(folder_format, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    before = _fill(out)
    with pytest.raises(PressoError, match=f"presso did not write \\(no {MANIFEST} in it\\)"):
        export(ATTRS, "search", "test-folder", out, force=True)
    assert _snapshot(out) == before


def test_force_refuses_an_export_holding_a_users_file(folder_format, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    export(ATTRS, "search", "test-folder", out)
    (out / "README.md").write_text("my notes about this model")
    with pytest.raises(PressoError, match=r"holds files presso did not write \(README.md\)"):
        export(ATTRS, "search", "test-folder", out, force=True)
    assert (out / "README.md").is_file() and (out / "model.bin").is_file()


def test_force_takes_an_empty_folder(folder_format, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    export(ATTRS, "search", "test-folder", out, force=True)
    assert (out / "model.bin").is_file()


def test_a_failed_export_leaves_the_old_one_whole(folder_format, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    export(ATTRS, "search", "test-folder", out)
    before = _snapshot(out)
    folder_format.fail = True
    try:
        with pytest.raises(RuntimeError, match="half way"):
            export(ATTRS, "search", "test-folder", out, force=True)
    finally:
        folder_format.fail = False
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_a_folder_changed_during_the_export_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "exported"
    with export_dir(out, "test-folder", Plan()) as tmp:
        (tmp / "a").write_text("a")
    with pytest.raises(PressoError, match=r"did not write \(late.txt\)"):
        with export_dir(out, "test-folder", Plan()) as tmp:
            (tmp / "a").write_text("b")
            (out / "late.txt").write_text("written while the export ran")
    assert (out / "a").read_text() == "a" and (out / "late.txt").is_file()


def test_atomic_dir_refuses_an_existing_folder_unless_told(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("kept")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "x") as tmp:
        (tmp / "new").write_text("new")
    assert (tmp_path / "x" / "keep").is_file()
    with atomic_dir(tmp_path / "x", may_replace=lambda _: True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_file_and_folder_mismatches(folder_format, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(PressoError, match="is a file and --format test-folder writes a folder"):
        export(ATTRS, "search", "test-folder", tmp_path / "a-file", force=True)
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(PressoError, match="is a folder and --format plan writes one file"):
        export(ATTRS, "search", "plan", tmp_path / "a-folder", force=True)
    with pytest.raises(PressoError, match="a-file is a file, not a folder"):
        export(ATTRS, "search", "plan", tmp_path / "a-file" / "plan.json")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_unwritable_targets_are_one_line(
    folder_format, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("os.access", lambda *a, **k: False)
    with pytest.raises(PressoError, match="cannot write in .* \\(permission denied\\)"):
        export(ATTRS, "search", "plan", tmp_path / "plan.json")
    monkeypatch.undo()
    monkeypatch.setitem(FORMATS._items, _FolderExporter.name, _FolderExporter)
    monkeypatch.setattr(Path, "mkdir", refuse)  # e.g. a read-only file system
    with pytest.raises(PressoError, match=r"--out .*deep/out: cannot write .*Permission denied"):
        export(ATTRS, "search", "test-folder", tmp_path / "deep" / "out")


def test_cli_export_force_on_the_current_directory_is_refused(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    few = {"options": {"generations": 1, "offspring": 2, "stages": [[64, 1]]}}
    path = write_experiment(tiny_experiment(search=few, baselines=[]))
    assert main(["search", str(path), "--quiet"]) == 0
    work = tmp_path / "work"
    before = _fill(work)
    monkeypatch.chdir(work)
    store = str(tmp_path / "runs.db")
    capsys.readouterr()
    for fmt in ("hf", "pruned"):
        assert (
            main(["export", "tiny", "--store", store, "--format", fmt, "--out", ".", "--force"])
            == 2
        )
        err = capsys.readouterr().err
        assert err.startswith("presso: --out . is the current directory") and err.count("\n") == 1
    assert (
        main(["export", "tiny", "--store", store, "--format", "hf", "--out", "data", "--force"])
        == 2
    )
    assert "presso did not write" in capsys.readouterr().err
    assert _snapshot(work) == before
