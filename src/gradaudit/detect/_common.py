"""Helpers shared by the detectors: log transform, trailing robust statistics, run labelling.

The trailing statistics are exact wherever they are computed, but they are only computed where
they can matter: the level over the whole series (one median filter), the spread only at the
points a caller asks for (``spread_at``), and after a change of the healthy mask only around the
points that changed (:func:`retrail`). That keeps a 10^6-step run well under a second.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import median_filter

MAD_TO_SIGMA = 1.4826
_GATHER_MAX = 1 << 21  # gathered window elements per chunk (16 MB of float64)
_MAX_STRETCHES = 256  # retrail: more changed stretches than this -> one full computation


def log_positive(values: np.ndarray) -> np.ndarray:
    """``log(values)`` where finite and > 0, NaN elsewhere."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v) & (v > 0)
    out[ok] = np.log(v[ok])
    return out


def finite_argmax(v: np.ndarray, lo: int = 0, hi: int | None = None) -> int:
    """The index (into ``v``) of the largest finite value of ``v[lo:hi]``; ``lo`` where none
    is finite (a peak: non-finite points are no height)."""
    seg = v[lo:hi]
    return lo + int(np.argmax(np.where(np.isfinite(seg), seg, -np.inf))) if seg.size else lo


def positive(v: np.ndarray) -> np.ndarray:
    """The finite values > 0 of ``v``, in order."""
    return v[np.isfinite(v) & (v > 0)]


def diff_sigma(y: np.ndarray) -> float:
    """Per-point noise of ``y``: the median absolute successive difference scaled to a normal
    sigma (``/ sqrt 2``: a difference holds two points' noise); a trend barely moves it. 0 with
    fewer than two points."""
    d = np.abs(np.diff(y))
    return float(np.median(d)) * MAD_TO_SIGMA / np.sqrt(2.0) if d.size else 0.0


#: Norms whose thirds' medians differ more than this are still moving (a climb)
REGIME_DRIFT = 2.0
REGIME_TREND = 0.1  # nor norms whose fitted trend in log moves more than this over them


def holds_level(v: np.ndarray) -> bool:
    """The grad norms ``v`` (in step order, finite and > 0) hold one level: the medians of
    their first, middle and last thirds lie within ``REGIME_DRIFT`` x of each other, and their
    fitted trend in log is not significant (3 standard errors) and worth ``REGIME_TREND`` over
    them (a slow climb looks flat by thirds). A slow climb to the run's end is no regime to take
    a clip threshold from (a 5e8x climb gave one of 2e8), nor a new level to judge events on."""
    med = [float(np.median(part)) for part in np.array_split(v, 3) if part.size]
    if not med or max(med) > REGIME_DRIFT * min(med):
        return False
    x, y = np.arange(v.size, dtype=np.float64), np.log(v)
    x -= x.mean()
    sxx = float(x @ x)
    if v.size < 3 or sxx == 0:
        return True
    b = float(x @ (y - y.mean())) / sxx
    se = diff_sigma(y) / np.sqrt(sxx)
    return not (abs(b) * v.size > REGIME_TREND and abs(b) > 3.0 * se)


def _head_medians(v: np.ndarray, w: int) -> np.ndarray:
    """The upper median of ``v[:p + 1]`` for each ``p < w - 1``: the trailing windows that the
    series' start cuts short hold only the points there are (the spread, a trailing median of
    deviations from these medians, so differs from a padded window's up to ``2 w - 3``)."""
    return np.array([np.partition(v[:p + 1], (p + 1) // 2)[(p + 1) // 2]
                     for p in range(min(w - 1, v.size))])


def _trailing_median(v: np.ndarray, w: int) -> np.ndarray:
    """The upper median of ``v[p - w + 1 : p + 1]`` at every ``p`` (windows cut short at the
    start: :func:`_head_medians`)."""
    out = median_filter(v, size=w, mode="nearest", origin=(w - 1) // 2)  # [p - w + 1, p]
    head = _head_medians(v, w)
    out[:head.size] = head
    return out


def _trailing_rank(xs: np.ndarray, pos: np.ndarray, w: int) -> np.ndarray:
    """:func:`_trailing_median` of ``xs`` at ``pos`` only."""
    out = np.empty(pos.size)
    offs = np.arange(-w + 1, 1)
    step = max(1, _GATHER_MAX // w)
    for k in range(0, pos.size, step):
        j = pos[k:k + step, None] + offs[None, :]
        np.maximum(j, 0, out=j)
        out[k:k + step] = np.partition(xs[j], w // 2, axis=1)[:, w // 2]
    early = pos < w - 1
    if early.any():
        out[early] = _head_medians(xs, w)[pos[early]]
    return out


def _window_union(pos: np.ndarray, w: int, n: int) -> np.ndarray:
    """The sorted indices in ``[p - w + 1, p]`` (clipped at 0) for any ``p`` in ``pos``
    (``0 <= p < n``): ``np.unique`` of every window's indices without building them."""
    starts = np.maximum(pos - w + 1, 0)
    open_ = np.cumsum(np.bincount(starts, minlength=n + 1) - np.bincount(pos + 1, minlength=n + 1))
    return np.flatnonzero(open_[:n] > 0)


def trailing_median_before(
    x: np.ndarray,
    use: np.ndarray,
    window: int,
    min_history: int,
    spread: bool = True,
    *,
    at: np.ndarray | None = None,
    spread_at: Callable[[np.ndarray, int], np.ndarray] | None = None,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-sigma of the last ``window`` points with ``use`` True, strictly before i.

    Returns ``(level, spread)`` of length ``len(x)``, NaN where fewer than ``min_history`` such
    points precede ``i``. Vectorised: the used points are compressed, filtered, and mapped back.
    ``at`` (bool mask): compute the level only there (NaN elsewhere). ``spread_at``: a function
    of ``(level, offset)`` giving the bool mask of the points whose spread is wanted (NaN
    elsewhere; ``offset``: where ``x`` starts in the caller's series); by default everywhere.
    """
    n = x.size
    level = np.full(n, np.nan)
    spr = np.full(n, np.nan)
    ok_use = use & np.isfinite(x)
    idx = np.flatnonzero(ok_use)
    if idx.size == 0 or n == 0:
        return level, spr
    xs = x[idx]
    w = int(max(1, min(window, xs.size)))
    # number of used points strictly before i
    before = np.cumsum(ok_use) - ok_use
    ok = before >= max(1, min_history)
    if at is not None:
        ok &= at
    pts = np.flatnonzero(ok)
    pos = before[pts] - 1  # compressed position of the last used point before i
    if at is not None and pos.size * 8 < xs.size:
        level[pts] = _trailing_rank(xs, pos, w)
        med = None
    else:
        med = _trailing_median(xs, w)
        level[pts] = med[pos]
    if not spread:
        return level, spr
    if spread_at is not None:
        want = ok & spread_at(level, offset)
        pts = np.flatnonzero(want)
        pos = before[pts] - 1
    if pos.size == 0:
        return level, spr
    if med is None or (spread_at is not None and pos.size * 8 < xs.size):
        # MAD at p needs the medians at p - w + 1 .. p: the union of those windows, from
        # counts of window starts and ends (sorted, each index once)
        need = _window_union(pos, w, xs.size)
        if med is None:
            mneed = _trailing_rank(xs, need, w)
        else:
            mneed = med[need]
        dev = np.zeros(xs.size)
        dev[need] = np.abs(xs[need] - mneed)
        spr[pts] = _trailing_rank(dev, pos, w) * MAD_TO_SIGMA
    else:
        dev = np.abs(xs - med)
        mad = _trailing_median(dev, w) * MAD_TO_SIGMA
        spr[pts] = mad[pos]
    return level, spr


def retrail(
    x: np.ndarray,
    use_old: np.ndarray,
    use_new: np.ndarray,
    level: np.ndarray,
    spread: np.ndarray,
    window: int,
    min_history: int,
    *,
    spread_at: Callable[[np.ndarray, int], np.ndarray] | None = None,
    with_spread: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trailing_median_before` for ``use_new``, given its result for ``use_old``.

    ``use_new`` must be a subset of ``use_old``. Only the stretches after removed points (up to
    ``2 window + 2`` kept points later, where the old windows take over again) are recomputed;
    the result is identical to a full computation with ``use_new``.
    """
    n = x.size
    fin = np.isfinite(x)
    old = use_old & fin
    new = use_new & fin
    removed = old & ~new
    if not removed.any():
        return level.copy(), spread.copy()
    n_new = int(new.sum())
    if n_new < 4 * window + 4:
        return trailing_median_before(x, use_new, window, min_history, with_spread,
                                      spread_at=spread_at)
    # kept points recomputed before a change: two windows (the level's and the spread's), and
    # min_history (fewer would leave the slice's first levels missing)
    reach = max(2 * window + 2, min_history)
    stretches = runs_of(removed, reach)
    if len(stretches) > _MAX_STRETCHES:  # many small patches cost more than one full pass
        return trailing_median_before(x, use_new, window, min_history, with_spread,
                                      spread_at=spread_at)
    new_idx = np.flatnonzero(new)
    old_idx = np.flatnonzero(old)
    spans = []
    for a, b in stretches:
        k = int(np.searchsorted(new_idx, a))  # kept points before a
        lo = 0 if k <= reach else int(new_idx[k - reach - 1])
        j = int(np.searchsorted(old_idx, b, side="right")) + reach
        spans.append((a, lo, n - 1 if j >= old_idx.size else int(old_idx[j])))
    # patches holding much of the kept points (the filters' work) or of the series cost more
    # than one full pass
    points = sum(hi - lo + 1 for _, lo, hi in spans)
    kept = sum(int(np.searchsorted(new_idx, hi, side="right") - np.searchsorted(new_idx, lo))
               for _, lo, hi in spans)
    if 4 * kept > n_new or points > 2 * n:
        return trailing_median_before(x, use_new, window, min_history, with_spread,
                                      spread_at=spread_at)
    level = level.copy()
    spread = spread.copy()
    for a, lo, hi in spans:
        lv, sp = trailing_median_before(x[lo:hi + 1], use_new[lo:hi + 1], window, min_history,
                                        with_spread, spread_at=spread_at, offset=lo)
        start = lo if lo == 0 else a
        level[start:hi + 1] = lv[start - lo:]
        spread[start:hi + 1] = sp[start - lo:]
    return level, spread


def runs_of(mask: np.ndarray, gap: int = 0) -> list[tuple[int, int]]:
    """``[(first, last), ...]`` index ranges where ``mask`` is True, joining gaps <= ``gap``."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]]))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))



def typical_max(d: np.ndarray, use: np.ndarray, trigger: np.ndarray, q: float = 0.99,
                cluster: int = 3, min_points: int = 100) -> float:
    """The run's own spike size: the ``q`` (99th) percentile of ``d`` over the used points,
    leaving out stretches of ``cluster`` (3) or more consecutive ``trigger`` points (a lasting
    event is no part of the run's healthy spikiness; scattered one- or two-point spikes are).
    0 with fewer than ``min_points`` points. For gaussian noise it is 2.3 sigma."""
    keep = use & np.isfinite(d)
    for a, b in runs_of(trigger):
        if b - a + 1 >= cluster:
            keep[a:b + 1] = False
    v = d[keep]
    if v.size > 200_000:  # a strided sample of ~100k points estimates the percentile well
        v = v[:: v.size // 100_000]
    if v.size < min_points:
        return 0.0
    return max(0.0, float(np.quantile(v, q)))


def sustained(d: np.ndarray, use: np.ndarray, spread: np.ndarray, w: int,
              floor: float | np.ndarray, z_hi: float, tail_factor: float,
              point_min: float | np.ndarray) -> np.ndarray:
    """Points of ``w`` consecutive finite points that are together, not one by one, anomalous.

    ``d``: excess over the trailing level. A window ``[i, i + w)`` triggers when every point
    in it reaches ``point_min`` (one huge point is the single-point rules' business) and its
    mean excess reaches ``floor``, ``z_hi`` standard errors of a ``w``-point mean
    (``spread / sqrt(w)``) and ``tail_factor`` x the run's own typical maximum of such means
    over its used windows (:func:`typical_max`): the single-point rules at the time scale of
    ``w`` points. All its points trigger. This finds a fault of a few moderately high steps (a
    loss-scaling bug for five steps, two batches with shuffled labels) in a heavy-tailed run,
    whose single-point spikes are larger.
    """
    n = d.size
    out = np.zeros(n, bool)
    if w < 2 or n < w:
        return out
    fl = np.broadcast_to(np.asarray(floor, dtype=np.float64), (n,))
    pm = np.broadcast_to(np.asarray(point_min, dtype=np.float64), (n,))
    with np.errstate(invalid="ignore"):
        high = np.concatenate(([0], np.cumsum(d >= pm)))  # points reaching point_min (exact)
    starts = np.flatnonzero(high[w:] - high[:-w] == w)  # windows whose every point does
    if starts.size == 0:
        return out
    offs = np.arange(w)
    view = np.lib.stride_tricks.sliding_window_view  # row i: the window [i, i + w), no copy

    def windows(st: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # means summed directly (w is small): a cumulative sum would let one huge value
        # wipe out the precision of every later window
        win = view(d, w)[st]
        ok = np.isfinite(win).all(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(ok, win.sum(axis=1) / w, -np.inf), ok

    m, whole = windows(starts)
    with np.errstate(invalid="ignore"):
        # the window's largest computed spread; none (NaN: nothing could fire) leaves the floor
        sp = np.fmax.reduce(view(np.asarray(spread, dtype=np.float64), w)[starts], axis=1)
        cand = whole & (m >= np.fmax(fl[starts], z_hi * sp / np.sqrt(w)))
    if not cand.any():
        return out
    # the run's typical maximum of w-point means over its used windows (on a strided sample of
    # at most ~100k windows: a percentile needs no more), leaving out the windows that overlap
    # a candidate: an event must not set its own bar
    grid = np.arange(0, n - w + 1, max(1, (n - w + 1) // 100_000))
    m_all, whole_all = windows(grid)
    inside = np.zeros(n, bool)  # points of candidate windows: a window overlapping one holds one
    inside[(starts[cand][:, None] + offs).ravel()] = True
    bad = np.concatenate(([0], np.cumsum(~use | inside)))
    used = whole_all & (bad[grid + w] - bad[grid] == 0)
    tmax = typical_max(m_all, used, np.zeros(grid.size, bool))
    hit = starts[cand & (m >= tail_factor * tmax)]
    if hit.size:
        out[(hit[:, None] + offs).ravel()] = True
    return out


def hinge_gain(t: np.ndarray, y: np.ndarray, cands: np.ndarray,
               level: float | None = None) -> np.ndarray:
    """For each ``k`` in ``cands``, how much a level up to ``k`` and a straight line up from it
    (``y = a + b max(0, t - k)``, ``b >= 0``, least squares) lowers the squared error of ``y``
    below a flat level: the best hinge has the largest gain. With ``level`` the level ``a`` is
    that value, not fitted. All candidates at once, from suffix sums (linear in the points).
    ``t`` sorted, ``y`` finite."""
    t = np.asarray(t, dtype=np.float64)
    # a fitted level absorbs the mean
    y = np.asarray(y, dtype=np.float64) - (float(np.mean(y)) if level is None else level)
    k = np.asarray(cands, dtype=np.float64)

    def suffix(v: np.ndarray) -> np.ndarray:  # sums over t > k, for every k
        c = np.concatenate((np.cumsum(v[::-1])[::-1], [0.0]))
        return c[np.searchsorted(t, k, side="right")]

    n_up, s_t, s_tt, s_ty, s_y = (suffix(v) for v in (np.ones_like(t), t, t * t, t * y, y))
    su = s_t - k * n_up  # sums of u = t - k over t > k
    suu = s_tt - 2 * k * s_t + k * k * n_up
    suy = s_ty - k * s_y
    # squared deviations of u about its mean (about 0 where the level is given)
    var_u = suu - su * su / t.size if level is None else suu
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((var_u > 0) & (suy > 0), suy * suy / var_u, 0.0)
