"""A run that blew up in its first steps, before any healthy level, and never came back
(``head-blowup``): series with a known blow-up step, and the near misses it must leave alone."""

import numpy as np
import polars as pl
import pytest

from gradaudit.audit import audit_run
from gradaudit.detect import DETECTORS
from tests._synth import run_series

N = 1000


def _run(at, *, recover=False, grad=True, grad_rises=True, end_level=30.0, lr=None, seed=0):
    """A falling loss (start 4.9) whose grad norm (0.5) and loss blow up over 4 steps from
    ``at`` (grad 9 -> 313, loss 9.6 -> 300) and then stay broken (loss ``end_level``, grad
    norm 3) unless ``recover``."""
    rng = np.random.default_rng(seed)
    s = np.arange(N)
    g = 0.5 * np.exp(0.2 * rng.standard_normal(N))
    loss = 1.5 + 3.4 * ((s + 10.0) / 10.0) ** -0.3 + 0.05 * rng.standard_normal(N)
    if grad_rises:
        g[at:at + 4] = [9.0, 48.0, 175.0, 313.0]
    loss[at:at + 4] = [9.6, 50.0, 300.0, 91.0]
    if not recover:
        if grad_rises:
            g[at + 4:] = 3.0 * np.exp(0.3 * rng.standard_normal(N - at - 4))
        loss[at + 4:] = end_level * np.exp(0.15 * rng.standard_normal(N - at - 4))
    return run_series(s, g if grad else None, loss, lr)


def test_blow_up_at_the_start_that_never_comes_back_is_an_explosion():
    a = audit_run(_run(2))
    assert a.status == "explosion"
    e = a.episodes[0]
    assert e.detected_by == ["head-blowup"]
    assert e.onset_step == 2 and e.peak_step == 5 and e.end_step is None
    assert e.severity == "explosion" and e.kind == "level_shift"
    assert e.peak_ratio == pytest.approx(313.0 / e.baseline_grad_norm)
    li = e.loss_impact
    assert li.diverged and li.recovery_step is None
    assert li.excess_loss > 20 and li.loss_jump > 290
    assert "never came back" in e.reason
    # a threshold from the broken model's norms would be no clip: none, and what would help
    assert a.clip.suggested_threshold is None
    assert "restart it with a lower learning rate or a warm-up" in a.clip.advice
    assert DETECTORS["head-blowup"] is not None


def test_blow_up_that_slowly_trains_back_down_but_never_near_its_start_is_found():
    a = audit_run(_run(2, end_level=8.0))  # 1.6x its start for the rest of the run
    assert a.episodes[0].detected_by == ["head-blowup"] and a.status == "explosion"


def test_blow_up_during_the_lr_warmup_is_found_too():
    lr = np.minimum(1.0, (np.arange(N) + 1) / 200.0) * 1e-3  # warm-up over 200 steps
    a = audit_run(_run(150, lr=lr))
    assert [(e.onset_step, e.detected_by) for e in a.episodes[:1]] == [(150, ["head-blowup"])]


def test_loss_only_run_blowing_up_at_the_start_is_a_loss_explosion():
    a = audit_run(_run(3, grad=False))
    e = a.episodes[0]
    assert (e.onset_step, e.kind, e.severity, e.detected_by) == \
        (3, "loss_spike", "explosion", ["head-blowup"])
    assert e.peak_grad_norm is None and e.loss_impact.diverged


def test_blow_up_that_came_back_at_once_is_a_warning():
    a = audit_run(_run(2, recover=True))
    e = a.episodes[0]
    assert (e.detected_by, e.severity, e.onset_step) == (["head-blowup"], "warning", 2)
    assert e.end_step == e.loss_impact.recovery_step and 5 <= e.end_step <= 10
    assert not e.loss_impact.diverged and "came back" in e.reason
    assert a.clip.suggested_threshold is not None  # from the norms after it


def test_blow_up_that_took_hundreds_of_steps_to_come_back_is_an_explosion():
    base = _run(2, recover=True)
    loss = base.frame.filter(pl.col("tag") == "loss").sort("step")["value"].to_numpy().copy()
    loss[6:400] = 8.0 * 4.9 * np.exp(0.1 * np.random.default_rng(1).standard_normal(394))
    g = base.frame.filter(pl.col("tag") == "grad_norm").sort("step")["value"].to_numpy()
    a = audit_run(run_series(np.arange(N), g, loss))
    e = a.episodes[0]
    assert (e.detected_by, e.severity) == (["head-blowup"], "explosion")
    assert 400 <= e.loss_impact.recovery_step <= 410 and not e.loss_impact.diverged


@pytest.mark.parametrize("at", [10, 15, 24])
def test_a_head_blowup_takes_the_place_of_what_other_detectors_read_there(at):
    # judged against the broken model's level, or read as a spike that ended (a review: a real
    # SGD RNN at lr 12 read as a spike that recovered, with a clip of 5.14 for a healthy 0.5)
    a = audit_run(_run(at))
    head = [e for e in a.episodes if e.onset_step <= 25]
    assert len(head) == 1 and "head-blowup" in head[0].detected_by
    assert head[0].end_step is None and head[0].loss_impact.diverged
    assert a.clip.suggested_threshold is None
    assert [e.onset_step for e in a.episodes] == sorted(e.onset_step for e in a.episodes)


def _rise(factor_loss, factor_grad, grad=True, seed=4):
    """A run whose loss rises ``factor_loss``x (and grad norm ``factor_grad``x) over steps 5-12
    and stays there."""
    rng = np.random.default_rng(seed)
    s = np.arange(N)
    loss = 1.0 + 0.03 * rng.standard_normal(N)
    g = 0.5 * np.exp(0.2 * rng.standard_normal(N))
    ramp = np.clip((s - 5) / 7.0, 0, 1)
    loss *= 1 + (factor_loss - 1) * ramp
    g *= 1 + (factor_grad - 1) * ramp
    return audit_run(run_series(s, g if grad else None, loss))


@pytest.mark.parametrize("loss_x,grad_x,grad", [
    (3.5, 3.0, True),  # a GAN generator's loss growing by design: a rise, not a blow-up
    (11.0, 3.7, True),  # ten auxiliary heads switched on: the grad norm took little part
    (6.6, 1.0, False),  # a GAN generator's loss logged alone: 10x needed without a grad norm
])
def test_a_rise_by_design_is_no_head_blowup(loss_x, grad_x, grad):
    a = _rise(loss_x, grad_x, grad)
    assert not any("head-blowup" in e.detected_by for e in a.episodes)


def test_a_loss_that_may_be_negative_has_no_start_to_compare_with():
    rng = np.random.default_rng(6)
    s = np.arange(N)
    loss = 0.3 + 0.05 * rng.standard_normal(N)  # a WGAN generator's loss, sign-flipped:
    loss[5:] += 20.0  # positive at first, through zero at step 11 and back
    loss[11:13] = [-0.4, -0.1]
    g = 0.5 * np.exp(0.2 * rng.standard_normal(N))
    g[5:9] = [20.0, 80.0, 40.0, 20.0]
    a = audit_run(run_series(s, g, loss))
    assert not any("head-blowup" in e.detected_by for e in a.episodes)


@pytest.mark.parametrize("case", [
    dict(grad_rises=False),  # a loss rise the grad norm took no part in: no gradient explosion
])
def test_what_head_blowup_leaves_alone(case):
    a = audit_run(_run(2, **case))
    assert not any("head-blowup" in e.detected_by for e in a.episodes)


def test_healthy_run_with_a_bump_in_its_first_steps_is_left_alone():
    a = audit_run(_healthy())
    assert a.status == "ok" and not a.episodes


def _healthy():
    rng = np.random.default_rng(3)
    s = np.arange(N)
    loss = 1.5 + 3.4 * ((s + 10.0) / 10.0) ** -0.3 + 0.05 * rng.standard_normal(N)
    loss[:5] *= [1.0, 1.3, 1.6, 1.3, 1.1]  # a first few steps' bump, as Adam's can be
    return run_series(s, 0.5 * np.exp(0.2 * rng.standard_normal(N)), loss)


def test_a_blow_up_after_the_head_is_the_other_detectors():
    a = audit_run(_run(500))
    e = a.episodes[0]
    assert e.onset_step == 500 and "head-blowup" not in e.detected_by
    assert e.severity == "explosion"


def test_a_loss_only_run_with_an_artefact_first_value_is_no_blow_up():
    # a review: a healthy Adam run whose first logged loss was 1/50 of the loss (a mis-averaged
    # first logging interval), logged without its grad norm, read as a 14x blow-up at step 1
    rng = np.random.default_rng(9)
    s = np.arange(N)
    loss = 0.65 + 1.6 * np.exp(-s / 150.0) + 0.02 * rng.standard_normal(N)
    loss[0] /= 50.0
    a = audit_run(run_series(s, None, loss))
    assert not any("head-blowup" in e.detected_by for e in a.episodes)


def test_an_explosion_that_never_came_back_stays_diverged_past_a_later_warning():
    # a review: a blow-up to 60x at step 50 (after the head: the other detectors' explosion)
    # that stayed up read diverged: false, because a loss spike on its new level later on
    # ended the window its recovery was looked for in
    rng = np.random.default_rng(12)
    run = _run(50, seed=12)
    loss = run.frame.filter(pl.col("tag") == "loss").sort("step")["value"].to_numpy().copy()
    g = run.frame.filter(pl.col("tag") == "grad_norm").sort("step")["value"].to_numpy()
    loss[400:410] *= 2.0 + 0.1 * rng.random(10)  # the loss alone jumps on the broken level
    a = audit_run(run_series(np.arange(N), g, loss))
    first, *later = a.episodes
    assert first.onset_step == 50 and first.severity == "explosion"
    assert later and all(e.severity == "warning" for e in later), [e.to_dict() for e in later]
    assert first.loss_impact.recovery_step is None and first.loss_impact.diverged
    assert "never came back (diverged)" in first.reason


def test_the_one_line_summary_measures_a_head_blowup_against_the_first_values():
    from gradaudit.detect.head_blowup import ID
    from gradaudit.report import HEAD_BLOWUP, run_headline

    assert HEAD_BLOWUP == ID
    line = run_headline(audit_run(_run(2)))
    assert "x its first values)" in line and "x healthy" not in line
