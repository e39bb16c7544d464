import warnings

import numpy as np
import pytest
import ruptures as rpt

from gradaudit.detect import DETECTORS
from gradaudit.detect.ema_zscore import ema_zscore, olmo_skip
from gradaudit.detect.loss_spike import loss_spike
from gradaudit.detect.pelt import level_shifts, pelt, pelt_reference
from gradaudit.detect.robust_threshold import robust_threshold


def test_registry_ids_are_stable():
    assert set(DETECTORS) >= {"robust-threshold", "ema-zscore", "pelt", "nonfinite",
                              "loss-spike", "olmo-skip"}
    for fn in DETECTORS.values():
        assert fn.__doc__


@pytest.mark.parametrize("seed", range(4))
def test_level_climb_onset_and_base(seed):
    rng = np.random.default_rng(seed)
    x = np.log(0.5) + rng.normal(0, 0.15, 2000)
    x[700:] += 0.006 * np.arange(1300)  # 2400x by the end
    onset, top, base = DETECTORS["level-climb"](x)
    assert abs(onset - 700) <= 5 and top >= 1950 and abs(base - np.log(0.5)) < 0.05
    assert DETECTORS["level-climb"](x[:1000]) is None  # 6x: under the 10x a climb needs
    x[1900:] -= 3.0  # back down at the end: no climb to the end
    assert DETECTORS["level-climb"](x) is None


@pytest.mark.parametrize("rate", [0.05, 0.06, 0.08])
def test_level_climb_of_a_few_per_cent_a_step_is_a_climb_to_the_end(rate):
    # over its last three blocks a climb of 5 % a step rises more than 2x: those blocks are
    # below the top, not back down from it (it was no climb at all)
    rng = np.random.default_rng(9)
    x = np.log(0.5) + rng.normal(0, 0.15, 2000)
    x[1600:] += rate * np.arange(400)
    onset, top, base = DETECTORS["level-climb"](x)
    assert abs(onset - 1600) <= 8 and top >= 1990
    x[1990:] -= 3.0  # back down from the top at the end: still none
    assert DETECTORS["level-climb"](x) is None


def test_nonfinite_marks_inf_and_nan_only():
    v = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308])
    assert DETECTORS["nonfinite"](v).tolist() == [False, True, True, True, False, False, False]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cost", ["l2", "normal"])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_pelt_equals_exhaustive_dp(seed, cost, m):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(mu, sd, k) for mu, sd, k in
                        [(0, 1, 80), (3, 1, 60), (3, 4, 70), (-1, 0.5, 90)]])
    if seed % 2:
        x = rng.standard_t(2, 300)  # heavy tails: lots of near-ties
    assert pelt(x, cost=cost, min_size=m) == pelt_reference(x, cost=cost, min_size=m)


@pytest.mark.parametrize("seed", [0, 1])
def test_pelt_matches_ruptures_l2(seed):
    sig, truth = rpt.pw_constant(2000, 1, 6, noise_std=1.0, seed=seed)
    x = sig.ravel()
    pen = 3 * np.log(x.size)
    want = rpt.Pelt(model="l2", min_size=5, jump=1).fit(x).predict(pen=pen)
    assert pelt(x, cost="l2", penalty=pen, min_size=5) == want


def test_level_shifts_finds_known_shift_and_ignores_noise():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.2, 2000)
    assert level_shifts(x) == []
    x[1200:] += np.log(4)
    (a, b, jump, top), = level_shifts(x)
    assert top == a  # a step
    assert abs(a - 1200) <= 10 and b == 1999 and jump == pytest.approx(np.log(4), abs=0.15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ramp, sigma", [(40, 0.25), (80, 0.15), (100, 0.1)])
def test_level_shifts_finds_a_ramp_to_a_new_level_from_where_it_starts(seed, ramp, sigma):
    # the grad norm climbs 8x over a few dozen steps and stays there: the segmentation cuts
    # the climb into steps of under 2x and the local test across the last one fails, so it
    # was no shift at all (a random differential: 352 of 379 ramped shifts missed)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, sigma, 3000)
    x[1200:1200 + ramp] += np.linspace(0, np.log(8), ramp)
    x[1200 + ramp:] += np.log(8)
    found = level_shifts(x)  # (a long ramp's stretches may each be found: one mask)
    assert found and max(sh.last for sh in found) == 2999
    assert abs(min(sh.first for sh in found) - 1200) <= 10  # where the climb starts
    assert all(sh.top > sh.first for sh in found)


@pytest.mark.parametrize("seed", range(4))
def test_level_shifts_take_no_drift_nor_a_level_after_a_dip_for_a_ramp(seed):
    rng = np.random.default_rng(seed)
    drift = rng.normal(0, 0.15, 3000) + np.linspace(0, np.log(4), 3000)  # 4x over 3000 steps
    assert level_shifts(drift) == []
    # a dip, the usual level again, then a rise of under 2x over that level (3x over the
    # dip): no shift from the dip up
    x = rng.normal(0, 0.15, 3000)
    x[1000:1030] -= np.log(1.8)
    x[1110:] += np.log(1.7)
    assert level_shifts(x) == []
    # a step (at 1500) is found where it is, not at a quieter point further back
    y = rng.normal(0, 0.25, 3000)
    y[1500:] += np.log(3)
    assert [abs(sh.first - 1500) <= 3 for sh in level_shifts(y)] == [True]


def test_level_shifts_take_no_ramp_back_past_an_earlier_shifts_start():
    # the shipped RNN run with an lr x30 for steps 600-604: one shift, at step 601. A ramp
    # searched over 200 points from a later break reached back to it too, a second shift over
    # the first, and the new-level search took an aftershock at 726 for an event of its own
    from pathlib import Path

    import gradaudit
    run = gradaudit.read_runs([Path(__file__).resolve().parents[1] / "sample_logs" / "wandb" /
                               "offline-run-20260101_000000-rnnlrspike"])[0]
    steps, g = run.series(run.grad_norm_tag)
    shifts = level_shifts(np.log(g))
    assert [(int(steps[sh.first]), int(steps[sh.top])) for sh in shifts] == [(601, 601)]


def test_level_shifts_near_the_series_start_slice_nothing_around():
    # a ramp's start searched before the series' first point took ``xs[:negative]``, nearly
    # the whole series, as the level before it (numpy warned of an empty slice; a review)
    s = np.arange(3000)
    x = np.random.default_rng(0).normal(0, 0.15, s.size) - np.log(10) * s / 3000
    x[60:] += np.log(2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        level_shifts(x)


def test_robust_threshold_spike_ratio_and_z():
    rng = np.random.default_rng(0)
    x = np.log(0.5) + rng.normal(0, 0.1, 500)
    x[300] += np.log(20)
    r = robust_threshold(x)
    assert r.trigger[300] and r.trigger.sum() == 1
    assert r.ratio[300] == pytest.approx(20, rel=0.3)


@pytest.mark.parametrize("seed", range(5))
def test_a_tenfold_jump_over_the_whole_past_triggers_before_the_level_exists(seed):
    # the first 25 points have no healthy level; a grad norm that settles from a high start
    # or climbs gently there is no event, one that tops its whole past tenfold is; after an lr
    # warm-up (``lead``), so is one that tops it 3x and stands 10x above its median since
    rng = np.random.default_rng(seed)
    start = np.log(np.r_[np.linspace(2.0, 0.5, 15), np.linspace(0.5, 1.5, 15)])
    x = np.r_[start + rng.normal(0, 0.2, 30), np.log(1.5) + rng.normal(0, 0.15, 470)]
    assert not robust_threshold(x, min_history=25).trigger.any()
    x[20] = x[:20].max() + np.log(12)
    r = robust_threshold(x, min_history=25)
    assert np.isnan(r.level[20]) and np.flatnonzero(r.trigger).tolist() == [20]
    x[20] = x[:20].max() + np.log(6)  # 6x over its past: no level to say it is anomalous
    assert not robust_threshold(x, min_history=25).trigger.any()
    assert x[20] - np.median(x[10:20]) >= np.log(10)  # and over 10x its median since
    after_warmup = robust_threshold(x, min_history=25, lead=10)
    assert np.flatnonzero(after_warmup.trigger).tolist() == [20]
    x[20] = x[:20].max() + np.log(2.5)  # 2.5x over its top: not after a warm-up either
    assert not robust_threshold(x, min_history=25, lead=10).trigger.any()
    # after a flat warm-up and past: 9x its median (over 3x its top) is no trigger, 11x is;
    # a warm-up of fewer than 5 points is no warm-up to judge after
    flat = rng.normal(0, 0.05, 300)
    flat[20] = np.median(flat[10:20]) + np.log(9)
    assert flat[20] - flat[:20].max() >= np.log(3)
    assert not robust_threshold(flat, min_history=25, lead=10).trigger.any()
    flat[20] = np.median(flat[10:20]) + np.log(11)
    assert np.flatnonzero(robust_threshold(flat, min_history=25, lead=10).trigger).tolist() \
        == [20]
    assert not robust_threshold(flat, min_history=25, lead=4).trigger.any()
    x[2] = x[:2].max() + np.log(50)  # with fewer than five earlier points nothing is known
    assert not robust_threshold(x, min_history=25).trigger[:5].any()


def test_the_trailing_level_of_the_first_points_is_the_median_of_the_points_there_are():
    # a window cut short by the series' start holds only the points there are; padded with
    # copies of the first point, the level of a window still short was that point
    from gradaudit.detect._common import trailing_median_before
    rng = np.random.default_rng(3)
    x = np.r_[np.log(0.01), rng.normal(0, 0.2, 299)]  # a first point far below the rest
    use = rng.random(300) > 0.1
    use[0] = True
    level, spread = trailing_median_before(x, use, 50, 5)
    at = np.arange(300) % 13 == 0  # sparse enough for the per-point path (_trailing_rank)
    sparse, sparse_spread = trailing_median_before(x, use, 50, 5, at=at, spread_at=lambda *_: at)
    xs, before = x[use], np.cumsum(use) - use
    upper = [np.sort(xs[:j + 1])[(j + 1) // 2] for j in range(49)]  # the head's own medians
    dev = np.abs(xs[:49] - upper)
    for i in range(300):
        if before[i] < 5:
            assert np.isnan(level[i])
            continue
        win = np.sort(xs[max(0, before[i] - 50):before[i]])
        assert level[i] == win[win.size // 2]
        if before[i] <= 49:  # the MAD over the head: deviations from the head's medians
            d = np.sort(dev[:before[i]])
            assert spread[i] == pytest.approx(d[d.size // 2] * 1.4826)
        if at[i]:
            assert sparse[i] == level[i] and sparse_spread[i] == pytest.approx(spread[i])
    assert np.all(level[np.isfinite(level)] > -1.0)


def test_window_union_is_the_unique_indices_of_every_trailing_window():
    # the sparse spread's windows, merged from counts instead of np.unique over every index
    # of every window (35 % of a 10^6-step audit with a long decaying grad norm)
    from gradaudit.detect._common import _window_union
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, w = int(rng.integers(1, 300)), int(rng.integers(1, 60))
        pos = rng.integers(0, n, int(rng.integers(1, 40)))
        ref = np.unique((pos[:, None] + np.arange(-w + 1, 1)[None, :]).clip(0))
        assert np.array_equal(_window_union(pos, w, n), ref)


@pytest.mark.parametrize("window, min_history", [(50, 25), (5, 30), (12, 12), (3, 40)])
@pytest.mark.parametrize("removed", ["scattered", "block"])
def test_retrail_equals_a_full_recomputation(window, min_history, removed):
    # the levels for a smaller healthy mask, recomputed only after the removed points, are the
    # full computation's (a min_history above two windows once left the first ones missing);
    # also where one long stretch is removed (a level shift's points), which is recomputed
    # only at its ends
    from gradaudit.detect._common import retrail, trailing_median_before
    rng = np.random.default_rng(window)
    x = rng.normal(0, 1, 3000)
    old = rng.random(3000) > 0.05
    new = old.copy()
    if removed == "block":
        new[700:1900] = False
    else:
        new[rng.choice(3000, 40, replace=False)] = False
    lv0, sp0 = trailing_median_before(x, old, window, min_history)
    lv, sp = retrail(x, old, new, lv0, sp0, window, min_history)
    full, full_sp = trailing_median_before(x, new, window, min_history)
    np.testing.assert_array_equal(lv, full)
    np.testing.assert_array_equal(sp, full_sp)


def test_ema_zscore_matches_scalar_recursion():
    rng = np.random.default_rng(1)
    g = np.exp(rng.normal(0, 0.3, 3000))
    g[rng.integers(100, 3000, 15)] *= 40
    g[2500:] *= np.exp(np.arange(500) * 0.02)  # a divergence: clips feed clips
    out = ema_zscore(g)
    mu, var = g[:25].mean(), g[:25].var()
    for t in range(25, g.size):
        sd = var ** 0.5
        assert out.z[t] == pytest.approx((g[t] - mu) / sd, rel=1e-7, abs=1e-7)
        c = min(g[t], mu + 2.5 * sd)
        mu = 0.97 * mu + 0.03 * c
        var = 0.97 * var + 0.03 * (c - mu) ** 2
    assert out.final_bound == pytest.approx(mu + 2.5 * var ** 0.5, rel=1e-7)


def test_olmo_skip_flags_big_outlier_only():
    rng = np.random.default_rng(2)
    v = rng.normal(1, 0.05, 1000)
    v[700] = 3.0
    assert np.flatnonzero(olmo_skip(v)).tolist() == [700]


def test_loss_spike_detector():
    rng = np.random.default_rng(4)
    y = 3 + rng.normal(0, 0.02, 400)
    y[250:255] += 2.0
    out = loss_spike(y)
    assert out.trigger[250] and not out.trigger[:250].any()


@pytest.mark.parametrize("seed", range(5))
def test_lone_ratio_finds_one_bad_batch_in_an_interval_mean(seed):
    # logged every 10 steps as the mean since the last log: one shuffled-label batch (loss 3.3
    # against 0.2) is one interval at ~0.5, and the next interval has forgotten it
    rng = np.random.default_rng(seed)
    per_step = 0.2 * np.exp(rng.normal(0, 0.3, 1500))
    per_step[705] = 3.3
    logged = per_step.reshape(150, 10).mean(axis=1)
    assert np.flatnonzero(loss_spike(logged, lone_ratio=2.0).trigger).tolist() == [70]
    assert not loss_spike(logged).trigger.any()  # per-step rule: the next point must be high


def _falling_interval_means(seed: int, jump: float) -> np.ndarray:
    """80 points of a loss still falling, logged every 10 steps as interval means (1 % noise),
    with a rise of ``jump`` at point 40 that decays over 10 points (an lr fault under Adam);
    the first 6 points are the warm-up (NaN)."""
    rng = np.random.default_rng(seed)
    i = np.arange(80.0)
    y = (2.45 + 2.0 * np.exp(-i / 8)) * np.exp(rng.normal(0, 0.01, 80))
    y[40:50] *= 1 + jump * np.exp(-np.arange(10) / 4)
    y[:6] = np.nan
    return y


def test_loss_jump_is_measured_against_where_a_falling_loss_is_now():
    # The median of the last 50 points sits half a window back; on a loss still falling (a
    # run logged every 10 steps, 40 points in) it is 5 % above the loss, and a +14 % jump was
    # missed on half the seeds. The newer half's median lags half as far.
    found = [bool(loss_spike(_falling_interval_means(s, 0.14), lone_ratio=2.0).trigger[40])
             for s in range(20)]
    assert sum(found) >= 16
    for s in range(20):  # the same loss without the jump, and a flat noisy one: nothing
        assert not loss_spike(_falling_interval_means(s, 0.0), lone_ratio=2.0).trigger.any()
        flat = 2.0 * np.exp(np.random.default_rng(s).normal(0, 0.1, 1500))
        out = loss_spike(flat)
        assert not out.trigger.any()
        # on a flat loss the lower of the two medians is noise: the level stays the window's
        # median almost everywhere (without the fall's significance test: at 23-25 % of points)
        known = np.isfinite(out.level)
        assert np.mean(out.level[known] != out.median[known]) <= 0.02


@pytest.mark.parametrize("seed", range(5))
def test_extreme_lone_loss_point_is_a_spike_where_the_loss_is_smooth(seed):
    # a language-model loss (per step, +-10 %): one shuffled-label batch at 15x its level, back
    # to normal at the next step, is far beyond anything the run's own batches do
    rng = np.random.default_rng(seed)
    smooth = 0.22 * np.exp(rng.normal(0, 0.1, 1500))
    smooth[700] = 3.3
    assert np.flatnonzero(loss_spike(smooth).trigger).tolist() == [700]
    assert not loss_spike(smooth, lone_factor=np.inf).trigger.any()  # the persistence rule
    # a loss whose ordinary batches reach 4x: a lone 10x batch is no event
    heavy = 0.05 * np.exp(rng.normal(0, 0.6, 1500))
    heavy[700] = 10 * 0.05
    assert not loss_spike(heavy).trigger[700]


@pytest.mark.parametrize("seed", range(5))
def test_extreme_spike_counts_under_5_sigma_where_the_level_is_noisy(seed):
    # a grad norm spread evenly over 11x (robust log sigma 0.9, but a light tail: its 99th
    # percentile is 3x the median): a 30x spike is only 3.8 sigma, yet twice as far out as
    # anything the run does - a transformer's 40x spike like that cost its loss +16 %
    from gradaudit.detect.robust_threshold import robust_threshold
    rng = np.random.default_rng(seed)
    x = np.log(0.3) + rng.uniform(-1.2, 1.2, 3000)
    level = np.median(x[1300:1500])
    x[1500] = level + np.log(30)
    out = robust_threshold(x)
    assert np.flatnonzero(out.trigger).tolist() == [1500] and out.z[1500] < 5
    x[1500] = level + np.log(8)  # within twice the run's own spike size: no event
    assert not robust_threshold(x).trigger.any()


def test_extreme_spike_counts_even_in_a_constantly_spiky_run():
    from gradaudit.detect.robust_threshold import robust_threshold
    rng = np.random.default_rng(4)
    g = 0.5 * np.exp(rng.normal(0, 0.1, 3000))
    spiky = rng.choice(np.arange(100, 3000), 60, replace=False)
    g[spiky] *= 5.0  # 2 % of the steps spike 5x: the run's own spikiness
    g[2000] = 0.5 * 20.0  # one 20x explosion: below 2x the run's typical spike in log terms
    out = robust_threshold(np.log(g))
    assert out.trigger[2000]
    assert not out.trigger[spiky[spiky > 200]].any()


def test_lr_rise_to_an_intermediate_level_is_no_restart():
    from gradaudit.detect.lr_change import lr_rises
    warm = np.linspace(1e-4, 1e-2, 100)
    decay = 1e-2 * np.cos(np.linspace(0, 1.4, 900)) ** 2
    jump = np.concatenate((warm, decay[:500], 1.5 * decay[500:]))
    (r,) = lr_rises(jump, ratio=1.25)
    assert r.start == 599 and not r.restart
    restart = np.concatenate((warm, decay[:500], decay[:400]))
    (r,) = lr_rises(restart, ratio=1.25)
    assert r.restart


def test_warm_restart_after_a_transient_lr_spike_is_still_a_restart():
    from gradaudit.detect.lr_change import lr_rises
    warm = np.linspace(1e-4, 1e-3, 100)
    cycle = 1e-3 * np.cos(np.linspace(0, 1.5, 400)) ** 2
    lr = np.concatenate((warm, cycle, cycle, cycle))
    lr[250:270] *= 30  # a fault: 30x for 20 steps, then back to the schedule
    spike, *restarts = lr_rises(lr)
    assert spike.start == 249 and not spike.restart
    assert [r.start for r in restarts] == [499, 899] and all(r.restart for r in restarts)
    # a second spike like the first returns to the spike's lr, not to the schedule's peak
    flat = np.concatenate((warm, np.full(1900, 1e-3)))
    flat[500:520] = flat[1200:1220] = 3e-2
    assert [(r.start, r.restart) for r in lr_rises(flat)] == [(499, False), (1199, False)]
    # a phase the schedule raised and decayed through its old lr keeps its peak for a restart
    phase = np.concatenate((warm, cycle[:300], 3 * cycle, 3 * cycle[:100]))
    assert [r.restart for r in lr_rises(phase)] == [False, True]
    # a jump that stays is the run's own lr from then on: no earlier peak is forgotten for it
    lasting = np.concatenate((warm, cycle, 3 * cycle[:200]))
    (jump,) = lr_rises(lasting)
    assert not jump.restart


def _heavy_tailed_g(seed, n=3000):
    # a heavy-tailed healthy grad norm: 2 % of the steps spike 3-6x on their own (scattered)
    rng = np.random.default_rng(seed)
    g = np.exp(rng.normal(0, 0.15, n))
    spikes = rng.choice(np.arange(100, n), n // 50, replace=False)
    g[spikes] *= rng.uniform(3.0, 6.0, spikes.size)
    return g, spikes


@pytest.mark.parametrize("seed,n", [(0, 3000), (1, 3000), (2, 3000), (3, 3000), (4, 400)])
def test_five_moderately_high_steps_trigger_where_single_points_cannot(seed, n):
    # a loss-scaling bug for five steps (3-5x each) in a run whose own single spikes reach 6x:
    # no point alone beats twice the run's spike size, their 5-step mean beats its 5-step means
    # (in a short run too, where the event's own windows must not set that bar)
    g, spikes = _heavy_tailed_g(seed, n)
    k = n * 2 // 3
    g[k:k + 5] = np.array([3.6, 3.2, 3.0, 4.5, 5.0])
    out = robust_threshold(np.log(g))
    assert out.trigger[k:k + 5].all()
    assert not robust_threshold(np.log(g), sustain=0).trigger[k:k + 5].any()
    # the scattered natural spikes stay untriggered (they are the run's own spikiness)
    assert not out.trigger[spikes[(spikes > 200) & ((spikes < k - 10) | (spikes > k + 10))]].any()


def test_one_huge_point_does_not_make_its_neighbours_a_sustained_window():
    # a 200x point beside ordinary ones: the single-point rule's business only; the isolated
    # 2x point three steps before it must not be pulled in by the window's mean
    g, _ = _heavy_tailed_g(5)
    g[1996:2004] = [1.0, 2.1, 1.0, 0.9, 200.0, 1.1, 1.0, 1.0]
    out = robust_threshold(np.log(g))
    assert out.trigger[2000] and not out.trigger[1997]


def test_two_point_loss_jump_found_in_a_loss_only_heavy_tailed_run():
    # a squared-error loss (multiplicative, heavy-tailed noise: sd 0.6 in log) with two batches
    # of shuffled labels (x40, x20): mostly too small for 6 sigma at one point, clear as a pair
    from gradaudit.episodes import EpisodeParams, loss_episodes
    pair = single = 0
    for seed in range(8):
        y = 0.04 * np.exp(np.random.default_rng(seed).normal(0, 0.6, 2000))
        y[1500:1502] = 0.04 * np.array([40.0, 20.0])
        found = [e.onset for e in loss_episodes(y, EpisodeParams(), loss_only=True)]
        assert all(s == 1500 for s in found)  # the pair rule is no license for the noise
        pair += 1500 in found
        # with a grad norm beside it a loss jump is secondary evidence: single points only
        single += 1500 in [e.onset for e in loss_episodes(y, EpisodeParams())]
    assert pair >= 6 and single <= 2


def test_a_spike_that_fell_back_is_transient_a_jump_and_a_held_ramp_are_not():
    from gradaudit.detect.lr_change import lr_rises
    flat = np.full(1000, 1e-3)
    spike = flat.copy()
    spike[500:520] = 3e-3
    jump = flat.copy()
    jump[500:] = 3e-3
    ramp = flat.copy()
    ramp[500:550] = np.linspace(1e-3, 1e-2, 50)
    ramp[550:] = 1e-2
    assert [(r.start, r.transient) for r in lr_rises(spike)] == [(499, True)]
    assert [(r.start, r.transient) for r in lr_rises(jump)] == [(499, False)]
    assert [(r.start, r.top, r.transient) for r in lr_rises(ramp)] == [(500, 549, False)]


def test_lr_time_counts_each_step_at_its_lr_and_the_schedule_without_the_rise():
    from gradaudit.detect.lr_change import lr_rises, lr_time
    steps = np.arange(0, 1000, 10)  # lr and loss logged every 10 steps
    decay = 1e-3 * (1.0 - steps / 2000.0)
    lr = np.where(steps <= 500, decay, 3.0 * decay)
    (rise,) = lr_rises(lr)
    run, sched = lr_time(steps, lr, rise, steps, 520)
    # before the rise both advance 10 steps at a time, each at its lr over the old lr
    ref = np.cumsum(np.diff(steps, prepend=0) * decay / decay[rise.start])
    assert rise.start == 50 and np.allclose(run[:51], ref[:51])
    assert np.array_equal(sched[:53], run[:53])  # the same up to the onset (step 520)
    # after it the run goes the rise's factor (3x) faster than the schedule, which decays on
    assert np.allclose(np.diff(run[52:]), rise.factor * np.diff(sched[52:]))
    assert np.allclose(np.diff(sched[52:]), 10 * decay[53:] / decay[rise.start], rtol=0.01)


def test_a_lasting_raise_then_a_step_decay_below_it_is_no_spike():
    # MultiStepLR x0.1 at 1500 after the lr was raised 3x for good at 600: the fall lands far
    # below the old lr, so it ends no spike (the rise stays lasting)
    from gradaudit.detect.lr_change import lr_rises
    s = np.arange(2000)
    sched = np.where(s < 1500, 1e-3, 1e-4)
    (r,) = lr_rises(np.where(s < 600, sched, 3 * sched))
    assert r.start == 599 and not r.transient


@pytest.mark.parametrize("level", [None, 0.3])
def test_hinge_gain_is_the_least_squares_gain_of_every_hinge(level):
    # against a least-squares fit of each hinge by numpy (the level fitted, or held at a value)
    from gradaudit.detect._common import hinge_gain
    rng = np.random.default_rng(3)
    t = np.sort(rng.choice(200, 60, replace=False)).astype(float)
    y = 0.3 + rng.normal(0, 0.2, t.size) + 0.05 * np.clip(t - 120, 0, None)
    cands = np.arange(-1, 199)
    gain = hinge_gain(t, y, cands, level=level)
    for k, g in zip(cands, gain, strict=True):
        u = np.clip(t - k, 0, None)
        flat = y - (y.mean() if level is None else level)
        cols = [u] if level is not None else [np.ones_like(t), u]
        coef, *_ = np.linalg.lstsq(np.column_stack(cols), flat, rcond=None)
        fitted = np.column_stack(cols) @ coef
        want = float(flat @ flat - (flat - fitted) @ (flat - fitted)) if coef[-1] > 0 else 0.0
        assert g == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert abs(int(cands[np.argmax(gain)]) - 120) <= 10  # the best hinge is where y turns up


def _falling_loss(seed: int, n: int = 400, rise_at: int | None = None, rise: float = 0.10,
                  tau: float = 80.0) -> np.ndarray:
    """A power-law fall with 3 % multiplicative noise; ``rise`` (relative, decaying over
    ``tau`` points) from ``rise_at`` on."""
    rng = np.random.default_rng(seed)
    i = np.arange(n, dtype=float)
    y = (2.4 + 2.0 * (1 + i / 4) ** -0.6) * np.exp(rng.normal(0, 0.03, n))
    if rise_at is not None:
        y[rise_at:] *= 1 + rise * np.exp(-(i[rise_at:] - rise_at) / tau)
    return y


def test_loss_rise_finds_a_rise_while_the_loss_is_still_falling():
    # a +10 % rise halfway through a falling loss: the trailing median lags above the loss and
    # its spread holds the fall, so it was found on none of these seeds; against the trend
    # of the fall it is found on 13 of 20 (onset within a block), and the same losses without
    # it give no event
    from gradaudit.detect.loss_rise import loss_rise
    found = sum(any(abs(on - 200) <= 8 for on, _, _ in loss_rise(_falling_loss(s, rise_at=200)))
                for s in range(20))
    assert found >= 11, found
    assert not any(loss_rise(_falling_loss(s)) for s in range(20))


def test_loss_rise_trend_marks_a_rise_that_starts_not_a_wander():
    # falling losses that wander slowly about their trend (an AR(1) wander as large as the
    # noise, time constant 33 points), 40 runs of 4000 points: the trend's marks count only
    # where the block two before was not elevated above it (5 events with the trailing
    # median alone, 8 with the guard, 14 without it)
    from gradaudit.detect.loss_rise import loss_rise
    events = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        i = np.arange(4000.0)
        noise = rng.normal(0, 0.03, i.size)
        step = 0.25 * 0.03 * rng.normal(size=i.size)
        wander = np.zeros(i.size)
        for k in range(1, i.size):
            wander[k] = 0.97 * wander[k - 1] + step[k]
        y = (2.4 + 2.0 * (1 + i / 4) ** -0.6) * np.exp(noise + wander)
        events += len(loss_rise(y))
    assert events <= 11, events


@pytest.mark.parametrize(("jump", "exact", "far"), [(0.25, 80, 5), (0.08, 45, 14)])
def test_loss_rise_onset_is_the_step_not_points_before_it(jump, exact, far):
    # a lasting step 2 points before a block's end: the median of the next block's points
    # reaches half way up 3-4 points before the step, and a first block whose excess barely
    # passes the bar set a half that noise before the step reached. On these 100 seeds the
    # onset was exact on none and more than 5 points off on 15 (+25 %) and 20 (+8 %); now
    # exact on 90 and 56, off by more than 5 on 2 and 11
    from gradaudit.detect.loss_rise import loss_rise
    errors = []
    for seed in range(100):
        y = 2.0 * np.exp(np.random.default_rng(seed).normal(0, 0.03, 400))
        y[206:] *= 1 + jump
        (ev,) = loss_rise(y)
        errors.append(ev[0] - 206)
    assert sum(e == 0 for e in errors) >= exact, sorted(errors)
    assert sum(abs(e) > 5 for e in errors) <= far, sorted(errors)


@pytest.mark.parametrize("level", [3.0, 0.25])
def test_loss_rise_onset_of_a_noise_free_step_is_the_step(level):
    # a loss exactly flat before a jump (logged to a few decimals, or a synthetic check) stood
    # at the climb's bar all along: the onset went back 12 points, a loss_spike warning before
    # the explosion (a review)
    from gradaudit.detect.loss_rise import loss_rise

    y = np.full(200, level)
    y[60:90] *= 2
    assert [ev[0] for ev in loss_rise(y)] == [60]


@pytest.mark.parametrize("n_blocks", [150, 700])
def test_trend_level_is_the_shrunk_least_squares_line_of_each_window(n_blocks):
    # against numpy's least squares on every window (log point index early, the index itself
    # past LOG_WINDOWS windows), healthy blocks only, the slope shrunk by hand
    import importlib
    # (the module, not the function the package exports under its name)
    lr = importlib.import_module("gradaudit.detect.loss_rise")
    rng = np.random.default_rng(5)
    block, window, gap = 8, 30, 2
    bm = -0.3 * np.log1p(np.arange(n_blocks) / 3.0) + rng.normal(0, 0.02, n_blocks)
    healthy = rng.random(n_blocks) > 0.15
    level, spread = lr._trend_level(bm, healthy, block, window, gap, floor=0.001)
    k_log = lr.LOG_WINDOWS * window
    checked = 0
    for k in range(n_blocks):
        j = np.arange(max(0, k - gap - window + 1), max(0, k - gap + 1))
        j = j[healthy[j]]
        if j.size < lr.TREND_MIN:
            assert np.isnan(level[k])
            continue
        x = (np.log((j + 0.5) * block + 1.0) - np.log((k + 0.5) * block + 1.0)
             if k < k_log else (j - k).astype(float))
        b, a = np.polyfit(x, bm[j], 1)
        res = bm[j] - (a + b * x) if b < 0 else bm[j] - bm[j].mean()  # (rising: held flat)
        s2 = res @ res / (j.size - 2 if b < 0 else j.size - 1)
        dx = x - x.mean()
        se_b = np.sqrt(s2 / (dx @ dx))
        t2 = (b / se_b) ** 2
        bs = b * t2 / (t2 + lr.SHRINK_T ** 2) if b < 0 else 0.0
        want = bm[j].mean() + bs * (0 - x.mean())
        pred_var = s2 / j.size + (x.mean() * se_b) ** 2 * (b < 0)
        assert level[k] == pytest.approx(want, abs=1e-9)
        assert spread[k] == pytest.approx(max(np.sqrt(s2 + pred_var), 0.001), rel=1e-6)
        checked += 1
    assert checked > 0.8 * n_blocks


@pytest.mark.parametrize("shape", ["ramp", "blow-up"])
def test_loss_rise_onset_is_where_a_quick_climb_starts(shape):
    # +30 % over 8 points, or an exponential blow-up (time constant 8 points), from point 203:
    # half way up the climb is late, the median of a block early; back from half way up to
    # where the loss leaves its noise is where it starts (median error on these 100 seeds:
    # -3 with the block median, +4 and +5 half way up, +2 and +1 now)
    from gradaudit.detect.loss_rise import loss_rise
    errors = []
    for seed in range(100):
        i = np.arange(400.0)
        y = 2.0 * np.exp(np.random.default_rng(seed).normal(0, 0.03, i.size))
        climb = np.minimum((i[203:] - 203) / 8, 1) * 0.3 if shape == "ramp" else \
            np.minimum((i[203:] - 203) / 8, 5)
        y[203:] *= 1 + climb if shape == "ramp" else np.exp(climb)
        (ev,) = [e for e in loss_rise(y) if abs(e[0] - 203) < 40]
        errors.append(ev[0] - 203)
    assert 0 <= np.median(errors) <= 2, sorted(errors)
    assert sum(abs(e) > 3 for e in errors) <= 10, sorted(errors)
