import numpy as np
import pytest

from gradaudit.audit import audit_run
from gradaudit.clip import batch_clip
from tests._synth import healthy, run_series


def test_options_costs_and_suggestion_rule():
    s, g, loss = healthy(seed=0)
    g[1500] *= 50
    loss[1501:1600] += 1.0
    a = audit_run(run_series(s, g, loss))
    opts = {o.method: o for o in a.clip.options}
    assert {"p99.9-healthy", "autoclip-p10", "zclip-z2.5-a0.97", "fixed-1.0",
            "pascanu-5x-mean"} <= set(opts)
    healthy_g = np.delete(g, 1500)
    assert opts["p99.9-healthy"].threshold == pytest.approx(
        np.sort(healthy_g)[int(np.ceil(0.999 * healthy_g.size)) - 1], rel=1e-9)
    assert opts["p99-healthy"].threshold == pytest.approx(
        np.sort(healthy_g)[int(np.ceil(0.99 * healthy_g.size)) - 1], rel=1e-9)
    assert opts["p99-healthy"].healthy_clipped_fraction <= 0.01
    assert opts["autoclip-p10"].healthy_clipped_fraction > 0.8
    assert opts["fixed-1.0"].episode_peak_cut[0] == pytest.approx(1 - 1.0 / g[1500])
    ok = [o for o in a.clip.options if o.healthy_clipped_fraction <= 0.01]
    assert a.clip.suggested_threshold == min(o.threshold for o in ok)
    assert a.clip.suggested_threshold <= opts["p99-healthy"].threshold


def test_batch_clip_is_the_smallest_of_median_and_largest_p99_within_the_bar_on_every_run():
    def audits_of(seeds):
        out = []
        for seed in seeds:
            s, g, loss = healthy(level=0.5, seed=seed)
            out.append(audit_run(run_series(s, g, loss)))
        return out

    def p99(a):
        return next(o.threshold for o in a.clip.options if o.method == "p99-healthy")

    # the same run twice and a third alike (a lower p99): the median is within the bar on all
    audits = audits_of((2, 2, 1))
    b = batch_clip(audits)
    assert b.method == "median-of-runs-p99-healthy"
    assert b.suggested_threshold == pytest.approx(np.median([p99(a) for a in audits]))
    # three seeds: the median clips 1.1 % of one run's healthy steps: the largest p99, which
    # is within 1 % of it here
    audits = audits_of((1, 2, 3))
    b = batch_clip(audits)
    assert b.method == "max-of-runs-p99-healthy"
    assert b.suggested_threshold == max(p99(a) for a in audits)
    assert b.suggested_threshold == pytest.approx(np.median([p99(a) for a in audits]), rel=0.01)
    assert batch_clip([]) is None


def test_healthy_set_excludes_every_episode_and_the_first_unjudged_points():
    s, g, loss = healthy(seed=4)
    g[3] *= 40  # an explosion before the detectors have any healthy level
    g[1200:1204] *= 6.0  # a spike whose loss stays put: a warning, still no healthy point
    g[2000] *= 50
    loss[2001:2100] += 1.0
    a = audit_run(run_series(s, g, loss))
    onsets = {e.onset_step: e.severity for e in a.episodes}
    assert onsets.get(1200) == "warning" and onsets.get(2000) == "explosion"
    keep = np.ones(s.size, bool)
    keep[:25] = False  # EpisodeParams.min_history: no healthy level before it
    for e in a.episodes:
        keep[e.onset_step:(e.end_step if e.end_step is not None else s.size)] = False
    h = np.sort(g[keep])
    opts = {o.method: o for o in a.clip.options}
    assert opts["p99.9-healthy"].threshold == pytest.approx(
        h[int(np.ceil(0.999 * h.size)) - 1], rel=1e-9)
    assert opts["p99.9-healthy"].threshold < 0.5 * 3  # no explosion point raised it


def test_episode_peak_cut_follows_the_reported_episodes():
    # a loss jump under a healthy grad norm (a loss_spike: clipping does not concern it), then a
    # grad spike; the cuts were listed over the grad-norm pass's own episodes, so index 0 held
    # the spike's cut against the loss_spike (a reviewer's report)
    s, g, loss = healthy(seed=9)
    loss[1000] += 3.0
    loss[1001:1004] += 1.5
    g[2000] *= 80
    loss[2001:2200] += 0.5
    a = audit_run(run_series(s, g, loss))
    kinds = [e.kind for e in a.episodes]
    assert kinds == ["loss_spike", "spike"], [e.to_dict() for e in a.episodes]
    opts = {o.method: o for o in a.clip.options}
    for o in a.clip.options:
        assert len(o.episode_peak_cut) == 2 and o.episode_peak_cut[0] is None
    assert opts["fixed-1.0"].episode_peak_cut[1] == pytest.approx(1 - 1.0 / g[2000])
    # the episode steps are the spike's only: one point, above every threshold but autoclip's
    assert opts["p99-healthy"].episode_steps_clipped_fraction == 1.0


def test_no_suggestion_from_a_handful_of_healthy_norms():
    # a run of 3, 9 or 25 logged points: no healthy level was learned (the detectors need more
    # than 25), so no norm is known healthy - and its "99th percentile" is its largest norm
    s, g, loss = healthy(n=60, seed=2)
    for n in (3, 9, 25):
        a = audit_run(run_series(s[:n], g[:n], loss[:n]))
        assert a.too_short and not a.clip.options and a.clip.suggested_threshold is None, n
        assert "fewer than 10 grad norms could be judged against a healthy level" in \
            a.clip.advice
    b = audit_run(run_series(s, g, loss))
    assert not b.too_short and b.clip.suggested_threshold is not None


@pytest.mark.parametrize("healthy_after", [0, 15, 23])
def test_a_short_excerpt_cut_around_an_explosion_suggests_no_clip_at_its_peak(healthy_after):
    # the BLOOM-176B excerpt's grad norms (0.242 -> 960 -> back), then 0, 15 or 23 healthy
    # iterations: 11, 26 or 34 points, under 10 of them judged healthy against a level (a
    # review: at 26 points one point had a level, and the threshold came from all 26 norms
    # again: 960). Judging the earlier norms in hindsight against the first level let an
    # undetected bump's or a warm-up's norms in (another review): no threshold at all.
    bloom = [0.242, 0.947, 2.39, 15.9, 145.1, 960.4, 353.2, 379.3, 650.2, 0.267, 0.205]
    rng = np.random.default_rng(6)
    g = np.array(bloom + list(0.25 * np.exp(rng.normal(0, 0.1, healthy_after))))
    s = np.arange(g.size)
    a = audit_run(run_series(s, g, 2.2 + 0.01 * rng.normal(size=g.size)))
    assert a.too_short == (g.size <= 25)
    assert a.clip.suggested_threshold is None and not a.clip.options
    assert a.healthy_quantiles is None and "could be judged" in a.clip.advice


def test_a_run_long_enough_but_mostly_unjudged_keeps_its_notes_consistent():
    # 20 healthy points, a 50x spike at step 12 whose loss never comes back: the note about
    # clip options using the norms after it must not appear where there are no options
    rng = np.random.default_rng(7)
    g = np.exp(rng.normal(0, 0.1, 20))
    g[12] *= 50
    loss = 2.0 + 0.01 * rng.normal(size=20)
    loss[13:] += 1.0
    a = audit_run(run_series(np.arange(20), g, loss))
    assert not a.clip.options
    assert not any("clip options use" in n for n in a.notes), a.notes


def test_too_short_counts_points_after_the_lr_warm_up_and_the_loss_too():
    rng = np.random.default_rng(8)
    n = 30
    s = np.arange(n)
    g = np.exp(rng.normal(0, 0.1, n))
    loss = 2.0 + 0.01 * rng.normal(size=n)
    lr = np.minimum(1.0, (s + 1) / 8.0) * 1e-3  # a warm-up over the first 7 steps
    a = audit_run(run_series(s, g, loss, lr=lr))
    assert a.too_short and any("usable grad-norm points after the lr warm-up" in x
                               for x in a.notes), a.notes
    assert not audit_run(run_series(s, g, loss)).too_short  # no warm-up: 30 points
    # a short grad norm beside a long loss: the loss is judged, so the run is not too short
    ls = np.arange(400)
    b = audit_run(run_series(np.arange(0, 400, 20), g[:20], 2.0 + 0.01 * rng.normal(size=400),
                             loss_steps=ls))
    assert not b.too_short and not b.clip.options
    assert any("the loss (400 points) is judged as usual" in x for x in b.notes), b.notes


@pytest.mark.parametrize("n_loss", [20, 28])
def test_trailing_non_finite_grad_norms_do_not_make_a_short_run_judged(n_loss):
    # 25 finite norms then NaN: the detectors' level is carried over the NaN points, where it
    # judged no norm; with 20 loss points nothing had a healthy level and the run is too
    # short, with 28 it is judged on its loss: no options either way (a review: it had some)
    rng = np.random.default_rng(9)
    g = np.r_[np.exp(rng.normal(0, 0.1, 25)), np.nan, np.nan, np.nan]
    ls = np.arange(0, 28, 28 / n_loss).astype(int)
    a = audit_run(run_series(np.arange(28), g, 2.0 + 0.01 * rng.normal(size=ls.size),
                             loss_steps=ls))
    assert a.too_short == (n_loss == 20)
    assert a.clip.suggested_threshold is None and not a.clip.options
    assert any("only 25 usable grad-norm points: too few for a healthy level" in n
               for n in a.notes), a.notes


def test_a_short_excerpt_holding_an_explosion_suggests_no_clip_at_its_peak():
    # an excerpt of 11 iterations cut around an explosion (as the BLOOM chronicles quote
    # them): its norms are mostly the explosion's, and a threshold from them sits at its peak;
    # nor may the excerpt pull the batch's threshold up
    s, g, loss = healthy(n=11, level=0.25, seed=4)
    g[3:9] = [0.9, 2.4, 16.0, 145.0, 960.0, 350.0]
    short = audit_run(run_series(s, g, loss, name="excerpt"))
    assert short.status == "ok" and short.too_short and not short.episodes
    assert short.clip.suggested_threshold is None and short.healthy_quantiles is None
    s2, g2, loss2 = healthy(level=0.25, seed=5)
    full = audit_run(run_series(s2, g2, loss2, name="full"))
    batch = batch_clip([short, full])
    assert batch.suggested_threshold == pytest.approx(
        next(o.threshold for o in full.clip.options if o.method == "p99-healthy"))


def test_batch_clip_refuses_runs_of_different_scales():
    audits = []
    for name, lvl in (("small", 0.5), ("big", 50.0)):
        s, g, loss = healthy(level=lvl, seed=3)
        audits.append(audit_run(run_series(s, g, loss, name=name)))
    b = batch_clip(audits)
    assert b.suggested_threshold is None
    assert "small" in b.advice and "big" in b.advice and "100x apart" in b.advice


def test_batch_clip_says_what_it_clips_on_each_run():
    audits, norms = [], []
    for k, lvl in enumerate((0.4, 0.5, 0.6, 1.0)):
        s, g, loss = healthy(level=lvl, seed=10 + k)
        audits.append(audit_run(run_series(s, g, loss, name=f"r{k}")))
        norms.append(g[25:])  # no episode in these runs: healthy after the detectors' start
    b = batch_clip(audits)
    med, top = b.options
    assert med.method == "median-of-runs-p99-healthy"
    # the median clips more than 1 % of two runs: the suggestion is the largest p99, as for one
    # run the smallest option within the bar (a reviewer's runs at three loss scales: the
    # median clipped 79 % of one run's healthy steps)
    assert (b.method, b.suggested_threshold) == ("max-of-runs-p99-healthy", top.threshold)
    costs = [float(np.mean(h > med.threshold)) for h in norms]
    assert med.healthy_clipped_fraction == pytest.approx(np.mean(costs), abs=2e-3)
    # the median clips the larger runs hard, and says which one most
    assert "on 2 of 4 runs (most: r3" in med.description
    assert top.threshold == max(next(o.threshold for o in a.clip.options
                                     if o.method == "p99-healthy") for a in audits)
    assert all(np.mean(h > top.threshold) <= 0.01 for h in norms)
    assert "at most 1% of the healthy steps on every run" in top.description


def test_a_damaged_run_with_few_norms_before_says_its_options_use_the_later_ones():
    # the loss never came back from an explosion 15 points after the detectors' start: too few
    # norms before it for the "before the damage" rule, which used to fall back without a word
    s, g, loss = healthy(seed=5)
    g[40] *= 60
    loss[41:] += 2.0
    a = audit_run(run_series(s, g, loss))
    (e,) = [e for e in a.episodes if e.severity == "explosion"]
    assert e.onset_step == 40 and e.loss_impact.recovery_step is None
    assert any("only 15 healthy grad norms precede it" in n for n in a.notes), a.notes


def test_norms_near_the_float_limit_give_finite_options_and_no_warning():
    # grad norms of 1e306: the mean's sum overflowed (a RuntimeWarning, the Pascanu options
    # inf), and ZClip's bound was its recursion's cap of 1e150, clipping every step (a review)
    import warnings

    import numpy as np

    from gradaudit.audit import audit_run
    from tests._synth import healthy, run_series

    s, g, loss = healthy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = audit_run(run_series(s, g * 1e306, loss))
    methods = {o.method: o for o in a.clip.options}
    assert "zclip-z2.5-a0.97" not in methods
    for name in ("pascanu-5x-mean", "pascanu-10x-mean"):
        assert np.isfinite(methods[name].threshold) and methods[name].healthy_clipped_fraction == 0


def _post_clip(tmp_path, values, name="run"):
    """A run whose ``train/grad_norm`` holds ``values``, written by tensorboardX."""
    from tensorboardX import SummaryWriter

    folder = tmp_path / "logs" / name
    w = SummaryWriter(str(folder), flush_secs=3600, max_queue=100_000)
    _, _, loss = healthy(n=values.size, seed=3)
    for s, (v, lo) in enumerate(zip(values, loss, strict=True)):
        w.add_scalar("train/grad_norm", float(v), s)
        w.add_scalar("train/loss", float(lo), s)
    w.close()
    return folder


@pytest.mark.parametrize("clip_at", [1.0, 1.5])
def test_a_grad_norm_logged_after_clipping_gets_a_note_and_no_threshold(tmp_path, clip_at):
    import gradaudit

    # pre-clip norms around 1.1, clipped at 1.0 by the trainer and logged after clipping (most
    # points sit at 1.0); clipped at 1.5, a few dozen do - both are clipped norms
    rng = np.random.default_rng(5)
    pre = np.exp(rng.normal(np.log(1.1), 0.15, 1500))
    pre[700] = 60.0
    post = np.minimum(pre, clip_at)
    (run,) = gradaudit.read_runs([_post_clip(tmp_path, post)])
    a = audit_run(run)
    notes = [n for n in a.notes if "looks logged after clipping" in n]
    n_at = int(np.count_nonzero(post == clip_at))
    assert notes == [f"the grad norm sits at its highest value, {clip_at:.4g}, on {n_at} of its "
                     f"1500 finite points: it looks logged after clipping at {clip_at:.4g}, so a"
                     " spike shows only up to that threshold, and no clip threshold is suggested"
                     " from it (log the norm before clipping: torch.nn.utils.clip_grad_norm_ "
                     "returns it)"]
    assert n_at >= 15
    assert a.clip.suggested_threshold is None and a.clip.options == []
    # the same run logged before clipping: a threshold, no such note
    (run,) = gradaudit.read_runs([_post_clip(tmp_path, pre, "pre")])
    a = audit_run(run)
    assert not any("after clipping" in n for n in a.notes)
    assert a.clip.suggested_threshold is not None


def test_a_clipped_norm_recomputed_after_clipping_is_a_ceiling_too():
    from gradaudit.clip import clip_ceiling

    # torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6): the norm of the clipped
    # grads, as Composer's OptimizerMonitor computes it, is the threshold to about 1e-7
    rng = np.random.default_rng(6)
    g = np.exp(rng.normal(0.0, 0.3, 2000)).astype(np.float32)
    over = g > 1.0
    g[over] = np.float32(1.0) + rng.choice(np.array([-2e-7, 0.0, 1.2e-7], np.float32), over.sum())
    thr, n_at = clip_ceiling(g.astype(np.float64))
    assert thr == pytest.approx(1.0, abs=1e-6) and n_at == int(over.sum())


@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_norms_logged_to_a_few_decimals_are_no_ceiling(decimals):
    from gradaudit.clip import clip_ceiling

    # Megatron prints the grad norm to 3 decimals: its highest value repeats by rounding, about
    # as often as the next one down - no pile-up
    for seed in range(20):
        rng = np.random.default_rng(seed)
        g = np.round(np.exp(rng.normal(np.log(0.5), 0.3, 5000)), decimals)
        assert clip_ceiling(g) is None, (decimals, seed)
    assert clip_ceiling(np.full(100, 0.7)) is None  # a constant norm: no threshold below it


def test_all_steps_clipped_counts_the_warm_up_and_the_episodes_too():
    # a reviewer's replay: "healthy steps clipped" left out the lr warm-up, where most of the
    # clipping a run clipped from step 0 lands (claimed 0.85 %, clipped 7.5 % of all steps)
    s, g, loss = healthy(seed=4)
    lr = np.minimum(1.0, (s + 1) / 300.0) * 1e-3
    g[:300] *= np.linspace(6.0, 1.0, 300)  # norms high while the lr warms up
    g[1500] *= 40
    loss[1501:1600] += 1.0
    a = audit_run(run_series(s, g, loss, lr))
    for o in a.clip.options:
        assert o.all_clipped_fraction == pytest.approx(np.mean(g > o.threshold)), o.method
    p99 = next(o for o in a.clip.options if o.method == "p99-healthy")
    assert p99.healthy_clipped_fraction <= 0.01 < 0.05 < p99.all_clipped_fraction
    assert p99.to_dict()["all_clipped_fraction"] == pytest.approx(p99.all_clipped_fraction)


def test_the_batch_suggestion_is_the_largest_p99_where_quantile_costs_rule_out_both(
        monkeypatch):
    # a run's cost is read from its kept quantiles (to 0.1 %): on a 300,000-step run even the
    # largest p99 read over 1 %, no option qualified, and the scan crashed (StopIteration)
    import gradaudit.clip as clip_module

    s, g, loss = healthy(seed=1)
    audits = [audit_run(run_series(s, g, loss))]
    monkeypatch.setattr(clip_module, "_cost", lambda q, thr: 0.02)
    b = batch_clip(audits)
    assert b.method == "max-of-runs-p99-healthy"


def _recurring(sigma, n_spikes, seed=5):
    """A 3000-step run whose grad norm is lognormal (``sigma``: its spread; p99/median =
    exp(2.33 sigma)) with ``n_spikes`` harmful 200x spikes, 600 steps apart from step 500."""
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    g = np.exp(rng.normal(0, sigma, s.size))
    loss = 2.5 + 3 * (s + 20.0) ** -0.4 + rng.normal(0, 0.02, s.size)
    for k in range(n_spikes):
        at = 500 + 600 * k
        g[at] = 200.0
        loss[at:at + 30] += 1.0
    return audit_run(run_series(s, g, loss))


@pytest.mark.parametrize("sigma,n_spikes,unstable", [
    (0.55, 4, True),  # explosions recur, healthy norms heavy-tailed (p99 3.5x the median)
    (0.55, 2, False),  # heavy-tailed, but only two episodes
    (0.2, 4, False),  # four episodes on a quiet norm (p99 1.6x the median)
])
def test_a_run_unstable_throughout_is_suggested_autoclip(sigma, n_spikes, unstable):
    a = _recurring(sigma, n_spikes)
    assert len(a.episodes) == n_spikes and a.status == "explosion"
    opts = {o.method: o for o in a.clip.options}
    if unstable:
        # its "healthy" norms hold its instability: the percentile options are set by it
        assert a.clip.method == "autoclip-p10"
        assert a.clip.suggested_threshold == opts["autoclip-p10"].threshold
        assert a.clip.suggested_threshold < a.healthy_grad_norm
        assert "unstable throughout the run (4 grad-norm episodes" in a.clip.advice
    else:
        assert a.clip.method == "p99-healthy" and "unstable" not in (a.clip.advice or "")


def test_fp16_overflow_steps_do_not_make_a_noisy_run_unstable():
    # a review: 16 loss-scaler overflows (nonfinite warnings) on a calm small-batch run whose
    # norms reach 2.6x their level were read as recurring episodes; AutoClip's threshold,
    # below the healthy median, doubled its final loss in a replay
    rng = np.random.default_rng(8)
    s = np.arange(3000)
    g = np.exp(rng.normal(0, 0.45, s.size))
    g[100::180] = np.inf
    loss = 2.5 + 3 * (s + 20.0) ** -0.4 + rng.normal(0, 0.02, s.size)
    a = audit_run(run_series(s, g, loss))
    assert sum(e.kind == "nonfinite" for e in a.episodes) >= 10
    assert a.clip.method == "p99-healthy" and "unstable" not in (a.clip.advice or "")


def test_the_batch_threshold_leaves_out_runs_unstable_throughout():
    calm = [_recurring(0.2, 1, seed=k) for k in range(3)]
    wild = _recurring(0.55, 4)
    assert wild.clip.method == "autoclip-p10"
    b = batch_clip([*calm, wild])
    assert "1 run(s) unstable throughout left out" in b.advice
    assert b.suggested_threshold == pytest.approx(batch_clip(calm).suggested_threshold)
    alone = batch_clip([wild])
    assert alone.suggested_threshold is None and "left out" in alone.advice


def test_an_explosion_after_the_loss_ends_is_not_a_loss_that_never_came_back() -> None:
    # a loss logged only at the start (a key logged without a step, beside a stepped grad
    # norm) says nothing of a recovery: no "never came back" note, and the clip comes from the
    # healthy norms around the episode as for any run
    s, g, loss = healthy(n=1000, seed=3)
    g = g.copy()
    g[45:50] *= 40.0  # (early: fewer than 50 healthy norms before it)
    run = run_series(s, g, loss[:1], loss_steps=s[:1])
    audit = audit_run(run)
    (e,) = [e for e in audit.episodes if e.severity == "explosion"]
    assert e.onset_step == 45 and e.loss_impact.recovery_step is None
    assert not any("never came back" in n for n in audit.notes), audit.notes
    assert audit.clip.suggested_threshold < 2 * np.quantile(np.delete(g, range(45, 50)), 0.99)
