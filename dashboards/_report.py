"""``presso report``: one run's dashboard as a single self-contained HTML file.

The run's data, the page's script and style and Plotly.js are inlined: the file opens from a
disk, an e-mail or an archive without a server or a network.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Any

from presso.dashboards import _data, _page
from presso.errors import PressoError
from presso.paths import atomic_write_text
from presso.store import check_store


def default_out(run: str) -> Path:
    """``RUN-report.html`` in the current folder (unsafe characters of the name replaced)."""
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "-", run) + "-report.html")


def report_data(store: str, run: str) -> dict[str, Any]:
    """What the page shows, for one run: the runs row, the run, its export files."""
    check_store(store)  # a report of a missing, empty or foreign store is one line, not a page
    reader = _data.StoreReader(store)
    attrs = reader.attrs(run)
    runs = [r for r in reader.runs() if r["name"] == run]
    return {
        "generated": datetime.datetime.now().isoformat(timespec="seconds").replace("T", " "),
        "runs": {"stores": [{"id": 0, "label": store, "runs": runs, "error": None}]},
        "run": {"store": 0, **_data.report_run_json(reader, run)},
        "exports": {
            phase: {
                choice: {"name": _data.export_filename(run, phase, choice), "text": text}
                for choice, text in files.items()
            }
            for phase, files in _data.export_files(attrs).items()
        },
    }


def write_report(run: str, *, store: str, out: Path | None = None, force: bool = False) -> Path:
    """Write the report of ``run`` to ``out`` (atomically; an existing file only with ``force``)."""
    _page.plotly_js_path()  # a missing plotly is said before the store is read
    out = Path(out) if out is not None else default_out(run)
    if out.is_dir():
        raise PressoError(f"{out} is a folder; give --out a file name such as {default_out(run)}")
    html = _page.page_html(_data.json_safe(report_data(store, run)))
    if out.exists() and not force:
        raise PressoError(f"{out} exists; choose another --out or add --force to overwrite it")
    atomic_write_text(out, html)
    _readable(out)
    return out


def _readable(path: Path) -> None:
    # The atomic write's temporary file is private (0600); a report is meant to be opened and
    # shared like any file the user creates, so it gets the usual permissions (umask applied).
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
