"""Where presso keeps its caches, and atomic writes for everything it stores."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """presso's cache root: ``$PRESSO_CACHE``, else ``$XDG_CACHE_HOME/presso``, else ``~/.cache/presso``."""
    if env := os.environ.get("PRESSO_CACHE"):
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "presso"
    root.mkdir(parents=True, exist_ok=True)
    return root


def digest(obj: Any, length: int = 16) -> str:
    """A stable content hash of a JSON-serialisable object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    atomic_write_parts(path, [data])


def atomic_write_parts(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    """:func:`atomic_write_bytes` of the concatenated ``parts`` (streamed, never joined)."""
    path = Path(path)
    try:
        _write_replacing(path, parts)
    except OSError as err:
        from presso.errors import DiskFullError, no_room

        if why := no_room(err):
            fix = " (or point PRESSO_CACHE at a disk with room)"
            raise DiskFullError(path, why=why, fix=fix) from None
        raise


def _write_replacing(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open would.
        os.chmod(tmp, plain_mode(folder=False))
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def plain_mode(*, folder: bool) -> int:
    """The permissions a plain ``open`` or ``mkdir`` gives under the process's umask (0644 and
    0755 under the usual 022): what the files presso writes for the user get."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(path: Path, *, may_replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    A folder already at ``path`` is replaced only when ``may_replace(path)`` says so (else
    FileExistsError): it is first renamed aside, so that a failed rename restores it, and
    removed only once the new folder is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, plain_mode(folder=True))  # mkdtemp's folder is private (0700)
        yield tmp
        if path.exists() and not (may_replace and may_replace(path)):
            raise FileExistsError(errno.EEXIST, "exists, and may not be replaced", str(path))
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename folder ``tmp`` to ``path``, moving an old ``path`` aside first and deleting it last."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.replace(path, old)  # onto the empty folder mkdtemp made: rename(2) allows that
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
