"""End to end through ``gradaudit.cmdline.main``: exit codes, formats, baselines, pyproject config.

The logs are written at test time with the real writers (pyarrow for Parquet/CSV tables,
tensorboardX for event files), with a known injected episode: a clean run, a harmless one-step
grad-norm spike that leaves the loss alone (a warning, by the design's severity rule), and an
explosion (grad norm 60x for 8 steps from step 800, with a lasting loss jump).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gradaudit.cmdline import main

N_STEPS = 1500
ONSET = 800


def signals(kind: str, level: float = 1.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Steps, grad norm and loss of a run of the given kind (clean, warning, explosion)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(N_STEPS, dtype=np.int64)
    grad = level * np.exp(rng.normal(0.0, 0.05, N_STEPS))
    loss = 2.0 + 3.0 * np.exp(-steps / 400.0) + rng.normal(0.0, 0.01, N_STEPS)
    if kind == "warning":
        grad[ONSET] = 12.0 * level
    elif kind == "explosion":
        grad[ONSET:ONSET + 8] = 60.0 * level
        loss[ONSET:] += 1.5 * np.exp(-(steps[ONSET:] - ONSET) / 300.0)
    return steps, grad, loss


def write_table(folder: Path, kind: str, fmt: str = "parquet", level: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    steps, grad, loss = signals(kind, level)
    table = pa.table({"step": steps, "train/grad_norm": grad, "train/loss": loss})
    path = folder / f"metrics.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def write_events(folder: Path, kind: str) -> Path:
    from tensorboardX import SummaryWriter

    steps, grad, loss = signals(kind)
    with SummaryWriter(str(folder)) as writer:
        for s, g, lo in zip(steps, grad, loss, strict=True):
            writer.add_scalar("train/grad_norm", float(g), int(s))
            writer.add_scalar("train/loss", float(lo), int(s))
    return folder


def scan(*args: str) -> int:
    return main(["scan", "--quiet", *args])


def runs_of(json_path: Path) -> dict[str, dict]:
    doc = json.loads(json_path.read_text())
    assert doc["schema_version"] == 1
    return {r["run"]: r for r in doc["runs"]}


# --- the exit-code table, end to end --------------------------------------------------------


@pytest.mark.parametrize("kind,fail_on,code", [
    ("clean", None, 0),
    ("warning", None, 0),
    ("warning", "warning", 1),
    ("explosion", None, 1),
    ("explosion", "explosion", 1),
    ("explosion", "warning", 1),
    ("explosion", "never", 0),
    ("clean", "warning", 0),
])
def test_exit_code_table_parquet(tmp_path, kind, fail_on, code):
    write_table(tmp_path / "runs" / kind, kind)
    out = tmp_path / "report.json"
    args = [str(tmp_path / "runs"), "--out", str(out)]
    if fail_on:
        args += ["--fail-on", fail_on]
    assert scan(*args) == code
    (run,) = runs_of(out).values()
    assert run["status"] == ("ok" if kind == "clean" else kind)
    if kind == "explosion":
        onsets = [e["onset_step"] for e in run["episodes"] if e["severity"] == "explosion"]
        assert onsets and abs(onsets[0] - ONSET) <= 2


def test_explosion_in_csv_table_fails_the_gate(tmp_path):
    write_table(tmp_path / "runs" / "a", "explosion", fmt="csv")
    write_table(tmp_path / "runs" / "b", "clean", fmt="csv")
    out = tmp_path / "r.json"
    assert scan(str(tmp_path / "runs"), "--json", str(out), "--out", str(tmp_path / "r.md")) == 1
    statuses = sorted(r["status"] for r in runs_of(out).values())
    assert statuses == ["explosion", "ok"]
    md = (tmp_path / "r.md").read_text()
    assert "explosion" in md and md.startswith("## ")


@pytest.mark.parametrize(("option", "glob", "code"), [
    ("--grad-tag", "train/grad_nrom", 2),  # a typo: nothing it names would be checked
    ("--grad-tag", "train/loss", 2),  # the loss is no grad norm
    ("--loss-tag", "train/lsos", 2),
    ("--grad-tag", "train/grad_*", 1),
    ("--grad-tag", "other/grad_norm", 1),  # matches in one run of the two: a note on the other
])
def test_a_tag_glob_that_chooses_nothing_anywhere_is_a_usage_error(tmp_path, capsys, option,
                                                                    glob, code):
    write_table(tmp_path / "runs" / "a", "explosion")
    steps, grad, loss = signals("explosion")
    other = tmp_path / "runs" / "b"
    other.mkdir()
    pq.write_table(pa.table({"step": steps, "other/grad_norm": grad, "train/loss": loss}),
                   other / "metrics.parquet")
    out = tmp_path / "r.json"
    assert scan(str(tmp_path / "runs"), option, glob, "--out", str(out)) == code
    if code == 2:
        err = capsys.readouterr().err
        assert f"{option} {glob!r} ({option[2:].replace('-', '_')}) chose no" in err
        assert not out.exists()


def test_explosion_in_tensorboard_events(tmp_path, capsys):
    write_events(tmp_path / "runs" / "exp", "explosion")
    write_events(tmp_path / "runs" / "ok", "clean")
    assert scan(str(tmp_path / "runs"), "--format", "github") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("::notice title=gradaudit::gate failed (exit 1)")
    assert lines[1].startswith("::error title=gradaudit%3A exp::explosion")


def test_a_format_the_out_suffix_contradicts_is_written_with_a_warning(tmp_path, capsys):
    write_table(tmp_path / "runs" / "b", "clean", fmt="csv")
    out = tmp_path / "report.html"
    assert scan(str(tmp_path / "runs"), "--out", str(out), "--format", "md") == 0
    assert out.read_text().startswith("## ")
    assert "writing the md report to" in capsys.readouterr().err
    assert scan(str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"), "--format", "md") == 0
    assert "warning" not in capsys.readouterr().err


def test_nothing_to_audit_says_why_on_stderr(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert scan(str(tmp_path / "empty"), "--quiet") == 2
    assert "nothing could be audited: no run found" in capsys.readouterr().err


def test_inspect_lists_the_tags_on_request(tmp_path, capsys):
    write_table(tmp_path / "runs" / "b", "clean", fmt="csv")
    assert main(["inspect", str(tmp_path / "runs")]) == 0
    assert ": tags:" not in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "runs"), "--tags"]) == 0
    out = capsys.readouterr().out
    assert ": tags: " in out and "grad_norm (" in out


def test_missing_path_is_2(tmp_path, capsys):
    assert scan(str(tmp_path / "no-such-folder")) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_special_file_path_says_what_it_is(tmp_path, capsys):
    import os

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert scan(str(tmp_path / "fifo"), str(tmp_path / "dangling"), "/dev/null") == 2
    err = capsys.readouterr().err
    assert "not a regular file or folder" in err and "no such file" not in err


def test_out_naming_a_folder_says_so(tmp_path, capsys):
    assert scan(str(tmp_path), "--out", str(tmp_path), "--format", "json") == 2
    err = capsys.readouterr().err
    assert "it is a folder" in err and ".gradaudit-" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (always full)")
def test_a_json_report_that_cannot_be_written_is_named_in_the_error(tmp_path, capsys):
    # the Markdown report is written, then --json fails (no space): the error named the
    # Markdown report's path (a review)
    runs = tmp_path / "runs"
    write_table(runs, "healthy")
    md = tmp_path / "r.md"
    assert scan(str(runs), "--out", str(md), "--json", "/dev/full") == 2
    err = capsys.readouterr().err
    assert "/dev/full" in err and str(md) not in err


def test_an_inspect_listing_given_as_baseline_is_2(tmp_path, capsys):
    # a listing has runs with names but no status: the gate compared nothing and passed
    runs = tmp_path / "runs"
    write_table(runs, "explosion")
    listing = tmp_path / "listing.json"
    assert main(["inspect", str(runs), "--format", "json"]) == 0
    listing.write_text(capsys.readouterr().out)
    assert scan(str(runs), "--baseline", str(listing), "--fail-on", "regression") == 2
    assert "not a scan report" in capsys.readouterr().err


@pytest.mark.parametrize(("kind", "fail_on", "code"), [
    ("healthy", "explosion", 2), ("explosion", "explosion", 1), ("healthy", "never", 0)])
def test_a_path_named_that_yields_no_run_is_2_unless_the_gate_failed(tmp_path, kind, fail_on,
                                                                     code):
    # DESIGN: exit 2 for an input that could not be read at all - a path given on the command
    # line (it was 0 beside a good run: the gate vouched for a log it never saw). The report is
    # written in full either way
    write_table(tmp_path / "good", kind)
    broken = tmp_path / "events.out.tfevents.1.host"
    broken.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "r.json"
    assert scan(str(tmp_path / "good"), str(broken), "--out", str(out),
                "--fail-on", fail_on) == code
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 1 and len(doc["errors"]) == 1
    assert doc["gate"]["exit_code"] == code
    if code == 2:
        assert any("yielded no run" in r and str(broken) in r for r in doc["gate"]["reasons"])
        # the headline of every format says runs were audited (it said "nothing could be")
        md = tmp_path / "r.md"
        scan(str(tmp_path / "good"), str(broken), "--out", str(md), "--fail-on", fail_on)
        assert "not every path given could be read (exit 2)" in md.read_text()


def test_paths_whose_runs_were_read_under_another_name_are_not_unread(tmp_path):
    # a folder and a link to it, or an empty folder beside a run: nothing failed, the first
    # version of the rule made these 2 (a third review)
    import os

    write_table(tmp_path / "real" / "good", "healthy")
    os.symlink("real", tmp_path / "link")
    (tmp_path / "empty").mkdir()
    for second in ("link", "empty"):
        assert scan(str(tmp_path / "real"), str(tmp_path / second)) == 0


def test_a_stray_unreadable_file_in_a_folder_with_runs_changes_no_exit_code(tmp_path):
    # a stray table beside the runs (hparams.csv: no step column) is listed, not a failure -
    # a regression gate over that folder would otherwise fail forever (a review)
    runs = tmp_path / "runs"
    write_table(runs / "good", "healthy")
    (runs / "hparams.csv").write_text("name,value\nlr,0.001\n")
    out = tmp_path / "r.json"
    assert scan(str(runs), "--out", str(out)) == 0
    assert len(json.loads(out.read_text())["errors"]) == 1
    assert scan(str(runs), "--baseline", str(out), "--fail-on", "regression") == 0


def test_unreadable_input_only_is_2(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "metrics.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (folder / "metrics.csv").write_bytes(b"\x00\x01\x02 not a table")
    out = tmp_path / "r.json"
    assert scan(str(folder), "--out", str(out)) == 2
    doc = json.loads(out.read_text())
    assert doc["runs"] == [] and doc["gate"]["exit_code"] == 2


def test_bad_option_values_are_2(tmp_path, capsys):
    # on a folder with a real run (an empty one is exit 2 by itself), each bad value is the 2
    runs = tmp_path / "runs"
    write_table(runs, "healthy")
    assert scan(str(runs), "--out", str(tmp_path / "ok.json")) == 0
    capsys.readouterr()
    assert scan(str(runs), "--fail-on", "sometimes") == 2
    assert "sometimes" in capsys.readouterr().err
    assert scan(str(runs), "--out", str(tmp_path / "report.txt")) == 2
    assert "cannot tell the report format" in capsys.readouterr().err
    assert scan(str(runs), "--out", str(tmp_path / "missing-dir" / "r.md")) == 2
    assert "missing-dir" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "{]", '{"schema_version": 7, "runs": []}',
                                     '{"schema_version": true, "runs": []}',
                                     '{"schema_version": 1, "runs": [], "x": ' + "9" * 5000 + "}"])
def test_invalid_baseline_is_2(tmp_path, capsys, content):
    runs = tmp_path / "runs"  # a real run: an empty folder is exit 2 by itself
    write_table(runs, "healthy")
    base = tmp_path / "base.json"
    if content is not None:
        base.write_text(content)
    assert scan(str(runs), "--baseline", str(base)) == 2
    assert "baseline" in capsys.readouterr().err


def test_baseline_better_and_worse(tmp_path):
    # The same run name under three roots: "a", healthy at grad-norm level 1 before.
    write_table(tmp_path / "before" / "a", "clean", level=1.0)
    base = tmp_path / "base.json"
    assert scan(str(tmp_path / "before"), "--out", str(base)) == 0
    (name,) = runs_of(base)  # as discovery names it, e.g. "a" or "a/metrics.parquet"
    # Better: the same run, unchanged -> passes.
    assert scan(str(tmp_path / "before"), "--baseline", str(base), "--out",
                str(tmp_path / "same.json")) == 0
    # Worse: the healthy grad-norm level is 2.5x the baseline's (no explosion) -> 1.
    write_table(tmp_path / "after" / "a", "clean", level=2.5)
    out = tmp_path / "after.json"
    assert scan(str(tmp_path / "after"), "--baseline", str(base), "--out", str(out)) == 1
    doc = json.loads(out.read_text())
    assert [(r["run"], r["metric"]) for r in doc["regressions"]] == [(name, "healthy_grad_norm")]
    # Worse: it exploded now, where it was clean -> a new explosion.
    write_table(tmp_path / "boom" / "a", "explosion")
    out2 = tmp_path / "boom.json"
    assert scan(str(tmp_path / "boom"), "--baseline", str(base), "--out", str(out2)) == 1
    assert (name, "status") in [(r["run"], r["metric"])
                               for r in json.loads(out2.read_text())["regressions"]]


# --- settings from pyproject.toml -----------------------------------------------------------


def test_pyproject_settings_and_command_line_wins(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    (project / "sub" / "runs").mkdir(parents=True)
    (project / "base.json").write_text('{"schema_version": 1, "runs": []}')
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.gradaudit]\nfail-on = "never"\nimpact-horizon = 77\n'
        'baseline = "base.json"\n')
    monkeypatch.chdir(project / "sub")  # found from the working folder upwards
    out = tmp_path / "a.json"
    scan("runs", "--out", str(out))
    settings = json.loads(out.read_text())["settings"]
    assert settings["fail_on"] == "never" and settings["impact_horizon"] == 77
    assert settings["baseline"] == str(project / "base.json")  # relative to the pyproject
    scan("runs", "--out", str(out), "--impact-horizon", "5", "--fail-on", "warning")
    settings = json.loads(out.read_text())["settings"]
    assert settings["fail_on"] == "warning" and settings["impact_horizon"] == 5


@pytest.mark.parametrize("table,match", [
    ('colour = "red"', "unknown key 'colour'"),
    ('impact-horizon = "long"', "impact-horizon must be int"),
    ('fail-on = "sometimes"', "fail_on must be one of"),
    ("workers = 0", "workers must be at least 1"),
])
def test_bad_pyproject_settings_are_2(tmp_path, monkeypatch, capsys, table, match):
    (tmp_path / "pyproject.toml").write_text(f"[tool.gradaudit]\n{table}\n")
    monkeypatch.chdir(tmp_path)
    assert scan(".") == 2
    assert match in capsys.readouterr().err


def test_markdown_and_github_on_stdout(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert scan(str(tmp_path / "runs"), "--format", "md") == 2
    assert capsys.readouterr().out.startswith("## ⚠️ gradaudit: nothing could be audited")
    assert scan(str(tmp_path / "runs"), "--format", "github") == 2
    assert capsys.readouterr().out.startswith("::notice title=gradaudit::nothing could be")


def test_python_dash_m_gradaudit_is_the_command(tmp_path):
    import subprocess
    import sys

    write_table(tmp_path / "runs" / "x", "explosion")
    done = subprocess.run([sys.executable, "-m", "gradaudit", "scan", str(tmp_path / "runs"),
                           "--format", "md"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "gate failed" in done.stdout


def test_source_date_epoch_makes_the_json_report_byte_identical(tmp_path, monkeypatch):
    write_table(tmp_path / "runs" / "x", "explosion")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for name in ("a.json", "b.json"):
        scan(str(tmp_path / "runs"), "--out", str(tmp_path / name))
    a = (tmp_path / "a.json").read_bytes()
    assert a == (tmp_path / "b.json").read_bytes()
    assert json.loads(a)["generated_at"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("value", ["abc", "1e3", "-5", "", "  ", "99999999999999999999", "\u00b2",
                                   "1" * 5000])
def test_a_malformed_source_date_epoch_is_a_usage_error(tmp_path, monkeypatch, capsys, value):
    # "abc" was an internal error from inside numpy; "-5" was ignored without a word
    write_table(tmp_path / "runs" / "x", "healthy")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert scan(str(tmp_path / "runs"), "--out", str(tmp_path / "r.json")) == 2
    assert "SOURCE_DATE_EPOCH" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_out_and_json_naming_the_same_file_is_a_usage_error(tmp_path, capsys):
    # the JSON silently overwrote the HTML report, exit 0 (found by a fuzzing review)
    write_table(tmp_path / "runs" / "x", "clean")
    same = str(tmp_path / "r.json")
    assert scan(str(tmp_path / "runs"), "--out", same, "--json", same) == 2
    assert "name the same file" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def _spellings(tmp_path: Path) -> dict[str, str]:
    """A log under runs/ and paths naming its folder entry: as given, ./-spelled, through a
    linked folder."""
    log = write_table(tmp_path / "runs", "explosion", fmt="csv")
    (tmp_path / "alias").symlink_to(tmp_path / "runs")
    return {"as given": str(log), "dot": str(tmp_path / "." / "runs" / "." / log.name),
            "linked folder": str(tmp_path / "alias" / log.name)}


@pytest.mark.parametrize("option", ["--out", "--json"])
@pytest.mark.parametrize("spelling", ["as given", "dot", "linked folder"])
def test_a_report_onto_an_input_log_is_refused_before_the_scan(tmp_path, capsys, monkeypatch,
                                                                option, spelling):
    # `scan runs --out runs/metrics.csv --format md` replaced the log with the report (exit 1,
    # no word); the next scan said "no step column" (a review)
    import gradaudit.api

    target = _spellings(tmp_path)[spelling]
    log = tmp_path / "runs" / "metrics.csv"
    before = log.read_bytes()
    other = tmp_path / "other.md"

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scan ran")

    monkeypatch.setattr(gradaudit.api, "scan", no_scan)
    args = [option, target] + (["--format", "md"] if option == "--out" else
                               ["--out", str(other)])
    assert scan(str(tmp_path / "runs"), *args) == 2
    err = capsys.readouterr().err
    assert f"{option} {target!r} is " in err and "this scan reads" in err
    assert log.read_bytes() == before and not other.exists()


def test_a_report_onto_a_log_only_the_scan_finds_is_refused_and_nothing_written(tmp_path,
                                                                                  capsys):
    # the target lies under no path given (a folder linked into the scanned one): only the
    # scan knows it read that file; neither report is written
    log = write_table(tmp_path / "data", "explosion", fmt="csv")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "linked").symlink_to(tmp_path / "data")
    before = log.read_bytes()
    md = tmp_path / "r.md"
    assert scan(str(tmp_path / "runs"), "--out", str(md), "--json", str(log)) == 2
    err = capsys.readouterr().err
    assert f"--json {str(log)!r} is the log" in err and "this scan reads" in err
    assert log.read_bytes() == before and not md.exists()


@pytest.mark.parametrize("how", ["the file a named link reads", "dot-dot after a link"])
def test_a_report_onto_a_log_by_another_way_is_refused(tmp_path, capsys, how):
    # the scan reads a link to logs/a.csv and the report goes to logs/a.csv, its only name; or
    # the report's path walks a linked folder then "..", which the kernel takes after the link
    # (a text normalisation put it elsewhere): both replaced the log (a review)
    log = write_table(tmp_path / "logs", "explosion", fmt="csv")
    before = log.read_bytes()
    if how == "the file a named link reads":
        (tmp_path / "latest.csv").symlink_to(log)
        args = [str(tmp_path / "latest.csv"), "--out", str(log)]
    else:
        (tmp_path / "logs" / "sub").mkdir()
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "link").symlink_to(tmp_path / "logs" / "sub")
        args = [str(tmp_path / "logs"), "--out", f"{tmp_path}/other/link/../{log.name}"]
    assert scan(*args, "--format", "md") == 2
    assert "this scan reads" in capsys.readouterr().err
    assert log.read_bytes() == before


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_a_report_onto_another_name_of_a_log_replaces_that_name_only(tmp_path, how):
    # writing replaces the folder entry named (a link there, or one hard link's name), never
    # the entry the scan read: no refusal (a review: "the report would replace it" was wrong)
    import os

    log = write_table(tmp_path / "runs", "explosion", fmt="csv")
    before = log.read_bytes()
    other = tmp_path / "other.csv"
    other.symlink_to(log) if how == "symlink" else os.link(log, other)
    assert scan(str(tmp_path / "runs"), "--json", str(other)) == 1
    assert log.read_bytes() == before
    assert not other.is_symlink() and len(runs_of(other)) == 1


def test_a_report_beside_the_logs_in_the_scanned_folder_is_still_written(tmp_path):
    # only a file a reader takes is a log: last run's reports in the folder are rewritten
    runs = tmp_path / "runs"
    write_table(runs, "explosion", fmt="csv")
    for _ in range(2):
        assert scan(str(runs), "--out", str(runs / "r.md"), "--json", str(runs / "r.json")) == 1
    assert (runs / "r.md").read_text().startswith("## ")
    assert len(runs_of(runs / "r.json")) == 1


def _write_long_csv(path: Path, columns: list[str]) -> None:
    """The explosion run as a long CSV table (a row per point) under ``columns``."""
    import csv

    steps, grad, loss = signals("explosion")
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(columns)
        for s, g, lo in zip(steps.tolist(), grad.tolist(), loss.tolist(), strict=True):
            out.writerows([(s, "train/grad_norm", g), (s, "train/loss", lo)])


@pytest.mark.parametrize("columns", [["Step", "Metric", "Value"], ["step", "variable", "value"]])
def test_a_long_table_with_capitalised_or_melted_columns_is_audited(tmp_path, capsys, columns):
    # read as wide, its metrics merged into one series: "no grad-norm series", exit 2 (a review)
    path = tmp_path / "long.csv"
    _write_long_csv(path, columns)
    out = tmp_path / "r.json"
    assert scan(str(path), "--out", str(out)) == 1
    (run,) = runs_of(out).values()
    assert run["grad_norm_tag"] == "train/grad_norm" and run["loss_tag"] == "train/loss"
    onsets = [e["onset_step"] for e in run["episodes"] if e["severity"] == "explosion"]
    assert onsets and abs(onsets[0] - ONSET) <= 2


def test_a_long_table_whose_tag_column_is_unknown_says_why(tmp_path, capsys):
    path = tmp_path / "long.csv"
    _write_long_csv(path, ["step", "series", "value"])
    assert scan(str(path), "--format", "md") == 2
    captured = capsys.readouterr()
    assert "told apart by the text column 'series'" in captured.err
    assert "resume" not in captured.out + captured.err


# --- an interrupt, the worker count, progress on a terminal -----------------------------------


def test_an_interrupted_scan_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from gradaudit import api

    write_table(tmp_path / "runs" / "explosion", "explosion")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (the CLI turns SIGTERM into it) mid-scan

    monkeypatch.setattr(api, "scan", interrupted)
    out = tmp_path / "report.html"
    assert main(["scan", str(tmp_path / "runs"), "--out", str(out)]) == 130
    assert "Aborted." in capsys.readouterr().err
    assert not out.exists()


def test_more_workers_than_cpus_are_fitted_with_a_warning(tmp_path, monkeypatch, capsys):
    from gradaudit import api, cmdline

    write_table(tmp_path / "runs" / "clean", "clean")
    seen = []
    real_scan = api.scan

    def spy(paths, settings, **kwargs):
        seen.append(settings.workers)
        return real_scan(paths, settings, **kwargs)

    monkeypatch.setattr(api, "scan", spy)
    monkeypatch.setattr(cmdline, "_usable_cpus", lambda: 3)
    for asked, used in ((8, 3), (3, 3), (2, 2), (1, 1)):
        assert scan(str(tmp_path / "runs"), "--workers", str(asked), "--out",
                    str(tmp_path / "r.json")) == 0
        assert seen[-1] == used
        err = capsys.readouterr().err
        assert ("--workers 8 with 3 CPU(s) here: using 3" in err) == (asked == 8), err
    monkeypatch.setattr(cmdline, "_usable_cpus", lambda: 1)
    scan(str(tmp_path / "runs"), "--workers", "4", "--out", str(tmp_path / "r.json"))
    assert seen[-1] == 2  # a worker process still stands between a bad input and the scan


def test_progress_is_counted_on_a_terminal_only(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    for kind in ("clean", "warning", "explosion"):
        write_table(tmp_path / "runs" / kind, kind)
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "gradaudit", "scan", str(tmp_path / "runs"), "--out", str(out)]
    master, slave = pty.openpty()
    proc = subprocess.run(cmd, stderr=slave, stdout=subprocess.PIPE, timeout=300)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.returncode == 1
    text = err.decode()
    assert "\rgradaudit: 3/3 inputs read (0:" in text, text
    assert f"writing the json report to {out}" in text
    assert proc.stdout == b""
    piped = subprocess.run(cmd, capture_output=True, timeout=300)
    assert piped.returncode == 1 and b"inputs read" not in piped.stderr


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_the_two_reports_change_together_or_not_at_all(tmp_path, monkeypatch, capsys, failure):
    # SIGTERM while --json was written left the new HTML beside the previous scan's JSON (the
    # next scan's baseline); so did a failed --json write (a hostile-input review)
    from gradaudit import report

    write_table(tmp_path / "runs" / "explosion", "explosion")
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    out.write_text("old html")
    js.write_text("old json")
    real = report.FORMATTERS["json"]

    def broken(result, stream):
        real(result, stream)
        raise failure(28, "No space left on device") if failure is OSError else failure

    monkeypatch.setitem(report.FORMATTERS, "json", broken)
    code = main(["scan", str(tmp_path / "runs"), "--out", str(out), "--json", str(js)])
    assert code == (130 if failure is KeyboardInterrupt else 2)
    assert (out.read_text(), js.read_text()) == ("old html", "old json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "runs"]
    if failure is OSError:
        assert "r.json" in capsys.readouterr().err


def test_a_missing_path_s_control_characters_never_reach_the_terminal(tmp_path, capsys):
    # scan $'nope\e]0;pwned\a' printed the escape sequence raw (a terminal title change)
    assert main(["scan", str(tmp_path / "nope\x1b]0;pwned\x07")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "nope" in err
