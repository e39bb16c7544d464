"""Passes a resume cut short (gradaudit.resumes): a run that blew up, crashed and was restarted
from an earlier checkpoint into the same log keeps what it crashed on as a run of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboardX import SummaryWriter

import gradaudit
from gradaudit.cmdline import main

RNG = np.random.default_rng(7)
NOISE = RNG.normal(0.0, 1.0, 4000)


def _loss(s: int) -> float:
    return 2.0 / (1.0 + s / 400.0) * (1.0 + 0.02 * NOISE[s])


def _grad(s: int) -> float:
    return 1.0 + 0.1 * NOISE[(s * 7) % 4000]


def _blown_loss(s: int, at: int) -> float:
    return _loss(s) * (1.0 if s < at else 8.0 + (s - at) / 10.0)


def _blown_grad(s: int, at: int) -> float:
    return _grad(s) * (1.0 if s < at else 100.0)


def _write(folder: Path, steps: range, loss, grad, grad_first: bool = False) -> None:
    """One launch: a new event file in ``folder`` (names start with the time in seconds)."""
    if any(folder.glob("*tfevents*")):
        time.sleep(1.1)
    w = SummaryWriter(str(folder), flush_secs=3600, max_queue=100_000)
    for s in steps:
        if grad_first:
            w.add_scalar("train/grad_norm", grad(s), s)
        w.add_scalar("train/loss", loss(s), s)
        if not grad_first:
            w.add_scalar("train/grad_norm", grad(s), s)
    w.close()


def _scan(tmp_path: Path, capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    code = main(["scan", *map(str, paths), "--format", "json", "--out", str(out)])
    capsys.readouterr()
    return code, {r["run"]: r for r in json.loads(out.read_text())["runs"]}


def test_an_explosion_rolled_back_past_is_audited_as_the_pass_it_happened_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "logs" / "job"
    # blew up at 900 and crashed at 999; restarted from the checkpoint at 800 (no blow-up)
    _write(run, range(1000), lambda s: _blown_loss(s, 900), lambda s: _blown_grad(s, 900))
    _write(run, range(800, 1500), _loss, _grad)
    code, runs = _scan(tmp_path, capsys, run.parent)
    assert set(runs) == {"job", "job#pass1"}
    assert code == 1  # the gate fails on what the run crashed on (it passed over it before)
    first = runs["job#pass1"]
    assert first["status"] == "explosion"
    assert [e["onset_step"] for e in first["episodes"]] == [900]
    assert first["last_step"] == 999
    assert any("cut short by a resume from step 800" in n for n in first["notes"])
    assert runs["job"]["status"] == "ok"
    assert runs["job"]["last_step"] == 1499
    assert any("job#pass1 holds this run's pass up to step 999" in n
               for n in runs["job"]["notes"])


def test_a_resume_that_trains_the_same_steps_again_alike_is_one_run(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "job"
    _write(run, range(1000), _loss, _grad)
    # a resume's own nondeterminism: 0.3 % on the loss, 20 % on the grad norm
    _write(run, range(800, 1500), lambda s: _loss(s) * 1.003, lambda s: _grad(s) * 1.2)
    (only,) = gradaudit.read_runs([run.parent])
    assert only.name == "job"
    assert any("800-999 were written again later" in n for n in only.notes), only.notes


def test_the_steps_a_later_pass_never_reached_keep_their_pass(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "job"
    _write(run, range(1000), _loss, _grad)
    _write(run, range(800, 900), _loss, _grad)  # the same steps again, then stopped at 899
    runs = {r.name: r for r in gradaudit.read_runs([run.parent])}
    assert set(runs) == {"job", "job#pass1"}
    assert runs["job#pass1"].series("train/loss")[0][-1] == 999
    assert any("it holds 100 steps past the later pass" in n
               for n in runs["job#pass1"].notes), runs["job#pass1"].notes


@pytest.mark.parametrize("grad_first", [True, False])
def test_each_rewind_is_a_pass_as_the_run_stood_then(tmp_path: Path, grad_first: bool) -> None:
    run = tmp_path / "logs" / "job"
    # three launches: blew up at 500 (crashed at 599), resumed from 400, blew up at 900 (crashed
    # at 999), resumed from 800; the resumed processes write the grad norm before the loss, or
    # after it (then the second pass took the first launch's grad norm: a review)
    _write(run, range(600), lambda s: _blown_loss(s, 500), lambda s: _blown_grad(s, 500))
    _write(run, range(400, 1000), lambda s: _blown_loss(s, 900), lambda s: _blown_grad(s, 900),
           grad_first=grad_first)
    _write(run, range(800, 1500), _loss, _grad, grad_first=grad_first)
    runs = {r.name: r for r in gradaudit.read_runs([run.parent])}
    assert set(runs) == {"job", "job#pass1", "job#pass2"}
    for name, blown, end in (("job#pass1", 500, 599), ("job#pass2", 900, 999)):
        for tag, value in (("train/loss", _blown_loss), ("train/grad_norm", _blown_grad)):
            steps, values = runs[name].series(tag)
            assert steps.tolist() == list(range(end + 1)), (name, tag)
            # the pass as it stood: its own values from the step before its blow-up on
            assert values[blown - 1:].tolist() == pytest.approx(
                [value(s, blown) for s in range(blown - 1, end + 1)], rel=1e-6), (name, tag)
    steps, values = runs["job"].series("train/grad_norm")
    assert steps.tolist() == list(range(1500))
    assert values.max() < 3.0


def test_a_table_a_resumed_run_was_appended_to(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(s, _blown_loss(s, 900), _blown_grad(s, 900)) for s in range(1000)]
    rows += [(s, _loss(s), _grad(s)) for s in range(800, 1500)]
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("step,loss,grad_norm\n"
                    + "".join(f"{s},{float(a)!r},{float(b)!r}\n" for s, a, b in rows))
    code, runs = _scan(tmp_path, capsys, path.parent)
    assert code == 1
    assert set(runs) == {"metrics.csv", "metrics.csv#pass1"}, set(runs)
    assert runs["metrics.csv#pass1"]["status"] == "explosion"
    assert runs["metrics.csv"]["status"] == "ok"


def test_a_resume_that_draws_other_batches_is_one_run(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "job"
    _write(run, range(1000), _loss, _grad)
    # the restarted job shuffles anew: each step's loss and grad norm move by their noise
    other = np.random.default_rng(8).normal(0.0, 1.0, 4000)
    _write(run, range(800, 1500), lambda s: 2.0 / (1.0 + s / 400.0) * (1.0 + 0.02 * other[s]),
           lambda s: 1.0 + 0.1 * other[(s * 7) % 4000])
    (only,) = gradaudit.read_runs([run.parent])
    assert only.name == "job"


def _cell(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _table(tmp_path: Path, rows: list[tuple[int, float | None, float | None]]) -> Path:
    """A metrics.csv a resumed job appended to: ``rows`` of (step, loss, grad norm) in write
    order (None: not logged on that row)."""
    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("step,loss,grad_norm\n" + "".join(
        f"{s},{_cell(a)},{_cell(b)}\n" for s, a, b in rows))
    return path.parent


def _rows(steps, blown_at: int | None = None):
    at = 10**9 if blown_at is None else blown_at
    return [(s, _blown_loss(s, at), _blown_grad(s, at)) for s in steps]


def test_a_blow_up_in_a_pass_that_never_got_past_the_one_before(tmp_path: Path) -> None:
    # preempted at 999, resumed from 800, blew up at 900 and crashed at 950, resumed from 800
    # again: the second rewind starts where the first had not yet caught up (it was not seen)
    rows = _rows(range(1000)) + _rows(range(800, 951), 900) + _rows(range(800, 1500))
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    assert set(runs) == {"metrics.csv", "metrics.csv#pass2"}
    steps, values = runs["metrics.csv#pass2"].series("grad_norm")
    assert steps[-1] == 950 and values[steps >= 900].min() > 50


def test_a_rewind_seen_in_the_grad_norm_only(tmp_path: Path) -> None:
    # the loss logged every 100 steps never goes back (its next write is at 1000); the grad
    # norm, every step, blew up at 960 and went back to 950
    rows = [(s, _blown_loss(s, 960) if s % 100 == 0 else None, _blown_grad(s, 960))
            for s in range(1000)]
    rows += [(s, _loss(s) if s % 100 == 0 else None, _grad(s)) for s in range(950, 1500)]
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    assert set(runs) == {"metrics.csv", "metrics.csv#pass1"}
    assert runs["metrics.csv#pass1"].series("grad_norm")[1][-30:].min() > 50


def test_a_blow_up_after_many_preemptions_is_found(tmp_path: Path) -> None:
    # 30 preemptions, each going back 50 steps and training them again alike, then a blow-up
    rows, at = [], 0
    for _ in range(30):
        rows += _rows(range(at, at + 100))
        at += 50
    rows += _rows(range(at, at + 100), at + 60) + _rows(range(at + 50, at + 400))
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    assert set(runs) == {"metrics.csv", "metrics.csv#pass31"}


def test_ordinary_resumes_of_a_noisy_run_and_an_overflow_step_are_no_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for seed in range(40):
        # a noisy grad norm (lognormal, sigma 0.5), rewinds of a few logged points, other
        # batches after each: the highest of a few norms is often twice another few's
        rows, at = [], 0
        for _ in range(6):
            rows += [(s, 1.0 + 0.05 * rng.normal(), float(np.exp(rng.normal(0, 0.5))))
                     for s in range(at, at + 40)]
            at += 37
        folder = tmp_path / f"s{seed}"
        (folder / "logs").mkdir(parents=True)
        runs = gradaudit.read_runs([_table(folder, rows)])
        assert [r.name for r in runs] == ["metrics.csv"], (seed, runs[-1].notes)
    # one fp16 overflow step (inf) in the steps trained again: skipped by the optimizer
    rows = _rows(range(1000))
    rows[900] = (900, _loss(900), float("inf"))
    rows += _rows(range(800, 1500))
    assert [r.name for r in gradaudit.read_runs([_table(tmp_path, rows)])] == ["metrics.csv"]


def test_a_step_counter_that_restarts_every_epoch_is_one_run(tmp_path: Path) -> None:
    # logged against the batch index: the step goes back to 0 at each of 20 epochs, the loss
    # lower each time - no resume from a checkpoint, and no pass per epoch
    rows = [(s, 2.0 / (1 + epoch) + 0.01 * NOISE[s], _grad(s))
            for epoch in range(20) for s in range(100)]
    assert [r.name for r in gradaudit.read_runs([_table(tmp_path, rows)])] == ["metrics.csv"]


def test_a_table_whose_grad_norm_is_logged_sparsely_keeps_the_pass_s_own(tmp_path: Path) -> None:
    # the grad norm every 100 steps never goes below a step it wrote: after a restart from 850
    # it writes 900 again. The pass took the later pass's 900 (healthy) for its own (100x), and
    # read the blow-up as a loss spike "with no grad-norm rise" (a review)
    rows = [(s, _blown_loss(s, 900), _blown_grad(s, 900) if s % 100 == 0 else None)
            for s in range(1000)]
    rows += [(s, _loss(s), _grad(s) if s % 100 == 0 else None) for s in range(850, 3000)]
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    steps, values = runs["metrics.csv#pass1"].series("grad_norm")
    assert steps[-1] == 900 and values[-1] > 50


def test_an_overflow_in_the_last_step_before_a_preemption_is_no_pass(tmp_path: Path) -> None:
    rows = _rows(range(1000))
    rows[999] = (999, _loss(999), float("inf"))  # fp16: skipped; then preempted
    rows += _rows(range(800, 1500))
    assert [r.name for r in gradaudit.read_runs([_table(tmp_path, rows)])] == ["metrics.csv"]


def test_a_crash_to_nan_logged_every_20_steps_is_a_pass(tmp_path: Path) -> None:
    # two NaN points to the pass's end, the loss logged every 20 steps: non-finite for good
    nan = float("nan")
    rows = [(s, _loss(s) if s < 960 else nan, _grad(s) if s < 960 else nan)
            for s in range(0, 1000, 20)]
    rows += [(s, _loss(s), _grad(s)) for s in range(800, 1500, 20)]
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    assert set(runs) == {"metrics.csv", "metrics.csv#pass1"}


def test_a_sparse_series_written_twice_a_step_is_cut_at_its_restart(tmp_path: Path) -> None:
    # the grad norm every 100 steps on two rows each (Lightning logs a step's metrics on two
    # rows): its repeats before the steps trained again are no restart (a review)
    rows = []
    for s in range(1000):
        grad = _blown_grad(s, 900) if s % 100 == 0 else None
        rows.append((s, _blown_loss(s, 900), grad))
        if grad is not None:
            rows.append((s, None, grad))
    for s in range(850, 2000):
        grad = _grad(s) if s % 100 == 0 else None
        rows.append((s, _loss(s), grad))
        if grad is not None:
            rows.append((s, None, grad))
    runs = {r.name: r for r in gradaudit.read_runs([_table(tmp_path, rows)])}
    steps, values = runs["metrics.csv#pass1"].series("grad_norm")
    assert steps[-1] == 900 and values[-1] > 50


def test_a_sparse_grad_norm_is_cut_at_its_own_restart_nearest_in_time(tmp_path: Path) -> None:
    # TensorBoard, the grad norm every 100 steps: launch 2's grad norm blew up at 1900, and
    # launch 3 wrote step 1900 again (no step below one it wrote). The second pass was cut at
    # launch 2's restart, nearest by the old rule, and had launch 1's norms (a review)
    run = tmp_path / "logs" / "job"

    def launch(steps, grad):
        if any(run.glob("*tfevents*")):
            time.sleep(1.1)
        w = SummaryWriter(str(run), flush_secs=3600, max_queue=100_000)
        for s in steps:
            w.add_scalar("train/loss", _loss(s % 4000), s)
            if s % 100 == 0:
                w.add_scalar("train/grad_norm", grad(s), s)
        w.close()

    launch(range(0, 1051), _grad)
    launch(range(850, 2000), lambda s: _grad(s) * (100.0 if s >= 1900 else 1.0))
    launch(range(1900, 2500), _grad)
    runs = {r.name: r for r in gradaudit.read_runs([run.parent])}
    assert "job#pass2" in runs, sorted(runs)
    steps, values = runs["job#pass2"].series("train/grad_norm")
    assert steps[-1] == 1900 and values[-1] > 50
