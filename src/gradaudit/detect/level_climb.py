"""``level-climb``: a grad norm whose level keeps climbing to the end of the run.

A run that diverges slowly (a learning rate a little too high, weights growing step by step)
raises its grad norm a few per cent a step for hundreds of steps. Every trailing level follows
such a climb, so no point of it stands out against the level before it, and a level shift is
a step, not a slope: the detectors above see nothing while the norm grows a thousandfold.

The climb is read from block medians of ``log g`` (blocks of ``block`` logged points, so one
spike does not move them). It is a climb to the end when:

- the highest block median is among the last ``max(top_blocks, 5 %)`` blocks and the ones
  after it are all within ``top_ratio`` (2) x of it: the norm is at its top when the run ends,
  not back down after a bump (the blocks before it may be further down: a climb of 3 % a step
  rises more than 2x over three blocks);
- the block medians over the last fifth of the run still rise, their least-squares slope at
  least ``3`` standard errors above zero: a norm that rose early and has stayed flat since
  (a zero-initialised layer waking up) is no climb;
- the median of the last ``top_blocks`` stands at least ``ratio`` (10) x above the level
  where the climb began (the median of the 10 blocks up to its onset).

Its onset is where ``log g`` turns from a level to a straight climb towards the top: the best
continuous hinge fit (least squares, over every block from the lowest before the top), then the
same fit over the points within three blocks of that turn. The engine reads a climb that left
the loss unharmed as a ``level_shift`` (a warning), and one during which the logged learning
rate fell by half or more (the rise of the grad norm in a schedule's cool-down, common with
weight decay) as no episode at all.
"""

from __future__ import annotations

import numpy as np

from gradaudit.detect._common import finite_argmax, hinge_gain

ID = "level-climb"
BLOCK = 8  # logged points per block (default); a climb's onset is known to about a block


def level_climb(
    log_g: np.ndarray,
    *,
    block: int = BLOCK,
    ratio: float = 10.0,
    top_ratio: float = 2.0,
    top_blocks: int = 3,
    z: float = 3.0,
) -> tuple[int, int, float] | None:
    """``(onset, top, base)`` of a climb that lasts to the end of ``log_g`` (point indices of
    where it starts and of its highest point, and the log level it climbed from), or None
    (module doc). NaN points (missing, non-finite, the lr warm-up) are left out."""
    x = np.asarray(log_g, dtype=np.float64)
    nb = x.size // block
    if nb < 4 * top_blocks:
        return None
    offset = x.size - nb * block  # blocks from the end: the last one holds the last points
    tail = x[offset:].reshape(nb, block)
    fin = np.isfinite(tail)
    if fin.all():  # the usual case, and numpy's median is much faster than its nanmedian
        bm = np.median(tail, axis=1)
    else:
        ok = fin.sum(axis=1) * 2 >= block
        if ok.sum() < 4 * top_blocks or not ok[-top_blocks:].all():
            return None
        bm = np.full(nb, np.nan)
        bm[ok] = np.nanmedian(tail[ok], axis=1)
    top_b = int(np.nanargmax(bm))
    if top_b < nb - max(top_blocks, nb // 20) or \
            np.any(bm[top_b:] < bm[top_b] - np.log(top_ratio)):
        return None  # the top is not at the end, or the norm came back down from it
    if not _still_rising(bm[-max(2 * top_blocks, nb // 5):], z):
        return None
    low_b = int(np.nanargmin(bm[:top_b]))
    if top_b - low_b < 2:
        return None
    tb = np.flatnonzero(np.isfinite(bm[low_b:top_b + 1])) + low_b
    turn = int(tb[int(np.argmax(hinge_gain(tb, bm[tb], tb[:-1])))]) if tb.size > 2 else low_b
    base_b = float(np.nanmedian(bm[max(0, turn - 9):turn + 1]))
    if float(np.median(bm[-top_blocks:])) - base_b < np.log(ratio):
        return None
    # to the point: the same fit over the points up to the top, the turn looked for within
    # three blocks of the blocks' one
    t = np.arange(offset + low_b * block, offset + (top_b + 1) * block)
    t = t[np.isfinite(x[t])]
    lo_c = max(int(t[0]), offset + (turn - 3) * block)
    hi_c = min(int(t[-1]), offset + (turn + 4) * block)
    onset = lo_c
    if hi_c > lo_c:
        cands = np.arange(lo_c, hi_c)
        onset = int(cands[int(np.argmax(hinge_gain(t, x[t], cands)))]) + 1
    top = finite_argmax(x, onset)
    base = float(np.nanmedian(x[max(0, onset - 10 * block):onset])) if onset > 0 else base_b
    return onset, top, base


def _still_rising(y: np.ndarray, z: float) -> bool:
    """Whether the least-squares slope of ``y`` (NaN left out) is ``z`` standard errors above
    zero."""
    t = np.flatnonzero(np.isfinite(y)).astype(np.float64)
    if t.size < 4:
        return False
    v = y[np.isfinite(y)]
    dt = t - t.mean()
    sxx = float((dt * dt).sum())
    b = float((dt * (v - v.mean())).sum()) / sxx
    r = v - v.mean() - b * dt
    se = float(np.sqrt((r * r).sum() / (t.size - 2) / sxx))
    return b > z * se
