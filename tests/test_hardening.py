"""Hostile or odd inputs to the command line: one clear error, never a traceback or exit 1."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradaudit.cmdline import main
from gradaudit.settings import Settings


def _good_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    n = 300
    g = np.full(n, 1.0)
    loss = np.linspace(3.0, 2.0, n)
    pq.write_table(pa.table({"step": np.arange(n), "train/grad_norm": g, "train/loss": loss}),
                   folder / "run.parquet")


def test_deeply_nested_json_is_skipped_and_the_scan_goes_on(tmp_path, capsys):
    _good_run(tmp_path)
    (tmp_path / "deep.json").write_text('{"step":1,"a":' + "[" * 5000 + "\n{}\n")
    assert main(["inspect", str(tmp_path), "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in found["runs"]] == ["run.parquet"]


def test_deeply_nested_baseline_is_a_usage_error(tmp_path, capsys):
    _good_run(tmp_path / "runs")
    baseline = tmp_path / "base.json"
    baseline.write_text("[" * 200000)
    code = main(["scan", str(tmp_path / "runs"), "--baseline", str(baseline), "--quiet"])
    assert code == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_two_reports_on_stdout_are_refused(tmp_path, capsys):
    _good_run(tmp_path)
    assert main(["scan", str(tmp_path), "--format", "md", "--json", "-", "--quiet"]) == 2
    assert capsys.readouterr().out == ""


def test_missing_report_folder_fails_before_the_scan(tmp_path, capsys):
    _good_run(tmp_path)
    code = main(["scan", str(tmp_path), "--out", str(tmp_path / "nope" / "r.html"), "--quiet"])
    assert code == 2
    assert "no folder" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"spike_ratio": float("nan")}, {"spike_ratio": -1.0},
                                 {"harm_excess": 0.0}, {"merge_gap": -1},
                                 {"merge_gap": 2**63 - 1}])
def test_settings_reject_impossible_numbers(bad):
    with pytest.raises(ValueError):
        Settings(**bad)


def test_bad_setting_in_pyproject_is_a_usage_error(tmp_path, monkeypatch, capsys):
    _good_run(tmp_path / "runs")
    (tmp_path / "pyproject.toml").write_text("[tool.gradaudit]\nspike-ratio = -1.0\n")
    monkeypatch.chdir(tmp_path)
    assert main(["scan", "runs", "--quiet"]) == 2
    assert "spike_ratio" in capsys.readouterr().err


def test_a_panic_inside_polars_is_one_input_error_not_a_crash(tmp_path, monkeypatch, capsys):
    # polars' PanicException derives from BaseException: `except Exception` lets it through,
    # and an escaping exception would exit 1, the gate's code
    import polars as pl

    from gradaudit.adapters import parquet

    _good_run(tmp_path / "good")
    _good_run(tmp_path / "bad")
    real = parquet.read

    def panicky(source):
        if "bad" in str(source.files[0]):
            raise pl.exceptions.PanicException("capacity overflow")
        return real(source)

    monkeypatch.setattr(parquet, "read", panicky)
    assert main(["scan", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in doc["runs"]] == ["good/run.parquet"]
    (err,) = doc["errors"]
    assert "PanicException" in err["message"] and "capacity overflow" in err["message"]


def test_a_worker_killed_while_reading_loses_only_its_own_input(tmp_path, monkeypatch, capsys):
    # the OOM killer (or a crash in native code) ends a worker process: the other inputs,
    # including those that worker had queued, are still read and reported. The workers are
    # fresh processes: a sitecustomize on their PYTHONPATH makes the reader die on one input
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal\n"
        "from gradaudit.adapters import parquet\n"
        "_real = parquet.read\n"
        "def _deadly(source):\n"
        "    if 'killer' in str(source.files[0]):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return _real(source)\n"
        "parquet.read = _deadly\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(hook), os.environ.get("PYTHONPATH", "")])))
    runs = tmp_path / "runs"
    for name in ("a", "b", "killer", "c", "d"):
        _good_run(runs / name)
    assert main(["scan", str(runs), "--format", "json", "--workers", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in doc["runs"]] == [f"{n}/run.parquet" for n in "abcd"]
    (err,) = doc["errors"]
    assert "killer" in err["path"] and "process reading this input died" in err["message"]
