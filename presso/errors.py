"""User-facing errors: one clear line, no traceback, a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PressoError(Exception):
    """A mistake the user can fix. The CLI prints ``str(err)`` and exits with code 2.

    The message says what was wrong, where (file, field, line) and how to fix it.
    """


class MissingExtraError(PressoError):
    """An optional backend is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"pip install 'presso[{extra}]' -c constraints.txt"
        )


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a value quoted in an error: the line
    stays one short line whatever the input (a 2 MB name, a list of thousands)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def layer_list(names: Iterable[str], limit: int = 6) -> str:
    """``a, b, c (and 4 more)``: layer names for a one-line message."""
    names = list(names)
    listed = ", ".join(names[:limit])
    return listed + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


NO_SPACE = "no space left on device"
SIZE_LIMIT = "the file size limit, ulimit -f, is reached"


class DiskFullError(PressoError):
    """The disk filled up while presso wrote ``path``. What was written before is kept (files
    are replaced atomically; the store rolls the interrupted write back)."""

    def __init__(self, path: Any, what: str = "it", *, why: str = NO_SPACE, fix: str = "") -> None:
        super().__init__(
            f"{path}: disk full ({why}) while writing {what}; nothing written before is lost: "
            f"free space there{fix} and run again"
        )
        self.path = path


def no_room(err: BaseException | None, path: Any = None) -> str | None:
    """Why ``err`` (an OSError, or a database driver's error while writing file ``path``) means
    the disk is full, or None when it does not."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return NO_SPACE if err.errno == errno.ENOSPC else "disk quota exceeded"
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        return SIZE_LIMIT
    if getattr(err, "sqlite_errorname", None) == "SQLITE_FULL":
        return NO_SPACE
    if getattr(err, "sqlstate", None) == "53100" or getattr(err, "pgcode", None) == "53100":
        return NO_SPACE  # PostgreSQL's disk_full
    if "database or disk is full" in str(err) or "No space left on device" in str(err):
        return NO_SPACE
    if path is not None and str(getattr(err, "sqlite_errorname", "")).startswith("SQLITE_IOERR"):
        # SQLite reports a write refused for the size limit (EFBIG) as an I/O error.
        return _file_limit_reached(path)
    return None


def _file_limit_reached(path: Any) -> str | None:
    import os
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    return SIZE_LIMIT if size + 2**20 >= soft else None
