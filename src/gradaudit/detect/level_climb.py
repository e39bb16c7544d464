"""``level-climb``: a grad norm whose level keeps climbing to the end of the run.

A run that diverges slowly (a learning rate a little too high, weights growing step by step)
raises its grad norm a few per cent a step for hundreds of steps. Every trailing level follows
such a climb, so no point of it stands out against the level before it, and a level shift is
a step, not a slope: the detectors above see nothing while the norm grows a thousandfold.

The climb is read from block medians of ``log g`` (blocks of ``block`` logged points, so one
spike does not move them). It is a climb when the last block median stands at least ``ratio``
(10) x above the lowest block median before it (the healthy level it climbed from), and the
last ``top_blocks`` (3) block medians are all within ``top_ratio`` (2) x of the highest block
median: the norm is still at its top when the run ends, not back down after a bump. Its onset
is where the block medians turn from flat to a straight climb towards that top (a hinge fit,
least squares over the candidate turns between the lowest block and the top), refined by the
same fit over the points around that turn.
"""

from __future__ import annotations

import numpy as np

ID = "level-climb"
BLOCK = 8  # logged points per block (default); a climb's onset is known to about a block


def level_climb(
    log_g: np.ndarray,
    *,
    block: int = BLOCK,
    ratio: float = 10.0,
    top_ratio: float = 2.0,
    top_blocks: int = 3,
) -> tuple[int, int, float] | None:
    """``(onset, top, base)`` of a climb that lasts to the end of ``log_g`` (point indices of
    where it starts and of its highest point, and the healthy log level it climbed from), or
    None (module doc). NaN points (missing, non-finite, the lr warm-up) are left out."""
    x = np.asarray(log_g, dtype=np.float64)
    nb = x.size // block
    if nb < top_blocks + 2:
        return None
    # blocks from the end, so that the last block holds the run's last points
    tail = x[x.size - nb * block:].reshape(nb, block)
    fin = np.isfinite(tail)
    if fin.all():  # the usual case, and numpy's median is much faster than its nanmedian
        bm = np.median(tail, axis=1)
    else:
        ok = fin.sum(axis=1) * 2 >= block
        if ok.sum() < top_blocks + 2 or not ok[-top_blocks:].all():
            return None
        bm = np.full(nb, np.nan)
        bm[ok] = np.nanmedian(tail[ok], axis=1)
    top_b = int(np.nanargmax(bm))
    last = bm[-top_blocks:]
    if np.any(last < bm[top_b] - np.log(top_ratio)):
        return None  # the norm came back down: an episode, not a climb to the end
    low_b = int(np.nanargmin(bm[:nb - top_blocks]))
    if bm[-1] - bm[low_b] < np.log(ratio):
        return None
    turn = _hinge(np.arange(nb), bm, range(low_b, top_b))
    offset = x.size - nb * block
    # to the point: the same fit over the points up to the top, with the turn looked for
    # within three blocks of the blocks' one
    t = np.arange(offset + low_b * block, offset + (top_b + 1) * block)
    cands = range(max(int(t[0]), offset + (turn - 3) * block),
                  min(int(t[-1]), offset + (turn + 4) * block))
    onset = _hinge(t, x[t], cands) + 1
    base = float(np.nanmedian(x[max(0, onset - 10 * block):onset]))
    seg = x[onset:]
    top = onset + int(np.nanargmax(np.where(np.isfinite(seg), seg, -np.inf)))
    return onset, top, base


def _hinge(t: np.ndarray, y: np.ndarray, cands: range) -> int:
    """The ``k`` in ``cands`` where ``y`` is best fitted (least squares) by a level up to ``k``
    and a straight line up from it: ``y = a + b max(0, t - k)``, ``b >= 0``. All candidates at
    once, from suffix sums (linear in the points)."""
    keep = np.isfinite(y)
    t, y = t[keep].astype(np.float64), y[keep].astype(np.float64)
    k = np.arange(cands.start, cands.stop, dtype=np.float64)
    if k.size == 0 or t.size < 3:
        return cands.start
    y = y - y.mean()  # centred: the level a absorbs the mean

    def suffix(v: np.ndarray) -> np.ndarray:  # sums over t > k, for every k
        c = np.concatenate((np.cumsum(v[::-1])[::-1], [0.0]))
        return c[np.searchsorted(t, k, side="right")]

    n_up, s_t, s_tt = suffix(np.ones_like(t)), suffix(t), suffix(t * t)
    s_ty = suffix(t * y)
    s_y = suffix(y)
    su = s_t - k * n_up  # sums of u = t - k over t > k
    suu = s_tt - 2 * k * s_t + k * k * n_up
    suy = s_ty - k * s_y
    var_u = suu - su * su / t.size  # sum of squared deviations of u
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where((var_u > 0) & (suy > 0), suy * suy / var_u, 0.0)  # b >= 0
    return int(k[int(np.argmax(gain))])
