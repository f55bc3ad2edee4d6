"""The dashboard's one HTML page, served (scripts by URL) or self-contained (everything inline).

The page is ``static/page.html`` with ``app.css``, ``app.js`` and Plotly.js; Plotly.js comes
from the installed ``plotly`` Python package (``package_data/plotly.min.js``), so the
dashboard needs no network and no JavaScript toolchain.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from presso.errors import MissingExtraError

_SLOT = re.compile(r"\{\{(style|data|scripts)\}\}")


def plotly_js_path() -> Path:
    """Plotly.js inside the ``plotly`` package (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("plotly", "dashboard", "the dashboard")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise MissingExtraError("plotly", "dashboard", "the dashboard")


@functools.cache
def asset(name: str) -> bytes:
    """A static file of the page: ``app.js``, ``app.css``, ``page.html`` or ``plotly.min.js``."""
    if name == "plotly.min.js":
        return plotly_js_path().read_bytes()
    return (resources.files("presso.dashboards") / "static" / name).read_bytes()


def page_html(data: dict[str, Any] | None = None) -> str:
    """The page: with ``data`` (a report), one file with the data, scripts and style inline;
    without, the served page that loads its scripts and polls the server's API."""
    if data is None:
        slots = {
            "style": '<link rel="stylesheet" href="static/app.css">',
            "data": "",
            "scripts": '<script src="static/plotly.min.js"></script>\n'
            '<script src="static/app.js"></script>',
        }
    else:
        slots = {
            "style": f"<style>\n{asset('app.css').decode()}\n</style>",
            "data": f"<script>window.PRESSO_DATA = {_script_json(data)};</script>",
            "scripts": f"<script>{_inline_js(asset('plotly.min.js'))}</script>\n"
            f"<script>{_inline_js(asset('app.js'))}</script>",
        }
    return _SLOT.sub(lambda m: slots[m.group(1)], asset("page.html").decode())


def _script_json(data: dict[str, Any]) -> str:
    # "<" escaped: a run name or tag holding "</script>" cannot end the script element.
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _inline_js(code: bytes) -> str:
    # "</script" cannot appear inside an inline script; "<\/" means the same to JavaScript
    # wherever it can legally occur (strings, regular expressions, comments).
    return code.decode("utf-8").replace("</script", "<\\/script")
