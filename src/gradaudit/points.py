"""Step/value arrays as the engine takes them: sorted points, the logging interval, decimation."""

from __future__ import annotations

import numpy as np

MAX_TRACE_POINTS = 2000


def sorted_points(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by step, one value per step (the last given), whatever the caller built."""
    steps = np.asarray(steps, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    n = min(steps.size, values.size)
    steps, values = steps[:n], values[:n]
    if n < 2 or np.all(np.diff(steps) > 0):
        return steps, values
    order = np.argsort(steps, kind="stable")
    s, v = steps[order], values[order]
    keep = np.ones(n, bool)
    keep[:-1] = s[1:] != s[:-1]  # last write of each step
    return s[keep], v[keep]


def typical_gap(steps: np.ndarray) -> int:
    """The median step between logged points (1 for a single point)."""
    d = np.diff(steps)
    return int(np.median(d)) if d.size else 1


def decimate(steps: np.ndarray, values: np.ndarray,
             max_points: int = MAX_TRACE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Min/max decimation: at most ~``max_points`` points, every bucket's extremes kept."""
    n = steps.size
    if n <= max_points:
        return steps.copy(), values.copy()
    buckets = max_points // 2
    size = -(-n // buckets)
    pad = buckets * size - n
    v = np.concatenate((values, np.full(pad, np.nan)))
    vv = np.where(np.isfinite(v), v, np.nan).reshape(buckets, size)
    allnan = np.all(np.isnan(vv), axis=1)
    filled = np.where(np.isnan(vv), -np.inf, vv)
    imax = np.argmax(filled, axis=1)
    filled = np.where(np.isnan(vv), np.inf, vv)
    imin = np.argmin(filled, axis=1)
    base = np.arange(buckets) * size
    idx = np.concatenate((base + imin, base + imax))
    idx = idx[(idx < n) & ~np.concatenate((allnan, allnan))]
    # keep non-finite values visible as well (they are the events)
    nonfin = np.flatnonzero(~np.isfinite(values))[:max_points // 10]
    idx = np.unique(np.concatenate((idx, nonfin, [0, n - 1])))
    return steps[idx], values[idx]
