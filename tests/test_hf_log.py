"""Hugging Face Trainer stdout logs, on logs the real Trainer wrote (transformers 5.24.0 and
4.57.6; tests/data/hf-stdout/make_logs.py says how), each checked against the
``trainer_state.json`` the same run saved: the state holds each point's step, the log does not.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gradaudit
from gradaudit.adapters import REGISTRY, hf_log, hf_trainer
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError
from tests._points import by_tag

DATA = Path(__file__).parent / "data" / "hf-stdout"
VERSIONS = ("5.24.0", "4.57.6")
#: logs whose steps the log itself tells (the bar after each line, the Trainer's info lines,
#: or the bar's total over the epoch the run ended at); "accumulation": 16 micro-batches per
#: step over 100 samples, where the epoch runs up to a step ahead of the steps
#: "no-bar": disable_tqdm=True, where the closing line's train_runtime x train_steps_per_second
#: gives the steps the run trained
STEPPED = ("merged", "merged-buffered", "merged-info", "resumed", "accumulation", "no-bar",
           "stdout-only")


def _points(path: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` as the adapter reads ``path`` (a later point at a step wins)."""
    (raw,) = hf_log.read(Source(hf_log.FORMAT, path.name, (path,)))
    return by_tag(raw)


def _state(path: Path) -> dict[str, dict[int, float]]:
    """The same from the run's trainer_state.json, read by gradaudit's own reader of it."""
    state = path.with_name(path.name.replace(".log", ".state.json"))
    (raw,) = hf_trainer.read(Source(hf_trainer.FORMAT, "x", (state,)))
    return by_tag(raw)


def _close(a: float, b: float, version: str) -> bool:
    # transformers 5 prints 4 significant digits; 4.x the float itself
    return (math.isnan(a) and math.isnan(b)) or math.isclose(
        a, b, rel_tol=5e-4 if version.startswith("5") else 1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", STEPPED)
def test_every_point_at_the_step_trainer_state_json_gives_it(version: str, case: str) -> None:
    log = DATA / f"{version}-{case}.log"
    got, want = _points(log), _state(log)
    compared = 0
    for tag, ref in want.items():
        if tag in ("train/total_flos", "train/train_loss") or tag.startswith(
                ("train/train_", "train/epoch")):
            continue  # the closing summary: no point of the log either
        assert sorted(got[tag]) == sorted(ref), (tag, sorted(set(got[tag]) ^ set(ref))[:5])
        bad = [s for s in ref if not _close(got[tag][s], ref[s], version)]
        assert not bad, (tag, [(s, got[tag][s], ref[s]) for s in bad[:3]])
        compared += len(ref)
    assert compared >= 3 * len(want["train/loss"]) + len(want["eval/loss"])
    # the epoch, as printed: 4 digits, or 2 decimals in 4.x's bar
    shown = 2 if version.startswith("4") else None
    assert got["train/epoch"] == pytest.approx(
        {s: round(e, shown) if shown else e for s, e in want["train/epoch"].items()}, rel=5e-4)
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "eval/loss"} <= set(got)
    assert not [t for t in got if "runtime" in t and t.startswith("train/")]


@pytest.mark.parametrize("version", VERSIONS)
def test_without_what_gives_the_steps_they_are_logging_intervals(version: str,
                                                                 tmp_path: Path) -> None:
    # stdout alone (no bar) of a run that crashed before its closing line, nor info lines:
    # the lines are logging_steps (2) apart, but nothing says how many steps an epoch has
    text = (DATA / f"{version}-stdout-only.log").read_text()
    log = tmp_path / "crashed.log"
    log.write_text("".join(ln for ln in text.splitlines(keepends=True)
                           if "train_runtime" not in ln))
    got, want = _points(log), _state(DATA / f"{version}-stdout-only.log")
    # the first line is logging_first_step's (step 1, before the first interval): interval 0
    assert {s * 2 or 1: v for s, v in got["train/loss"].items()} == pytest.approx(
        want["train/loss"], rel=5e-4)
    assert {s * 2: v for s, v in got["eval/loss"].items()} == pytest.approx(
        want["eval/loss"], rel=5e-4)
    (raw,) = hf_log.read(Source(hf_log.FORMAT, log.name, (log,)))
    assert any("counted in logging intervals" in n for n in raw.notes)


def test_how_the_steps_were_found_is_noted() -> None:
    def note(name: str) -> str:
        (raw,) = hf_log.read(Source(hf_log.FORMAT, name, (DATA / name,)))
        (first,) = [n for n in raw.notes if "step" in n]
        return first

    assert note("5.24.0-merged.log") == ("steps from the training bar drawn after each line (it "
                                         "shows the line's step)")
    assert "update steps per epoch the Trainer printed (25)" in note("5.24.0-merged-info.log")
    assert "120 steps of the training bar over the 4.8 epochs" in note(
        "4.57.6-merged-buffered.log")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_scan_audits_the_log_as_it_audits_trainer_state_json(version: str,
                                                                tmp_path: Path) -> None:
    # the lr is 500x at steps 30-33: the same episodes from the log as from the state file
    shutil.copy(DATA / f"{version}-merged-buffered.log", tmp_path / "slurm-1234.out")
    (tmp_path / "out").mkdir()
    shutil.copy(DATA / f"{version}-merged-buffered.state.json",
                tmp_path / "out" / "trainer_state.json")
    result = gradaudit.scan([tmp_path])
    runs = {r.run: r for r in result.runs}
    assert set(runs) == {"slurm-1234.out", "out"} and not result.errors
    log, state = runs["slurm-1234.out"], runs["out"]
    assert log.format == "hf-trainer-log"
    assert (log.grad_norm_tag, log.loss_tag, log.lr_tag) == (
        "train/grad_norm", "train/loss", "train/learning_rate")
    assert log.status == state.status == "explosion"
    assert [(e.kind, e.onset_step, e.peak_step) for e in log.episodes] == [
        (e.kind, e.onset_step, e.peak_step) for e in state.episodes]
    assert 30 <= log.episodes[0].onset_step <= 36
    (series,) = gradaudit.read_runs([tmp_path / "slurm-1234.out"])
    assert "train/loss" in series.interval_means


def test_a_crash_resumed_into_the_same_log_keeps_the_steps_trained_again() -> None:
    # killed at step 70, resumed from checkpoint-60 with the output appended: 62-70 logged twice
    for version in VERSIONS:
        (run,) = gradaudit.read_runs([DATA / f"{version}-resumed.log"])
        steps, _ = run.series("train/loss")
        assert steps.tolist() == [1, *range(2, 121, 2)], version


def test_format_of_each_version_with_non_finite_values_and_wrappers(tmp_path: Path) -> None:
    lines = [
        # transformers 5: every float as a 4-digit text
        "{'loss': '2.5', 'grad_norm': 'inf', 'learning_rate': '1e-05', 'epoch': '0.01'}",
        "{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '1e-05', 'epoch': '0.02'}",
        # 4.x: the floats themselves; a tensor or a NumPy scalar where the trainer passed one
        "{'loss': 2.25, 'grad_norm': tensor(0.5, device='cuda:0'), 'learning_rate': 1e-05, "
        "'epoch': 0.03}",
        "{'loss': np.float64(2.0), 'grad_norm': -inf, 'learning_rate': 1e-05, 'epoch': 0.04, "
        "'num_tokens': 1024, 'note': 'text'}",
    ]
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    got = _points(log)
    loss, grad = got["train/loss"], got["train/grad_norm"]
    assert sorted(loss) == [1, 2, 3, 4]
    assert loss[1] == 2.5 and math.isnan(loss[2]) and loss[3] == 2.25 and loss[4] == 2.0
    assert math.isinf(grad[1]) and math.isnan(grad[2]) and grad[3] == 0.5 and grad[4] == -math.inf
    assert got["train/num_tokens"] == {4: 1024.0}
    assert "train/note" not in got


def _callback_line(version: str, logs: dict[str, float]) -> str:
    """A log line as each version's ProgressCallback prints it (its on_log, to the letter)."""
    if version == "5":
        return str({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()})
    return str({**logs, "epoch": round(logs["epoch"], 2)})


@pytest.mark.parametrize("version", ["5", "4"])
@pytest.mark.parametrize(("per_epoch", "every", "last"), [
    (4999, 10, 60000), (50000, 50, 400000), (313, 1, 5000), (77, 3, 2000)])
def test_steps_of_long_runs_and_a_resume_from_epochs_printed_short(
        tmp_path: Path, version: str, per_epoch: int, every: int, last: int) -> None:
    # step = epoch x steps per epoch is only as exact as the epoch printed (4 digits, or 2
    # decimals: 25 steps either side at 5,000 steps per epoch); the lines' spacing gives the
    # rest. A resume half way logs 3 lines again, with other values.
    resume = last // 2 - last // 2 % every
    steps = [1] * (every > 1) + list(range(every, last + 1, every))
    seq = [(s, 0.0) for s in steps if s <= resume + 3 * every]
    seq += [(s, 0.5) for s in steps if s > resume]
    rng = np.random.default_rng(per_epoch)
    lines = [f"  Num update steps per epoch = {per_epoch:,}"] if version == "5" else []
    for s, shift in seq:
        lines.append(_callback_line(version, {
            "loss": float(3 + rng.random() + shift), "grad_norm": float(1 + rng.random()),
            "learning_rate": 1e-4, "epoch": s / per_epoch}))
    if version == "4":  # what gives the steps per epoch here: the bar, and the summary line
        lines.append(f" 100%|##########| {last}/{last} [01:00<00:00, 99.0it/s]")
        lines.append(str({"train_runtime": 60.0, "train_loss": 3.0, "epoch": last / per_epoch}))
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    got = raw.points.filter(pl.col("tag") == "train/loss").get_column("step").to_list()
    wrong = [(g, s) for g, (s, _) in zip(got, seq, strict=True) if g != s]
    # 2 decimals of epoch at 50,000 steps per epoch (250 steps either side) cannot place a
    # resume that went back 150 steps to the step: the two lines at the cut may be off
    assert len(wrong) <= (2 if version == "4" and per_epoch == 50000 else 0), wrong[:4]


def test_lines_of_several_nodes_count_once_and_a_summary_is_no_point(tmp_path: Path) -> None:
    # PrinterCallback prints on each node's local process 0: the same line twice in a row
    lines = []
    for s in range(1, 41):
        line = str({"loss": f"{2 + s % 3 / 10:.4g}", "grad_norm": "0.5",
                    "learning_rate": "1e-05", "epoch": f"{s / 20:.4g}"})
        lines += [line, line]
    lines.append("{'eval_loss': '2.1', 'eval_runtime': '0.5', 'epoch': '2'}")
    lines.append("{'train_runtime': '10.5', 'train_loss': '2.1', 'epoch': '2'}")
    lines.append("  Num update steps per epoch = 20")  # after the lines: still the run's
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    got = _points(log)
    assert sorted(got["train/loss"]) == list(range(1, 41))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    assert raw.points.filter(pl.col("tag") == "train/loss").height == 40
    assert got["eval/loss"] == {40: 2.1}
    assert not [t for t in got if "train_loss" in t or "runtime" in t and "eval" not in t]


def test_no_epoch_numbers_the_lines_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("".join(f"{{'loss': {2 + i / 100}, 'grad_norm': 0.5}}\n" for i in range(30)))
    got = _points(log)
    assert sorted(got["train/loss"]) == list(range(1, 31))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    assert any("no step and no epoch" in n for n in raw.notes)


def test_crlf_nul_blocks_and_a_cut_last_line(tmp_path: Path) -> None:
    src = DATA / "5.24.0-merged.log"
    plain = _points(src)
    data = src.read_bytes()
    (tmp_path / "crlf.log").write_bytes(data.replace(b"\n", b"\r\n"))
    assert _points(tmp_path / "crlf.log") == plain
    at = data.index(b"'epoch': '2.4'}")  # step 60's line
    (tmp_path / "nul.log").write_bytes(data[:at] + b"\x00" * 5000 + data[at:])
    got = _points(tmp_path / "nul.log")
    assert 60 not in got["train/loss"]  # the line the NUL block cut
    assert {t: {s: v for s, v in p.items() if s != 60} for t, p in got.items()} == {
        t: {s: v for s, v in p.items() if s != 60} for t, p in plain.items()}
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (tmp_path / "nul.log",)))
    assert any("5000 NUL byte(s) ignored" in p.message for p in raw.problems)
    cut = data.index(b"'epoch': '4.8'}") + 5  # inside step 120's line
    (tmp_path / "cut.log").write_bytes(data[:cut])  # killed while printing
    assert max(_points(tmp_path / "cut.log")["train/loss"]) == 118


def test_no_training_line_is_a_read_error_and_a_hostile_line_is_quick(tmp_path: Path) -> None:
    import time

    (tmp_path / "eval.log").write_text("{'eval_loss': '2.5', 'epoch': '1'}\n")
    (tmp_path / "words.log").write_text("{'loss': 'high', 'epoch': 'one'}\n")
    (tmp_path / "prose.txt").write_text("We print the logs, as in {'loss': 1.0}\n")
    for name in ("eval.log", "words.log", "prose.txt"):
        with pytest.raises(ReadError, match="no whole Trainer training line"):
            hf_log.read(Source(hf_log.FORMAT, name, (tmp_path / name,)))
    # a line of two million "{'a': " and lines of "{'loss': " with no end: a backtracking
    # regex takes hours on them (each start tried against the rest of the line)
    (tmp_path / "hostile.log").write_text(
        "{'loss': '1.0', 'epoch': '0.1'}\n" + "{'a': " * 2_000_000 + "\n"
        + ("{'loss': " * 1000 + "x}}") * 60 + "\n")
    start = time.perf_counter()
    got = _points(tmp_path / "hostile.log")
    assert time.perf_counter() - start < 20
    assert got["train/loss"] == {1: 1.0}


def test_claimed_after_the_other_stdout_logs(tmp_path: Path) -> None:
    for name in ("5.24.0-merged.log", "4.57.6-no-bar.log"):
        shutil.copy(DATA / name, tmp_path / name.replace(".log", ".out"))
    (tmp_path / "notes.txt").write_text("print({'lr': 0.1}) and {'loss' in a sentence}\n")
    (tmp_path / "script.py").write_text("print({'loss': 1.0, 'epoch': 0.1})\n")
    files = sorted(tmp_path.iterdir())
    assert {s.name for s in hf_log.claim(tmp_path, files)} == {
        "5.24.0-merged.out", "4.57.6-no-bar.out"}
    order = list(REGISTRY)
    assert order.index("megatron-log") < order.index("hf-trainer-log")
    # startup output before the first line (the Trainer logs after its first interval)
    # (datasets' bars, as its map() draws them; a tqdm bar of any other script is no reason
    # to read on)
    startup = "".join(f"Map (num_proc=4):  {i % 100}%|#| {i}/40000 [00:01<00:00, 99.0ex/s]\n"
                      for i in range(40000))
    assert len(startup) > 2 * (1 << 20)
    (tmp_path / "late.log").write_text(startup + (DATA / "5.24.0-merged.log").read_text())
    assert [s.name for s in hf_log.claim(tmp_path, [tmp_path / "late.log"])] == ["late.log"]
    other = "".join(f"\r 37%|###7  | {i}/90000 [01:40<02:50, 99.00it/s]" for i in range(40000))
    (tmp_path / "tqdm.log").write_text(other + "\n" + (DATA / "5.24.0-merged.log").read_text())
    assert not hf_log.claim(tmp_path, [tmp_path / "tqdm.log"])  # its first MiB only
    from gradaudit.cmdline import main

    out = tmp_path / "r.json"
    assert main(["scan", "--quiet", str(tmp_path / "5.24.0-merged.out"), "--json", str(out),
                 "--out", str(tmp_path / "r.md")]) == 1  # the explosion fails the gate
    doc = json.loads(out.read_text())
    assert doc["runs"][0]["format"] == "hf-trainer-log" and doc["errors"] == []


def test_the_log_and_its_trainer_state_json_are_noted_as_one_training(tmp_path: Path) -> None:
    # transformers 5 prints 4 digits, the state keeps the floats: not the same series, but one
    # training, counted twice by the scan; a run 0.3 % off at one early point is another one
    shutil.copy(DATA / "5.24.0-merged-buffered.log", tmp_path / "slurm-1.out")
    (tmp_path / "out").mkdir()
    shutil.copy(DATA / "5.24.0-merged-buffered.state.json", tmp_path / "out" / "trainer_state.json")
    text = (DATA / "5.24.0-merged-buffered.log").read_text()
    assert text.count("'grad_norm': '0.6216'") == 1
    (tmp_path / "other.out").write_text(text.replace("'grad_norm': '0.6216'",
                                                     "'grad_norm': '0.6235'"))
    result = gradaudit.scan([tmp_path])
    notes = {r.run: [n for n in r.notes if "logged twice" in n] for r in result.runs}
    assert notes["slurm-1.out"] == [
        "the same grad-norm and loss series within 0.1% as 'out' (at the steps both logged): "
        "one training logged twice by writers that round it differently (e.g. a Trainer's "
        "stdout log and its trainer_state.json), or an exact re-run; each is counted in this "
        "scan"]
    assert len(notes["out"]) == 1 and "as 'slurm-1.out' (at the" in notes["out"][0]
    assert notes["other.out"] == []
    from gradaudit.report.markdown import render

    assert "**2** of them have the same grad-norm and loss series" in render(result)
    # the job killed after its last checkpoint: its log goes on past the state's steps (a
    # second review: a log of fewer points than the head was never compared)
    (tmp_path / "other.out").unlink()
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    state["log_history"] = [e for e in state["log_history"] if e.get("step", 0) <= 60]
    (tmp_path / "out" / "trainer_state.json").write_text(json.dumps(state))
    unbuffered = (DATA / "5.24.0-merged.log").read_text()  # the bar after each line: steps
    cut = [ln for ln in unbuffered.splitlines(keepends=True) if "train_runtime" not in ln]
    (tmp_path / "slurm-1.out").write_text("".join(cut))
    result = gradaudit.scan([tmp_path])
    notes = {r.run: [n for n in r.notes if "logged twice" in n] for r in result.runs}
    assert len(notes["out"]) == 1 and len(notes["slurm-1.out"]) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_two_trainings_appended_to_one_log_are_two_runs(version: str) -> None:
    # 200 samples for 3 epochs, then 333 for 2 (25 and 42 steps per epoch), stdout buffered:
    # each training's steps from its own bar total, and neither lost to the other as a resume
    log = DATA / f"{version}-appended.log"
    runs = {Path(r.name).name: r for r in gradaudit.read_runs([log])}
    assert sorted(runs) == [log.name, f"{log.name}#training-2"]
    for name, state in ((log.name, ".state.json"), (f"{log.name}#training-2", ".2.state.json")):
        history = json.loads((DATA / f"{version}-appended{state}").read_text())["log_history"]
        want = {e["step"]: e["loss"] for e in history if "loss" in e}
        steps, loss = runs[name].series("train/loss")
        assert steps.tolist() == sorted(want), name
        assert loss.tolist() == pytest.approx([want[s] for s in sorted(want)], rel=5e-4)
    assert runs[f"{log.name}#training-2"].notes[0].startswith("training 2 of the 2 this log")


def test_lines_that_print_their_own_step_are_read_at_it(tmp_path: Path) -> None:
    # print(trainer.state.log_history[-1]), or a loop of one's own printing the Trainer's keys
    log = tmp_path / "train.log"
    log.write_text("".join(str({"loss": 2 - s / 1000, "grad_norm": 0.5, "learning_rate": 1e-4,
                                "epoch": s / 300, "step": s}) + "\n"
                           for s in range(10, 1001, 10)))
    got = _points(log)
    assert sorted(got["train/loss"]) == list(range(10, 1001, 10))
    assert "train/step" not in got
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    assert raw.notes == ["steps as each line printed them (its 'step' or 'global_step')"]
    other = tmp_path / "loop.log"  # a loop of one's own printing its 'global_step'
    other.write_text(log.read_text().replace("'step'", "'global_step'"))
    got = _points(other)
    assert sorted(got["train/loss"]) == list(range(10, 1001, 10))
    assert "train/global_step" not in got


def test_a_launchers_line_prefix_before_the_bar(tmp_path: Path) -> None:
    # torchrun --tee 3 and srun --label put the rank before every line, the bar's too
    lines = []
    for s in range(1, 41):
        lines.append(f"[default0]:{{'loss': '{2 + s % 3 / 10:.4g}', 'grad_norm': '0.5', "
                     f"'learning_rate': '1e-05', 'epoch': '{s / 13:.4g}'}}")
        lines.append(f"[default0]: {100 * s // 40}%|###  | {s}/40 [00:01<00:02, 9.9it/s]")
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    assert sorted(_points(log)["train/loss"]) == list(range(1, 41))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    assert "training bar drawn after each line" in raw.notes[0]


def test_a_diverged_run_printing_the_same_line_keeps_every_step(tmp_path: Path) -> None:
    # after a divergence 4.x prints {'loss': 0.0, 'grad_norm': nan, ...} with an epoch rounded
    # to 2 decimals: the same line for several steps in a row, each a step of its own
    lines = []
    for s in range(1, 401):
        logs = {"loss": 2.0 - s / 1000, "grad_norm": 0.5 + s % 7 / 10, "learning_rate": 0.001,
                "epoch": s / 200}
        if s > 100:
            logs.update(loss=0.0, grad_norm=float("nan"))
        lines.append(_callback_line("4", logs))
    lines.append(" 100%|##########| 400/400 [00:04<00:00, 99.0it/s]")
    lines.append(str({"train_runtime": 4.0, "train_steps_per_second": 100.0, "epoch": 2.0}))
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    got = _points(log)
    assert sorted(got["train/loss"]) == list(range(1, 401))
    assert math.isnan(got["train/grad_norm"][400]) and got["train/grad_norm"][100] == 0.5 + 2 / 10


def _write(tmp_path: Path, version: str, steps: list[int], per_epoch: int,
           bar_after: bool = False, nan_from: int | None = None,
           closing: tuple[int, float] | None = None) -> Path:
    """A log of lines at ``steps`` as a version's ProgressCallback prints them (with the bar
    redrawn after each, as with python -u), and a closing bar and summary line."""
    lines = []
    for s in steps:
        logs = {"loss": 2.0 - s / 10000, "grad_norm": 0.5 + s % 7 / 10, "learning_rate": 0.001,
                "epoch": s / per_epoch}
        if nan_from is not None and s >= nan_from:
            logs.update(loss=0.0, grad_norm=float("nan"))
        lines.append(_callback_line(version, logs))
        if bar_after:
            lines.append(f" 10%|#         | {s}/{max(steps)} [00:01<00:09, 99.0it/s]")
    if closing:
        total, epoch = closing
        lines.append(f"100%|##########| {total}/{total} [00:09<00:00, 99.0it/s]")
        lines.append(str({"train_runtime": 9.0, "train_steps_per_second": total / 9.0,
                          "epoch": epoch}))
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    return log


def test_a_diverged_4x_run_with_a_constant_lr_keeps_its_repeated_lines(tmp_path: Path) -> None:
    # nan from step 21 at a constant lr: with 300 steps per epoch and the epoch to 2 decimals,
    # the same line comes 3 times in a row, as copies from 3 nodes would (a second review)
    log = _write(tmp_path, "4", list(range(1, 901)), 300, nan_from=21, closing=(900, 3.0))
    got = _points(log)
    assert sorted(got["train/loss"]) == list(range(1, 901))
    assert math.isnan(got["train/grad_norm"][21]) and not math.isnan(got["train/grad_norm"][20])


def test_a_resume_under_logging_strategy_epoch_is_seen(tmp_path: Path) -> None:
    # a line per epoch (25 steps); a crash at step 55 and a resume from checkpoint-30 logs
    # epoch 2 again: the epoch does not go back, it stops
    log = _write(tmp_path, "5", [25, 50, 50, 75, 100, 125, 150], 25, closing=(150, 6.0))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    steps = raw.points.filter(pl.col("tag") == "train/loss").get_column("step").to_list()
    assert steps == [25, 50, 50, 75, 100, 125, 150]


def test_the_bar_after_each_line_gives_the_steps_where_the_epoch_cannot(tmp_path: Path) -> None:
    # 4.x, 4,000 steps per epoch, every 5 steps: the first lines all print epoch 0.0, and a
    # resume from step 100 of a crash at 130 goes back less than the epoch shows
    steps = [*range(5, 131, 5), *range(105, 401, 5)]
    log = _write(tmp_path, "4", steps, 4000, bar_after=True)
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    assert raw.points.filter(pl.col("tag") == "train/loss").get_column("step").to_list() == steps
    assert raw.notes == ["steps from the training bar drawn after each line (it shows the "
                         "line's step)"]


def test_a_closing_epoch_printed_too_short_gives_no_steps_per_epoch(tmp_path: Path) -> None:
    # 4.x, a run of 100 steps at 4,000 steps per epoch ends at epoch 0.03 (0.025): 3,333 steps
    # per epoch would misplace every line. Counted in logging intervals, and said so.
    log = _write(tmp_path, "4", list(range(5, 101, 5)), 4000, closing=(100, 0.03))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (log,)))
    steps = raw.points.filter(pl.col("tag") == "train/loss").get_column("step").to_list()
    assert steps == list(range(1, 21))
    assert any("counted in logging intervals" in n for n in raw.notes)


def test_an_evaluation_between_logs_takes_the_bar_after_it(tmp_path: Path) -> None:
    # 4.x, eval_steps 7 and logging_steps 5 at 1,000 steps per epoch: the eval's epoch (0.01)
    # is the line's before it, but the bar redrawn after it shows its step
    lines = []
    for s in range(1, 71):
        if s % 5 == 0:
            lines.append(_callback_line("4", {"loss": 2.0, "grad_norm": 0.5,
                                              "learning_rate": 1e-3, "epoch": s / 1000}))
            lines.append(f" 10%|#   | {s}/70 [00:01<00:09, 9.9it/s]")
        if s % 7 == 0:
            lines.append(str({"eval_loss": 2.5 + s / 1000, "epoch": round(s / 1000, 2)}))
            lines.append(f" 10%|#   | {s}/70 [00:01<00:09, 9.9it/s]")
    log = tmp_path / "train.log"
    log.write_text("\n".join(lines) + "\n")
    got = _points(log)
    assert sorted(got["eval/loss"]) == list(range(7, 71, 7))
    assert sorted(got["train/loss"]) == list(range(5, 71, 5))


def test_epochs_that_jump_about_or_never_fit_cost_the_log_s_length(tmp_path: Path) -> None:
    # a hostile log: epochs going back on every other line (it was cut into 48,546 runs of
    # 100,000 lines, in 25 s), and epochs rising at random, off every pattern (100,000 lines
    # took 11.5 s, 1,000,000 would take 20 minutes: each line that broke the pattern was
    # checked against all the lines after it)
    import time

    rng = np.random.default_rng(1)
    jumpy = tmp_path / "jumpy.log"
    jumpy.write_text("".join(_callback_line("5", {"loss": 2.0, "grad_norm": 0.5,
                                                  "epoch": float(e)}) + "\n"
                             for e in rng.random(20000) * 5))
    start = time.perf_counter()
    runs = hf_log.read(Source(hf_log.FORMAT, "x", (jumpy,)))
    assert len(runs) == 1 and "go back 1000 times or more" in runs[0].notes[0]
    irregular = tmp_path / "irregular.log"
    irregular.write_text("".join(_callback_line("5", {"loss": 2.0, "grad_norm": 0.5,
                                                      "epoch": float(e)}) + "\n"
                                 for e in np.cumsum(rng.exponential(1.0, 200000)) / 1000))
    (raw,) = hf_log.read(Source(hf_log.FORMAT, "x", (irregular,)))
    steps = raw.points.filter(pl.col("tag") == "train/loss").get_column("step").to_numpy()
    assert steps.size == 200000 and (np.diff(steps) > 0).all()
    assert time.perf_counter() - start < 60
