"""``head-blowup``: a run that blew up in its first steps, before any healthy level.

The other detectors judge a point against the run's own healthy level, which needs
``min_history`` points (after the lr warm-up) to exist. A run whose loss blows up within those
first points and never comes back has no healthy stretch at all: every later point is the
broken model's, and against that level nothing stands out (an SGD RNN at 4x its stable lr:
loss 4.9 at step 0, 301 at step 4, 30 for the rest of the run, grad norm 0.53 -> 313 -> 3).

The start is the lowest of the loss's first ``START_POINTS`` finite values (a blow-up may begin
at the second point: an AdamW GPT at lr 0.1 went 3.7, 18.9, 54 from its first step); none where
the loss is <= 0 anywhere in the head (a loss that may cross zero, a WGAN's, has no scale to
compare with). A blow-up in the head: the loss's running median of ``SMOOTH`` points reached
``FACTOR`` x the start within the head, and the loss itself ``PEAK`` x the start there - a blow-
up, not a rise (a GAN's generator loss or an RL loss grows 2-4x at the start by design) - with
the grad norm, where one is logged, rising ``spike_ratio`` x its own start (the lowest of its
first ``START_POINTS`` finite values) no later than the loss's peak and reaching
``explosion_ratio`` x it in the head (a loss rise the grad norm took no part in is no gradient
explosion: an auxiliary loss switched on). Without a grad norm the loss must reach
``LOSS_ONLY_PEAK`` x its start (a GAN's generator loss logged alone reached 6.6x), and the start
is the median of its first values (one artefact first value, a mis-averaged first logging
interval, made a healthy run's start 1/50 of its loss). It came back (``back_step``) where the
running median is first under ``BACK`` x the start again; a run that never came back, to its
end, never trained from there (one that slowly trained back down to 1.7x its start after a blow-
up to 20x it is as broken as one that stayed there).

Onset: where the climb starts - back from the running median's crossing over the points rising
into it that stand out from the start (``CLIMB`` x it in the loss, the square root of
``spike_ratio`` x it in the grad norm) - the earlier of the loss's and the grad norm's.

Known limit: a run logged so sparsely that its first logged loss is already the broken
model's (a blow-up within the first logging interval) has no start to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

ID = "head-blowup"
START_POINTS = 3  # the start is the lowest of the first this many finite values
SMOOTH = 5  # running median width of the loss (points)
FACTOR = 2.0  # the running median reached this multiple of its start in the head
PEAK = 5.0  # ... and the loss itself this multiple
LOSS_ONLY_PEAK = 10.0  # ... or this one, where no grad norm is logged
BACK = 1.2  # it came back where the running median is under this multiple of it again
CLIMB = np.sqrt(FACTOR)  # a loss point this far over its start, rising into the blow-up, is in it


@dataclass(frozen=True)
class HeadBlowup:
    """Where and how a run blew up in its head (steps and values)."""

    onset_step: int
    loss_start: float
    loss_peak_step: int
    loss_peak: float
    loss_end: float  # the median of the loss's last tenth
    back_step: int | None  # where it came back (None: never, to the run's end)
    grad_start: float | None = None  # None: no grad norm logged in the head
    grad_peak_step: int | None = None
    grad_peak: float | None = None


def _start(v: np.ndarray, lowest: bool = True) -> float | None:
    """The lowest (else the median) of the first ``START_POINTS`` finite values, or None where
    one is <= 0."""
    first = v[np.isfinite(v)][:START_POINTS]
    if not first.size or not (first > 0).all():
        return None
    return float(first.min() if lowest else np.median(first))


def _climb_start(v: np.ndarray, bar: float, first_over: int) -> int:
    """The index where the rise to ``first_over`` begins: back over the points before it that
    are above ``bar`` and rising to it."""
    i = first_over
    while i > 0 and np.isfinite(v[i - 1]) and bar < v[i - 1] < v[i]:
        i -= 1
    return i


def head_blowup(ls: np.ndarray, lv: np.ndarray, head_end: int,
                gs: np.ndarray | None = None, g: np.ndarray | None = None, *,
                spike_ratio: float = 3.0, explosion_ratio: float = 10.0) -> HeadBlowup | None:
    """The run's blow-up in its head (steps up to ``head_end``, where the detectors' healthy
    level begins), or None (module doc). ``ls``/``lv``: loss steps and values, ``gs``/``g``:
    the grad norm's, sorted by step."""
    fin = np.isfinite(lv)
    s, v = ls[fin], lv[fin]
    if s.size < 4 * SMOOTH:
        return None
    has_grad = gs is not None and g is not None and bool((np.isfinite(g) & (g > 0)).any())
    # (without a grad norm to rise with it, one artefact first value - a mis-averaged first
    # logging interval, 1/50 of the loss - must not be the start: the median of the three)
    start = _start(v, lowest=has_grad)
    if start is None:
        return None
    n_head = int(np.searchsorted(s, head_end, side="right"))
    if (v[:n_head] <= 0).any():
        return None
    sm = median_filter(v, size=SMOOTH, mode="nearest")
    over = np.flatnonzero(sm >= FACTOR * start)
    if not over.size or s[over[0]] > head_end:
        return None
    i_up = int(over[0])
    i_peak = i_up + int(np.argmax(v[i_up:max(n_head, i_up + 1)]))
    if v[i_peak] < (PEAK if has_grad else LOSS_ONLY_PEAK) * start:
        return None  # a rise, not a blow-up
    back = np.flatnonzero(sm[i_up:] < BACK * start)
    back_step = int(s[i_up + back[0]]) if back.size else None
    end = float(np.median(v[-max(SMOOTH, v.size // 10):]))
    onset = int(s[_climb_start(v, CLIMB * start, i_up)])
    found = HeadBlowup(onset, start, int(s[i_peak]), float(v[i_peak]), end, back_step)
    if not has_grad:
        return found
    g_start = _start(g[g > 0])
    head = gs <= head_end
    if g_start is None or not head.any():
        return None
    hg = np.where(np.isfinite(g[head]), g[head], -np.inf)
    rose = np.flatnonzero(hg >= spike_ratio * g_start)
    # the grad norm rose into the blow-up (no later than the loss's peak) and blew up with it
    if not rose.size or gs[rose[0]] > found.loss_peak_step or \
            not hg[rose[0]:].max() >= explosion_ratio * g_start:
        return None
    j_peak = int(rose[0] + np.argmax(hg[rose[0]:]))
    g_onset = int(gs[_climb_start(g, np.sqrt(spike_ratio) * g_start, int(rose[0]))])
    return HeadBlowup(min(g_onset, onset), start, found.loss_peak_step, found.loss_peak, end,
                      back_step, g_start, int(gs[j_peak]), float(g[j_peak]))
