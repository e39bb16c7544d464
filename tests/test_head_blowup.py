"""A run that blew up in its first steps, before any healthy level, and never came back
(``head-blowup``): series with a known blow-up step, and the near misses it must leave alone."""

import numpy as np
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


@pytest.mark.parametrize("case", [
    dict(recover=True),  # the loss came back and trained on: no run-long harm to report here
    dict(grad_rises=False),  # a loss rise the grad norm took no part in: no gradient explosion
    dict(end_level=5.0),  # back at about where it started (4.9): came back, if untrained
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
