"""Pareto utilities over objective vectors, every objective minimised (pure NumPy).

``points`` is an ``(n, m)`` array: n candidates, m objectives. A point dominates another when
it is no worse in every objective and better in at least one; equal points do not dominate
each other, so duplicates of a non-dominated point are all kept.
"""

from __future__ import annotations

import numpy as np


def _as_points(points: np.ndarray | list) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"points must be an (n, m) array, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("points must not hold NaN (use inf for a failed candidate)")
    return array


def non_dominated(points: np.ndarray | list) -> np.ndarray:
    """A boolean mask of the points no other point dominates (O(n² m))."""
    array = _as_points(points)
    mask = np.ones(len(array), dtype=bool)
    for i, point in enumerate(array):
        no_worse = (array <= point).all(axis=1)
        better = (array < point).any(axis=1)
        mask[i] = not (no_worse & better).any()
    return mask


def non_dominated_sort(points: np.ndarray | list) -> list[np.ndarray]:
    """The fronts, best first: index arrays (ascending) that partition ``range(n)``.

    Front k holds the points that only points of fronts < k dominate. Peels one front at a
    time, O(fronts · n² m): meant for populations, not archives of millions.
    """
    array = _as_points(points)
    left = np.arange(len(array))
    fronts = []
    while len(left):
        mask = non_dominated(array[left])
        fronts.append(left[mask])
        left = left[~mask]
    return fronts


def crowding_distance(points: np.ndarray | list) -> np.ndarray:
    """NSGA-II crowding distance of each point within its set (one front, finite values).

    Per objective, a point's neighbours' gap normalised by the set's range, summed over
    objectives; the extreme points of every objective get ``inf`` (so do all points of a set
    of at most two). Objectives whose range is zero contribute nothing.
    """
    array = _as_points(points)
    n, m = array.shape
    distance = np.zeros(n)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for k in range(m):
        order = np.argsort(array[:, k], kind="stable")
        values = array[order, k]
        span = values[-1] - values[0]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def hypervolume(points: np.ndarray | list, reference: np.ndarray | list) -> float:
    """The volume dominated by ``points`` and bounded by ``reference`` (exact).

    Only points strictly better than ``reference`` in every objective count. Two objectives
    use a sweep (O(n log n)); more objectives slice along the last one and sum the lower-
    dimensional volumes of the slabs (O(n^(m-1) log n): fine for m = 3 and a few thousand
    points).
    """
    array = _as_points(points)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (array.shape[1],):
        raise ValueError(f"reference must have {array.shape[1]} entries, got shape {ref.shape}")
    inside = array[(array < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return _volume(inside[non_dominated(inside)], ref)


def _volume(points: np.ndarray, ref: np.ndarray) -> float:
    m = points.shape[1]
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _area(points, ref)
    # Slabs between consecutive values of the last objective: within a slab, the points
    # below it dominate a fixed (m-1)-dimensional region.
    order = np.argsort(points[:, -1], kind="stable")
    ordered = points[order]
    tops = np.append(ordered[1:, -1], ref[-1])
    total = 0.0
    for i in range(len(ordered)):
        thickness = tops[i] - ordered[i, -1]
        if thickness > 0:
            below = ordered[: i + 1, :-1]
            if m > 3:  # the 2-D sweep ignores dominated points by itself
                below = below[non_dominated(below)]
            total += thickness * _volume(below, ref[:-1])
    return total


def _area(points: np.ndarray, ref: np.ndarray) -> float:
    """The 2-D dominated area: sweep along the first objective, each new point adding the
    rectangle between its second objective and the lowest one seen so far."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    area, height = 0.0, ref[1]
    for x, y in points[order]:
        if y < height:
            area += (ref[0] - x) * (height - y)
            height = y
    return float(area)


def reference_point(points: np.ndarray | list, margin: float = 0.1) -> np.ndarray:
    """A reference point just worse than every finite point: the per-objective worst value
    plus ``margin`` times the objective's range (or times ``max(|worst|, 1)`` when the range
    is zero), so that the extreme points still add volume."""
    array = _as_points(points)
    finite = array[np.isfinite(array).all(axis=1)]
    if len(finite) == 0:
        raise ValueError("reference_point needs at least one finite point")
    worst, best = finite.max(axis=0), finite.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    return worst + margin * span
