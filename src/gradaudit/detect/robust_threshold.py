"""``robust-threshold``: the grad norm against a trailing robust level of its healthy past.

For every logged point ``i`` the healthy level ``b(i)`` is the median of ``log g`` over the last
``window`` *healthy* points before ``i`` (points flagged ``healthy=False`` - already inside an
episode, or non-finite - are left out), and the spread ``s(i)`` is the MAD of those points,
scaled to a normal sigma and floored at ``min_spread``. The point's excess ``d = log g - b``
gives the ratio ``g / exp(b)`` and the robust z-score ``d / s``.

- ``trigger``: ``d >= max(log(spike_ratio), z_hi * s)`` - clearly anomalous (default 3x and 5
  sigma: a healthy log-normal grad norm with sigma 0.1-0.3 almost never gets there).
  A trigger must also reach ``tail_factor`` (2) x the run's own spike size: the 99th percentile
  of ``d`` over its healthy points (>= 100 of them), leaving out stretches of 3 or more
  consecutive triggers and of 10 or more points above ``band_ratio`` (lasting events and ramps
  are no part of the run's healthy spikiness; scattered one- or two-point spikes are). The
  spikiness of a healthy but spiky run (a W&B bucket max, a small batch) is so learned from
  the run itself; for a log-normal grad norm the 99th percentile is 2.3 sigma, so this binds
  only on heavy tails. An *extreme* point - ``extreme_ratio`` (10) x the healthy level and above
  the run's own spike size - triggers even where the run spikes a lot: a constantly spiky run
  can still explode. "Above" is strict: in a run whose spikes are its normal regime (say 20 %
  of the steps at 50x), the 99th percentile *is* the usual spike, and a spike of that size is
  no event. And an extreme point at ``tail_factor`` x the run's own spike size triggers even
  under ``z_hi`` robust sigmas: a transformer whose grad norm varies so much (robust log sigma
  0.85) that a 40x spike is 4.3 sigma, while its own 99th percentile is 5x - that spike cost
  the loss +16 % over the next 200 steps in a branch that clipped it.
- ``sustain`` (5): a few consecutive moderately high points also trigger - every one of
  ``sustain`` consecutive points at least ``sqrt(spike_ratio)`` (1.7x) and their mean excess at
  ``spike_ratio``, at ``z_hi`` standard errors of a 5-point mean and at ``tail_factor`` x the
  run's own typical maximum of 5-point means (``_common.sustained``). A loss-scaling bug for
  five steps (3-6x each) in a heavy-tailed run whose scattered single spikes reach 6x passes
  no single-point test, and no healthy stretch of that run looks like it.
- ``elevated``: ``d >= max(log(band_ratio), z_lo * s)`` - outside the healthy band (default 1.5x
  and 2 sigma); used to extend an episode from its trigger to where it ends (hysteresis).
- ``first points``: before ``min_history`` healthy points exist there is no level, and a point
  triggers only where it stands ``extreme_ratio`` x above each of the last ``window`` points
  before it (healthy ones and the ``lead``; at least ``first_min`` of them), or ``extreme_ratio``
  x above their median and ``spike_ratio`` x above each of them (only after an lr warm-up, the
  ``lead``, of ``first_min`` points or more, and the median of the points after it, at least
  ``first_min`` of them: the warm-up's grad norms, under a rising lr, are another regime, and a
  run's very first points with no warm-up known are its own start-up, where layers waking up from
  zero lift the grad norm 10-100x over a few logged points); points ``band_ratio`` x above them
  next to such a trigger are elevated. A grad norm starts high and settles, or climbs gently as
  training finds its feet; one that tops its whole recent past tenfold in a step is an episode
  however young the run, its severity following the loss as every episode's (an unclipped RNN
  whose grad norm went 1800x at step 27, six steps after its lr warm-up, cost the loss 5x for
  hundreds of steps). So is one that stands tenfold above where its recent past sits after a few
  steps of climbing: the same kind of RNN climbed 3-8x over seven steps, then went 49x at step 38
  (under 6x its highest point before), and its loss rose 10x (against the maximum alone, 23
  harmful events in the first 65 steps were missed over the benchmark's six pools; with the median
  too, 8 of them are found, 4 as explosions, with no false alarm more). ``lead``: the run's first
  points (an lr warm-up) are no healthy level and never trigger, but they are the first points'
  past.

The spread is only computed where it can matter (``d >= log(min(band_ratio, spike_ratio))``);
``spread`` and ``z`` are NaN elsewhere. Given the result for a larger healthy mask (``prior``),
only the stretches after the removed points are recomputed (same result, much faster).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

from gradaudit.detect._common import (
    retrail,
    runs_of,
    sustained,
    trailing_median_before,
    typical_max,
)

ID = "robust-threshold"


@dataclass
class RobustLevel:
    """Per-point output of :func:`robust_threshold` (arrays of the input's length)."""

    level: np.ndarray  # healthy level b, in log g (NaN while there is too little history)
    spread: np.ndarray  # robust sigma of log g around b
    ratio: np.ndarray  # g / exp(b)
    z: np.ndarray  # (log g - b) / spread
    trigger: np.ndarray  # bool
    elevated: np.ndarray  # bool
    use: np.ndarray | None = None  # the points the level was computed from
    past: np.ndarray | None = None  # the first points' past: ``use`` and the lead


def robust_threshold(
    log_g: np.ndarray,
    *,
    healthy: np.ndarray | None = None,
    window: int = 50,
    spike_ratio: float = 3.0,
    z_hi: float = 5.0,
    band_ratio: float = 1.5,
    z_lo: float = 2.0,
    min_history: int = 8,
    min_spread: float = 0.05,
    prior: RobustLevel | None = None,
    tail_factor: float = 2.0,
    extreme_ratio: float = 10.0,
    sustain: int = 5,
    first_min: int = 5,
    lead: int = 0,
) -> RobustLevel:
    """Flag points whose grad norm is far above the trailing healthy level (see module doc).

    ``log_g``: natural log of the grad norm, NaN where missing/non-finite. ``healthy``: which
    points may enter the level (default: all finite points). ``window``, ``min_history``: logged
    points. ``prior``: the result for a healthy mask that contains this one (reused where the
    two agree). ``lead``: the first points, the first points' past only (module doc). Returns a
    :class:`RobustLevel`.
    """
    x = np.asarray(log_g, dtype=np.float64)
    use = np.isfinite(x) if healthy is None else (np.asarray(healthy, bool) & np.isfinite(x))
    past = use.copy()  # the first points' past: the healthy points and the lead
    past[:lead] = np.isfinite(x[:lead])
    use[:lead] = False
    gate = np.log(min(band_ratio, spike_ratio))

    def spread_at(lvl: np.ndarray, off: int) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return x[off:off + lvl.size] - lvl >= gate

    if prior is not None and prior.use is not None and not (use & ~prior.use).any():
        level, spread = retrail(x, prior.use, use, prior.level, prior.spread, window,
                                min_history, spread_at=spread_at)
    else:
        level, spread = trailing_median_before(x, use, window, min_history,
                                               spread_at=spread_at)
    spread = np.maximum(spread, min_spread)  # NaN stays NaN
    d = x - level
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.exp(d)
        z = d / spread
        hi = np.maximum(np.log(spike_ratio), z_hi * spread)
        lo = np.maximum(np.log(band_ratio), z_lo * spread)
        trigger = np.isfinite(d) & (d >= hi)
        elevated = np.isfinite(d) & (d >= lo)
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(d) & (d >= np.log(extreme_ratio))
    if tail_factor > 0 and (trigger.any() or huge.any()):
        with np.errstate(invalid="ignore"):
            high = np.isfinite(d) & (d >= np.log(band_ratio))
        excl = np.zeros_like(high)
        for a, b in runs_of(high):
            if b - a + 1 >= 10:
                excl[a:b + 1] = True
        tmax = typical_max(d, use & ~excl, trigger)
        with np.errstate(invalid="ignore"):
            extreme = huge & (d > tmax)
        trigger &= (d >= tail_factor * tmax) | extreme
        if tmax > 0:  # beyond twice the run's own spikiness, however noisy its level
            with np.errstate(invalid="ignore"):
                trigger |= huge & (d >= tail_factor * tmax)
    if sustain > 1:
        trigger |= sustained(d, use, spread, sustain, np.log(spike_ratio), z_hi, tail_factor,
                             point_min=0.5 * np.log(spike_ratio))
    _first_points(x, past, level, trigger, elevated, np.log(extreme_ratio), np.log(spike_ratio),
                  np.log(band_ratio), first_min, window, lead)
    return RobustLevel(level, spread, ratio, z, trigger, elevated, use, past)


def _first_points(x: np.ndarray, past: np.ndarray, level: np.ndarray, trigger: np.ndarray,
                  elevated: np.ndarray, extreme: float, spike: float, band: float,
                  first_min: int, window: int, lead: int) -> None:
    """Set ``trigger``/``elevated`` in place from ``lead`` to where a level exists (module doc,
    "first points"): ``x`` (log) ``extreme`` above the last ``window`` points of ``past`` before
    it, or ``extreme`` above the median of those after the lead and ``spike`` above them all;
    ``band`` above them all next to a trigger."""
    has = np.isfinite(level)
    first = int(np.argmax(has)) if has.any() else level.size
    idx = np.flatnonzero(past[:first])
    first_min = max(1, first_min)
    if first <= lead or idx.size < first_min:
        return
    top = maximum_filter1d(x[idx], size=window, origin=(window - 1) // 2, mode="nearest")
    before = np.cumsum(past[:first]) - past[:first]  # past points strictly before each point
    at = np.arange(lead, first)
    at = at[(before[at] >= first_min) & np.isfinite(x[at])]
    above = x[at] - top[before[at] - 1]
    trig = np.zeros(first, bool)  # only the first points can hold these
    elev = np.zeros(first, bool)
    trig[at] = above >= extreme
    elev[at] = above >= band
    medians: dict[int, float] = {}  # by the number of past points: the same past, one median
    for i in at[(above >= spike) & ~trig[at]] if lead >= first_min else ():  # 3x their top
        b = int(before[i])
        if b not in medians:
            recent = idx[max(0, b - window):b]
            recent = recent[recent >= lead]
            medians[b] = float(np.median(x[recent])) if recent.size >= first_min else np.inf
        if x[i] - medians[b] >= extreme:
            trig[i] = True
    # the band only extends a trigger: a point 1.5x above its past is no episode of its own,
    # and one excluded from the healthy points would put the level's first point off a pass
    # further each time (a shift that starts just before the level exists was never found)
    for a, b in runs_of(elev | trig):
        if trig[a:b + 1].any():
            elevated[a:b + 1] = True
    trigger[:first] |= trig
