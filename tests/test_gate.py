"""The gate: exit codes per --fail-on, and regressions against a baseline JSON report."""

from __future__ import annotations

import json

import pytest
from reportkit import FIXED_TIME, episode, run

from gradaudit.errors import UsageError
from gradaudit.gate import evaluate_gate, load_baseline
from gradaudit.model import InputError
from gradaudit.report import github, markdown
from gradaudit.report import html as html_report
from gradaudit.result import AuditResult
from gradaudit.settings import Settings


def result_of(*runs, errors=(), **settings) -> AuditResult:
    return AuditResult(runs=list(runs), errors=list(errors), settings=Settings(**settings),
                       generated_at=FIXED_TIME)


def ok(name="a", **kw):
    return run(name, **kw)


def warn(name="a", **kw):
    return run(name, "warning", [episode(100, 4.0, "warning")], **kw)


def boom(name="a", **kw):
    return run(name, "explosion", [episode(100, 40.0)], **kw)


@pytest.mark.parametrize("fail_on,runs,code", [
    ("explosion", [ok()], 0),
    ("explosion", [warn()], 0),
    ("explosion", [boom()], 1),
    ("explosion", [ok("x"), boom("y")], 1),
    ("warning", [ok()], 0),
    ("warning", [warn()], 1),
    ("warning", [boom()], 1),
    ("never", [boom()], 0),
    ("never", [warn()], 0),
    ("regression", [boom()], 0),  # no baseline: nothing can regress (a note says so)
    ("regression", [warn(), ok("b")], 0),
    ("explosion", [ok(), run("broken", "error")], 0),
    ("explosion", [run("broken", "error")], 2),  # nothing could be audited
    ("never", [run("broken", "error"), run("nan", "error")], 2),
])
def test_exit_code_by_fail_on(fail_on, runs, code):
    result = result_of(*runs, fail_on=fail_on)
    evaluate_gate(result)
    assert result.exit_code == code
    assert bool(result.gate_reasons) == (code != 0 or fail_on == "regression")


def test_nothing_readable_is_2():
    result = result_of(errors=[InputError("x.csv", "bad")])
    evaluate_gate(result)
    assert result.exit_code == 2
    assert "no run could be read" in result.gate_reasons[0]


def test_no_runs_found_is_2():
    result = result_of()
    evaluate_gate(result)
    assert result.exit_code == 2


def test_some_unreadable_inputs_do_not_fail_the_gate():
    result = result_of(ok(), errors=[InputError("x.csv", "bad")])
    evaluate_gate(result)
    assert result.exit_code == 0


# --- baselines ----------------------------------------------------------------------------


def baseline_file(tmp_path, *runs, **doc_changes):
    doc = result_of(*runs).to_dict()
    doc.update(doc_changes)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_new_explosion_regresses(tmp_path):
    base = baseline_file(tmp_path, ok("a"), warn("b"), boom("c"))
    result = result_of(boom("a"), boom("b"), boom("c"), baseline=base, fail_on="never")
    evaluate_gate(result)
    metrics = {(r["run"], r["metric"]) for r in result.regressions}
    assert metrics == {("a", "status"), ("b", "status")}  # c exploded before too
    assert result.exit_code == 0  # never: the gate is off, regressions still listed
    result.settings = Settings(baseline=base, fail_on="explosion")
    evaluate_gate(result)
    assert result.exit_code == 1


def test_healthy_grad_norm_regression_tolerance(tmp_path):
    # above 1.5x is a regression; 1.5x exactly is not
    base = baseline_file(tmp_path, ok("a", healthy=1.0), ok("b", healthy=1.0),
                         ok("c", healthy=1.0))
    result = result_of(ok("a", healthy=1.6), ok("b", healthy=1.4), ok("c", healthy=1.5),
                       baseline=base)
    evaluate_gate(result)
    assert [(r["run"], r["metric"]) for r in result.regressions] == [("a", "healthy_grad_norm")]
    assert result.regressions[0]["baseline"] == 1.0 and result.regressions[0]["current"] == 1.6
    assert result.exit_code == 1
    assert any("regression" in r for r in result.gate_reasons)


def test_spike_rate_regression_needs_both_delta_and_ratio(tmp_path):
    base = baseline_file(tmp_path, ok("a", spike_rate=0.0), ok("b", spike_rate=3.0),
                         ok("c", spike_rate=0.5))
    # a: 0 -> 1.5 (+1.5, inf x): regressed. b: 3 -> 4.5 (+1.5 but 1.5x): not.
    # c: 0.5 -> 1.2 (2.4x but +0.7): not.
    result = result_of(ok("a", spike_rate=1.5), ok("b", spike_rate=4.5),
                       ok("c", spike_rate=1.2), baseline=base)
    evaluate_gate(result)
    assert [(r["run"], r["metric"]) for r in result.regressions] == [("a", "spike_rate")]
    assert result.exit_code == 1


def test_better_than_baseline_passes(tmp_path):
    base = baseline_file(tmp_path, boom("a", healthy=2.0, spike_rate=3.0))
    result = result_of(ok("a", healthy=1.0, spike_rate=0.0), baseline=base)
    evaluate_gate(result)
    assert result.regressions == [] and result.exit_code == 0


def test_new_and_missing_runs(tmp_path):
    base = baseline_file(tmp_path, ok("old-1"), ok("kept"))
    result = result_of(ok("kept"), boom("brand-new"), baseline=base, fail_on="warning")
    evaluate_gate(result)
    assert result.regressions == []  # a new run is not a regression
    assert result.exit_code == 1  # ... but its explosion still fails the gate
    assert any("missing now" in r and "old-1" in r for r in result.gate_reasons)
    assert any("not in the baseline (new, not compared): 'brand-new'" in r
               for r in result.gate_reasons)


def test_a_baseline_that_no_run_matches_says_nothing_was_compared(tmp_path):
    # W&B offline-run-<time>-<id> folders change name every run: a nightly run with every
    # gradient x2 passed its baseline with exit 0 and only "1 baseline run(s) missing now"
    base = baseline_file(tmp_path, ok("wandb/offline-run-20261126_010203-abc", healthy=1.0))
    result = result_of(ok("wandb/offline-run-20261127_010203-def", healthy=2.0), baseline=base)
    evaluate_gate(result)
    assert result.exit_code == 0 and result.regressions == []
    said = " ".join(result.gate_reasons)
    assert "no run matched a baseline run by name, so nothing was compared" in said
    assert "offline-run-20261127_010203-def" in said


def test_regressions_named_in_every_format(tmp_path):
    base = baseline_file(tmp_path, ok("a", healthy=1.0))
    result = result_of(ok("a", healthy=3.0), baseline=base)
    evaluate_gate(result)
    message = result.regressions[0]["message"]
    assert "healthy grad-norm level rose 3x" in message
    assert json.loads(result.to_json())["regressions"][0]["metric"] == "healthy_grad_norm"
    assert "**Regressed:** healthy grad-norm level rose 3x" in markdown.render(result)
    assert any("regression%3A a::healthy grad-norm" in ln for ln in github.lines(result))
    import io

    buf = io.StringIO()
    html_report.write(result, buf)
    assert "healthy grad-norm level rose 3x" in buf.getvalue()


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    ("{not json", "not a JSON report"),
    ('{"runs": []}', "no schema_version"),
    ('{"schema_version": 2, "runs": []}', "schema_version 2 is not supported"),
    ('{"schema_version": 1, "runs": {}}', "'runs' must be a list"),
    ('{"schema_version": 1, "runs": [{"status": "ok"}]}', "no run name"),
    # an `inspect --format json` listing, or a status no report writes: the gate would compare
    # nothing and pass (a review)
    ('{"schema_version": 1, "runs": [{"run": "a", "format": "csv", "tags": []}]}',
     "not a scan report"),
    ('{"schema_version": 1, "runs": [{"run": "a", "status": "bogus", "episodes": []}]}',
     "not a scan report"),
    ('{"schema_version": 1, "runs": [{"run": "a", "status": "ok"}]}', "not a scan report"),
    ("[1, 2]", "no schema_version"),
])
def test_bad_baseline_is_a_usage_error(tmp_path, content, match):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=match):
        load_baseline(str(path))
    result = result_of(ok(), baseline=str(path))
    with pytest.raises(UsageError):
        evaluate_gate(result)


def test_baseline_round_trip_through_json_report(tmp_path):
    first = result_of(ok("a", healthy=1.0, spike_rate=0.5), warn("b"))
    evaluate_gate(first)
    path = tmp_path / "prev.json"
    first.write(str(path))
    runs = load_baseline(str(path))
    assert runs["a"]["healthy_grad_norm"] == 1.0 and runs["b"]["status"] == "warning"


def test_a_healthy_level_known_on_one_side_only_is_named_as_not_compared(tmp_path):
    base = baseline_file(tmp_path, ok("smoke", healthy=1.0))
    result = result_of(ok("smoke", healthy=None), baseline=base)
    evaluate_gate(result)
    assert result.exit_code == 0
    assert any("'smoke': healthy grad-norm level not compared (none now" in r
               for r in result.gate_reasons)


def test_a_baseline_number_too_large_for_a_float_is_not_compared(tmp_path):
    # a healthy level of 400 digits passed the baseline's check and crashed the comparison
    # after the whole scan: internal error, no report (found by a fuzzing review)
    path = tmp_path / "base.json"
    path.write_text('{"schema_version": 1, "runs": [{"run": "smoke", "status": "ok", '
                    '"episodes": [], "healthy_grad_norm": 1' + "0" * 400
                    + ', "spike_rate": 1' + "0" * 400 + '}]}')
    result = result_of(ok("smoke", healthy=1.0), baseline=str(path))
    evaluate_gate(result)
    assert result.exit_code == 0
    assert any("'smoke': healthy grad-norm level not compared (none in the baseline" in r
               for r in result.gate_reasons)


def test_a_short_smoke_runs_grad_norm_level_is_compared():
    # a 24-point CI smoke run has a level to compare (review: under the 25 points a detector
    # needs, its x3 grad norm passed the baseline unseen); a run diverged in its first few
    # steps has none (test_episodes)
    import numpy as np
    from _synth import run_series

    from gradaudit.audit import audit_run

    rng = np.random.default_rng(0)
    a = audit_run(run_series(np.arange(24), 0.5 * np.exp(rng.normal(0, 0.1, 24)),
                             2.0 - 0.01 * np.arange(24)))
    assert a.healthy_grad_norm is not None and 0.4 < a.healthy_grad_norm < 0.6


def test_fail_on_regression_gates_an_archive_on_what_got_worse_only(tmp_path):
    # an archive with explosions already: the gate must fail on what got worse since the
    # baseline, not on the old explosions (a user review: --fail-on never passed 8 regressions)
    base = baseline_file(tmp_path, boom("old"), ok("a"), ok("b", healthy=1.0))
    same = result_of(boom("old"), ok("a"), ok("b", healthy=1.0), baseline=base,
                     fail_on="regression")
    evaluate_gate(same)
    assert same.exit_code == 0 and same.regressions == []
    worse = result_of(boom("old"), boom("a"), ok("b", healthy=2.0), baseline=base,
                      fail_on="regression")
    evaluate_gate(worse)
    assert worse.exit_code == 1
    assert {(r["run"], r["metric"]) for r in worse.regressions} == {
        ("a", "status"), ("b", "healthy_grad_norm")}
    assert "regression(s) against the baseline in 2 run(s)" in " ".join(worse.gate_reasons)
    assert not any("run(s) at" in r for r in worse.gate_reasons)  # 'old' is no reason
    annotations = "".join(github.lines(worse))
    assert "::error title=gradaudit regression%3A a::" in annotations
    assert "::warning title=gradaudit%3A old::" in annotations  # not failing the gate
