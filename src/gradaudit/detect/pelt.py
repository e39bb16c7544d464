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
level is at least ``level_ratio`` above the level before them, at once or at the top of a ramp
(a climb to a new level that rose ``level_ratio`` within its last ``ramp`` points, 200, and
may have begun up to 3x that far back).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from gradaudit.detect._common import diff_sigma, hinge_gain

ID = "pelt"
#: Standard errors of the difference of two medians a ramp's rise must reach (level_shifts)
RAMP_SE = 4.0
#: Points a ramp's new level is judged over, twice (level_shifts, :func:`_lasts`; the ramp's
#: length as first found, where that is longer)
RAMP_HOLD = 100


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


class Shift(NamedTuple):
    """An upward level shift of :func:`level_shifts`: its first and last index, the log ratio
    of its level to the level before it, and the index of its top (``first`` for a step; where
    a ramp from ``first`` reached the new level)."""

    first: int
    last: int
    log_ratio: float
    top: int


def level_shifts(
    log_g: np.ndarray,
    *,
    level_ratio: float = 2.0,
    min_size: int = 10,
    penalty: float | None = None,
    max_points: int = 1000,
    ramp: int = 200,
) -> list[Shift]:
    """Upward level shifts of ``log_g`` found by PELT (normal cost).

    Returns :class:`Shift` index ranges (into ``log_g``, NaNs allowed: they
    are skipped) of segments whose median is at least ``level_ratio`` times the median of the
    segment before, and whose level also jumps by ``level_ratio`` locally across the break
    (median of the ``max(min_size, 10)`` points after vs before it): a slow drift of the level,
    such as the grad norm's rise early in training, is no shift. Or across a ramp up to the
    break of at most ``ramp`` points (in steps of 5) that climbs (:func:`_climbs`), against
    the segment it started in, by ``RAMP_SE`` standard errors of the two medians too, from a
    level (:func:`_from_level`) to a level that lasts (:func:`_lasts`: over twice ``RAMP_HOLD``
    points after it, or twice the ramp's length as first found where that is longer): the
    shift then starts where the ramp does (a grad norm that climbed 8x over 40 steps and
    stayed there passed neither test: PELT cut the ramp into steps of under 2x, and the local
    test across the last one failed); not from before the previous shift's start (it would
    take that shift in). Adjacent segments whose levels differ by less than half a shift (a
    change of variance only) count as one.
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
    out: list[Shift] = []
    last_first = -1  # (in xs) where the last shift found began: no ramp reaches back to it
    up = math.log(level_ratio)
    k_loc = max(min_size, 10)
    # a ramp's rise must stand out of the noise of two k_loc-point medians (RAMP_SE standard
    # errors: the search tries many starts)
    rise_min = max(up, RAMP_SE * math.sqrt(2.0) * 1.2533 * diff_sigma(xs) / math.sqrt(k_loc))
    for k in range(1, len(bk)):
        jump = meds[k] - meds[k - 1]
        if jump <= 0:
            continue
        a = starts[k] * block
        if block > 1 and jump >= up:
            a = _refine(xs, a, block)
        # a change point, not a drift: the level also jumps locally, across the break - or
        # across a ramp of at most ``ramp`` points up to it (from the level of the segment
        # it started in: a climb over a few dozen steps to a new level is a shift too)
        after = xs[a:a + k_loc]
        if after.size < 3:
            continue
        top = float(np.median(after))
        cut = _Cut(xs, a, top, k, starts, meds, block, k_loc, up, rise_min, last_first + 1)
        first = None
        for gap in range(0, ramp + 1, 5) if ramp else (0,):
            found = cut.rise(gap, max(RAMP_HOLD, gap))
            if found is not None:
                first, jump = a - gap, found
                break
        if first is not None and first < a:
            # a ramp found within ``span`` points of its top (RAMP_HOLD, or the ramp's length)
            # may have begun further back: the starts before it (up to 3 ``span``) from which
            # it passes too, as long as no two in a row fail (past those lies another event: a
            # bump before a step), then where the climb turns up from its level in between (a
            # hinge: those starts are 5 points apart, and the earliest may take in some of the
            # level before it)
            span = max(RAMP_HOLD, a - first)
            failed = 0
            for gap in range(a - first + 5, 3 * span + 1, 5):
                found = cut.rise(gap, span)
                if found is None:
                    failed += 1
                    if failed == 2:
                        break
                    continue
                first, jump, failed = a - gap, found, 0
            first = _ramp_start(xs, max(cut.floor, first - k_loc), a)
            # a step that the segmentation put a few points off is no ramp: where one split of
            # the stretch fits it at least as well as the climb, the shift starts there
            step = _step_instead(xs, max(0, first - k_loc), first, a, min(xs.size, a + k_loc))
            if step is not None:
                first = a = step
        if first is None:
            continue
        b = min(xs.size, bk[k] * block) - 1
        if k == len(bk) - 1:
            b = xs.size - 1
        out.append(Shift(int(idx[first]), int(idx[b]), jump, int(idx[a])))
        last_first = first
    return out


class _Cut(NamedTuple):
    """A rising break of :func:`level_shifts` at ``a`` (of ``xs``), the level ``top`` after it,
    its segment ``k``, and the segmentation's ``starts`` and ``meds``."""

    xs: np.ndarray
    a: int
    top: float
    k: int
    starts: list[int]
    meds: list[float]
    block: int
    k_loc: int
    up: float
    rise_min: float
    floor: int  # after the last shift's start: a ramp from before it would take that shift in

    def rise(self, gap: int, hold: int) -> float | None:
        """The shift's log ratio where the level before a ramp of ``gap`` points (0: a step)
        up to the break rose to ``top``, a level that held ``hold`` points (module doc), else
        None."""
        xs, a, top, up = self.xs, self.a, self.top, self.up
        r0 = a - gap
        if r0 < max(3, self.floor):  # (no level before it: the series' start, or a shift)
            return None
        # (the segment the ramp started in: before the break's, whatever the refined break's
        # block)
        j0 = min(self.k - 1,
                 int(np.searchsorted(self.starts, (r0 - 1) // self.block, side="right")) - 1)
        med = self.meds[self.k]
        if med - self.meds[j0] < up:
            return None
        lo = float(np.median(xs[max(0, r0 - self.k_loc):r0]))
        m = max(gap, self.k_loc)
        if gap > RAMP_HOLD and r0 >= m:  # (a long ramp's level before it, over as many
            # points as it took too: one "from" a short dip starts from the level around it)
            lo = max(lo, float(np.median(xs[r0 - m:r0])))
        if top - lo < up:
            return None
        if gap and not (top - lo >= self.rise_min and _climbs(xs[r0:a], lo, top)
                        and _from_level(xs, r0, m, lo, top)
                        and _lasts(xs[a:a + 2 * hold], lo, up, hold)):
            return None
        return med - self.meds[j0]


def _step_instead(xs: np.ndarray, lo: int, first: int, top: int, hi: int) -> int | None:
    """The index of the best single step in ``xs[lo:hi]`` where it fits those points at
    least as well (squared error) as a level up to ``first``, a straight climb to ``top`` and
    a level after it; else None."""
    y = xs[lo:hi]
    m = y.size
    if m < 4 or not lo < first < top < hi:
        return None
    lvl0, lvl1 = float(np.median(xs[lo:first])), float(np.median(xs[top:hi]))
    ramp = np.interp(np.arange(lo, hi), [first, top], [lvl0, lvl1])
    sse_ramp = float(np.sum((y - ramp) ** 2))
    k = np.arange(2, m - 1)  # the split before y[k]: 2 points a side at least
    gain = _split_gain(y, k)
    j = int(np.argmax(gain))
    sse = float(np.sum((y - y.mean()) ** 2)) - float(gain[j])
    return lo + int(k[j]) if sse <= sse_ramp else None


def _ramp_start(xs: np.ndarray, lo: int, top: int) -> int:
    """Where ``xs[lo:top + 1]`` turns from a level to a straight climb (the best hinge,
    :func:`hinge_gain`)."""
    t = np.arange(lo, top + 1)
    cands = np.arange(lo, top)
    gain = hinge_gain(t, xs[lo:top + 1], cands)
    return int(cands[int(np.argmax(gain))]) + 1 if gain.max() > 0 else lo


def _climbs(ramp: np.ndarray, lo: float, top: float) -> bool:
    """Whether the points ``ramp`` climb from level ``lo`` towards ``top``: their median a
    quarter of the way up at least, and (10 points or more) their second half's median a
    quarter of the way above their first half's. A step whose next points are noisy, or a level
    after a dip, is no ramp from further back."""
    rise = 0.25 * (top - lo)
    if float(np.median(ramp)) - lo < rise:
        return False
    h = ramp.size // 2
    return ramp.size < 10 or float(np.median(ramp[h:])) - float(np.median(ramp[:h])) >= rise


def _from_level(xs: np.ndarray, r0: int, m: int, lo: float, top: float) -> bool:
    """Whether the ramp starting at ``r0`` starts from a level: the ``m`` points before it
    stand under a quarter of its rise above the ``m`` before those (a grad norm climbing from
    the run's start, a layer waking up, climbs before any "ramp" too)."""
    if r0 < 2 * m:
        return False
    return float(np.median(xs[r0 - m:r0])) - float(np.median(xs[r0 - 2 * m:r0 - m])) < \
        0.25 * (top - lo)


def _lasts(after: np.ndarray, lo: float, up: float, n: int) -> bool:
    """Whether the ``2 n`` points ``after`` a ramp's top (all of them there) stand ``up``
    above ``lo`` in the median over the first ``n``, and climb on by under half of ``up`` over
    the next ``n``: a new level, not a bump, nor a climb that goes on (a slow divergence is
    ``level-climb``'s)."""
    if after.size < 2 * n:
        return False
    first, then = float(np.median(after[:n])), float(np.median(after[n:2 * n]))
    return first - lo >= up and then - first < 0.5 * up


def _refine(xs: np.ndarray, a: int, block: int) -> int:
    """The split in ``[a - block, a + block)`` that minimises the two-mean squared error of
    ``xs[a - 2 block : a + 2 block]``."""
    lo, hi = max(0, a - 2 * block), min(xs.size, a + 2 * block)
    seg = xs[lo:hi]
    k = np.arange(max(1, a - block - lo), min(seg.size - 1, a + block - lo) + 1)
    if k.size == 0:
        return a
    return int(lo + k[int(np.argmax(_split_gain(seg, k)))])


def _split_gain(seg: np.ndarray, k: np.ndarray) -> np.ndarray:
    """For each split before ``seg[k]`` (``0 < k < seg.size``), how much two means lower the
    squared error of ``seg`` below one: ``S_k^2 / k + (S - S_k)^2 / (m - k)`` of the centred
    sums, so that the two-mean squared error is the centred sum of squares minus it."""
    c1 = np.concatenate(([0.0], np.cumsum(seg - seg.mean())))
    m = seg.size
    return c1[k] ** 2 / k + (c1[m] - c1[k]) ** 2 / (m - k)
