"""The library API as a notebook uses it (a user review): one path, pathlib paths, typed
settings, tag globs on a run already read, short reprs, top-level names."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

import gradaudit
from gradaudit.settings import Settings

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "sample_logs"
MEGATRON = SAMPLE / "megatron"


def test_one_path_is_one_path_not_its_characters(monkeypatch):
    # list("sample_logs/megatron") held "/": the scan walked the whole filesystem
    want = [r.run for r in gradaudit.scan([str(MEGATRON)]).runs]
    assert want == ["charlm-lr-spike.log"]
    monkeypatch.chdir(SAMPLE)
    assert [r.run for r in gradaudit.scan("megatron").runs] == want  # was "no such file: m, e"
    assert [r.run for r in gradaudit.scan(MEGATRON).runs] == want
    assert [r.name for r in gradaudit.read_runs(MEGATRON)] == want
    assert [r.name for r in gradaudit.inspect(str(MEGATRON)).runs] == want
    with pytest.raises(gradaudit.UsageError, match="str or os.PathLike"):
        gradaudit.scan([b"sample_logs"])


def test_a_pathlib_baseline_writes_json(tmp_path):
    base = tmp_path / "base.json"
    gradaudit.scan(MEGATRON, fail_on="never").write(str(base))
    r = gradaudit.scan(MEGATRON, baseline=base)  # a Path, kept as given, broke to_json
    assert json.loads(r.to_json())["settings"]["baseline"] == str(base)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("impact_horizon", "100", "must be a number"),
    ("impact_horizon", 100.5, "whole number"),
    ("spike_ratio", True, "must be a number"),
    ("fail_on", 1, "must be a string"),
    ("grad_tag", 3, "must be a string"),
    ("spike_ratio", 0.5, "must be above 1"),  # every step "rose 0.5x": all one episode
    ("lr_ratio", 1, "must be above 1"),
    ("clip_max_cost", 1.5, "must be below 1"),
    ("baseline_spike_rate_ratio", 0.5, "must be at least 1"),
])
def test_a_setting_of_the_wrong_type_is_a_value_error(key, value, message):
    # "100" used to be accepted and then failed every run ("analysis failed: TypeError")
    with pytest.raises(ValueError, match=message):
        gradaudit.scan(MEGATRON, **{key: value})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("workers", "x", "must be a number"),
    ("workers", 0, "at least 1"),
    ("grad_tag", 5, "must be a string"),
    ("timeout", -1, "finite positive"),
])
@pytest.mark.parametrize("reader", [gradaudit.inspect, gradaudit.read_runs])
def test_inspect_and_read_runs_check_their_keywords_as_settings(reader, key, value, message):
    # workers="x" failed deep inside with a TypeError, workers=0 and grad_tag=5 were accepted
    with pytest.raises(ValueError, match=message):
        reader(MEGATRON, **{key: value})


def test_the_baseline_gates_factors_may_be_1():
    # a review: "gate on the spike-rate delta alone" (ratio 1) is a meaningful setting
    s = Settings(baseline_spike_rate_ratio=1, baseline_grad_norm_ratio=1.0)
    assert s.baseline_spike_rate_ratio == s.baseline_grad_norm_ratio == 1.0


def test_whole_floats_and_ints_are_taken_as_their_fields_type():
    s = Settings(impact_horizon=100.0, spike_ratio=4)
    assert s.impact_horizon == 100 and isinstance(s.impact_horizon, int)
    assert isinstance(s.spike_ratio, float)
    n = Settings(impact_horizon=np.int64(150), spike_ratio=np.float32(2.5))  # numpy scalars
    assert n.impact_horizon == 150 and type(n.impact_horizon) is int
    assert n.spike_ratio == 2.5 and type(n.spike_ratio) is float


def test_audit_run_chooses_the_tags_its_globs_name():
    run = gradaudit.read_runs(SAMPLE / "tensorboard" / "charlm-clean")[0]
    assert (run.grad_norm_tag, run.loss_tag) == ("grad-norm", "lm loss")
    a = gradaudit.audit_run(run, grad_tag="grad-norm vs*", loss_tag="lm loss validation")
    assert (a.grad_norm_tag, a.loss_tag) == ("grad-norm vs samples", "lm loss validation")
    assert run.grad_norm_tag == "grad-norm"  # the series read is left as it was
    b = gradaudit.audit_run(run, grad_tag="no such tag*")
    assert b.grad_norm_tag is None and any("no such tag" in n for n in b.notes)
    # a glob for one tag leaves the others as read (a loss tag the heuristics would not pick)
    odd = dataclasses.replace(run, loss_tag="lm loss validation")
    c = gradaudit.audit_run(odd, grad_tag="grad-norm")
    assert (c.grad_norm_tag, c.loss_tag, c.lr_tag) == ("grad-norm", "lm loss validation",
                                                      run.lr_tag)
    # one series is never both: a glob given here that takes the series the run keeps for the
    # other role yields, and says so
    d = gradaudit.audit_run(run, loss_tag="grad-norm")
    assert (d.grad_norm_tag, d.loss_tag) == ("grad-norm", None)
    assert any(n.startswith("--loss-tag 'grad-norm' matches only") for n in d.notes)
    kept = dataclasses.replace(run, grad_norm_tag="lm loss validation")  # read with a glob
    e = gradaudit.audit_run(kept, loss_tag="lm loss validation")
    assert (e.grad_norm_tag, e.loss_tag) == ("lm loss validation", None)
    assert any(n.startswith("--loss-tag 'lm loss validation' chose 'lm loss validation', "
                            "which this run reads as the grad norm") for n in e.notes)


def test_reprs_are_short_and_names_are_exported():
    r = gradaudit.scan(MEGATRON)
    assert repr(r) == ("<AuditResult: 1 run(s), 1 explosion(s), 0 warning(s), 0 error(s), "
                       "0 regression(s); exit_code 1>")
    assert repr(r.runs[0]).startswith("<RunAudit 'charlm-lr-spike.log': explosion, 1 episode(s)")
    for name in ("AuditResult", "RunAudit", "RunSeries", "Settings", "UsageError", "Episode"):
        assert name in gradaudit.__all__ and hasattr(gradaudit, name)


def test_episodes_frame_has_a_row_per_episode_with_its_impact():
    r = gradaudit.scan(SAMPLE)
    f = r.episodes_frame()
    eps = [(a.run, e) for a in r.runs for e in a.episodes]
    assert f.height == len(eps) == 6
    for row, (run, e) in zip(f.iter_rows(named=True), eps, strict=True):
        assert (row["run"], row["onset_step"], row["kind"], row["severity"]) == \
            (run, e.onset_step, e.kind, e.severity)
        assert row["excess_loss"] == e.loss_impact.excess_loss
        assert row["diverged"] == e.loss_impact.diverged
    empty = gradaudit.scan(SAMPLE / "tensorboard" / "mlp-clean").episodes_frame()
    assert empty.height == 0 and empty.columns == f.columns


def test_one_training_logged_by_two_loggers_is_noted_as_such(tmp_path):
    # Lightning with a TensorBoardLogger and a CSVLogger writes the same series to two version
    # folders: two runs of the scan, each told the other holds the same series
    from tensorboardX import SummaryWriter

    rng = np.random.default_rng(0)
    g = (0.7 * np.exp(rng.normal(0, 0.1, 300))).astype(np.float32)
    loss = (2.5 + 3.0 * (np.arange(300) + 20.0) ** -0.4).astype(np.float32)
    logs = tmp_path / "lightning_logs"
    w = SummaryWriter(str(logs / "version_0"))
    for step in range(300):
        w.add_scalar("grad_2.0_norm_total", float(g[step]), step)
        w.add_scalar("train_loss", float(loss[step]), step)
    w.close()
    (logs / "version_1").mkdir()
    # the CSV logger writes each float32 value as its Python float
    rows = [f"{float(g[s])!r},{s},{float(loss[s])!r}" for s in range(300)]
    (logs / "version_1" / "metrics.csv").write_text(
        "grad_2.0_norm_total,step,train_loss\n" + "\n".join(rows) + "\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text(  # another training: no such note
        "grad_2.0_norm_total,step,train_loss\n" + "\n".join(rows[:-1]) + "\n")
    result = gradaudit.scan([tmp_path])
    notes = {r.run: [n for n in r.notes if "one training logged twice" in n] for r in result.runs}
    assert len(notes) == 3
    # the same series but its last point: a copy cut short, not the same series
    assert [n[:54] for n in notes["other/metrics.csv"]] == [
        "the same grad-norm and loss series within 0.1% as 'lig"]
    assert notes["lightning_logs/version_0"][1:] == [
        "the same grad-norm and loss series (steps and values) as "
        "'lightning_logs/version_1/metrics.csv': one training logged twice (two loggers, or a "
        "copy) or an exact re-run; each is counted in this scan"]
    assert "as 'other/metrics.csv' (at the steps" in notes["lightning_logs/version_0"][0]
    assert len(notes["lightning_logs/version_1/metrics.csv"]) == 2  # and "other"'s
    assert "series_digest" not in json.dumps(result.to_dict())
    # the Markdown report (a CI summary) shows no notes of runs without findings: it counts
    from gradaudit.report.markdown import render

    assert "**3** of them have the same grad-norm and loss series" in render(result)


def test_a_copy_rounded_is_one_training_and_a_twin_that_parts_later_is_not(tmp_path):
    # one training written at full precision and again rounded to 4 digits (a Trainer's
    # stdout log), cut short; and a twin with the same seed whose lr was raised at step 250:
    # the same first 100 points, another training after them
    rng = np.random.default_rng(1)
    g = 0.7 * np.exp(rng.normal(0, 0.1, 400))
    loss = 2.5 + 3.0 * (np.arange(400) + 20.0) ** -0.4

    def write(name: str, g: np.ndarray, loss: np.ndarray, fmt: str = "{!r}") -> None:
        rows = [f"{s},{fmt.format(float(g[s]))},{fmt.format(float(loss[s]))}"
                for s in range(g.size)]
        (tmp_path / name).write_text("step,grad_norm,loss\n" + "\n".join(rows) + "\n")
    write("full.csv", g, loss)
    write("rounded.csv", g[:300], loss[:300], "{:.4g}")
    twin_g, twin_loss = g.copy(), loss.copy()
    twin_g[250:] *= 1.5
    twin_loss[250:] += 0.05
    write("twin.csv", twin_g, twin_loss)
    result = gradaudit.scan([tmp_path])
    notes = {r.run: [n for n in r.notes if "logged twice" in n] for r in result.runs}
    assert notes["full.csv"] == [
        "the same grad-norm and loss series within 0.1% as 'rounded.csv' (at the steps both "
        "logged): one training logged twice by writers that round it differently (e.g. a "
        "Trainer's stdout log and its trainer_state.json), or an exact re-run; each is counted "
        "in this scan"]
    assert len(notes["rounded.csv"]) == 1 and notes["twin.csv"] == []


def test_runs_that_carry_too_little_to_tell_apart_are_no_copies(tmp_path):
    # a sweep whose runs all diverged at once, or logged one point, are different trainings
    for name in ("lr0.1", "lr0.3"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(
            "step,train_loss\n" + "".join(f"{s},nan\n" for s in range(50)))
        (tmp_path / name / "one.csv").write_text("step,train_loss\n0,2.3026\n")
    result = gradaudit.scan([tmp_path])
    assert len(result.runs) == 4
    assert not any("one training logged twice" in n for r in result.runs for n in r.notes)


def test_writing_a_report_onto_a_file_the_scan_read_is_a_usage_error(tmp_path):
    # the CLI refused --out onto a log only where the library would: result.write replaced it
    import os

    log = tmp_path / "runs" / "m.csv"
    log.parent.mkdir()
    log.write_text("step,grad_norm,loss\n" + "".join(f"{s},1.0,2.0\n" for s in range(50)))
    before = log.read_bytes()
    result = gradaudit.scan(tmp_path / "runs", fail_on="never")
    (tmp_path / "alias").symlink_to(log.parent)
    for path in (log, tmp_path / "runs" / "." / "m.csv", tmp_path / "alias" / "m.csv"):
        with pytest.raises(gradaudit.UsageError, match="this scan reads"):
            result.write(str(path), "md")
    assert log.read_bytes() == before
    # read only through a link in the folder, the file it points to is the log's only name
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "z.csv"
    real.write_bytes(before)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "z_link.csv").symlink_to(real)
    with pytest.raises(gradaudit.UsageError, match="z_link.csv', a log this scan reads"):
        gradaudit.scan(tmp_path / "linked", fail_on="never").write(str(real), "md")
    assert real.read_bytes() == before
    (tmp_path / "link.csv").symlink_to(log)  # a link elsewhere: replaced, the log kept
    result.write(str(tmp_path / "link.csv"), "md")
    assert log.read_bytes() == before and not (tmp_path / "link.csv").is_symlink()
    assert not [f for f in os.listdir(log.parent) if f.startswith(".gradaudit-")]
    result.write(str(tmp_path / "runs" / "r.md"))  # beside it: written
    assert (tmp_path / "runs" / "r.md").read_text().startswith("## ")
