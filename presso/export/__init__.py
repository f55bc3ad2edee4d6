"""Export a run's chosen configuration to the tools people deploy with.

``presso export RUN --format NAME --out PATH``: the plan of one candidate (see
:func:`build_plan`), written by the :class:`Exporter` registered as ``NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.export._base import Exporter, Source, formats, make_exporter, register
from presso.export._plan import TextExporter, build_plan, render, run_summary
from presso.export._target import check_target
from presso.plan import PLAN_VERSION, Plan
from presso.summary import RunSummary

__all__ = [
    "PLAN_VERSION",
    "Exporter",
    "Plan",
    "Source",
    "TextExporter",
    "build_plan",
    "export",
    "formats",
    "make_exporter",
    "register",
    "render",
]


def export(
    run: RunSummary | dict[str, Any],
    phase: str,
    fmt: str,
    out: Path | None,
    *,
    force: bool = False,
) -> str | None:
    """Write candidate ``phase`` of a run (its summary, or its stored study attributes) in
    format ``fmt`` to ``out``; with no ``out`` a text format is returned instead. Nothing is
    written when the plan is refused."""
    exporter = make_exporter(fmt)
    summary = run_summary(run)
    plan = build_plan(summary, phase)
    exporter.check(plan)
    if out is None:
        if isinstance(exporter, TextExporter):
            return exporter.render(plan)
        raise PressoError(
            f"--format {fmt} writes a {'folder' if exporter.folder else 'file'}; give --out PATH"
        )
    check_target(out, fmt, folder=exporter.folder, force=force)
    try:
        exporter.write(plan, out, Source(summary, phase))
    except OSError as err:
        if not _under(err.filename, out):
            raise
        raise PressoError(
            f"--out {out}: cannot write {err.filename} ({err.strerror}); choose another --out"
        ) from None
    return None


def _under(filename: object, out: Path) -> bool:
    """Whether an OSError's file is ``out``, inside it, one of its temporary siblings
    (``.NAME.*``) or a folder above it: a failure to write the export, not to read its inputs."""
    if not isinstance(filename, str | os.PathLike):
        return False
    path, out = Path(filename).absolute(), out.absolute()
    if path in out.parents:
        return True
    return any(
        p == out or (p.parent == out.parent and p.name.startswith(f".{out.name}."))
        for p in (path, *path.parents)
    )


from presso.export import (  # noqa: F401,E402  (registers the formats)
    _diffusers,
    _gptqmodel,
    _hf,
    _llamacpp,
    _llmcompressor,
    _onnx,  # noqa: F401,E402  (registers the format)
    _pruned,
    _torchao,
)
