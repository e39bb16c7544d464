"""``loss-rise``: a sustained rise of the smoothed loss above its trailing healthy level.

A fault that hurts training (an lr spike or ramp under Adam, a bad stretch of data) often moves
the grad norm very little but keeps the loss up for many steps. In the spirit of llm-foundry's
KillLossSpike (loss above k x its trailing mean for several steps), but robust and scale-aware:

- The loss is compared in log space when every finite value is positive (relative changes; a
  per-step mini-batch loss has multiplicative, heavy-tailed noise), raw otherwise.
- It is smoothed as medians of consecutive blocks of ``block`` logged points (default 8): one
  bad batch does not move a block median, a lasting rise does.
- Level ``b(k)`` and spread ``s(k)`` of block ``k``: median and MAD-sigma of the last ``window``
  (30) healthy block medians before it (at least ``min_history``, 4). The spread of block
  medians is the run's own slow wander (and its trend), so a run whose loss wanders a lot needs
  a larger rise; it is floored at the block-median noise of the points
  (``1.25 sigma / sqrt(block)``, sigma from successive differences).
- A block *triggers* when ``e = median - b >= max(z * s, log(1 + rel))`` (default 4 sigma and
  5 % of the loss); it is *elevated* when ``e >= max(z_lo * s, log(1 + rel / 2))`` (2 sigma).
  An event is a stretch of elevated blocks holding at least ``min_blocks`` (2) consecutive
  triggering blocks: the rise must last at least ``block * min_blocks`` logged points.
- **A falling loss.** Where the loss is still falling (most of training), the trailing median
  lags behind it and the spread holds the fall, so a rise of 10 % stands neither ``z`` spreads
  nor 5 % above that level (synthetic: a +10 % rise halfway through a 400-point power-law
  fall with 3 % noise, 0 of 40 found). Each block is therefore also compared with a *trend*:
  a least-squares line of the healthy block medians in log point index (a power law in the
  step, the loss model of :mod:`gradaudit.impact`) over the same ``window`` blocks, ending
  ``min_blocks`` blocks before it (a rise's own first blocks never enter the fit its
  ``min_blocks``-th triggering block is compared with), its falling slope shrunk towards flat
  by its significance as in :mod:`gradaudit.impact` (``b t^2 / (t^2 + SHRINK_T^2)``; a rising
  slope is held flat) and extrapolated; its spread is the blocks' scatter about the line plus the
  extrapolation's standard error. Such a block only *triggers* (with the same thresholds),
  and only where the block ``min_blocks`` before it was not elevated above the trend: a rise
  that starts now, not the slow wander of a loss about its trend. A loss that reaches 0 (and is
  never negative) is compared raw, and its trend is not carried below 0. The same synthetic rise is
  found 16 and 28 of 40 times (decaying over 30 and 80 points). On 6480 healthy synthetic
  losses (six falling shapes, 80-10000 points, 1-8 % noise: white, heavy-tailed, or with a
  slow AR(1) wander as large as the noise) the detector finds 263 events without the trend,
  403 with it unguarded and 309 with the guard, all on the wandering losses.
- Two passes: blocks inside the first pass's events do not enter the level of the second.
- Onset: in the first elevated block's neighbourhood, the first point ``p`` from which the
  median of the next ``block`` points is at least half the excess above the level (the lower of
  the trailing median and the trend) of the highest of the first ``min_blocks`` blocks; then
  the first of those ``block`` points that is itself half way up; then back from there to where
  the climb starts (:func:`_climb_start`: the median of ``CLIMB_WINDOW`` points at least
  ``CLIMB_SIGMAS`` noise sigmas above the level, or above the median of the block of points
  before, where that is higher: a loss sitting above its trend is no climb). The highest block:
  one block whose excess barely passes the bar (a jump that starts at its last points) sets a
  half that noise before the jump reaches too. Half way up, then back: the median of a block
  rises once half its points have, 3-4 points before a step, and half way up a quick ramp or a
  blow-up is late. Synthetic, 3 % noise, 100 seeds each, median onset error before -> now:
  steps of +8 % and +25 % -3 to -5 -> 0 (+25 %: exact on none -> 88-94 of 100 by where in a
  block the step falls); exponential blow-ups (time constants 3-50 points) -3 to +1 -> +1 to
  +3; ramps of +30 % over 4-32 points -3 to +1 -> +1 to +5.
- A slow rise (a ramp over dozens of blocks: harder data mixed in step by step, a creeping
  divergence) carries the trailing level and spread up with it and never stands ``z`` spreads
  above them. Each block is therefore also compared with the level and spread as they stood
  ``lag`` (30) blocks earlier, with the same thresholds. Where the block medians turned from
  flat to a straight climb more than a block before the first elevated block (a hinge fit over
  the ``lag`` blocks before it that had a healthy level), the onset is that turn: where the
  climb starts, not where it crossed a bar.
"""

from __future__ import annotations

import warnings

import numpy as np

from gradaudit.detect._common import diff_sigma, hinge_gain, runs_of, trailing_median_before

ID = "loss-rise"
BLOCK = 8  # logged points per block (default); a rise's onset is known to about a block
SHRINK_T = 3.0  # a falling trend at t standard errors keeps t^2 / (t^2 + SHRINK_T^2) of it
TREND_MIN = 6  # healthy blocks a trend is fitted to, at least
LOG_WINDOWS = 16  # blocks before LOG_WINDOWS x window: fitted in log index, window by window
CLIMB_SIGMAS = 1.5  # a climb starts where the loss is this many noise sigmas above its level
CLIMB_WINDOW = 3  # points whose median says the loss is still up (one outlier does not stop)


def loss_rise(
    loss: np.ndarray,
    *,
    healthy: np.ndarray | None = None,
    block: int = BLOCK,
    window: int = 30,
    min_history: int = 4,
    z: float = 4.0,
    z_lo: float = 2.0,
    rel: float = 0.05,
    min_blocks: int = 2,
    lag: int = 30,
) -> list[tuple[int, int, int]]:
    """Sustained loss rises as ``[(onset, first, last), ...]`` point indices (see module doc);
    ``first``/``last``: the first and last point of the elevated blocks."""
    y = np.asarray(loss, dtype=np.float64)
    fin = np.isfinite(y)
    if fin.sum() < block * (min_history + min_blocks):
        return []
    positive = bool(np.all(y[fin] > 0))
    u = np.full(y.size, np.nan)
    u[fin] = np.log(y[fin]) if positive else y[fin]
    use = fin if healthy is None else (fin & np.asarray(healthy, bool))
    nb = y.size // block
    if nb < min_history + min_blocks:
        return []
    ub = u[: nb * block].reshape(nb, block)
    if np.isfinite(ub).all():
        bm = np.median(ub, axis=1)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bm = np.nanmedian(ub, axis=1)
    enough = np.isfinite(ub).sum(axis=1) * 2 >= block
    bm[~enough] = np.nan
    hb = use[: nb * block].reshape(nb, block).all(axis=1) & np.isfinite(bm)
    sig = diff_sigma(u[fin])
    floor_b = 1.25 * sig / np.sqrt(block)

    def marks(level: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(triggering, elevated) blocks against ``level`` and ``spread``."""
        e = bm - level
        rel_thr = np.log1p(rel) if positive else rel * np.abs(level)
        with np.errstate(invalid="ignore"):
            up = np.isfinite(e) & (e > 0)  # (a loss of exactly 0 has bars of 0)
            trig = up & (e >= np.maximum(z * spread, rel_thr))
            elev = up & (e >= np.maximum(z_lo * spread, 0.5 * rel_thr))
        return trig, elev

    def detect(hmask: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        """Events as ``(first block, last block)``, the level and the spread."""
        level, spread = trailing_median_before(bm, hmask, window, min_history)
        spread = np.fmax(spread, floor_b)
        trig, elev = marks(level, spread)
        trig_l = np.zeros(nb, bool)
        elev_l = np.zeros(nb, bool)
        if 0 < lag < nb:  # against the level as it stood ``lag`` blocks earlier (module doc)
            lvl_l = np.full(nb, np.nan)
            spr_l = np.full(nb, np.nan)
            lvl_l[lag:], spr_l[lag:] = level[:-lag], spread[:-lag]
            trig_l, elev_l = marks(lvl_l, spr_l)
        # against the trend of a falling loss, where a rise starts fresh (module doc)
        lvl_t, spr_t = _trend_level(bm, hmask, block, window, min_blocks, floor_b)
        if not positive and np.all(y[fin] >= 0):  # a loss that reaches 0 falls no further
            lvl_t = np.maximum(lvl_t, 0.0)  # (NaN: no trend, stays NaN)
        trig_t, elev_t = marks(lvl_t, spr_t)
        prev_elevated = np.ones(nb, bool)  # the block ``min_blocks`` earlier was (or unknown)
        prev_elevated[min_blocks:] = elev_t[:-min_blocks] | np.isnan(lvl_t[:-min_blocks])
        trig_t &= ~prev_elevated
        out = [(a, b) for a, b in runs_of(elev | trig | elev_l | trig_l | trig_t)
               if _longest(trig[a:b + 1] | trig_l[a:b + 1] | trig_t[a:b + 1]) >= min_blocks]
        return out, np.fmin(level, lvl_t), spread

    ev1, _, _ = detect(hb)
    h2 = hb.copy()
    for a, b in ev1:
        h2[a:b + 1] = False
    ev, level, spread = detect(h2)
    res = []
    for a, b in ev:
        first_blocks = bm[a:min(b, a + min_blocks - 1) + 1]
        top = a + (int(np.nanargmax(first_blocks)) if np.isfinite(first_blocks).any() else 0)
        half = level[a] + 0.5 * (bm[top] - level[a])
        lo = max(0, (a - 1) * block)
        hi = min(y.size, (top + 1) * block)
        # the climb leaves the noise about the level - or about the loss just before, where
        # that is higher (a loss above its trend)
        pre_points = u[max(0, lo - block):lo]
        pre_points = pre_points[np.isfinite(pre_points)]
        base = max(float(level[a]), float(np.median(pre_points)) if pre_points.size else -np.inf)
        onset = a * block
        for p in range(lo, hi):
            seg = u[p:p + block]
            seg = seg[np.isfinite(seg)]
            if seg.size and np.median(seg) >= half:
                # the first of these points half way up (one is, the median being so), then
                # back to where the climb starts
                q = p + int(np.flatnonzero(u[p:p + block] >= half)[0])
                onset = _climb_start(u, q, base + CLIMB_SIGMAS * sig, lo)
                break
        # a ramp that began blocks before its first elevated block: where the climb starts
        known = np.flatnonzero(np.isfinite(level[:a]))  # blocks with a healthy level before
        turn = _hinge_block(bm, max(int(known[0]) if known.size else a, a - lag), a, b,
                            float(spread[a]))
        if turn < a - 1:
            onset = turn * block
        last = min(y.size - 1, (b + 1) * block - 1)
        if b == nb - 1:
            last = y.size - 1
        res.append((int(onset), int(a * block), int(last)))
    return res


def _hinge_block(bm: np.ndarray, lo: int, first: int, last: int, noise: float,
                 z: float = 3.0) -> int:
    """The block from which the block medians ``bm[lo:]`` turn from a level to a straight
    climb up to the highest block of ``[first, last]`` within as many blocks after ``first`` as
    ``lo`` lies before it (a ramp that levels off is a line up to where it levels off; the best
    continuous hinge, least squares over the candidate turns at once). ``first - 1`` unless the
    earlier turn fits better than a climb from ``first - 1`` by ``z`` standard errors
    (``noise``: a block median's), the line follows the climb to within ``z`` of them (root
    mean square) and the blocks it calls climbing stand a standard error above the level
    before them: ordinary wander before a jump is no ramp, and a blow-up, which no line
    follows, or a rise that is quick and then flat keeps the onset of its jump."""
    hi = min(last, first + (first - lo))
    seg = bm[first:hi + 1]
    if first - 1 <= lo or not np.isfinite(seg).any():
        return first - 1
    top = first + int(np.nanargmax(seg))
    t = np.arange(lo, top + 1)
    y = bm[lo:top + 1]
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return first - 1
    t, y = t[ok], y[ok]
    cands = np.arange(lo, first)  # the last flat block (the line starts after it)
    gain = hinge_gain(t, y, cands)
    j = int(np.argmax(gain))
    k = int(cands[j])
    # the hinge at k: its squared error against the one at first - 1, and its climb's residuals
    u = np.maximum(0.0, t - k).astype(np.float64)
    du = u - u.mean()
    b = max(0.0, float((du * (y - y.mean())).sum() / (du * du).sum())) if du.any() else 0.0
    r = (y - y.mean() - b * du)[t > k]
    rms = float(np.sqrt(np.mean(r * r))) if r.size else np.inf
    if gain[j] - gain[-1] < (z * noise) ** 2 or rms > z * noise:
        return first - 1
    # the blocks it calls climbing already stand above the level before them (a rise that
    # is quick and then flat fits a line badly, and its best hinge falls early)
    between = bm[k + 1:first]
    between = between[np.isfinite(between)]
    pre = bm[lo:k + 1]
    if between.size == 0 or float(np.median(between)) - float(np.nanmedian(pre)) < noise:
        return first - 1
    return k + 1




def _trend_level(bm: np.ndarray, healthy: np.ndarray, block: int, window: int, gap: int,
                 floor: float) -> tuple[np.ndarray, np.ndarray]:
    """The trend of the healthy block medians ``bm`` at each block (NaN where fewer than
    ``TREND_MIN`` of the last ``window`` blocks ending ``gap`` blocks before it are healthy) and
    its spread (floored at ``floor``): module doc, "A falling loss". Abscissa: the log of the
    point index, relative to the block's own. Past ``LOG_WINDOWS`` windows into the run the log
    index is straight over a window (to 3 %), and the index itself is used: then every sum is
    a convolution with a fixed kernel (exact, and fast)."""
    nb = bm.size
    ok = healthy & np.isfinite(bm)
    if nb <= gap or not ok.any():
        return np.full(nb, np.nan), np.full(nb, np.nan)
    w = ok.astype(np.float64)
    ref = float(np.median(bm[ok]))  # (sums of squares of small numbers)
    y = np.where(ok, bm - ref, 0.0)
    sums = np.full((6, nb), np.nan)  # n, mean x, mean y, Sxx, Sxy, Syy (centred)
    k_log = min(nb, max(gap, LOG_WINDOWS * window))
    if k_log > gap:  # early: log point index; block k's window gathered as row k
        ks = np.arange(gap, k_log)
        j = ks[:, None] - gap - np.arange(window)[None, :]
        jc = np.maximum(j, 0)  # (a window cut short at the start: weight 0 there)
        wj = np.where(j >= 0, w[jc], 0.0)
        x = np.log((np.arange(k_log) + 0.5) * block + 1.0)
        xc = x[jc] - x[ks, None]
        yj = y[jc]
        n = wj.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            xm = (wj * xc).sum(axis=1) / n
            ym = (wj * yj).sum(axis=1) / n
            dx = (xc - xm[:, None]) * wj
            dy = (yj - ym[:, None]) * wj
        sums[:, gap:k_log] = (n, xm, ym, (dx * dx).sum(axis=1), (dx * dy).sum(axis=1),
                              (dy * dy).sum(axis=1))
    if k_log < nb:  # later: the index, window sums as convolutions (block k - gap - i at -gap - i)
        t = -(gap + np.arange(window, dtype=np.float64))
        ones = np.ones(window)

        def wsum(v: np.ndarray, kern: np.ndarray) -> np.ndarray:
            return np.convolve(v, kern)[k_log - gap:nb - gap]

        n, st, stt = wsum(w, ones), wsum(w, t), wsum(w, t * t)
        sy, syy, sty = wsum(y, ones), wsum(y * y, ones), wsum(y, t)
        with np.errstate(invalid="ignore", divide="ignore"):
            sums[:, k_log:] = (n, st / n, sy / n, stt - st * st / n, sty - st * sy / n,
                               syy - sy * sy / n)
    n, xm, ym, sxx, sxy, syy = sums
    level = np.full(nb, np.nan)
    spread = np.full(nb, np.nan)
    use = np.isfinite(n) & (n >= TREND_MIN)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(sxx > 0, sxy / sxx, 0.0)
        fall = (b < 0) & (sxx > 0)
        # the scatter about the line, or about the mean where a rising slope is held flat
        s2 = np.where(fall, np.maximum(syy - b * sxy, 0.0) / (n - 2), syy / (n - 1))
        se_b = np.sqrt(s2 / sxx)
        keep = 1.0 / (1.0 + (SHRINK_T * se_b / b) ** 2)  # t^2 / (t^2 + SHRINK_T^2)
        bs = np.where(fall, b * keep, 0.0)
        pred_var = s2 / n + np.where(fall, (xm * se_b) ** 2, 0.0)
        level[use] = ref + ym[use] - bs[use] * xm[use]  # at the block's own abscissa, 0
        spread[use] = np.fmax(np.sqrt(s2[use] + pred_var[use]), floor)
    return level, spread


def _climb_start(u: np.ndarray, q: int, bar: float, lo: int) -> int:
    """Back from point ``q`` (not before ``lo``, nor onto a point not logged finite) to where
    the climb starts: each step back is taken while the median of the ``CLIMB_WINDOW`` points
    ending at the current point is above ``bar`` (strictly: a loss with no noise stands at its
    bar all along before a jump); the point where that stops."""
    j = q
    while j - 1 >= lo and np.isfinite(u[j - 1]):
        w = u[max(0, j - CLIMB_WINDOW + 1):j + 1]
        w = w[np.isfinite(w)]
        if not w.size or np.median(w) <= bar:
            break
        j -= 1
    return j


def _longest(mask: np.ndarray) -> int:
    """Length of the longest run of True in ``mask``."""
    return max((b - a + 1 for a, b in runs_of(mask)), default=0)
