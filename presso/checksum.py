"""Checksums inside presso's safetensors caches (level databases, dense references).

A sealed file holds ``presso.sha256`` in its safetensors metadata: the SHA-256 of its header
(tensor names, dtypes, shapes and offsets, and the rest of its metadata, as canonical JSON)
and of every byte after the header. Readers call :func:`verify` before using a file; a file
is hashed once per process (then only its size, mtime and inode are compared), so a flipped
byte is caught at the cost of one read, and a bad file names itself instead of silently
changing a result.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from presso.errors import PressoError
from presso.paths import atomic_write_parts

KEY = "presso.sha256"
#: Larger headers are not safetensors headers presso wrote: refuse before reading them.
MAX_HEADER = 100 * 2**20
CHUNK = 16 * 2**20

_verified: dict[str, tuple[int, int, int]] = {}


class CorruptFile(PressoError):
    """A cache file whose content does not match its checksum, or that cannot be read."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


def seal(blob: bytes) -> list[bytes | memoryview]:
    """The parts of ``blob`` (a safetensors file's bytes) with its checksum in the metadata."""
    header, start = _read_header(io.BytesIO(blob), len(blob))
    data = memoryview(blob)[start:]
    return [_sealed_header(header, [data]), data]


def write_sealed(path: Path, blob: bytes) -> None:
    """Write safetensors bytes ``blob`` to ``path`` atomically, sealed with their checksum."""
    atomic_write_parts(path, seal(blob))
    _remember(path)


def verify(path: Path) -> bool:
    """True when ``path`` is sealed and intact; False when it holds no checksum (a file from a
    presso before checksums). Raises CorruptFile when it does not match or cannot be read."""
    path = Path(path)
    stamp = _stamp(path)
    if _verified.get(str(path)) == stamp:
        return True
    try:
        with open(path, "rb") as f:
            header, start = _read_header(f, stamp[0])
            expected = header.get("__metadata__", {}).get(KEY)
            if expected is None:
                return False
            _check_length(header, stamp[0] - start)
            actual = _digest(header, _chunks(f))
    except (OSError, ValueError) as err:
        raise CorruptFile(path, f"unreadable ({err})") from None
    if actual != expected:
        raise CorruptFile(path, "content does not match its checksum (the file was changed)")
    _verified[str(path)] = stamp
    return True


def adopt(path: Path) -> None:
    """Seal a readable file written before checksums, in place (atomically): it is trusted as
    it is now, which costs one copy instead of rebuilding it."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header, start = _read_header(f, size)
            _check_length(header, size - start)
            head = _sealed_header(header, _chunks(f))
            f.seek(start)
            atomic_write_parts(path, [head, *_chunks(f)])
    except (OSError, ValueError) as err:
        raise CorruptFile(path, f"unreadable ({err})") from None
    logging.getLogger("presso").info("%s: recorded the checksum of a file without one", path)
    _remember(path)


def check(path: Path) -> bool:
    """Whether ``path`` may be used: sealed and intact, or unsealed (then sealed now). A
    corrupt one is reported (a warning naming it) and False returned: the caller rebuilds it."""
    try:
        if not verify(path):
            adopt(path)
        return True
    except CorruptFile as err:
        logging.getLogger("presso").warning("%s; rebuilding it", err)
        return False


# ---------------------------------------------------------------------- format


def _read_header(f: BinaryIO, size: int) -> tuple[dict[str, Any], int]:
    """The parsed header of a safetensors file and the offset its data starts at."""
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f"{size} bytes, shorter than a safetensors header")
    n = int.from_bytes(raw, "little")
    if n > min(size - 8, MAX_HEADER):
        raise ValueError("truncated: its header runs past the end of the file")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    return header, 8 + n


def _check_length(header: dict[str, Any], data_bytes: int) -> None:
    try:
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"not a safetensors header ({err!r})") from None
    if end > data_bytes:
        raise ValueError(f"truncated: {data_bytes} data bytes of {end}")


def _digest(header: dict[str, Any], chunks: Iterable[bytes | memoryview]) -> str:
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != KEY}
    canonical = {**header, "__metadata__": meta}
    h = hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _sealed_header(header: dict[str, Any], data: Iterable[bytes | memoryview]) -> bytes:
    """The length prefix and header of the sealed file (padded to 8 bytes, as safetensors does)."""
    meta = dict(header.get("__metadata__") or {})
    meta[KEY] = _digest(header, data)
    text = json.dumps({**header, "__metadata__": meta}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def _remember(path: Path) -> None:
    """A file this process just wrote is known intact."""
    _verified[str(Path(path))] = _stamp(path)
