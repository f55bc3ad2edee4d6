"""Pareto utilities: hand-computed fronts and volumes, Monte-Carlo and Optuna cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from presso.pareto import (
    crowding_distance,
    hypervolume,
    non_dominated,
    non_dominated_sort,
    reference_point,
)

STAIRS = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])


def brute_force_dominated(points: np.ndarray) -> np.ndarray:
    return np.array(
        [
            any((q <= p).all() and (q < p).any() for j, q in enumerate(points) if j != i)
            for i, p in enumerate(points)
        ]
    )


def monte_carlo_volume(points: np.ndarray, ref: np.ndarray, samples: int, seed: int) -> float:
    """The dominated volume of the box [min(points), ref] estimated by uniform sampling."""
    low = points.min(axis=0)
    draws = np.random.default_rng(seed).uniform(low, ref, size=(samples, len(ref)))
    hit = np.zeros(samples, dtype=bool)
    for p in points:
        hit |= (draws >= p).all(axis=1)
    return float(hit.mean() * np.prod(ref - low))


# ---------------------------------------------------------------- fronts


def test_non_dominated_keeps_duplicates_and_drops_dominated() -> None:
    points = np.vstack([STAIRS, [[3.0, 3.0], [2.0, 2.0]]])
    assert non_dominated(points).tolist() == [True, True, True, False, True]
    fronts = non_dominated_sort(points)
    assert [f.tolist() for f in fronts] == [[0, 1, 2, 4], [3]]


def test_sort_peels_nested_fronts() -> None:
    points = np.array([[0, 0], [1, 1], [2, 2], [0, 3], [3, 0], [2, 2]], dtype=float)
    assert [f.tolist() for f in non_dominated_sort(points)] == [[0], [1, 3, 4], [2, 5]]


def test_equal_in_one_objective_still_dominates() -> None:
    assert non_dominated([[1.0, 1.0], [1.0, 2.0]]).tolist() == [True, False]


def test_infinite_points_rank_last_and_nan_is_refused() -> None:
    points = np.array([[1.0, 2.0], [np.inf, np.inf], [np.inf, np.inf]])
    assert [f.tolist() for f in non_dominated_sort(points)] == [[0], [1, 2]]
    with pytest.raises(ValueError, match="NaN"):
        non_dominated([[np.nan, 1.0]])
    with pytest.raises(ValueError, match=r"\(n, m\)"):
        non_dominated([1.0, 2.0])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 3)), elements=st.integers(0, 4))
)
def test_fronts_match_the_definition(points: np.ndarray) -> None:
    assert (non_dominated(points) == ~brute_force_dominated(points)).all()
    fronts = non_dominated_sort(points)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(len(points)))
    for k in range(1, len(fronts)):  # every later point is dominated by some earlier-front point
        earlier = np.concatenate(fronts[:k])
        for i in fronts[k]:
            assert brute_force_dominated(np.vstack([points[earlier], points[i]]))[-1]


def test_crowding_distance_by_hand() -> None:
    assert crowding_distance(STAIRS).tolist() == [np.inf, 2.0, np.inf]
    four = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    # middle points: (3-0)/4 + (4-1)/4 and (4-1)/4 + (3-0)/4
    assert crowding_distance(four).tolist() == [np.inf, 1.5, 1.5, np.inf]
    assert np.isinf(crowding_distance([[1.0, 2.0], [2.0, 1.0]])).all()
    flat = crowding_distance([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    assert flat[1] == 1.0, "an objective with zero range adds nothing"


# ---------------------------------------------------------------- hypervolume


def test_hypervolume_2d_by_hand() -> None:
    assert hypervolume(STAIRS, [4.0, 4.0]) == 6.0  # 3·1 + 2·1 + 1·1
    assert hypervolume([[1.0, 1.0]], [3.0, 2.0]) == 2.0
    # on the reference in one objective: no volume
    assert hypervolume([[1.0, 1.0], [3.0, 0.5]], [3.0, 3.0]) == 4.0
    assert hypervolume([[5.0, 0.0]], [3.0, 3.0]) == 0.0
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


def test_hypervolume_3d_by_hand() -> None:
    assert hypervolume([[1.0, 1.0, 1.0]], [2.0, 2.0, 2.0]) == 1.0
    # three unit corners of a 2-cube: the cube less the unit cube no point dominates
    corners = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert hypervolume(corners, [2.0, 2.0, 2.0]) == 7.0
    # two boxes 2·2·1 and 1·1·2 overlapping in 1·1·1
    assert hypervolume([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], [2.0, 2.0, 2.0]) == 5.0


def test_hypervolume_1d_and_bad_reference() -> None:
    assert hypervolume([[2.0], [1.0]], [4.0]) == 3.0
    with pytest.raises(ValueError, match="reference"):
        hypervolume(STAIRS, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_matches_monte_carlo(m: int) -> None:
    rng = np.random.default_rng(m)
    # points near a front x + y (+ z) ≈ 1, plus some dominated ones
    raw = rng.dirichlet(np.ones(m), size=40) + rng.uniform(0, 0.1, size=(40, m))
    ref = np.ones(m) * 1.2
    exact = hypervolume(raw, ref)
    estimate = monte_carlo_volume(raw, ref, samples=200_000, seed=m)
    assert exact == pytest.approx(estimate, rel=0.01)


def test_hypervolume_ignores_duplicates_and_dominated_points() -> None:
    rng = np.random.default_rng(0)
    for m in (2, 3):
        points = rng.uniform(size=(30, m))
        ref = np.full(m, 1.1)
        front = points[non_dominated(points)]
        base = hypervolume(front, ref)
        assert hypervolume(points, ref) == pytest.approx(base, rel=1e-12)
        dominated = front + rng.uniform(0.0, 0.05, size=front.shape)
        more = np.vstack([front, front, dominated])
        assert hypervolume(more[rng.permutation(len(more))], ref) == pytest.approx(base, rel=1e-12)


def test_hypervolume_agrees_with_optuna() -> None:
    hv = pytest.importorskip("optuna._hypervolume")
    rng = np.random.default_rng(1)
    for m in (2, 3):
        points = rng.uniform(size=(200, m))
        ref = np.full(m, 1.0)
        expected = hv.compute_hypervolume(points, ref)
        assert hypervolume(points, ref) == pytest.approx(expected, rel=1e-9)


def test_reference_point() -> None:
    assert reference_point([[0.0, 0.0], [1.0, 2.0]]).tolist() == pytest.approx([1.1, 2.2])
    # zero range: the margin is taken of the value (or of 1)
    assert reference_point([[1.0, 5.0], [1.0, 3.0]]).tolist() == pytest.approx([1.1, 5.2])
    assert reference_point([[0.0, 1.0]], margin=0.5).tolist() == pytest.approx([0.5, 1.5])
    # failed candidates (inf) are left out
    assert reference_point([[0.0, 1.0], [np.inf, np.inf]]).tolist() == pytest.approx([0.1, 1.1])
    with pytest.raises(ValueError):
        reference_point([[np.inf, 1.0]])
