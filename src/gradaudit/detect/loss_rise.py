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
- Two passes: blocks inside the first pass's events do not enter the level of the second.
- Onset: the first point of the first elevated block's neighbourhood from which the median of
  the next ``block`` points is at least half the block's excess above the level.
"""

from __future__ import annotations

import warnings

import numpy as np

from gradaudit.detect._common import diff_sigma, runs_of, trailing_median_before

ID = "loss-rise"
BLOCK = 8  # logged points per block (default); a rise's onset is known to about a block


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

    def detect(hmask: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        level, spread = trailing_median_before(bm, hmask, window, min_history)
        spread = np.fmax(spread, floor_b)
        e = bm - level
        rel_thr = np.log1p(rel) if positive else rel * np.abs(level)
        with np.errstate(invalid="ignore"):
            trig = np.isfinite(e) & (e >= np.maximum(z * spread, rel_thr))
            elev = np.isfinite(e) & (e >= np.maximum(z_lo * spread, 0.5 * rel_thr))
        out = []
        for a, b in runs_of(elev | trig):
            t = trig[a:b + 1]
            if t.any() and _longest(t) >= min_blocks:
                out.append((a, b))
        return out, level, e

    ev1, _, _ = detect(hb)
    h2 = hb.copy()
    for a, b in ev1:
        h2[a:b + 1] = False
    ev, level, e = detect(h2)
    res = []
    for a, b in ev:
        lvl = level[a]
        half = lvl + 0.5 * e[a]
        lo = max(0, (a - 1) * block)
        hi = min(y.size, (a + 1) * block)
        onset = a * block
        for p in range(lo, hi):
            seg = u[p:p + block]
            seg = seg[np.isfinite(seg)]
            if seg.size and np.median(seg) >= half:
                onset = p
                break
        last = min(y.size - 1, (b + 1) * block - 1)
        if b == nb - 1:
            last = y.size - 1
        res.append((int(onset), int(a * block), int(last)))
    return res


def _longest(mask: np.ndarray) -> int:
    """Length of the longest run of True in ``mask``."""
    best = cur = 0
    for v in mask.tolist():
        cur = cur + 1 if v else 0
        best = max(best, cur)
    return best
