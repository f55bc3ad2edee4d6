"""Odd input that used to end in a traceback or a wrong read: digits int() refuses, a closed
pipe, names a shell would split, and a saved dataset whose metadata points outside itself."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import presso.run
from presso.cli import main
from presso.data import load_texts
from presso.errors import PressoError
from presso.export import build_plan
from presso.search._runner import check_address

from .conftest import tiny_experiment
from .test_data import _save_to_disk_layout
from .test_export_target import ATTRS


@pytest.mark.parametrize("index", ["²", "١", "-1", "1.0", " 0", ""])
def test_pareto_index_that_is_no_index(index: str) -> None:
    if index == "١":  # an Arabic-Indic one: a decimal int() reads, and out of range here
        assert int(index) == 1
    with pytest.raises(PressoError, match="its Pareto front has one point, pareto:0"):
        build_plan(ATTRS, f"pareto:{index}")
    assert build_plan(ATTRS, "pareto:0")["units"]


def test_ray_port_that_is_no_number() -> None:
    with pytest.raises(PressoError, match="is not a Ray address"):
        check_address("10.0.0.5:²")


def test_closed_pipe_is_quiet() -> None:
    # The reader closes at once, before the command writes: as `presso ... | head -0` does.
    cmd = [sys.executable, "-m", "presso.cli", "export", "--formats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_hints_are_shell_quoted(
    write_experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_experiment(tiny_experiment(), "my exp.yaml")
    store = str(tmp_path / "my runs.db")
    monkeypatch.setattr(presso.run, "run_search", lambda exp, **_: {"candidates": {}})
    assert main(["search", str(path), "--name", "it's; rm -rf x", "--store", store]) == 0
    hint = capsys.readouterr().out.rsplit("`", 2)[1]
    assert shlex.split(hint) == ["presso", "show", "it's; rm -rf x", "--store", store]

    def interrupted(exp, **_):  # noqa: ANN001, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(presso.run, "run_search", interrupted)
    assert main(["search", str(path)]) == 130
    hint = capsys.readouterr().err.rsplit("`", 2)[1]
    assert shlex.split(hint) == ["presso", "search", str(path), "--resume"]


def _state(folder: Path, **state: object) -> None:
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")


def test_saved_dataset_reads_only_its_own_files(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="reading save_to_disk folders needs pyarrow")
    _save_to_disk_layout(tmp_path / "secret", ["not for the calibration set"])
    folder = tmp_path / "ds"
    _save_to_disk_layout(folder, ["mine"])
    for name in ("../secret/data-00000-of-00001.arrow", str(tmp_path / "secret" / "x.arrow"), "."):
        _state(folder, _data_files=[{"filename": name}])
        with pytest.raises(PressoError, match="is outside the dataset folder"):
            load_texts(str(folder))
    for files in ([{"filename": 3}], "data.arrow", [None]):
        _state(folder, _data_files=files)
        with pytest.raises(PressoError, match="state.json: .*save"):
            load_texts(str(folder))
    (folder / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PressoError, match="state.json: not valid JSON"):
        load_texts(str(folder))

    (folder / "state.json").unlink()
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["../secret"]}))
    with pytest.raises(PressoError, match="is outside the dataset folder"):
        load_texts(str(folder))
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": "train"}))
    with pytest.raises(PressoError, match="'splits' is not a list"):
        load_texts(str(folder))
