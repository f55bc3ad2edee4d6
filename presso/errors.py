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
