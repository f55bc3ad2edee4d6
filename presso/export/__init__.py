"""Export a run's chosen configuration to the tools people deploy with.

``presso export RUN --format NAME --out PATH``: the plan of one candidate (see
:func:`build_plan`), written by the :class:`Exporter` registered as ``NAME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.export._base import Exporter, Source, formats, make_exporter, register
from presso.export._plan import PLAN_VERSION, TextExporter, build_plan, render

__all__ = [
    "PLAN_VERSION",
    "Exporter",
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
    study_attrs: dict[str, Any], phase: str, fmt: str, out: Path | None, *, force: bool = False
) -> str | None:
    """Write candidate ``phase`` of a run in format ``fmt`` to ``out``; with no ``out`` a text
    format is returned instead. Nothing is written when the plan is refused."""
    exporter = make_exporter(fmt)
    plan = build_plan(study_attrs, phase)
    exporter.check(plan)
    if out is None:
        if isinstance(exporter, TextExporter):
            return exporter.render(plan)
        raise PressoError(
            f"--format {fmt} writes a {'folder' if exporter.folder else 'file'}; give --out PATH"
        )
    if out.exists() and not force:
        raise PressoError(f"{out} exists; choose another --out or add --force to overwrite it")
    exporter.write(plan, out, Source(study_attrs, phase))
    return None


from presso.export import (  # noqa: F401,E402  (registers the formats)
    _gptqmodel,
    _hf,
    _llamacpp,
    _llmcompressor,
    _onnx,  # noqa: F401,E402  (registers the format)
    _pruned,
    _torchao,
)
