"""`presso sweep`: one base experiment, many runs into one store — validated like experiment
files, the same runs `presso search` makes, resumable after a kill, concurrent on Ray, shown
by `presso show SWEEP` and overlaid (with their joint front) in the dashboard."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from presso.cli import main
from presso.errors import PressoError
from presso.store import ResultsStore
from presso.sweep import load_sweep

from .conftest import tiny_experiment
from .test_dashboard import WAIT_MS, browser, page_at  # noqa: F401 (fixtures)

EXAMPLE = Path(__file__).parents[1] / "experiments" / "smollm2-bits-sweep.yaml"


def write(tmp_path: Path, sweep: str, **base: Any) -> Path:
    exp = {"store": str(tmp_path / "runs.db"), **tiny_experiment(**base)}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    path = tmp_path / "sweep.yaml"
    path.write_text(sweep)
    return path


GRID = """name: sw
experiment: base.yaml
grid:
  space.mean_bits: [2.5, 3.0]
"""


def records(store: Path, run: str) -> list[tuple]:
    s = ResultsStore(str(store))
    return [(r.phase, r.step, r.index, tuple(r.levels), r.fitness) for r in s.records(s.open(run))]


def test_example_sweep_makes_eight_runs() -> None:
    sweep = load_sweep(EXAMPLE)
    assert len(sweep.runs) == 8 and len({r.name for r in sweep.runs}) == 8
    assert sorted({r.experiment.space.mean_bits for r in sweep.runs}) == [2.5, 3.0, 3.5, 4.0]
    starts = {r.experiment.search.options["start"] for r in sweep.runs}
    assert starts == {"dp", "uniform"}
    assert all(Path(r.experiment.store).name == "presso.db" for r in sweep.runs)


def test_paths_are_relative_to_the_file_that_gives_them(tmp_path: Path) -> None:
    """A base in another folder names its corpus relative to itself; a run's corpus set by the
    sweep is relative to the sweep file."""
    base_dir, sweep_dir = tmp_path / "experiments" / "base", tmp_path / "sweeps"
    base_dir.mkdir(parents=True)
    sweep_dir.mkdir()
    words = "the quick brown fox jumps over the lazy dog. " * 50
    (base_dir / "mine.txt").write_text(words)
    (sweep_dir / "theirs.txt").write_text(words)
    exp = tiny_experiment()
    exp["data"]["corpus"] = "mine.txt"
    (base_dir / "base.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    sweep = sweep_dir / "sweep.yaml"
    sweep.write_text(
        "name: sw\nexperiment: ../experiments/base/base.yaml\n"
        "runs:\n  - {space.mean_bits: 2.5}\n  - {data.corpus: theirs.txt}\n"
    )
    first, second = load_sweep(sweep).runs
    assert Path(first.experiment.data.corpus) == (base_dir / "mine.txt").resolve()
    assert Path(second.experiment.data.corpus) == (sweep_dir / "theirs.txt").resolve()
    # Where the sweep's own path is wrong, it is the sweep file's line that says so.
    sweep.write_text(sweep.read_text().replace("theirs.txt", "mine.txt"))
    with pytest.raises(PressoError, match=r"sweep.yaml:5: data.corpus: .*mine.txt"):
        load_sweep(sweep)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (GRID + "budget: 3\n", "sweep.yaml:5: budget: unknown key"),
        (GRID.replace("[2.5, 3.0]", "2.5"), "sweep.yaml:4: grid.space.mean_bits: a non-empty list"),
        (GRID + "  store: [a.db]\n", "sweep.yaml:5: store: a sweep sets each run's store itself"),
        (
            GRID.replace("[2.5, 3.0]", "[2.5, many]"),
            "sweep.yaml:4: space.mean_bits: Input should be a valid number",
        ),
        (
            GRID + "  space.mean_bitz: [3]\n",
            "sweep.yaml:5: space.mean_bitz: unknown key; remove it or fix its spelling",
        ),
        (GRID + "  data.seq_len.x: [1]\n", "data.seq_len is not a section of the experiment"),
        (GRID.replace("[2.5, 3.0]", "[3.0, 3.0]"), "the same run twice"),
        (GRID.replace("base.yaml", "nope.yaml"), "nope.yaml: no such experiment file"),
        ("name: sw\nexperiment: base.yaml\n", "no grid and no runs"),
        ("grid: {space.mean_bits: [3]}\n", "sweep.yaml:1: experiment: required"),
        ("- a\n- b\n", "a sweep file is a YAML mapping"),
        (GRID + "runs: [3]\n", "sweep.yaml:5: runs[0]: a mapping FIELD: VALUE"),
    ],
)
def test_mistakes_are_one_line_and_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, error: str
) -> None:
    path = write(tmp_path, text)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert error in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs.db").exists()


def test_a_sweep_runs_what_search_would_and_shows_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write(tmp_path, GRID)
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    store = tmp_path / "runs.db"
    names = ["sw.mean_bits=2.5", "sw.mean_bits=3.0"]
    assert [r["name"] for r in ResultsStore(str(store)).runs()] == names
    assert "sweep sw: 2 runs" in out

    # The run at 3.0 is the base experiment itself, run by `presso search`.
    assert main(["search", str(tmp_path / "base.yaml"), "--quiet", "--name", "alone"]) == 0
    assert records(store, "sw.mean_bits=3.0") == records(store, "alone")
    capsys.readouterr()

    assert main(["show", "sw", "--store", str(store)]) == 0
    table = capsys.readouterr().out
    for name in names:
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert "finished" in row and "uniform" in row
    # Run again without --resume: refused, nothing changed.
    before = records(store, "sw.mean_bits=2.5")
    assert main(["sweep", str(path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert records(store, "sw.mean_bits=2.5") == before


def test_resume_after_kill_keeps_finished_runs(tmp_path: Path) -> None:
    base = {
        "search": {"options": {"generations": 6, "offspring": 4, "stages": [[128, 2], [256, 1]]}}
    }
    path = write(tmp_path, GRID, **base)
    store = tmp_path / "runs.db"
    cmd = [sys.executable, "-m", "presso.cli", "sweep", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            if len(records(store, "sw.mean_bits=3.0")) >= 8:
                break
        except Exception:  # the second run does not exist yet
            continue
    assert proc.poll() is None, proc.stderr.read().decode()  # kill it inside the second run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = records(store, "sw.mean_bits=2.5")
    cut = records(store, "sw.mean_bits=3.0")
    assert ResultsStore(str(store)).open("sw.mean_bits=2.5").user_attrs["status"] == "finished"

    assert main(["sweep", str(path), "--quiet", "--resume"]) == 0
    assert records(store, "sw.mean_bits=2.5") == first  # finished: not run again
    after = records(store, "sw.mean_bits=3.0")
    assert set(cut) <= set(after) and len({r[:3] for r in after}) == len(after)

    # The same as a sweep never cut off.
    (tmp_path / "sweep.yaml").write_text(GRID.replace("name: sw", "name: straight"))
    assert main(["sweep", str(path), "--quiet"]) == 0
    assert after == records(store, "straight.mean_bits=3.0")


def test_ray_runs_the_sweep_concurrently_with_the_same_results(
    tmp_path: Path, ray_session: Any
) -> None:
    path = write(tmp_path, GRID + "  runner: [{kind: ray, workers: 2}]\n")
    assert main(["sweep", str(path), "--quiet"]) == 0
    store = tmp_path / "runs.db"
    local = tmp_path / "local"
    local.mkdir()
    lpath = write(local, GRID)
    assert main(["sweep", str(lpath), "--quiet"]) == 0
    for run in ("sw.mean_bits=2.5", "sw.mean_bits=3.0"):
        assert records(store, run) == records(local / "runs.db", run)
    # The two ran at once: each started before the other finished.
    s = ResultsStore(str(store))
    spans = []
    for run in ("sw.mean_bits=2.5", "sw.mean_bits=3.0"):
        trials = s.open(run).trials
        spans.append((min(t.datetime_start for t in trials), max(t.datetime_start for t in trials)))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]


def test_dashboard_opens_a_sweep_with_its_joint_front(
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    from presso.dashboards._server import DashboardServer

    path = write(tmp_path, GRID)
    assert main(["sweep", str(path), "--quiet"]) == 0
    server = DashboardServer([str(tmp_path / "runs.db")], port=0).start()
    try:
        with page_at(browser, server.url + "?poll=0.3") as page:
            page.wait_for_selector("a.sweep-link", timeout=WAIT_MS)
            assert page.locator("a.sweep-link").count() == 2
            page.locator("a.sweep-link").first.click()
            joint = """() => { const gd = document.getElementById('cmp-pareto');
              if (!gd || !gd.data) return null;
              return gd.data.filter(t => t.meta && (t.meta.kind === 'front' || t.meta.kind === 'joint'))
                .map(t => [t.meta.kind, t.x.length]); }"""
            page.wait_for_function(
                f"() => {{ const j = ({joint})(); return j && j.some(t => t[0] === 'joint'); }}",
                timeout=WAIT_MS,
            )
            traces = page.evaluate(joint)
            fronts = [n for kind, n in traces if kind == "front"]
            (points,) = [n for kind, n in traces if kind == "joint"]
            assert len(fronts) == 2 and 1 <= points <= sum(fronts)
    finally:
        server.close()
