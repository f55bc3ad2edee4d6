"""Reading a large store: `presso runs` and `presso show` count in SQL and give what Optuna's
own (slow: every trial loaded) answers give; the dashboard sends a run's evaluations in pages
and the page gathers all of them. The timings at 100,000 evaluations are in
experiments/benchmarks/store_load.py (figures, not assertions)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

from presso.dashboards import _data
from presso.store import ResultsStore

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


def test_runs_and_overview_agree_with_optuna_and_the_records(big: Path) -> None:
    import optuna

    store = ResultsStore(str(big), read_only=True)
    (run,) = store.runs()
    (summary,) = optuna.get_all_study_summaries(store.storage, include_best_trial=False)
    assert run["name"] == summary.study_name == "big" and run["trials"] == summary.n_trials == 240
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
    """The same SQL counts on a real PostgreSQL server (CASE, CAST, SUM as Decimal there)."""
    import optuna

    url = fresh_database(server, "load")
    _benchmark().build_store(url, candidates=30, seed_trials=30, units=14)
    store = ResultsStore(url, read_only=True)
    (run,) = store.runs()
    (summary,) = optuna.get_all_study_summaries(store.storage, include_best_trial=False)
    assert run["trials"] == summary.n_trials == 30
    assert run["started"] == summary.datetime_start.isoformat(timespec="seconds")
    records = store.records(store.open("big"))
    evaluations, failed, best = store.overview("big")
    assert (evaluations, failed) == (30, sum(r.error is not None for r in records)) == (30, 1)
    assert best is not None and best.fitness == min(r.fitness for r in records if r.fitness)
    store.close()
