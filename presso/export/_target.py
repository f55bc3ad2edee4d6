"""Where an export may be written, and the folder exports' manifest.

``--force`` replaces only what presso itself wrote: a file named by --out, or a folder holding
presso's manifest (``presso-export.json``, written into every folder export) and nothing else.
Folders are written to a temporary sibling and renamed into place, so a failed export leaves
the old one whole. Every refusal is one line saying what, where and how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from presso.errors import PressoError
from presso.paths import atomic_dir, plain_mode
from presso.plan import Plan

#: The manifest every folder export holds: the format, the run, the files presso wrote.
MANIFEST = "presso-export.json"


def check_target(out: Path, fmt: str, *, folder: bool, force: bool) -> None:
    """Refuse, before any work, an ``--out`` this export must not or cannot write."""
    kind = "a folder" if folder else "one file"
    if out.is_symlink():
        raise PressoError(f"--out {out} is a symbolic link; give the real path it points to")
    if out.is_dir() and not folder:
        raise PressoError(
            f"--out {out} is a folder and --format {fmt} writes {kind}; "
            f"give a file path, e.g. --out {out / f'{fmt}.json'}"
        )
    if out.exists() and not out.is_dir() and folder:
        raise PressoError(
            f"--out {out} is a file and --format {fmt} writes {kind}; give a folder path"
        )
    if out.exists() and not force:
        raise PressoError(f"{out} exists; choose another --out or add --force to overwrite it")
    if out.is_dir():
        check_replaceable(out)
    _check_writable(out)


def check_replaceable(folder: Path) -> None:
    """Refuse to replace a folder that presso did not write (an empty one may go)."""
    where = _special(folder)
    if where:
        raise PressoError(
            f"--out {folder} is {where}, which presso never replaces, even with --force; "
            "give a new folder, e.g. --out exported"
        )
    names = sorted(_files(folder))
    if not names:
        return
    written = _manifest_files(folder)
    if written is None:
        raise PressoError(
            f"--out {folder} is a folder presso did not write (no {MANIFEST} in it); --force "
            "replaces only a folder presso exported: choose a new --out"
        )
    if foreign := [n for n in names if n not in written and n != MANIFEST]:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise PressoError(
            f"--out {folder} holds files presso did not write ({shown}); move them out, or "
            "choose a new --out"
        )


@contextlib.contextmanager
def export_dir(out: Path, fmt: str, plan: Plan) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write a folder export into; on success the manifest
    is added and the folder renamed to ``out`` (an old export there is replaced only if it still
    passes :func:`check_replaceable`)."""
    with atomic_dir(out, may_replace=_replaceable) as tmp:
        yield tmp
        manifest = {
            "presso_export": 1,
            "format": fmt,
            "run": plan.about.get("run"),
            "candidate": plan.about.get("candidate"),
            "files": sorted(_files(tmp)),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # The user's files, readable as any they make: writers may have made some private.
        for path in (tmp, *tmp.rglob("*")):
            if not path.is_symlink():
                os.chmod(path, plain_mode(folder=path.is_dir()))


def _replaceable(folder: Path) -> bool:
    check_replaceable(folder)  # raises: the folder changed since the check before the work
    return True


def _files(folder: Path) -> Iterator[str]:
    """Every file and link below ``folder``, as POSIX paths relative to it."""
    for path in folder.rglob("*"):
        if not path.is_dir() or path.is_symlink():
            yield path.relative_to(folder).as_posix()


def _manifest_files(folder: Path) -> set[str] | None:
    """The files a folder's manifest says presso wrote; None when it has no valid manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return set(manifest["files"]) if manifest.get("presso_export") == 1 else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _special(folder: Path) -> str:
    """What ``folder`` is when it is a place no export may replace, else ''."""
    real, cwd = folder.resolve(), Path.cwd().resolve()
    if real == cwd:
        return "the current directory"
    if real in cwd.parents:
        return "a folder above the current directory"
    if real == Path.home().resolve():
        return "your home folder"
    return ""


def _check_writable(out: Path) -> None:
    """Refuse an --out whose nearest existing folder cannot be written, or is a file."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PressoError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PressoError(
            f"--out {out}: cannot write in {parent} (permission denied); choose another --out"
        )
