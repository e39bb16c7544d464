import numpy as np
import pytest

from gradaudit.audit import audit_run
from gradaudit.series import RunSeries, empty_frame
from tests._synth import healthy, run_series


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_tiny_series(n):
    s = np.arange(n)
    a = audit_run(run_series(s, np.ones(n), np.ones(n)))
    assert a.status == ("error" if n == 0 else "ok")
    assert a.episodes == []  # a flat series of a few points has nothing to flag
    if n:
        assert a.too_short and any("too few for a healthy level" in note for note in a.notes)
    assert not any(note.startswith("analysis failed") for note in a.notes)


def test_no_series_at_all():
    a = audit_run(RunSeries("x", "csv", [], empty_frame()))
    assert a.status == "error" and a.notes


def test_all_nan():
    # nothing finite at all (no loss logged): nothing to judge
    s = np.arange(100)
    a = audit_run(run_series(s, np.full(100, np.nan)))
    assert a.status == "error" and "NaN" in " ".join(a.notes)


@pytest.mark.parametrize("grad", ["nan", "finite", "none"])
def test_a_loss_that_was_never_finite_diverged_from_the_start(grad):
    # fp16 without loss scaling, a bad init or lr: the loss is NaN from the first logged step;
    # an explosion at that step (a CI gate must fail), whatever the grad norm did
    s = np.arange(10, 110)
    g = {"nan": np.full(100, np.nan), "finite": np.ones(100), "none": None}[grad]
    a = audit_run(run_series(s, g, np.full(100, np.nan)))
    assert a.status == "explosion"
    (e,) = a.episodes
    assert (e.onset_step, e.kind, e.severity, e.loss_impact.diverged) == \
        (10, "divergence", "explosion", True)
    assert "never finite" in e.reason


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_a_grad_norm_never_finite_beside_a_finite_loss_is_a_divergence(value):
    # inf at every one of 300 steps: the run was "ok" with a note, where a grad norm that goes
    # inf from step 200 to the end is a divergence (a review)
    s, _, loss = healthy(n=300)
    a = audit_run(run_series(s, np.full(300, value), loss))
    assert a.status == "explosion" and a.clip is None
    (e,) = a.episodes
    assert (e.onset_step, e.kind, e.severity) == (0, "divergence", "explosion")
    assert "grad norm was never finite" in e.reason and "loss was logged finite" in e.reason
    assert e.loss_impact.diverged is False
    # a few overflow steps are no such run (a loss scaler finds its scale): audited as before
    s, _, loss = healthy(n=12)
    assert audit_run(run_series(s, np.full(12, value), loss)).status == "ok"


def test_a_run_with_neither_series_is_not_said_to_be_audited_from_the_loss():
    r = run_series(np.arange(100), np.ones(100), None)
    r.grad_norm_tag = None  # a table whose one column no reader takes for a grad norm
    a = audit_run(r)
    assert a.status == "error" and not any("from the loss alone" in n for n in a.notes)


def test_negative_grad_norms():
    s, g, loss = healthy(n=200)
    g[50] = -1.0
    a = audit_run(run_series(s, g, loss))
    assert a.status == "error" and "negative" in " ".join(a.notes)


@pytest.mark.parametrize("steps", [
    [2**62, 2**62 + 1, 2**62 + 2],  # a tiny run whose steps span 2**62 overflowed
    [-(2**63), 0, 2**62],
    list(range(2**53 - 100, 2**53 + 100)),
])
def test_steps_beyond_2_53_are_an_error_on_that_run(steps):
    s = np.array(steps, np.int64)
    a = audit_run(run_series(s, np.ones(s.size), np.ones(s.size)))
    assert a.status == "error" and "are they steps?" in " ".join(a.notes), a.notes
    assert not any(note.startswith("analysis failed") for note in a.notes)
    # the last exact steps are still steps
    s = np.arange(2**53 - 1000, 2**53 + 1)
    assert audit_run(run_series(s, np.ones(s.size), np.ones(s.size))).status == "ok"


def test_one_stray_point_at_an_impossible_step_is_left_out_not_the_run():
    # a 200x explosion and one extra point at step 2**60 (a corrupt record): the run was an
    # error, the explosion unreported, and the gate passed (a hostile-input review)
    s, g, loss = healthy()
    g[1500:1505] *= 200
    loss[1500:] += 1.0
    s2 = np.append(s, 2**60)
    a = audit_run(run_series(s2, np.append(g, 1.0), np.append(loss, 1.0)))
    assert a.status == "explosion" and a.episodes[0].onset_step == 1500
    assert any("2 point(s) at steps beyond +-2**53" in n for n in a.notes), a.notes


def test_constant_series():
    s = np.arange(500)
    a = audit_run(run_series(s, np.full(500, 0.7), np.full(500, 2.0)))
    assert a.status == "ok" and not a.episodes and "constant" in " ".join(a.notes)


def test_unsorted_duplicate_steps_hand_built():
    s, g, loss = healthy(n=1000)
    g[600] *= 40
    perm = np.random.default_rng(0).permutation(s.size)
    ss = np.concatenate([s[perm], [600]])
    gg = np.concatenate([g[perm], [g[600]]])
    ll = np.concatenate([loss[perm], [loss[600]]])
    a = audit_run(run_series(ss, gg, ll))
    assert [e.onset_step for e in a.episodes] == [600]


def test_a_run_without_a_grad_norm_says_it_was_audited_from_the_loss_alone():
    s, _, loss = healthy()
    a = audit_run(run_series(s, loss=loss))
    assert a.status == "ok"
    assert any("no grad-norm series" in n and "--grad-tag" in n for n in a.notes)
    assert "no clip threshold can be derived" in a.clip.advice


def _sparse_loss_run(on, every, seed):
    # grad norm at every step with a 30x spike at ``on``; the loss only every ``every`` steps
    rng = np.random.default_rng(seed)
    s = np.arange(2400)
    g = 0.5 * np.exp(rng.normal(0, 0.15, s.size))
    g[on] *= 30
    ls = np.arange(0, s.size, every)
    loss = (2.5 + 3.0 * (ls + 20.0) ** -0.4) * np.exp(rng.normal(0, 0.03, ls.size))
    return run_series(s, g, loss, loss_steps=ls)


@pytest.mark.parametrize("every", [250, 400, 500])
def test_a_spike_with_no_loss_point_in_its_horizon_keeps_its_episode(every):
    # the loss is logged every 250-500 steps: a spike 10-40 steps after a logged point has none
    # in its 200-step horizon (no excess) but later ones in its window (the recovery is judged
    # there): the audit goes through and reports the spike (a severity rule that compared the
    # missing excess with its bar once failed the whole run here)
    for on in (2 * every + 10, 2 * every + 40):
        for seed in range(2):
            a = audit_run(_sparse_loss_run(on, every, seed))
            assert not any("analysis failed" in n for n in a.notes), a.notes
            (e,) = [e for e in a.episodes if abs(e.onset_step - on) <= 1]
            assert e.loss_impact.excess_loss is None


@pytest.mark.parametrize("loss_every", [2, 1])
@pytest.mark.parametrize("case", ["nan-interleaved", "early-spike"])
def test_a_grad_norm_that_never_had_a_level_beside_a_short_loss_is_too_short(case, loss_every):
    # enough grad-norm points to count, but non-finite values or an episode among the first
    # ones, so no healthy level ever formed, and only 14-20 loss points: nothing had a level,
    # and the run says so (a review: it read as judged, status warning with no word of it)
    rng = np.random.default_rng(11)
    if case == "nan-interleaved":
        g = 1 + rng.normal(0, 0.03, 40)
        g[0:28:2] = np.nan
    else:
        g = 1 + rng.normal(0, 0.03, 27)
        g[8], g[9] = 60.0, 20.0
    ls = np.arange(0, g.size, loss_every)
    a = audit_run(run_series(np.arange(g.size), g, 2 + 0.005 * rng.normal(size=ls.size),
                             loss_steps=ls))
    # a loss of 27-40 points every step is judged: not too short, but the note says the grad
    # norm never had a level (a review: nothing said so)
    assert a.too_short == (ls.size <= 25) and not a.clip.options
    assert any("never had a healthy level" in n and
               ("judged as usual" in n) == (ls.size > 25) for n in a.notes), a.notes


def test_a_short_loss_only_run_says_only_non_finite_values_are_judged():
    # the loss has no rule for its first points (the grad norm has one): a 100x loss jump in a
    # 20-point loss-only run is not judged, and the note must not claim jumps are
    loss = np.full(20, 2.0)
    loss[12:] = 200.0
    a = audit_run(run_series(np.arange(20), None, loss))
    assert a.too_short and a.status == "ok"
    assert any("so only a non-finite loss is judged" in n for n in a.notes), a.notes


@pytest.mark.parametrize("with_grad", [False, True])
def test_a_short_loss_logged_as_interval_means_says_its_jumps_are_judged(with_grad):
    # a loss logged as a mean over each 10-step interval (HF Trainer, Megatron) has a rule for
    # its first points: a loss 3x above every earlier one is an episode, and the note says so
    # (a review: it said only a non-finite loss was judged, beside the episode it found)
    from dataclasses import replace

    loss = np.full(20, 2.0) + 0.01 * np.random.default_rng(12).normal(size=20)
    loss[12] = 10.0
    g = np.ones(20) + 0.01 * np.random.default_rng(13).normal(size=20) if with_grad else None
    a = audit_run(replace(run_series(np.arange(0, 200, 10), g, loss),
                          interval_means=frozenset({"loss"})))
    assert a.too_short and [e.kind for e in a.episodes] == ["loss_spike"]
    # (beside a grad norm too: a review found its note saying the loss judged nothing)
    assert any("only a loss 3x above every earlier one, or a non-finite one, is judged" in n
               for n in a.notes), a.notes
