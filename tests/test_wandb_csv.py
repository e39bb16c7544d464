"""W&B UI chart exports (CSV): header sniffing, run/metric splitting, merging, bucketed spikes.

The W&B UI writes these files; there is no offline writer, so the tests write them in exactly the
UI's layout from a known simulated series, bucketed the way the UI buckets long runs: the plain
column holds the bucket's last value, ``__MIN``/``__MAX`` the bucket's extremes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import gradaudit
from gradaudit.adapters import wandb_csv

BUCKET = 10
SPIKE_STEP = 1234  # inside bucket 1230..1239, not its last step: only __MAX shows it
SPIKE = 60.0
RUN_A = "bert - base - lr 3e-4"  # " - " inside a run name
RUN_B = "模型-β run ✓"  # unicode
METRICS = ("train/grad_norm", "train/loss", "train/learning_rate")


def _simulate(run: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-step series of one simulated run (run B is shorter)."""
    n = 3000 if run == RUN_A else 2200
    rng = np.random.default_rng(7 if run == RUN_A else 8)
    steps = np.arange(n)
    grad = 1.0 + 0.1 * rng.standard_normal(n) ** 2
    if run == RUN_A:
        grad[SPIKE_STEP] = SPIKE
    loss = 3.0 * np.exp(-steps / 800.0) + 0.02 * rng.standard_normal(n) + 1.0
    lr = 3e-4 * np.minimum(1.0, (steps + 1) / 200.0)
    return {
        "train/grad_norm": (steps, grad),
        "train/loss": (steps, loss),
        "train/learning_rate": (steps, lr),
    }


def _buckets(steps: np.ndarray, values: np.ndarray) -> dict[int, tuple[float, float, float]]:
    """``{row step: (last, min, max)}``; a bucket's row sits at its last step."""
    out = {}
    for lo in range(0, int(steps[-1]) + 1, BUCKET):
        sel = (steps >= lo) & (steps < lo + BUCKET)
        v = values[sel]
        out[int(steps[sel][-1])] = (float(v[-1]), float(v.min()), float(v.max()))
    return out


def _write_export(path: Path, metric: str, runs: list[str], drop: dict[str, set[int]]) -> None:
    """One chart's export in the UI's layout; ``drop`` leaves cells empty (no point there)."""
    buckets = {run: _buckets(*_simulate(run)[metric]) for run in runs}
    all_steps = sorted({s for b in buckets.values() for s in b})
    header = ["Step"]
    for run in runs:
        header += [f"{run} - {metric}", f"{run} - {metric}__MIN", f"{run} - {metric}__MAX"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for step in all_steps:
            row: list[str] = [str(step)]
            for run in runs:
                cell = buckets[run].get(step)
                if cell is None or step in drop.get(run, set()):
                    row += ["", "", ""]
                else:
                    row += [repr(x) for x in cell]
            writer.writerow(row)


def _expected(run: str, metric: str, drop: set[int] = frozenset()) -> dict[str, tuple]:
    b = _buckets(*_simulate(run)[metric])
    steps = np.array([s for s in sorted(b) if s not in drop], np.int64)
    cols = [np.array([b[s][k] for s in steps]) for k in range(3)]
    return {
        metric: (steps, cols[0]),
        f"{metric}__MIN": (steps, cols[1]),
        f"{metric}__MAX": (steps, cols[2]),
    }


DROP_B = {505, 515}  # run B has no point at these steps in the grad-norm chart


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    side = tmp_path / "exports"
    side.mkdir()
    for metric, fname in zip(METRICS, ("grad_norm.csv", "loss.csv", "lr.csv"), strict=True):
        drop = {RUN_B: DROP_B} if metric == "train/grad_norm" else {}
        _write_export(side / fname, metric, [RUN_A, RUN_B], drop)
    single = tmp_path / "single"
    single.mkdir()
    _write_export(single / "grad_norm.csv", "train/grad_norm", [RUN_A, RUN_B], {})
    return tmp_path


def _by_name(runs) -> dict:
    return {r.name: r for r in runs}


def test_split_on_last_separator():
    assert wandb_csv.split_column(f"{RUN_A} - train/loss__MAX") == (RUN_A, "train/loss__MAX")
    assert wandb_csv.split_column("no separator") is None
    assert wandb_csv.is_export_header(["Step", "a - x", "a - x__MIN"])
    assert not wandb_csv.is_export_header(["step", "a - x"])
    assert not wandb_csv.is_export_header(["Step", "loss"])


def test_side_by_side_exports_merge_by_run(exports):
    runs = _by_name(gradaudit.read_runs([exports]))
    a, b = runs[f"exports#{RUN_A}"], runs[f"exports#{RUN_B}"]
    assert a.format == b.format == "wandb-csv"
    assert len(a.files) == 3
    for run, obj in ((RUN_A, a), (RUN_B, b)):
        expected = {}
        for metric in METRICS:
            drop = DROP_B if (run == RUN_B and metric == "train/grad_norm") else set()
            expected.update(_expected(run, metric, drop))
        assert set(obj.tags()) == set(expected)
        for tag, (steps, values) in expected.items():
            got_s, got_v = obj.series(tag)
            np.testing.assert_array_equal(got_s, steps, err_msg=f"{run} {tag}")
            np.testing.assert_array_equal(got_v, values, err_msg=f"{run} {tag}")
        assert obj.grad_norm_tag == "train/grad_norm__MAX"
        assert obj.loss_tag == "train/loss"
        assert obj.lr_tag == "train/learning_rate"
        assert obj.problems == []
    assert b.series("train/grad_norm")[0][-1] == 2199  # the shorter run ends with its own data


def test_single_export_is_file_hash_run(exports):
    runs = _by_name(gradaudit.read_runs([exports / "single"]))
    assert set(runs) == {f"grad_norm.csv#{RUN_A}", f"grad_norm.csv#{RUN_B}"}
    runs = _by_name(gradaudit.read_runs([exports]))
    assert f"single/grad_norm.csv#{RUN_A}" in runs


def test_spike_lives_in_max_column(exports):
    runs = _by_name(gradaudit.read_runs([exports / "single"]))
    run = runs[f"grad_norm.csv#{RUN_A}"]
    bucket_step = (SPIKE_STEP // BUCKET) * BUCKET + BUCKET - 1
    steps, values = run.series(run.grad_norm_tag)
    assert run.grad_norm_tag == "train/grad_norm__MAX"
    assert steps[np.argmax(values)] == bucket_step and values.max() == SPIKE
    _, plain = run.series("train/grad_norm")
    assert plain.max() < 2.0  # the bucket's last value hides the spike


def test_audit_finds_spike_bucket(exports):
    run = _by_name(gradaudit.read_runs([exports]))[f"exports#{RUN_A}"]
    audit = gradaudit.audit_run(run)
    bucket_step = (SPIKE_STEP // BUCKET) * BUCKET + BUCKET - 1
    assert any(ep.peak_step == bucket_step for ep in audit.episodes), audit.episodes


def test_plain_csv_is_not_claimed(tmp_path):
    plain = tmp_path / "metrics.csv"
    plain.write_text("step,loss,grad_norm\n1,2.0,0.5\n")
    also = tmp_path / "odd.csv"
    also.write_text("Step,loss\n1,2.0\n")
    assert wandb_csv.claim(tmp_path, [plain, also]) == []


def test_non_numeric_step_and_ragged_rows(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "steps.csv").write_text(
        "Step,r1 - loss,r1 - loss__MIN,r1 - loss__MAX\n"
        "0,1.0,0.9,1.1\n"
        "ten,2.0,1.9,2.1\n"
        "20,3.0,2.9,3.1\n"
        "30.5,4.0,3.9,4.1\n"
    )
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    (ragged / "ragged.csv").write_text(
        "Step,r2 - train/grad_norm,r2 - train/grad_norm__MAX\n"
        "0,1.0,1.5\n"
        "10,2.0,2.5,999,999\n"
        "20,3.0\n"
        "30,NaN,inf\n"
    )
    result = gradaudit.inspect([tmp_path])
    runs = _by_name(result.runs)
    r1 = runs["bad/steps.csv#r1"]
    np.testing.assert_array_equal(r1.series("loss")[0], [0, 20])
    np.testing.assert_array_equal(r1.series("loss")[1], [1.0, 3.0])
    (problem,) = r1.problems
    assert "2 row(s) skipped" in problem.message and "'ten'" in problem.message
    r2 = runs["ragged/ragged.csv#r2"]
    (problem,) = r2.problems
    assert "more fields than the header" in problem.message
    steps, values = r2.series("train/grad_norm")
    np.testing.assert_array_equal(steps, [0, 10, 20, 30])
    np.testing.assert_array_equal(values[:3], [1.0, 2.0, 3.0])
    assert math.isnan(values[3])
    steps, values = r2.series("train/grad_norm__MAX")
    np.testing.assert_array_equal(steps, [0, 10, 30])  # the short row has no __MAX cell
    np.testing.assert_array_equal(values, [1.5, 2.5, math.inf])
    assert result.errors == []


def test_export_with_no_usable_rows_is_an_error(tmp_path):
    (tmp_path / "words.csv").write_text("Step,r - loss\nabc,1.0\ndef,2.0\n")
    result = gradaudit.inspect([tmp_path])
    assert result.runs == []
    (error,) = result.errors
    assert "not a whole number" in error.message


@pytest.mark.parametrize("bad", ["NaN", "inf", "1e30", "9300000000000000000", "1.5"])
def test_a_step_cell_that_is_no_step_loses_its_row_not_the_export(tmp_path, bad):
    # NaN, inf or a step past int64 failed the whole export, every run in it, with a polars
    # cast error (found by a fuzzing review); like "1.5", the row is skipped and said
    with (tmp_path / "gn.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Step", "a - train/grad_norm", "a - train/grad_norm__MAX",
                      "b - train/grad_norm", "b - train/grad_norm__MAX"])
        out.writerows([bad if s == 50 else s, 1.0, 1.1, 2.0, 2.2] for s in range(100))
    result = gradaudit.inspect([tmp_path])
    assert result.errors == [] and len(result.runs) == 2
    for run in result.runs:
        assert run.series("train/grad_norm")[0].tolist() == [s for s in range(100) if s != 50]
        assert any(f"1 row(s) skipped: column 'Step' is not a whole number below 2**62 "
                   f"(e.g. {bad!r})" in p.message for p in run.problems)


def test_two_runs_of_the_same_name_are_two_runs(tmp_path):
    # W&B display names need not be unique: polars renamed the second run's columns
    # "<name>_duplicated_0", and both became one run with made-up tags; the second run's
    # spike was never audited (found by a fuzzing review)
    with (tmp_path / "gn.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Step", "same - train/grad_norm", "same - train/grad_norm__MAX",
                      "same - train/grad_norm", "same - train/grad_norm__MAX"])
        out.writerows([s, 1.0, 1.0, 90.0 if s == 60 else 2.0, 90.0 if s == 60 else 2.0]
                      for s in range(100))
    result = gradaudit.inspect([tmp_path])
    runs = {r.name: r for r in result.runs}
    assert sorted(runs) == ["gn.csv#same", "gn.csv#same (2)"]
    assert runs["gn.csv#same (2)"].series("train/grad_norm__MAX")[1][60] == 90.0
    assert runs["gn.csv#same"].tags() == ["train/grad_norm", "train/grad_norm__MAX"]
    assert any("read as 'same (2)'" in p.message for p in runs["gn.csv#same"].problems)


def test_a_header_longer_than_256_kib_is_still_an_export(tmp_path):
    # a sweep's chart of many runs: the header was sniffed from its first 256 KiB only, and a
    # cut inside a column name made the file one generic CSV run of hundreds of tags (found by
    # a fuzzing review); each run's columns are also read in one pass now, not one select each
    runs = [f"sweep-{i:03d}-" + "x" * 450 for i in range(200)]
    header = ["Step"] + [f"{r} - train/grad_norm{s}" for r in runs for s in ("", "__MIN", "__MAX")]
    assert len(",".join(header)) > 256 * 1024
    with (tmp_path / "export.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows([s] + [1.0 + s % 3] * (len(header) - 1) for s in range(30))
    result = gradaudit.inspect([tmp_path])
    assert result.errors == [] and len(result.runs) == 200
    assert all(r.format == "wandb-csv" and r.tags() == ["train/grad_norm", "train/grad_norm__MAX",
                                                        "train/grad_norm__MIN"]
               for r in result.runs)


def test_a_renamed_duplicate_never_takes_a_real_runs_name(tmp_path):
    # a review: with a run really named "foo (2)", the second "foo" was merged into it (its
    # points written over the real run's); and a real "foo (2)" beside "foo" alone drew a note
    # about duplicates that were not there
    with (tmp_path / "gn.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Step", "foo - g", "foo (2) - g", "foo - g"])
        out.writerows([s, 1.0, 2.0, 90.0 if s == 30 else 3.0] for s in range(60))
    runs = {r.name: r for r in gradaudit.inspect([tmp_path]).runs}
    assert sorted(runs) == ["gn.csv#foo", "gn.csv#foo (2)", "gn.csv#foo (3)"]
    assert set(runs["gn.csv#foo (2)"].series("g")[1]) == {2.0}
    assert runs["gn.csv#foo (3)"].series("g")[1][30] == 90.0
    (tmp_path / "gn.csv").write_text("Step,foo - g,foo (2) - g\n" + "".join(
        f"{s},1.0,2.0\n" for s in range(60)))
    runs = gradaudit.inspect([tmp_path]).runs
    assert len(runs) == 2 and not any(r.problems for r in runs)
