import numpy as np
import pytest

from gradaudit.audit import audit_run
from gradaudit.detect.pelt import level_shifts
from tests._synth import healthy, run_series


def _one(a):
    assert len(a.episodes) == 1, [e.to_dict() for e in a.episodes]
    return a.episodes[0]


def test_spike_with_loss_damage_is_explosion_with_exact_onset():
    s, g, loss = healthy()
    g[1500] *= 50
    loss[1501:1600] += np.linspace(1.5, 0, 99)
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.onset_step, e.peak_step, e.kind, e.severity) == (1500, 1500, "spike", "explosion")
    assert e.end_step == 1501 and e.peak_ratio == pytest.approx(50, rel=0.3)


def test_spike_that_left_loss_alone_is_warning():
    s, g, loss = healthy(seed=1)
    g[1000:1002] *= 20
    a = audit_run(run_series(s, g, loss))
    e = _one(a)
    assert e.severity == "warning" and a.status == "warning"


def test_bloom_like_ramp_onset():
    # BLOOM-176B: 0.242 (31214) -> 0.947 -> 2.39 -> 15.9 -> 145 -> 960 (31219), then decays.
    s, g, loss = healthy(n=2000, level=0.242, sigma=0.05)
    s = s + 30000
    i = 1214
    g[i + 1:i + 6] = [0.947, 2.390, 15.886, 145.119, 960.351]
    g[i + 6:i + 12] = [353.2, 379.3, 60.0, 8.0, 1.2, 0.5]
    loss[i + 5:i + 40] += np.linspace(2.9, 0, 35)
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.onset_step == 31215 and e.peak_step == 31219 and e.severity == "explosion"


@pytest.mark.parametrize("start", [800, 1300])
@pytest.mark.parametrize(("rate", "length"), [(0.25, 25), (0.1, 40), (0.06, 60)])
def test_slow_ramp_onset_within_3_steps(start, rate, length):
    # log g climbs `rate` a step: 1.28x a step down to 1.06x (where the first triggering
    # point holds under half the climb, so the onset is fitted, not that point)
    s, g, loss = healthy(seed=5, sigma=0.08)
    g[start:start + length] *= np.exp(np.arange(1, length + 1) * rate)
    loss[start + 20:start + 120] += 0.8
    e = _one(audit_run(run_series(s, g, loss)))
    assert abs(e.onset_step - start) <= 3


def test_level_shift_after_lr_jump_open_ended_with_advice():
    s, g, loss = healthy(seed=6)
    lr = np.full(s.size, 1e-3)
    lr[2000:] = 8e-3
    g[2000:] *= 5
    loss[2000:] += 0.4
    a = audit_run(run_series(s, g, loss, lr))
    e = _one(a)
    assert e.kind == "level_shift" and e.end_step is None and abs(e.onset_step - 2000) <= 3
    assert "learning rate" in a.clip.advice and "8" in a.clip.advice


def test_a_harmless_level_shift_gets_no_advice_to_lower_the_lr():
    # gradient accumulation switched on: the grad norm settles 5x higher, the loss goes on
    s, g, loss = healthy(seed=6)
    g[2000:] *= 5
    a = audit_run(run_series(s, g, loss))
    e = _one(a)
    assert e.kind == "level_shift" and e.end_step is None and e.severity == "warning"
    assert "without lasting harm" in a.clip.advice and "lower the learning rate" not in \
        a.clip.advice
    # the suggestion is for the run's regime at its end: about its p99, not the old one's
    after, before = g[2100:], g[1000:2000]
    assert a.clip.suggested_threshold == pytest.approx(np.percentile(after, 99), rel=0.1)
    assert a.clip.suggested_threshold > 3 * np.percentile(before, 99)


@pytest.mark.parametrize("total", [5.0, 20.0])
def test_a_harmless_climb_to_the_end_is_no_regime_to_clip_from(total):
    # the grad norm climbs e^5 (150x) or e^20 (5e8x) from step 500 to the end, the loss goes on:
    # reported as a harmless level shift, whose "regime" gave a threshold of 73 or 2e8 (a review)
    s, g, loss = healthy(seed=0, sigma=0.1, loss_noise=0.01)
    g[500:] *= np.exp(np.linspace(0, total, s.size - 500))
    a = audit_run(run_series(s, g, loss))
    assert a.clip.suggested_threshold < 2 * np.percentile(g[100:500], 99)
    assert a.healthy_grad_norm == pytest.approx(np.median(g[100:500]), rel=0.1)


@pytest.mark.parametrize(("ramp_end", "top"), [(2600, 10), (2900, 10), (2800, 30), (2700, 100)])
def test_a_harmless_level_shift_reached_by_a_ramp_is_clipped_at_its_new_level(ramp_end, top):
    # the grad norm ramps up from step 2000 to ramp_end, then holds to 3000: the thirds of the
    # whole regime differ (the ramp), and the threshold fell back to the old level, clipping
    # every step of the new one (a second review; a third: also where the ramp is most of it)
    s, g, loss = healthy(seed=0, sigma=0.1, loss_noise=0.01)
    f = np.ones(s.size)
    f[2000:ramp_end] = np.exp(np.linspace(0, np.log(top), ramp_end - 2000))
    f[ramp_end:] = top
    g = g * f
    a = audit_run(run_series(s, g, loss))
    assert np.mean(g[ramp_end:] > a.clip.suggested_threshold) < 0.05


@pytest.mark.parametrize("seed", range(4))
def test_heavy_tailed_healthy_run_never_explodes(seed):
    rng = np.random.default_rng(seed)
    s, _, loss = healthy(seed=seed)
    g = 0.5 * np.exp(0.25 * rng.standard_t(3, s.size))
    a = audit_run(run_series(s, g, loss))
    assert all(e.severity != "explosion" for e in a.episodes)


def test_fp16_overflow_steps_are_nonfinite_warnings():
    s, g, loss = healthy(seed=7)
    for i in (400, 1100, 2300):
        g[i] = np.inf
    g[1700] = np.nan
    a = audit_run(run_series(s, g, loss))
    assert [e.kind for e in a.episodes] == ["nonfinite"] * 4
    assert {e.onset_step for e in a.episodes} == {400, 1100, 1700, 2300}
    assert a.status == "warning"


@pytest.mark.parametrize("run", [8, 24, 40])
def test_a_loss_scalers_search_at_the_start_is_one_nonfinite_warning(run):
    # a loss scaler starts too high and halves its scale at every overflow: the first steps'
    # grad norms are inf in a row while the loss carries on
    s, g, loss = healthy(seed=3)
    g[:run] = np.inf
    a = audit_run(run_series(s, g, loss))
    (e,) = a.episodes
    assert (e.kind, e.severity, e.onset_step) == ("nonfinite", "warning", int(s[0]))
    assert a.status == "warning"
    assert "one at a time or a few in a row" in e.reason


@pytest.mark.parametrize("seed", range(5))
def test_step_up_that_later_diverges_has_its_onset_at_the_step(seed):
    # an lr set 50x too high: the grad norm steps up 3.5x at once, holds there, then blows up;
    # the blow-up must not drag the onset back before the step (a straight climb fitted to a
    # step put it 15 steps early on a held-out benchmark run)
    s, g, loss = healthy(seed=seed)
    g[2000:] *= 3.5
    g[2100:] *= np.exp(np.arange(900) * 0.2)
    loss[2000:] += np.linspace(0, 50, 1000)
    a = audit_run(run_series(s, g, loss))
    e = a.episodes[-1]
    assert e.kind == "divergence" and e.severity == "explosion"
    assert abs(e.onset_step - 2000) <= 1, e.to_dict()


@pytest.mark.parametrize(("last", "kind"), [(1, "divergence"), (2, "nonfinite"),
                                          (10, "nonfinite"), (16, "nonfinite"),
                                          (17, "divergence"), (500, "divergence")])
def test_inf_grad_norms_at_the_end_are_overflows_only_while_the_loss_carries_on(last, kind):
    # fp16 overflow steps in the last steps logged: the grad norm is NaN there, the loss goes on
    # finite and unharmed after them - kind nonfinite, a warning (it was a divergence, failing
    # the gate). One NaN at the last step: the loss logged at that step was computed before its
    # update, so nothing shows training went on - a run that died there (a review); 17 or more
    # in a row are no loss-scaler overflows (a GradScaler halves its scale at each)
    s, g, loss = healthy(seed=4)
    g[-last:] = np.nan
    e = _one(audit_run(run_series(s, g, loss)))
    severity = "warning" if kind == "nonfinite" else "explosion"
    assert (e.kind, e.severity) == (kind, severity), e.to_dict()
    if kind == "nonfinite":
        assert e.onset_step == s[-last] and "benign on its own" in e.reason
        # the same NaNs with the loss going NaN too, or with no loss to show it carried on
        gone = loss.copy()
        gone[-last:] = np.nan
        for run in (run_series(s, g, gone), run_series(s, g, None)):
            e = _one(audit_run(run))
            assert (e.kind, e.severity) == ("divergence", "explosion"), e.to_dict()


def test_divergence_to_nan_loss():
    s, g, loss = healthy(seed=8)
    g[2500:] *= np.exp(np.arange(500) * 0.1)
    loss[2540:] = np.nan
    a = audit_run(run_series(s, g, loss))
    assert a.status == "explosion"
    e = a.episodes[-1]
    assert e.kind == "divergence" and e.loss_impact.diverged and abs(e.onset_step - 2500) <= 3


def test_loss_spike_with_healthy_grad_norm():
    s, g, loss = healthy(seed=9)
    loss[1800:1805] += 3.0
    a = audit_run(run_series(s, g, loss))
    e = _one(a)
    assert e.kind == "loss_spike" and e.onset_step == 1800 and e.severity == "warning"
    assert "would not help" in a.clip.advice and "1800" in a.clip.advice
    assert e.reason.startswith("the loss jumped while") and "loss jumped +" in e.reason


def test_loss_only_run_bloom13b_style():
    # grad norm logged as 0.000; lm loss 2.77 -> 7.34 at 29050 (logged every 10 steps)
    rng = np.random.default_rng(10)
    s = np.arange(27000, 30000, 10)
    loss = 2.8 - 1e-5 * (s - 27000) + rng.normal(0, 0.01, s.size)
    k = int(np.flatnonzero(s == 29050)[0])
    loss[k:k + 8] = [7.34, 8.72, 7.65, 6.5, 5.0, 4.0, 3.5, 3.2]
    a = audit_run(run_series(s, np.zeros(s.size), loss))
    e = _one(a)
    assert e.kind == "loss_spike" and e.onset_step == 29050 and e.severity == "explosion"
    assert any("constant 0" in n for n in a.notes) and a.clip.suggested_threshold is None


def test_exact_zero_grad_norms_are_missing_points_not_overflows():
    # a batch whose loss underflows to exactly 0 has no gradient (seen on a confident CNN
    # trained with AdamW): its grad norm 0 is a missing point, not a non-finite overflow step
    s, g, loss = healthy(seed=13)
    g[[700, 1500, 2200]] = 0.0
    a = audit_run(run_series(s, g, loss))
    assert a.status == "ok" and not a.episodes, [e.to_dict() for e in a.episodes]
    assert any("3 grad-norm value(s) of exactly 0" in n for n in a.notes)
    g[1800] = np.inf  # a real overflow step is still one
    (e,) = audit_run(run_series(s, g, loss)).episodes
    assert e.kind == "nonfinite" and e.onset_step == 1800


def test_sparse_logging_reports_steps():
    s, g, loss = healthy(seed=11)
    s = s * 100
    g[1200] *= 30
    loss[1201:1260] += 1.0
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.onset_step == 120000 and e.end_step == 120100


def test_traces_only_for_runs_with_findings_and_decimated():
    s, g, loss = healthy(n=20000, seed=12)
    a = audit_run(run_series(s, g, loss))
    assert not a.episodes and a.traces == {}
    g[15000] *= 100
    loss[15001:15100] += 1.0
    a = audit_run(run_series(s, g, loss))
    assert set(a.traces) >= {"grad_norm", "loss", "counterfactual:15000"}
    ts, tv = a.traces["grad_norm"]
    assert ts.size <= 2100 and 15000 in ts.tolist()


def test_sustained_loss_rise_under_flat_grad_norm_with_lr_onset():
    # an lr spike under Adam: the grad norm barely moves, the loss stays up; onset from the lr
    s, g, loss = healthy(seed=20)
    lr = np.full(s.size, 1e-3)
    lr[1500:1510] = 2e-2  # logged lr at step s is the one step s used
    loss[1501:1700] += np.linspace(0.5, 0.1, 199)
    a = audit_run(run_series(s, g, loss, lr))
    e = _one(a)
    assert e.onset_step == 1501 and "lr-change" in e.detected_by
    assert e.severity == "explosion" and "learning rate rose" in e.reason
    assert "rose 20x at step 1500" in e.reason  # the lr's own step; its effect shows at 1501
    # the advice names the lr rise, not a grad norm that "stayed healthy" or a data problem
    assert e.kind == "loss_spike" and "with a learning-rate rise" in a.clip.advice
    assert "look at the data" not in a.clip.advice


def test_sustained_loss_rise_without_lr_found_by_loss_rise():
    s, g, loss = healthy(seed=21)
    loss[2000:2300] += 0.3
    e = _one(audit_run(run_series(s, g, loss)))
    assert abs(e.onset_step - 2000) <= 3 and "loss-rise" in e.detected_by


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ramp", [150, 300, 600])
def test_slow_loss_rise_found_where_the_climb_starts(seed, ramp):
    # harder data mixed in step by step: the loss climbs 35 % over `ramp` steps from step 1800
    # and stays up, the grad norm stays healthy. The trailing level and spread climbed with the
    # ramp, so the rise never stood 4 spreads above them and the run was "ok" (a user review)
    s, g, loss = healthy(seed=30 + seed)
    rise = 0.35 * np.clip((s - 1800) / ramp, 0, 1) * (2.5 + 3.0 * 1820.0 ** -0.4)
    a = audit_run(run_series(s, g, loss + rise))
    e = _one(a)
    assert e.kind == "loss_spike" and e.severity == "warning", e.to_dict()
    assert abs(e.onset_step - 1800) <= 16, e.onset_step  # a block of 8 either side
    assert "clipping would not help" in e.reason
    # a climb over 150-600 steps is no jump: the words say it rose
    assert e.reason.startswith("the loss rose while") and "jump" not in e.reason, e.reason


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("answer", ["at once", "5 steps later", "a ramp over 20 steps",
                                    "a ramp over 100 steps in a noisy loss",
                                    "with an lr rise, 30 steps later"])
def test_a_grad_spike_the_loss_answered_is_an_explosion(seed, answer):
    # damage a spike's update does shows at once, a few steps on, or builds up (momentum,
    # Adam's moments), and an lr rise answers for its own episode's loss however late it rises:
    # each is an explosion. (Three versions of a rule that called a spike's lasting excess no
    # harm where the loss did not answer the spike at once called some of these warnings:
    # benchmark README, sixth session.)
    s, g, loss = healthy(seed=seed, loss_noise=0.1 if "noisy" in answer else 0.02)
    g[1500] *= 10
    lr = None
    t = (s - 1500).astype(float)
    if answer == "at once":
        bump = 0.3 * (t >= 0) * np.exp(-np.clip(t, 0, None) / 300)
    elif answer == "5 steps later":
        bump = 0.3 * (t >= 5) * np.exp(-np.clip(t - 5, 0, None) / 300)
    elif answer == "a ramp over 20 steps":
        bump = 0.3 * np.clip((t + 1) / 20, 0, 1) * np.exp(-np.clip(t, 0, None) / 300)
    elif answer == "a ramp over 100 steps in a noisy loss":
        bump = 0.5 * np.clip((t + 1) / 100, 0, 1) * np.exp(-np.clip(t, 0, None) / 300)
    else:
        # the lr logged at a step is that step's update's: raised from 1499, the grad norm at
        # 1500 is the first to show it (raised from 1500, a spike at 1500 came before it)
        lr = np.where((s >= 1499) & (s < 1700), 1e-2, 1e-3)
        g[1500:1700] *= 0.8
        bump = 0.3 * (t >= 30) * np.exp(-np.clip(t - 30, 0, None) / 300)
    e = audit_run(run_series(s, g, loss + bump, lr)).episodes[0]
    if "noisy" in answer and e.kind == "loss_spike":
        # (in a noisy loss the rise may be found from a few steps before the spike: a loss
        # episode the grad norm joined only later, a warning whatever its harm)
        assert abs(e.onset_step - 1500) <= 15 and "the loss was harmed" in e.reason
        return
    assert abs(e.onset_step - 1500) <= 1 and e.severity == "explosion", e.reason


def test_a_loss_rise_while_the_loss_still_falls_is_an_episode():
    # no fault in the grad norm; the loss, still falling, rises 10 % at step 400 (decaying over
    # 150 steps): a loss episode at the rise, on 18 of these 20 seeds (none before the trend
    # of the fall was its level); the same runs without the rise have none
    found = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        s = np.arange(800)
        g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
        loss = (2.4 + 2.0 * (1 + s / 4) ** -0.6) * np.exp(rng.normal(0, 0.03, s.size))
        assert audit_run(run_series(s, g, loss)).episodes == []
        loss[400:] *= 1 + 0.10 * np.exp(-(s[400:] - 400) / 150)
        eps = audit_run(run_series(s, g, loss)).episodes
        hit = [e for e in eps if abs(e.onset_step - 400) <= 8]
        found += bool(hit)
        assert all(e.kind == "loss_spike" and "loss-rise" in e.detected_by for e in hit)
    assert found >= 15, found


@pytest.mark.parametrize("steps", [3, 8])
def test_a_loss_non_finite_for_a_few_steps_mid_run_is_a_divergence(steps):
    # the loss went NaN for `steps` logged steps and the run carried on: training broke there
    # (a reviewer's mutation: without this rule it read as a warning and the gate passed)
    s, g, loss = healthy(seed=7)
    loss[1500:1500 + steps] = np.nan
    a = audit_run(run_series(s, g, loss))
    e = _one(a)
    assert (e.onset_step, e.kind, e.severity) == (1500, "divergence", "explosion")
    assert "the loss diverged: it went non-finite" in e.reason and a.status == "explosion"


def test_one_or_two_non_finite_losses_are_benign_and_named_as_the_loss():
    s, g, loss = healthy(seed=7)
    loss[1500:1502] = np.inf  # an overflow the scaler skipped: training went on
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.kind, e.severity) == ("nonfinite", "warning")
    assert e.reason.startswith("the loss was logged inf/NaN"), e.reason  # not "the grad norm"


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rate", [0.004, 0.01])
def test_a_grad_norm_climbing_to_the_end_is_a_divergence_from_where_it_starts(seed, rate):
    # a slow divergence: from step 1200 the grad norm grows 0.4 %-1 % a step (30x-6600x by the
    # end) and the loss creeps up. Every trailing level followed the climb: the run was a loss
    # warning whose reason called the grad norm "healthy" (a reviewer's file)
    s, g, loss = healthy(seed=40 + seed)
    g[1200:] *= np.exp(rate * (s[1200:] - 1200))
    loss[1200:] += 0.3 * (1 - np.exp(-(s[1200:] - 1200) / 400))
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.kind, e.severity) == ("divergence", "explosion"), e.to_dict()
    assert abs(e.onset_step - 1200) <= 8 and "level-climb" in e.detected_by
    assert "loss-rise" in e.detected_by  # the loss's rise is this episode's, not another
    assert e.baseline_grad_norm == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rate", [0.01, 0.035])
def test_a_climb_that_ends_in_non_finite_norms_is_a_divergence_from_where_it_starts(seed, rate):
    # the same climb on to inf, the run logging NaN after it: only the non-finite points were
    # an episode (found 1400 steps late), and the loss's earlier climb read as "no gradient
    # explosion behind the climb" (a reviewer's archive: 15 of 210 such runs)
    s, g, loss = healthy(seed=50 + seed)
    g[1200:] *= np.exp(rate * (s[1200:] - 1200))
    loss[1200:] += 0.3 * (np.exp(rate * (s[1200:] - 1200) / 4) - 1)
    brk = 1200 + int(np.log(1e20) / rate) if rate * 1800 > np.log(1e20) else 2600
    g[brk:], loss[brk:] = np.inf, np.nan
    (e,) = audit_run(run_series(s, g, loss)).episodes
    assert (e.kind, e.severity) == ("divergence", "explosion"), e.to_dict()
    assert abs(e.onset_step - 1200) <= 8, e.onset_step
    assert {"level-climb", "nonfinite"} <= set(e.detected_by)
    # a norm that goes non-finite at once, no climb before it: the breakdown is the onset
    s, g, loss = healthy(seed=50 + seed)
    g[2600:], loss[2600:] = np.inf, np.nan
    (e,) = audit_run(run_series(s, g, loss)).episodes
    assert (e.kind, e.onset_step) == ("divergence", 2600)
    # a harmless 11x climb whose last logged norm is one fp16 overflow: no breakdown to date a
    # divergence back from (a review)
    s, g, loss = healthy(seed=50 + seed)
    g[2000:] *= np.exp(np.log(11) * (s[2000:] - 2000) / 1000)
    g[-1] = np.inf
    eps = audit_run(run_series(s, g, loss)).episodes
    assert not any(e.kind == "divergence" and e.onset_step < 2900 for e in eps), eps


def test_healthy_grad_norm_shapes_are_no_divergence():
    # a reviewer's cases that the first level-climb called explosions (or crashed on)
    rng = np.random.default_rng(1)
    n = 3000
    s = np.arange(n)
    loss = 2.5 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0, 0.02, n)
    noise = np.exp(rng.normal(0, 0.15, n))
    # high at the start, a dip, back up (the top is not at the end): once an IndexError
    u = np.where(s < 300, 4.0, np.where(s < 2000, 0.2, 0.2 * np.exp(np.log(15) * (s - 2000)
                                                                      / 1000)))
    a = audit_run(run_series(s, u * noise, loss))
    assert a.status != "error" and not any("analysis failed" in x for x in a.notes)
    # a zero-initialised layer waking up: 20x over the first 300 steps, flat since
    early = np.where(s < 300, 0.05 * np.exp(np.log(20) * s / 300), 1.0)
    assert audit_run(run_series(s, early * noise, loss)).episodes == []
    # 12x over the whole run while the loss keeps falling: a warning, not a divergence
    slow = 0.1 * np.exp(np.log(12) * s / n)
    (e,) = audit_run(run_series(s, slow * noise, loss)).episodes
    assert (e.kind, e.severity) == ("level_shift", "warning") and "level-climb" in e.detected_by
    # the grad norm rising 12x while the lr cools down over the last 20 %: the schedule's doing
    cool = np.where(s < 2400, 0.3, 0.3 * np.exp(np.log(12) * (s - 2400) / 600))
    lr = np.where(s < 2400, 1e-3, 1e-3 * (1 - (s - 2400) / 600) + 1e-6)
    a = audit_run(run_series(s, cool * noise, loss, lr))
    assert a.episodes == [] and any("cool-down" in x for x in a.notes), a.notes


def test_a_healthy_drift_or_a_bump_is_no_climb():
    s, g, loss = healthy(seed=44)
    drift = g * np.exp(np.log(3) * s / s[-1])  # 3x over the run: ordinary
    assert audit_run(run_series(s, drift, loss)).episodes == []
    bump = g.copy()
    bump[1000:2000] *= np.exp(0.005 * np.minimum(s[1000:2000] - 1000, 2000 - s[1000:2000]))
    assert all(e.kind != "divergence" and "level-climb" not in e.detected_by
               for e in audit_run(run_series(s, bump, loss)).episodes)


@pytest.mark.parametrize("seed", range(2))
def test_harm_early_in_training_must_beat_half_the_expected_fall(seed):
    # a lasting 6 % rise after a grad spike: at step 2500 (the loss nearly flat) an explosion;
    # at step 150, where the counterfactual expects the loss to fall by about 0.8 over the
    # horizon, a loss that fell by more than half of that is within the trend's own
    # uncertainty: a warning that says so
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    verdicts = {}
    for on in (150, 2500):
        loss = 1.0 + 5.0 * np.exp(-s / 300) + rng.normal(0, 0.02, s.size)
        g = 0.5 * np.exp(rng.normal(0, 0.1, s.size))
        g[on] *= 30
        level = 1.0 + 5.0 * np.exp(-on / 300)
        loss[on + 1:] += 0.06 * level * (1 - np.exp(-(s[on + 1:] - on) / 30))
        e = _one(audit_run(run_series(s, g, loss)))
        assert e.onset_step == on and e.loss_impact.excess_loss > 0.03 * level
        verdicts[on] = e
    assert verdicts[2500].severity == "explosion"
    assert verdicts[150].severity == "warning"
    assert "half the fall its counterfactual expected" in verdicts[150].reason


def _early_blowup(seed, tau, n=1000):
    # a loss that starts at 4, blows up 16 higher at step 20 (inside a 30-step lr warm-up,
    # which no detector judges, so no episode) and decays back with time constant ``tau``, then
    # follows a gentle trend; a grad spike at step 65 that leaves the loss alone
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    trend = 4.0 * (s + 1.0) ** -0.03
    blow = np.where(s >= 20, 16.0 * np.exp(-(s - 20) / tau), 16.0 * np.exp(-(20 - s) / 2.0))
    loss = trend + blow + rng.normal(0, 0.05, n)
    g = 1.0 * np.exp(rng.normal(0, 0.1, n))
    g[15:30] *= 6.0
    g[65] *= 15
    return s, g, loss, np.minimum(1.0, (s + 1) / 30) * 1e-3


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("tau", [3, 8])
def test_a_loss_above_where_it_started_is_no_trend_to_fit(seed, tau):
    # the fit window starts where the blow-up's decay has settled: fitted on the decay, the
    # counterfactual extrapolates it and reads the spike at 65 as lasting harm
    s, g, loss, lr = _early_blowup(seed, tau)
    e = next(e for e in audit_run(run_series(s, g, loss, lr)).episodes if e.onset_step == 65)
    assert e.severity == "warning"
    assert abs(e.loss_impact.excess_loss) < 0.03 * 4.0


@pytest.mark.parametrize("seed", range(2))
def test_without_the_blowup_rule_the_early_spike_is_misread(monkeypatch, seed):
    # what the rule above protects against (the slow decay): +1.5 of "harm"
    import gradaudit.audit as audit_mod

    class NoBlowups:
        def __init__(self, steps, loss):
            pass

        def floor(self, onset_step, reach):
            return None

    monkeypatch.setattr(audit_mod, "Blowups", NoBlowups)
    s, g, loss, lr = _early_blowup(seed, 8)
    e = next(e for e in audit_run(run_series(s, g, loss, lr)).episodes if e.onset_step == 65)
    assert e.severity == "explosion" and e.loss_impact.excess_loss > 1.0


@pytest.mark.parametrize("seed", range(2))
def test_a_blowup_that_began_before_the_level_existed_is_found_where_it_began(seed):
    # the same blow-up with no lr warm-up to hide it: the grad norm 6x from step 15 and the
    # loss 16 higher at step 20, before the detectors have a level (25 points). Flagged at the
    # first point that has one, its onset walks back to where the climb began, and the loss's
    # jump is that episode's, not one of its own
    s, g, loss, _ = _early_blowup(seed, 8)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [e.onset_step for e in eps] == [15, 65]
    assert eps[0].severity == "explosion" and "loss-spike" in eps[0].detected_by


def test_a_loss_rise_is_the_episode_it_starts_in_not_one_just_before():
    # two spikes 16 steps apart, the loss rising from step 1520: the later spike's (a review
    # found the widened window handing it to the spike at 1500)
    s, g, loss = healthy(seed=1)
    g[1500] *= 30
    g[1516] *= 30
    loss[1520:] += 0.004 * np.minimum(s[1520:] - 1520, 100)
    eps = {e.onset_step: e for e in audit_run(run_series(s, g, loss)).episodes}
    assert "loss-rise" in eps[1516].detected_by and "loss-rise" not in eps[1500].detected_by


@pytest.mark.parametrize("seed", range(3))
def test_an_explosion_right_after_the_lr_warmup_is_found(seed):
    # a 500x grad spike at step 27, after a 21-step lr warm-up: before the
    # detectors have a healthy level (25 points). It doubles the loss, which comes down over
    # 300 steps (an unclipped RNN at lr 4 did this): an explosion at its step; the same spike
    # with the loss untouched is a warning
    s, g, loss = healthy(n=1500, seed=seed)
    lr = np.minimum(1.0, (s + 1) / 21) * 1e-3
    g[27] *= 500
    harmed = loss + np.where(s > 27, loss * np.exp(-(s - 27) / 300), 0.0)
    (e,) = audit_run(run_series(s, g, harmed, lr)).episodes
    assert (e.onset_step, e.kind, e.severity) == (27, "spike", "explosion")
    assert e.peak_ratio > 100
    (e,) = audit_run(run_series(s, g, loss, lr)).episodes
    assert (e.onset_step, e.severity) == (27, "warning")


@pytest.mark.parametrize("seed", range(4))
def test_a_blow_up_that_climbs_first_in_the_first_steps_is_found(seed):
    # an unclipped RNN (benchmark seed 48000): seven steps of climbing 3-8x from step 31, ten
    # steps after its lr warm-up, then 50x at step 38, the loss up 10x. Before the detectors
    # have a healthy level, a point must top its past tenfold: 50x is under 7x the climb's top,
    # and was missed; it stands 10x above where its past sits (the median after the warm-up)
    # and 3x above its top, and is found. The same climb without the blow-up is no episode
    s, g, loss = healthy(n=1500, seed=seed)
    lr = np.minimum(1.0, (s + 1) / 21) * 1e-3
    climb = np.array([3.0, 3.5, 6.0, 4.0, 7.0, 8.0, 7.0])
    g[31:38] *= climb
    calm = g.copy()
    g[38] *= 50
    harmed = loss + np.where(s >= 35, 9 * loss * np.exp(-(s - 35) / 20), 0.0) \
        + np.where(s >= 35, 0.3 * loss * np.exp(-(s - 35) / 300), 0.0)
    (e,) = audit_run(run_series(s, g, harmed, lr)).episodes
    assert e.peak_step == 38 and 31 <= e.onset_step <= 38 and e.severity == "explosion"
    assert [e.onset_step for e in audit_run(run_series(s, calm, loss, lr)).episodes] == []


def test_a_grad_norm_that_grows_smoothly_in_the_first_steps_is_no_episode():
    # a grad norm that grows 30x over the 40 points after the lr warm-up, then holds: each
    # point is far above the median of its past but never 3x above its top - training finding
    # its feet, not a blow-up
    s, g, loss = healthy(n=1500, seed=7)
    lr = np.minimum(1.0, (s + 1) / 21) * 1e-3
    g *= np.exp(np.log(30) * np.clip((s - 21) / 40, 0, 1))
    assert audit_run(run_series(s, g, loss, lr)).episodes == []


@pytest.mark.parametrize("k", [0, 2])
def test_a_spike_in_the_first_steps_after_the_warmup_is_judged_against_the_warmup(k):
    # the lr warm-up is the first points' past (``lead``): without it fewer than five points
    # precede the spike and nothing is found
    s, g, loss = healthy(n=1500, seed=5)
    lr = np.minimum(1.0, (s + 1) / 21) * 1e-3
    g[21 + k] *= 500
    (e,) = audit_run(run_series(s, g, loss, lr)).episodes
    assert e.onset_step == 21 + k


@pytest.mark.parametrize("k", [20, 22, 24])
def test_a_level_shift_that_starts_just_before_the_level_exists_is_found_where_it_began(k):
    # 8x for 40 steps from k points after a 20-step warm-up, the loss 30 % up meanwhile. Were
    # the first points' band an episode of its own, each pass would leave the shift's start out
    # of the healthy points and move the level's first point past the whole shift (a review
    # found it lost)
    s, g, loss = healthy(n=1500, seed=2000)
    lr = np.minimum(1.0, (s + 1) / 20) * 1e-3
    t0 = 20 + k
    g[t0:t0 + 40] *= 8
    loss[t0 + 1:t0 + 40] *= 1.3
    grad = [e for e in audit_run(run_series(s, g, loss, lr)).episodes if e.kind != "loss_spike"]
    assert grad and grad[0].onset_step == t0 and grad[0].severity == "explosion"


def _assert_disjoint(eps):
    for e1, e2 in zip(eps, eps[1:], strict=False):
        end = e1.end_step if e1.end_step is not None else np.inf
        assert e2.onset_step >= end, [(e.onset_step, e.end_step, e.kind) for e in eps]


@pytest.mark.parametrize("seed", range(4))
def test_episodes_stay_disjoint_where_the_first_points_walk_back(seed):
    # a grad norm that steps up 30x where a 50-step lr warm-up ends, and a 4x plateau from 4
    # points before the level exists: an onset walked back over the first points stops at the
    # previous episode's end (one walk-back gave two episodes the same onset)
    rng = np.random.default_rng(seed)
    s = np.arange(1500)
    g = 0.5 * np.where(s > 50, 1.0, 1 / 30) * np.exp(rng.normal(0, 0.15, s.size))
    loss = 2.8 + 8 * np.exp(-s / 30) + rng.normal(0, 0.05, s.size)
    lr = np.minimum(1.0, (s + 1) / 50) * 1e-3
    _assert_disjoint(audit_run(run_series(s, g, loss, lr)).episodes)
    s, g, loss = healthy(n=1500, seed=2000 + seed)
    lr = np.minimum(1.0, (s + 1) / 20) * 1e-3
    g[44:144] *= 4
    loss[45:144] *= 1.3
    eps = audit_run(run_series(s, g, loss, lr)).episodes
    _assert_disjoint(eps)
    assert eps[0].onset_step == 44 and eps[0].kind != "loss_spike"


@pytest.mark.parametrize("seed", range(5))
def test_layers_waking_up_in_a_sparsely_logged_run_are_no_episode(seed):
    # zero-initialised layers waking up: the grad norm rises 10-100x over the first 10-50
    # steps, then stays; logged every 10 steps, with no lr. The level of the first points was
    # the first point's own value (a window padded with copies of it): every point of the run
    # read as 10x or more above it, an episode on every seed (a review of c8d1f3f)
    rng = np.random.default_rng(seed)
    s = np.arange(0, 4000, 10)
    rise = np.exp(rng.uniform(np.log(10), np.log(100)))
    frac = np.clip((s - rng.uniform(0, 20)) / rng.uniform(10, 50), 0, 1)
    g = 0.5 * rise ** (frac - 1) * np.exp(rng.normal(0, 0.15, s.size))
    loss = (2.5 + 3.0 * (s + 20.0) ** -0.4) * np.exp(rng.normal(0, 0.02, s.size))
    assert audit_run(run_series(s, g, loss)).episodes == []


def test_warmup_transient_not_flagged():
    # grad norm falls from a large initial transient while the lr warms up
    s, g, loss = healthy(seed=22)
    g[:30] *= np.linspace(8, 1, 30)
    g[5] *= 4
    lr = np.minimum(1.0, (s + 1) / 30) * 1e-3
    a = audit_run(run_series(s, g, loss, lr))
    assert all(e.onset_step > 30 for e in a.episodes)


def test_spiky_healthy_run_not_warned():
    # a heavy-tailed loss (squared error): 10x batches are ordinary, not events
    rng = np.random.default_rng(23)
    s = np.arange(3000)
    loss = 0.03 * np.exp(rng.standard_t(2, s.size) * 0.5)
    g = 0.5 * np.exp(rng.normal(0, 0.2, s.size))
    a = audit_run(run_series(s, g, loss))
    # Student t with 2 degrees of freedom: the 99th percentile is 31x the median, the 99.9th
    # 5e7x; nothing up to there is an event. Only lone points beyond the extreme bar (6x the
    # run's own 99th percentile in log terms: here 1e10x and more) are, as data warnings
    med = np.median(loss)
    assert len(a.episodes) <= 5
    for e in a.episodes:
        assert e.kind == "loss_spike" and e.severity == "warning"
        assert loss[e.onset_step] > 1e9 * med
    calm = loss.copy()
    calm[calm > 1e6 * med] = med  # the same run without its astronomically bad batches
    assert audit_run(run_series(s, g, calm)).episodes == []


def test_reason_gives_the_numbers_behind_the_verdict():
    s, g, loss = healthy(n=3000, seed=21)
    g[2000:2003] *= 40.0
    loss[2001:2200] += 0.5
    a = audit_run(run_series(s, g, loss))
    (e,) = [e for e in a.episodes if abs(e.onset_step - 2000) <= 3]
    assert "above its healthy level" in e.reason and "the loss was harmed" in e.reason
    assert "counterfactual over the next 200 steps" in e.reason


def test_level_shift_peaking_late_by_chance_is_no_divergence():
    # the grad norm jumps 4x and stays there to the end (a changed loss scale); its highest
    # point happens to lie near the end: a level shift, not a divergence
    s, g, loss = healthy(seed=3)
    g[2000:] *= 4.0
    g[-5] *= 1.6
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.kind == "level_shift" and e.onset_step == 2000


def test_grad_norm_growing_to_the_end_is_divergence():
    s, g, loss = healthy(seed=4)
    g[2970:] *= 50 * 1.1 ** np.arange(30)  # 50x, and still growing 10 % a step at the end
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.kind == "divergence" and e.severity == "explosion"


def test_isolated_high_point_before_a_level_shift_is_not_its_onset():
    # sparse logging (every 6 steps): one natural 1.8x point three logged points before a bad
    # batch that leaves the grad norm 2.5x up; the segmentation may take the early point in
    s, g, loss = healthy(n=500, seed=6)
    s = s * 6
    g[300] *= 1.8
    g[303] *= 25.0
    g[304:330] *= 2.5
    loss[304:360] += 0.3
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.onset_step == 303 * 6


def test_spike_in_the_last_steps_is_judged_by_its_jump_not_a_five_point_excess():
    # a 30x spike five steps before the run ends; the loss rises a little on those steps:
    # five points are no "lasting" damage, and the jump is within the loss's noise
    s, g, loss = healthy(seed=7, loss_noise=0.05)
    g[-5] *= 30
    loss[-4:] += 0.08
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.severity == "warning"
    assert "before the run ended" in e.reason


def test_sparse_logging_alone_does_not_make_a_horizon_short():
    # logged every 50 steps: a 200-step horizon holds 4 points everywhere, not only at the end;
    # a mid-run explosion that leaves the loss 8 % higher is judged by its excess as usual
    s, g, loss = healthy(seed=8, loss_noise=0.01)
    g[1500:1503] *= 30
    loss[1500:] += 0.2
    e = _one(audit_run(run_series(s * 50, g, loss)))
    assert e.severity == "explosion" and "before the run ended" not in e.reason


@pytest.mark.parametrize("every", [10, 25])
def test_loss_logged_sparser_than_the_grad_norm_joins_the_grad_spike(every):
    # grad norm every step, loss every `every` steps: the damage of the step-1500 explosion
    # shows at the next logged loss point, inside the same episode - not as a second episode
    # claiming the grad norm stayed healthy and clipping would not help
    import polars as pl

    s, g, loss = healthy(seed=3)
    g[1500] *= 30
    loss[1501:] += 0.6 * np.exp(-np.arange(1499) / 150.0)
    run = run_series(s, g, loss)
    run.frame = run.frame.filter((pl.col("tag") != "loss") | (pl.col("step") % every == 0))
    e = _one(audit_run(run))
    assert (e.onset_step, e.kind, e.severity) == (1500, "spike", "explosion")
    assert "loss-spike" in e.detected_by and "stayed healthy" not in e.reason


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_sparse_loss_jump_is_not_joined_by_an_ordinary_grad_point_before_it(seed):
    # a heavy-tailed healthy grad norm (2 % of steps at 3-6x) and a loss logged every 50 steps:
    # the 50 steps before a data-caused jump hold an ordinary 3x point by chance (these seeds),
    # which is no gradient spike found through the loss
    import polars as pl

    s, _, loss = healthy(seed=seed)
    rng = np.random.default_rng(100 + seed)
    g = np.exp(rng.normal(0, 0.15, s.size))
    spiky = rng.choice(np.arange(100, s.size), s.size // 50, replace=False)
    g[spiky] *= rng.uniform(3.0, 6.0, spiky.size)
    assert ((spiky > 1950) & (spiky < 1999)).any()
    loss[1951:] += np.exp(-np.arange(s.size - 1951) / 150.0)
    run = run_series(s, g, loss)
    run.frame = run.frame.filter((pl.col("tag") != "loss") | (pl.col("step") % 50 == 0))
    (e,) = [e for e in audit_run(run).episodes if 1950 <= e.onset_step <= 2010]
    assert e.kind == "loss_spike"


def test_sparse_loss_jump_before_a_grad_spike_is_not_credited_to_it():
    # loss every 50 steps: a data-caused jump first logged at step 2000 and an unrelated grad
    # spike at 2040 - the loss trails the gradient, so the jump cannot be the spike's
    import polars as pl

    s, g, loss = healthy(seed=3)
    loss[1951:] += np.exp(-np.arange(s.size - 1951) / 150.0)
    g[2040] *= 30
    run = run_series(s, g, loss)
    run.frame = run.frame.filter((pl.col("tag") != "loss") | (pl.col("step") % 50 == 0))
    jump, spike = audit_run(run).episodes
    assert (jump.onset_step, jump.kind) == (2000, "loss_spike")
    assert (spike.onset_step, spike.kind) == (2040, "spike")
    assert "loss-spike" not in spike.detected_by


def test_level_shift_that_blows_up_in_its_last_steps_is_divergence():
    s, g, loss = healthy(seed=9)
    g[2000:] *= 3.0
    g[-10:] *= np.geomspace(2, 300, 10)  # the last ten steps climb 300x
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.kind == "divergence"


def test_level_shift_that_keeps_climbing_to_the_end_is_one_divergence():
    # 3x from step 2500, then a steady climb to 30x by the last step: the first pass's level
    # follows the climb and ends the episode early; the tail must not become "healthy" level
    rng = np.random.default_rng(7)
    s = np.arange(3000)
    g = np.exp(rng.normal(0, 0.15, s.size))
    g[2500:] *= 3.0
    g[2900:] *= np.geomspace(1, 10, 100)
    loss = 2.5 + rng.normal(0, 0.02, s.size)
    loss[2500:] += 0.3
    loss[2900:] += np.linspace(0, 5, 100)
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.end_step is None and e.kind == "divergence"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_bad_batch_counts_in_the_excess_but_is_no_lasting_harm(seed):
    # one garbage batch: its loss is 12x the level, the next step is back to normal. Its own
    # loss is part of the horizon's mean (30 / 200 = 0.15, above the 4 % harm bar of ~0.1),
    # but nothing lasted: a warning, whose reason gives both numbers
    s, g, loss = healthy(seed=seed)
    clean = loss.copy()
    g[1500] *= 20
    loss[1501] += 30.0
    e = _one(audit_run(run_series(s, g, loss)))
    truth = float(np.mean((loss - clean)[1500:1700]))
    assert e.loss_impact.excess_loss == pytest.approx(truth, rel=0.1)
    assert e.severity == "warning"
    assert "without the spike itself" in e.reason
    # the 4 % harm bar decided (the quiet loss measures its excess to ~0.01): no harm
    assert "the loss was not lastingly harmed" in e.reason


@pytest.mark.parametrize("seed", range(3))
def test_an_excess_inside_its_own_noise_is_not_called_no_harm(seed):
    # a noisy loss logged every 10 steps, left 4 % higher for good by a grad spike: 20 points
    # a horizon measure that to about +-0.15, so the verdict is a warning - but the words must
    # say the harm was not shown (within the estimate's noise), not that there was none
    s, g, loss = healthy(seed=seed, loss_noise=0.5)
    g[1500] *= 20
    loss[1501:] += 0.04 * 2.6
    keep = s % 10 == 0
    e = _one(audit_run(run_series(s[keep], g[keep], loss[keep])))
    assert e.onset_step == 1500 and e.severity == "warning"
    assert "within its noise: not shown to be lasting harm" in e.reason, e.reason
    assert "not lastingly harmed" not in e.reason


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("between", [False, True])
def test_spike_just_before_an_lr_fault_is_not_charged_with_its_damage(seed, between):
    # a harmless grad spike at 1000, then the lr set 30x too high from 1020 on: the loss the
    # lr fault raised is that episode's, not the spike's (the spike was called an explosion
    # with the lr fault's excess in its horizon) - also with another spike in between
    s, g, loss = healthy(seed=seed)
    g[1000] *= 20
    if between:
        g[1010] *= 20
    lr = np.full(s.size, 1e-3)
    lr[1020:1030] = 3e-2
    g[1021:1031] *= 8  # (the first grad norm the raised lr can show: its update's next)
    loss[1021:1400] += 0.6
    a = audit_run(run_series(s, g, loss, lr))
    spike, *other, fault = sorted(a.episodes, key=lambda e: e.onset_step)
    assert len(other) == int(between)
    for e in [spike, *other]:
        assert e.severity == "warning" and "before the lr-rise episode at step 1021" in e.reason
        assert abs(e.loss_impact.excess_loss) < 0.1
    assert spike.onset_step == 1000
    assert fault.onset_step == 1021 and fault.severity == "explosion"
    assert "learning rate rose" in fault.reason and fault.loss_impact.excess_loss > 0.4


def _lr_fault(seed: int, at: int = 1090) -> tuple[np.ndarray, ...]:
    """A healthy run with the lr 30x too high for 10 steps from 1020 (the grad norm 8x) and a
    15x grad spike at ``at``: ``(steps, grad norm, loss, lr)``; the loss is left as it was."""
    s, g, loss = healthy(seed=seed)
    lr = np.full(s.size, 1e-3)
    lr[1020:1030] = 3e-2
    g[1021:1031] *= 8  # (the first grad norm the raised lr can show: its update's next)
    g[at] *= 15
    return s, g, loss, lr


def test_an_aftershock_is_judged_as_the_loss_stood_only_from_points_since_the_lr_fault():
    # the loss logged every 5 steps: the level the aftershock is judged against comes from the
    # loss points since the lr fault's episode, at least 2 of them (the fit reached back before
    # the fault, charging the spike with its damage, while the reason said "as it stood")
    for at, since in ((1038, False), (1050, True)):
        s, g, loss, lr = _lr_fault(0, at)
        loss = loss + np.where(s >= 1021, 1.2 * np.exp(-(s - 1021) / 60.0) + 0.4, 0.0)
        a = audit_run(run_series(s, g, loss[::5], lr, loss_steps=s[::5]))
        (e,) = [e for e in a.episodes if e.onset_step == at]
        assert ("as it stood after the lr-rise episode" in e.reason) == since, e.reason
        if since:
            assert e.severity == "warning" and "went on recovering" in e.reason
            assert e.loss_impact.excess_loss < 0


@pytest.mark.parametrize("seed", range(4))
def test_an_aftershock_of_an_lr_fault_is_not_charged_with_its_damage(seed):
    # the lr set 30x too high for 10 steps from 1020; the loss jumps and comes back over ~60
    # steps to a lasting +0.4; a 15x grad spike at 1090, the loss untouched. Fitted as a trend,
    # the loss's recovery extrapolated a steep decline and the spike read +0.4 of lasting harm,
    # an explosion; the loss since the lr fault is that episode's, and the spike is judged
    # against the loss as it stood
    s, g, loss, lr = _lr_fault(seed)
    loss = loss + np.where(s >= 1021, 1.2 * np.exp(-(s - 1021) / 60.0) + 0.4, 0.0)
    fault, aftershock = sorted(audit_run(run_series(s, g, loss, lr)).episodes,
                               key=lambda e: e.onset_step)
    assert fault.onset_step == 1021 and fault.severity == "explosion"
    assert aftershock.onset_step == 1090 and aftershock.severity == "warning"
    assert "as it stood after the lr-rise episode at step 1021" in aftershock.reason


@pytest.mark.parametrize("seed", range(4))
def test_an_aftershock_that_harms_on_its_own_is_an_explosion(seed):
    # the same lr fault leaving the loss +0.6 up; the spike at 1090 lifts it +0.5 more for good
    s, g, loss, lr = _lr_fault(seed)
    loss[1021:] += 0.6
    loss[1091:] += 0.5
    fault, aftershock = sorted(audit_run(run_series(s, g, loss, lr)).episodes,
                               key=lambda e: e.onset_step)
    assert fault.severity == "explosion" and aftershock.severity == "explosion"
    assert aftershock.loss_impact.excess_loss == pytest.approx(0.5, rel=0.25)


def test_aftershock_damage_stays_in_the_first_episode_horizon():
    # a second grad explosion 40 steps after the first (no lr change), the first's loss still
    # up: it may be the first's aftershock, so the first episode's horizon is not cut there
    # (the jump detector finds no fresh jump at it; where it does, the loss step is the later
    # spike's own: test_a_later_spikes_own_loss_step_is_not_an_earlier_harmless_spikes)
    s, g, loss = healthy(seed=5)
    g[1000] *= 50
    g[1040] *= 50
    loss[1001:1400] += 0.3
    loss[1041:1400] += 0.3
    a = audit_run(run_series(s, g, loss))
    first, second = sorted(a.episodes, key=lambda e: e.onset_step)
    assert first.onset_step == 1000 and second.onset_step == 1040
    assert first.loss_impact.excess_loss > 0.5  # 0.3 throughout plus 0.3 over 4/5 of it


def test_loss_rise_under_way_when_the_lr_rose_is_that_lr_episode():
    # the loss drifts up a little before an lr ramp's first logged rise, then climbs with it: one
    # episode, tied to the lr rise (the loss-rise detector's onset is only good to a block)
    s, g, loss = healthy(seed=21)
    lr = np.full(s.size, 1e-3)
    lr[1500:1600] = 2e-2
    loss[1490:1501] += np.linspace(0.0, 0.1, 11)
    loss[1501:1700] += 0.5
    a = audit_run(run_series(s, g, loss, lr))
    e = _one(a)
    assert "lr-change" in e.detected_by and "loss-rise" in e.detected_by
    assert e.onset_step == 1501 and e.severity == "explosion"


@pytest.mark.parametrize("seed", range(3))
def test_loss_jump_the_grad_norm_joined_is_a_gradient_spike(seed):
    # a grad norm that varies a lot (log sigma 0.9: a 30x point is under 5 robust sigmas) and
    # one bad batch: the loss jumps 25x and the grad norm 30x with it. Found through the loss,
    # it is a gradient spike - not a loss jump "while the grad norm stayed healthy"
    s, g, loss = healthy(seed=seed, sigma=0.9)
    g[1500] = np.exp(np.median(np.log(g[1300:1500]))) * 30
    loss[1500] *= 25
    loss[1501:1600] += 0.3
    a = audit_run(run_series(s, g, loss))
    (e,) = [e for e in a.episodes if abs(e.onset_step - 1500) <= 1]
    assert e.kind == "spike" and "rose" in e.reason and "stayed healthy" not in e.reason
    assert e.peak_ratio > 20 and e.severity == "explosion"


@pytest.mark.parametrize("seed", range(3))
def test_grad_episode_straddling_an_lr_rise_is_split_there(seed):
    # a natural 8x spike at 990 whose tail is still elevated when the lr is set 30x too high at
    # 1000: the grad climb (40x) joins it into one grad episode. Split at the rise: the spike
    # stays a harmless warning of its own, the climb is the lr episode - not a level shift from
    # 990 charged with the fault beside a separate lr episode
    s, g, loss = healthy(seed=seed)
    lr = np.full(s.size, 1e-3)
    lr[1000:1010] = 3e-2
    g[990] *= 8
    g[991:1000] *= 2.5
    g[1001:1041] *= 40  # the first step after the raised lr
    loss[1001:1300] += 0.8
    a = audit_run(run_series(s, g, loss, lr))
    spike, fault = [e for e in a.episodes if 980 <= e.onset_step <= 1010]
    assert spike.onset_step == 990 and spike.peak_step == 990 and spike.end_step == 1001
    assert spike.kind == "spike" and spike.severity == "warning"
    assert abs(spike.loss_impact.excess_loss) < 0.05 and "lr-change" not in spike.detected_by
    assert fault.onset_step == 1001 and "lr-change" in fault.detected_by
    assert fault.severity == "explosion" and fault.loss_impact.excess_loss > 0.6
    # the clip options judge both halves (the climb was missing from them)
    assert all(len(o.episode_peak_cut) == 2 for o in a.clip.options)
    assert "loss-rise" not in spike.detected_by  # the loss rose with the climb, not the spike


@pytest.mark.parametrize("seed", range(3))
def test_bad_batch_on_the_onset_step_is_no_lasting_damage(seed):
    # loss only; one batch at 25x that comes straight back: its own loss counts in the excess,
    # not in the harm verdict - wherever the onset falls (a median that repeated the onset
    # point made the batch its own level when it was the first point of the horizon)
    s, _, loss = healthy(seed=seed)
    loss[1500] *= 25
    (e,) = audit_run(run_series(s, None, loss)).episodes
    assert e.onset_step == 1500 and e.severity == "warning"
    assert e.loss_impact.excess_loss > 0.2 and "without the spike itself" in e.reason


@pytest.mark.parametrize("seed", range(3))
def test_three_bad_batches_from_the_onset_are_a_warning(seed):
    # a 30x grad spike with 3 garbage batches (+10 on a loss of 2.7) from its first step, and the
    # loss straight back: a warning. The spike test's median, mirrored at the onset, held 5
    # spike values of 9 and made the batches their own level - lasting damage, an explosion
    s, g, loss = healthy(seed=seed)
    g[1500:1503] *= 30
    loss[1500:1503] += 10.0
    (e,) = audit_run(run_series(s, g, loss)).episodes
    assert e.onset_step == 1500 and e.severity == "warning"
    assert e.loss_impact.excess_loss > 0.1  # 30 / 200 of it, against a harm bar of 0.08


@pytest.mark.parametrize("seed", range(4))
def test_loss_jump_with_ordinary_grad_noise_is_no_gradient_spike(seed):
    # a noisy grad norm (log sigma 0.9) left alone and a loss jump that stays up: 3x grad points
    # somewhere in the loss episode are the grad norm's own noise, not a spike that joined it
    s, g, loss = healthy(seed=seed, sigma=0.9)
    loss[1500] *= 25
    loss[1501:1600] += 0.3
    (e,) = [e for e in audit_run(run_series(s, g, loss)).episodes if e.onset_step == 1500]
    assert e.kind == "loss_spike" and "stayed healthy" in e.reason


def test_spike_with_no_loss_point_before_an_lr_fault_is_judged_by_its_ratio():
    # the loss logged every 50 steps: nothing of it lies between a 50x spike and an lr fault
    # 28 steps later, so its severity comes from the peak ratio, not from "not harmed"
    s, g, loss = healthy(seed=3)
    g[1410] *= 50
    lr = np.full(s.size, 1e-3)
    lr[1438:1448] = 3e-2
    loss[1439:] += 0.5
    keep = s % 50 == 0
    run = run_series(s, g, None, lr)
    frame = run_series(s[keep], None, loss[keep]).frame
    import polars as pl
    run.frame = pl.concat([run.frame, frame]).sort("tag", "step")
    run.loss_tag = "loss"
    (e,) = [e for e in audit_run(run).episodes if e.onset_step == 1410]
    assert e.severity == "explosion" and "severity from the peak ratio" in e.reason
    assert "below the harm threshold" not in e.reason


def test_slow_loss_rise_before_an_lr_fault_keeps_its_own_episode():
    # the loss drifts up from step 1000 (no lr change), then the lr is set 30x too high at 1250
    # and the grad norm climbs 40x: the lr episode is the climb; the earlier rise stays a loss
    # episode of its own, which ends where the climb's episode begins (episodes never overlap)
    # and whose reason says the grad norm stayed healthy over it (not a jump)
    s, g, loss = healthy(seed=2)
    loss[1000:1300] += np.linspace(0, 0.5, 300)
    lr = np.full(s.size, 1e-3)
    lr[1250:1260] = 3e-2
    g[1251:1290] *= 40
    loss[1251:1500] += 0.8
    eps = sorted(audit_run(run_series(s, g, loss, lr)).episodes, key=lambda e: e.onset_step)
    rise, fault = eps[0], eps[-1]
    assert rise.onset_step < 1200 and rise.kind == "loss_spike"
    assert "lr-change" not in rise.detected_by
    assert rise.end_step == fault.onset_step
    assert "the grad norm stayed healthy" in rise.reason
    assert "jump" not in rise.reason and rise.reason.startswith("the loss rose")
    assert fault.onset_step == 1251 and "lr-change" in fault.detected_by
    assert fault.kind in ("spike", "level_shift") and fault.severity == "explosion"


def _lr_time_run(seed: int, harm: float = 0.0):
    """A loss that is a power law in the lr's sum (training progress goes with it), on a
    decaying schedule; the lr is raised 3x for good at step 600 (a brief grad-norm rise with
    it). ``harm`` adds a bump that decays over 300 steps. Returns the run and the true excess
    over [600, 800) against the same run without the raise (noiseless curves)."""
    rng = np.random.default_rng(seed)
    n, on = 2000, 600
    s = np.arange(n)
    lr_clean = 1e-3 * np.cos(0.5 * np.pi * s / n) ** 2
    lr = np.where(s < on, lr_clean, 3.0 * lr_clean)

    def loss_of(x):
        return 2.0 + 3.0 * (np.cumsum(x) / 1e-3 + 20.0) ** -0.5
    bump = np.where(s >= on, harm * np.exp(-(s - on) / 300.0), 0.0)
    loss = loss_of(lr) + bump + rng.normal(0, 0.03, n)
    g = 0.5 * np.exp(rng.normal(0, 0.1, n))
    g[on + 1:on + 30] *= 4
    truth = float(np.mean((loss_of(lr) + bump - loss_of(lr_clean))[on:on + 200]))
    return run_series(s, g, loss, lr), truth


def test_a_lasting_lr_raise_that_trained_faster_is_measured_as_a_gain():
    # step time reads such a raise as no change (about 0 against a true -0.011: the anchor
    # after it fits the gain away); learning-rate time measures it
    hits = 0
    for seed in range(8):
        run, truth = _lr_time_run(seed)
        assert truth < -0.01, (seed, truth)  # every seed's raise is a gain
        e = _one(audit_run(run))
        assert e.onset_step == 601 and e.severity == "warning"
        ex = e.loss_impact.excess_loss
        if "learning-rate time" in e.reason:
            assert 2 * truth <= ex <= truth / 2, (seed, ex, truth)  # within 2x (< 0)
            hits += 1
    assert hits >= 6


def test_learning_rate_time_never_turns_harm_into_no_harm():
    # the same raise with a loss bump that costs +0.1 over the horizon: an explosion, measured
    # in step time
    for seed in range(4):
        run, truth = _lr_time_run(seed, harm=0.2)
        e = _one(audit_run(run))
        assert truth > 0.09 and e.severity == "explosion", (seed, e.reason)
        assert "learning-rate time" not in e.reason
        assert truth / 2 <= e.loss_impact.excess_loss <= truth * 2


def test_a_bad_batch_that_changed_the_model_for_good():
    # one huge batch at 1500; after it the grad norm stays 8x higher and the loss never comes
    # back: the advice is a restart (no lr change happened), the clip comes from the steps
    # before it (the damaged model's norms are no healthy level), the reason says how it diverged
    s, g, loss = healthy(seed=31)
    g[1500] *= 1000
    g[1501:] *= 8
    loss[1501:] += 0.5
    a = audit_run(run_series(s, g, loss))
    e = [e for e in a.episodes if e.severity == "explosion"][0]
    assert e.onset_step == 1500 and e.loss_impact.diverged
    assert "never came back" in e.reason and "non-finite" not in e.reason
    assert "restart from a checkpoint before it" in a.clip.advice
    assert "lower the learning rate" not in a.clip.advice and "~8" in a.clip.advice
    assert a.clip.suggested_threshold == pytest.approx(np.percentile(g[1000:1500], 99), rel=0.15)


def test_a_loss_gone_non_finite_is_named_so_with_restart_advice():
    s, g, loss = healthy(seed=32)
    g[2000:] = np.inf
    loss[2000:] = np.nan
    a = audit_run(run_series(s, g, loss))
    (e,) = [e for e in a.episodes if e.kind == "divergence"]
    assert "went non-finite" in e.reason
    assert "too late to clip" in a.clip.advice and "2000" in a.clip.advice


def test_an_lr_raise_that_helped_reads_as_a_gain():
    # lr x4 for good at 1500, the grad norm unchanged, the loss falling faster after it: a
    # warning whose peak lies within it, whose loss "did not rise" and whose excess is a gain
    s, g, loss = healthy(seed=33)
    lr = np.where(s < 1500, 1e-3, 4e-3)
    loss[1501:] -= 0.15 + np.minimum((s[1501:] - 1500) / 2000.0, 0.1)
    a = audit_run(run_series(s, g, loss, lr))
    (e,) = a.episodes
    assert e.kind == "loss_spike" and e.severity == "warning" and "lr-change" in e.detected_by
    assert e.onset_step <= e.peak_step < e.end_step
    assert "did not rise above its level" in e.reason and "(a gain)" in e.reason


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("start", [3, 8])
def test_blow_up_from_the_first_steps_has_its_onset_where_the_climb_starts(seed, start):
    # an lr far too high: the grad norm grows ~2.5x a step from step `start` and is inf by
    # start + 25, inside the detectors' warm-up. The level there follows the climb up; read
    # as healthy, the climb gave a "healthy level" of 1.9e7 and a suggested clip of 7.5e13
    # (a 30-run torch sweep in a user review).
    rng = np.random.default_rng(seed)
    n = 1500
    s = np.arange(n)
    g = 2.5 * np.exp(rng.normal(0, 0.05, n))
    g[start:start + 25] *= np.exp(np.arange(25) * 0.9 + rng.normal(0, 0.3, 25))
    g[start + 25:] = np.inf
    loss = 2.3 - 0.01 * s[:n] ** 0.5 + rng.normal(0, 0.01, n)
    loss[start:start + 25] += np.linspace(0, 40, 25)
    loss[start + 25:] = np.nan
    a = audit_run(run_series(s, g, loss))
    e = a.episodes[-1]
    assert e.kind == "divergence" and e.severity == "explosion"
    assert start - 1 <= e.onset_step <= start + 2, e.to_dict()
    assert "healthy level 2." in e.reason, e.reason
    # no option comes from the climb (nor from the few norms before it, none of them judged
    # against a healthy level), and a handful of healthy points is no level for --baseline to
    # compare (a sweep's diverged runs read "healthy grad-norm level rose 1.19e3x" against
    # their own earlier divergence), nor a percentile to suggest (the "99th percentile" of 3
    # norms is their max)
    assert not a.clip.options and "could be judged against a healthy level" in a.clip.advice
    assert a.healthy_grad_norm is None and a.clip.suggested_threshold is None


def test_a_jump_to_nonfinite_from_a_flat_run_keeps_its_onset():
    # no climb before the grad norm went non-finite: the onset stays at the non-finite point
    s, g, loss = healthy(seed=3)
    g[2500:] = np.inf
    loss[2500:] = np.nan
    e = audit_run(run_series(s, g, loss)).episodes[-1]
    assert e.kind == "divergence" and e.onset_step == 2500


def test_divergence_after_one_bad_batch_advises_clipping_and_a_slow_climb_a_lower_lr():
    # a batch with its inputs x100 (a Lightning run in a user review): the grad norm jumps
    # 6e5x in one step and the run diverges; replayed with the suggested clip, it trained to
    # the clean twin's loss, so "restart with a lower learning rate" was the wrong advice
    s, g, loss = healthy(seed=5)
    g[2000] *= 6e5
    g[2001:2003] = [1e10, np.inf]
    g[2003:] = np.nan
    loss[2001:] = np.nan
    a = audit_run(run_series(s, g, loss))
    e = a.episodes[-1]
    assert e.kind == "divergence" and e.onset_step == 2000
    assert "one-step grad-norm jump" in a.clip.advice and "clipping on" in a.clip.advice
    assert a.clip.suggested_threshold is not None and a.clip.suggested_threshold < 2.0
    s, g, loss = healthy(seed=8)  # an lr too high: a climb over 40 steps
    g[2500:] *= np.exp(np.arange(500) * 0.1)
    loss[2540:] = np.nan
    advice = audit_run(run_series(s, g, loss)).clip.advice
    assert "lower learning rate" in advice and "one-step" not in advice


def test_a_sudden_blow_up_after_a_noise_dip_keeps_its_onset():
    # a noisy grad norm (~1.5x) around 0.9 that dips to 0.45 at 17-19, then jumps at 47 and
    # is inf from 78: three dip points read as "the level the climb started from" put the
    # onset at 17 with a healthy level of 0.48 (review); the level is every point before it
    from gradaudit.episodes import EpisodeParams, grad_episodes

    rng = np.random.default_rng(11)
    g = 0.9 * np.exp(rng.normal(0, 0.35, 84))
    g[17:20] = [0.78, 0.48, 0.43]
    g[44:47] = [1.67, 1.19, 1.46]  # ordinary noise, 3x above the dip
    g[47:78] = 4.6 * np.exp(np.arange(31) * 1.4)
    g[78:] = np.inf
    (e,) = [e for e in grad_episodes(g, EpisodeParams()).episodes if e.kind == "divergence"]
    assert 46 <= e.onset <= 47, e
    assert 0.7 < np.exp(e.base_log) < 1.2


def _spike_before_step_decay(seed: int, decay_at: int) -> object:
    # a healthy power-law loss, a harmless 20x grad spike at step 1000 (the loss jumps 3x for
    # three steps and comes straight back), and a 10x step decay of the lr at ``decay_at``
    rng = np.random.default_rng(seed)
    s = np.arange(1, 4001)
    m = np.where(s > decay_at, 1 - 0.3 * (1 - np.exp(-(s - decay_at) / 30.0)), 1.0)
    y = 3.0 * (s + 20.0) ** -0.15 * m * np.exp(rng.normal(0, 0.05, s.size))
    y[999:1002] *= 3.0
    g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
    g[999:1002] *= 20.0
    return run_series(s, g, y, np.where(s > decay_at, 1e-4, 1e-3))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("decay_at", [1300, 1420])
def test_a_step_decay_after_a_harmless_spike_is_not_its_harm(seed, decay_at):
    # the loss falls 30 % after the lr drops 10x; a counterfactual without the lr cannot
    # follow that fall, so the loss after the drop is no anchor for it. Anchored through it,
    # the fall pulled the counterfactual down and the spike read +8 % of lasting harm: an
    # explosion on every seed (the drop 1.5 horizons after the spike, inside the old anchor
    # window; 2.1 horizons after it, inside the longer one)
    (e,) = [e for e in audit_run(_spike_before_step_decay(seed, decay_at)).episodes
            if abs(e.onset_step - 1000) < 20]
    assert e.severity == "warning"


@pytest.mark.parametrize(("rise", "lo", "hi"), [(0.05, 22, 30), (0.03, 0, 3)])
def test_lasting_harm_on_a_noisy_loss_stays_an_explosion(rise, lo, hi):
    # +5 % for good from step 2000 on a power law with 2 % noise per step, found through a 20x
    # grad spike: an explosion on 26 of 30 seeds (with the 3 % harm bar, +4 % was on 22 of 30
    # with the anchor window of two horizons, 26 with the longer one; judged on the whole longer
    # window, the shrunk forecast slope's miss, growing with the lever, hid the damage: 12 of
    # 30). +3 %, under the 4 % bar, is harm on none (26 of 30 at +4 % with the 3 % bar; 2 now)
    n = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        s = np.arange(1, 4001)
        y = 3.0 * (s + 20.0) ** -0.15 * np.exp(rng.normal(0, 0.02, s.size))
        y[1999:] *= 1 + rise
        g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
        g[1999:2002] *= 20.0
        eps = [e for e in audit_run(run_series(s, g, y)).episodes if abs(e.onset_step - 2000) < 20]
        n += len(eps) == 1 and eps[0].severity == "explosion"
    assert lo <= n <= hi, n


@pytest.mark.parametrize("seed", range(3))
def test_a_cool_down_after_a_harmless_spike_is_not_its_harm(seed):
    # a warmup-stable-decay schedule: the lr falls linearly to zero from one to three horizons
    # after a harmless spike, and the loss falls 30 % with it (lagging 30 steps). Anchored
    # through that fall (a window out to twice the onset's step), the spike was an explosion on
    # 20 of 20 seeds; the window now ends where the lr has halved within a horizon (0 of 20, as
    # with the old window of two horizons)
    rng = np.random.default_rng(seed)
    s = np.arange(1, 4001)
    lr = np.interp(s, [1, 1200, 1600, 4000], [1e-3, 1e-3, 0.0, 0.0])
    follow = np.empty(s.size)  # the loss follows the lr with a lag of 30 steps
    v = 1.0
    for i, x in enumerate(lr / 1e-3):
        v += (x - v) / 30.0
        follow[i] = v
    y = 3.0 * (s + 20.0) ** -0.15 * (1 - 0.3 * (1 - follow)) * np.exp(
        rng.normal(0, 0.02, s.size))
    y[999:1002] *= 3.0
    g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
    g[999:1002] *= 20.0
    eps = audit_run(run_series(s, g, y, lr)).episodes
    (e,) = [e for e in eps if abs(e.onset_step - 1000) < 20]
    assert e.severity == "warning"


@pytest.mark.parametrize("seed", range(3))
def test_one_inf_loss_later_is_no_divergence_of_an_earlier_spike(seed):
    # a harmless spike at step 1000 and one inf loss 600 steps later (its own episode): the
    # loss's non-finite points after the onset were looked for up to the run's end, so the
    # spike was called a divergence and an explosion; a later episode's are its own
    rng = np.random.default_rng(seed)
    s = np.arange(3000)
    y = 1.0 + 6.0 * (s + 5.0) ** -0.5 + rng.normal(0, 0.02, s.size)
    y[1000:1003] *= 3.0
    y[1600] = np.inf
    g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
    g[1000:1003] *= 20.0
    eps = audit_run(run_series(s, g, y)).episodes
    (e,) = [e for e in eps if abs(e.onset_step - 1000) < 20]
    assert e.kind == "spike" and e.severity == "warning" and not e.loss_impact.diverged
    assert any(e.onset_step == 1600 for e in eps)  # the inf is still reported


@pytest.mark.parametrize("seed", range(3))
def test_the_learning_rate_time_measure_fits_where_the_first_measure_did(monkeypatch, seed):
    # a spike at 520 whose loss bump has decayed by ~533, then a lasting lr x3 at 600 with a
    # 2-step grad spike and a loss bump that outlasts it (the loss is back at ~620): the lr
    # episode's impact is measured again in learning-rate time, and that measure must fit the
    # loss where the first one did, after the spike's aftermath. It took the lr episode's own
    # recovery step as its floor - after the onset, so the fit window ignored every floor
    import gradaudit.audit as audit

    rng = np.random.default_rng(seed)
    s = np.arange(1400)
    g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
    tau = np.where(s < 600, s, 600 + 3.0 * (s - 600)).astype(float)
    loss = 2.5 + 3.0 * (tau + 20.0) ** -0.4 + rng.normal(0, 0.02, s.size)
    loss[600:] += 0.4 * np.exp(-(s[600:] - 600.0) / 20.0)
    g[601:603] *= 10.0  # (the raised lr's first update shows in the grad norm at 601)
    loss[520:] += 0.6 * np.exp(-(s[520:] - 520.0) / 8.0)
    g[520] *= 30.0
    lr = np.where(s < 600, 1e-3, 3e-3)
    floors = []
    measure = audit.loss_impact

    def recording(*args, **kw):
        floors.append((args[3], kw.get("floor_step"), kw.get("lr_time") is not None))
        return measure(*args, **kw)

    monkeypatch.setattr(audit, "loss_impact", recording)
    audit_run(run_series(s, g, loss, lr))
    at_lr = [(f, lr_t) for on, f, lr_t in floors if 595 <= on <= 605]
    assert [lr_t for _, lr_t in at_lr] == [False, True]  # measured twice
    first, again = at_lr[0][0], at_lr[1][0]
    assert first is not None and 520 < first < 600 and again == first


@pytest.mark.parametrize(("rise", "severity"), [(0.045, "explosion"), (0.048, "explosion"),
                                                (0.035, "warning")])
def test_a_lasting_rise_under_the_recovery_band_is_still_harm(rise, severity):
    # a quiet loss (0.2 % noise) that a grad spike leaves 4.5-4.8 % higher for good: above the
    # 4 % harm bar, under the 5 % band the recovery step is judged with - the loss "never
    # left the band", and that is no evidence that the spike did no harm (a severity rule
    # that took it as such, 990a68d, made all of these warnings); 3.5 %, under the bar, is not
    for seed in range(5):
        s, g, loss = healthy(seed=seed, loss_noise=0.0)
        rng = np.random.default_rng(100 + seed)
        loss = loss * np.exp(rng.normal(0, 0.002, s.size)) * np.where(s > 1500, 1 + rise, 1.0)
        g[1500] *= 30
        e = _one(audit_run(run_series(s, g, loss)))
        assert e.onset_step == 1500 and e.severity == severity, e.reason


def test_a_loss_of_exactly_zero_is_no_loss_episode_and_a_rise_from_zero_is():
    # a loss logged as exactly 0 (a hinge or auxiliary loss, too few digits) has relative bars
    # of 0: every point "rose" by 0 and a loss episode at the first judged point took the run's
    # clip suggestion away (found by an edge-case review)
    s, g, _ = healthy(seed=6)
    g[1500] *= 50
    a = audit_run(run_series(s, g, np.zeros(s.size)))
    e = _one(a)
    assert (e.onset_step, e.kind) == (1500, "spike") and a.clip.suggested_threshold is not None
    # falling straight to 0 and staying there: the trend of the fall is not carried below 0
    s, g, _ = healthy(n=2000, seed=7)
    flat = np.maximum(0.0, 1.0 - s / 1000)
    assert audit_run(run_series(s, g, flat)).episodes == []
    # a real rise from 0 still stands out
    up = flat.copy()
    up[1500:1600] = 0.5
    e = _one(audit_run(run_series(s, g, up)))
    assert e.kind == "loss_spike" and abs(e.onset_step - 1500) <= 1, e.to_dict()


def test_steps_below_zero_are_counted_from_the_first():
    # a log that counts up to 0: the power law's log(t + 1) was NaN there, so the impact was
    # lost and the reason read "level nan" (found by an edge-case review); the same values at
    # steps from 0 give the same numbers
    s, g, loss = healthy(n=1000, seed=3)
    g[600] *= 40
    loss[601:700] += np.linspace(0.8, 0, 99)
    at_zero = _one(audit_run(run_series(s, g, loss)))
    below = _one(audit_run(run_series(s - 1000, g, loss)))
    assert below.onset_step == at_zero.onset_step - 1000 and "nan" not in below.reason
    assert below.severity == at_zero.severity == "explosion"
    assert below.loss_impact.excess_loss == pytest.approx(at_zero.loss_impact.excess_loss)


def test_a_divergence_the_loss_took_no_harm_from_is_not_called_a_warning_in_its_reason():
    # the grad norm blows up to inf by the run's end while the loss shows nothing yet: an
    # explosion by the divergence rule; its reason said "(the loss was not lastingly harmed,
    # so a warning)" beside severity explosion (found by an edge-case review)
    s, g, loss = healthy(n=1000, seed=5)
    g[800:] *= np.exp(np.arange(200) * 0.35)
    g[990:] = np.inf
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.kind, e.severity) == ("divergence", "explosion"), e.to_dict()
    assert "so a warning" not in e.reason and "the grad norm diverged: an explosion" in e.reason


def test_a_finite_peak_too_large_for_its_ratio_is_not_called_non_finite():
    s, g, loss = healthy(n=1000, seed=5)
    g[600] = 1.7e308  # (its ratio to a level under 1 overflows)
    e = _one(audit_run(run_series(s, g, loss)))
    assert e.peak_grad_norm == 1.7e308 and np.isfinite(e.peak_ratio)
    assert "non-finite" not in e.reason


def test_a_divergence_from_the_first_logged_steps_has_a_reason():
    # inf/NaN grad norms from the first steps on (no healthy level yet to compare a peak with)
    # gave an episode whose reason was empty (an edge-case review)
    s, g, _ = healthy(n=600, seed=2)
    g[1::2] = np.nan
    e = _one(audit_run(run_series(s, g)))
    assert (e.kind, e.severity) == ("divergence", "explosion")
    assert e.reason.startswith("the grad norm went non-finite"), e.reason


# --- episodes are maximal and disjoint, and their fields agree (a review's reproducers) -------


def _spans(a):
    return [(e.onset_step, e.end_step) for e in a.episodes]


def _disjoint_and_ordered(a):
    for e in a.episodes:
        assert e.end_step is None or e.onset_step <= e.peak_step < e.end_step, e.to_dict()
    for e0, e1 in zip(a.episodes, a.episodes[1:], strict=False):
        assert e0.end_step is not None and e0.end_step <= e1.onset_step, _spans(a)


def test_a_loss_rise_over_two_loss_jumps_is_one_episode():
    # two lasting loss steps 500 steps apart, the grad norm healthy: the rise that spans both
    # joined each jump's episode separately, giving two identical episodes
    s, g, loss = healthy(seed=0, loss_noise=0.01)
    loss[1500:] += 0.5
    loss[2000:] += 1.8
    a = audit_run(run_series(s, g, loss))
    _disjoint_and_ordered(a)
    (e,) = a.episodes
    assert e.onset_step == 1500 and e.kind == "loss_spike" and "loss-rise" in e.detected_by


def test_a_loss_rise_a_later_grad_spike_interrupts_ends_at_the_spike():
    # the loss steps up at 900 with a healthy grad norm; a lone 40x grad spike at 1300: the
    # loss episode ended after it (both listed, overlapping), and took the spike's 40x as its
    # own peak ratio while its reason said the grad norm stayed healthy
    s, g, loss = healthy(seed=0, loss_noise=0.01)
    loss[900:] += 0.5
    g[1300] *= 40
    a = audit_run(run_series(s, g, loss))
    _disjoint_and_ordered(a)
    rise = next(e for e in a.episodes if e.onset_step == 900)
    assert rise.end_step == 1300 and rise.peak_ratio < 3
    assert "the grad norm stayed healthy" in rise.reason
    # the spike is judged against the loss as it stood, not charged with the step's damage
    # (it was an explosion that "never came back", at +0.46)
    spike = next(e for e in a.episodes if e.onset_step == 1300)
    assert spike.severity == "warning" and a.status == "warning"
    assert abs(spike.loss_impact.excess_loss) < 0.05
    assert "the loss as it stood after the episode whose loss never came back, at step 900" \
        in spike.reason


@pytest.mark.parametrize("gap", [20, 30])
@pytest.mark.parametrize("seed", range(4))
def test_a_harmless_spike_soon_after_a_lasting_loss_step_is_a_warning(seed, gap):
    # 20-30 steps after the step: the loss as it stood was taken from the plateau's highest
    # point, which its noise put anywhere - too few points after it, and the fit reached back
    # across the step (an explosion on 15 and 10 of 20 seeds; a third review)
    s, g, loss = healthy(seed=seed, loss_noise=0.01)
    loss[900:] += 0.5
    g[900 + gap] *= 40
    a = audit_run(run_series(s, g, loss))
    spike = next(e for e in a.episodes if e.onset_step == 900 + gap)
    assert spike.severity == "warning", spike.reason


def test_the_loss_as_it_stood_counts_from_the_first_step_where_steps_are_negative():
    # the same run logged from step -5000: the floor of "the loss as it stood" was clamped to
    # step 0, after the onset, and the spike was an explosion with no loss impact (a review)
    s, g, loss = healthy(seed=0, loss_noise=0.01)
    loss[900:] += 0.5
    g[1300] *= 40
    a = audit_run(run_series(s - 5000, g, loss))
    spike = next(e for e in a.episodes if e.onset_step == 1300 - 5000)
    assert spike.severity == "warning" and abs(spike.loss_impact.excess_loss) < 0.05


@pytest.mark.parametrize("tau", [10, 40])
@pytest.mark.parametrize("seed", range(2))
def test_harm_right_after_a_loss_jump_still_coming_back_is_found(tau, seed):
    # a loss jump at 1000 that decays back (time constant 10 or 40 steps), then a harmful 40x
    # grad spike at 1030 (+0.3 to the end): the jump's episode, cut at the spike, never showed
    # a recovery, and the spike was judged against the jump's still-decaying tail - a warning at
    # +0.06 on 6 of 12 such runs (a review). A loss still moving is no level to judge against
    s, g, loss = healthy(seed=seed, loss_noise=0.01)
    loss[1000:] += np.exp(-(s[1000:] - 1000) / tau)
    g[1030] *= 40
    loss[1031:] += 0.3
    a = audit_run(run_series(s, g, loss))
    spike = next(e for e in a.episodes if e.onset_step == 1030)
    assert spike.severity == "explosion" and a.status == "explosion"
    assert 0.2 < spike.loss_impact.excess_loss < 0.45


@pytest.mark.parametrize("seed", range(5))
def test_harm_right_after_a_lasting_loss_step_is_still_found(seed):
    # the same, but the spike at 1300 does harm of its own (+0.4 for 200 steps, then fading):
    # against the loss as it stood, that is an explosion
    s, g, loss = healthy(seed=seed, loss_noise=0.01)
    loss[900:] += 0.5
    g[1300] *= 40
    loss[1301:] += 0.4 * np.exp(-(s[1301:] - 1301) / 300)
    a = audit_run(run_series(s, g, loss))
    spike = next(e for e in a.episodes if e.onset_step == 1300)
    assert spike.severity == "explosion"
    assert 0.2 < spike.loss_impact.excess_loss < 0.6


def test_a_nan_loss_inside_a_loss_jump_is_part_of_it():
    s, g, loss = healthy(seed=1, loss_noise=0.01)
    loss[1000:1400] += 1.0
    loss[1200] = np.nan
    a = audit_run(run_series(s, g, loss))
    _disjoint_and_ordered(a)
    (e,) = [e for e in a.episodes if e.onset_step <= 1200 < (e.end_step or 10**9)]
    assert e.onset_step == 1000 and "nonfinite" in e.detected_by


@pytest.mark.parametrize("nan_at", [[997, 998, 999], [1100, 1101, 1102, 1250]])
def test_non_finite_losses_at_or_in_a_loss_jump_make_it_one_divergence(nan_at):
    # three NaNs just before a jump were left outside it (a divergence with no NaN in its
    # span); a NaN inside a jump that three NaNs had already made a divergence was an episode
    # of its own, which cut the jump short (a second review)
    s, g, loss = healthy(seed=1, loss_noise=0.01)
    loss[1003:1400] += 1.0
    loss[nan_at] = np.nan
    a = audit_run(run_series(s, g, loss))
    _disjoint_and_ordered(a)
    (e,) = a.episodes
    assert (e.onset_step, e.kind, e.severity) == (min(nan_at[0], 1003), "divergence",
                                                  "explosion")
    assert e.end_step >= 1400 and e.loss_impact.diverged


def test_a_loss_divergence_is_not_cut_by_an_episode_inside_it():
    # the loss jumps at 1000 and goes NaN from 1390 to the end; a 40x grad spike at 1100 cut
    # the divergence at 1100, leaving its NaNs in no episode (a second review)
    s, g, loss = healthy(seed=1, loss_noise=0.01)
    loss[1000:] += 1.0
    loss[1390:] = np.nan
    g[1100] *= 40
    a = audit_run(run_series(s, g, loss))
    last = a.episodes[-1]
    assert last.kind == "divergence" and last.end_step is None and last.onset_step <= 1100
    assert last.peak_ratio > 30  # the spike inside it is its grad peak


@pytest.mark.parametrize("at", [1000, 1003])
def test_a_grad_spike_before_an_lr_rise_keeps_its_onset(at):
    # a 60x spike at step 1000, the lr raised 5x from step 1003: the spike's onset was moved
    # to the rise (1004), past its own peak and end, and every clip option said it cut 0 % of
    # it. So at step 1003, the first logged at the new lr: its grad norm was computed before
    # that lr's first update (a second review)
    s, g, loss = healthy(n=2000, seed=0, loss_noise=0.01)
    g[at] = 30.0
    lr = np.full(s.size, 1e-3)
    lr[1003:] = 5e-3
    a = audit_run(run_series(s, g, loss, lr))
    _disjoint_and_ordered(a)
    spike = next(e for e in a.episodes if e.peak_step == at)
    assert spike.onset_step == at and "lr-change" not in spike.detected_by
    i = a.episodes.index(spike)
    assert all(o.episode_peak_cut[i] > 0.9 for o in a.clip.options if o.threshold < 1.0)


def test_the_peak_is_the_highest_grad_norm_also_before_the_first_trigger():
    # the grad norm jumps in the detectors' first points (no level yet): the onset walks back
    # to step 20, and the peak was looked for only from the first point with a level on
    s, g, loss = healthy(n=1000, seed=0, sigma=0.1, loss_noise=0.01)
    g[20:30] = 5.0
    g[21] = 20.0
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.onset_step, e.peak_step, e.peak_grad_norm) == (20, 21, 20.0)


@pytest.mark.parametrize("nan_at", [[1000, 1004], [1000, 1005, 1010], list(range(0, 3000, 2))])
def test_isolated_nan_losses_the_loss_carried_on_after_are_a_warning(nan_at):
    # two NaN losses 4 steps apart were a "divergence" explosion (the merged span was 5 long)
    s, g, loss = healthy(seed=7)
    loss[nan_at] = np.nan
    a = audit_run(run_series(s, g, loss))
    assert a.status == "warning"
    assert all(e.kind == "nonfinite" and not e.loss_impact.diverged for e in a.episodes)
    assert all("diverged" not in e.reason for e in a.episodes)


def test_a_loss_episodes_grad_peak_is_taken_before_its_end_step():
    # a NaN loss at 1000: episode [1000, 1001); the grad norm at 1001 (the first step after
    # it) was taken as its peak
    s, g, loss = healthy(seed=0, sigma=0.1, loss_noise=0.01)
    loss[1000] = np.nan
    g[1001] = 2.5 * 0.5
    e = _one(audit_run(run_series(s, g, loss)))
    assert (e.onset_step, e.end_step) == (1000, 1001) and e.peak_grad_norm == g[1000]


def test_learning_rate_time_counts_from_the_first_step_where_steps_are_negative():
    # a harmless lasting lr x3 measured in learning-rate time; the same run with every step
    # 5000 lower (a log that counts from -5000) took the log of a negative lr time: a
    # RuntimeWarning, and the re-measure was dropped (a review)
    import warnings

    s, g, loss = healthy(seed=0, sigma=0.1, loss_noise=0.01)
    lr = np.full(s.size, 1e-3)
    lr[1500:] = 3e-3
    loss[1501:1530] += np.linspace(0.3, 0, 29)
    got = []
    for offset in (0, -5000):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (e,) = audit_run(run_series(s + offset, g, loss, lr)).episodes
        got.append((e.onset_step - offset, e.kind, e.severity,
                    round(e.loss_impact.excess_loss, 6)))
        assert "learning-rate time" in e.reason
    assert got[0] == got[1]


@pytest.mark.parametrize("harm", [0.0, 0.3])
def test_one_nan_loss_after_a_grad_spike_is_no_divergence(harm):
    # a 40x spike at 1000 and the loss NaN at 1001 only: a "divergence" explosion ("the loss
    # went non-finite"), however the loss went on (a second review); the NaN is left out and
    # the harm judged on the rest
    s, g, loss = healthy(seed=7)
    g[1000] *= 40
    loss[1001:] += harm * np.exp(-(s[1001:] - 1001) / 300)
    loss[1001] = np.nan
    (e,) = audit_run(run_series(s, g, loss)).episodes
    assert e.kind == "spike" and not e.loss_impact.diverged
    assert e.severity == ("explosion" if harm else "warning")
    assert e.loss_impact.excess_loss == pytest.approx(harm * 0.72, abs=0.05)


def test_an_lr_rise_inside_a_loss_divergence_joins_it_without_breaking_the_audit():
    # the loss jumps at 1000 and goes NaN from 1390 on; the lr rises 5x at 1200, inside it:
    # the divergence took in the lr episode's detector but not its lr tie, and the audit
    # failed (KeyError): status "error", exit 0 (a third review)
    s, g, loss = healthy(seed=1, loss_noise=0.01)
    loss[1000:] += 1.0
    loss[1390:] = np.nan
    lr = np.full(s.size, 1e-3)
    lr[1200:] = 5e-3
    a = audit_run(run_series(s, g, loss, lr))
    assert a.status == "explosion"
    (e,) = a.episodes
    assert (e.onset_step, e.end_step, e.kind) == (1000, None, "divergence")


def test_a_loss_divergence_over_before_a_level_shift_is_cut_there():
    # three NaN losses at 1010 inside a jump over 1000-1100, and a 6x grad level shift from
    # 1050 to the end: the divergence swallowed the level shift (a third review)
    s, g, loss = healthy(seed=1, loss_noise=0.01)
    loss[1000:1100] += 1.0
    loss[1010:1013] = np.nan
    g[1050:] *= 6
    a = audit_run(run_series(s, g, loss))
    _disjoint_and_ordered(a) if a.episodes[-1].end_step is not None else None
    kinds = [(e.onset_step, e.kind) for e in a.episodes]
    assert kinds == [(1000, "divergence"), (1050, "level_shift")], kinds


def test_a_spike_that_peaked_before_an_lr_rise_keeps_its_peak():
    # a 5-step spike from 1000 (60x, decaying), the lr raised 5x from 1003: it was relabelled
    # as the rise's from 1004, its 60x peak gone (a third review). Under way when the lr rose,
    # it is tied to the rise but keeps its onset and peak (split there, a grad divergence lost
    # its kind and its severity: a fourth review)
    s, g, loss = healthy(n=2000, seed=0, loss_noise=0.01)
    g[1000:1005] = 30 * np.exp(-np.arange(5) / 2)
    lr = np.full(s.size, 1e-3)
    lr[1003:] = 5e-3
    a = audit_run(run_series(s, g, loss, lr))
    _disjoint_and_ordered(a)
    (spike,) = a.episodes
    assert (spike.onset_step, spike.peak_step) == (1000, 1000) and spike.peak_ratio > 50


def test_an_lr_restart_during_a_grad_divergence_leaves_it_a_divergence():
    # the grad norm 10x from 1000 to the end, the loss NaN from 2500; the lr back up at 2000
    # (a schedule restart): the divergence was split at the restart and both parts warnings
    # (exit 0; a fourth review), and an lr episode overlapped it. The grad norm held its new
    # level for 1500 steps before the loss broke: that breakdown is an event on the new level
    s, g, loss = healthy(n=3000, seed=0)
    g[1000:] *= 10
    g[1400] *= 3
    loss[2500:] = np.nan
    lr = np.full(s.size, 1e-3)
    lr[500:2000] = 1e-4
    a = audit_run(run_series(s, g, loss, lr))
    assert a.status == "explosion"
    _assert_disjoint(a.episodes)
    assert [(e.onset_step, e.end_step, e.kind, e.severity) for e in a.episodes] == [
        (1000, 2500, "level_shift", "warning"), (2500, None, "divergence", "explosion")]


@pytest.mark.parametrize("nan_after", [0, 5, 20])
@pytest.mark.parametrize("grad_nan", [False, True])
def test_a_loss_gone_nan_for_good_at_a_warm_restart_is_an_explosion(nan_after, grad_nan):
    # a cosine schedule restarts at step 1500 (back to its peak lr: no fault on its own), and
    # the loss is NaN from up to 20 steps later to the end: the run diverged there, an
    # explosion that fails the gate - it was "divergence", a warning "only: the schedule
    # returned to an earlier lr" (status warning, exit 0)
    s, g, loss = healthy(n=3000, seed=1)
    lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (s % 1500) / 1500))
    loss[1500 + nan_after:] = np.nan
    if grad_nan:
        g[1500 + nan_after:] = np.nan
    a = audit_run(run_series(s, g, loss, lr))
    (e,) = a.episodes
    assert (e.kind, e.severity, a.status) == ("divergence", "explosion", "explosion")
    assert "lr-change" in e.detected_by and 1500 <= e.onset_step <= 1501
    assert "a warning only" not in e.reason and "schedule restart" in e.reason
    assert "diverged at step" in (a.clip.advice or "")


@pytest.mark.parametrize("nan_at", [1497, 1503, 1508])
def test_a_divergence_at_a_warm_restart_with_a_grad_spike_is_an_explosion(nan_at):
    # the restart brings a 20x grad spike for 5 steps, and the loss is NaN for good from 3
    # steps before it, during it or 3 steps after it: one divergence, an explosion (a review:
    # "divergence", a warning, status warning, as the NaN did not start within the episode)
    s, g, loss = healthy(n=3000, seed=0)
    lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (s % 1500) / 1500))
    g[1500:1505] *= 20
    loss[nan_at:] = np.nan
    a = audit_run(run_series(s, g, loss, lr))
    (e,) = a.episodes
    assert (e.kind, e.severity, a.status) == ("divergence", "explosion", "explosion")


def test_a_warm_restart_before_a_later_divergence_is_no_episode_of_its_own():
    # the loss logged every 50 steps and NaN from step 1600, 100 steps after a warm restart:
    # the divergence at 1600 is the episode; the restart, which the loss shows no mark of
    # before it, is none (a review: an "lr-change" loss_spike warning at 1550-1600, its end
    # taken for a step within it)
    s, g, loss = healthy(n=3000, seed=0)
    lr = 1e-3 * (0.5 + 0.5 * np.cos(np.pi * (s % 1500) / 1500))
    loss[1600:] = np.nan
    a = audit_run(run_series(s, g, loss[::50], lr, loss_steps=s[::50]))
    assert [(e.onset_step, e.kind, e.severity) for e in a.episodes] == [
        (1600, "divergence", "explosion")]


@pytest.mark.parametrize("ramp", [100, 200])
@pytest.mark.parametrize("seed", range(3))
def test_a_harmless_spike_after_a_loss_ramp_is_judged_against_its_plateau(seed, ramp):
    # the loss ramps up by 0.5 over `ramp` steps from 1000, then holds; a harmless 40x spike 80
    # steps into the plateau: the level was taken from inside the ramp, never settled, and the
    # spike read +0.47, an explosion (a fourth review)
    s, g, loss = healthy(seed=seed, loss_noise=0.01)
    loss[1000:1000 + ramp] += np.linspace(0, 0.5, ramp)
    loss[1000 + ramp:] += 0.5
    at = 1000 + ramp + 80
    g[at] *= 40
    a = audit_run(run_series(s, g, loss))
    spike = next(e for e in a.episodes if e.onset_step == at)
    assert spike.severity == "warning" and abs(spike.loss_impact.excess_loss) < 0.1


@pytest.mark.parametrize("rise_at", [1001, 1002, 1003, 1005])
def test_a_loss_logged_every_10_steps_with_an_lr_rise_after_its_spike(rise_at):
    # the loss logged every 10 steps jumps at 1000; the lr rises just after: the loss episode
    # (its end step 1010 after the rise) was taken for the rise's and its onset moved past its
    # last point: "analysis failed: ValueError" (a third review)
    s, g, _ = healthy(n=3000, seed=0)
    _, _, loss = healthy(n=3000, seed=0, loss_noise=0.01)
    lv = loss[::10].copy()
    lv[100] += 3.0
    lr = np.full(s.size, 1e-3)
    lr[rise_at:] = 5e-3
    a = audit_run(run_series(s, g, lv, lr, loss_steps=s[::10]))
    assert a.status != "error", a.notes
    _disjoint_and_ordered(a)
    assert a.episodes[0].onset_step == 1000 and "lr-change" not in a.episodes[0].detected_by


def test_an_isolated_nan_loss_changes_neither_the_words_nor_the_figure():
    # the loss never came back after a 40x spike, and one NaN at 1500: the reason said "the
    # loss diverged: it went non-finite" (no numbers); with a NaN right after a spike the
    # figure's counterfactual stopped at it (1 point of 1000), and an isolated NaN turned the
    # anchor off (a third review)
    s, g, loss = healthy(seed=7)
    g[1000] *= 40
    loss[1001:] += 1.0
    loss[1500] = np.nan
    e = audit_run(run_series(s, g, loss)).episodes[0]
    assert e.loss_impact.diverged and "went non-finite" not in e.reason
    assert "never came back" in e.reason and e.loss_impact.excess_loss > 0.8
    got = {}
    for nan_at in (None, 1001, 1100):
        s, g, loss = healthy(seed=7)
        g[1000] *= 40
        loss[1001:] += 0.3 * np.exp(-(s[1001:] - 1001) / 300)
        if nan_at is not None:
            loss[nan_at] = np.nan
        a = audit_run(run_series(s, g, loss))
        li = a.episodes[0].loss_impact
        got[nan_at] = (li.recovery_step, round(li.excess_loss, 2),
                       a.traces["counterfactual:1000"][0].size)
    assert got[1001][:2] == got[1100][:2] == got[None][:2]
    assert got[1001][2] >= got[None][2] - 1 and got[1100][2] >= got[None][2] - 1


@pytest.mark.parametrize("seed", range(3))
def test_an_lr_fault_inside_a_loss_rise_already_under_way_is_found(seed):
    # the loss creeps up from 960, and the lr is set 30x too high at 999 (+0.5, fading): the
    # rise's loss episode is cut at the lr episode, which takes the harm (a version that
    # started the lr episode after any episode under way missed the benchmark's lr x50 fault
    # on seed 148000)
    s, g, loss = healthy(seed=seed, loss_noise=0.02)
    loss[960:1000] += np.linspace(0, 0.15, 40)
    loss[1000:] += 0.15 + 0.5 * np.exp(-(s[1000:] - 1000) / 300)
    lr = np.full(s.size, 1e-3)
    lr[999:1009] = 3e-2
    a = audit_run(run_series(s, g, loss, lr))
    _disjoint_and_ordered(a)
    fault = next(e for e in a.episodes if "lr-change" in e.detected_by)
    assert fault.onset_step == 1000 and fault.severity == "explosion"


def _on_new_level(seed, shift_at=500, at=2500, spike=40.0, harm=0.3, grad_spike=True):
    """A benign 4x grad level shift at ``shift_at`` (the loss untouched), then at ``at`` a
    grad spike ``spike`` x for 3 steps (or none) and the loss up by ``harm``, decaying with a
    300-step time constant. Returns the run and the true excess over the 200-step horizon."""
    s, g, loss = healthy(n=3000, seed=seed)
    g[shift_at:] *= 4
    if grad_spike:
        g[at:at + 3] *= spike
    loss[at:] += harm * np.exp(-(s[at:] - at) / 300.0)
    truth = harm * 300.0 / 200.0 * (1 - np.exp(-200.0 / 300.0))
    return run_series(s, g, loss), truth


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shift_at", [200, 500, 1500])
def test_a_harmful_spike_on_a_level_shifts_new_level_is_an_explosion_of_its_own(seed, shift_at):
    # it was part of the open-ended shift, judged by the shift's first 200 steps: a warning,
    # whatever it did to the loss (a +1.0 loss step for good read +0.003)
    run, truth = _on_new_level(seed, shift_at)
    a = audit_run(run)
    _assert_disjoint(a.episodes)
    shift, spike = a.episodes
    assert (shift.onset_step, shift.end_step, shift.kind, shift.severity) == \
        (shift_at, 2500, "level_shift", "warning")
    assert (spike.onset_step, spike.kind, spike.severity) == (2500, "spike", "explosion")
    assert truth / 2 <= spike.loss_impact.excess_loss <= 2 * truth
    # its ratio against the new level (40x), not the old one (160x)
    assert 20 <= spike.peak_ratio <= 80
    assert a.status == "explosion"
    # clipped from the new level: the old one's p99 would clip every step of it
    healthy_cost = [o.healthy_clipped_fraction for o in a.clip.options
                    if o.threshold == a.clip.suggested_threshold]
    assert a.clip.suggested_threshold > 1.5 and healthy_cost[0] < 0.05


@pytest.mark.parametrize("seed", range(4))
def test_a_harmless_spike_on_a_level_shifts_new_level_is_a_warning_of_its_own(seed):
    run, _ = _on_new_level(seed, harm=0.0)
    a = audit_run(run)
    assert [(e.onset_step, e.kind, e.severity) for e in a.episodes] == [
        (500, "level_shift", "warning"), (2500, "spike", "warning")]
    assert abs(a.episodes[1].loss_impact.excess_loss) < 0.02


@pytest.mark.parametrize("seed", range(4))
def test_a_loss_jump_on_a_level_shifts_new_level_is_an_episode_of_its_own(seed):
    # the grad norm stays at its new level: the jump is the loss's own (a loss_spike), measured
    # against the loss before it - not merged into the shift and judged by the shift's onset
    run, truth = _on_new_level(seed, harm=0.5, grad_spike=False)
    a = audit_run(run)
    _assert_disjoint(a.episodes)
    shift, jump = a.episodes
    assert (shift.kind, shift.end_step, jump.onset_step, jump.kind) == \
        ("level_shift", 2500, 2500, "loss_spike")
    assert truth / 2 <= jump.loss_impact.excess_loss <= 2 * truth


@pytest.mark.parametrize("seed", range(3))
def test_a_spike_on_a_climb_that_never_settles_stays_part_of_it(seed):
    # a shift whose grad norm goes on climbing 20x over 2000 steps holds no new level: a spike
    # on the climb is no event of its own there
    s, g, loss = healthy(n=3000, seed=seed)
    g[800:] *= 4 * np.exp(np.linspace(0, np.log(20), 2200))
    g[2500:2503] *= 20
    eps = audit_run(run_series(s, g, loss)).episodes
    assert len(eps) == 1 and eps[0].onset_step <= 800, [(e.onset_step, e.kind) for e in eps]


def test_an_lr_rise_on_a_level_shifts_new_level_has_one_episode():
    # an lr x6 rise for 70 steps on a 2.5x shift's new level: the inner shift's "new level"
    # index was left in the inner series' own numbering, and a loss episode split off at the
    # rise's own onset (two episodes at 901; a review)
    s, g, loss = healthy(seed=0)
    g[400:] *= 2.5
    lr = np.full(3000, 3e-4)
    lr[900:970] *= 6
    g[901:971] *= 3.5
    loss[901:] += 0.3 * np.exp(-(s[901:] - 901) / 300)
    eps = audit_run(run_series(s, g, loss, lr)).episodes
    _assert_disjoint(eps)
    assert [(e.onset_step, e.severity) for e in eps] == [(400, "warning"), (901, "explosion")]


@pytest.mark.parametrize("seed", range(3))
def test_an_lr_split_shift_is_cut_where_a_loss_event_begins_on_its_level(seed):
    # an lr rise the grad norm ignores splits a 4x shift; a NaN loss at 2000 on its new level
    # then came after an open-ended episode (end null, not last; a review)
    s, g, loss = healthy(seed=seed)
    g[500:] *= 4
    lr = np.full(3000, 1e-4)
    lr[600:650] *= 5
    loss[2000] = np.nan
    eps = audit_run(run_series(s, g, loss, lr)).episodes
    _assert_disjoint(eps)
    assert eps[-1].onset_step == 2000 and all(e.end_step is not None for e in eps[:-1])


@pytest.mark.parametrize("seed", range(6))
def test_a_harmful_spike_after_a_harmful_shift_is_measured_from_where_the_loss_came_back(seed):
    # the shift's loss +0.3 decaying: the spike's fit reached back before the shift (its span
    # never healthy) and read its +0.35 as below a threshold of 0.76 (7 of 20 seeds; a review)
    s, g, loss = healthy(seed=seed)
    g[500:] *= 4
    loss[500:] += 0.3 * np.exp(-(s[500:] - 500) / 400)
    g[2000:2002] *= 30
    loss[2000:] += 0.5 * np.exp(-(s[2000:] - 2000) / 300)
    truth = 0.5 * 1.5 * (1 - np.exp(-200 / 300))
    spike = audit_run(run_series(s, g, loss)).episodes[-1]
    assert (spike.onset_step, spike.severity) == (2000, "explosion")
    assert truth / 2 <= spike.loss_impact.excess_loss <= 2 * truth


@pytest.mark.parametrize("seed", range(4))
def test_a_spike_where_a_shift_came_back_down_is_no_divergence(seed):
    # the inner series ends where the shift does, not where the run does: nothing there
    # "grows to the run's end" (a review: an explosion with excess 0.004)
    s, g, loss = healthy(seed=seed)
    g[500:2000] *= 3
    g[2003:2006] *= 25
    a = audit_run(run_series(s, g, loss))
    assert a.status == "warning" and "divergence" not in {e.kind for e in a.episodes}


def test_a_loss_breakdown_stays_with_the_spike_that_began_it():
    # the loss NaN from 1005 (logged every 10 steps) after a 40x spike at 1000, a 5x blip at
    # 1007: the divergence moved onto the blip and the spike read as a harmless warning when
    # every loss onset went to the latest grad episode begun by then (a review)
    s, g, loss = healthy(seed=0)
    g[1000] *= 40
    g[1007] *= 5
    loss[1005:] = np.nan
    eps = audit_run(run_series(s, g, loss[::10], loss_steps=s[::10])).episodes
    assert (eps[0].onset_step, eps[0].kind, eps[0].severity) == (1000, "divergence", "explosion")


def test_a_harmless_shift_interrupted_on_its_new_level_is_judged_as_an_open_ended_one():
    # a harmless 6.5x shift during a decaying loss (logged every 10 steps), a harmless 4x spike
    # on its new level: measured to the spike's onset as its end, the shift read harmful on 20
    # of 40 seeds (9 as one open-ended episode; a review). Its verdict does not depend on
    # what happens later on its level
    for seed in (4, 9):
        verdicts = []
        for spike in (True, False):
            s, g, loss = healthy(seed=seed, sigma=0.25)
            r = np.zeros(3000)
            r[418:518] = np.linspace(0, 0.375, 100)
            r[518:] = 0.375 * np.exp(-(s[518:] - 518) / 600)
            loss += r
            g[823:] *= 6.5
            if spike:
                g[1544:1546] *= 4
            eps = audit_run(run_series(s, g, loss[::10], loss_steps=s[::10])).episodes
            (shift,) = [e for e in eps if e.kind == "level_shift"]
            verdicts.append((shift.severity, shift.loss_impact.excess_loss))
        assert verdicts[0] == verdicts[1]


@pytest.mark.parametrize("seed", range(3))
def test_a_shift_cut_by_an_event_on_its_level_is_no_slow_climb(seed):
    # a harmful 12x shift, a 10 % drift late on, a spike on the new level: the shift no longer
    # reached the run's end, and the slow-climb detector took the whole series for a climb
    # from before anything happened, harmless (a second review)
    s, g, loss = healthy(seed=seed, sigma=0.1)
    g[1000:] *= 12
    loss[1000:] += 0.5 * np.exp(-(s[1000:] - 1000) / 300.0)
    g[2400:] *= np.linspace(1, 1.1, 600)
    g[2000] *= 20
    a = audit_run(run_series(s, g, loss))
    assert a.status == "explosion"
    assert (a.episodes[0].onset_step, a.episodes[0].kind, a.episodes[0].severity) == \
        (1000, "level_shift", "explosion")


@pytest.mark.parametrize("gap", [30, 120])
def test_a_benign_shift_is_not_charged_with_the_spike_that_interrupts_it(gap):
    # a harmful spike `gap` steps into a benign 6x shift: the shift's horizon ran on through
    # the spike's damage (an explosion, and the clip taken from the old level, which clips
    # every step of the new one; a second review)
    s, g, loss = healthy(seed=0)
    g[1800:] *= 6
    at = 1800 + gap
    g[at] *= 40
    loss[at:] += 0.5 * np.exp(-(s[at:] - at) / 150.0)
    a = audit_run(run_series(s, g, loss))
    shift, spike = a.episodes
    assert (shift.kind, shift.severity, spike.severity) == ("level_shift", "warning", "explosion")
    assert np.mean(g[2100:] > a.clip.suggested_threshold) < 0.05


def test_an_interrupted_shifts_loss_jump_is_its_own():
    # measured as open-ended, its jump ran to the run's end: the later spike's +1.0
    s, g, loss = healthy(seed=0)
    g[1000:] *= 6
    g[2500] *= 40
    loss[2500:] += 1.0
    shift = audit_run(run_series(s, g, loss)).episodes[0]
    assert shift.end_step == 2500 and shift.loss_impact.loss_jump < 0.2


def test_an_interrupted_recovery_is_no_damaged_model_for_the_clip():
    # a harmful shift that a spike interrupts before its loss came back, then a harmless 4x
    # shift that the run ends on: the interrupted recovery read as a loss that never came
    # back, and the clip came from before it - 100 % of the final regime clipped
    s, g, loss = healthy(n=5000, seed=0)
    g[1000:2000] *= 6
    loss[1000:] += 0.5 * np.exp(-(s[1000:] - 1000) / 200.0)
    g[1100] *= 30
    g[3000:] *= 4
    a = audit_run(run_series(s, g, loss))
    assert np.mean(g[3100:] > a.clip.suggested_threshold) < 0.05


def test_the_new_level_after_an_event_on_it_is_healthy_for_the_clip():
    # a harmful shift whose loss came back, a harmless spike on its new level: the points
    # after the spike, outside every episode, still counted as anomalous (the shift's whole
    # first span), and the clip came from the old level
    s, g, loss = healthy(n=5000, seed=0)
    g[1000:] *= 6
    loss[1000:] += 0.5 * np.exp(-(s[1000:] - 1000) / 60.0)
    g[2500] *= 30
    a = audit_run(run_series(s, g, loss))
    assert a.episodes[0].severity == "explosion" and a.episodes[-1].onset_step == 2500
    assert np.mean(g[2600:] > a.clip.suggested_threshold) < 0.05


def test_a_chronically_spiky_run_with_a_shift_lists_at_most_max_episodes():
    rng = np.random.default_rng(0)
    n = 60000
    s = np.arange(n)
    g = 0.5 * np.exp(rng.normal(0, 0.15, n))
    at = rng.choice(np.arange(100, n - 10), 2500, replace=False)
    g[at] *= rng.uniform(8, 30, at.size)
    g[20000:] *= 6
    loss = 2.5 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0, 0.02, n)
    assert len(audit_run(run_series(s, g, loss)).episodes) <= 500


def test_an_interrupted_shifts_reason_names_the_episode_that_holds_its_horizon():
    s, g, loss = healthy(seed=0)
    g[1800:] *= 6
    g[1880] *= 40
    loss[1880:] += 0.5 * np.exp(-(s[1880:] - 1880) / 150.0)
    shift = audit_run(run_series(s, g, loss)).episodes[0]
    assert "held from step 1880" in shift.reason and "next episode" in shift.reason
    assert "lr-rise" not in shift.reason


def test_spikes_on_two_shifts_new_levels_share_the_episode_cap():
    # each shift's inner search had the whole budget: 692 episodes listed, no summary note
    rng = np.random.default_rng(0)
    n = 60000
    s = np.arange(n)
    g = 0.5 * np.exp(rng.normal(0, 0.15, n))
    g[10000:25000] *= 6
    g[40000:] *= 6
    for lo, hi in ((10500, 25000), (40500, n)):
        at = rng.choice(np.arange(lo, hi - 5), 400, replace=False)
        g[at] *= rng.uniform(8, 30, at.size)
    loss = 2.5 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0, 0.02, n)
    a = audit_run(run_series(s, g, loss))
    assert len(a.episodes) <= 500 and any("not listed" in x for x in a.notes)


@pytest.mark.parametrize("seed", range(2))
def test_a_shift_whose_loss_never_came_back_keeps_the_clip_before_it(seed):
    # a permanent +0.3 with a 6x shift: the clip comes from before it (a damaged model's
    # norms are no healthy level), whether or not a harmless spike comes 1500 steps later
    clips = []
    for spike in (False, True):
        s, g, loss = healthy(n=5000, seed=seed)
        g[1000:] *= 6
        loss[1000:] += 0.3
        if spike:
            g[2500] *= 30
        clips.append(audit_run(run_series(s, g, loss)).clip.suggested_threshold)
    assert clips[1] == pytest.approx(clips[0], rel=0.05) and clips[0] < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_a_spike_on_an_intermediate_level_is_its_own_before_a_second_step_up(seed):
    # 5x at 1000, a harmful spike at 2000, another 5x at 3500: the first level was compared
    # with the shift's later half (the second step's) and never held, and the spike stayed
    # part of the shift (a warning; a second review)
    s, g, loss = healthy(n=6000, seed=seed)
    g[1000:] *= 5
    g[2000] *= 40
    loss[2000:] += 1.0
    g[3500:] *= 5
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    spike = [e for e in a.episodes if e.onset_step == 2000]
    assert spike and spike[0].severity == "explosion" and a.status == "explosion"


def test_a_pause_in_a_blow_up_is_no_new_level():
    # a 5x step, 40 steps at that level, then a climb of 1e6x to the run's end with the loss:
    # the pause is no level the climb is an event on: one divergence (a guard: as before)
    s, g, loss = healthy(seed=0)
    g[1000:] *= 5
    g[1040:] *= np.exp(np.linspace(0, np.log(1e6), 1960))
    loss[1040:] += np.linspace(0, 3, 1960)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [e.kind for e in eps] == ["divergence"] and eps[0].onset_step <= 1000


@pytest.mark.parametrize("seed", range(3))
def test_an_event_filling_the_second_block_after_a_shift_stays_its_own(seed):
    # a 14-step 30x spike 42 steps into a 5x shift (or 20 inf points 40 steps in): the first
    # two blocks that agreed began after it, and the search from there left it in the shift
    # (a fourth review)
    s, g, loss = healthy(seed=seed)
    g[1000:] *= 5
    g[1042:1056] *= 30
    loss[1042:] += np.exp(-(s[1042:] - 1042) / 300.0)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [(e.onset_step, e.severity) for e in eps] == [(1000, "warning"), (1042, "explosion")]
    s, g, loss = healthy(seed=seed)
    g[1000:] *= 4
    g[1040:1060] = np.inf
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [(e.onset_step, e.kind) for e in eps] == [(1000, "level_shift"), (1040, "nonfinite")]


@pytest.mark.parametrize("seed", range(3))
def test_a_spike_soon_after_a_second_step_up_stays_its_own(seed):
    # 4x at 1000, 4x more at 1500, a harmful spike at 1525: the second step's level was judged
    # on the 5 points before the spike (noise), and the spike went into the step
    s, g, loss = healthy(seed=seed)
    g[1000:] *= 4
    g[1500:] *= 4
    g[1525] *= 30
    loss[1525:] += 0.6 * np.exp(-(s[1525:] - 1525) / 300.0)
    a = audit_run(run_series(s, g, loss))
    spike = [e for e in a.episodes if e.onset_step == 1525]
    assert spike and spike[0].severity == "explosion"
    assert np.mean(g[1600:] > a.clip.suggested_threshold) < 0.05


@pytest.mark.parametrize("seed", [1, 5, 11, 12])
def test_an_unflagged_spike_does_not_unsettle_a_new_level(seed):
    # NaN grad norms 22 steps into a 5x shift, then a 30x spike the inner search could not
    # flag yet (no level there): judged on its block with the spike in it, the new level
    # "moved", the shift ran to the end as an explosion and the clip came from the old level,
    # clipping every step of the new one (a fifth review)
    s, g, loss = healthy(seed=seed)
    g[1000:] *= 5
    g[1022:1027] = np.nan
    g[1030] *= 30
    loss[1030:] += 0.5 * np.exp(-(s[1030:] - 1030) / 300.0)
    a = audit_run(run_series(s, g, loss))
    assert a.episodes[0].end_step == 1022
    assert np.mean(g[1100:] > a.clip.suggested_threshold) < 0.05


def _stepped_run(seed, steps_up, spike_at=None, harm=0.0, tau=300.0, perm=0.0, n=4000):
    """Grad norm ~1 stepping up ``x`` at each ``(step, x)``; a 40x spike at ``spike_at`` with the
    loss up by ``harm`` (decaying, ``tau``) and ``perm`` for good from there."""
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    g = np.exp(rng.normal(0, 0.1, n))
    for at, x in steps_up:
        g[at:] *= x
    loss = 2.5 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0, 0.01, n)
    if spike_at is not None:
        g[spike_at] *= 40
        loss[spike_at:] += harm * np.exp(-(s[spike_at:] - spike_at) / tau) + perm
    return g, run_series(s, g, loss)


def test_the_advice_claims_the_clips_regime_only_where_it_came_from_there():
    # 3x at 1000, a harmful spike at 1300, 3x more at 1600: the spike's recovery search stopped
    # at the second step, "never came back" took the clip from before it, while the advice said
    # it came from the run's regime at its end (a sixth review). A spike's loss is not seen
    # again after the next episode: the damaged-model rule stands (a seventh review: skipped,
    # a broken model's new regime was taken for a harmless change of scale)
    g, run = _stepped_run(0, [(1000, 3), (1600, 3)], 1300, harm=0.4)
    a = audit_run(run)
    clipped_final = np.mean(g[1700:] > a.clip.suggested_threshold)
    claims = "computed from the steps after it" in (a.clip.advice or "")
    assert claims == (clipped_final < 0.05), (a.clip.suggested_threshold, a.clip.advice)


@pytest.mark.parametrize("gap", [300, 600])
def test_a_broken_models_new_regime_is_no_clip_regime(gap):
    # a 40x spike that left the loss +0.5 for good, then the grad norm 3x higher: the clip
    # comes from before the damage, and no advice calls the new regime harmless scale
    g, run = _stepped_run(0, [(1000 + gap, 3)], 1000, perm=0.5)
    a = audit_run(run)
    assert a.episodes[0].severity == "explosion"
    assert a.clip.suggested_threshold < 2.0
    assert "computed from the steps after it" not in (a.clip.advice or "")


def test_an_interrupted_shift_that_came_back_down_gets_no_lasting_advice():
    # 4x (and the loss +0.3) from 1000 to 1800, a spike at 1500: the shift "stayed higher, restart
    # from a checkpoint" though the run was back on its old level from 1800 (a seventh review)
    g, run = _stepped_run(0, [], 1500)
    g[1000:1800] *= 4
    s = np.arange(4000)
    loss = run.series(run.loss_tag)[1].copy()
    loss[1000:1800] += 0.3
    a = audit_run(run_series(s, g, loss))
    assert "stayed" not in (a.clip.advice or "") and "restart" not in (a.clip.advice or "")


def test_an_interrupted_harmful_shift_keeps_its_restart_advice():
    g, run = _stepped_run(0, [(1000, 4)], 1500, perm=0.0)
    s = np.arange(4000)
    loss = run.series(run.loss_tag)[1].copy()
    loss[1000:] += 0.3
    a = audit_run(run_series(s, g, loss))
    assert a.episodes[0].severity == "explosion" and a.episodes[0].end_step == 1500
    assert "restart from a checkpoint before it" in (a.clip.advice or "")


def test_a_recovery_cut_short_is_not_called_never_came_back():
    # a harmful shift at 1000 (+0.3 decaying over 300 steps), a harmless spike 150 steps in:
    # the spike's reason said the shift's loss "never came back" (a sixth review)
    rng = np.random.default_rng(13)
    s = np.arange(4000)
    g = np.exp(rng.normal(0, 0.1, s.size))
    loss = 2.0 + 1.5 * np.exp(-s / 1500) + rng.normal(0, 0.01, s.size)
    g[1000:] *= 4
    loss[1001:] += 0.3 * np.exp(-(s[1001:] - 1001) / 300.0)
    g[1150] *= 40
    spike = audit_run(run_series(s, g, loss)).episodes[1]
    assert spike.onset_step == 1150 and "never came back" not in spike.reason


@pytest.mark.parametrize("steps", [3, 5])
def test_a_harmful_spike_after_a_staircase_of_benign_steps_is_its_own(steps):
    # a batch-size ramp in 2.5x steps every 4000 steps, a harmful spike 2000 steps after the
    # last: each step is found within the one before, and the search stopped two deep, so the
    # spike after a third step was part of it (a warning; a final review)
    s, g, loss = healthy(n=4000 * steps + 6000, seed=0)
    for k in range(1, steps + 1):
        g[4000 * k:] *= 2.5
    at = 4000 * steps + 2000
    g[at] *= 30
    loss[at:] += 0.5 * np.exp(-(s[at:] - at) / 2000.0)
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    assert [(e.onset_step, e.severity) for e in a.episodes if e.kind == "spike"] == \
        [(at, "explosion")]
    assert a.status == "explosion"



@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gap, between", [(40, None), (100, None), (40, 10.0), (40, np.inf)])
def test_a_loss_step_of_its_own_soon_after_a_harmless_spike_is_not_the_spikes(seed, gap,
                                                                              between):
    # a harmless 10x spike, then a lasting +0.2 loss step while the grad norm stays healthy:
    # the step is a loss episode of its own, and its loss was charged to the spike too (the
    # spike's 200-step horizon held it: an explosion at +0.16 with a gap of 40 steps, +0.1 at
    # 100; a random differential). So with another spike or an overflow step between them (a
    # review)
    s, g, loss = healthy(seed=seed)
    g[1500] *= 10
    if between is not None:
        g[1520] = g[1520] * between if np.isfinite(between) else between
    loss[1500 + gap:] += 0.2
    a = audit_run(run_series(s, g, loss))
    spike, step = a.episodes[0], a.episodes[-1]
    assert (spike.onset_step, spike.kind, spike.severity) == (1500, "spike", "warning")
    assert abs(spike.loss_impact.excess_loss) < 0.03
    assert (step.onset_step, step.kind) == (1500 + gap, "loss_spike")
    assert 0.17 < step.loss_impact.excess_loss < 0.23


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("length, factor", [(250, 4), (300, 4), (300, 8)])
@pytest.mark.parametrize("harm", [0.0, 0.3])
def test_a_slow_ramp_to_a_new_level_is_a_level_shift(seed, length, factor, harm):
    # the grad norm climbs 4-8x over 250-300 steps (log-linear, sigma 0.25) and stays there,
    # the loss with it by +0.3 or not at all: a level shift from where the climb began. Ramps
    # were looked for over 100 points only: these were no grad episode, and the harmed loss a
    # loss_spike "while the grad norm stayed healthy", a warning
    s, g, loss = healthy(seed=seed, sigma=0.25)
    up = np.clip((s - 1000) / length, 0, 1)
    g = g * factor ** up
    loss = loss + harm * up
    a = audit_run(run_series(s, g, loss))
    shifts = [e for e in a.episodes if e.kind == "level_shift"]
    assert len(shifts) == 1 and 960 <= shifts[0].onset_step <= 1100
    assert shifts[0].severity == ("explosion" if harm else "warning")
    assert a.status == shifts[0].severity


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("after", [20, 30, 40])
@pytest.mark.parametrize("harm", [0.0, 0.3])
def test_a_spike_soon_after_a_step_is_an_event_of_its_own(seed, after, harm):
    # a benign 4x step at step 1000 and a 30x spike 20-40 steps later, harmful or not: the
    # spike was part of the shift (the new level is searched from the first blocks that hold
    # it, later than that), and a benign shift read as an explosion with the spike's damage
    s, g, loss = healthy(seed=seed, sigma=0.3)
    g[1000:] *= 4
    g[1000 + after] *= 30
    loss[1001 + after:] += harm * np.exp(-(s[1001 + after:] - 1001 - after) / 300.0)
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    shift, spike = a.episodes
    assert (shift.onset_step, shift.kind, shift.severity) == (1000, "level_shift", "warning")
    assert (spike.onset_step, spike.kind) == (1000 + after, "spike")
    assert spike.severity == ("explosion" if harm else "warning")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("at", [1050, 1120, 1160])
@pytest.mark.parametrize("harm", [0.0, 0.3])
def test_a_spike_on_a_ramp_is_an_event_of_its_own_once_the_ramp_rose_3x(seed, at, harm):
    # a benign climb 8x over 200 steps from step 1000, and a 30x spike on it, harmful or not.
    # Where the climb had risen 3x by then (1120, 1160) the spike is an episode of its own: it
    # was part of the shift, judged with the shift's loss from step 1000, and a harmful one read
    # as a warning. Below that (1050), it stays the shift's, which its loss makes harmful: cut
    # short there, a harmful climb would read as a warning (under 3x) and a harmless spike on
    # it as the explosion (a review)
    s, g, loss = healthy(seed=seed, sigma=0.2)
    g = g * 8.0 ** np.clip((s - 1000) / 200, 0, 1)
    g[at] *= 30
    loss[at + 1:] += harm * np.exp(-(s[at + 1:] - at - 1) / 300.0)
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    assert abs(a.episodes[0].onset_step - 1000) <= 30 and a.episodes[0].kind == "level_shift"
    if at == 1050:
        (shift,) = a.episodes
        assert shift.severity == ("explosion" if harm else "warning")
        return
    shift, spike = a.episodes
    assert shift.severity == "warning" and shift.end_step == at
    assert (spike.onset_step, spike.kind) == (at, "spike")
    assert spike.severity == ("explosion" if harm else "warning")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("after", [110, 130, 170])
def test_a_spike_11_to_19_logged_points_after_a_step_logged_every_10_is_its_own(seed, after):
    # a benign 3x step at step 1000 and a harmful 20x spike 110-170 steps later, logged every
    # 10 steps: the spike is an episode of its own, an explosion. The points after a step where
    # a spike is still the step's were 20 logged points, 200 steps here (a review: merged into
    # the shift, whose horizon held little of the spike's damage, a warning)
    s, g, loss = healthy(seed=seed, sigma=0.2)
    g[1000:] *= 3
    g[1000 + after] *= 20
    loss[1001 + after:] += 0.3 * np.exp(-(s[1001 + after:] - 1001 - after) / 300.0)
    a = audit_run(run_series(s[::10], g[::10], loss[::10]))
    assert a.status == "explosion"
    assert [(e.onset_step, e.kind, e.severity) for e in a.episodes][-1] == (
        1000 + after, "spike", "explosion")


_LOSS_FIRST = pytest.mark.xfail(strict=True, reason="known limit: the loss step at the climb's "
                                "start, before the grad norm rose, is a loss episode of its own, "
                                "and the climb, dated 14 steps late, misses it")


@pytest.mark.parametrize("seed, at", [(0, 1030), (0, 1100), (1, 1030), (1, 1100), (2, 1030),
                                      pytest.param(2, 1100, marks=_LOSS_FIRST), (3, 1030),
                                      (3, 1100)])
def test_a_harmless_spike_on_a_harmful_ramp_leaves_it_an_explosion(seed, at):
    # a climb 5x over 200 steps with the loss +0.3 for good from its start, and a harmless 30x
    # spike 30 or 100 steps up: the climb is the explosion (cut short at the spike, it read as a
    # warning under 3x, and the spike as the explosion with its damage; a review. At the
    # session's start, 4 of these 8 were a loss_spike warning and a spike warning)
    s, g, loss = healthy(seed=seed, sigma=0.2)
    g = g * 5.0 ** np.clip((s - 1000) / 200, 0, 1)
    g[at] *= 30
    loss[1000:] += 0.3
    a = audit_run(run_series(s, g, loss))
    assert [e.kind for e in a.episodes if e.severity == "explosion"] == ["level_shift"]
    assert all(e.onset_step < at for e in a.episodes if e.kind == "level_shift")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gap", [20, 40, 80])
def test_a_later_spikes_own_loss_step_is_not_an_earlier_harmless_spikes(seed, gap):
    # a harmless 10x spike, then a second 10x spike at which the loss steps up +0.2 for good:
    # the step is the second spike's, and it was charged to the first too (an explosion at
    # +0.12 to +0.18: a grad spike never ended an earlier horizon, lest an aftershock did)
    s, g, loss = healthy(seed=seed)
    g[1500] *= 10
    g[1500 + gap] *= 10
    loss[1501 + gap:] += 0.2
    first, second = audit_run(run_series(s, g, loss)).episodes
    assert (first.onset_step, first.severity) == (1500, "warning")
    assert abs(first.loss_impact.excess_loss) < 0.03
    assert (second.onset_step, second.severity) == (1500 + gap, "explosion")
    assert 0.17 < second.loss_impact.excess_loss < 0.23


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_harmful_spikes_loss_climbing_for_30_steps_is_the_spikes(seed):
    # the loss answers a 30x spike by climbing for 30 steps (momentum), then decays: the jump
    # detector finds that climb 9-11 steps in, an episode of its own, and it must not end the
    # spike's horizon there (the spike was a warning at +0.04; a review)
    s, g, loss = healthy(seed=seed)
    g[1500] *= 30
    loss[1500:1530] += np.linspace(0, 0.3, 30)
    loss[1530:] += 0.3 * np.exp(-(s[1530:] - 1530) / 400)
    spike = audit_run(run_series(s, g, loss)).episodes[0]
    assert (spike.onset_step, spike.severity) == (1500, "explosion")
    assert 0.18 < spike.loss_impact.excess_loss < 0.28


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ramp", [40, 120])
def test_a_ramp_to_a_new_level_is_a_level_shift_with_its_events_its_own(seed, ramp):
    # the grad norm climbs 6x over 40-120 steps from step 800 and stays: it was no episode at
    # all (the trailing level followed the climb, the segmentation saw steps of under 2x) or
    # one that ended when the level caught up, and a harmful spike later on the new level was
    # only found where the level had followed (a random differential)
    s, g, loss = healthy(seed=seed, sigma=0.2)
    prof = np.clip((s - 800) / ramp, 0, 1)
    g = g * np.exp(np.log(6) * prof)
    g[2000] *= 30
    loss[2000:] += 0.3 * np.exp(-(s[2000:] - 2000) / 300.0)
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    shift, spike = a.episodes
    assert shift.kind == "level_shift" and shift.severity == "warning"
    assert abs(shift.onset_step - 800) <= 5 and shift.end_step == 2000
    assert (spike.onset_step, spike.kind, spike.severity) == (2000, "spike", "explosion")



def test_events_after_a_ramp_or_a_step_stay_their_own():
    # a review's cases for the ramps: (1) the new level was searched from a point still on a
    # 60-step ramp, found no level there, and a harmful spike 200 steps after its top was part
    # of it; (2) a plain step's new level was judged over 100 points that held a spike's
    # decaying tail, so its start moved past the spike; (3) a ramp's start walked back over a
    # separate bump before a step, which took in both, and both harmful spikes after the step
    s, g, loss = healthy(seed=101, sigma=0.25)
    g = g * np.exp(np.log(4) * np.clip((s - 1200) / 60, 0, 1))
    g[1460:1462] *= 25
    loss[1460:] += 0.25 * np.exp(-(s[1460:] - 1460) / 300.0)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [(e.kind, e.severity) for e in eps] == [("level_shift", "warning"),
                                                   ("spike", "explosion")]
    assert abs(eps[0].onset_step - 1200) <= 10 and eps[1].onset_step == 1460
    s, g, loss = healthy(seed=0, sigma=0.3)
    g[1200:] *= 4
    g[1300] *= 25
    g[1302:1381] *= 1 + 1.5 * np.exp(-(s[1302:1381] - 1302) / 30.0)
    loss[1300:] += 0.2 * np.exp(-(s[1300:] - 1300) / 300.0)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [(e.onset_step, e.severity) for e in eps] == [(1200, "warning"), (1300, "explosion")]
    s, g, loss = healthy(seed=1)
    g[1557:1630] *= 4  # a bump that comes back down
    g[1646:] *= 4.5
    for at in (1766, 2485):
        g[at] *= 40
        loss[at:] += 0.3 * np.exp(-(s[at:] - at) / 300.0)
    eps = audit_run(run_series(s, g, loss)).episodes
    assert [(e.onset_step, e.severity) for e in eps if e.severity == "explosion"] == \
        [(1766, "explosion"), (2485, "explosion")]
    assert 1646 in [e.onset_step for e in eps]


def _ramps(seed, sigma, ramps, spike_at):
    s, g, loss = healthy(seed=seed, sigma=sigma)
    for at, length, factor in ramps:
        g = g * np.exp(np.log(factor) * np.clip((s - at) / length, 0, 1))
    g[spike_at:spike_at + 2] *= 30
    loss[spike_at:] += 0.25 * np.exp(-(s[spike_at:] - spike_at) / 300.0)
    return audit_run(run_series(s, g, loss))


@pytest.mark.parametrize("seed, sigma, ramps, spike_at", [
    (9139, 0.3, [(1000, 150, 4)], 2150),  # read as a step, 1000 steps before the spike
    (5, 0.3, [(1000, 60, 4)], 1090),  # the spike 30 steps after the top
    (96, 0.15, [(800, 60, 3), (1460, 150, 3)], 1760),  # a staircase of ramps
    (385, 0.45, [(1000, 100, 4)], 1300),  # a noisy ramp's end: the first blocks hold no level
])
def test_a_harmful_spike_after_a_ramp_is_its_own_explosion(seed, sigma, ramps, spike_at):
    # a second review of the ramps: the new level was searched from candidates still on the
    # ramp (or from its top, too late for a spike 30 steps on) and from no later block, so
    # the spike was part of the shift (harmful spikes found as explosions in the reviewer's
    # sweep of 2016: 1891, against 1935 before ramps were shifts; 1951 now)
    a = _ramps(seed, sigma, ramps, spike_at)
    assert (spike_at, "explosion") in [(e.onset_step, e.severity) for e in a.episodes]
    assert a.status == "explosion"

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ramp", [0, 160])
def test_a_second_step_up_that_holds_to_the_end_is_no_divergence(seed, ramp):
    # two benign steps (8x from 800, over a ramp or at once; 3.7x more at 2300, to the run's
    # end): the episode from 800 peaked in its last tenth with its last points well above its
    # median, so it was a divergence, an explosion
    s, g, loss = healthy(seed=seed, sigma=0.25)
    prof = np.clip((s - 800) / ramp, 0, 1) if ramp else (s >= 800).astype(float)
    g = g * np.exp(np.log(8.2) * prof)
    g[2300:] *= 3.7
    a = audit_run(run_series(s, g, loss))
    assert a.status == "warning"
    assert [(e.kind, e.end_step) for e in a.episodes] == \
        [("level_shift", 2300), ("level_shift", None)]

@pytest.mark.parametrize("seed, step_at", [(1, 18000), (5, 12000)])
def test_a_step_pelt_takes_for_a_level_shift_is_one_however_its_median_reads(seed, step_at):
    # three steps of exactly 2x (the level_ratio): the segmentation takes the step at step_at
    # for a 2x shift, the episode's median against its healthy level reads just under 2x, and
    # the episode was a "spike" thousands of steps long, not searched within; a harmful spike
    # after the last step was then part of it (seed 1: a warning; a final review)
    s, g, loss = healthy(n=30000, seed=seed)
    for k in range(1, 4):
        g[6000 * k:] *= 2.0
    at = 20000
    g[at] *= 30
    loss[at:] += 0.5 * np.exp(-(s[at:] - at) / 2000.0)
    # the boundary case itself: the segmentation's 2x shift at step_at
    assert step_at in [sh.first for sh in level_shifts(np.log(g), level_ratio=2.0, min_size=10)]
    a = audit_run(run_series(s, g, loss))
    _assert_disjoint(a.episodes)
    assert [(e.onset_step, e.severity) for e in a.episodes if e.kind == "spike"] == \
        [(at, "explosion")]
    shift = [e for e in a.episodes if e.onset_step == step_at]
    assert shift and shift[0].kind == "level_shift"


def test_block_medians_are_each_blocks_median_of_its_finite_points():
    # the blocks a new level is looked for in: gaps left out, an all-gap block NaN, and a
    # last block cut short
    from gradaudit.episodes import _block_medians
    rng = np.random.default_rng(4)
    v = rng.normal(0, 1, 107)
    v[[3, 4, 55]] = np.nan
    v[20:40] = np.nan
    v[61] = np.inf
    got = _block_medians(v, 20)
    assert got.size == 6
    for k in range(6):
        b = v[20 * k:20 * k + 20]
        b = b[np.isfinite(b)]
        if b.size:
            assert got[k] == np.median(b)
        else:
            assert np.isnan(got[k])


@pytest.mark.xfail(strict=True, reason="known limit: a spike inside a level shift whose new "
                   "level never held is the shift's; searching the whole shift for spikes split "
                   "heavy-tailed noise into spurious spikes (a review: 26-38 of 200 runs)")
def test_a_bad_batch_on_a_drifting_level_without_a_logged_lr_is_its_own_explosion():
    # a conv net trained with AdamW (benchmarks/detection/blind_probe.py, seed 5: inputs x20
    # and shuffled labels at step 900, loss x2.8 for 40 steps), its lr not logged: the grad
    # norm climbs 10x over its first 150 steps (the warm-up) and drifts down after, so that
    # climb is a level shift whose new level never holds, and the bad batch was inside it: a
    # level_shift warning at step 57, with the blind probe's own truth at +0.82
    from pathlib import Path

    import gradaudit

    path = Path(__file__).parent / "data" / "adamw-cnn-no-lr" / "bad-batch-x20.csv"
    (run,) = gradaudit.read_runs([path])
    a = audit_run(run)
    spike = [e for e in a.episodes if e.onset_step == 900]
    assert spike and spike[0].kind == "spike" and spike[0].severity == "explosion", a.episodes
    before = [e for e in a.episodes if e.onset_step < 900]
    assert all(e.end_step is not None and e.end_step <= 900 for e in before), before
