"""The dashboard and the report over a store a real tiny search wrote.

In a real browser (headless Chromium from Debian, driven by Playwright; skipped where either
is missing): the pages load, the Pareto plot holds every stored evaluation, a click opens
that configuration, a running search updates the page without a reload, a busy, corrupt or
empty store is a message in the page, the export button gives `presso export`'s files, and
the report opens offline. Without a browser: the read-only data layer and the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from presso.cli import main
from presso.errors import PressoError
from presso.store import Record, ResultsStore

from .conftest import tiny_experiment
from .test_summary import BERT_COLUMNS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # generous: a loaded machine may take a few polls
POLL = "?poll=0.3"  # the page polls every 0.3 s instead of 2 s: the live tests take less time

# Plotted points of the run page's Pareto plot (the front line and the selection ring aside).
POINTS_JS = """() => { const gd = document.getElementById('pareto');
  if (!gd || !gd.data) return -1;
  return gd.data.filter(t => t.meta && t.meta.kind === 'points')
    .reduce((n, t) => n + t.x.length, 0); }"""
FRONT_JS = """() => document.getElementById('pareto').data
  .filter(t => t.meta && t.meta.kind === 'points' && t.meta.front)
  .reduce((n, t) => n + t.x.length, 0)"""


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    """A store holding run ``tiny``: EvoPress (two calibration sizes) and uniform 3-bit."""
    folder = tmp_path_factory.mktemp("dashboard")
    path = folder / "runs.db"
    exp_path = folder / "exp.yaml"
    exp_path.write_text(yaml.safe_dump({"store": str(path), **tiny_experiment()}))
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        assert main(["search", str(exp_path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (see .ci/install)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as err:  # a broken browser install is a skip, not a failure of presso
        playwright.stop()
        pytest.skip(f"chromium does not start: {str(err).splitlines()[0]}")
    yield chromium
    chromium.close()
    playwright.stop()


@contextlib.contextmanager
def serving(*stores: Path, busy_timeout_s: float = 5.0) -> Iterator[str]:
    from presso.dashboards._server import DashboardServer

    server = DashboardServer([str(s) for s in stores], port=0, busy_timeout_s=busy_timeout_s)
    server.start()
    try:
        yield server.url + POLL
    finally:
        server.close()


@contextlib.contextmanager
def page_at(browser: Any, url: str, **context: Any) -> Iterator[Any]:
    """A fresh page at ``url``; fails the test on any script error in the page."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **context)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    try:
        yield page
        assert not errors, errors
    finally:
        ctx.close()


def stored(store: Path, run: str = "tiny") -> list[Record]:
    s = ResultsStore(str(store))
    return s.records(s.open(run))


def wait_points(page: Any, n: int) -> None:
    page.wait_for_function(f"() => ({POINTS_JS})() === {n}", timeout=WAIT_MS)


def distinct_colours(browser: Any, png: bytes) -> int:
    """Distinct pixel colours of a PNG, decoded by the browser in a blank page."""
    page = browser.new_page()
    try:
        return page.evaluate(
            """async (b64) => {
              const img = new Image();
              img.src = 'data:image/png;base64,' + b64;
              await img.decode();
              const c = document.createElement('canvas');
              c.width = img.width; c.height = img.height;
              const ctx = c.getContext('2d');
              ctx.drawImage(img, 0, 0);
              const px = new Uint32Array(ctx.getImageData(0, 0, c.width, c.height).data.buffer);
              return new Set(px).size;
            }""",
            base64.b64encode(png).decode(),
        )
    finally:
        page.close()


def live_space(units: list[str]) -> Any:
    from presso.spaces import bits_space

    return bits_space([(u, (64, 64)) for u in units], [2, 3, 4, 8], 3.0)


def add_evaluations(
    results: ResultsStore, study: Any, space: Any, start: int, n: int, phase: str = "search"
) -> None:
    """``n`` evaluations as a search records them, with levels that vary from one to the next."""
    from presso.search._base import Request, Result

    for i in range(start, start + n):
        config = tuple((i + k) % 3 for k in range(len(space)))
        mean_bits = space.constraints[0].value(space, config)
        kl = 0.01 / (1 + i) + 0.001 * (3 - mean_bits)
        request = Request(config=config, tokens=64, sample_seed=0, tag=f"live/{i}")
        latency = {"latency_ms_predicted": 10 * mean_bits, "latency_ms_measured": 11 * mean_bits}
        metrics = {"kl": kl, "tokens": 64.0, "mean_bits": mean_bits, **latency}
        results.record(study, space, phase, i, 0, request, Result(fitness=kl, metrics=metrics))


# ---------------------------------------------------------------------- in the browser


def test_runs_page_and_pareto_plot(browser: Any, store: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x13\x37 not sqlite " * 4096)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    records = stored(store)
    with serving(store, corrupt, empty) as url, page_at(browser, url) as page:
        page.wait_for_selector('tr[data-run="tiny"]', timeout=WAIT_MS)
        text = page.inner_text("#view")
        assert "corrupt.db: not a readable results store" in text
        assert "empty.db: empty store, no runs yet" in text
        assert "Traceback" not in page.content()

        page.click("a.run-link")
        page.wait_for_function(f"() => ({POINTS_JS})() > 0", timeout=WAIT_MS)
        # Default axes: mean bits and calibration KL; every evaluation has both.
        plotted = [r for r in records if "kl" in r.metrics and "mean_bits" in r.metrics]
        assert len(plotted) == len(records) > 10
        assert page.evaluate(POINTS_JS) == len(plotted)
        from presso.pareto import non_dominated

        mask = non_dominated([[r.metrics["mean_bits"], r.metrics["kl"]] for r in plotted])
        assert page.evaluate(FRONT_JS) == int(mask.sum())

        png = page.screenshot(full_page=True)
        (tmp_path / "run.png").write_bytes(png)
        assert distinct_colours(browser, png) > 100  # plots, text, colours: not a blank page

        # Multi-stage selection: each calibration size alone (baselines score on the whole pool).
        sizes = sorted({r.tokens for r in records if r.tokens is not None})
        assert len(sizes) == 2
        page.select_option("#tokens", str(sizes[0]))
        wait_points(page, sum(r.tokens == sizes[0] for r in records))


def test_click_opens_the_configuration(browser: Any, store: Path) -> None:
    records = stored(store)
    units = ResultsStore(str(store)).open("tiny").user_attrs["units"]
    with serving(store) as url, page_at(browser, url + "#/run/0/tiny") as page:
        wait_points(page, len(records))
        # The point farthest from every other, so that the click cannot hit a neighbour.
        target = page.evaluate(
            """() => {
              const gd = document.getElementById('pareto');
              gd.scrollIntoView();
              const fl = gd._fullLayout, box = gd.getBoundingClientRect(), pts = [];
              for (const t of gd.data) {
                if (!t.meta || t.meta.kind !== 'points') continue;
                t.x.forEach((x, i) => pts.push({ key: t.customdata[i],
                  px: box.left + fl.xaxis._offset + fl.xaxis.d2p(x),
                  py: box.top + fl.yaxis._offset + fl.yaxis.d2p(t.y[i]) }));
              }
              let best = null, gap = -1;
              for (const p of pts) {
                const d = Math.min(...pts.filter(q => q !== p).map(q => Math.hypot(p.px - q.px, p.py - q.py)));
                if (d > gap) { gap = d; best = p; }
              }
              return { ...best, gap };
            }"""
        )
        assert target["gap"] > 10
        n = target["key"]
        page.mouse.move(target["px"], target["py"])
        page.wait_for_selector(".hoverlayer .hovertext", timeout=WAIT_MS)
        hover = page.text_content(".hoverlayer") or ""
        for fact in (records[n].tag, f"phase: {records[n].phase}", "mean bits: 3", "fitness: "):
            assert fact in hover
        # A whole-pool evaluation (a baseline: tokens None) shows the pool's size.
        tokens = records[n].tokens or int(records[n].metrics["tokens"])
        assert f"tokens: {tokens}" in hover
        page.mouse.click(target["px"], target["py"])
        page.wait_for_selector("#config-title", timeout=WAIT_MS)
        assert page.inner_text("#config-title").startswith(f"Evaluation #{n}:")
        assert f"sel={n}" in page.url
        bars = page.evaluate("document.getElementById('bars-bits').data[0].y")
        assert bars == records[n].levels and len(bars) == len(units) == 28
        # Heatmap: blocks as rows, q_proj ... down_proj as columns, in the store's unit order.
        heat = page.evaluate("document.getElementById('heatmap-bits').data[0]")
        assert heat["x"] == [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        assert [v for row in heat["customdata"] for v in row] == records[n].levels
        assert page.locator("#latency").count() == 0  # no latency metrics stored yet


def test_an_encoder_run_is_labelled_by_cosine_distance(
    browser: Any, tmp_path: Path, presso_cache: Path
) -> None:
    """A BERT encoder's fitness is the cosine distance of its embeddings, not KL: the runs
    page, the run's plots and its per-layer heatmap (three different ``dense`` layers per
    block) say so."""
    path = tmp_path / "enc.db"
    exp_path = tmp_path / "enc.yaml"
    exp = tiny_experiment(name="enc", model="tiny-bert")
    exp_path.write_text(yaml.safe_dump({"store": str(path), **exp}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", str(exp_path), "--quiet"]) == 0
    with serving(path) as url, page_at(browser, url) as page:
        page.wait_for_selector('tr[data-run="enc"]', timeout=WAIT_MS)
        row = page.inner_text('tr[data-run="enc"]')
        assert "search: cosine distance" in row and "KL" not in row

        page.click("a.run-link")
        page.wait_for_function(f"() => ({POINTS_JS})() > 0", timeout=WAIT_MS)
        page.wait_for_function(
            "() => { const gd = document.getElementById('convergence'); return gd && gd.layout; }",
            timeout=WAIT_MS,
        )
        title = page.evaluate("document.getElementById('convergence').layout.yaxis.title.text")
        assert title == "fitness (cosine distance, lower is better)"
        axis = page.evaluate("document.getElementById('pareto').layout.yaxis.title.text")
        assert "cosine distance" in axis and "KL" not in axis
        assert "KL" not in page.inner_text("#view")

        page.evaluate("location.hash = '#/run/0/enc?sel=0'")
        page.wait_for_selector("#config-title", timeout=WAIT_MS)
        heat = page.evaluate("document.getElementById('heatmap-bits').data[0].x")
        assert heat == BERT_COLUMNS


def test_running_search_updates_live(browser: Any, store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "live.db"
    shutil.copy(store, copy)
    results = ResultsStore(str(copy))
    attrs = results.open("tiny").user_attrs
    space = live_space(attrs["units"])
    with serving(copy) as url, page_at(browser, url) as page:
        page.wait_for_selector('tr[data-run="tiny"]', timeout=WAIT_MS)
        page.evaluate("window.__not_reloaded = true")
        study = results.create(
            "live", {**attrs["experiment"], "name": "live"}, space, ["heldout_kl"]
        )
        add_evaluations(results, study, space, 0, 3)
        page.wait_for_selector('tr[data-run="live"] .badge.running', timeout=WAIT_MS)

        page.click('tr[data-run="live"] a.run-link')
        wait_points(page, 3)
        add_evaluations(results, study, space, 3, 4)
        wait_points(page, 7)
        assert "export is available once the run has finished" in page.inner_text("#export")

        config = space.values(tuple(1 for _ in range(len(space))))
        candidate = {"strategy": "live", "levels": config, "mean_bits": 3.0}
        summary = {"run": "live", "candidates": {"search": {**candidate, "heldout": {"kl": 0.1}}}}
        results.set_summary(study, summary)
        page.wait_for_selector("#run-status .badge.finished", timeout=WAIT_MS)
        page.wait_for_selector("#export-button", timeout=WAIT_MS)

        # Latency metrics, once stored, get their section in the per-layer view.
        page.evaluate("location.hash = '#/run/0/live?sel=2'")
        page.wait_for_selector("#latency #latency-plot .main-svg", timeout=WAIT_MS)
        assert "Predicted vs measured latency" in page.inner_text("#latency")

        # Comparison: tick both runs on the runs page, overlay their fronts and convergence.
        page.click("#nav-runs")
        for run in ("tiny", "live"):
            page.check(f'tr[data-run="{run}"] input.pick')
        page.click("#compare-button")
        page.wait_for_function(
            """() => { const gd = document.getElementById('cmp-pareto');
              return gd && gd.data && gd.data.filter(t => t.meta.kind === 'front').length === 2; }""",
            timeout=WAIT_MS,
        )
        fronts = page.evaluate(
            "document.getElementById('cmp-pareto').data.filter(t => t.meta.kind === 'front')"
            ".map(t => t.meta.run)"
        )
        best = page.evaluate(
            "document.getElementById('cmp-convergence').data.map(t => [t.meta.run, t.y.length])"
        )
        assert sorted(fronts) == ["live", "tiny"]
        searched = sum(r.phase == "search" for r in stored(copy))
        assert sorted(best) == [["live", 7], ["tiny", searched]]
        assert page.evaluate("window.__not_reloaded") is True


def test_busy_store_is_a_message_then_recovers(browser: Any, store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "busy.db"
    shutil.copy(store, copy)
    n = len(stored(copy))
    with serving(copy, busy_timeout_s=0.3) as url, page_at(browser, url + "#/run/0/tiny") as page:
        wait_points(page, n)
        lock = sqlite3.connect(copy, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # what a writer holds while it commits, for longer
        try:
            page.wait_for_selector("#run-message .message.error", timeout=WAIT_MS)
            assert "busy (a search is writing to it)" in page.inner_text("#run-message")
            assert page.evaluate(POINTS_JS) == n  # what was shown stays
        finally:
            lock.execute("COMMIT")
            lock.close()
        page.wait_for_selector("#run-message .message", state="detached", timeout=WAIT_MS)


def test_export_button_gives_presso_exports_files(
    browser: Any, store: Path, tmp_path: Path
) -> None:
    expected = tmp_path / "expected.yaml"
    argv = ["export", "tiny", "--store", str(store), "--candidate", "baseline:uniform"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--out", str(expected)]) == 0
    with (
        serving(store) as url,
        page_at(browser, url + "#/run/0/tiny", accept_downloads=True) as page,
    ):
        page.wait_for_selector("#export-button", timeout=WAIT_MS)
        page.select_option("#export-candidate", "baseline:uniform")
        page.select_option("#export-file", "plan.yaml")
        with page.expect_download() as download:
            page.click("#export-button")
        got = Path(download.value.path()).read_text()
        assert download.value.suggested_filename == "tiny-baseline-uniform-plan.yaml"
        assert got == expected.read_text()


def test_report_opens_offline(
    browser: Any, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report.html"
    argv = ["report", "tiny", "--store", str(store), "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2  # the user's file is never silently overwritten
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    html = out.read_text()
    assert 'src="static/' not in html and 'href="static/' not in html  # all inline

    requests: list[str] = []

    def only_the_file(route: Any) -> None:
        requests.append(route.request.url)
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            route.abort()

    with page_at(browser, "about:blank", offline=True, accept_downloads=True) as page:
        page.route("**/*", only_the_file)
        page.goto(out.as_uri())
        wait_points(page, len(stored(store)))
        assert requests == [out.as_uri()]
        png = page.screenshot(full_page=True)
        (tmp_path / "report.png").write_bytes(png)
        assert distinct_colours(browser, png) > 100
        page.select_option("#export-file", "evopress.txt")
        with page.expect_download() as download:
            page.click("#export-button")
        text = Path(download.value.path()).read_text()
    capsys.readouterr()
    assert main(["export", "tiny", "--store", str(store), "--format", "evopress"]) == 0
    assert text == capsys.readouterr().out


# ---------------------------------------------------------------------- without a browser


HOSTILE = "<a href=x>y</a>"


def test_stored_names_are_text_in_the_plots(browser: Any, tmp_path: Path) -> None:
    # A run and a phase named with markup: Plotly renders its text as HTML-like markup, in
    # which an <a href> becomes a live link; the page must show the name as it is, as text.
    path = tmp_path / "runs.db"
    results = ResultsStore(str(path))
    space = live_space(["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"])
    study = results.create(HOSTILE, tiny_experiment(), space, ["heldout_kl"])
    add_evaluations(results, study, space, 0, 6, phase=HOSTILE)
    results.close()
    name = urllib.parse.quote(HOSTILE, safe="")
    links = "() => document.querySelectorAll('svg a').length"
    legend = "() => [...document.querySelectorAll('.legendtext')].map(t => t.textContent)"
    with serving(path) as url:
        with page_at(browser, f"{url}#/run/0/{name}") as page:
            wait_points(page, 6)
            assert page.evaluate(links) == 0
            assert HOSTILE in page.evaluate(legend)
            points = "document.getElementById('pareto').data.find(t => t.meta.kind === 'points')"
            hover = page.evaluate(f"() => {points}.hovertext[0]")
            assert "&lt;a href=x&gt;y&lt;/a&gt;" in hover and "<a" not in hover
        with page_at(browser, f"{url}#/compare?runs=0/{name}") as page:
            page.wait_for_function(f"() => ({legend})().length > 0", timeout=WAIT_MS)
            assert page.evaluate(links) == 0
            assert HOSTILE in page.evaluate(legend)


def diffusion_store(folder: Path, presso_cache: Path, **overrides: Any) -> Path:
    """A store holding run ``steps``: a tiny time-step search with DDIM and DPM-Solver."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torchmetrics")
    from .test_diffusion import tiny_steps_experiment

    path = folder / "runs.db"
    exp_path = folder / "exp.yaml"
    exp_path.write_text(yaml.safe_dump({"store": str(path), **tiny_steps_experiment(**overrides)}))
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        assert main(["search", str(exp_path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def steps_store(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    return diffusion_store(tmp_path_factory.mktemp("dashboard-steps"), presso_cache)


@pytest.fixture(scope="module")
def skips_store(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    """The same search with UNet blocks skipped per step (3 steps, at most 11 of 15 blocks)."""
    joint = {"kind": "joint", "steps": 3, "blocks": 11}
    return diffusion_store(tmp_path_factory.mktemp("dashboard-skips"), presso_cache, space=joint)


def expected_grid(store: Path, phase: str) -> bytes:
    """The PNG grid presso itself samples for a final candidate (seed 0, 32 images)."""
    from presso.diffusion._evaluator import schedule_of, skips_of, solver_of
    from presso.diffusion._grid import grid_png_bytes
    from presso.diffusion._model import load_diffusion
    from presso.diffusion._sample import sample, seeded_noise, trailing_grid
    from presso.plan import Plan

    attrs = ResultsStore(str(store)).open("steps").user_attrs
    levels = attrs["summary"]["candidates"][phase]["levels"]
    plan = Plan.from_levels(attrs["targets"], attrs["kinds"], levels)
    model = load_diffusion("tiny-ddpm")
    schedule = schedule_of(plan, trailing_grid(model.train_steps, 20))
    noise = seeded_noise(0, 32, model.shape)
    solver, skips = solver_of(plan), skips_of(plan)
    images = sample(model.unet, model.scheduler_config, schedule, noise, solver=solver, skips=skips)
    return grid_png_bytes(images)


@pytest.mark.parametrize("skips", [False, True])
def test_a_diffusion_candidate_shows_its_sample_grid(
    browser: Any, request: pytest.FixtureRequest, skips: bool
) -> None:
    steps_store = request.getfixturevalue("skips_store" if skips else "steps_store")
    shown = {}
    for phase in ("search", "baseline:dpm-solver"):
        sel = urllib.parse.quote(f"final:{phase}")
        with serving(steps_store) as url, page_at(browser, f"{url}#/run/0/steps?sel={sel}") as page:
            if skips:  # the per-step skipped blocks are drawn like any kind's levels
                page.wait_for_selector("#heatmap-skips .main-svg", timeout=WAIT_MS)
            page.wait_for_selector("#samples-grid", timeout=WAIT_MS)
            assert page.inner_text("#config-title").startswith(f"Final candidate: {phase}")
            b64 = page.evaluate(
                """async () => {
                  const img = document.getElementById('samples-grid');
                  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
                  let s = ''; for (const b of bytes) s += String.fromCharCode(b);
                  return btoa(s);
                }"""
            )
            shown[phase] = base64.b64decode(b64)
        assert shown[phase] == expected_grid(steps_store, phase)
    assert shown["search"] != shown["baseline:dpm-solver"]  # the selected candidate's own


def test_sample_grids_refuse_what_they_cannot_draw(store: Path, steps_store: Path) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    attrs = ResultsStore(str(steps_store)).open("steps").user_attrs
    levels = ",".join(str(v) for v in attrs["summary"]["candidates"]["search"]["levels"])
    with serving(store, steps_store) as url:
        base = url.removesuffix(POLL) + "api/samples?"
        for query, status, message in [
            (f"store=0&run=tiny&levels={levels}", 404, "not a diffusion run"),
            ("store=1&run=steps&levels=1,0", 400, "levels: 2 values, but the run has 21"),
            ("store=1&run=steps&levels=a,b", 400, "levels must be numbers"),
            ("store=1&run=steps&levels=", 400, "finite level values"),
            (f"store=1&run=steps&levels={'0,' * 20}1", 400, "samples no time step"),
        ]:
            code, body = _get(base + query)
            assert (code, message in body.get("error", "")) == (status, True), (query, body)
        request = urllib.request.Request(base + f"store=1&run=steps&levels={levels}")
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert reply.headers["Content-Type"] == "image/png"
            assert reply.read() == expected_grid(steps_store, "search")


def _get(url: str, host: str | None = None) -> tuple[int, dict]:
    """Status and JSON body of a GET (an error status too)."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def test_api_answers_with_http_status_and_checks_the_host(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x13\x37 not sqlite " * 4096)
    with serving(store, corrupt) as url:
        base = url.removesuffix(POLL)
        port = base.split("/")[2].rsplit(":", 1)[1]
        assert _get(base + "api/run?store=0&run=tiny&since=0")[0] == 200
        for query, status, message in [
            ("store=0&run=tiny&since=-999999", 400, "since must be a whole number"),
            ("store=0&run=tiny&since=abc", 400, "since must be a whole number"),
            ("store=0&run=tiny&since=99999999999", 400, "since must be a whole number"),
            ("store=0", 400, "missing parameter 'run'"),
            ("store=7&run=tiny", 404, "no store number 7"),
            ("store=0&run=nope", 404, "no run named 'nope'"),
            ("store=1&run=tiny", 503, "not a readable results store"),
        ]:
            code, body = _get(base + "api/run?" + query)
            assert (code, message in body["error"]) == (status, True), (query, body)
        code, body = _get(base + "api/export?store=0&run=tiny&candidate=nope&file=plan.json")
        assert code == 400 and "nope" in body["error"]
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert _get(base + "api/runs", host)[0] == 200, host
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example"):
            code, body = _get(base + "api/runs", host)
            assert code == 403 and "Host" in body["text"], host


def test_reader_matches_the_store_and_never_writes(store: Path, tmp_path: Path) -> None:
    from presso.dashboards._data import StoreReader, StoreUnavailable, check_store_exists

    before = (hashlib.sha256(store.read_bytes()).hexdigest(), store.stat().st_mtime_ns)
    reader = StoreReader(str(store))
    [run] = reader.runs()
    assert run["name"] == "tiny" and run["status"] == "finished"
    numbered, next_number = reader.records("tiny")
    assert [r for _, r in numbered] == stored(store)  # the same Records ResultsStore builds
    # The run's answers (one per candidate) follow its evaluations: numbered, never records.
    answers = len(reader.attrs("tiny")["summary"]["candidates"])
    assert len(numbered) == run["evaluations"] and next_number == len(numbered) + answers
    tail, same = reader.records("tiny", since=len(numbered) - 2)
    assert [n for n, _ in tail] == [len(numbered) - 2, len(numbered) - 1] and same == next_number
    assert reader.attrs("tiny")["summary"]["candidates"]
    after = (hashlib.sha256(store.read_bytes()).hexdigest(), store.stat().st_mtime_ns)
    assert after == before
    assert sorted(p.name for p in store.parent.iterdir() if p.name.startswith("runs.db")) == [
        "runs.db"
    ]  # no journal or WAL left beside it

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StoreUnavailable, match="empty store"):
        StoreReader(str(empty)).runs()
    assert empty.stat().st_size == 0  # no tables created on open
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(StoreUnavailable, match="corrupt"):
        StoreReader(str(garbage)).runs()
    with pytest.raises(StoreUnavailable, match="no run named 'nope'.*runs there: tiny"):
        reader.attrs("nope")
    with pytest.raises(PressoError, match="no results store there"):
        check_store_exists(str(tmp_path / "missing.db"))
    gone = tmp_path / "gone.db"
    with pytest.raises(StoreUnavailable, match="cannot open it"):
        StoreReader(str(gone)).runs()
    assert not gone.exists()  # read-only: SQLite may not create it

    # Characters that end a URL's path must still name the file (and create nothing else).
    odd = tmp_path / "a ?#% b" / "runs 1.db"
    odd.parent.mkdir()
    shutil.copy(store, odd)
    for spec in (str(odd), f"sqlite:///{odd}"):
        assert [r["name"] for r in StoreReader(spec).runs()] == ["tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a ?#% b", "empty.db", "garbage.db"]
    assert [p.name for p in odd.parent.iterdir()] == ["runs 1.db"]


def test_cli_dashboard_and_report_errors(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["dashboard", str(tmp_path / "missing.db")]) == 2
    assert "no results store there" in capsys.readouterr().err
    assert main(["report", "nope", "--store", str(store), "--out", str(tmp_path / "r.html")]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()

    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    from presso.dashboards import _page
    from presso.dashboards._server import DashboardServer

    with serving(store) as url:  # a taken port is a one-line message
        port = int(url.split("/")[2].rsplit(":", 1)[1])
        with pytest.raises(PressoError, match="cannot listen on 127.0.0.1"):
            DashboardServer([str(store)], port=port)
    assert main(["dashboard", str(store), "--port", "99999"]) == 2  # was an OverflowError
    assert "--port 99999 is no TCP port" in capsys.readouterr().err
    with monkeypatch.context() as mp:
        mp.setattr(_page.importlib.util, "find_spec", lambda name: None)
        assert (
            main(["report", "tiny", "--store", str(store), "--out", str(tmp_path / "r.html")]) == 2
        )
        assert "presso[dashboard]" in capsys.readouterr().err


def test_presso_dashboard_command_serves_and_stops_on_ctrl_c(store: Path) -> None:
    pytest.importorskip("plotly", reason="the dashboard extra: pip install 'presso[dashboard]'")
    code = "import sys, presso.cli; sys.exit(presso.cli.main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "dashboard", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A child inherits an ignored SIGINT; a user's shell never ignores it, so neither may we
        # (something earlier in a full test session can leave SIGINT ignored in this process).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("presso dashboard: http://127.0.0.1:"), line
        url = line.split()[2]
        with urllib.request.urlopen(url + "api/runs", timeout=10) as reply:
            runs = json.loads(reply.read())
        assert [r["name"] for r in runs["stores"][0]["runs"]] == ["tiny"]
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"static/plotly.min.js" in reply.read()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a loaded machine may take a while to shut down


def test_import_presso_cli_stays_light() -> None:
    code = (
        "import sys, presso, presso.cli\n"
        "heavy = [m for m in ('http.server', 'plotly', 'presso.dashboards._server') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_a_structured_run_shows_heads_and_widths_kept(
    browser: Any, tmp_path: Path, presso_cache: Path, model: str
) -> None:
    """A structured configuration's heatmap names what each attention and FFN keeps (heads,
    KV groups under GQA, FFN channels out of the model's), for a causal LM and an encoder."""
    from presso.models import load_model
    from presso.structures import model_structures

    path = tmp_path / "s.db"
    exp_path = tmp_path / "s.yaml"
    exp = tiny_experiment(
        name="st",
        model=model,
        structured={"levels": [100, 75, 50, 25], "calibration": 4},
        space={"kind": "structured", "kept_params": 60},
    )
    exp_path.write_text(yaml.safe_dump({"store": str(path), **exp}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", str(exp_path), "--quiet"]) == 0
    records = stored(path, "st")
    n = max(range(len(records)), key=lambda i: len(set(records[i].levels)))  # the most mixed
    structures = {s.consumer: s for s in model_structures(load_model(model))}
    targets = ResultsStore(str(path)).open("st").user_attrs["targets"]
    expected = [structures[t].describe(v) for t, v in zip(targets, records[n].levels)]
    assert all("/" in e for e in expected) and len(set(expected)) > 1  # counts, not percents
    with serving(path) as url, page_at(browser, url + f"#/run/0/st?sel={n}") as page:
        page.wait_for_selector("#config-title", timeout=WAIT_MS)
        heat = page.evaluate("document.getElementById('heatmap-structured').data[0]")
        cells = [t for row in heat["text"] for t in row if t]
        assert sorted(cells) == sorted(expected)
