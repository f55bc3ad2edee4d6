"""Convergence benchmarks in the dashboard (`presso dashboard --curves FILE`): the reports
experiments/benchmarks/convergence.py writes, drawn beside the runs, live while one is written,
with the evaluations each curve needed to come within 1% of the longest run's final value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from presso.cli import main
from presso.dashboards._curves import curves_json, load_curve
from presso.errors import PressoError

from .test_dashboard import WAIT_MS, browser, page_at, store  # noqa: F401 (fixtures)

BENCHMARKS = Path(__file__).parents[1] / "experiments" / "benchmarks"
REPORTS = ["convergence-default.json", "convergence-plain.json"]

TRACES_JS = """() => { const gd = document.getElementById('bench-convergence');
  return gd && gd.data ? gd.data.map(t => [t.name, t.x.length]) : null; }"""


def reports(tmp_path: Path) -> list[Path]:
    """Copies of the committed reports (a benchmark may be rewriting the originals)."""
    out = []
    for name in REPORTS:
        shutil.copy(BENCHMARKS / name, tmp_path / name)
        out.append(tmp_path / name)
    return out


def within(curve: dict[str, Any], target: float) -> int | None:
    """Evaluations (table included) at which a curve first came within 1% of ``target``."""
    for p in curve["points"]:
        if p["value"] <= 1.01 * target:
            return curve["table_evaluations"] + p["evaluations"]
    return None


def test_committed_reports_load_with_their_references() -> None:
    for name in REPORTS:
        raw = json.loads((BENCHMARKS / name).read_text())
        curve = load_curve(str(BENCHMARKS / name))
        assert curve["metric"] == "ppl"
        assert [p["value"] for p in curve["points"]] == [p["ppl"] for p in raw["curve"]]
        assert curve["table_evaluations"] == raw["table_evaluations"]
        assert curve["references"]["uniform"] == raw["uniform_heldout"]["ppl"]


def test_bad_reports_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"label": "x", "curve": [{"evaluations": 11}]}')
    with pytest.raises(PressoError, match=r"bad.json: curve\[0\] has no number 'ppl'"):
        load_curve(str(bad))
    (tmp_path / "runs.json").write_text('{"runs": []}')
    with pytest.raises(PressoError, match="no 'curve' list"):
        load_curve(str(tmp_path / "runs.json"))
    (tmp_path / "torn.json").write_text('{"curve": [')
    with pytest.raises(PressoError, match="torn.json: not a readable convergence report"):
        load_curve(str(tmp_path / "torn.json"))
    # A report that breaks while served is an error in its row, not a failed page.
    assert curves_json([str(bad)]) == [
        {"file": str(bad), "error": f"{bad}: curve[0] has no number 'ppl'"}
    ]
    # From the CLI: exit 2, one line naming the file, nothing served.
    assert main(["dashboard", "--curves", str(tmp_path / "missing.json"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "missing.json: no such file" in err and "Traceback" not in err


def test_curves_beside_the_runs_live(
    browser: Any,  # noqa: F811
    store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    from presso.dashboards._server import DashboardServer

    files = reports(tmp_path)
    curves = [load_curve(str(f)) for f in files]
    server = DashboardServer([str(store)], curves=[str(f) for f in files], port=0).start()
    try:
        with page_at(browser, server.url + "?poll=0.3") as page:
            page.wait_for_selector("#curves-card tbody tr", timeout=WAIT_MS)
            page.wait_for_function(f"() => ({TRACES_JS})() !== null", timeout=WAIT_MS)
            traces = page.evaluate(TRACES_JS)
            # One line per report, as many points as its curve, then the references.
            for curve, (name, n) in zip(curves, traces):
                assert name.startswith(curve["label"]) and n == len(curve["points"])
            assert any(name.startswith("uniform: ") for name, _ in traces[len(curves) :])
            assert page.locator('tr[data-run="tiny"]').count() == 1  # the runs are still there

            # Q* is the longest run's final value; each row says when its curve came within 1%.
            longest = max(
                curves, key=lambda c: c["table_evaluations"] + c["points"][-1]["evaluations"]
            )
            q = longest["points"][-1]["value"]
            rows = page.locator("#curves-card tbody tr")
            for i, curve in enumerate(curves):
                cells = rows.nth(i).locator("td").all_inner_texts()
                hit = within(curve, q)
                assert cells[0] == curve["label"]
                assert cells[-1] == (str(hit) if hit is not None else "not yet")

            # A benchmark still running rewrites its report: the page follows without a reload.
            raw = json.loads(files[0].read_text())
            last = raw["curve"][-1]
            raw["curve"].append({**last, "evaluations": last["evaluations"] + 11, "ppl": 40.0})
            files[0].write_text(json.dumps(raw))
            n = len(raw["curve"])
            page.wait_for_function(f"() => ({TRACES_JS})()[0][1] === {n}", timeout=WAIT_MS)
            assert "Traceback" not in page.content()
    finally:
        server.close()
