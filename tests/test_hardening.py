"""Hostile or odd inputs to the command line: one clear error, never a traceback or exit 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def _scan_in_workers(tmp_path: Path, names: tuple[str, ...], on_read: str, *args: str,
                     command: str = "scan", startup: str = "") -> tuple[dict, float]:
    """Scan one good Parquet run per name with ``--workers 2``, in a subprocess with a hard
    time limit, the worker processes running ``on_read`` before each Parquet read (with
    ``name``, the run's folder name, and ``_done``, the names that process has read; ``os``,
    ``signal`` and ``time`` imported). ``startup`` runs first, in every process, the scan's own
    too: the workers are fresh interpreters, so all this goes through a sitecustomize on their
    PYTHONPATH. The JSON report (or inspection) and the seconds the command took."""
    runs = tmp_path / "runs"
    for name in names:
        _good_run(runs / name)
    return _with_hook(tmp_path, startup + "import os, signal, time\n"
                      "from gradaudit.adapters import parquet\n"
                      "_real, _done = parquet.read, []\n"
                      "def _read(source):\n"
                      "    name = source.files[0].parent.name\n"
                      + textwrap.indent(on_read, "    ") +
                      "    _done.append(name)\n"
                      "    return _real(source)\n"
                      "parquet.read = _read\n",
                      command, str(runs), "--format", "json", "--workers", "2", *args)


def _with_hook(tmp_path: Path, hook: str, *args: str) -> tuple[dict, float]:
    """``gradaudit ARGS`` in a subprocess with a hard time limit, ``hook`` run first in every
    process, the scan's own and its workers' (fresh interpreters: a sitecustomize on their
    PYTHONPATH). The JSON it printed, and the seconds it took."""
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(hook)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(folder), os.environ.get("PYTHONPATH", "")]))}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "gradaudit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:  # the workers too, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    return json.loads(out), time.monotonic() - start


def test_a_worker_killed_while_reading_loses_only_its_own_input(tmp_path):
    # the OOM killer (or a crash in native code) ends a worker process: the other inputs are
    # still read and reported. An input whose worker had read others before is given once
    # more, to a fresh worker ("victim" dies only in a worker that has read something: the OOM
    # killer picks the largest process, often one still holding an earlier input's memory). A
    # panic that is no Exception loses only its input, as an error of its own
    doc, _ = _scan_in_workers(
        tmp_path, ("a", "b", "killer", "panic", "victim", "z"),
        "if name == 'killer' or (name == 'victim' and _done):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if name == 'panic':\n"
        "    raise type('PanicException', (BaseException,), {})('boom')\n")
    assert [r["run"] for r in doc["runs"]] == [f"{n}/run.parquet" for n in "ab"] + \
        ["victim/run.parquet", "z/run.parquet"]
    killer, panic = doc["errors"]
    assert "killer" in killer["path"] and "process reading this input died" in killer["message"]
    assert "panic" in panic["path"] and "PanicException('boom')" in panic["message"]


def test_an_input_that_hangs_is_ended_at_the_timeout_and_the_others_are_read(tmp_path):
    # a reader stuck in native code (polars, when its threads cannot start under a memory
    # limit) never returns and never dies: its worker is ended at --timeout and only its input
    # is lost (after a second try in a fresh worker, if the first had read others). An input
    # slower than the others but under the limit is read, and so is every input given out
    # after the stuck one (each input's time counts from when it is given out)
    doc, took = _scan_in_workers(
        tmp_path, ("a", "b", "c", "slowish", "stuck", "z"),
        "if name == 'stuck':\n"
        "    time.sleep(3600)\n"
        "if name == 'slowish':\n"
        "    time.sleep(1.5)\n", "--timeout", "5")
    assert [r["run"] for r in doc["runs"]] == [f"{n}/run.parquet" for n in "abc"] + \
        ["slowish/run.parquet", "z/run.parquet"]
    (err,) = doc["errors"]
    assert "stuck" in err["path"] and "took longer than 5 s" in err["message"]
    assert doc["settings"]["timeout"] == 5 and took < 100


def test_an_input_that_keeps_its_worker_busy_past_the_timeout_is_not_tried_again(tmp_path):
    # slow, not stuck: its worker used the CPU all along (or waited for one), and a second try
    # would cost the whole timeout again
    doc, _ = _scan_in_workers(
        tmp_path, ("a", "b", "c", "d", "spin"),
        "while name == 'spin':\n"
        "    pass\n", "--timeout", "3")
    (err,) = doc["errors"]
    assert "spin" in err["path"] and "took longer than 3 s" in err["message"]
    assert "given once more" not in err["message"]


def test_an_input_that_hung_in_a_used_worker_is_given_again_to_a_fresh_one(tmp_path):
    # "flaky" hangs only in a worker that has read something. When it times out, the other
    # worker is still busy with the inputs after it, and would take it again first: only a
    # fresh worker may (a review: it was lost 3 times in 3). (A deadline of 10 s, not 4: on a
    # 2-core machine under a load of 6-7, with its disk nearly full, one input was lost once)
    names = ("a", "b", "flaky", *(f"x{k:02d}" for k in range(32)))
    doc, _ = _scan_in_workers(
        tmp_path, names,
        "if name == 'flaky' and _done:\n"
        "    time.sleep(3600)\n"
        "if name.startswith('x'):\n"
        "    time.sleep(0.5)\n", "--timeout", "10")
    assert [r["run"] for r in doc["runs"]] == [f"{n}/run.parquet" for n in names]
    assert doc["errors"] == []


def test_a_worker_that_never_starts_does_not_hold_the_scan(tmp_path):
    # the first worker to start hangs before it says it is ready (a review: the scan waited
    # for it forever once the other had read every input)
    doc, took = _scan_in_workers(
        tmp_path, ("a", "b", "c"), "",
        startup=f"import os, sys, time\n"
                f"if '--multiprocessing-fork' in sys.orig_argv and \\\n"
                f"        not os.path.exists({str(tmp_path / 'token')!r}):\n"
                f"    open({str(tmp_path / 'token')!r}, 'w').close()\n"
                f"    time.sleep(3600)\n")
    assert [r["run"] for r in doc["runs"]] == [f"{n}/run.parquet" for n in "abc"]
    assert took < 60


def test_inspect_ends_a_stuck_input_at_the_timeout(tmp_path):
    doc, _ = _scan_in_workers(
        tmp_path, ("a", "stuck"),
        "if name == 'stuck':\n"
        "    time.sleep(3600)\n", "--timeout", "3", command="inspect")
    (err,) = doc["errors"]
    assert "stuck" in err["path"] and "took longer than 3 s" in err["message"]


def test_a_trainers_tensorboard_log_read_in_discovery_is_ended_at_the_timeout(tmp_path):
    # To tell a Hugging Face Trainer's TensorBoard copies, discovery reads the TensorBoard
    # folders in its runs/ and its trainer_state.json: it did so in the scan's own process,
    # where --timeout ends nothing (a review: a hostile event file beside a Trainer run held
    # the whole scan). They are read by the worker processes, under the timeout: one that hangs
    # is ended and reported once (not read again), and the real copy beside it is still told
    from tests.test_hf_trainer import _history, _losses, _tensorboard_launch, _trainer_output

    loss, grad = _losses(3)
    out = _trainer_output(tmp_path / "runs" / "out", loss, grad)
    for name in ("Nov29_07-28-10_vm", "stuck"):
        _tensorboard_launch(out / "runs" / name, _history(range(1, 46), loss, grad))
    doc, _ = _with_hook(tmp_path, "import time\n"
                        "from gradaudit.adapters import tensorboard\n"
                        "_real = tensorboard.read\n"
                        "def _read(source):\n"
                        "    if source.files[0].parent.name == 'stuck':\n"
                        "        time.sleep(3600)\n"
                        "    return _real(source)\n"
                        "tensorboard.read = _read\n",
                        "scan", "runs", "--format", "json", "--workers", "2", "--timeout", "5")
    (run,) = doc["runs"]
    assert run["run"] == "out" and run["format"] == "hf-trainer-state"
    assert any("out/runs/Nov29_07-28-10_vm is this Trainer run's copy" in n
               for n in run["notes"])
    (err,) = doc["errors"]
    assert "out/runs/stuck/" in err["path"]
    assert "took longer than 5 s" in err["message"]


def test_a_timeout_without_worker_processes_is_said_to_have_no_effect(tmp_path, capsys):
    _good_run(tmp_path / "a")
    assert main(["scan", str(tmp_path), "--format", "json", "--timeout", "6"]) == 0
    assert "--timeout limits worker processes" in capsys.readouterr().err
    assert main(["scan", str(tmp_path), "--format", "json", "--timeout", "6",
                 "--workers", "2"]) == 0
    assert "--timeout" not in capsys.readouterr().err


def test_a_script_without_a_main_guard_is_read_in_its_own_process(tmp_path):
    # a spawned worker re-runs the calling script, which then cannot start workers of its own:
    # the workers die before they say they are ready, and the inputs are read in the script's
    # own process instead, with a warning - not lost, not a hang
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from gradaudit import parallel\n"
        "def square(x):\n"
        "    return x * x\n"
        "print(parallel.run_all(square, [1, 2, 3], 2, lambda item, why: why))\n")
    done = subprocess.run([sys.executable, "-W", "always", str(script)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "[1, 4, 9]", done
    assert "worker processes could not start" in done.stderr


LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux",
                                reason="FIFOs, /proc and file names in arbitrary bytes")


@LINUX_ONLY
@pytest.mark.parametrize("fmt", ["json", "md", "html", "github"])
def test_a_run_folder_named_in_bytes_that_are_not_utf8_is_reported_not_fatal(
        tmp_path, capsys, fmt):
    # a user review: one such folder made every report of a 1,837-run archive fail with a
    # UnicodeEncodeError (no report, exit 2); its name is now written with \xNN escapes
    from tensorboardX import SummaryWriter

    _good_run(tmp_path / "good")
    root = os.fsencode(tmp_path)
    writer = SummaryWriter(logdir=os.fsdecode(os.path.join(root, b"tb_\xff\xfe")))
    for step in range(1, 301):
        writer.add_scalar("train/grad_norm", 1.0 + 0.1 * np.sin(step), step)
        writer.add_scalar("train/loss", 2.0 / step ** 0.2, step)
    writer.close()
    # polars cannot open such a path: the table is read through a symlink with a plain name
    _good_run(tmp_path / "plain")  # (pyarrow cannot write there either: renamed after)
    os.rename(os.fsencode(tmp_path / "plain"), os.path.join(root, b"pq_\xe9"))
    os.mkfifo(tmp_path / "stuck.csv")  # a FIFO named like a log: reported, never opened
    out = tmp_path / f"report.{fmt}"
    assert main(["scan", str(tmp_path), "--format", fmt, "--out", str(out),
                 "--json", str(tmp_path / "r.json")]) == 0
    text = out.read_bytes().decode("utf-8")  # valid UTF-8
    doc = json.loads((tmp_path / "r.json").read_bytes().decode("utf-8"))
    runs = {r["run"]: r for r in doc["runs"]}
    assert sorted(runs) == ["good/run.parquet", "pq_\\xe9/run.parquet", "tb_\\xff\\xfe"]
    assert runs["pq_\\xe9/run.parquet"]["files"] == [str(tmp_path / "pq_\\xe9/run.parquet")]
    assert runs["pq_\\xe9/run.parquet"]["n_steps"] == runs["good/run.parquet"]["n_steps"]
    errors = {e["path"]: e["message"] for e in doc["errors"]}
    assert set(errors) == {str(tmp_path / "stuck.csv")}
    if fmt == "json":
        assert text == (tmp_path / "r.json").read_text(encoding="utf-8")
    elif fmt == "html":  # the runs without findings are listed by name there
        assert "pq_\\xe9" in text
    assert main(["inspect", str(tmp_path), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "tb_\\xff\\xfe" in [r["run"] for r in listed["runs"]]


@LINUX_ONLY
def test_a_non_utf8_folder_named_on_the_command_line_is_a_path_that_was_read(tmp_path):
    # a path given that yields no run is exit 2; this one yields its run, whose file names are
    # written with \xNN escapes: compared the same way, it is no unread path
    _good_run(tmp_path / "plain")
    folder = os.path.join(os.fsencode(tmp_path), b"pq_\xe9")
    os.rename(os.fsencode(tmp_path / "plain"), folder)
    out = tmp_path / "r.json"
    assert main(["scan", os.fsdecode(folder), "--format", "json", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text(encoding="utf-8"))["runs"]) == 1


def test_a_table_in_a_non_utf8_folder_scanned_by_a_relative_path(tmp_path, monkeypatch):
    # the stand-in symlink pointed at the relative path from inside its temporary folder: it
    # dangled, and the run was lost ("No such file or directory"; a fuzzing review)
    _good_run(tmp_path / "plain")
    os.rename(os.fsencode(tmp_path / "plain"), os.path.join(os.fsencode(tmp_path), b"pq_\xe9"))
    monkeypatch.chdir(tmp_path)
    assert main(["scan", ".", "--format", "json", "--out", "r.json"]) == 0
    doc = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in doc["runs"]] == ["pq_\\xe9/run.parquet"] and not doc["errors"]


@LINUX_ONLY
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_stops_the_worker_processes_at_once(tmp_path, sig):
    # a CI timeout sends SIGTERM: the scan must end at once and take its workers with it (a
    # user review found them alive 10 minutes later, holding the job's output pipes open).
    # Ctrl-C too - once polars is imported (its own SIGINT handler) a Ctrl-C no longer ends a
    # wait on a lock, and the scan went on until the input being waited for was read
    script = tmp_path / "slow_scan.py"
    script.write_text(
        "import sys, time\n"
        "import polars\n"
        "from gradaudit import cmdline, parallel\n"
        "def slow(x):\n"
        "    time.sleep(120)\n"
        "    return x\n"
        "if __name__ == '__main__':\n"
        "    import signal\n"
        "    signal.signal(signal.SIGTERM, cmdline._terminated)\n"
        "    try:\n"
        "        parallel.run_all(slow, [1, 2, 3, 4], 2, lambda item, why: None)\n"
        "    except KeyboardInterrupt:\n"
        "        print('stopped', flush=True)\n"
        "        sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    children: list[str] = []
    deadline = time.monotonic() + 60
    while len(children) < 2 and time.monotonic() < deadline:  # both workers started
        time.sleep(0.2)
        children = _children(proc.pid)
    assert len(children) == 2, children
    time.sleep(1.0)  # the workers are importing or in slow(): either way they must go
    start = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3 and out.strip() == "stopped"
    assert time.monotonic() - start < 10
    time.sleep(0.5)
    alive = [c for c in children if _alive(c)]
    assert not alive, alive


def _children(pid: int) -> list[str]:
    """The pool's worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline \
                    and b"resource_tracker" not in cmdline:
                kids.append(entry)
    return kids


def _alive(pid: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@LINUX_ONLY
def test_a_link_to_a_kernel_file_is_not_read(tmp_path):
    # /proc/kmsg is a "regular" file whose read blocks for ever (as root): a link to it in a
    # scanned folder, or the file named itself, hung discovery - and --timeout did not help
    kmsg = Path("/proc/kmsg")
    if not kmsg.exists():
        pytest.skip("no /proc/kmsg here")
    logs = tmp_path / "logs"
    (logs / "run").mkdir(parents=True)
    (logs / "run" / "metrics.csv").write_text(
        "step,loss,grad_norm\n" + "".join(f"{s},{2.0 - s / 1000},1.0\n" for s in range(300)))
    (logs / "console").symlink_to(kmsg)
    (logs / "dmesg.log").symlink_to(kmsg)
    script = ("import sys, gradaudit\n"
              "r = gradaudit.scan([sys.argv[1]])\n"
              "print([x.run for x in r.runs], sorted(e.path.rsplit('/', 1)[-1] "
              "for e in r.errors))\n"
              "r = gradaudit.scan([sys.argv[1] + '/dmesg.log', sys.argv[1] + '/run'])\n"
              "print(len(r.runs))\n")
    done = subprocess.run([sys.executable, "-c", script, str(logs)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first == "['run/metrics.csv'] ['console', 'dmesg.log']", first
    assert second == "1"
