"""Loss impact of an episode: counterfactual loss, excess loss, jump, recovery, divergence.

Definitions follow docs/findings.md ("Loss impact"). Below, the rules and their defaults;
docs/impact-model.md gives, rule by rule, the measurements that chose them, their known costs
and what was tried instead.

- **Smoothing.** Fits and the excess use the loss smoothed by a running median of ``smooth``
  (9) logged points: one hard batch must not dominate a 200-step mean, and a lasting rise
  passes through the median unchanged.
- **Fit window.** The healthy finite loss points in the ``fit_span`` steps before the onset
  (default one horizon; no further back than half the onset's step), at least ``min_fit`` (20)
  of them (reaching further back if needed) and at most ``fit_points`` (300). A window of
  fewer than ``min_fit`` points is fitted flat.
- **Aftermath.** An earlier episode's loss aftermath (onset to recovery) is no healthy stretch:
  the window starts after it (``floor_step``, from the engine) where at least ``min_pre`` (5)
  healthy points lie there. A level shift's loss from where it came back (all of it, where
  the shift was harmless) is healthy again for the next episode's window: the next one
  began on the shift's new level (docs/findings.md).
- **Aftershocks.** ``flat=True`` (from the engine, within two horizons of a harmful lr rise
  whose loss has not come back, or right after an episode whose loss never came back, with
  fewer than ``min_pre`` healthy points between them): a level, no trend, fitted to the last
  ``min_fit`` points between the earlier episode (its highest loss, for the second) and the
  onset; no bracketing, no local gap. The loss there is the earlier episode's to answer for.
- **Blow-ups.** A loss above where its log started (:class:`Blowups`: its running median over
  ``BLOWUP_FACTOR`` (1.2) x the highest of its first 5 running medians, plus 3 sigmas of its
  batch noise) is a blow-up. The window starts where the last blow-up before the onset has
  settled (within 3 robust sigmas of a line fitted to the second half of the stretch up to the
  onset); one more than two horizons back bounds it at its last point only, and one still
  decaying at the onset gives no floor.
- **Bucketed exports.** For a W&B chart export (each bucket's last value, ``__MIN``/``__MAX``
  beside it) the engine passes bucket means read from the spread (:func:`bucket_mean`).
- **Model.** ``log L^(t) = a + b (log(t + 1) - log(onset + 1))``: a power law in the step,
  fitted by least squares on the log of the smoothed loss with one pass of 3-sigma MAD outlier
  rejection. In the plain loss where the loss is <= 0 in the fit window or up to the end of the
  post window below (or with ``log_fit=False``). The step counts from 0, or from the first step
  where that is below 0. Known misses: a loss levelling off exponentially to a floor is
  forecast too low, and a log fit's level is a geometric mean.
- **Slope shrinkage.** ``b`` is shrunk towards flat as ``b t^2 / (t^2 + shrink_t^2)``, ``t = b /
  se_b`` (``shrink_t`` 3; ``se_b`` from the larger of the per-point noise and the smoothing
  width times the smoothed residuals' mean square). A rising slope is held flat. An unanchored
  line in the plain loss is held flat past ``onset - first fitted step`` after the onset. The
  level ``a`` is the mean of the detrended window.
- **Bracketing.** The post window runs from ``post_start`` (0.5) horizons after the onset (and
  after the episode's end) to :func:`post_end` (twice the onset's step: two to five horizons
  after the onset), stops at ``cut_at`` or ``anchor_end`` (a later lr rise, the lr fallen to
  half), uses the ``anchor_points`` (outside every episode's span) and needs at least ``max(5,
  min_fit // 2)`` of them and a finite loss. The loss there came back unless its mean gap to the
  forecast, over its points before two horizons after the onset, exceeds ``max(2 x the
  forecast's standard error, anchor_tolerance x the level)`` (5 %). That standard error is the
  gap's noise and the slope's error at the window's lever, shrunk as the slope was, and counted
  only where the fit window holds ``SLOPE_ERROR_WIDTHS`` (5) smoothing widths. Where the loss
  came back, a positive gap is split by variance between damage (of the tolerance's size) and
  forecast error (the slope's unshrunk error at the lever and the noise), the damage's share is
  taken off, and the model is refitted on both windows (same shrinkage): the counterfactual is
  interpolated between two anchors. A loss that stayed up is lasting damage and never an
  anchor. The forecast's model error (a steep fall that bends) is not in the bar.
- **Local gap.** The mean residual of the smoothed loss against the fit over the last
  ``local_span`` (a quarter) horizon before the onset, shrunk towards 0 like the slope, is
  added at the onset and decays with time constant ``local_tau`` (a quarter) horizons.
- **Learning-rate time** (``lr_time``; from the engine only after a lasting lr rise it found
  harmless): training progress goes with the sum of the lr, so the fit and the anchor run at
  the run's own lr time (:func:`gradaudit.detect.lr_change.lr_time`) and the counterfactual at
  the schedule's. The anchor must lie within 2 standard errors of the forecast, no tolerance;
  where it does not, None. It never turns harm into no harm: the verdict is the step-time one.
- ``excess_loss``: mean over ``[onset, onset + horizon)`` of the smoothed loss minus ``L^``,
  where the episode's own spike points (in the episode and the ``lag_points`` after it, above
  a running median of ``smooth`` points reaching back before the onset by ``spike_sigmas`` (6)
  noise sigmas) count at their raw value: a bad batch's loss is the damage. None when the loss
  went non-finite there for good (:func:`loss_broke`; isolated non-finite points are left out
  of the excess, the jump and the recovery). ``Impact.lasting_excess`` is the same without the
  spike points: the lasting damage the harm verdict is about. With ``cut_at`` (the onset of a
  later episode that starts with an lr rise, of a later loss jump found afresh, the grad norm
  spiking with it or not, or of the one that interrupted a level shift on its new level)
  inside the horizon, the loss from there on is that episode's: the rest of the horizon counts
  at the mean excess of the last ``smooth`` points before it (``Impact.cut_step``); the jump
  stops there wherever it is. A later grad episode does not cut otherwise (it may be this
  one's aftershock).
- ``loss_jump``: the highest loss over the episode's logged points, onset to end and at least
  its first ``lag_points`` (3), minus ``L^(onset)``. ``Impact.jump_points``: the logged points
  from the onset to the first half that jump up (the reason says *jumped* within
  ``ABRUPT_POINTS``, 3, and *rose* later).
- ``recovery_step``: from the loss's highest point above the band in the episode (and its lag)
  on, the first point where the loss smoothed over 5 points is back under ``L^`` plus
  ``max(recovery_tolerance x |L^|, 3 x the 5-point median's noise)`` (5 %) and after which the
  median excess over a horizon stays within that tolerance (or 3 standard errors of the
  median; near the window's end over what is left, at least 10 points). One-sided: a loss
  below ``L^`` has recovered. The onset itself where the loss never left the band.
- ``diverged``: the loss went non-finite after the onset (before the next episode's onset) for
  good (:func:`loss_broke`: 3 points in a row, or to the log's end; isolated non-finite points
  the loss carried on after are not), or it never recovered and ends the run above
  ``L^(onset)`` by more than the tolerance (:func:`ends_above`; the engine also marks an
  explosion whose recovery a later episode cut short, where only warnings follow it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from gradaudit.detect._common import MAD_TO_SIGMA, diff_sigma
from gradaudit.detect.nonfinite import loss_broke
from gradaudit.model import LossImpact

ABRUPT_POINTS = 3  # a loss half way up this many logged points after the onset "jumped"


@dataclass
class Impact:
    """A :class:`LossImpact` plus what severity and figures need."""

    impact: LossImpact
    level: float | None  # counterfactual at the onset
    noise: float | None  # robust sigma of the healthy loss before the onset (per point)
    cf_steps: np.ndarray
    cf_values: np.ndarray
    excess_noise: float = 0.0  # standard error of excess_loss
    bracketed: bool = False  # the counterfactual was anchored after the episode too
    horizon_points: int = 0  # logged points the excess was averaged over
    lasting_excess: float | None = None  # the excess without the episode's own spike points
    cut_step: int | None = None  # where the horizon ended early (a later lr episode's onset)
    lr_time: bool = False  # the counterfactual follows the schedule's learning-rate time
    expected_fall: float = 0.0  # L^ at the onset minus its mean over the excess's points (>= 0)
    jump_points: int | None = None  # logged points from the onset to half the loss_jump

    @property
    def abrupt(self) -> bool:
        """The loss stood half its ``loss_jump`` up within ``ABRUPT_POINTS`` of the onset (a
        jump, not a climb; also where no jump was measured)."""
        return self.jump_points is None or self.jump_points <= ABRUPT_POINTS


def _lsq(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``(mean y, slope, sum of squared u deviations)``."""
    um, ym = u.mean(), y.mean()
    du = u - um
    den = float((du * du).sum())
    b = float((du * (y - ym)).sum() / den) if den > 0 else 0.0
    return float(ym - b * um), b, den


def _fit(u: np.ndarray, y: np.ndarray, noise: float, k: int, shrink_t: float,
         min_fit: int) -> tuple[float, float, float, float]:
    """Robust, shrunk fit of ``y = a + b u`` (``u`` relative to the onset): ``(a, b, se_b,
    kept)``, ``se_b`` the standard error of the slope before shrinkage (inf: no trend was
    fitted, or a rising one was held flat) and ``kept`` the share of the slope the shrinkage
    kept (0 where no trend is used)."""
    if y.size < min_fit:  # too few points for a trend: flat at their mean
        return float(np.mean(y)), 0.0, np.inf, 0.0
    a, b, suu = _lsq(u, y)
    r = y - (a + b * u)
    mad = float(np.median(np.abs(r - np.median(r)))) * MAD_TO_SIGMA
    keep = np.abs(r - np.median(r)) <= 3 * mad if mad > 0 else np.ones(y.size, bool)
    if keep.sum() >= max(5, y.size // 2):
        u, y = u[keep], y[keep]
        a, b, suu = _lsq(u, y)
        r = y - (a + b * u)
    if suu <= 0:
        return float(np.mean(y)), 0.0, np.inf, 0.0
    # standard error of the slope: point noise, or the smoothed residuals' wander (whose
    # points are correlated over the smoothing width k), whichever is larger
    wander = float(np.sqrt(np.mean(r * r)))
    sig2 = max(noise * noise, k * wander * wander)
    se_b = float(np.sqrt(sig2 / suu))
    kept = 1.0
    if b > 0:
        # a rising slope is held flat: the forecast is then off by more than the fit's error
        b, se_b, kept = 0.0, np.inf, 0.0
    elif se_b > 0:
        t2 = (b / se_b) ** 2
        kept = t2 / (t2 + shrink_t * shrink_t)
        b *= kept
    return float(np.mean(y - b * u)), b, se_b, kept


BLOWUP_FACTOR = 1.2  # a smoothed loss this far above where its log started is a blow-up


class Blowups:
    """Where the loss (running median of ``smooth`` finite points) was above ``BLOWUP_FACTOR``
    x the highest of its first 5 running medians plus 3 sigmas of its noise, and where each
    such blow-up's decay settled (module doc, "Blow-ups"). None for a loss starting at <= 0."""

    def __init__(self, steps: np.ndarray, loss: np.ndarray, smooth: int = 9) -> None:
        fin = np.isfinite(loss)
        self.steps, self.loss, self.k = steps[fin], loss[fin], smooth
        self.above = np.empty(0, np.int64)
        if self.steps.size < 2 * smooth:
            return
        # a noisy loss's first points vary: the highest of their running medians
        start = float(np.max(_smooth(self.loss[:5 + smooth], smooth)[:5]))
        if not start > 0:
            return
        # and 3 sigmas of its batch noise on top: a noisy flat loss's running median wanders
        # past 1.2x a start taken from a few points
        bar = BLOWUP_FACTOR * start + 3.0 * diff_sigma(self.loss)
        # the running median (odd width, edges repeated) is above the bar exactly where more
        # than half the window is: counted with a cumulative sum, no median filter over 1e6
        half = smooth // 2
        over = np.pad(self.loss > bar, half, mode="edge").astype(np.int32)
        c = np.concatenate(([0], np.cumsum(over)))
        self.above = self.steps[(c[smooth:] - c[:-smooth]) > half]

    def floor(self, onset_step: int, reach: int) -> int | None:
        """The first step, after the last blow-up point before ``onset_step``, where the
        smoothed loss is back on its later course - no more than 3 robust sigmas above a line
        fitted to the second half of the stretch from there to the onset (a decay's tail above
        it is no trend either); the onset itself where no point is; None without a blow-up. A
        blow-up more than ``reach`` steps before the onset (or fewer than 10 points before
        it) ends at its last point."""
        j = int(np.searchsorted(self.above, onset_step)) - 1
        if j < 0:
            return None
        last = int(self.above[j])
        if last < onset_step - reach:
            return last + 1
        a = int(np.searchsorted(self.steps, last, side="right"))
        b = int(np.searchsorted(self.steps, onset_step))
        if b - a < 10:
            return last + 1
        x = self.steps[a:b].astype(np.float64)
        lo, hi = max(0, a - self.k // 2), min(self.steps.size, b + self.k // 2)
        y = _smooth(self.loss[lo:hi], self.k)[a - lo:b - lo]  # as over the whole run
        h = x.size // 2
        icpt, slope, _ = _lsq(x[h:], y[h:])
        resid = y[h:] - (slope * x[h:] + icpt)
        tol = 3.0 * MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid))))
        # (a loss logged to a few decimals can settle exactly: no spread, and the line may
        # pass just under it)
        tol = max(tol, 1e-6 * float(np.max(np.abs(y))))
        settled = y <= slope * x + icpt + tol
        if not settled.any():
            return onset_step  # still decaying at the onset: no settled stretch to fit on
        return int(self.steps[a + int(np.argmax(settled))])


SPREAD_OUTLIER = 3.0  # a bucket this many times wider than its neighbours' median holds a spike
SPREAD_NEIGHBOURS = 21  # the buckets (the bucket in the middle) that median is taken over
SPREAD_MIN_BUCKETS = 20  # ordinary buckets needed to learn where a bucket's mean sits


def bucket_mean(steps: np.ndarray, last: np.ndarray, mn_steps: np.ndarray, mn: np.ndarray,
                mx_steps: np.ndarray, mx: np.ndarray) -> np.ndarray:
    """Estimated mean of each bucket of a bucketed export (a W&B chart CSV), where a logged point
    holds the bucket's last value and its ``__MIN``/``__MAX`` columns its extremes.

    A bucket's last value is one of its ``k`` values, so across the run it is an unbiased but
    noisy sample of the bucket mean; the spread ``max - min`` of ``k`` values says far more about
    where they lie. An ordinary bucket is estimated as ``min + c (max - min)``, with ``c`` the
    sum of ``last - min`` over the run's ordinary buckets divided by the sum of their spreads:
    where in its spread a bucket's values sit, for a loss whose noise keeps its shape (a
    location-scale model), with no level bias over those buckets as a whole. On the
    benchmark's clean W&B exports of per-step runs this cuts a bucket's error against its true
    mean 2.3x (6-step buckets) and 2.7x (12 steps, batch 8; seeds 13000-30000, whole runs).
    Known cost: ``c`` is one number per run, so noise that changes *shape* at the same mean
    reads as a change of level (simulated, 12-step buckets, a loss level of 1.3: a lognormal
    loss whose sigma doubles at the onset reads as +19 % of the level over the horizon, normal
    noise turning exponential as +8 %; the last value read +6 % and 0 %).

    Ordinary: ``k`` (``s - s_prev`` steps; the first bucket: the median gap) is the run's most
    common bucket length and at least 4, and the spread is at most ``SPREAD_OUTLIER`` x the
    median spread of the ``SPREAD_NEIGHBOURS`` buckets around it (mirrored at the run's ends: a
    first or last bucket counts once among them, as any other does, so a spike there stands
    out too). Every other bucket, and every bucket where
    fewer than ``SPREAD_MIN_BUCKETS`` ordinary ones are there to learn ``c``, is
    ``(min + max + (k - 2) last) / k``: a bucket holding a spike (a bad batch) counts it at
    ``1/k``, as its mean does, and with 2 or 3 steps the extremes leave at most one value
    unknown. A one-step bucket is its value; where min/max are missing or inconsistent (not
    bracketing the last value) the last value is kept.
    """
    out = np.asarray(last, dtype=np.float64).copy()
    if steps.size == 0:
        return out

    def at(s2: np.ndarray, v2: np.ndarray) -> np.ndarray:
        res = np.full(steps.size, np.nan)
        if s2.size:
            j = np.clip(np.searchsorted(s2, steps), 0, s2.size - 1)
            hit = s2[j] == steps
            res[hit] = v2[j[hit]]
        return res

    lo, hi = at(mn_steps, mn), at(mx_steps, mx)
    d = np.diff(steps)
    k = np.empty(steps.size)
    k[1:] = d
    k[0] = np.median(d) if d.size else 1.0
    k = np.maximum(k, 2.0)
    ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(out)
    tol = 1e-6 * np.abs(out) + 1e-12  # (a last value that is its bucket's min or max)
    ok &= (lo <= out + tol) & (hi >= out - tol)
    est = (lo + hi + (k - 2.0) * out) / k
    idx = np.flatnonzero(ok)
    if idx.size >= SPREAD_MIN_BUCKETS:
        spread = hi - lo
        ref = np.full(steps.size, np.inf)
        ref[idx] = median_filter(spread[idx], size=min(SPREAD_NEIGHBOURS, idx.size), mode="mirror")
        lengths, counts = np.unique(k[idx], return_counts=True)
        k_common = lengths[np.argmax(counts)]
        ordinary = ok & (k == k_common) & (k_common >= 4) & (spread > 0) \
            & (spread <= SPREAD_OUTLIER * ref)
        if np.count_nonzero(ordinary) >= SPREAD_MIN_BUCKETS:
            c = float(np.sum((out - lo)[ordinary]) / np.sum(spread[ordinary]))
            est = np.where(ordinary, lo + c * spread, est)
    out[ok] = est[ok]
    return out


def _smooth(y: np.ndarray, k: int, mode: str = "nearest") -> np.ndarray:
    k = min(k, y.size)
    return median_filter(y, size=k, mode=mode) if k > 2 else y


def _noise_sigma(y: np.ndarray) -> float:
    """Per-point noise of ``y`` (:func:`diff_sigma`); 0 with two points or fewer."""
    return diff_sigma(y) if y.size > 2 else 0.0


def _fit_window(steps: np.ndarray, healthy: np.ndarray, fin: np.ndarray, i_on: int,
                onset_step: int, span: int, floor_step: int | None, min_fit: int, min_pre: int,
                fit_points: int, origin: int = 0) -> np.ndarray:
    """Indices of the healthy finite points the counterfactual is fitted on ("Fit window",
    "Aftermath" in the module doc; no further back than half the onset's step, counted from
    ``origin``)."""
    lo = int(np.searchsorted(steps, max(onset_step - span, origin + (onset_step - origin) // 2)))
    floor = 0
    if floor_step is not None:
        # after an earlier episode's aftermath only, if enough points lie there
        f = int(np.searchsorted(steps, floor_step))
        if f < i_on and np.count_nonzero(healthy[f:i_on] & fin[f:i_on]) >= min_pre:
            floor = f
            lo = max(lo, f)
    pre = lo + np.flatnonzero(healthy[lo:i_on] & fin[lo:i_on])
    while pre.size < min_fit and lo > floor:  # reach further back for min_fit points
        lo = max(floor, i_on - max(4 * min_fit, 2 * (i_on - lo)))
        pre = lo + np.flatnonzero(healthy[lo:i_on] & fin[lo:i_on])
        if pre.size >= min_fit:
            pre = pre[-min_fit:]
    return pre[-fit_points:]


@dataclass
class _Counterfactual:
    """``L^`` at logged points: ``inv(a + b u + g0 exp(-(t - onset) / tau))`` with
    ``u = log(t - origin + 1) - log(onset - origin + 1)`` held at ``u_hold``; ``inv`` is ``exp``
    for a log fit."""

    steps: np.ndarray
    onset_step: int
    logsp: bool
    a: float
    b: float
    g0: float = 0.0
    tau: float = 1.0
    u_hold: float = np.inf
    t_run: np.ndarray | None = None  # lr time at the logged points (the run as it went)
    t_sched: np.ndarray | None = None  # lr time on the schedule's lr (the counterfactual's)
    t_on: float | None = None  # lr time at the onset
    origin: int = 0  # the step the power law counts from: 0, or the first step if below

    def fwd(self, y: np.ndarray) -> np.ndarray:
        """Loss values in fit space."""
        return np.log(y) if self.logsp else y

    def inv(self, f: np.ndarray | float) -> np.ndarray | float:
        """Fit-space values as loss."""
        return np.exp(f) if self.logsp else f

    def u_at(self, t: np.ndarray) -> np.ndarray:
        """``u`` at steps (or learning-rate times) ``t``."""
        if self.t_on is not None:  # (learning-rate time starts at 0)
            return np.log(t + 1.0) - np.log(self.t_on + 1.0)
        return np.log(t - self.origin + 1.0) - np.log(self.onset_step - self.origin + 1.0)

    def u(self, idx: np.ndarray) -> np.ndarray:
        """``u`` of logged points, where the run was (its own lr time, if any)."""
        return self.u_at(self.steps[idx].astype(np.float64) if self.t_run is None
                       else self.t_run[idx])

    def u_held(self, idx: np.ndarray) -> np.ndarray:
        """``u`` where the counterfactual is evaluated (the schedule's lr time, if any)."""
        u = self.u_at(self.steps[idx].astype(np.float64) if self.t_sched is None
                    else self.t_sched[idx])
        return np.minimum(u, self.u_hold)

    def trend(self, idx: np.ndarray) -> np.ndarray:
        """The fitted trend (fit space, no local gap, no hold)."""
        return self.a + self.b * self.u(idx)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        base = self.a + self.b * self.u_held(idx)
        if self.g0 != 0.0:
            base = base + self.g0 * np.exp(-(self.steps[idx] - self.onset_step) / self.tau)
        return self.inv(base)

    @property
    def level(self) -> float:
        """The counterfactual at the onset."""
        return float(self.inv(self.a + self.g0))


def _fit_space_is_log(loss: np.ndarray, y_pre: np.ndarray, steps: np.ndarray, i_on: int,
                      onset_step: int, horizon: int, origin: int) -> bool:
    """Log loss where the loss is positive before the onset and over the stretch it is compared
    with (to the end of the post-episode anchor, :func:`post_end`): a power law, never through
    zero. A loss that reaches zero or below there is fitted in plain loss."""
    seen = loss[i_on:int(np.searchsorted(steps, post_end(onset_step, horizon, origin)))]
    return bool(np.all(y_pre > 0) and np.all(seen[np.isfinite(seen)] > 0))


#: healthy loss points after an earlier episode's aftermath that the fit window may start from
MIN_PRE = 5


def step_origin(steps: np.ndarray) -> int:
    """The step the power law counts from: 0, or the first logged step where it is below 0
    (:class:`_Counterfactual`); ``steps`` sorted."""
    return min(0, int(steps[0])) if steps.size else 0


def post_end(onset_step: int, horizon: int, origin: int = 0) -> int:
    """Where the post-episode anchor window ends: twice the onset's step (counted from
    ``origin``, :class:`_Counterfactual`), at least two horizons and at most five (the
    counterfactual's own window) after the onset (module doc, "Bracketing")."""
    return int(onset_step + max(2 * horizon, min(5 * horizon, onset_step - origin)))


# the fit window's smoothing widths (independent stretches) needed before the slope's own
# standard error widens the anchor's bar (module doc, "Bracketing")
SLOPE_ERROR_WIDTHS = 5


@dataclass
class _PreOnset:
    """The fit window: its point indices, their ``u``, the smoothed loss in fit space, the
    fit-space noise per point, the smoothing width used, the fitted slope's standard error
    and the share of that slope its shrinkage kept."""

    idx: np.ndarray
    u: np.ndarray
    fs: np.ndarray
    nf: float
    k: int
    se_b: float = np.inf
    kept: float = 0.0


def _anchor_after(cf: _Counterfactual, w: _PreOnset, loss: np.ndarray, fin: np.ndarray,
                  usable: np.ndarray | None, i_on: int, last: int, horizon: int,
                  next_onset: int | None, until: int | None, *, smooth: int,
                  shrink_t: float, min_fit: int, anchor_tolerance: float,
                  post_start: float) -> np.ndarray | None:
    """Bracketing (module doc): refit ``cf`` to the pre-onset window and the post-episode
    window together where the loss came back (less the share of a gap that is likelier
    damage than forecast error); returns the fitted ``u`` values, or None (and ``cf``
    unchanged) where it did not."""
    steps, onset_step, nf = cf.steps, cf.onset_step, w.nf
    p_hi = post_end(onset_step, horizon, cf.origin)
    if usable is None and next_onset is not None:  # no episode mask: up to the next episode
        p_hi = min(p_hi, next_onset)
    if until is not None and until > onset_step:  # after an lr rise or halving (module doc)
        p_hi = min(p_hi, until)
    p_lo = max(onset_step + int(post_start * horizon), last + 1)
    i0, i1 = int(np.searchsorted(steps, p_lo)), int(np.searchsorted(steps, p_hi))
    ok = fin[i0:i1] if usable is None else fin[i0:i1] & usable[i0:i1]
    post = i0 + np.flatnonzero(ok)
    # finite up to the window's end, or to the next episode (a later episode's non-finite
    # points are its own, and the mask leaves them out)
    i_fin = i1 if next_onset is None or usable is None else \
        min(i1, int(np.searchsorted(steps, next_onset)))
    if post.size < max(5, min_fit // 2) or loss_broke(fin[i_on:i_fin], i_fin == loss.size):
        return None
    fs_post = cf.fwd(_smooth(loss[post], min(smooth, post.size)))
    u_post = cf.u(post)
    # whether the loss came back is judged on the window's first two horizons (where most
    # of them fall): further out, a forecast whose slope was shrunk towards flat misses by more
    near = steps[post] < onset_step + 2 * horizon
    if near.sum() < max(5, min_fit // 2):
        near[:] = True
    gap = float(np.mean(fs_post[near] - cf.trend(post[near])))
    se_post = nf * float(np.sqrt(np.pi / 2 / near.sum() + 1.0 / w.idx.size))
    tol = float(np.log1p(anchor_tolerance)) if cf.logsp else anchor_tolerance * abs(cf.a)
    lever = float(np.mean(u_post[near]) - np.mean(w.u))
    sf2 = (w.se_b * lever) ** 2 if np.isfinite(w.se_b) else np.inf
    # the forecast's own error there: the noise and the error of the slope it extrapolates,
    # shrunk towards flat as that slope was (none where no trend is used, nor where the fit
    # window holds too few smoothing widths to know that error)
    known = np.isfinite(sf2) and w.idx.size >= SLOPE_ERROR_WIDTHS * w.k
    sf2_used = w.kept * w.kept * sf2 if known else 0.0
    if gap > max(2 * np.sqrt(se_post * se_post + sf2_used), tol):
        return None  # the loss stayed up beyond that error: lasting damage is no anchor
    if gap > 0 and tol > 0:
        # a gap within it is damage or forecast error: each gets its share by variance
        # (damage of the tolerance's size against the slope's error at the post window's lever
        # and the windows' noise), and the damage's share is no anchor
        fs_post = fs_post - gap * tol * tol / (tol * tol + sf2 + se_post * se_post)
    u_fit = np.concatenate((w.u, u_post))
    cf.a, cf.b, _, _ = _fit(u_fit, np.concatenate((w.fs, fs_post)), nf, w.k, shrink_t,
                            min_fit)
    return u_fit


def _local_gap(cf: _Counterfactual, w: _PreOnset, shrink_t: float, local_span: float,
               horizon: int) -> float:
    """The mean residual of the smoothed loss against the fit over the last ``local_span``
    horizons before the onset, shrunk towards 0 by its standard error (module doc)."""
    span_s = max(1.0, local_span * horizon)
    sel = cf.steps[w.idx] >= cf.onset_step - span_s
    if sel.sum() < 5:
        sel = np.zeros(w.idx.size, bool)
        sel[-5:] = True
    g0 = float(np.mean(w.fs[sel] - (cf.a + cf.b * w.u[sel])))
    se_g = w.nf * float(np.sqrt(min(w.k, sel.sum()) / sel.sum())) if w.nf > 0 else 0.0
    if se_g > 0:
        z2 = (g0 / se_g) ** 2
        g0 *= z2 / (z2 + shrink_t * shrink_t)
    return g0


def _excess(cf: _Counterfactual, loss: np.ndarray, h: np.ndarray, n_spike: int, smooth: int,
            noise: float, spike_sigmas: float | None, n_held: int = 0,
            lead: np.ndarray | None = None) -> tuple[float, float]:
    """``(excess_loss, lasting_excess)`` over the horizon points ``h``; the first ``n_spike``
    of them (the episode and the loss's lag) may hold spike points that count at their raw
    value in ``excess_loss`` and not at all in ``lasting_excess``; ``n_held`` more points (the
    horizon's rest after a later lr episode's onset) count at the excess of the last ``smooth``
    points; ``lead``: the finite loss values just before the onset (module doc)."""
    raw = loss[h]
    spike = np.zeros(h.size, bool)
    if spike_sigmas is not None and h.size > 2:
        # spike points against a running median that reaches back before the onset: a bad
        # batch at the onset itself would otherwise be its own level (repeated, or mirrored,
        # a 3-point spike is the median of the first window)
        if lead is not None and lead.size:
            ref = _smooth(np.concatenate((lead, raw)), smooth)[lead.size:]
        else:
            ref = _smooth(raw, smooth, "mirror")
        m = min(h.size, n_spike)
        spike_noise = max(noise, 1e-6 * abs(cf.level))  # a quantised loss has no batch noise
        spike[:m] = raw[:m] > ref[:m] + spike_sigmas * spike_noise
        raw_wo = np.where(spike, ref, raw)
    else:
        raw_wo = raw
    yl = _smooth(raw_wo, smooth) if h.size > 2 else raw_wo
    d = yl - cf(h)
    held = float(np.mean(d[-min(smooth, d.size):])) * n_held

    def mean(x: np.ndarray) -> float:
        return float((np.sum(x) + held) / (x.size + n_held))

    lasting = excess = mean(d)
    if spike.any():
        # the smoothing that keeps an ordinary hard batch out also drops a bad batch's loss
        d[spike] += raw[spike] - yl[spike]
        excess = mean(d)
    return excess, lasting


def _recovery(cf: _Counterfactual, loss: np.ndarray, win: np.ndarray, cf_win: np.ndarray,
              noise: float, recovery_tolerance: float, n: int, last_episode: bool = False,
              n_episode: int = 1, h_points: int = 200) -> tuple[int | None, bool]:
    """``(recovery_step, runaway)``: where the loss came back within the tolerance of ``L^``
    and stayed there (``n_episode``: the episode's points and the loss's lag; ``h_points``: a
    horizon's points), and whether it never did and ends the run above the onset level
    (module doc)."""
    level = cf.level
    tol = max(recovery_tolerance * abs(level), 3.0 * noise * float(np.sqrt(np.pi / 2 / 5)))
    recovery = None
    if win.size and np.isfinite(loss[win]).all():
        sm = median_filter(loss[win], size=min(5, win.size), mode="nearest")
        over = sm - cf_win - np.maximum(recovery_tolerance * np.abs(cf_win), tol)
        if not (over > 0).any():  # the loss never left the band: recovered at the onset
            recovery = int(cf.onset_step)
        else:
            m = min(over.size, max(1, n_episode))
            # from the highest point above the band in the episode (and its lag); where the
            # loss rose only after that, from where it first left the band
            j = int(np.argmax(over[:m])) if (over[:m] > 0).any() else int(np.argmax(over > 0))
            k = _sustained_from(loss[win] - cf_win, np.abs(cf_win), over <= 0, j,
                                max(1, h_points), recovery_tolerance, noise)
            recovery = int(cf.steps[win[k]]) if k is not None else None
    # the window reaches the run's end, or no later episode lies between it and the end
    reached_end = win.size > 0 and (win[-1] == n - 1 or last_episode)
    # "never came back": no recovery to the counterfactual by the run's end AND the loss ends
    # above the level it had at the onset (a far extrapolation alone must not call divergence)
    runaway = recovery is None and reached_end and win.size > 1 and \
        ends_above(loss[max(int(win[0]), n - 20):], level, noise, recovery_tolerance)
    return recovery, runaway


def ends_above(tail: np.ndarray, level: float, noise: float,
               recovery_tolerance: float = 0.05) -> bool:
    """Whether the loss's last points ``tail`` (their finite median) end above ``level`` by
    more than the recovery tolerance: ``max(recovery_tolerance x |level|, 3 x`` the 5-point
    median's noise ``)`` (:func:`_recovery`)."""
    tol = max(recovery_tolerance * abs(level), 3.0 * noise * float(np.sqrt(np.pi / 2 / 5)))
    tail = tail[np.isfinite(tail)]
    return bool(tail.size and np.median(tail) > level + tol)


def _sustained_from(d: np.ndarray, scale: np.ndarray, back: np.ndarray, j: int, h: int,
                    tolerance: float, noise: float) -> int | None:
    """The first index ``k >= j`` where ``back`` holds and the median of ``d`` over the next
    ``h`` points (fewer at the end, but at least 10: a few last points are no evidence of a
    return) is at most ``max(tolerance x`` the median ``scale`` there, ``3``
    standard errors of that median``)``, or None. Full windows are judged at once by a forward
    running median; the shorter windows at the end one by one, on at most 256 of their
    points."""
    n = d.size
    shortest = min(h, 10)
    full = max(0, n - h + 1)  # indices whose window holds h points
    if full:
        med = median_filter(d, size=h, origin=-(h // 2), mode="nearest")[:full]
        lvl = median_filter(scale, size=h, origin=-(h // 2), mode="nearest")[:full]
        bar = np.maximum(tolerance * lvl, 3.0 * noise * float(np.sqrt(np.pi / 2 / h)))
        ok = np.flatnonzero(back[j:full] & (med[j:] <= bar[j:])) if j < full else []
        if len(ok):
            return j + int(ok[0])
    last = n - shortest + 1  # the last index whose window is long enough
    for k in np.flatnonzero(back[max(j, full):last]) + max(j, full):
        step = max(1, (n - k) // 256)
        ahead = d[k::step]
        bar = max(tolerance * float(np.median(scale[k::step])),
                  3.0 * noise * float(np.sqrt(np.pi / 2 / (n - k))))
        if float(np.median(ahead)) <= bar:
            return int(k)
    return None


def _excess_se(cf: _Counterfactual, h: np.ndarray, u_fit: np.ndarray, noise: float,
               min_fit: int) -> float:
    """Standard error of the excess: the horizon mean's noise plus the level's and the
    (shrunk) trend's uncertainty at the horizon's mean position."""
    u_h = float(cf.u_held(h).mean())
    du = u_fit - u_fit.mean()
    suu = float((du * du).sum())
    # a flat fit (too few points for a trend) has no slope to be uncertain about
    lever = (u_h - float(u_fit.mean())) ** 2 / suu if suu > 0 and u_fit.size >= min_fit else 0.0
    return noise * float(np.sqrt(1.0 / h.size + 1.0 / u_fit.size + lever))


def loss_impact(
    steps: np.ndarray,
    loss: np.ndarray,
    healthy: np.ndarray,
    onset_step: int,
    end_step: int | None,
    horizon: int,
    *,
    next_onset: int | None = None,
    cut_at: int | None = None,
    fit_span: int | None = None,
    fit_points: int = 300,
    min_fit: int = 20,
    min_pre: int = MIN_PRE,
    recovery_tolerance: float = 0.05,
    lag_points: int = 3,
    smooth: int = 9,
    shrink_t: float = 3.0,
    bracket: bool = True,
    floor_step: int | None = None,
    local_span: float | None = 0.25,
    local_tau: float = 0.25,
    log_fit: bool = True,
    anchor_tolerance: float = 0.05,
    post_start: float = 0.5,
    spike_sigmas: float | None = 6.0,
    lr_time: tuple[np.ndarray, np.ndarray] | None = None,
    anchor_points: np.ndarray | None = None,
    anchor_end: int | None = None,
    flat: bool = False,
) -> Impact | None:
    """Loss impact of one episode (None when the run has no loss series, or, with
    ``lr_time``, when the loss after the episode is not where learning-rate time puts it);
    ``flat``: against the level of the last ``min_fit`` fit points (module doc, "Aftershocks");
    see module doc."""
    n = steps.size
    if n == 0:
        return None
    fin = np.isfinite(loss)
    i_on = int(np.searchsorted(steps, onset_step))  # steps are sorted
    span = horizon if fit_span is None else int(fit_span)
    origin = step_origin(steps)
    pre = _fit_window(steps, healthy, fin, i_on, onset_step, span, floor_step, min_fit,
                      2 if flat else min_pre, fit_points, origin)
    if flat and floor_step is not None:  # the loss as it stood since the floor, and only then
        pre = pre[steps[pre] >= floor_step]
    # non-finite loss after the onset, up to the next episode (a later one's is its own)
    i_next = n if next_onset is None else int(np.searchsorted(steps, next_onset))
    nonfinite_after = loss_broke(fin[i_on:i_next], i_next == n) if i_on < n else False
    if pre.size < 2 or i_on >= n:
        return Impact(LossImpact(None, None, None, nonfinite_after), None, None,
                      np.empty(0, np.int64), np.empty(0))
    if flat:  # the loss as it stood: a level, no trend, no bracketing, no local gap
        pre = pre[-min_fit:]
        bracket, local_span = False, None
    y_pre = loss[pre]
    noise = _noise_sigma(y_pre)
    k = min(smooth, pre.size)
    logsp = log_fit and _fit_space_is_log(loss, y_pre, steps, i_on, onset_step, horizon,
                                          origin)
    cf = _Counterfactual(steps, onset_step, logsp, 0.0, 0.0, origin=origin)
    if lr_time is not None:  # the fit, the anchor and the counterfactual in lr time
        cf.t_run, cf.t_sched = lr_time
        cf.t_on = float(np.interp(onset_step, steps, lr_time[0]))
    w = _PreOnset(pre, cf.u(pre), cf.fwd(_smooth(y_pre, k)),
                  _noise_sigma(cf.fwd(y_pre)) if logsp else noise, k)
    cf.a, cf.b, w.se_b, w.kept = _fit(w.u, w.fs, w.nf, k, shrink_t,
                                      pre.size + 1 if flat else min_fit)
    # the window where the counterfactual is used: up to the next episode, at most 5 horizons
    stop = onset_step + 5 * horizon
    if next_onset is not None:
        stop = min(stop, next_onset)
    last = end_step if end_step is not None else int(steps[-1])
    i_win = int(np.searchsorted(steps, max(stop, onset_step + 1)))
    i_h = int(np.searchsorted(steps, onset_step + horizon))
    n_held = 0
    cut_step = cut_at if cut_at is not None and onset_step < cut_at < onset_step + horizon \
        else None
    if cut_step is not None:  # the loss from there on is another episode's to answer for
        i_cut = int(np.searchsorted(steps, cut_step))
        n_held, i_h = max(0, i_h - i_cut), min(i_h, i_cut)
    i_ep = int(np.searchsorted(steps, last, side="right"))
    after = np.arange(i_on, min(n, max(i_win, i_h, i_ep, i_on + lag_points)))
    u_fit = None
    if bracket or lr_time is not None:
        # in lr time the anchor is held to its standard error alone (module doc)
        # the anchor window ends at a later lr rise (its loss is its own) or where the lr halved
        until = min((x for x in (cut_at, anchor_end) if x is not None), default=None)
        u_fit = _anchor_after(cf, w, loss, fin, anchor_points, i_on, last, horizon, next_onset,
                              until,
                              smooth=smooth, shrink_t=shrink_t, min_fit=min_fit,
                              anchor_tolerance=0.0 if lr_time is not None else anchor_tolerance,
                              post_start=post_start)
        if u_fit is None and lr_time is not None:
            return None
    bracketed = u_fit is not None
    if u_fit is None:
        u_fit = w.u
    if local_span is not None and pre.size >= 5:
        cf.g0 = _local_gap(cf, w, shrink_t, local_span, horizon)
    cf.tau = max(1.0, local_tau * horizon)
    if not (bracketed or logsp):
        # an unanchored line in the plain loss is not extrapolated further than the stretch it
        # was fitted on (early in training a fit over 30 steps would otherwise be carried 200
        # steps ahead, through zero)
        cf.u_hold = float(cf.u_at(np.array([2.0 * onset_step - float(steps[pre[0]])]))[0])
    win = after[:i_win - i_on]
    h = after[:i_h - i_on]
    ep = after[: max(i_ep - i_on, min(lag_points, n - i_on))]
    if not nonfinite_after:  # isolated non-finite points the loss carried on after: left out
        win, h, ep = win[fin[win]], h[fin[h]], ep[fin[ep]]
    cf_win = cf(win)
    excess = lasting = None
    if h.size and fin[h].all():
        before = np.arange(max(0, i_on - smooth // 2), i_on)
        excess, lasting = _excess(cf, loss, h, i_ep - i_on + lag_points, smooth, noise,
                                  spike_sigmas, n_held, loss[before[fin[before]]])
    # loss jump: max over the episode (and the next few points: the loss lags the step)
    if cut_at is not None and cut_at > onset_step:  # the loss from the cut on is the later
        ep = ep[steps[ep] < cut_at]  # episode's (beyond the horizon too)
    jump = jump_points = None
    if ep.size and fin[ep].all():
        up = loss[ep] - cf.level
        jump = float(up.max())
        # where the loss first stood half its jump up (the highest point of a plateau is noise)
        jump_points = int(np.argmax(up >= 0.5 * jump))
    recovery, runaway = _recovery(cf, loss, win, cf_win, noise, recovery_tolerance, n,
                                  next_onset is None, i_ep - i_on + lag_points,
                                  max(1, i_h - i_on + n_held))
    se = 0.0
    if excess is not None and h.size and pre.size > 2:
        se = _excess_se(cf, h, u_fit, noise, min_fit)
    fall = max(0.0, float(cf.level - np.mean(cf(h)))) if h.size else 0.0
    return Impact(LossImpact(excess, jump, recovery, bool(nonfinite_after or runaway)),
                  cf.level, noise, steps[win], cf_win, se, bracketed, int(h.size), lasting,
                  cut_step, lr_time is not None, fall, jump_points)
