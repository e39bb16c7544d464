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
    assert opts["p99.9-healthy"].threshold == pytest.approx(np.quantile(healthy_g, 0.999),
                                                            rel=1e-6)
    assert opts["autoclip-p10"].healthy_clipped_fraction > 0.8
    assert opts["fixed-1.0"].episode_peak_cut[0] == pytest.approx(1 - 1.0 / g[1500])
    ok = [o for o in a.clip.options if o.healthy_clipped_fraction <= 0.005]
    assert a.clip.suggested_threshold == min(o.threshold for o in ok)


def test_batch_clip_is_median_of_runs():
    audits = []
    for lvl in (0.2, 0.5, 1.0):
        s, g, loss = healthy(level=lvl, seed=1)
        audits.append(audit_run(run_series(s, g, loss)))
    per_run = [next(o.threshold for o in a.clip.options if o.method == "p99.9-healthy")
               for a in audits]
    b = batch_clip(audits)
    assert b.suggested_threshold == pytest.approx(np.median(per_run))
    assert batch_clip([]) is None
