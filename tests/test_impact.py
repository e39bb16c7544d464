import numpy as np
import pytest

from gradaudit.impact import loss_impact


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
