"""The per-unit sensitivity table: what it measures, that it is cached and resumable, and the
run that uses it (dp and EvoPress's default start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import Request
from presso.sensitivity import SensitivityTable

from .conftest import tiny_experiment


@pytest.fixture(scope="module")
def setup(presso_cache: Path) -> Setup:
    s = Setup(Experiment.model_validate(tiny_experiment()), cache_root=str(presso_cache))
    s.prepare()
    return s


def table(setup: Setup, root: Path, *, lowest: bool, tokens: int = 64) -> SensitivityTable:
    errors = setup._unit_errors(depth_ok=True) if lowest else None
    return SensitivityTable(root, setup.evaluator(), tokens=tokens, errors=errors)


def test_entries_are_lone_unit_fitness_increments(setup: Setup, tmp_path: Path) -> None:
    t = table(setup, tmp_path, lowest=False)
    rows = t.build()
    space, ev = setup.space, setup.evaluator()
    top = t.top_config()
    assert t.evaluations() == 1 + 3 * len(space)
    base = ev.evaluate(Request(top, tokens=64, sample_seed=0)).fitness
    d = len(space) // 2
    lone = top[:d] + (0,) + top[d + 1 :]
    assert rows[d][0] == pytest.approx(ev.evaluate(Request(lone, tokens=64)).fitness - base)
    assert all(row[-1] == 0.0 for row in rows)
    # Fewer bits cost more, unit by unit (2 bits against 4; a few units of the random tiny
    # model barely matter, and there noise decides).
    assert sum(row[0] > row[2] for row in rows) >= 0.75 * len(rows)


def test_lowest_measures_a_third_and_places_levels_by_output_error(
    setup: Setup, tmp_path: Path
) -> None:
    full = table(setup, tmp_path / "all", lowest=False).build()
    t = table(setup, tmp_path / "lowest", lowest=True)
    assert t.evaluations() == 1 + len(setup.space)
    rows = t.build()
    for exact, placed in zip(full, rows):
        assert placed[0] == pytest.approx(exact[0])  # measured
        assert placed[-1] == 0.0
        if placed[0] != 0.0:  # placed by the layer's error curve: a falling share of lowest
            shares = [p / placed[0] for p in placed]
            assert 1.0 >= shares[1] >= shares[2] >= 0.0


def test_cached_resumable_and_rebuilt_when_corrupt(setup: Setup, tmp_path: Path) -> None:
    t = table(setup, tmp_path, lowest=True)
    first = t.build()
    assert t.path.parent == tmp_path and t.path.is_file()
    calls = []
    again = table(setup, tmp_path, lowest=True)
    again._score = lambda config: calls.append(config) or 0.0  # type: ignore[method-assign]
    assert again.build() == first and not calls, "a complete table is read, not measured"
    # A build killed half-way: the stored entries are kept, only the rest is measured.
    stored = json.loads(t.path.read_text())
    names = list(stored["rows"])
    for name in names[: len(names) // 2]:
        del stored["rows"][name]
    t.path.write_text(json.dumps(stored))
    resumed = table(setup, tmp_path, lowest=True)
    measure = resumed._score
    resumed._score = lambda config: calls.append(config) or measure(config)  # type: ignore[method-assign]
    assert resumed.build() == first
    assert len(calls) == len(names) // 2
    # Garbage in the file: said, and rebuilt to the same table.
    t.path.write_text('{"inputs": 1, "rows": [')
    with pytest.warns(UserWarning, match="rebuilding"):
        assert table(setup, tmp_path, lowest=True).build() == first


def test_other_inputs_other_file(setup: Setup, tmp_path: Path) -> None:
    a = table(setup, tmp_path, lowest=True, tokens=64)
    b = table(setup, tmp_path, lowest=True, tokens=128)
    assert a.path != b.path


def test_search_runs_dp_and_starts_evopress_from_it(write_experiment, capsys) -> None:
    from presso.cli import main

    exp = tiny_experiment(
        baselines=["uniform", "uniform-fill", "dp"],
        search={"sensitivity": {"tokens": 64}},
    )
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dp" in out and "uniform-fill" in out
