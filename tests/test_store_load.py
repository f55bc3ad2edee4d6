"""Reading a large store: `presso runs` and `presso show` count in SQL and give what Optuna's
own (slow: every trial loaded) answers give; the dashboard sends a run's evaluations in pages
and the page gathers all of them. The timings at 100,000 evaluations are in
experiments/benchmarks/store_load.py (figures, not assertions)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from presso.dashboards import _data
from presso.evaluation import Request
from presso.pareto import reference_point
from presso.replay import failures, resume_state
from presso.store import Record, ResultsStore

from .test_dashboard import POINTS_JS, WAIT_MS, browser, page_at, serving  # noqa: F401
from .test_postgres import fresh_database, server  # noqa: F401

BENCHMARK = Path(__file__).parents[1] / "experiments" / "benchmarks" / "store_load.py"


def _benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("store_load", BENCHMARK)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's store, small: 60 evaluations recorded through the store API (failures
    among them), copied to 240 in SQL."""
    path = tmp_path_factory.mktemp("load") / "big.db"
    built = _benchmark().build_store(path, candidates=240, seed_trials=60, units=14)
    assert built["copied_in_sql"] == 180
    return path


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 evaluations (50 recorded, copied in SQL as later steps of the run: each one its
    own step and index, as a resumed run would find them)."""
    path = tmp_path_factory.mktemp("load") / "large.db"
    built = _benchmark().build_store(path, candidates=LARGE, seed_trials=50, units=14)
    assert built["copied_in_sql"] == LARGE - 50
    return path


LARGE = 20_000


def _pairs(records: list[Record], space: Any) -> dict[tuple[str, int, int], tuple]:
    """What a resumed run should replay, from every record at once (the later record of an
    evaluation wins; failures with an error are evaluated again)."""
    latest = {(r.phase, r.step, r.index): r for r in records}
    return {
        key: (
            Request(
                space.from_dict(dict(zip(space.names, r.levels))), r.tokens, r.sample_seed, r.tag
            ),
            r.fitness,
            r.metrics,
        )
        for key, r in latest.items()
        if r.error is None
    }


def _space() -> Any:
    return _benchmark().smollm2_space(14)


def test_resume_replays_what_the_records_say_a_chunk_at_a_time(big: Path) -> None:
    space = _space()
    store = ResultsStore(str(big), read_only=True)
    every = [r for _, r in _data.StoreReader(str(big)).records("big")[0]]
    replay, retried = resume_state(store, "big", space, chunk=7)
    got = {
        (phase, *key): (request, result.fitness, result.metrics)
        for phase, stored in replay.items()
        for key, (request, result) in stored.items()
    }
    assert got == _pairs(every, space)
    latest = {(r.phase, r.step, r.index): r for r in every}
    assert retried == sum(r.error is not None for r in latest.values()) > 0
    assert replay["search"].most_held <= 7


def test_resuming_a_large_run_holds_one_chunk(large: Path) -> None:
    """20,000 stored evaluations: the runner asks them step by step, and each record is read
    once, at most a chunk of them held; the evaluation list holds no levels."""
    space = _benchmark().smollm2_space(14)
    store = ResultsStore(str(large), read_only=True)
    replay, retried = resume_state(store, "big", space, chunk=500)
    search = replay["search"]
    assert len(search) + retried == LARGE  # every copy its own (step, index)
    for step, index in search:  # the order `drive` asks in
        request, result = search[(step, index)]
        assert len(request.config) == 14 and result.error is None
    assert search.read == len(search) and search.most_held <= 500
    assert all(not hasattr(e, "levels") for e in store.evaluations("big")[:1])


def test_the_front_of_a_run_read_in_chunks(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's Pareto front, read a few records at a time and pruned as it goes, is the
    front of every record at once (a configuration counted once, at its first evaluation)."""
    from presso import run as run_module
    from presso.pareto import non_dominated

    space = _benchmark().smollm2_space(14)
    store = ResultsStore(str(big), read_only=True)
    monkeypatch.setattr(run_module, "CHUNK", 4)  # pruned every 8 points
    objectives = ["kl", "mean_bits"]
    evaluations = store.evaluations("big")
    front = run_module._pareto(store, evaluations, objectives, space, None)

    first: dict[tuple, list[float]] = {}
    for _, r in _data.StoreReader(str(big)).records("big")[0]:
        if r.phase == "search" and r.fitness is not None:
            first.setdefault(tuple(r.levels), [r.metrics["kl"], r.metrics["mean_bits"]])
    points = np.asarray(list(first.values()))
    mask = non_dominated(points)
    expected = sorted((tuple(points[i]), list(lv)) for i, lv in enumerate(first) if mask[i])
    assert [tuple(p) for p in front["points"]] == [p for p, _ in expected]
    assert front["levels"] == [lv for _, lv in expected]
    assert front["reference"] == pytest.approx(list(reference_point(points)))
    assert failures(store, evaluations)["failed"] == store.overview("big")[1]


def test_a_report_of_a_large_run_holds_a_sample_with_every_new_best(
    large: Path, tmp_path: Path
) -> None:
    """The report's evaluations are chosen by the database: about the limit, every one that set
    a new best of its phase and calibration size among them, and the run's true counts."""
    reader = _data.StoreReader(str(large))
    every = [(n, r) for n, r in reader.records("big")[0]]
    best: dict[tuple, float] = {}
    setters = set()
    for n, r in every:
        key = (r.phase, r.tokens)
        if r.fitness is not None and r.fitness < best.get(key, math.inf):
            best[key] = r.fitness
            setters.add(n)
    run = _data.report_run_json(reader, "big", limit=400)
    shown = {r["n"] for r in run["records"]}
    assert setters <= shown and len(shown) <= 400 + len(setters)
    failed = sum(r.fitness is None for _, r in every)
    assert run["sample"] == {"evaluations": LARGE, "failed": failed, "shown": len(shown)}
    # A run under the limit is shown whole.
    whole = _data.report_run_json(reader, "big", limit=LARGE)
    assert [r["n"] for r in whole["records"]] == [n for n, _ in every]

    from presso.dashboards._report import write_report

    out = write_report("big", store=str(large), out=tmp_path / "large.html")
    assert f'"evaluations":{LARGE}' in out.read_text()


def test_runs_and_overview_agree_with_optuna_and_the_records(big: Path) -> None:
    import optuna

    store = ResultsStore(str(big), read_only=True)
    (run,) = store.runs()
    (summary,) = optuna.get_all_study_summaries(store.storage, include_best_trial=False)
    assert (
        run["name"] == summary.study_name == "big" and run["evaluations"] == summary.n_trials == 240
    )
    assert run["started"] == summary.datetime_start.isoformat(timespec="seconds")
    assert run["status"] == "running" and run["model"] == "smollm2-135m"

    records = store.records(store.open("big"))
    evaluations, failed, best = store.overview("big")
    assert evaluations == len(records) == 240
    assert failed == sum(r.error is not None for r in records) > 0
    finite = [r.fitness for r in records if r.fitness is not None and math.isfinite(r.fitness)]
    assert best is not None and best.fitness == min(finite)


def test_overview_of_a_run_without_evaluations(tmp_path: Path) -> None:
    from presso.spaces._base import SearchSpace, unit_dims

    store = ResultsStore(str(tmp_path / "runs.db"))
    space = SearchSpace(unit_dims([("a", (4, 4))], [2, 4], kind="bits"))
    store.create("empty", {"model": "m"}, space, ["heldout_kl"])
    assert store.overview("empty") == (0, 0, None)


def test_dashboard_pages_cover_the_run(big: Path) -> None:
    reader = _data.StoreReader(str(big))
    whole, next_number = reader.records("big")
    pages, since = [], 0
    while True:
        out, since, more = reader.page("big", since, limit=70)
        pages.extend(out)
        assert len(out) <= 70
        if not more:
            break
    assert [n for n, _ in pages] == [n for n, _ in whole] and since == next_number == 240
    assert [r.levels for _, r in pages] == [r.levels for _, r in whole]


def test_the_page_gathers_every_page(
    browser: Any,  # noqa: F811
    big: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With pages of 50, the run's page still plots all 240 evaluations (minus the failed)."""
    monkeypatch.setattr(_data, "PAGE", 50)
    store = ResultsStore(str(big), read_only=True)
    ok = [r for r in store.records(store.open("big")) if r.fitness is not None]
    with serving(big) as url, page_at(browser, url) as page:
        page.wait_for_selector('tr[data-run="big"]', timeout=WAIT_MS)
        page.click("a.run-link")
        page.wait_for_function(f"() => ({POINTS_JS})() === {len(ok)}", timeout=WAIT_MS)


def test_runs_and_overview_on_postgres(server: str) -> None:  # noqa: F811
    """The same SQL on a real PostgreSQL server (CASE, CAST, SUM as Decimal, window functions,
    a server-side cursor): counts, the resume's chunks, the report's sample."""
    import optuna

    url = fresh_database(server, "load")
    _benchmark().build_store(url, candidates=60, seed_trials=30, units=14)
    reader = _data.StoreReader(url)
    every = [r for _, r in reader.records("big")[0]]
    replay, retried = resume_state(ResultsStore(url, read_only=True), "big", _space(), chunk=8)
    got = {
        (phase, *key): (request, result.fitness, result.metrics)
        for phase, stored in replay.items()
        for key, (request, result) in stored.items()
    }
    assert got == _pairs(every, _space()) and retried == 2
    sample = _data.report_run_json(reader, "big", limit=10)
    assert sample["sample"] == {"evaluations": 60, "failed": 2, "shown": len(sample["records"])}
    assert sample["records"][0]["n"] == 0 and len(sample["records"]) < 60
    store = ResultsStore(url)
    assert not store.forget_if_empty("big")  # it holds evaluations: kept
    answer = {"candidate": "search", "levels": every[0].levels, "values": [0.5]}
    store.add_answers(store.open("big"), _space(), [answer, answer])  # stored once
    assert store.runs()[0]["evaluations"] == 60 and store._candidates("big") == ["search"]
    store.close()

    url = fresh_database(server, "load30")
    _benchmark().build_store(url, candidates=30, seed_trials=30, units=14)
    store = ResultsStore(url, read_only=True)
    (run,) = store.runs()
    (summary,) = optuna.get_all_study_summaries(store.storage, include_best_trial=False)
    assert run["evaluations"] == summary.n_trials == 30
    assert run["started"] == summary.datetime_start.isoformat(timespec="seconds")
    records = store.records(store.open("big"))
    evaluations, failed, best = store.overview("big")
    assert (evaluations, failed) == (30, sum(r.error is not None for r in records)) == (30, 1)
    assert best is not None and best.fitness == min(r.fitness for r in records if r.fitness)
    store.close()
