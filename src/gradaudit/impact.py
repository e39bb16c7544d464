"""Loss impact of an episode: counterfactual loss, excess loss, jump, recovery, divergence.

The counterfactual ``L^(t)`` is ``a + b log(step + 1)`` fitted by least squares (one pass of
3-sigma MAD outlier rejection) to the last ``fit_points`` (300) healthy loss points before the
onset - a power-law-like decay that extrapolates sensibly over a horizon. Both the fit and the
excess use the loss smoothed by a running median of ``smooth`` (9) logged points: a per-step
mini-batch loss is heavy-tailed, and one hard batch (which no counterfactual can predict) must
not dominate a 200-step mean; a lasting rise passes through the median unchanged. The slope is
clipped at 0 (a loss that was rising before the onset is extrapolated flat); with fewer than
``min_fit`` points the counterfactual is their median. Definitions follow DESIGN.md ("Loss impact").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from gradaudit.model import LossImpact


@dataclass
class Impact:
    """A :class:`LossImpact` plus what severity and figures need."""

    impact: LossImpact
    level: float | None  # counterfactual at the onset
    noise: float | None  # robust sigma of the healthy loss before the onset
    cf_steps: np.ndarray
    cf_values: np.ndarray
    excess_noise: float = 0.0  # standard error of excess_loss from the per-step loss noise


def _fit(u: np.ndarray, y: np.ndarray, min_fit: int) -> tuple[float, float]:
    if y.size < min_fit:
        return float(np.median(y)), 0.0
    a, b = _lsq(u, y)
    r = y - (a + b * u)
    mad = np.median(np.abs(r - np.median(r))) * 1.4826
    keep = np.abs(r) <= 3 * mad if mad > 0 else np.ones(y.size, bool)
    if keep.sum() >= min_fit:
        a, b = _lsq(u[keep], y[keep])
    if b > 0:
        return float(np.median(y[-min_fit:])), 0.0
    return a, b


def _lsq(u: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    um, ym = u.mean(), y.mean()
    du = u - um
    den = float((du * du).sum())
    b = float((du * (y - ym)).sum() / den) if den > 0 else 0.0
    return float(ym - b * um), b


def loss_impact(
    steps: np.ndarray,
    loss: np.ndarray,
    healthy: np.ndarray,
    onset_step: int,
    end_step: int | None,
    horizon: int,
    *,
    next_onset: int | None = None,
    fit_points: int = 300,
    min_fit: int = 5,
    recovery_tolerance: float = 0.05,
    lag_points: int = 3,
    smooth: int = 9,
) -> Impact | None:
    """Loss impact of one episode (None when the run has no loss series)."""
    n = steps.size
    if n == 0:
        return None
    fin = np.isfinite(loss)
    i_on = int(np.searchsorted(steps, onset_step))  # steps are sorted
    # the last fit_points healthy finite points before the onset, searched backwards
    lo, pre = i_on, np.empty(0, np.int64)
    while lo > 0 and pre.size < fit_points:
        lo = max(0, i_on - max(4 * fit_points, 2 * (i_on - lo)))
        pre = lo + np.flatnonzero(healthy[lo:i_on] & fin[lo:i_on])
    pre = pre[-fit_points:]
    nonfinite_after = not bool(fin[i_on:].all()) if i_on < n else False
    if pre.size < 2 or i_on >= n:
        return Impact(LossImpact(None, None, None, nonfinite_after), None, None,
                      np.empty(0, np.int64), np.empty(0))
    u_pre = np.log(steps[pre].astype(np.float64) + 1.0)
    y_pre = loss[pre]
    k = min(smooth, pre.size)
    a, b = _fit(u_pre, median_filter(y_pre, size=k, mode="nearest") if k > 2 else y_pre,
                min_fit)
    noise = float(np.median(np.abs(np.diff(y_pre))) * 1.4826 / np.sqrt(2)) if pre.size > 2 else 0.0
    # the window where the counterfactual is used: up to the next episode, at most 5 horizons
    stop = onset_step + 5 * horizon
    if next_onset is not None:
        stop = min(stop, next_onset)
    last = end_step if end_step is not None else int(steps[-1])
    i_win = int(np.searchsorted(steps, max(stop, onset_step + 1)))
    i_h = int(np.searchsorted(steps, onset_step + horizon))
    i_ep = int(np.searchsorted(steps, last, side="right"))
    after = np.arange(i_on, min(n, max(i_win, i_h, i_ep, i_on + lag_points)))
    win = after[:i_win - i_on]
    cf = a + b * np.log(steps[win].astype(np.float64) + 1.0)
    level = float(a + b * np.log(onset_step + 1.0))
    # excess loss over [onset, onset + H)
    h = after[:i_h - i_on]
    excess = None
    if h.size and fin[h].all():
        yh = loss[h]
        if h.size > 2:
            yh = median_filter(yh, size=min(smooth, h.size), mode="nearest")
        excess = float(np.mean(yh - (a + b * np.log(steps[h].astype(np.float64) + 1.0))))
    # loss jump: max over the episode (and the next few points: the loss lags the step)
    ep = after[: max(i_ep - i_on, min(lag_points, n - i_on))]
    jump = None
    if ep.size and fin[ep].all():
        jump = float(loss[ep].max() - level)
    # recovery: smoothed loss stays within tolerance of the counterfactual
    recovery = None
    if win.size and fin[win].all():
        sm = median_filter(loss[win], size=min(5, win.size), mode="nearest")
        bad = np.abs(sm - cf) > recovery_tolerance * np.abs(cf)
        if not bad.any():
            recovery = int(steps[win[0]])
        elif not bad[-1]:
            recovery = int(steps[win[int(np.flatnonzero(bad)[-1]) + 1]])
    reached_end = win.size > 0 and win[-1] == n - 1
    # "never came back": no recovery to the counterfactual by the run's end AND the loss ends
    # above the level it had at the onset (a far extrapolation alone must not call divergence)
    runaway = False
    if recovery is None and reached_end and win.size > 1:
        tail = loss[win[-min(win.size, 20):]]
        tail = tail[np.isfinite(tail)]
        runaway = bool(tail.size and np.median(tail) > level + recovery_tolerance * abs(level))
    diverged = nonfinite_after or runaway
    # standard error of the excess: the mean of the horizon's points minus the fitted line
    # extrapolated to their mean position (ordinary least-squares prediction error)
    se = 0.0
    if excess is not None and h.size and pre.size > 2:
        u_h = float(np.log(steps[h].astype(np.float64) + 1.0).mean())
        du = u_pre - u_pre.mean()
        suu = float((du * du).sum())
        lever = (u_h - float(u_pre.mean())) ** 2 / suu if suu > 0 else 0.0
        se = noise * float(np.sqrt(1.0 / h.size + 1.0 / pre.size + lever))
    return Impact(LossImpact(excess, jump, recovery, bool(diverged)), level, noise,
                  steps[win], cf, se)
