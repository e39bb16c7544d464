"""``loss-spike``: upward jumps of the loss against its trailing robust level.

For runs that log no usable grad norm (BLOOM-13B logged ``grad norm: 0.000``) and for loss jumps
while the grad norm stays healthy (bad data, not an explosion: clipping would not help).

The loss is compared in log space when every finite value is positive (``log_space=True``,
default): a mini-batch loss has multiplicative, heavy-tailed noise (a squared-error loss jumps
10x on an ordinary batch), and the relative thresholds then read as ``log(1 + rel)``.

Level ``b(i)``: median of the last ``window`` healthy loss points before ``i``, or of their newer
half where the loss is falling (that median is then significantly lower: a median lags half its
window behind a falling loss, and a Hugging Face Trainer run logged every 10 steps, 40 points in,
measured a +16 % jump against a level 5 % above the loss, and missed it); noise ``s``: the
MAD-sigma of step-to-step loss differences over the same points divided by sqrt 2 (so a falling
trend does not count as noise), floored at ``min_rel_spread * |b|``. A point triggers when
``L - b >= max(z_hi * s, rel_jump * |b|)`` (default 6 sigma and 5 % of the loss), and is elevated
(part of the spike) while ``L - b >= max(z_lo * s, rel_band * |b|)`` (3 sigma, 2 %).
A trigger must also reach ``tail_factor`` (2) times the 99th percentile of ``L - b`` over the
run's points (when it has >= 100): the run's own spikiness. A gaussian-noise loss has its 99th
percentile at 2.3 sigma, so this only binds on heavy-tailed losses, where 6-sigma jumps are
ordinary batches.
With ``persist=True`` (default) a trigger also needs the next logged point to be elevated: a
per-step mini-batch loss has heavy-tailed noise, and one high batch that the next step already
forgets is no event (a fault that hurts the run keeps the loss up) - unless it is *extreme*:
at least twice the level and ``lone_factor`` (6) x the run's own 99th-percentile excess (in log
terms: a loss whose ordinary batches reach 3x at the 99th percentile needs 700x; a smooth
language-model loss, whose 99th percentile is +30 %, 5x). One shuffled-label batch in a
transformer LM is such a point (its grad norm rose only 7x). With ``lone_ratio`` (the engine
sets 2 where the format logs the loss as a mean over a logging interval of several steps: a
Trainer's ``loss``, Megatron's ``lm loss``) a point at ``lone_ratio`` x its level triggers
alone, beyond the run's spikiness as every trigger: averaging has taken the batches' tails
away, and one bad batch is one high interval that the next has forgotten.
With ``sustain=w`` (> 1; the engine sets 2 for runs that log no grad norm, where the loss is the
only evidence) ``w`` consecutive elevated points whose mean excess reaches the trigger bar at
the time scale of ``w`` points (``z_hi`` standard errors of a ``w``-point mean, ``rel_jump``,
``tail_factor`` x the run's typical ``w``-point maximum) trigger too: two batches with shuffled
labels (x40 and x20) in a squared-error loss whose ordinary batches jump 10x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradaudit.detect._common import (
    MAD_TO_SIGMA,
    retrail,
    sustained,
    trailing_median_before,
    typical_max,
)

ID = "loss-spike"
FALL_Z = 3.0  # standard errors by which the newer half's median must be below the window's
MEDIAN_SE = 1.2533  # a median's standard error over the mean's, for normal noise


@dataclass
class LossLevel:
    """Per-point output of :func:`loss_spike`."""

    level: np.ndarray
    spread: np.ndarray
    trigger: np.ndarray
    elevated: np.ndarray
    use: np.ndarray | None = None  # the points the level was computed from
    median: np.ndarray | None = None  # the trailing median of the last ``window`` points
    half: np.ndarray | None = None  # and of the newer half of them


def loss_spike(
    loss: np.ndarray,
    *,
    healthy: np.ndarray | None = None,
    window: int = 50,
    z_hi: float = 6.0,
    rel_jump: float = 0.05,
    z_lo: float = 3.0,
    rel_band: float = 0.02,
    min_history: int = 8,
    min_rel_spread: float = 0.002,
    prior: LossLevel | None = None,
    persist: bool = True,
    lone_ratio: float | None = None,
    lone_factor: float = 6.0,
    log_space: bool = True,
    tail_factor: float = 2.0,
    sustain: int = 0,
) -> LossLevel:
    """Flag upward loss jumps (see module doc). ``window``/``min_history`` in logged points.

    ``prior``: the result for a healthy mask containing this one (its level is reused where the
    two agree). The noise is only computed where the loss is ``min(rel_band, rel_jump)`` above
    the level (elsewhere nothing can fire); ``spread`` is the floor there.
    """
    y = np.asarray(loss, dtype=np.float64)
    fin = np.isfinite(y)
    logged = bool(log_space and fin.any() and np.all(y[fin] > 0))
    if logged:
        y = np.where(fin, np.log(np.where(fin & (y > 0), y, 1.0)), y)
    use = fin if healthy is None else (np.asarray(healthy, bool) & fin)
    half_w = max(1, window // 2)
    if prior is not None and prior.use is not None and prior.median is not None and \
            prior.half is not None and not (use & ~prior.use).any():
        med, _ = retrail(y, prior.use, use, prior.median, prior.median, window, min_history,
                         with_spread=False)
        half, _ = retrail(y, prior.use, use, prior.half, prior.half, half_w, min_history,
                          with_spread=False)
    else:
        med, _ = trailing_median_before(y, use, window, min_history, spread=False)
        half, _ = trailing_median_before(y, use, half_w, min_history, spread=False)
    # where the loss may be falling, the newer half's median (a lower level) is tried first;
    # whether the fall is real is judged once the noise is known
    low = np.fmin(med, half)

    def rel_of(r: float, at: np.ndarray) -> np.ndarray | float:
        """A rise of ``r`` relative to the level ``at``, in the compared space."""
        return float(np.log1p(r)) if logged else r * np.abs(at)

    # where something can fire: a rise over the lower level, against that level (a superset of
    # where the bars below can be met, for any sign of the loss, as both rates are <= 1)
    with np.errstate(invalid="ignore"):
        target = (y - low) >= np.minimum(rel_of(rel_band, low), rel_of(rel_jump, low))
    # noise from successive differences of the used points
    idx = np.flatnonzero(use)
    diff = np.full(y.size, np.nan)
    if idx.size > 1:
        diff[idx[1:]] = np.abs(np.diff(y[idx]))
    dmed, _ = trailing_median_before(diff, np.isfinite(diff), window, max(2, min_history - 1),
                                     spread=False, at=target)
    spread = dmed * MAD_TO_SIGMA / np.sqrt(2.0)
    # (floored at a share of the window's median outside log space)
    floor = float(np.log1p(min_rel_spread)) if logged else min_rel_spread * np.abs(med)
    spread = np.fmax(np.nan_to_num(spread, nan=0.0), floor)
    # the lower level stands only where the fall is real, and only where something can fire
    # (elsewhere the spread is only its floor, and the window's median is the level)
    level = np.where(target, _falling_level(med, half, spread, window), med)
    d = y - level
    with np.errstate(invalid="ignore"):
        hi = np.maximum(z_hi * spread, rel_of(rel_jump, level))
        lo = np.maximum(z_lo * spread, rel_of(rel_band, level))
        up = np.isfinite(d) & (d > 0)  # (a loss of exactly 0 has bars of 0)
        trigger = up & (d >= hi)
        elevated = up & (d >= lo)
    tmax = 0.0
    if tail_factor > 0 and trigger.any():
        # the run's own spikiness: a jump must also be tail_factor x the run's 99th percentile
        # of the loss above its level (a heavy-tailed loss, e.g. squared error, jumps 10x on
        # ordinary batches; a gaussian-noise loss has q99 = 2.3 sigma, so this never binds)
        tmax = typical_max(d, use, trigger)
        trigger &= d >= tail_factor * tmax
    if persist and trigger.any():
        nxt = np.zeros_like(elevated)
        nxt[:-1] = elevated[1:]
        with np.errstate(invalid="ignore"):
            if lone_ratio is not None:
                nxt |= d >= rel_of(lone_ratio - 1.0, level)
            if tmax > 0:  # extreme: only where the run's own spikiness is known
                nxt |= d >= np.maximum(rel_of(1.0, level), lone_factor * tmax)
        trigger &= nxt
    if sustain > 1:
        trigger |= sustained(d, use, spread, sustain, rel_of(rel_jump, level), z_hi, tail_factor,
                             point_min=lo)
    return LossLevel(level, spread, trigger, elevated, use, med, half)


def _falling_level(med: np.ndarray, half: np.ndarray, spread: np.ndarray,
                   window: int) -> np.ndarray:
    """The level: the median of the last ``window`` points, or, where the loss is falling, the
    median of their newer half. A median sits at its window's centre, so on a falling loss the
    whole window's lags half a window behind (a run logged every 10 steps, 40 points into
    training, measured a jump against a level 5 % above the loss). Falling means the newer
    half's median is below the whole window's by ``FALL_Z`` x ``1.25 spread / sqrt(window)``:
    in a flat loss the lower of two medians is only noise, and a lower level would let the
    noise trigger. (Measured on flat noise, that bar is about 2.5 standard deviations of the
    two medians' difference, which is 0.19 sigma for a 50-point window, not the 0.18 of the
    formula; the half-median is chosen at about 1 % of the points.)"""
    with np.errstate(invalid="ignore"):
        fall = (med - half) >= FALL_Z * MEDIAN_SE * spread / np.sqrt(max(1, window))
    return np.where(fall, half, med)
