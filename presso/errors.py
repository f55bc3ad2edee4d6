"""User-facing errors: one clear line, no traceback, a non-zero exit."""

from __future__ import annotations


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
