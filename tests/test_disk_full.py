"""The disk filling up while a search writes its results store or its level database: one
line naming the file and "disk full", exit 2, no traceback; the store still opens with every
evaluation written before, and the search resumes once there is room again.

The disk is a real small file system (tmpfs, mounted by the test: it needs root and a kernel
that lets it mount). Where that is refused, the file size limit (RLIMIT_FSIZE) plays the full
disk for a search run in a subprocess; the test is skipped only where neither exists.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from presso.checksum import verify, write_sealed
from presso.cli import main
from presso.errors import DiskFullError
from presso.store import ResultsStore

from .conftest import tiny_experiment


def _can_mount() -> str | None:
    """None where this process can mount a tmpfs, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int) -> Iterator[Path]:
    """``folder`` as a ``size_kb`` KiB tmpfs of its own (skips the test where that is refused)."""
    why = _can_mount()
    folder.mkdir(parents=True, exist_ok=True)
    if why is None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        why = None if done.returncode == 0 else done.stderr.strip()
    if why is not None:
        pytest.skip(f"cannot mount a small tmpfs here ({why})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def resize(folder: Path, size_kb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(folder)], check=True)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_disk_full_line(err: str, path: Path) -> None:
    assert err.startswith(f"presso: {path}") and err.count("\n") == 1, err
    assert "disk full" in err and "Traceback" not in err, err


def long_experiment(store: Path, **overrides: object) -> dict:
    """A tiny search with enough evaluations to outgrow a small disk."""
    exp = tiny_experiment(**overrides)
    exp["search"]["options"] = {"generations": 40, "offspring": 4, "stages": [[128, 1]]}
    return {**exp, "store": str(store)}


def test_disk_full_while_writing_the_store(tmp_path: Path) -> None:
    """The store's disk fills up mid-search: one line, exit 2; every evaluation committed before
    is there for `presso runs` and `presso show`, and `--resume` finishes once there is room."""
    # Room for Optuna's tables (112 KiB) and a few dozen evaluations, not for 160 of them.
    with small_disk(tmp_path / "disk", 160) as disk:
        store = disk / "runs.db"
        exp = tmp_path / "exp.yaml"
        exp.write_text(yaml.safe_dump(long_experiment(store), sort_keys=False))
        code, _, err = run_cli("search", str(exp), "--quiet")
        assert code == 2, err
        assert_disk_full_line(err, store)
        assert not [p for p in disk.iterdir() if p.name != "runs.db"], "a journal was left"

        stored = ResultsStore(str(store), read_only=True)
        evaluations = len(stored.records(stored.open("tiny")))
        assert evaluations > 0
        code, out, err = run_cli("runs", "--store", str(store))
        assert code == 0 and "tiny" in out and f" {evaluations} " in out, (out, err)
        code, out, err = run_cli("show", "tiny", "--store", str(store))
        assert code == 0 and f"{evaluations} evaluations" in out, (out, err)

        resize(disk, 4096)
        code, out, err = run_cli("search", str(exp), "--resume", "--quiet")
        assert code == 0, err
        stored = ResultsStore(str(store), read_only=True)
        assert stored.open("tiny").user_attrs["status"] == "finished"
        assert len(stored.records(stored.open("tiny"))) > evaluations


def test_disk_full_while_making_a_new_store(tmp_path: Path) -> None:
    """No room even for a new store's tables: one line, and no half-made store is left that
    would refuse the next search once there is room."""
    with small_disk(tmp_path / "disk", 48) as disk:
        store = disk / "runs.db"
        exp = tmp_path / "exp.yaml"
        exp.write_text(yaml.safe_dump({**tiny_experiment(), "store": str(store)}, sort_keys=False))
        code, _, err = run_cli("search", str(exp), "--quiet")
        assert code == 2, err
        assert_disk_full_line(err, store)
        assert list(disk.iterdir()) == []
        resize(disk, 4096)
        code, _, err = run_cli("search", str(exp), "--quiet")
        assert code == 0, err


def test_disk_full_while_building_the_level_database(tmp_path: Path, presso_cache: Path) -> None:
    """The level database's disk fills up: one line naming the level file, exit 2; no
    half-written file is left, and every level written before is intact (checksum holds)."""
    cache = tmp_path / "cache"
    shutil.copytree(presso_cache, cache, ignore=shutil.ignore_patterns("levels"))
    store = tmp_path / "runs.db"
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(long_experiment(store), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp, small_disk(cache / "levels", 64) as levels:
        mp.setenv("PRESSO_CACHE", str(cache))
        code, _, err = run_cli("search", str(exp), "--quiet")
        assert code == 2, err
        assert err.startswith(f"presso: {levels}/") and ".safetensors" in err, err
        assert "disk full" in err and err.count("\n") == 1 and "Traceback" not in err, err
        files = list(levels.rglob("*"))
        assert not [p for p in files if p.name.endswith(".tmp")], "a half-written file was left"
        written = [p for p in files if p.suffix == ".safetensors"]
        assert written and all(verify(p) for p in written)
    # Nothing of the run reached the store (it had not started), and the store reads.
    if store.exists():
        assert "tiny" not in run_cli("runs", "--store", str(store))[1]


def test_a_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    """An atomic write that finds no room raises DiskFullError and leaves the old file."""
    import torch
    from safetensors.torch import save

    with small_disk(tmp_path / "disk", 64) as disk:
        path = disk / "level.safetensors"
        write_sealed(path, save({"w": torch.zeros(16)}))
        with pytest.raises(DiskFullError, match="disk full") as err:
            write_sealed(path, save({"w": torch.zeros(64 * 1024)}))  # 256 KiB
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert verify(path) and [p.name for p in disk.iterdir()] == ["level.safetensors"]


def test_file_size_limit_is_reported_like_a_full_disk(tmp_path: Path) -> None:
    """Where no disk can be mounted, RLIMIT_FSIZE stands in for it: a search whose store may
    not grow past 160 KiB stops with the same one line, and the store still opens."""
    # The limit is on every file the search writes: its caches are made first, without it.
    warm = tiny_experiment(store=str(tmp_path / "warm.db"))
    warm["search"]["options"] = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
    (tmp_path / "warm.yaml").write_text(yaml.safe_dump(warm, sort_keys=False))
    assert run_cli("search", str(tmp_path / "warm.yaml"), "--quiet")[0] == 0
    store = tmp_path / "runs.db"
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(long_experiment(store), sort_keys=False))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (160 * 1024, resource.RLIM_INFINITY))

    done = subprocess.run(
        [sys.executable, "-m", "presso.cli", "search", str(exp), "--quiet"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert_disk_full_line(done.stderr, store)
    stored = ResultsStore(str(store), read_only=True)
    assert len(stored.records(stored.open("tiny"))) > 0
