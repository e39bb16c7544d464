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


def test_batch_clip_is_median_of_runs():
    audits = []
    for lvl in (0.2, 0.5, 1.0):
        s, g, loss = healthy(level=lvl, seed=1)
        audits.append(audit_run(run_series(s, g, loss)))
    per_run = [next(o.threshold for o in a.clip.options if o.method == "p99-healthy")
               for a in audits]
    b = batch_clip(audits)
    assert b.suggested_threshold == pytest.approx(np.median(per_run))
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
