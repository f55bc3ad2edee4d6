"""Checksums of the caches: a flipped byte, a truncated file or garbage in a level file or a
dense reference is reported with its path and rebuilt, never used; files from before
checksums are sealed in place; a file is hashed once per process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from presso import checksum
from presso.checksum import CorruptFile, adopt, verify, write_sealed
from presso.config import Experiment
from presso.experiment import Setup

from .conftest import tiny_experiment

TENSORS = {"codes": torch.arange(4096, dtype=torch.int32).reshape(64, 64), "s": torch.ones(3)}


@pytest.fixture(autouse=True)
def _new_process() -> None:
    checksum._verified.clear()  # each test reads its files as a fresh process would


def _flip(path: Path, offset: int = -1000, n: int = 256) -> None:
    """Flip ``n`` bytes at ``offset`` (from the end when negative), in place."""
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode, as a disk or a stray write would
        f.write(data)


def test_sealed_file_loads_as_safetensors_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    write_sealed(path, save(TENSORS, metadata={"unit": "x"}))
    checksum._verified.clear()
    assert verify(path) is True
    loaded = load(path.read_bytes())
    assert all(torch.equal(loaded[k], v) for k, v in TENSORS.items())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _flip(p), "does not match its checksum"),
        (lambda p: _flip(p, offset=20, n=8), "unreadable|does not match"),  # inside the header
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "shorter than a safetensors header"),
        (lambda p: p.write_bytes(b"\xff" * 64), "truncated: its header runs past"),
        (lambda p: p.write_bytes(b""), "unreadable"),
    ],
)
def test_damaged_files_name_themselves(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "a.safetensors"
    write_sealed(path, save(TENSORS))
    damage(path)
    with pytest.raises(CorruptFile, match=message) as err:
        verify(path)
    assert str(err.value).startswith(f"{path}: ")


def test_a_file_is_hashed_once_per_process(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.safetensors"
    write_sealed(path, save(TENSORS))
    checksum._verified.clear()
    calls = []
    digest = checksum._digest
    monkeypatch.setattr(checksum, "_digest", lambda *a: calls.append(1) or digest(*a))
    assert verify(path) and verify(path) and verify(path)
    assert len(calls) == 1
    _flip(path)  # a change (size, mtime or inode) is noticed, and hashed again
    with pytest.raises(CorruptFile):
        verify(path)


def test_a_file_from_before_checksums_is_sealed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.safetensors"
    path.write_bytes(save(TENSORS, metadata={"unit": "x"}))
    assert verify(path) is False
    adopt(path)
    checksum._verified.clear()
    assert verify(path) is True
    assert all(torch.equal(load(path.read_bytes())[k], v) for k, v in TENSORS.items())
    path.write_bytes(path.read_bytes()[:-8])  # and then protected like any other
    with pytest.raises(CorruptFile, match="truncated"):
        verify(path)


def _same(a: bytes, b: bytes) -> bool:
    """The same tensors (safetensors writes metadata keys in no fixed order)."""
    x, y = load(a), load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _setup(tmp_path: Path) -> Setup:
    # Its own cache: these tests damage files, the session's cache stays whole.
    exp = Experiment.model_validate(tiny_experiment(compress={"group_size": 16}))
    return Setup(exp, cache_root=str(tmp_path / "cache"))


def test_corrupt_level_is_reported_rebuilt_and_never_read(tmp_path: Path, caplog) -> None:
    s = _setup(tmp_path)
    s.level_db("bits").build(None)
    unit = s.handle.units[3].name
    path = s.level_db("bits").path(unit, 3)
    good = path.read_bytes()
    _flip(path)
    checksum._verified.clear()
    with pytest.raises(CorruptFile, match=f"{path}: content does not match"):
        s.level_db("bits").load(unit, 3)  # an evaluation reading it fails, naming the file
    with caplog.at_level(logging.WARNING, logger="presso"):
        assert s.level_db("bits").missing() == [(unit, 3)]
    assert f"{path}: content does not match its checksum" in caplog.text
    assert "rebuilding it" in caplog.text
    s.level_db("bits").build(None)
    assert _same(path.read_bytes(), good)  # rebuilt exactly
    assert s.level_db("bits").is_complete()


def test_level_database_from_before_checksums_is_kept(tmp_path: Path) -> None:
    s = _setup(tmp_path)
    s.level_db("bits").build(None)
    path = s.level_db("bits").path(s.handle.units[0].name, 2)
    unsealed = save(load(path.read_bytes()))  # the same tensors, no checksum (an old cache)
    path.write_bytes(unsealed)
    checksum._verified.clear()
    assert s.level_db("bits").build(None) == 0.0  # nothing rebuilt
    checksum._verified.clear()
    assert verify(path) is True


def test_corrupt_dense_reference_is_rebuilt(tmp_path: Path, caplog) -> None:
    s = _setup(tmp_path)
    ref = s.reference
    ref.build()
    good = ref.path.read_bytes()
    expected = ref.get("calibration", [0, 1])
    _flip(ref.path, offset=len(good) // 2)
    checksum._verified.clear()
    with pytest.raises(CorruptFile, match=str(ref.path)):
        type(ref)(ref.path.parent, s.handle, s.data).get("calibration", [0, 1])
    with caplog.at_level(logging.WARNING, logger="presso"):
        assert ref.build() > 0.0
    assert str(ref.path) in caplog.text
    assert _same(ref.path.read_bytes(), good)
    fresh = type(ref)(ref.path.parent, s.handle, s.data)
    assert torch.equal(fresh.get("calibration", [0, 1]), expected)
