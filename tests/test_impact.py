import numpy as np
import pytest

from gradaudit.impact import BLOWUP_FACTOR, Blowups, bucket_mean, loss_impact


def _curve(n=3000, seed=0, noise=0.01):
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    clean = 2.0 + 4.0 * (s + 10.0) ** -0.3
    return s, clean, clean + rng.normal(0, noise, n)


def test_excess_loss_matches_injected_damage():
    s, clean, y = _curve()
    bump = np.zeros(s.size)
    bump[2000:2150] = np.linspace(1.0, 0, 150)
    y = y + bump
    out = loss_impact(s, y, s < 2000, 2000, 2001, 200)
    truth = float(np.mean(bump[2000:2200]))
    assert out.impact.excess_loss == pytest.approx(truth, rel=0.25)
    assert out.impact.loss_jump == pytest.approx(1.0, abs=0.1)
    assert 2100 <= out.impact.recovery_step <= 2160 and not out.impact.diverged


def test_horizon_cut_at_run_end_and_divergence():
    s, clean, y = _curve()
    y[2950:] = np.nan
    out = loss_impact(s, y, s < 2900, 2900, None, 200)
    assert out.impact.excess_loss is None and out.impact.diverged


def test_no_damage_gives_small_excess():
    s, clean, y = _curve(seed=3)
    out = loss_impact(s, y, np.ones(s.size, bool), 1500, 1501, 200)
    assert abs(out.impact.excess_loss) < 0.01
    assert out.impact.recovery_step == 1500 and not out.impact.diverged


def test_bracketed_excess_of_a_recovering_bump_early_in_training():
    # steep early decay: extrapolating the pre-onset slope alone overshoots; the loss comes back
    # after the bump, so the counterfactual is bracketed by the loss after the episode
    rng = np.random.default_rng(7)
    s = np.arange(1200)
    clean = 1.0 + 6.0 * (s + 5.0) ** -0.5
    bump = np.zeros(s.size)
    bump[300:400] = 0.5 * np.exp(-np.arange(100) / 25.0)
    y = clean + bump + rng.normal(0, 0.02, s.size)
    out = loss_impact(s, y, s < 300, 300, 320, 200)
    truth = float(np.mean(bump[300:500]))
    assert out.bracketed
    assert out.impact.excess_loss == pytest.approx(truth, rel=0.2)


def test_noisy_flat_loss_does_not_extrapolate_a_spurious_slope():
    # a flat loss with heavy noise (sd 0.4): a lasting +0.1 shift must read as ~0.1 on average
    # and never as the noise's chance slope extrapolated over the horizon. One estimate has a
    # standard error of ~0.05 here (200-point level and horizon means of a median-smoothed
    # loss), so single runs are checked at 3 of those and the mean over 20 seeds at ~2.
    s = np.arange(3000)
    est = []
    for seed in range(20):
        y = 1.4 + np.random.default_rng(seed).normal(0, 0.4, s.size)
        y[1500:] += 0.1
        est.append(loss_impact(s, y, s < 1500, 1500, None, 200).impact.excess_loss)
    assert np.mean(est) == pytest.approx(0.1, abs=0.025)
    assert max(abs(e - 0.1) for e in est) < 0.15


def test_lasting_damage_is_not_used_as_an_anchor():
    s, clean, y = _curve(seed=5)
    y = y.copy()
    y[2000:] += 0.3  # never comes back
    out = loss_impact(s, y, s < 2000, 2000, 2001, 200)
    assert not out.bracketed
    assert out.impact.excess_loss == pytest.approx(0.3, rel=0.2)


def _recovery_of_a_bump(level: float, noise: float, bump: float, start: int, stop: int,
                        end: int, seed: int) -> int | None:
    """recovery_step of a loss ``level`` (noise ``noise``) raised by ``bump`` over steps
    ``start``-``stop``, for an episode from step 1000 to ``end``."""
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    y = level + rng.normal(0, noise, s.size)
    y[start:stop] += bump
    out = loss_impact(s, y, s < 1000, 1000, end, 200)
    assert not out.impact.diverged
    return out.impact.recovery_step


def test_recovery_near_zero_loss_uses_the_noise_band():
    # a regression loss ~0.01 with batch noise 0.002: 5 % of the level (0.0005) is far inside
    # the noise, so without the noise band the loss would never count as recovered
    rec = _recovery_of_a_bump(0.01, 0.002, 0.05, 1000, 1020, 1020, seed=2)
    assert rec is not None and 1015 <= rec <= 1060


def test_bucket_mean_recovers_a_spike_the_last_value_misses():
    # per-step loss bucketed as a W&B chart export: 6 steps a bucket, last/min/max kept
    s, clean, y = _curve(n=1500, seed=5)
    bump = np.zeros(s.size)
    bump[902] = 8.0  # a bad batch: one step far up, inside a bucket
    bump[903:1000] = np.linspace(0.5, 0.0, 97)
    y = y + bump
    k = 6
    ends = np.arange(k - 1, s.size, k)
    last = y[ends]
    mn = np.array([y[e - k + 1:e + 1].min() for e in ends])
    mx = np.array([y[e - k + 1:e + 1].max() for e in ends])
    bs = s[ends]
    est = bucket_mean(bs, last, bs, mn, bs, mx)
    true_means = np.array([y[e - k + 1:e + 1].mean() for e in ends])
    on = int(np.searchsorted(bs, 900))
    # the spike bucket's mean is close; the last value alone misses the spike
    assert abs(last[on] - true_means[on]) > 0.2 * true_means[on]
    assert abs(est[on] - true_means[on]) < 0.25 * abs(last[on] - true_means[on])
    truth = float(np.mean(bump[900:1100]))
    with_means = loss_impact(bs, est, bs < 900, 900, 906, 200)
    with_last = loss_impact(bs, last, bs < 900, 900, 906, 200)
    assert with_means.impact.excess_loss == pytest.approx(truth, rel=0.5)
    assert abs(with_means.impact.excess_loss - truth) < abs(with_last.impact.excess_loss - truth)


def _buckets(y, k):
    ends = np.arange(k - 1, y.size, k)
    parts = [y[e - k + 1:e + 1] for e in ends]
    return (ends, y[ends], np.array([p.min() for p in parts]), np.array([p.max() for p in parts]),
            np.array([p.mean() for p in parts]))


def test_bucket_mean_reads_a_skewed_loss_from_its_spread():
    # a batch-8 cross-entropy-like loss: a falling level times gamma noise (right-skewed), as
    # a W&B chart export of 12-step buckets
    rng = np.random.default_rng(11)
    s = np.arange(3000)
    level = 1.2 + 2.0 * (s + 10.0) ** -0.4
    y = level * rng.gamma(4.0, 0.25, s.size)
    k = 12
    ends, last, mn, mx, true_means = _buckets(y, k)
    est = bucket_mean(s[ends], last, s[ends], mn, s[ends], mx)
    naive = (mn + mx + (k - 2) * last) / k  # the last value standing for the unseen ones
    err, err_naive = est - true_means, naive - true_means
    assert np.sqrt(np.mean(err ** 2)) < 0.5 * np.sqrt(np.mean(err_naive ** 2))
    # no level bias: the mean error is a small part of the naive estimate's spread
    assert abs(np.mean(err)) < 0.1 * np.std(err_naive)
    # and every estimate lies within its bucket's extremes
    assert np.all((est >= mn) & (est <= mx))


def _gamma_buckets(seed, n=3600, k=12):
    rng = np.random.default_rng(seed)
    y = 1.0 + rng.gamma(4.0, 0.25, n)
    return (*_buckets(y, k), y)


@pytest.mark.parametrize("where", [0, -1])
def test_bucket_mean_a_spike_in_the_first_or_last_bucket_stays_in_its_bucket(where):
    ends, last, mn, mx, true_means, y = _gamma_buckets(3)
    k = 12
    b = ends.size - 1 if where == -1 else 0
    without = bucket_mean(ends, last, ends, mn, ends, mx)
    mx[b] = 1000.0  # a bad batch in the run's first or last bucket
    true_means[b] += (1000.0 - y[ends[b] - k + 1:ends[b] + 1].max()) / k
    est = bucket_mean(ends, last, ends, mn, ends, mx)
    # the spike counts at 1/k in its own bucket, as in its mean
    assert est[b] == pytest.approx(true_means[b], rel=0.05)
    # and the other buckets are read as without it (no level shift from a spike at the edge)
    rest = np.arange(ends.size) != b
    assert np.max(np.abs(est - without)[rest]) < 0.01


def test_bucket_mean_is_shift_equivariant_for_a_negative_loss():
    # a loss that can be negative (a log-likelihood): the same buckets shifted by -3
    ends, last, mn, mx, _, _ = _gamma_buckets(4)
    est = bucket_mean(ends, last, ends, mn, ends, mx)
    shifted = bucket_mean(ends, last - 3.0, ends, mn - 3.0, ends, mx - 3.0)
    assert shifted == pytest.approx(est - 3.0, abs=1e-9)


def test_bucket_mean_a_shorter_last_bucket_keeps_the_plain_estimate():
    ends, last, mn, mx, _, _ = _gamma_buckets(5)
    steps = ends.copy()
    steps[-1] = steps[-2] + 5  # the run stopped 5 steps into its last bucket
    est = bucket_mean(steps, last, steps, mn, steps, mx)
    assert est[-1] == pytest.approx((mn[-1] + mx[-1] + 3 * last[-1]) / 5)
    assert est[-2] != pytest.approx((mn[-2] + mx[-2] + 10 * last[-2]) / 12)


def test_anchor_is_found_past_a_later_episode():
    # a harmless spike at 900 and the next one at 1005, inside the post-episode window
    # [1000, 1300): the window's healthy points after the second spike still anchor the
    # counterfactual (cut at 1005, it held 5 points: no anchor)
    rng = np.random.default_rng(7)
    s = np.arange(2000)
    clean = 1.0 + 4.0 * (s + 10.0) ** -0.5
    y = clean * np.exp(rng.normal(0, 0.01, s.size))
    y[900:902] *= 3.0
    y[1005:1007] *= 3.0
    healthy = np.ones(s.size, bool)
    healthy[900:906] = False
    healthy[1005:1011] = False
    out = loss_impact(s, y, s < 900, 900, 905, 200, next_onset=1005, anchor_points=healthy)
    assert out.bracketed
    # without the episode mask the window ends at the next onset: 5 points, no anchor
    assert not loss_impact(s, y, s < 900, 900, 905, 200, next_onset=1005).bracketed
    # the loss was straight back: no lasting damage
    assert abs(out.lasting_excess) < 0.01 * float(np.mean(clean[900:1100]))


def test_bucket_mean_keeps_the_last_value_without_extremes():
    s = np.array([10, 20, 30])
    last = np.array([1.0, 2.0, 3.0])
    out = bucket_mean(s, last, np.array([10, 20]), np.array([0.5, 5.0]),  # 5.0 > last: broken
                      np.array([10, 20]), np.array([1.5, 6.0]))
    assert out[0] == pytest.approx((0.5 + 1.5 + 8 * 1.0) / 10)
    assert out[1] == 2.0 and out[2] == 3.0


def test_fit_window_skips_an_earlier_episodes_aftermath():
    # an earlier explosion at 500 whose loss recovers until ~900: a steep transient decline
    # that, taken as the trend, would extrapolate far below the (flat) loss after 1000
    rng = np.random.default_rng(7)
    s = np.arange(2000)
    y = 2.0 + rng.normal(0, 0.01, s.size)
    y[500:900] += np.linspace(1.5, 0.0, 400)
    bump = np.zeros(s.size)
    bump[1000:1100] = 0.3
    y = y + bump
    healthy = ~((s >= 500) & (s < 502)) & (s < 1000)
    truth = float(np.mean(bump[1000:1200]))
    out = loss_impact(s, y, healthy, 1000, 1001, 200, floor_step=900)
    assert out.impact.excess_loss == pytest.approx(truth, rel=0.15)
    naive = loss_impact(s, y, healthy, 1000, 1001, 200, fit_span=600, bracket=False)
    assert naive.impact.excess_loss > 1.3 * truth  # what the floor protects against


def _plateau(seed, n=1500, noise=0.02):
    # a loss that falls steeply (a learning phase, steps ~250-450) and then levels off
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    clean = 0.1 + 0.6 / (1.0 + np.exp((s - 350.0) / 40.0))
    return s, clean, clean + rng.normal(0, noise, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counterfactual_does_not_carry_an_old_decline_onto_a_plateau(seed):
    # a harmless event on the plateau (step 700): the fit must not reach back into the steep
    # phase and forecast a decline that the run had already finished (an excess of +0.05 or
    # more that never was); one horizon of fit window (the default) stays on the plateau
    s, clean, y = _plateau(seed)
    out = loss_impact(s, y, np.ones(s.size, bool), 700, 701, 200)
    assert abs(out.impact.excess_loss) < 0.01
    wide = loss_impact(s, y, np.ones(s.size, bool), 700, 701, 200, fit_span=400)
    # the old, wider window's error this guards against (about 0.02 with the power-law fit,
    # 0.03 with a line in the plain loss)
    assert wide.impact.excess_loss > 0.015


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counterfactual_continues_an_earlier_aftermath(seed):
    # a first bump (step 1000, its episode over at 1040) still decays when a second, harmless
    # event starts (1060): the counterfactual starts where the loss is and carries the
    # decaying gap, instead of dropping to the fitted trend at once and booking the first
    # bump's tail (+0.04 over the horizon) as the second event's damage
    s, clean, y = _curve(seed=seed)
    tail = np.zeros(s.size)
    tail[1000:] = 0.4 * np.exp(-(s[1000:] - 1000) / 60.0)
    y = y + tail
    healthy = (s < 1000) | (s >= 1040)
    out = loss_impact(s, y, healthy, 1060, 1061, 200)
    assert abs(out.impact.excess_loss) < 0.01  # the second event did nothing
    flat = loss_impact(s, y, healthy, 1060, 1061, 200, local_span=None)
    assert flat.impact.excess_loss > 0.03  # what the gap term guards against


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_early_training_counterfactual_follows_a_power_law(seed):
    # step 40 of a loss still falling fast (10 -> 3 over the last 20 steps): a harmless event
    # there. The power law fitted to the log loss follows the curve on (mean loss over the
    # horizon 4.4); a line in the plain loss would cross zero 200 steps ahead, and even held
    # flat past its own stretch (the linear fallback) it is off by more than a quarter
    s = np.arange(400)
    y = 2.0 + 300.0 / (s + 10.0) + np.random.default_rng(seed).normal(0, 0.05, s.size)
    healthy = np.ones(s.size, bool)
    out = loss_impact(s, y, healthy, 40, 41, 200, bracket=False)
    truth = 0.0  # nothing happened
    assert abs(out.impact.excess_loss - truth) < 0.3
    assert out.cf_values.min() > 0.0  # a loss forecast, not a line through zero
    line = loss_impact(s, y, healthy, 40, 41, 200, bracket=False, log_fit=False)
    assert line.impact.excess_loss < -1.0
    assert line.cf_values.min() > 0.0  # held flat: still no forecast through zero


def test_a_loss_that_can_be_negative_is_fitted_without_the_log():
    # an ELBO-like loss around -1: no log exists; the same fit runs on the plain loss
    rng = np.random.default_rng(3)
    s = np.arange(1500)
    y = -1.0 - 0.1 * np.log1p(s / 100.0) + rng.normal(0, 0.01, s.size)
    bump = np.zeros(s.size)
    bump[1000:1050] = 0.2
    out = loss_impact(s, y + bump, s < 1000, 1000, 1050, 200)
    assert out.impact.excess_loss == pytest.approx(float(bump[1000:1200].mean()), rel=0.2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_bad_batch_counts_in_the_excess(seed):
    # two batches of garbage (+5 on a loss of 1) one step after the grad-norm onset, nothing
    # after: the excess is their share of the horizon mean (10 / 200). The running median that
    # keeps ordinary hard batches out drops them entirely unless the episode's spikes count raw
    rng = np.random.default_rng(seed)
    s = np.arange(1500)
    clean = 1.0 + rng.normal(0, 0.03, s.size)
    y = clean.copy()
    y[1001:1003] += 5.0
    truth = float((y - clean)[1000:1200].mean())
    out = loss_impact(s, y, s < 1000, 1000, 1003, 200)
    # within 0.01 on a loss of 1 with 3 % noise: the anchor gap's split keeps a positive noise
    # gap as damage, so this estimate is noisier than it was (100 seeds: 15 off by over 10 %
    # of the truth, 6 before; bias +2.7 % of it, +0.6 % before)
    assert out.impact.excess_loss == pytest.approx(truth, abs=0.01)
    smoothed_only = loss_impact(s, y, s < 1000, 1000, 1003, 200, spike_sigmas=None)
    assert abs(smoothed_only.impact.excess_loss) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_lasting_rise_under_the_anchor_tolerance_is_kept_as_damage(seed):
    # a quiet loss, well into training (a long fit window, a well-known slope), rises 3 % at
    # step 1000 and stays there: under the 5 % tolerance, so the loss after the episode still
    # anchors the counterfactual, but the gap is damage, not the forecast's error. The refit
    # used to take half of it away (0.43 of the truth)
    rng = np.random.default_rng(seed)
    s = np.arange(1, 2001)
    clean = (1.0 + 2.0 * (s / 50.0) ** -0.5) * np.exp(rng.normal(0, 0.003, s.size))
    y = clean.copy()
    y[1000:] *= 1.03
    out = loss_impact(s, y, s < 1000, 1000, 1010, 200)
    truth = float((y - clean)[999:1199].mean())
    assert out.bracketed
    assert out.impact.excess_loss == pytest.approx(truth, rel=0.15)


def test_damage_that_fades_slowly_on_a_noisy_loss_is_not_fitted_away():
    # a batch-8-like loss (30 % noise per step) late in training, +10 % that fades with a time
    # constant of 300 steps. An anchor window of two horizons still held a third of that damage
    # and the refit took it in: within 2x of the truth on 30 of 40 seeds (28-31 on other blocks
    # of 40 seeds). Out to twice the onset's step, most of the window is after the damage
    # faded: 36 (32-36), about as many as with no anchor at all (35; 32-35) - the anchor no
    # longer costs this case
    ok = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        s = np.arange(1, 3001)
        clean = 2.0 * (s + 100.0) ** -0.05 * np.exp(rng.normal(0, 0.3, s.size))
        y = clean.copy()
        y[1799:] *= 1 + 0.1 * np.exp(-(s[1799:] - 1800) / 300.0)
        out = loss_impact(s, y, s < 1800, 1800, 1810, 200)
        truth = float((y - clean)[1799:1999].mean())
        ok += truth / 2 <= out.impact.excess_loss <= 2 * truth
    assert ok >= 33


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_rising_loss_held_flat_keeps_its_anchor(seed):
    # a loss that rises slowly (t^0.05) and nothing happens at step 400: the rising slope is
    # forecast flat, off by far more than its standard error, so the loss after the onset
    # is the forecast's error, not damage. Split by that error, it read as +1.9 % of lasting
    # harm (an explosion on 17 of 20 such runs with a harmless grad spike)
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    y = 2.0 * ((s + 100.0) / 1000.0) ** 0.05 * np.exp(rng.normal(0, 0.005, s.size))
    out = loss_impact(s, y, s < 400, 400, 402, 200)
    assert out.bracketed
    assert abs(out.impact.excess_loss) < 0.01 * out.level


@pytest.mark.parametrize("width", [3, 4])
def test_a_bad_batch_of_several_steps_at_the_onset_is_no_lasting_damage(width):
    # garbage batches (+5 on a loss of 1) from the onset itself: their loss counts in the
    # excess, and none of it is lasting. The spike test's running median used to be mirrored
    # at the onset, so 3 spike points made 5 of its first window's 9 and were their own level
    rng = np.random.default_rng(width)
    s = np.arange(1500)
    clean = 1.0 + rng.normal(0, 0.03, s.size)
    y = clean.copy()
    y[1000:1000 + width] += 5.0
    out = loss_impact(s, y, s < 1000, 1000, 1000 + width - 1, 200)
    assert out.impact.excess_loss == pytest.approx(float((y - clean)[1000:1200].mean()), rel=0.1)
    assert abs(out.lasting_excess) < 0.005  # the spike's share of the horizon is 0.075-0.1
    stays = clean.copy()
    stays[1000:] += 0.3  # a step that stays is lasting damage from its first point
    held = loss_impact(s, stays, s < 1000, 1000, 1003, 200)
    assert held.lasting_excess == pytest.approx(0.3, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_the_post_episode_anchor_starts_half_a_horizon_after_the_onset(seed):
    # a harmless 20-step bump at step 1000, then the run learns (the loss falls 2.0 -> 1.7
    # around step 1060, unforeseeable before the onset) and ends 205 steps after the onset.
    # Anchored half a horizon after the onset, the counterfactual follows the fall; the old
    # anchor (a whole horizon after) has too few points before the run's end, and the flat
    # extrapolation books the fall as a large benefit
    rng = np.random.default_rng(seed)
    s = np.arange(1205)
    clean = 2.0 - 0.3 / (1.0 + np.exp(-(s - 1060) / 15.0))
    y = clean + rng.normal(0, 0.02, s.size)
    y[1000:1020] += 0.5
    truth = float((y - clean)[1000:1200].mean())
    out = loss_impact(s, y, s < 1000, 1000, 1020, 200)
    assert out.bracketed
    assert truth / 2 <= out.impact.excess_loss <= 2 * truth
    late = loss_impact(s, y, s < 1000, 1000, 1020, 200, post_start=1.0)
    assert not late.bracketed and late.impact.excess_loss < -0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_loss_that_crosses_zero_after_the_onset_is_fitted_without_the_log(seed):
    # positive before the onset, below zero soon after (a signed loss falling through 0): a
    # power law cannot follow it, and a fit space chosen from the pre-onset window alone read
    # this lasting +0.1 of damage as a benefit
    rng = np.random.default_rng(seed)
    s = np.arange(2000)
    y = 0.15 - 2.0 * (np.log(s + 1.0) - np.log(1001.0)) + rng.normal(0, 0.01, s.size)
    y[1000:] += 0.1
    out = loss_impact(s, y, s < 1000, 1000, 1001, 200)
    assert out.impact.excess_loss == pytest.approx(0.1, rel=0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lasting_damage_above_the_anchor_tolerance_is_never_an_anchor(seed):
    # a lasting 7 % rise on a quiet, still-falling loss: the post-episode stretch is no
    # counterfactual. A looser tolerance (10 %) takes it as one, and the gap's split keeps
    # it as damage (the refit alone fitted half of it away)
    rng = np.random.default_rng(seed)
    s = np.arange(2000)
    clean = 1.0 + 2.0 * (s + 50.0) ** -0.5
    y = clean * (1 + rng.normal(0, 0.005, s.size))
    y[1000:] *= 1.07
    truth = float(np.mean((y - clean)[1000:1200]))
    out = loss_impact(s, y, s < 1000, 1000, 1001, 200)
    assert not out.bracketed
    assert out.impact.excess_loss == pytest.approx(truth, rel=0.15)
    loose = loss_impact(s, y, s < 1000, 1000, 1001, 200, anchor_tolerance=0.1)
    assert loose.bracketed
    assert loose.impact.excess_loss == pytest.approx(truth, rel=0.15)


def test_a_gap_within_the_slopes_own_error_is_an_anchor():
    # a harmless bad batch at step 150 of a steep, noisy early fall (10 % noise): the slope
    # fitted over the 150 steps before it is clear but uncertain, and where the loss after the
    # episode misses its forecast by more than the gap's noise but within what that slope's
    # error explains there, the loss came back and anchors the counterfactual. Judged against
    # the noise alone, 55 of these 1000 seeds had no anchor (15 now), and the slope's error was
    # extrapolated as excess: 39 read over the harm bar (4 % of the level; 15 now). (Per 200
    # seeds the counts vary by about 5: the bars sit halfway between the two rules' totals.)
    s = np.arange(3000)
    clean = 2.0 + 8.0 * (s + 10.0) ** -0.5
    bracketed = over = 0
    for seed in range(1000):
        y = clean * (1 + np.random.default_rng(seed).normal(0, 0.1, s.size))
        y[150] *= 2.0
        out = loss_impact(s, y, s < 150, 150, 151, 200)
        bracketed += out.bracketed
        over += out.lasting_excess > 0.04 * clean[150]
    assert bracketed >= 965 and over <= 27


def test_a_slope_fitted_on_few_points_does_not_widen_the_anchors_bar():
    # a lasting +12 % step after a spike at step 200 of a steep fall logged every 10 steps: 20
    # points to fit before the onset, about two smoothing widths, too few to know the slope's
    # own error. Taken into the bar, that error let the damaged loss anchor on 91 of these 100
    # seeds, against 76 without it (the forecast sits above so steep a fall: many gaps are
    # under the tolerance either way), and the split left most of the damage to the anchor
    s = np.arange(0, 3000, 10)
    clean = 1.0 + 20.0 * (s + 20.0) ** -0.7
    anchored = 0
    for seed in range(100):
        noise = np.random.default_rng(seed).normal(0, 0.1, s.size)
        y = clean * (1 + 0.12 * (s >= 200)) * (1 + noise)
        y[s == 200] *= 1.5
        anchored += loss_impact(s, y, s < 200, 200, 210, 200).bracketed
    assert anchored <= 83


@pytest.mark.parametrize("seed", range(6))
def test_a_bad_batch_in_a_noisy_loss_recovers_at_once(seed):
    # a small-batch loss (noise 12 % of its level, heavy-tailed like real batch losses) and
    # one corrupted batch: its loss is back the next step, as the sample logs' clean twin
    # shows; the old rule (every later 5-point median in the band for five horizons) dated
    # the recovery at the last noise excursion, hundreds of steps on, or never
    rng = np.random.default_rng(seed)
    s = np.arange(2000)
    y = 0.8 * np.exp(rng.standard_t(4, s.size) * 0.12)
    y[900] = 300.0
    out = loss_impact(s, y, s < 900, 900, 901, 200)
    assert out.impact.recovery_step is not None
    assert 900 <= out.impact.recovery_step <= 905 and not out.impact.diverged


@pytest.mark.parametrize("seed", range(4))
def test_recovery_on_a_plateau_the_trend_does_not_foresee(seed):
    # the loss decays to step ~600 and plateaus; a bad batch at 600: the counterfactual carries
    # the decline on, a few % below the plateau after a few hundred steps, but the loss came
    # straight back (a recovery, not "never")
    rng = np.random.default_rng(seed)
    s = np.arange(1300)
    clean = 0.28 + 0.3 * np.exp(-s / 250.0)
    y = clean + rng.normal(0, 0.012, s.size)
    y[600] = 10.0
    out = loss_impact(s, y, s < 600, 600, 601, 200)
    assert out.impact.recovery_step is not None and out.impact.recovery_step <= 610


@pytest.mark.parametrize("rise,noise", [(0.08, 0.03), (0.10, 0.05), (0.15, 0.08)])
def test_a_lasting_rise_is_no_recovery(rise, noise):
    # the loss jumps and stays up (a little above the 5 % tolerance, in noise of its size):
    # it never came back. A review found a "recovery" in the run's last few points on a
    # quarter to a half of such seeds: windows under 10 points are no evidence now (a longer
    # minimum lost held-out impact estimates: aftermaths it left unmasked)
    found = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        s = np.arange(2000)
        y = 1.0 + rng.normal(0, noise, s.size)
        y[1000:] += rise
        y[1000:1003] += 2.0
        out = loss_impact(s, y, s < 1000, 1000, 1003, 200, next_onset=None)
        found.append(out.impact.recovery_step)
    assert sum(r is not None for r in found) <= (1 if noise > 0.05 else 0), found


@pytest.mark.parametrize("seed", range(4))
def test_recovery_waits_for_a_slow_return(seed):
    # the loss jumps 50 % and decays back over ~300 steps: recovered about where it is back
    # within 5 % (t = 230; a noise dip into the band may come a little earlier where the
    # horizon ahead holds the median), not at the first dip long before
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    y = 1.0 + rng.normal(0, 0.02, s.size)
    y[1000:] += 0.5 * np.exp(-(s[1000:] - 1000) / 100.0)
    out = loss_impact(s, y, s < 1000, 1000, 1005, 200)
    rec = out.impact.recovery_step
    assert rec is not None and 1150 <= rec <= 1330  # 0.5 e^(-t/100) = 0.05 at t = 230


def test_a_loss_that_never_left_its_band_recovered_at_the_onset_itself():
    # logged every 10 steps, the loss has no point at a grad episode's onset (2003): "stayed in
    # band" is the onset step, not the next logged loss step (which read as a recovery)
    rng = np.random.default_rng(0)
    s = np.arange(0, 3000, 10)
    y = 1.0 + rng.normal(0, 0.01, s.size)
    out = loss_impact(s, y, s < 2003, 2003, 2004, 200)
    assert out.impact.recovery_step == 2003


def test_a_rise_after_the_episode_is_no_recovery_at_its_onset():
    # the loss rose only after the episode's own points (a lag longer than the episode): the
    # recovery is searched from where it left the band, not from the episode's quiet points
    rec = _recovery_of_a_bump(1.0, 0.01, 0.5, 1010, 1040, 1001, seed=1)
    assert rec is not None and 1039 <= rec <= 1050


def test_expected_fall_is_over_the_excess_points_whatever_episode_follows():
    # the harm bar's fall is L-hat's over the horizon the excess is averaged on; a later
    # episode's onset (which ends the drawn counterfactual there) shrank it (a review)
    s = np.arange(3000)
    loss = 1.0 + 5.0 * np.exp(-s / 300) + np.random.default_rng(0).normal(0, 0.02, s.size)
    healthy = np.ones(s.size, bool)
    alone = loss_impact(s, loss, healthy, 150, 151, 200)
    h = (alone.cf_steps >= 150) & (alone.cf_steps < 350)
    assert alone.expected_fall == pytest.approx(alone.level - alone.cf_values[h].mean())
    assert alone.expected_fall > 0.3  # 5 exp(-t/300) falls ~0.75 over steps 150-350
    followed = loss_impact(s, loss, healthy, 150, 151, 200, next_onset=250)
    assert followed.cf_steps[-1] < 250  # drawn up to the next onset only ...
    drawn = followed.level - followed.cf_values.mean()
    assert followed.expected_fall > 1.5 * drawn  # ... but the fall is over the whole horizon


def test_blowups_are_where_the_loss_is_above_where_it_started():
    s = np.arange(300)
    # training, logged with batch noise: never above its start
    loss = 3.0 * (s + 1.0) ** -0.1 + np.random.default_rng(0).normal(0, 0.02, s.size)
    assert Blowups(s, loss).above.size == 0 and Blowups(s, loss).floor(200, 400) is None
    up = loss.copy()
    up[100:120] = 3.0 * BLOWUP_FACTOR * 1.5  # a blow-up well above the start, then straight back
    b = Blowups(s, up)
    assert set(b.above.tolist()) == set(range(100, 120))
    assert b.floor(90, 400) is None  # before it
    assert 120 <= b.floor(200, 400) <= 125  # back on its course at once
    tail = up.copy()
    tail[120:] += 1.0 * np.exp(-(s[120:] - 120) / 10.0)  # a decay's tail below the start level
    assert 140 <= Blowups(s, tail).floor(200, 400) <= 170  # the tail settles later
    assert Blowups(s, loss - 5.0).above.size == 0  # a loss that starts below 0: no rule
    nan = up.copy()
    nan[:290] = np.nan  # too few finite points
    assert Blowups(s, nan).above.size == 0



def test_a_blowup_beyond_reach_bounds_the_window_at_its_last_point_only():
    s = np.arange(600)
    loss = 3.0 * (s + 1.0) ** -0.1 + np.random.default_rng(1).normal(0, 0.02, s.size)
    loss[100:120] = 6.0
    loss[120:] += 1.0 * np.exp(-(s[120:] - 120) / 10.0)  # a decay's tail
    b = Blowups(s, loss)
    assert b.floor(500, 400) > 125  # within reach: where the tail settled
    assert b.floor(500, 300) == 120  # beyond reach: right after the blow-up, no settling fit


def test_a_loss_that_settles_exactly_is_settled_where_it_gets_there():
    # logged to two decimals, the loss settles at exactly its old level: no spread around the
    # line, which can pass just under the points; the floor must not fall back to the point
    # right after the blow-up, inside the decay
    s = np.arange(300)
    for level in (0.3, 1.0, 2.37):
        v = np.full(s.size, level)
        v[50:60] = 5 * level
        v[60:] += np.round(0.5 * level * np.exp(-(s[60:] - 60) / 20.0), 2)
        v = np.round(v, 2)
        back = 60 + int(np.argmax(v[60:] <= level))  # where the loss is back at its level
        assert back - 10 <= Blowups(s, v).floor(250, 400) <= back + 5, level
    still = 1.0 + 3.0 * np.exp(-np.maximum(s - 30, 0) / 400.0)  # decaying up to the onset
    still[:20] = 1.0
    assert Blowups(s, still).floor(100, 400) in (100, None)
