"""``pelt``: exact PELT change-point segmentation (Killick et al. 2012) over cumulative sums.

:func:`pelt` finds the segmentation minimising ``sum(cost(segment) + penalty)`` with every
segment at least ``min_size`` points long - the same optimum as the O(n^2) dynamic programme,
found with PELT's pruning (a candidate is dropped ``min_size`` steps after it can no longer win,
which keeps the result exact with a minimum segment length). Costs:

- ``"normal"`` (default): Gaussian mean *and* variance change, ``n (log v + 1)`` with the
  segment's ML variance ``v`` (floored at ``var_floor``, with the exact constrained-ML cost below
  the floor so pruning stays valid). Default penalty ``2 log n`` per segment (BIC, 2 parameters).
- ``"l2"``: mean change, ``sum (x - mean)^2`` (ruptures' ``CostL2``). Default penalty
  ``2 * var(x) * log n``.

Breakpoints follow ruptures' convention: sorted segment ends, the last one is ``n``.

:func:`level_shifts` is the detector: it segments ``log g`` (block medians when the series is
longer than ``max_points``, so any length runs in bounded time) and returns the segments whose
level is at least ``level_ratio`` above the level before them.
"""

from __future__ import annotations

import math

import numpy as np

ID = "pelt"


def pelt(
    signal: np.ndarray,
    *,
    cost: str = "normal",
    penalty: float | None = None,
    min_size: int = 5,
    var_floor: float | None = None,
) -> list[int]:
    """Exact PELT breakpoints of a 1-D ``signal`` (see module doc). NaNs are not allowed."""
    x = np.asarray(signal, dtype=np.float64).ravel()
    n = x.size
    m = max(1, int(min_size))
    if cost not in ("normal", "l2"):
        raise ValueError("cost must be 'normal' or 'l2'")
    if n < 2 * m or not np.all(np.isfinite(x)):
        return [n]
    x = x - x.mean()
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))
    if penalty is None:
        penalty = 2.0 * math.log(n) * (float(x.var()) if cost == "l2" else 1.0)
    pen = float(penalty)
    floor = float(var_floor) if var_floor is not None else max(1e-12, 1e-6 * float(x.var()))
    big = np.iinfo(np.int64).max
    f = np.full(n + 1, np.inf)
    f[0] = 0.0
    last = np.zeros(n + 1, dtype=np.int64)
    cand = np.empty(0, dtype=np.int64)
    prune_at = np.empty(0, dtype=np.int64)
    normal = cost == "normal"
    log_floor = math.log(floor)
    # Times are processed in blocks of m: every candidate a time in the block can use ends at
    # least m points earlier, i.e. before the block, so its optimum f[s] is already known.
    t0 = m
    while t0 <= n:
        t1 = min(t0 + m, n + 1)
        new = np.arange(t0 - m, t1 - m, dtype=np.int64)
        new = new[(new == 0) | (new >= m)]
        if new.size:
            cand = np.concatenate((cand, new))
            prune_at = np.concatenate((prune_at, np.full(new.size, big, dtype=np.int64)))
        times = np.arange(t0, t1, dtype=np.int64)
        length = times[None, :] - cand[:, None]
        valid = length >= m
        length = np.maximum(length, 1)
        d1 = s1[times][None, :] - s1[cand][:, None]
        ss = (s2[times][None, :] - s2[cand][:, None]) - d1 * d1 / length
        if normal:
            v = ss / length
            seg = np.where(
                v > floor, length * (np.log(np.maximum(v, floor)) + 1.0),
                length * (log_floor + v / floor),
            )
        else:
            seg = ss
        vals = np.where(valid, f[cand][:, None] + seg, np.inf)
        j = vals.argmin(axis=0)
        best = vals[j, np.arange(times.size)]
        f[t0:t1] = best + pen
        last[t0:t1] = cand[j]
        # s can never win once f[s] + C(s, t) > f[t]; t itself is a candidate from t + m on,
        # so s is dropped at t + m (dropping later keeps the optimum exact, just slower).
        dominated = valid & (vals > f[t0:t1][None, :])
        hit = dominated.any(axis=1)
        if hit.any():
            first_t = times[dominated.argmax(axis=1)] + m
            prune_at = np.where(hit, np.minimum(prune_at, first_t), prune_at)
            keep = prune_at > t1
            cand = cand[keep]
            prune_at = prune_at[keep]
        t0 = t1
    bkps = [n]
    t = n
    while t > 0:
        t = int(last[t])
        if t > 0:
            bkps.append(t)
    return sorted(bkps)


def pelt_reference(signal: np.ndarray, *, cost: str = "normal", penalty: float | None = None,
                   min_size: int = 5, var_floor: float | None = None) -> list[int]:
    """The O(n^2) dynamic programme PELT must agree with (for tests; small n only)."""
    x = np.asarray(signal, dtype=np.float64).ravel()
    n = x.size
    m = max(1, int(min_size))
    if n < 2 * m:
        return [n]
    x = x - x.mean()
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))
    if penalty is None:
        penalty = 2.0 * math.log(n) * (float(x.var()) if cost == "l2" else 1.0)
    floor = float(var_floor) if var_floor is not None else max(1e-12, 1e-6 * float(x.var()))
    f = np.full(n + 1, np.inf)
    f[0] = 0.0
    last = np.zeros(n + 1, dtype=np.int64)
    for t in range(m, n + 1):
        s = np.arange(0, t - m + 1)
        s = s[(s == 0) | (s >= m)]
        length = t - s
        d1 = s1[t] - s1[s]
        ss = (s2[t] - s2[s]) - d1 * d1 / length
        if cost == "normal":
            v = ss / length
            seg = np.where(v > floor, length * (np.log(np.maximum(v, floor)) + 1.0),
                           length * (math.log(floor) + v / floor))
        else:
            seg = ss
        vals = f[s] + seg + penalty
        j = int(vals.argmin())
        f[t] = vals[j]
        last[t] = s[j]
    bkps, t = [n], n
    while t > 0:
        t = int(last[t])
        if t > 0:
            bkps.append(t)
    return sorted(bkps)


def level_shifts(
    log_g: np.ndarray,
    *,
    level_ratio: float = 2.0,
    min_size: int = 10,
    penalty: float | None = None,
    max_points: int = 1000,
) -> list[tuple[int, int, float]]:
    """Upward level shifts of ``log_g`` found by PELT (normal cost).

    Returns ``[(first, last, log_ratio), ...]`` index ranges (into ``log_g``, NaNs allowed: they
    are skipped) of segments whose median is at least ``level_ratio`` times the median of the
    segment before, and whose level also jumps by ``level_ratio`` locally across the break
    (median of the ``max(min_size, 10)`` points after vs before it): a slow drift of the level,
    such as the grad norm's rise early in training, is no shift. Adjacent segments whose levels
    differ by less than half a shift (a change of variance only) count as one.
    ``min_size``: shortest segment, in points of the (block) series. Series longer than
    ``max_points`` finite points are segmented as medians of equal blocks (PELT is quadratic on
    a series without change points, so this bounds the time), and each shift's start is then
    refined at full resolution (the split of the blocks either side that best separates two
    means, least squares).
    """
    x = np.asarray(log_g, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(x))
    if idx.size < 2 * min_size:
        return []
    xs = x[idx]
    block = max(1, math.ceil(xs.size / max_points))
    if block > 1:
        nb = xs.size // block
        xb = np.median(xs[: nb * block].reshape(nb, block), axis=1)
    else:
        xb = xs
    bk = pelt(xb, cost="normal", penalty=penalty, min_size=min_size,
              var_floor=1e-4)
    # adjacent segments whose levels differ by less than half a shift (a change of variance
    # only) are one level
    half = 0.5 * math.log(level_ratio)
    merged = [bk[0]]
    meds = [float(np.median(xb[:bk[0]]))]
    for e in bk[1:]:
        m = float(np.median(xb[merged[-1]:e]))
        if abs(m - meds[-1]) < half:
            merged[-1] = e
            meds[-1] = float(np.median(xb[(merged[-2] if len(merged) > 1 else 0):e]))
        else:
            merged.append(e)
            meds.append(m)
    bk = merged
    starts = [0] + bk[:-1]
    out: list[tuple[int, int, float]] = []
    for k in range(1, len(bk)):
        jump = meds[k] - meds[k - 1]
        if jump >= math.log(level_ratio):
            a = starts[k] * block
            if block > 1:
                a = _refine(xs, a, block)
            # a change point, not a drift: the level also jumps locally, across the break
            k_loc = max(min_size, 10)
            before, after = xs[max(0, a - k_loc):a], xs[a:a + k_loc]
            if before.size < 3 or after.size < 3 or (
                    float(np.median(after)) - float(np.median(before)) < math.log(level_ratio)):
                continue
            b = min(xs.size, bk[k] * block) - 1
            if k == len(bk) - 1:
                b = xs.size - 1
            out.append((int(idx[a]), int(idx[b]), jump))
    return out


def _refine(xs: np.ndarray, a: int, block: int) -> int:
    """The split in ``[a - block, a + block)`` that minimises the two-mean squared error of
    ``xs[a - 2 block : a + 2 block]``."""
    lo, hi = max(0, a - 2 * block), min(xs.size, a + 2 * block)
    seg = xs[lo:hi]
    c1 = np.concatenate(([0.0], np.cumsum(seg - seg.mean())))
    k = np.arange(max(1, a - block - lo), min(seg.size - 1, a + block - lo) + 1)
    if k.size == 0:
        return a
    m = seg.size
    # SSE(two means) = const - (S_k^2 / k + (S - S_k)^2 / (m - k)); maximise the bracket
    gain = c1[k] ** 2 / k + (c1[m] - c1[k]) ** 2 / (m - k)
    return int(lo + k[int(np.argmax(gain))])
