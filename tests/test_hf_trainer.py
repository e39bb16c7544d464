"""Hugging Face trainer_state.json: written the way transformers' TrainerState.save_to_json does."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradaudit
from gradaudit.adapters import hf_trainer
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError
from gradaudit.series import RunSeries


@dataclass
class TrainerState:
    """The fields of transformers.TrainerState (transformers is not installed here)."""

    epoch: float | None = None
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    total_flos: float = 0
    log_history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)

    def save_to_json(self, path: Path) -> None:
        """As transformers writes it."""
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


MAX_STEPS = 100
LOG_EVERY = 5
EVAL_EVERY = 25
SAVE_EVERY = 50
STEPS_PER_EPOCH = 40


def _train(out: Path, *, final: bool = True) -> dict[str, dict[int, float]]:
    """Simulate a Trainer run: log, eval, save checkpoints; return what was logged per key."""
    rng = np.random.default_rng(1)
    state = TrainerState(
        max_steps=MAX_STEPS, logging_steps=LOG_EVERY, eval_steps=EVAL_EVERY,
        save_steps=SAVE_EVERY, train_batch_size=8, num_train_epochs=3,
        stateful_callbacks={"TrainerControl": {"args": {"should_save": True}, "attributes": {}}},
    )  # fmt: skip
    logged: dict[str, dict[int, float]] = {}
    for step in range(1, MAX_STEPS + 1):
        state.global_step = step
        state.epoch = step / STEPS_PER_EPOCH
        if step % LOG_EVERY == 0:
            grad_norm = float(rng.lognormal(0.0, 0.2))
            if step == 60:
                grad_norm = 250.0  # the spike
            if step == 35:
                grad_norm = float("nan")  # fp16 overflow step
            entry = {
                "epoch": round(state.epoch, 4),
                "grad_norm": grad_norm,
                "learning_rate": 5e-5 * (1 - step / MAX_STEPS),
                "loss": round(3.0 - step / 100 + float(rng.normal(0, 0.01)), 4),
                "step": step,
            }
            state.log_history.append(entry)
            for k, v in entry.items():
                if k != "step":
                    logged.setdefault(k, {})[step] = v
        if step % EVAL_EVERY == 0:
            entry = {
                "epoch": round(state.epoch, 4),
                "eval_loss": 3.1 - step / 100,
                "eval_runtime": 1.5,
                "eval_samples_per_second": 100.0,
                "eval_steps_per_second": 12.5,
                "step": step,
            }
            state.log_history.append(entry)
            logged.setdefault("eval_loss", {})[step] = entry["eval_loss"]
            if state.best_metric is None or entry["eval_loss"] < state.best_metric:
                state.best_metric = entry["eval_loss"]
                state.best_model_checkpoint = str(out / f"checkpoint-{step}")
        if step % SAVE_EVERY == 0:
            state.total_flos = 1e12 * step
            state.save_to_json(out / f"checkpoint-{step}" / "trainer_state.json")
    if final:
        state.log_history.append(
            {
                "epoch": state.epoch,
                "step": state.global_step,
                "total_flos": state.total_flos,
                "train_loss": 2.5,
                "train_runtime": 123.4,
                "train_samples_per_second": 6.5,
                "train_steps_per_second": 0.8,
            }
        )
        state.save_to_json(out / "trainer_state.json")
    return logged


def _assert_series(run: RunSeries, tag: str, expected: dict[int, float]) -> None:
    steps, values = run.series(tag)
    assert steps.tolist() == sorted(expected)
    np.testing.assert_array_equal(values, [expected[s] for s in sorted(expected)])


def test_output_dir_is_one_run_with_hf_tags(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "out"
    logged = _train(out)
    runs = gradaudit.read_runs([tmp_path / "runs"])
    assert [r.name for r in runs] == ["out"]
    (run,) = runs
    assert run.format == "hf-trainer-state"
    assert run.grad_norm_tag == "train/grad_norm"
    assert run.loss_tag == "train/loss"
    assert run.lr_tag == "train/learning_rate"
    _assert_series(run, "train/grad_norm", logged["grad_norm"])
    _assert_series(run, "train/loss", logged["loss"])
    _assert_series(run, "train/learning_rate", logged["learning_rate"])
    _assert_series(run, "eval/loss", logged["eval_loss"])
    steps, gn = run.series("train/grad_norm")
    assert math.isnan(gn[steps.tolist().index(35)])
    assert gn[steps.tolist().index(60)] == 250.0
    tags = set(run.tags())
    assert {"train/epoch", "eval/runtime", "eval/samples_per_second"} <= tags
    # The final summary entry is no series point.
    assert not tags & {"train/train_loss", "train/train_runtime", "train/total_flos"}
    # The top-level copy wins the tie with checkpoint-100 and is named in a note.
    assert run.files == [str(out / "trainer_state.json")]
    assert any(str(out / "trainer_state.json") in n and "3 trainer_state.json" in n
               for n in run.notes)  # fmt: skip
    # Eval entries repeat the epoch of the training entry: no step is "replaced".
    assert not any("written again later" in n for n in run.notes)


def test_crashed_run_uses_the_latest_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    logged = _train(out, final=False)
    runs = gradaudit.read_runs([tmp_path])
    assert [r.name for r in runs] == ["out"]
    (run,) = runs
    assert run.files == [str(out / "checkpoint-100" / "trainer_state.json")]
    _assert_series(run, "train/grad_norm", logged["grad_norm"])


def test_more_advanced_checkpoint_beats_stale_top_level(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _train(out)
    stale = json.loads((out / "checkpoint-50" / "trainer_state.json").read_text())
    (out / "trainer_state.json").write_text(json.dumps(stale, indent=2, sort_keys=True))
    # written by an earlier, shorter run (the later one crashed before saving its state)
    os.utime(out / "trainer_state.json", (1_000_000_000, 1_000_000_000))
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.files == [str(out / "checkpoint-100" / "trainer_state.json")]
    assert run.series("train/loss")[0][-1] == 100


def test_truncated_copy_falls_back_with_a_problem(tmp_path: Path) -> None:
    out = tmp_path / "out"
    logged = _train(out)
    top = out / "trainer_state.json"
    text = top.read_text()
    top.write_text(text[: len(text) // 2])  # a crash while writing
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.files == [str(out / "checkpoint-100" / "trainer_state.json")]
    assert any("not valid JSON" in p.message for p in run.problems)
    _assert_series(run, "train/grad_norm", logged["grad_norm"])


def test_single_file_and_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _train(out)
    path = out / "trainer_state.json"
    (raw,) = hf_trainer.read(Source(hf_trainer.FORMAT, ".", (path,)))
    assert raw.files == [path]
    bad = tmp_path / "bad" / "trainer_state.json"
    bad.parent.mkdir()
    bad.write_text('{"log_history": 5}')
    with pytest.raises(ReadError, match="no log_history"):
        hf_trainer.read(Source(hf_trainer.FORMAT, ".", (bad,)))
    bad.write_text("")
    with pytest.raises(ReadError, match="empty"):
        hf_trainer.read(Source(hf_trainer.FORMAT, ".", (bad,)))
    monkeypatch.setattr(hf_trainer, "MAX_BYTES", 1000)
    with pytest.raises(ReadError, match="MiB"):
        hf_trainer.read(Source(hf_trainer.FORMAT, ".", (path,)))


def test_entries_with_numbers_out_of_range_lose_only_themselves(tmp_path: Path) -> None:
    # one entry whose step is 2**63, -2**63 - 1 or 1e300, or whose loss has 400 digits, failed
    # the whole run with a TypeError or OverflowError (found by a fuzzing review)
    out = tmp_path / "out"
    expected = _train(out)
    path = out / "trainer_state.json"
    state = json.loads(path.read_text())
    state["log_history"] += [{"loss": 1.0, "step": 2**63}, {"loss": 1.0, "step": -(2**63) - 1},
                             {"loss": 1.0, "step": 1e300},
                             {"loss": 10**400, "grad_norm": 1.0, "step": MAX_STEPS + 1}]
    path.write_text(json.dumps(state))
    (run,) = gradaudit.read_runs([out])
    loss = dict(zip(*(x.tolist() for x in run.series("train/loss")), strict=True))
    assert loss[MAX_STEPS + 1] == math.inf
    assert {s: v for s, v in loss.items() if s <= MAX_STEPS} == expected["loss"]
    assert any("3 log_history entries without a usable step" in p.message for p in run.problems)


def test_claim_names(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint-500"
    ck.mkdir()
    (ck / "trainer_state.json").write_text("{}")
    (ck / "config.json").write_text("{}")
    (tmp_path / "trainer_state.json").write_text("{}")
    assert hf_trainer.claim(ck, sorted(ck.iterdir())) == [
        Source(hf_trainer.FORMAT, "..", (ck / "trainer_state.json",))
    ]
    assert hf_trainer.claim(tmp_path, [tmp_path / "trainer_state.json"]) == [
        Source(hf_trainer.FORMAT, ".", (tmp_path / "trainer_state.json",))
    ]


def _bad_batch_run(out: Path) -> None:
    """1500 steps logged every 10 as the Trainer does: ``loss`` the mean since the last log,
    ``grad_norm`` the logging step's own; one shuffled-label batch at step 705."""
    rng = np.random.default_rng(7)
    per_step = 0.2 * np.exp(rng.normal(0, 0.3, 1501))
    per_step[705] = 3.3
    state = TrainerState(max_steps=1500, logging_steps=10)
    for step in range(10, 1501, 10):
        state.log_history.append({
            "epoch": step / 1500, "grad_norm": float(rng.lognormal(0.0, 0.2)),
            "learning_rate": 1e-3, "loss": round(float(per_step[step - 9:step + 1].mean()), 4),
            "step": step})
    state.global_step = 1500
    state.save_to_json(out / "trainer_state.json")


def test_one_bad_batch_in_the_trainers_interval_mean_loss_is_found(tmp_path: Path) -> None:
    _bad_batch_run(tmp_path / "out")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.interval_means == frozenset({"train/loss"})
    audit = gradaudit.audit_run(run)
    (e,) = audit.episodes
    assert e.onset_step == 710 and e.kind == "loss_spike" and e.severity == "warning"
    # the grad norm is the logging step's own: the report does not claim it stayed healthy
    assert "logged every 10 steps, stayed healthy at the logged steps" in e.reason
    assert "log the grad norm every step" in audit.clip.advice
    # the same points without the format's word that they are interval means: one high point
    # that the next has forgotten is an ordinary hard batch of a per-step loss
    run.interval_means = frozenset()
    assert gradaudit.audit_run(run).episodes == []


def test_a_lasting_loss_jump_between_logged_grad_norms_is_an_explosion() -> None:
    # written by transformers' Trainer (benchmarks/detection/framework_probe.py, seed 1: a
    # 2-layer GPT-2, logging_steps=10), the lr 30x for steps 400-419 in "fault", not in its twin
    # "clean": the loss (an interval mean) jumps +16 % at step 410 and stays +6 % over the next
    # 200 steps against the twin; the grad norm at the logged steps rose only 2.6x. A spike
    # between two logged grad norms is unseen: nothing rules an explosion out, and the loss was
    # harmed (it was a warning). The twin has no episode
    data = Path(__file__).parent / "data" / "hf-lr-spike-every10"
    (fault,) = gradaudit.read_runs([data / "fault"])
    (e,) = gradaudit.audit_run(fault).episodes
    assert (e.onset_step, e.kind, e.severity) == (410, "loss_spike", "explosion"), e.reason
    assert "a spike between two of them would be unseen" in e.reason
    _, twin = gradaudit.read_runs([data / "clean"])[0].series("train/loss")
    _, loss = fault.series("train/loss")
    assert 0.05 < float(np.mean(loss[41:61] - twin[41:61])) / float(np.mean(twin[35:40])) < 0.1
    (clean,) = gradaudit.read_runs([data / "clean"])
    assert gradaudit.audit_run(clean).episodes == []


def test_the_trainers_interval_mean_loss_is_known_in_tensorboard_too(tmp_path: Path) -> None:
    """The Trainer's TensorBoard callback writes the same interval-mean ``loss`` as
    ``train/loss`` beside ``train/learning_rate`` and ``train/epoch``: the one bad batch is
    found there as in trainer_state.json; under other names it is an ordinary hard batch."""
    from tensorboardX import SummaryWriter

    def write_scalars(folder: Path, series: dict[str, dict[int, float]]) -> None:
        writer = SummaryWriter(str(folder), flush_secs=3600)
        for tag, points in series.items():
            for step, value in points.items():
                writer.add_scalar(tag, value, step)
        writer.close()

    rng = np.random.default_rng(7)
    per_step = 0.2 * np.exp(rng.normal(0, 0.3, 1501))
    per_step[705] = 3.3
    logs = {step: {"loss": float(per_step[step - 9:step + 1].mean()),
                   "grad_norm": float(rng.lognormal(0.0, 0.2)), "learning_rate": 1e-3,
                   "epoch": step / 1500} for step in range(10, 1501, 10)}
    write_scalars(tmp_path / "hf", {f"train/{k}": {s: v[k] for s, v in logs.items()}
                                    for k in ("loss", "grad_norm", "learning_rate", "epoch")})
    write_scalars(tmp_path / "other", {
        "loss": {s: v["loss"] for s, v in logs.items()},
        "grad_norm": {s: v["grad_norm"] for s, v in logs.items()},
        "lr": {s: v["learning_rate"] for s, v in logs.items()}})
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert runs["hf"].interval_means == frozenset({"train/loss"})
    assert any("train/loss: read as a mean over each logging interval" in n
               for n in runs["hf"].notes)
    (e,) = gradaudit.audit_run(runs["hf"]).episodes
    assert e.onset_step == 710 and e.kind == "loss_spike"
    assert runs["other"].interval_means == frozenset()
    assert gradaudit.audit_run(runs["other"]).episodes == []


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    _bad_batch_run(tmp_path / "out")
    path = tmp_path / "out" / "trainer_state.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("train/loss")[0].size == 150



def test_a_reused_output_folder_reads_the_newest_copy_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = out / "checkpoint-2000"
    old.mkdir(parents=True)
    stale = TrainerState(max_steps=2000, logging_steps=10, global_step=2000)
    stale.log_history = [{"step": s, "loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3,
                          "epoch": s / 2000} for s in range(10, 2001, 10)]
    stale.save_to_json(old / "trainer_state.json")
    os.utime(old / "trainer_state.json", (1_000_000_000, 1_000_000_000))  # an earlier run's
    _bad_batch_run(out)  # this run: 1500 steps, its bad batch at 705
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("train/loss")[0].max() == 1500
    assert any("the copies disagree" in n for n in run.notes)


def test_a_run_resumed_and_saved_further_is_no_disagreement(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "checkpoint-1500").mkdir(parents=True)
    hist = [{"step": s, "loss": 1.0 + s / 1e4, "grad_norm": 1.0, "learning_rate": 1e-3,
             "epoch": s / 1500} for s in range(10, 1501, 10)]
    TrainerState(global_step=1000, log_history=hist[:100]).save_to_json(out / "trainer_state.json")
    os.utime(out / "trainer_state.json", (1_000_000_000, 1_000_000_000))
    TrainerState(global_step=1500, log_history=hist).save_to_json(
        out / "checkpoint-1500" / "trainer_state.json")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("train/loss")[0].max() == 1500
    assert not any("disagree" in n for n in run.notes)


def test_an_earlier_longer_runs_top_level_copy_is_not_read(tmp_path: Path) -> None:
    # out/ held a finished 2000-step run; a new run in the same folder saved checkpoint-500 and
    # checkpoint-1000 and crashed: the top-level copy (step 2000) is the earlier run's
    out = tmp_path / "out"
    out.mkdir()
    stale = TrainerState(max_steps=2000, logging_steps=10, global_step=2000)
    stale.log_history = [{"step": s, "loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3,
                          "epoch": s / 2000} for s in range(10, 2001, 10)]
    stale.save_to_json(out / "trainer_state.json")
    os.utime(out / "trainer_state.json", (1_000_000_000, 1_000_000_000))
    hist = [{"step": s, "loss": 2.0 + s / 1e4, "grad_norm": 0.5, "learning_rate": 1e-3,
             "epoch": s / 2000} for s in range(10, 1001, 10)]
    for n in (500, 1000):
        (out / f"checkpoint-{n}").mkdir()
        TrainerState(global_step=n, log_history=hist[: n // 10]).save_to_json(
            out / f"checkpoint-{n}" / "trainer_state.json")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.files == [str(out / "checkpoint-1000" / "trainer_state.json")]
    assert run.series("train/loss")[0].max() == 1000
    assert any("the copies disagree" in n and "written later" in n for n in run.notes)


def test_a_bad_batch_in_the_detectors_warm_up_is_found():
    # written by transformers 5.24's Trainer (a 2-layer GPT-2 from scratch, logging_steps=10,
    # one batch of garbage tokens at step 200): the logged loss is 29.6 at step 210 against
    # 1.8, its 21st point. The detectors need 25 points for a level, so the first 250 steps
    # (12,500 at the Trainer's default logging_steps=500) went unjudged and the run read "ok".
    import gradaudit

    (run,) = gradaudit.read_runs([Path(__file__).parent / "data" / "hf-logging-steps-10"])
    steps, loss = run.series("train/loss")
    assert steps[20] == 210 and loss[20] > 10 * loss[19]
    a = gradaudit.audit_run(run)
    assert [e.onset_step for e in a.episodes] == [210]
    assert a.episodes[0].kind == "loss_spike"
    # and the report says how long the warm-up is
    assert any("first 25 usable logged points (steps 10-259) are the detectors' warm-up" in n
               for n in a.notes)


def test_a_trainer_runs_tensorboard_copy_is_not_a_second_run(tmp_path: Path) -> None:
    # report_to="tensorboard" writes the log history again into <output_dir>/runs/<date>_<host>:
    # one training run was audited twice (3 explosions reported for 2 runs, and counted twice
    # in the batch clip). A TensorBoard run anywhere else stays a run of its own.
    from tensorboardX import SummaryWriter

    out = tmp_path / "gpt2-lrspike"
    out.mkdir()
    state = Path(__file__).parent / "data" / "hf-logging-steps-10" / "trainer_state.json"
    shutil.copy(state, out / "trainer_state.json")
    # the copy, a run of one's own elsewhere, and an earlier run left in the reused output folder
    for folder, scale in ((out / "runs" / "Nov27_08-57-26_vm", 1.0),
                          (tmp_path / "other" / "runs" / "x", 1.0),
                          (out / "runs" / "Nov26_10-00-00_vm", 1.5)):
        writer = SummaryWriter(str(folder), flush_secs=3600)
        for entry in json.loads(state.read_text())["log_history"]:
            if "loss" in entry:
                writer.add_scalar("train/loss", scale * entry["loss"], entry["step"])
                writer.add_scalar("train/grad_norm", entry["grad_norm"], entry["step"])
        writer.close()
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert sorted(runs) == ["gpt2-lrspike", "gpt2-lrspike/runs/Nov26_10-00-00_vm",
                            "other/runs/x"]
    assert runs["gpt2-lrspike"].format == "hf-trainer-state"
    assert any("gpt2-lrspike/runs/Nov27_08-57-26_vm is this Trainer run's copy" in n
               for n in runs["gpt2-lrspike"].notes)
    # scanned from the output folder itself, or with the shell's out/* (other names, same pairs)
    for paths in ([out], sorted(out.iterdir())):
        found = sorted((r.format, r.name.rsplit("/", 1)[-1]) for r in gradaudit.read_runs(paths))
        assert [f for f, _ in found] == ["hf-trainer-state", "tensorboard"]
        assert found[1][1] == "Nov26_10-00-00_vm"


def _history(steps: range, loss: dict[int, float], grad_norm: dict[int, float]) -> list[dict]:
    """The Trainer's training log entries for ``steps``."""
    return [{"epoch": s / 100, "grad_norm": grad_norm[s], "learning_rate": 1e-3 * (1 - s / 100),
             "loss": loss[s], "step": s} for s in steps]


def _tensorboard_launch(folder: Path, entries: list[dict]) -> None:
    """What ``report_to="tensorboard"`` writes for one launch (its TensorBoardCallback)."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder), flush_secs=3600)
    for entry in entries:
        for key, value in entry.items():
            if key != "step":
                writer.add_scalar(f"train/{key}", value, entry["step"])
    writer.close()


def _losses(seed: int) -> tuple[dict[int, float], dict[int, float]]:
    rng = np.random.default_rng(seed)
    loss = {s: float(np.float32(3.0 - s / 100 + rng.normal(0, 0.01))) for s in range(1, 61)}
    grad = {s: float(np.float32(rng.lognormal(0.0, 0.2))) for s in range(1, 61)}
    return loss, grad


def _trainer_output(out: Path, loss: dict[int, float], grad: dict[int, float]) -> Path:
    """A Trainer's output folder for 45 steps saved every 10 (and at the end): its
    checkpoints' trainer_state.json and the final one."""
    state = TrainerState(global_step=45, max_steps=45, logging_steps=1, save_steps=10)
    for step in (10, 20, 30, 40, 45):
        state.global_step = step
        state.log_history = _history(range(1, step + 1), loss, grad)
        state.save_to_json(out / f"checkpoint-{step}" / "trainer_state.json")
    state.save_to_json(out / "trainer_state.json")
    return out


def test_a_resumed_trainer_runs_tensorboard_launches_are_its_copies(tmp_path: Path) -> None:
    # A run saved every 10 steps stopped at 30 and resumed from checkpoint-20 to 45: the Trainer
    # writes one TensorBoard folder per launch (1-30, then 21-45, identical to trainer_state.json
    # where it has them), the first launch's 23-30 trained again with other values. Each launch
    # was reported as a run of its own: one job, three runs, its findings counted up to 3 times.
    loss, grad = _losses(3)
    first = {**loss, **{s: loss[s] + 0.01 for s in range(23, 31)}}
    out = _trainer_output(tmp_path / "out", loss, grad)
    _tensorboard_launch(out / "runs" / "Nov29_07-27-53_vm", _history(range(1, 31), first, grad))
    _tensorboard_launch(out / "runs" / "Nov29_07-28-10_vm", _history(range(21, 46), loss, grad))
    # a SummaryWriter of one's own beside them, on its own loss: a run of its own
    _tensorboard_launch(out / "runs" / "mine", _history(range(1, 46), first | {1: 9.0}, grad))
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert sorted(runs) == ["out", "out/runs/mine"]
    assert runs["out"].format == "hf-trainer-state"
    assert runs["out"].files == [str(out / "trainer_state.json")]
    notes = " | ".join(runs["out"].notes)
    assert ("the TensorBoard logs in out/runs/Nov29_07-27-53_vm, out/runs/Nov29_07-28-10_vm "
            "are this Trainer run's copies, one per launch") in notes
    assert ("out/runs/Nov29_07-27-53_vm was cut short by a resume: its steps 21-30 were trained "
            "again after it, with a training loss within 1% of the first pass's, and are read "
            "from the later launch") in notes


@pytest.mark.parametrize("loss_up", [6.0, 0.005])
def test_a_first_pass_that_blew_up_before_a_resume_stays_a_run(tmp_path: Path,
                                                               loss_up: float) -> None:
    # The run blew up at step 33 and crashed at 35; resumed from checkpoint-30, it trained 31-45
    # again, healthy. Its first launch's TensorBoard log agrees with trainer_state.json up to 30:
    # dropped as a copy, the explosion was audited nowhere and the gate passed (a review). With
    # clipping on, the loss may move by 0.5 % only: the grad norm tells too.
    loss, grad = _losses(7)
    blown_loss = {**loss, **{s: loss[s] * (1 + loss_up) for s in range(33, 36)}}
    blown_grad = {**grad, **{s: 500.0 for s in range(33, 36)}}
    out = _trainer_output(tmp_path / "out", loss, grad)
    _tensorboard_launch(out / "runs" / "Nov29_07-00-00_vm",
                        _history(range(1, 36), blown_loss, blown_grad))
    _tensorboard_launch(out / "runs" / "Nov29_07-30-00_vm", _history(range(31, 46), loss, grad))
    result = gradaudit.scan([tmp_path])
    runs = {a.run: a for a in result.runs}
    assert sorted(runs) == ["out", "out/runs/Nov29_07-00-00_vm"]
    assert runs["out"].status == "ok"
    first = runs["out/runs/Nov29_07-00-00_vm"]
    assert first.status == "explosion" and first.episodes[0].onset_step == 33
    assert any(n.startswith("the first pass of the Trainer run out (report_to='tensorboard'), "
                            "cut short by a resume: its steps 31-35") for n in first.notes)
    assert any("out/runs/Nov29_07-30-00_vm is this Trainer run's copy" in n
               for n in runs["out"].notes)
    assert result.exit_code == 1


def test_a_trainer_run_that_crashed_after_its_last_save_is_read_from_its_tensorboard_log(
        tmp_path: Path) -> None:
    # Saved every 10 steps, the run blew up at step 35 and crashed at 37 without save_state():
    # checkpoint-30/trainer_state.json holds 1-30, its TensorBoard log 1-37. Both were runs;
    # dropping the log as a copy would lose the explosion. The log is read, as the Trainer run.
    loss, grad = _losses(5)
    for s in range(35, 38):
        grad[s], loss[s] = 400.0 * (s - 34), 9.0 + s
    out = tmp_path / "out"
    state = TrainerState(max_steps=100, logging_steps=1, save_steps=10)
    for step in (10, 20, 30):
        state.global_step = step
        state.log_history = _history(range(1, step + 1), loss, grad)
        state.save_to_json(out / f"checkpoint-{step}" / "trainer_state.json")
    _tensorboard_launch(out / "runs" / "Nov29_08-00-00_vm", _history(range(1, 38), loss, grad))
    (run,) = gradaudit.read_runs([tmp_path])
    assert (run.name, run.format) == ("out", "tensorboard")
    _assert_series(run, "train/loss", {s: loss[s] for s in range(1, 38)})
    assert any(n.startswith("read from the Trainer's TensorBoard log (out/runs/Nov29_08-00-00_vm;"
                            " report_to='tensorboard'): it goes on to step 37, past "
                            f"{out / 'checkpoint-30' / 'trainer_state.json'} (step 30")
               for n in run.notes)
    assert [e.onset_step for e in gradaudit.audit_run(run).episodes] == [35]
    # resumed from checkpoint-20 before that: both launches read, the later write winning
    _tensorboard_launch(out / "runs" / "Nov29_07-00-00_vm",
                        _history(range(1, 26), {**loss, 23: 5.0, 24: 5.0, 25: 5.0}, grad))
    shutil.rmtree(out / "runs" / "Nov29_08-00-00_vm")
    _tensorboard_launch(out / "runs" / "Nov29_07-30-00_vm", _history(range(21, 38), loss, grad))
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert sorted(runs) == ["out", "out#pass1"]
    run = runs["out"]
    assert run.format == "tensorboard" and len(run.files) == 2
    _assert_series(run, "train/loss", {s: loss[s] for s in range(1, 38)})
    # the first launch's loss at 23-25 stands out from the steps trained again: its own run
    _assert_series(runs["out#pass1"], "train/loss",
                   {**{s: loss[s] for s in range(1, 23)}, 23: 5.0, 24: 5.0, 25: 5.0})
    # the first launch's folder gone, the log no longer holds steps 1-20: it stays a run
    shutil.rmtree(out / "runs" / "Nov29_07-00-00_vm")
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert sorted(runs) == ["out", "out/runs/Nov29_07-30-00_vm"]
    assert runs["out"].format == "hf-trainer-state"
    assert not any("TensorBoard" in n for n in runs["out"].notes)
    assert any("kept as a run, as it goes on past" in n
               for n in runs["out/runs/Nov29_07-30-00_vm"].notes)
