"""Odd input that used to end in a traceback or a wrong read: digits int() refuses, a closed
pipe, names a shell would split, and a saved dataset whose metadata points outside itself."""

from __future__ import annotations

import json
import re
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
from presso.models import load_model
from presso.search._runner import check_address
from presso.summary import RunSummary

from .conftest import tiny_experiment
from .test_data import _save_to_disk_layout
from .test_export_target import ATTRS


@pytest.mark.parametrize("index", ["²", "١", "-1", "1.0", " 0", ""])
def test_pareto_index_that_is_no_index(index: str) -> None:
    if index == "١":  # an Arabic-Indic one: a decimal int() reads, and out of range here
        assert int(index) == 1
    with pytest.raises(PressoError, match="its Pareto front has one point, pareto:0"):
        build_plan(ATTRS, f"pareto:{index}")
    assert build_plan(ATTRS, "pareto:0").entries()


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
    finished = RunSummary.from_attrs("x", {"summary": {"candidates": {}}})
    monkeypatch.setattr(presso.run, "run_search", lambda exp, **_: finished)
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


def _alias_bomb() -> str:
    """Nine levels of nine aliases each: 1 KB that expands to 9**9 (387 million) strings."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "model: tiny-llama\nspace: {mean_bits: 3}\n" + "\n".join(lines) + "\n"


BASE = "model: tiny-llama\nspace: {mean_bits: 3}\n"

#: Hostile experiment files, as bytes, and what their one line says.
HOSTILE = {
    "alias bomb": (_alias_bomb().encode(), r":8: over 100000 values with aliases expanded"),
    "random bytes": (bytes(range(256)) * 4, r":2: not UTF-8 text \(byte 128\)"),
    "Latin-1": (b"model: caf\xe9\n", r":1: not UTF-8 text \(byte 10\)"),
    "UTF-16": (BASE.encode("utf-16"), r":1: not UTF-8 text"),
    "a NUL byte": (b"model: tiny\x00llama\n", r":1: not valid YAML: character 0x0 is not allowed"),
    "5000 deep": (BASE.encode() + b"x: " + b"[" * 5000 + b"]" * 5000, r":3: nested over 64"),
    "2 MB model name": (b"model: " + b"m" * 2_000_000, r": 2000007 bytes; an experiment file"),
    "4 KB model name": (
        b"model: " + b"m" * 4000 + b"\nspace: {mean_bits: 3}\n",
        r":1: model: 'mmm",
    ),
    "mean_bits .inf": (
        b"model: tiny-llama\nspace: {mean_bits: .inf}\n",
        r":2: space.mean_bits: .*finite",
    ),
    "mean_bits 1e308": (
        b"model: tiny-llama\nspace: {mean_bits: 1e308}\n",
        r"less than or equal to 16",
    ),
    "data.seed -1": (BASE.encode() + b"data: {seed: -1}\n", r":3: data.seed: .*greater than or"),
    "batch_size 10**12": (
        BASE.encode() + b"evaluation: {batch_size: 1000000000000}\n",
        r":3: evaluation.batch_size: .*less than or equal to 4096",
    ),
    "empty name": (b"name: ''\n" + BASE.encode(), r":1: name: .*at least 1 character"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_experiment_file_is_one_line(case: str, tmp_path: Path, capsys) -> None:
    text, message = HOSTILE[case]
    path = tmp_path / "exp.yaml"
    path.write_bytes(text)
    store = tmp_path / "runs" / "presso.db"
    assert main(["search", str(path), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"presso: {path}") and err.count("\n") == 1, err
    assert len(err) < 400 and re.search(message, err), err
    assert not store.parent.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "m.gguf").write_bytes(bytes(range(256)) * 16), "m.gguf: .*GGUF"),
        (lambda d: (d / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage"), "m.gguf: "),
        (lambda d: (d / "config.json").write_text(json.dumps(TINY_CONFIG)), "no file named"),
    ],
)
def test_a_model_that_cannot_be_loaded_is_one_line(make, message: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    spec = next(iter(folder.glob("*.gguf")), folder)
    with pytest.raises(
        PressoError, match=f"model: cannot load {re.escape(str(folder))}.*{message}"
    ):
        load_model(str(spec))


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 100,
}


@pytest.mark.parametrize("store", ["/proc/presso/runs.db", "{file}/runs.db"])
def test_a_store_that_cannot_be_made_is_said_before_the_model_loads(
    store: str, write_experiment, tmp_path: Path, capsys
) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    store = store.format(file=tmp_path / "file")
    path = write_experiment(tiny_experiment(store=store))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"presso: store: cannot create {store} (") and err.count("\n") == 1
