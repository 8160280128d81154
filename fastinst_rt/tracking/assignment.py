"""Minimum-cost assignment (the Hungarian method with potentials), numpy only.

Written here rather than taken from scipy (``scipy.optimize.linear_sum_assignment``) so that the deploy runtime needs
no scipy and tracking gives the same ids everywhere; ``tests/test_tracking.py`` checks it against scipy. Tracking
matrices are small (tens of tracks by tens of detections), where the O(n^2 m) loop is well under a millisecond.
"""

from __future__ import annotations

import numpy as np

__all__ = ["linear_assignment", "match"]


def linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a minimum-cost matching that pairs min(R, C) rows with distinct columns.

    Args:
        cost: (R, C) finite float costs.
    Returns:
        (rows, cols): int64 arrays of equal length, rows increasing; ``cost[rows, cols].sum()`` is minimal.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or not np.isfinite(cost).all():
        raise ValueError(f"cost must be a finite 2-D matrix, got shape {cost.shape}")
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)  # row and column potentials (index 0 is the virtual start column)
    owner = np.zeros(m + 1, np.int64)  # owner[j]: the row (1-based) matched to column j, 0 if none
    way = np.zeros(m + 1, np.int64)
    for row in range(1, n + 1):
        owner[0], j0 = row, 0
        minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, bool)
        while True:  # grow a shortest augmenting path from ``row`` until it reaches a free column
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.nonzero(owner[1:])[0]
    rows = owner[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def match(cost: np.ndarray, max_cost: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal pairs with ``cost <= max_cost``; returns (pairs, unmatched rows, unmatched columns)."""
    r, c = cost.shape
    if r == 0 or c == 0:
        return [], list(range(r)), list(range(c))
    # Pairs above the limit are made costlier than any allowed set of pairs, so they are only used when nothing
    # else is left, and are then dropped.
    capped = np.where(cost <= max_cost, cost, max_cost + 1.0 + r + c)
    rows, cols = linear_assignment(capped)
    pairs = [(int(i), int(j)) for i, j in zip(rows, cols) if cost[i, j] <= max_cost]
    matched_rows, matched_cols = {i for i, _ in pairs}, {j for _, j in pairs}
    return pairs, [i for i in range(r) if i not in matched_rows], [j for j in range(c) if j not in matched_cols]
