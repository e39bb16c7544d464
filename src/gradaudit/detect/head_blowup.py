"""``head-blowup``: a run that blew up in its first steps, before any healthy level, for good.

The other detectors judge a point against the run's own healthy level, which needs
``min_history`` points (after the lr warm-up) to exist. A run whose loss blows up within those
first points and never comes back has no healthy stretch at all: every later point is the
broken model's, and against that level nothing stands out (an SGD RNN at 4x its stable lr:
loss 4.9 at step 0, 301 at step 4, 30 for the rest of the run, grad norm 0.53 -> 313 -> 3).

The start is the loss's own first points: the lowest of its first ``START_POINTS`` finite
values (a blow-up may begin at the second point), > 0. The run blew up in its head when the
loss's running median of ``SMOOTH`` points reached ``FACTOR`` x the start within the head and
never came back under ``BACK`` x the start after that, to the run's end: a training loss that
never again came near the loss it started from was not trained (one that slowly trained back
down to 1.7x its start after a blow-up to 20x it is as broken as one that stayed there).
Where a grad norm is logged it must have risen too (``spike_ratio`` x its own start, the lowest
of its first ``START_POINTS`` finite values > 0, within the head): a loss rise the grad norm
took no part in is no gradient explosion, and the other detectors' business. Onset: where the
climb starts - back from the first point over the bar over the points rising into it that stand
out from the start (``CLIMB`` x it in the loss, the square root of ``spike_ratio`` x it in the
grad norm) - the earlier of the loss's and the grad norm's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

ID = "head-blowup"
START_POINTS = 3  # the start is the lowest of the first this many finite values
SMOOTH = 5  # running median width of the loss (points)
FACTOR = 2.0  # the loss reached this multiple of its start in the head
BACK = 1.2  # ... and never came back under this multiple of it after that
CLIMB = np.sqrt(FACTOR)  # a loss point this far over its start, rising into the blow-up, is in it


@dataclass(frozen=True)
class HeadBlowup:
    """Where and how a run blew up in its head (indices into the series given)."""

    onset_step: int
    loss_start: float
    loss_peak_step: int
    loss_peak: float
    loss_end: float  # the median of the loss's last tenth
    grad_start: float | None = None  # None: no grad norm logged in the head
    grad_peak_step: int | None = None
    grad_peak: float | None = None


def _start(v: np.ndarray) -> float | None:
    """The lowest of the first ``START_POINTS`` finite values > 0, or None."""
    ok = v[np.isfinite(v) & (v > 0)][:START_POINTS]
    return float(ok.min()) if ok.size else None


def _climb_start(v: np.ndarray, bar: float, first_over: int) -> int:
    """The index where the rise to ``first_over`` begins: back over the points before it that
    are above ``bar`` and rising to it."""
    i = first_over
    while i > 0 and np.isfinite(v[i - 1]) and bar < v[i - 1] < v[i]:
        i -= 1
    return i


def head_blowup(ls: np.ndarray, lv: np.ndarray, head_end: int,
                gs: np.ndarray | None = None, g: np.ndarray | None = None, *,
                spike_ratio: float = 3.0) -> HeadBlowup | None:
    """The run's blow-up in its head (steps up to ``head_end``, where the detectors' healthy
    level begins), or None (module doc). ``ls``/``lv``: loss steps and values, ``gs``/``g``:
    the grad norm's, sorted by step."""
    fin = np.isfinite(lv)
    s, v = ls[fin], lv[fin]
    if s.size < 4 * SMOOTH:
        return None
    start = _start(v)
    if start is None:
        return None
    sm = median_filter(v, size=SMOOTH, mode="nearest")
    over = np.flatnonzero(sm >= FACTOR * start)
    if not over.size or s[over[0]] > head_end:
        return None
    i_up = int(over[0])
    tail = v[-max(SMOOTH, v.size // 10):]
    end = float(np.median(tail))
    if (sm[i_up:] < BACK * start).any():
        return None  # it came back
    i_peak = i_up + int(np.argmax(v[i_up:][s[i_up:] <= head_end]))
    onset = int(s[_climb_start(v, CLIMB * start, int(np.argmax(v > FACTOR * start)))])
    found = HeadBlowup(onset, start, int(s[i_peak]), float(v[i_peak]), end)
    if gs is None or g is None or not (np.isfinite(g) & (g > 0)).any():
        return found
    g_start = _start(g)
    head = gs <= head_end
    if g_start is None or not head.any():
        return None
    hg = np.where(np.isfinite(g[head]), g[head], -np.inf)
    j_peak = int(np.argmax(hg))
    if not hg[j_peak] >= spike_ratio * g_start:
        return None  # the grad norm took no part: no gradient explosion
    j_over = int(np.argmax(hg >= spike_ratio * g_start))
    g_onset = int(gs[_climb_start(g, np.sqrt(spike_ratio) * g_start, j_over)])
    return HeadBlowup(min(g_onset, onset), start, found.loss_peak_step, found.loss_peak, end,
                      g_start, int(gs[j_peak]), float(g[j_peak]))
