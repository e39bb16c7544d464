"""Loss impact of an episode: counterfactual loss, excess loss, jump, recovery, divergence.

Definitions follow docs/findings.md ("Loss impact"). Rules and defaults:

- **Smoothing.** Fits and the excess use the loss smoothed by a running median of ``smooth``
  (9) logged points: a per-step mini-batch loss is heavy-tailed, and one hard batch (which no
  counterfactual can predict) must not dominate a 200-step mean; a lasting rise passes through
  the median unchanged.
- **Fit window.** The healthy finite loss points in the ``fit_span`` steps before the onset
  (default one horizon), at least ``min_fit`` (20) of them (the window reaches further back
  if needed) and at most ``fit_points`` (300). A window in *steps* keeps a sparsely logged run
  (every 10 steps, W&B buckets) from reaching back into the steep early phase of training.
  One horizon, not two: a loss that fell steeply and then levelled off (a learning phase) has
  its old decline in a longer window, and the trend carries it into the forecast; on 13
  benchmark seeds (``benchmarks/detection``, held-out protocol; measured with the line model of
  the time) one horizon puts 73 % of the estimates within 2x of the truth against 70 % for two,
  detection and false alarms alike.
- **Aftermath.** An earlier episode's loss aftermath (from its onset to its recovery step) is
  no healthy stretch: the fit window starts after it (``floor_step``, set by the engine) when at
  least ``min_pre`` (5) healthy points lie there, else it may reach back as before. Fitting the
  recovery from an earlier explosion as the trend extrapolates a steep, transient decline.
  A window of fewer than ``min_fit`` points is fitted flat (too short for a trend).
- **Aftershocks.** Within two horizons of a harmful lr rise whose loss has not come back (no
  recovery step yet), the loss is the rise's to answer for, and a later episode there (an
  aftershock: the grad norm spikes again as the model settles at the new lr) is judged against
  the loss as it stood: ``flat=True``, set by the engine, fits a level, no trend, to the last
  ``min_fit`` points between the rise's episode and the onset (never before it; the engine
  asks for at least 2 there, else it judges as before), with no bracketing and no local
  gap. Fitted as a trend, the loss's recovery from the rise extrapolated a steep decline and
  charged the aftershock with the rise's damage: a 30x lr spike in a language model at step
  602 (+1.6 over its horizon), then a 15x grad spike at step 690 that the loss did not rise at,
  read +0.59 of lasting harm, an explosion; against the loss as it stood, -0.03. Flat is
  conservative where the loss is still coming down: a recovery that goes on reads as a
  negative excess (the reason says the loss went on recovering, not that the episode gained;
  synthetic, a recovery over ~60 steps: -0.34), and lasting harm the aftershock adds during
  such a recovery is understated by what the recovery would still have brought (+0.5 read
  -0.2 to +0.15): a false explosion traded for a harmful aftershock called a warning where
  the loss recovers fast.
- **Blow-ups.** A loss above where its log started - its running median over ``BLOWUP_FACTOR``
  (1.2) x the highest of its first 5 running medians, plus 3 sigmas of its batch noise
  (:class:`Blowups`) - is a blow-up, whether or not an episode was found there (one in the
  detectors' first points is not). The fit window starts, as after an aftermath, where the last
  blow-up before the onset has settled: the first point after it where the smoothed loss is back
  on its later course (no more than 3 robust sigmas above a line fitted to the second half of
  the stretch up to the onset; a decay's tail below the start level is still no trend). A
  blow-up more than two horizons before the onset bounds the window at its last point only, and
  one still decaying at the onset gives no floor. A trend fitted on a blow-up's decay
  extrapolates that decay: a clipped RNN that blew up from 3.9 to 21 at step 20 read a grad
  spike at step 65 as +0.93 of lasting harm, where a branch that clipped that spike harder ends
  0.19 *higher* (``benchmarks/detection``, seed 39000). With the floor it is no harm, but its
  estimate is -0.94: the 19 points left after the blow-up are too few for a trend (20), and the
  flat fit misses the loss's own fall.
- **Bucketed exports.** Where the loss is a W&B chart export (one value per bucket, the
  bucket's last, with ``__MIN``/``__MAX`` beside it) the engine passes the estimated bucket
  means (:func:`bucket_mean`): the excess is a mean over steps, and a bad batch's spike lives
  in the bucket's max, not its last value. An ordinary bucket's mean is read from its spread
  (min to max), not from its one last value: 2.3-2.7x less error per bucket; on the
  benchmark's 72 held-out seeds 1734 -> 1756 of 2234 estimates within 2x (most of it the
  batch-8 classifier's loss-scale bug and the classifier's lasting lr x4, both read from W&B
  exports), 549 -> 555 of 721 on 24 fresh seeds, 332 -> 328 of 407 on the development pool.
- **Model.** ``log L^(t) = a + b (log(t + 1) - log(onset + 1))`` - a power law in the step, the
  shape of training curves (it slows down by itself and never crosses zero) - fitted by least
  squares on the log of the smoothed loss with one pass of 3-sigma MAD outlier rejection. A loss
  with a value <= 0 in the fit window or in the stretch it is compared with (up to
  the end of the post window below) - a loss that can be negative - is
  fitted the same way without the log (``log_fit=False`` always does). On 13 benchmark seeds
  the power law puts 75 % of the estimates within 2x of the truth against 73 % for the same line
  in the plain loss (early in training the line was forecasting a regression loss below zero).
  The step counts from 0, the start of training, also where the log starts later (a resumed
  run's new log: the curve is the whole training's); steps below 0 count from the first.
  Known trade-offs: a loss that levels off exponentially towards a floor bends down in log-log
  and is extrapolated too low (a harmless blip on ``2 + 8 exp(-t/300)`` at step 150 reads as
  harm; the line in the plain loss does not); and the level of a log fit is a geometric mean,
  below the arithmetic mean of a skewed loss: at pseudo-onsets of the benchmark's clean runs the
  excess averages +1.9 % of the level (median 0.0 %; +6 % for the heavy-tailed regression loss).
  Centring the log fit on the arithmetic mean (Duan's smearing) brings that to +1.3 % but puts
  1.8 points fewer estimates within 2x of the truth: the excess is measured on the running
  median, which understates damage that scales a skewed loss, and the two biases partly cancel.
- **Slope shrinkage.** The fitted slope ``b`` is only as trustworthy as its standard error
  ``se_b`` (from the larger of the per-point noise and the smoothed residuals' wander, times the
  smoothing width), so it is shrunk towards flat as ``b t^2 / (t^2 + shrink_t^2)`` with
  ``t = b / se_b`` and ``shrink_t`` = 3: a slope at 3 standard errors keeps half its size, a
  clear trend (t > 9) almost all, and the noise of a flat, noisy loss no longer extrapolates
  into a steep decline. A rising slope (``b > 0``) is extrapolated flat. The linear fallback
  only, unless bracketed (below): the trend is not extrapolated further past the onset than the
  stretch it was fitted on reaches before it (``onset - first fitted step``); beyond, it is held
  flat - early in training a line fitted over 30 steps would otherwise be carried 200 steps
  ahead, through zero (the power law needs no such hold: on the benchmark seeds it changes no
  verdict and no estimate's 2x band). The level ``a`` is then the mean of the detrended smoothed
  window (in log space: its geometric mean).
- **Bracketing.** Where the loss comes back after the episode - the smoothed loss over the
  ``post`` window ``[onset + post_start x horizon, onset + max(2 horizon, min(5 horizon,
  onset)))`` (``post_start`` 0.5; the end below; after the episode's end, before the run's end
  and before ``cut_at`` (a later lr rise's loss is its own); the ``anchor_points`` there - the
  engine passes the points outside every episode's onset-to-end span, so later episodes are
  skipped, not cut at (their loss aftermaths stay in; without the mask the window ends at
  ``next_onset``); at least ``max(5, min_fit // 2)`` points; the loss finite up to the window's
  end, or to the next episode with the mask) is not above the pre-onset extrapolation by more
  than ``max(2 x the forecast's standard error there, anchor_tolerance x the level)`` (5 %) -
  the model is refitted to the pre-onset window and the post window together (same shrinkage):
  the counterfactual is then interpolated between two anchors instead of extrapolated from one
  (much more accurate early in training, where the slope is steep and uncertain). The forecast's
  standard error there is the gap's noise and the error of the slope it extrapolates at the post
  window's lever (its mean ``u`` less the fit window's): the slope's standard error shrunk
  towards flat as the slope was, and none where no trend is used (a flat fit, a rising slope
  held flat) or where the fit window holds fewer than ``SLOPE_ERROR_WIDTHS`` (5) smoothing
  widths, too few independent stretches to know that error (the fit window spans one horizon, so
  at the default horizon and smoothing the slope term counts only where the loss is logged every
  1-4 steps, from an onset 90 logged intervals in; the split below still takes the slope's error
  from any window). A loss that stays up beyond both (lasting damage) is never used as an
  anchor. A positive gap within them is lasting damage or the forecast's own error, and it is
  split between them by their variances: damage of the tolerance's size against the slope's
  standard error (unshrunk) times the lever and the gap's noise; the damage's share is taken off
  the post window before the refit. The slope's standard error assumes the power law is right (a
  rising slope, held flat, has none: its gap stays with the anchor). Until 2026-11-28 the bar
  was 2 x the gap's noise alone: a loss that a trend's forecast missed by no more than that
  trend's own error was no anchor, and the unanchored forecast carried the error into the
  estimate and into its standard error (the harm bar). Benchmark, before -> after: impact within
  2x 80.1 -> 80.4 % (seeds 13000-48000, where it was checked first), 81.4 -> 81.8, 79.4 -> 79.9,
  79.6 -> 79.9, 81.0 -> 81.0, 82.2 -> 82.3, 84.7 -> 85.3 and 79.7 -> 80.2 % on the other seven
  pools (the last, seeds 169000-180000, was scored blind with the second version below: 80.8 %);
  severity agreement up on six pools (+0.1 to +0.4 points), the same on one, down 0.2 on one;
  harmful events called warnings 400 -> 389 on the six older pools (the regressor's lr faults
  and shuffled labels), explosions on harmless events 147 -> 155; one clean run fewer with an
  explosion (an unclipped RNN's spike while its loss fell fast). Two reviews shaped it. The
  first version took the slope's unshrunk error into the bar (the split's): twice the gain on
  the pools, but on a flat loss, whose slope is shrunk to nothing, that error is large, and a
  lasting +20 % step on a loss logged every 10 steps with 10 % noise was anchored on 18 of 40
  seeds, read down to 0 and called a warning on 4-5 of them. The second, shrunk but from any
  window, still let lasting damage of +8 to +30 % anchor early in training, where a steep fall's
  slope is fitted on about 20 points (logged every 5-20 steps) and the bar reached 3-4x the
  tolerance: on a grid of steep and LM-like falls (onsets at steps 100-1000, logged every 1-50
  steps, 5-15 % noise, lasting or fading damage of 5-12 % after a grad spike, 40 seeds each) 80
  of 30720 harmful events went from explosion to warning. With the five widths: 19 (136 the
  other way; 16 of the 19 logged every step with about 50 points to fit at onset 100: the cost
  persists just above the guard), 1 of 7680 harmless events becomes an explosion, and 104
  lasting-damage estimates leave the 2x band while 5 enter it; on the first review's grids
  (onsets from step 300) 4 of 76800 estimates move, none across the 2x band, and no verdict. In
  learning-rate time (below) the same bar applies: 40 seeds of a harmless lasting lr rise read
  in it 35 -> 40 times (within 2x 35 -> 40), with a small harm 26 -> 35 (within 2x 30 -> 27).
  The bar does not reach the forecast's model error: a steep fall that bends (an exponential
  decay to a floor, a fast learning phase ending) is a confident slope, and a harmless spike
  there still reads as harm. On a quiet loss with a long fit window the slope's error is small,
  the damage's share is 0.97-1.0, and the anchor mainly pulls the counterfactual down to a loss
  that came back below it; on the benchmark's noisier losses it is a real split (median share
  0.36 over 160 positive gaps, 58 % under one half), and a short or very noisy fit window leaves
  the gap to the anchor as before. (Until the split, the refit took half of any such rise away:
  a lasting +2 to +4 % on a quiet loss read as 0.41-0.44 of its truth, now 1.02-1.03; with 2 %
  noise 0.32-0.40, now 0.65-0.81, more spread. Costs: the prior gives no weight to "no damage at
  all", so with none the positive half of the gaps reads as +0.01 to +0.13 % of the level, a
  one-sigma gap is mostly damage, and a forecast that misses a convex loss's bend by under the
  tolerance is read as damage (-0.9 % -> +1.3 % of the level on an exponential floor, under the
  harm bar). A negative gap is no gain: split alike, it lost 39 estimates on held-out seeds
  13000-48000.) A 3 % tolerance (the harm bar) instead lost estimates and severity verdicts: an
  unanchored fit carries its extrapolation's uncertainty into the harm bar. The anchor starts
  half a horizon after the onset, not a whole one: how soon the loss settles has nothing to do
  with the horizon the excess is averaged over; the nearer anchor interpolates over a shorter
  gap, and a run that ends within two horizons of the onset still has one (75 % -> 78 % within
  2x on the 13 seeds). The window used to end at the next episode's onset: in a spiky run (an
  unclipped RNN) the next explosion often comes within two horizons, which left no anchor, and
  the falling power law was extrapolated under a loss that later explosions kept up (benchmark:
  72 held-out seeds 1756 -> 1781 of 2234 estimates within 2x (a first version: natural
  explosions 114 -> 139 of 256); no change on 24 fresh seeds, 555 -> 554 of 721, nor on the
  development pool, 328 -> 327 of 407). Known costs (synthetic, from a review): a later
  episode's lasting damage just under the tolerance raises this one's counterfactual (a later +4
  % took a +0.75 % lasting excess to -1.2 %), and a scheduled lr drop (no episode) after a later
  episode now reaches anchors it did not (a -10 % step: -0.4 % -> +2.5 %). The window ends at
  twice the onset's step (at least two horizons after the onset, at most five: :func:`post_end`)
  - the same span in log time covers more steps later in training, where the power law changes
  slowly - and at ``anchor_end``, where the engine finds the lr fallen to half its lowest in the
  horizon before the onset: at once (a step decay), or, past two horizons, within one horizon (a
  cool-down, as in a warmup-stable-decay schedule; not a long cosine tail). The loss after such
  a fall drops faster than a counterfactual without the lr can follow: anchored through a 10x
  step decay 1.5 horizons after it, a harmless spike read +7 to +9 % of lasting harm, and
  through a linear cool-down to zero from one to three horizons after it, an explosion on 20 of
  20 seeds (0-1 with the cut, as with the old window). Whether the loss came back (the gap, its
  tolerance and the split) is judged on the window's points before two horizons after the onset
  (all of them where too few lie there): further out a forecast whose slope was shrunk towards
  flat misses by more, and that miss hid damage (judged on the whole window, a lasting +4 % on a
  loss with 2 % noise was an explosion on 12 of 30 seeds; 22 with the old window, 26 now). The
  window used to end two horizons after the onset: late in training it still held damage that
  was fading, and the refit took it in (fresh seeds: the batch-8 classifier's lr ramp, a true
  +0.15 to +0.18, read +0.03 to +0.07 on 7 of 24). Benchmark (pools regenerated on 2026-11-27):
  seeds 13000-48000 893 -> 901 of 1133 within 2x (the end chosen there among 1.5 to 5 horizons,
  the run's end and 0.5 or 1x the onset's step past it; a fixed 4 or 5 horizons scored alike but
  called a spike early in training an explosion on 1 or 2 clean runs, where one power law cannot
  join a steep fall and the flat loss after it), seeds 49000-84000 876 -> 897 of 1100, fresh
  seeds 85000-108000 564 -> 589 of 739, and seeds 109000-120000, made after the change was
  chosen, 299 -> 310 of 387; no clean run gains an explosion; severity agreement 86.6 -> 87.7 %
  (72 seeds), 85.9 -> 87.3 % (fresh). Costs: more explosions on faults labelled harmless (true
  harm under the labels' 5 %, over the engine's 3 %: 72 -> 78 lines of score.py's report on the
  72 seeds); two 1.5x step decays one and two horizons after a harmless spike (neither a fall to
  half at once) make it an explosion on 1-2 more of 20 seeds (on 18-19 before already, with a 30
  % loss drop); a loss that is non-finite or <= 0 further after the episode now cancels the
  anchor or the log fit where it did not (the engine makes a later NaN its own episode, which
  ends the window first).
- **Local gap.** The mean residual of the smoothed loss against the fit over the last
  ``local_span`` horizons (a quarter) before the onset - the loss's own slow wander, or an
  earlier episode's aftermath still decaying - shrunk towards 0 like the slope (by its
  standard error, ``shrink_t``), is added to the counterfactual at the onset and decays with
  time constant ``local_tau`` horizons (a quarter): the counterfactual starts where the loss
  was, and an earlier bump's tail is not booked as the new episode's damage.
- **Learning-rate time** (``lr_time``; the engine asks for it only after a *lasting* lr rise -
  no warm restart, no spike that fell back to its old lr in one step - that the model above
  found harmless). Training progress goes with the sum of the lr, not the step count: a
  permanent lr x3 on a decaying schedule can leave the loss *below* what the schedule would
  have reached, and the anchor above, taken in steps, fits that gain away (the benchmark's RNN:
  a true -2.5 % of the loss read as +1 %, on every held-out seed). Here the whole model runs
  in learning-rate time (:func:`gradaudit.detect.lr_change.lr_time`): the fit and the anchor
  at the run's own lr time, the counterfactual at the schedule's. The anchor must then lie
  within 2 standard errors of the pre-onset trend's forecast (the noise and the shrunk slope's
  error, as under "Bracketing"), with no tolerance on top (a loss that made
  exactly the raised lr's progress); where it does not, there is no such estimate (None). The
  engine's verdict stays the step-time one: learning-rate time only changes the numbers of an
  episode already judged harmless, never harm into no harm (with that guard, the benchmark's
  severity verdicts are unchanged, and its helpful lr jumps are measured as the gains they
  are: 54 of 56 held-out seeds within 2x, from 0). A spike stays in step time: its few raised
  steps rarely make their lr's progress (measured: with spikes in learning-rate time too, 18
  held-out estimates fewer within 2x: 1327 of 1741 against 1345).
- ``excess_loss``: mean over ``[onset, onset + horizon)`` of the smoothed loss minus ``L^``,
  where the episode's own spike points (in the episode and the ``lag_points`` after it, above
  a running median of ``smooth`` points by ``spike_sigmas`` (6) noise sigmas; at the onset that
  median reaches back over the last points before it, so a bad batch of up to ``smooth // 2``
  steps right at the onset is no level of its own) count at their raw value: the
  smoothing keeps an ordinary hard batch out of the mean, but a bad batch's loss is the damage.
  None when the loss is non-finite there. ``Impact.lasting_excess`` is the same mean without
  the spike points: the lasting damage the engine's harm verdict is about (one bad batch whose
  loss comes straight back is a warning, however high it jumped). With ``cut_at`` (the engine
  passes the onset of the first later episode that starts with an lr rise) the loss from that
  step on is that episode's to answer for: where it falls inside the horizon, the horizon's
  remaining points count at the mean excess of the last ``smooth`` points before it (the
  damage this episode had left by then is held, not dropped), and ``Impact.cut_step`` says
  where. Only an lr rise cuts: a
  later grad episode may be this one's aftershock (in an unclipped RNN one explosion sets off
  the next), whose damage the horizon keeps; a natural spike 20 steps before an lr x30 fault
  was otherwise charged with the fault's damage (+1.14) and called an explosion.
- ``loss_jump``: the highest loss over the episode's logged points, onset to end, and at least
  its first ``lag_points`` (3: the loss lags the grad norm), minus ``L^(onset)``.
  ``Impact.jump_points`` counts the logged points from the onset to the first that stands half
  that jump above ``L^(onset)``: the reason says the loss *jumped* where that is within
  ``ABRUPT_POINTS`` (3), and *rose* where later (a climb).
- ``recovery_step``: the step where the loss came back for good: from the loss's highest point
  above the band in the episode (and its lag) on, the first point where the loss smoothed over
  5 points is back under ``L^`` plus the tolerance - ``max(recovery_tolerance x |L^|, 3 x the
  5-point median's noise)`` (``recovery_tolerance`` = 5 %; the noise term matters for a loss near
  0, e.g. a regression loss of 0.01, whose 5 % is far below its own batch-to-batch noise) - and
  after which the median excess over a horizon stays within ``recovery_tolerance`` x ``L^`` (or
  3 standard errors of that median; near the window's end, over what is left of it, but not
  over fewer than 10 points). The onset step itself where the loss never rose above the band
  (also where the loss is not logged at the onset).
  "Came back" is one-sided (a loss below ``L^`` has recovered) and judged on a horizon's median,
  not on every later point: a rule that the smoothed loss stay in the band at every point up to
  five horizons on put a bad batch in a noisy loss, whose loss came straight back (the clean
  twin shows it), 592 steps late at the first noise excursion, and called a recovery "never"
  where the extrapolated ``L^`` drifted off a plateau. Against the clean twins of the
  benchmark's seeds 5000-12000 the median error fell from 162-178 steps to 22-82.
- ``diverged``: the loss went non-finite after the onset (before the next episode's onset: a
  later episode's non-finite points are its own), or it never recovered and ends the
  run above ``L^(onset)`` by more than the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from gradaudit.detect._common import MAD_TO_SIGMA, diff_sigma
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
    if post.size < max(5, min_fit // 2) or not fin[i_on:i_fin].all():
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
    runaway = False
    if recovery is None and reached_end and win.size > 1:
        tail = loss[max(int(win[0]), n - 20):]
        tail = tail[np.isfinite(tail)]
        runaway = bool(tail.size and np.median(tail) > level + tol)
    return recovery, runaway


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
    min_pre: int = 5,
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
    nonfinite_after = not bool(fin[i_on:i_next].all()) if i_on < n else False
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
    cf_win = cf(win)
    h = after[:i_h - i_on]
    excess = lasting = None
    if h.size and fin[h].all():
        before = np.arange(max(0, i_on - smooth // 2), i_on)
        excess, lasting = _excess(cf, loss, h, i_ep - i_on + lag_points, smooth, noise,
                                  spike_sigmas, n_held, loss[before[fin[before]]])
    # loss jump: max over the episode (and the next few points: the loss lags the step)
    ep = after[: max(i_ep - i_on, min(lag_points, n - i_on))]
    if cut_step is not None:  # the loss from the cut on is the later episode's
        ep = ep[steps[ep] < cut_step]
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
