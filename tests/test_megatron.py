"""Megatron stdout logs: the real BLOOM excerpts, folds, rank tags, speed."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gradaudit
from gradaudit.adapters import megatron
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError
from gradaudit.series import canonical_frame
from tests._holes import HOLE, READ_LIMIT, bytes_read, write_with_hole

REAL = Path(__file__).parent / "data" / "real-logs"

LINE = (
    " iteration {it:8d}/  115311 | consumed samples: {cs:12d} | elapsed time per iteration (ms):"
    " 1234.5 | learning rate: 5.279E-05 | global batch size:  2048 | lm loss: {loss} |"
    " loss scale: 65536.0 | grad norm: {gn} | num zeros: 0.0 | number of skipped iterations:"
    "   0 | number of nan iterations:   0 |"
)


def _series(path: Path, tag: str) -> dict[int, float]:
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    frame, _ = canonical_frame(raw.points)
    sub = frame.filter(pl.col("tag").cast(pl.String) == tag)
    return dict(zip(sub["step"].to_list(), sub["value"].to_list(), strict=True))


def test_bloom_176b_every_iteration_line() -> None:
    path = REAL / "bloom-176b-spike-iter31214.log"
    gn = _series(path, "grad norm")
    loss = _series(path, "lm loss")
    steps = [*range(31214, 31223), 31250, 31251]
    assert sorted(gn) == steps and sorted(loss) == steps
    # Values as printed in the file.
    assert [gn[s] for s in steps] == [
        0.242,
        0.947,
        2.390,
        15.886,
        145.119,
        960.351,
        353.201,
        379.330,
        650.246,
        0.267,
        0.205,
    ]
    assert loss[31214] == 2.198845 and loss[31219] == 5.098124 and loss[31250] == 2.215699
    assert _series(path, "learning rate")[31222] == 5.278e-05
    assert _series(path, "consumed tokens")[31214] == 97829879808
    assert _series(path, "elapsed time per iteration (s)")[31214] == 106.46
    assert _series(path, "TFLOPs")[31251] == 147.75


def test_bloom_104b_iter11447() -> None:
    path = REAL / "bloom-tr8-104b-spike-iter11447.log"
    assert _series(path, "grad norm") == {11446: 12952.562, 11447: 262623.331, 11448: 254699.302}
    assert _series(path, "lm loss") == {11446: 3.062589, 11447: 3.114286, 11448: 7.712340}
    assert _series(path, "loss scale") == {11446: 65536.0, 11447: 65536.0, 11448: 65536.0}


def test_bloom_104b_iter8740_first_line_without_leading_space() -> None:
    path = REAL / "bloom-tr8-104b-spike-iter8740.log"
    assert path.read_text().startswith("iteration     8738/")
    gn = _series(path, "grad norm")
    assert gn == {
        8738: 231817.368, 8739: 89608.482, 8740: 1490753.218,
        8741: 3273877.676, 8742: 1839649.510, 8743: 1369067.435,
    }  # fmt: skip
    assert _series(path, "lm loss")[8741] == 7.267764


def test_bloom_13b_loss_spike_grad_norm_zero() -> None:
    path = REAL / "bloom-tr1-13b-loss-spike-iter29050.log"
    loss = _series(path, "lm loss")
    assert sorted(loss) == list(range(29020, 29100, 10))
    assert loss[29040] == 2.768131 and loss[29050] == 7.343709 and loss[29060] == 8.715872
    assert set(_series(path, "grad norm").values()) == {0.0}
    assert _series(path, "loss scale")[29050] == 8192.0


def test_bloom_104b_iter7000_validation_is_not_train_loss() -> None:
    path = REAL / "bloom-tr8-104b-iter7000.log"
    assert _series(path, "lm loss") == {7000: 6.444662, 7010: 11.42026, 7220: 7.155109}
    assert _series(path, "grad norm") == {7000: 98258.265, 7010: 219645.978, 7220: 16921.991}
    assert _series(path, "validation/lm loss") == {7000: 7.174200}
    assert _series(path, "validation/lm loss PPL") == {7000: 1305.315}


def test_read_runs_chooses_megatron_tags(tmp_path: Path) -> None:
    for f in REAL.glob("*.log"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(REAL / "README.md", tmp_path / "README.md")
    runs = {r.name: r for r in gradaudit.read_runs([tmp_path])}
    assert set(runs) == {f.name for f in REAL.glob("*.log")}
    for run in runs.values():
        assert run.format == "megatron-log"
        assert run.grad_norm_tag == "grad norm"
        assert run.loss_tag == "lm loss"
        assert run.lr_tag == "learning rate"
        # Megatron averages an iteration line's losses over the log interval
        assert "lm loss" in run.interval_means and "validation/lm loss" not in run.interval_means
    steps, values = runs["bloom-176b-spike-iter31214.log"].series("grad norm")
    assert steps.tolist()[:2] == [31214, 31215] and values[5] == 960.351


def test_claim_only_logs_with_iteration_lines(tmp_path: Path) -> None:
    line = LINE.format(it=1, cs=2048, loss="2.0E+00", gn="0.5") + "\n"
    for name in ("a.log", "b.txt", "c.out", "slurm-12", "d.err"):
        (tmp_path / name).write_text("prose\n" + line)
    (tmp_path / "e.csv").write_text(line)
    (tmp_path / "f.log").write_text("no iteration here\n")
    (tmp_path / "g.bin").write_bytes(b"\x00" + line.encode())
    (tmp_path / "h.log").write_bytes(b"\x00\x01" + line.encode())  # NULs: still a log
    files = sorted(tmp_path.iterdir())
    names = {s.name for s in megatron.claim(tmp_path, files)}
    assert names == {"a.log", "b.txt", "c.out", "slurm-12", "d.err", "h.log"}


def test_nul_filled_block_in_a_log_is_skipped_not_the_log(tmp_path: Path) -> None:
    # a node crash or a full disk can leave a block of NUL bytes in a log, even in its first
    # 64 KiB; the iteration lines around it are read, and the run says what was dropped
    lines = [LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") + "\n"
             for i in range(1, 301)]
    text = "".join(lines[:50]).encode() + b"\x00" * 8192 + "".join(lines[50:]).encode()
    (tmp_path / "train.log").write_bytes(text)
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("grad norm")[0].tolist() == list(range(1, 301))
    (problem,) = run.problems
    assert "8192 NUL byte(s) ignored" in problem.message


def test_fold_rank_tags_timestamps_nonfinite(tmp_path: Path) -> None:
    l1 = LINE.format(it=10, cs=100, loss="2.500000E+00", gn="0.300")
    l2 = LINE.format(it=11, cs=200, loss="nan", gn="inf")
    l3 = LINE.format(it=12, cs=300, loss="2.400000E+00", gn="nan")
    l4 = LINE.format(it=13, cs=400, loss="2.300000E+00", gn="0.250")
    cut = l1.index("grad norm") + len("grad norm: 0.")  # fold inside a number
    bar = l3.index("| loss scale") + 1  # fold right after a bar
    text = "\n".join(
        [
            "```",
            l1[:cut],
            l1[cut:],
            " time (ms) | forward-compute: 100.0 | backward-compute: 200.0",
            f"[default0]:{l2}",
            f"[default7]:{l2}",  # the same line from another rank
            l3[:bar],
            l3[bar:],
            " [...]",
            f"[2024-03-01 12:00:05] {l4.strip()}",
            " validation loss at iteration 13 on validation set | lm loss value: 9.000000E+00 |"
            " lm loss PPL: 8.103E+03 |",
            " validation loss at iteration 13 on test set | lm loss value: 9.5E+00 |",
            "[Rank 0] step=13, skipped=2, lr=[5.279e-05, 5.279e-05], mom=[(0.9, 0.95)]",
            "```",
        ]
    )
    path = tmp_path / "train.log"
    path.write_text(text)
    gn = _series(path, "grad norm")
    assert sorted(gn) == [10, 11, 12, 13]
    assert gn[10] == 0.3 and math.isinf(gn[11]) and math.isnan(gn[12]) and gn[13] == 0.25
    loss = _series(path, "lm loss")
    assert math.isnan(loss[11]) and loss[12] == 2.4 and loss[13] == 2.3
    assert _series(path, "loss scale")[12] == 65536.0
    assert _series(path, "validation/lm loss") == {13: 9.0}
    assert _series(path, "test/lm loss") == {13: 9.5}
    assert _series(path, "deepspeed/skipped") == {13: 2.0}
    assert _series(path, "deepspeed/lr") == {13: 5.279e-05}
    assert "forward-compute" not in _series(path, "forward-compute")
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    # Rank duplicates count once: one grad-norm point per iteration before any dedup.
    assert frame.filter(pl.col("tag") == "grad norm").height == 4


def test_timestamps_become_wall_time(tmp_path: Path) -> None:
    lines = [
        "[2024-03-01 12:00:05] " + LINE.format(it=1, cs=1, loss="2.0", gn="0.5").strip(),
        "2024-03-01T12:00:09,123 INFO " + LINE.format(it=2, cs=2, loss="2.0", gn="0.6"),
        LINE.format(it=3, cs=3, loss="2.0", gn="0.7"),
    ]
    path = tmp_path / "stamped.log"
    path.write_text("\n".join(lines) + "\n")
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    got = frame.filter(pl.col("tag") == "grad norm").sort("step")
    assert got["value"].to_list() == [0.5, 0.6, 0.7]
    # 2024-03-01 12:00:05 UTC = 1709294405 s; the third line carries no time.
    assert got["wall_time"].to_list() == [1709294405.0, 1709294409.0, None]


def test_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with pytest.raises(ReadError, match="empty"):
        megatron.read(Source(megatron.FORMAT, "empty.log", (empty,)))
    broken = tmp_path / "broken.log"
    broken.write_bytes(b" iteration 5/ 10 | lm loss: abc | grad norm: \xff\xfe |\n")
    with pytest.raises(ReadError, match="no Megatron iteration line"):
        megatron.read(Source(megatron.FORMAT, "broken.log", (broken,)))


def test_large_log_speed(tmp_path: Path) -> None:
    n = 200_000
    rng = np.random.default_rng(0)
    gn = rng.lognormal(-1.0, 0.3, n)
    loss = 2.0 + rng.random(n)
    lines = []
    for i in range(n):
        lines.append(
            LINE.format(it=i + 1, cs=(i + 1) * 2048, loss=f"{loss[i]:.6E}", gn=f"{gn[i]:.3f}")
        )
        if i % 2 == 0:
            lines.append(" time (ms) | forward-compute: 100.0 | backward-compute: 200.0")
    path = tmp_path / "big.log"
    path.write_text("\n".join(lines) + "\n")
    t0, c0 = time.perf_counter(), time.process_time()
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    got = frame.filter(pl.col("tag") == "grad norm")
    assert got["step"].to_list() == list(range(1, n + 1))
    np.testing.assert_allclose(got["value"].to_numpy(), np.round(gn, 3))
    rate = n / cpu  # CPU time (all threads): steadier than wall time on a shared machine
    print(
        f"megatron: {n} iteration lines in {elapsed:.2f} s wall, {cpu:.2f} s CPU "
        f"= {rate:,.0f} lines per CPU second"
    )
    # The target is >= 200k lines/s; the floor here is lenient for a shared, loaded machine.
    assert rate > 50_000


def test_too_short_an_excerpt_says_so_instead_of_ok_silently():
    # the BLOOM-176B excerpt holds 11 iterations, the explosion among them: no healthy level
    # can be learned from one point before it, and the audit must say why it found nothing
    from gradaudit.audit import audit_run

    (run,) = gradaudit.read_runs([str(REAL / "bloom-176b-spike-iter31214.log")])
    a = audit_run(run)
    assert not a.episodes
    assert any("only 11 usable grad-norm points: too few for a healthy level" in n
               for n in a.notes)


def test_the_bloom_excerpts_are_reported_too_short_to_judge_with_no_clip(tmp_path: Path) -> None:
    # the five excerpts hold 3-11 iterations each, cut around an explosion: "ok, gate passed"
    # alone read as a clean bill of health, and the 176B excerpt's norms (its explosion's,
    # mostly) set the batch's clip threshold at its peak, 960
    import json

    from gradaudit.cmdline import main
    from gradaudit.report import github

    md, js, page = tmp_path / "r.md", tmp_path / "r.json", tmp_path / "r.html"
    assert main(["scan", "--quiet", str(REAL), "--out", str(md), "--json", str(js)]) == 0
    assert main(["scan", "--quiet", str(REAL), "--out", str(page)]) == 0
    doc = json.loads(js.read_text())
    assert doc["summary"]["too_short"] == 5 and doc["batch_clip"] is None
    for run in doc["runs"]:
        assert run["status"] == "ok" and run["too_short"] and run["episodes"] == []
        assert run["clip"]["suggested_threshold"] is None and run["clip"]["options"] == []
    text = md.read_text()
    assert "**5** too short to judge" in text and "Suggested clip threshold" not in text
    assert "- <code>bloom-176b-spike-iter31214.log</code>: only 11 usable grad-norm points" \
        in text
    assert text.count("- <code>bloom-") == 5  # the list holds as many as the count says
    html = page.read_text()
    assert "too short to judge" in html and html.count(' data-short="1">') == 5
    assert '<option value="too_short">' in html  # the runs table filters them
    notices = [x for x in github.lines(gradaudit.scan([REAL])) if "too short to judge:" in x]
    assert len(notices) == 5 and any("only 8 usable loss points" in x for x in notices)


def test_first_iteration_line_after_100_kb_of_start_up_output(tmp_path: Path) -> None:
    preamble = "".join(f"  argument_{i:05d} .......... {i}\n" for i in range(4000))  # ~140 KB
    lines = "".join(LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") + "\n"
                    for i in range(1, 101))
    (tmp_path / "late.log").write_text(preamble + lines)
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("grad norm")[0].tolist() == list(range(1, 101))


def test_first_iteration_line_after_megabytes_of_nccl_start_up(tmp_path: Path) -> None:
    # NCCL_DEBUG=INFO prints a dozen lines per rank and channel: 1.4 MB here, past the first
    # MiB the sniff used to stop at, so the run (and its explosion) vanished without a word
    nccl = "".join(f"node{i % 64:02d}:{1000 + i}:{2000 + i} [{i % 8}] NCCL INFO Channel "
                   f"{i % 32:02d}/0 : {i % 8}[{i % 8}] -> {(i + 1) % 8}[{(i + 1) % 8}] via P2P/IPC"
                   "\n" for i in range(20000))
    assert len(nccl) > megatron.SNIFF_BYTES
    lines = "".join(LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") + "\n"
                    for i in range(1, 101))
    (tmp_path / "job.log").write_text(nccl + lines)
    (tmp_path / "other.log").write_text("x" * (2 * megatron.SNIFF_BYTES))  # no start-up: 1 MiB
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.name == "job.log"
    assert run.series("grad norm")[0].tolist() == list(range(1, 101))


def test_a_distributed_job_s_other_stdout_is_not_read_far(tmp_path: Path) -> None:
    # a DeepSpeed job's stdout starts like a Megatron one (its start-up lines) and then logs in
    # its own format: discovery read 256 MiB of each such file before giving up on it
    startup = "".join(f"[2026-01-01 00:00:00,000] [INFO] DeepSpeed info: version=0.19.8 rank {i}\n"
                      for i in range(2000))
    body = "".join(f"[2026-01-01 00:00:01,000] [INFO] [logging.py:107:log_dist] [Rank 0] "
                   f"step={i}, skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]\n"
                   for i in range(400_000))
    path = tmp_path / "slurm-1234.out"
    path.write_text(startup + body)
    assert path.stat().st_size > 40 << 20
    found, read = bytes_read(lambda: gradaudit.inspect([tmp_path]))
    assert found.runs == []
    assert read < 24 << 20, read  # the first MiB and STARTUP_REACH past the start-up


def test_a_line_cut_by_a_crash_is_not_glued_to_the_next(tmp_path: Path) -> None:
    good = [LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") + "\n" for i in range(1, 51)]
    cut = LINE.format(it=51, cs=2048 * 51, loss="9.0E+00", gn="77.0")
    cut = cut[: cut.index("grad norm")]  # the crash hit mid-line; the block went to NULs
    after = [LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.7") + "\n" for i in range(52, 60)]
    (tmp_path / "crash.log").write_bytes(
        "".join(good).encode() + cut.encode() + b"\x00" * 4096 + "".join(after).encode())
    (run,) = gradaudit.read_runs([tmp_path])
    steps, values = run.series("grad norm")
    assert steps.tolist() == [*range(1, 51), *range(52, 60)]  # step 51 lost its grad norm
    assert values[-1] == 0.7



@pytest.mark.parametrize("chunk_bytes", [1 << 30, 40_000])
def test_a_resume_whose_values_repeat_keeps_every_step(tmp_path: Path, monkeypatch, chunk_bytes):
    # printed 1..200, restarted from the checkpoint at 100: the resumed run's 150 and 160 have
    # the same grad norm as the first run's (3 decimals); every step is there once, the later
    # run's value wins, and a lone last line or chunk boundary changes nothing
    monkeypatch.setattr(megatron, "CHUNK_BYTES", chunk_bytes)
    def gn(it, second):
        return 0.2 + (it % 50) / 1000 if not second or it in (150, 160) else 0.3 + (it % 50) / 1000
    first = [LINE.format(it=i, cs=i, loss="2.0", gn=f"{gn(i, False):.3f}") for i in range(1, 201)]
    second = [LINE.format(it=i, cs=i, loss="2.5", gn=f"{gn(i, True):.3f}") for i in range(101, 301)]
    (tmp_path / "resumed.log").write_text("\n".join(
        [*first, "restarting from checkpoint at iteration 100", *second]) + "\n")
    (run,) = gradaudit.read_runs([tmp_path])
    steps, values = run.series("grad norm")
    assert steps.tolist() == list(range(1, 301))
    assert values[steps.tolist().index(170)] == pytest.approx(0.32)  # the second run's
    assert run.series("lm loss")[1][-1] == 2.5


def test_the_last_line_folded_at_a_bar_keeps_its_grad_norm(tmp_path: Path) -> None:
    rows = [LINE.format(it=i, cs=i, loss="2.0", gn="0.300") for i in range(1, 20)]
    last = LINE.format(it=20, cs=20, loss="9.0", gn="1234.567")
    k = last.index("| loss scale")
    rows.append(last[: k + 1] + "\n" + last[k + 1:])  # the crash line, wrapped by a terminal
    (tmp_path / "wrapped.log").write_text("\n".join(rows) + "\n")
    (run,) = gradaudit.read_runs([tmp_path])
    steps, values = run.series("grad norm")
    assert steps[-1] == 20 and values[-1] == 1234.567


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 4099])
@pytest.mark.parametrize("ends", ["cr", "crlf", "mixed", "progress"])
def test_cr_line_ends_read_like_lf(tmp_path: Path, monkeypatch, chunk_bytes, ends) -> None:
    # the BLOOM-176B excerpt with its line ends made CR (an old Mac file), CR LF, a mix, and
    # with a progress bar's CR redraws before each line (a terminal captured with the log);
    # small chunks cut CR LF pairs and lines at every possible place
    monkeypatch.setattr(megatron, "CHUNK_BYTES", chunk_bytes)
    src = REAL / "bloom-176b-spike-iter31214.log"
    lines = src.read_text().split("\n")
    if ends == "cr":
        text = "\r".join(lines)
    elif ends == "crlf":
        text = "\r\n".join(lines)
    elif ends == "mixed":
        text = "".join(ln + ("\r" if i % 2 else "\r\n" if i % 3 else "\n")
                       for i, ln in enumerate(lines))
    else:
        text = "\n".join(f"saving  {i % 100:3d}%|####   \r{ln}" for i, ln in enumerate(lines))
    path = tmp_path / "ends.log"
    path.write_bytes(text.encode())
    for tag in ("grad norm", "lm loss", "learning rate", "consumed tokens"):
        assert _series(path, tag) == _series(src, tag), tag


@pytest.mark.parametrize("where", ["own line", "after the iteration"])
def test_a_line_of_many_timestamps_is_read_in_linear_time(tmp_path: Path, where: str) -> None:
    # timestamped iteration lines switch the reader to its timestamp pattern; a line holding
    # thousands of timestamps made it backtrack from each one over the rest of the line (a
    # 620 KB log took a minute, quadratic; found by a fuzzing review). 20,000 timestamps took
    # the old pattern ~20 s of CPU; the bound below is for a loaded machine
    lines = [f"[2024-01-01 00:00:{s % 60:02d}] iteration {s}/ 1000 | lm loss: "
             f"{2 - s / 1000:.4f} | grad norm: 1.000 |" for s in range(1, 301)]
    stamps = "2024-01-01 00:00:00" * 20_000
    if where == "own line":
        lines.insert(10, stamps)
    else:  # (its own time is not on it: the timestamps after its iteration are no wall time)
        lines[10] = lines[10].split("] ", 1)[1] + stamps
    path = tmp_path / "train.log"
    path.write_text("\n".join(lines) + "\n")
    c0 = time.process_time()
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    assert time.process_time() - c0 < 5.0
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    got = frame.filter(pl.col("tag") == "lm loss")
    assert got["step"].to_list() == list(range(1, 301))
    assert got["wall_time"].null_count() == (0 if where == "own line" else 1)


def test_a_timestamp_after_the_word_iteration_in_a_prefix_is_still_the_wall_time(
        tmp_path: Path) -> None:
    # the linear pattern looks for the timestamp before the line's first "iteration N/", not
    # before the first word "iteration" (a logger named so; a review)
    lines = [f"[iteration-logger] 2024-01-01 00:{s // 60:02d}:{s % 60:02d} iteration {s}/ 1000 | "
             f"lm loss: {2 - s / 1000:.4f} | grad norm: 1.000 |" for s in range(1, 301)]
    path = tmp_path / "train.log"
    path.write_text("\n".join(lines) + "\n")
    (raw,) = megatron.read(Source(megatron.FORMAT, path.name, (path,)))
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    got = frame.filter(pl.col("tag") == "lm loss")
    assert got["step"].to_list() == list(range(1, 301))
    assert got["wall_time"].diff().drop_nulls().to_list() == [1.0] * 299


def test_a_hole_in_a_sparse_log_is_jumped_over_and_counted_not_read(tmp_path: Path) -> None:
    # a node that crashed while its log was preallocated leaves a hole between its lines: its
    # zeros are counted as the NUL bytes they read as, without being read
    data = (REAL / "bloom-176b-spike-iter31214.log").read_bytes()
    at = data.index(b"\n", len(data) // 2) + 1
    path = tmp_path / "holey.log"
    write_with_hole(path, data, at)
    (run,), n_read = bytes_read(lambda: gradaudit.read_runs([path]))
    assert n_read < READ_LIMIT
    (plain,) = gradaudit.read_runs([REAL / "bloom-176b-spike-iter31214.log"])
    for tag in ("lm loss", "grad norm"):
        np.testing.assert_array_equal(run.series(tag)[1], plain.series(tag)[1])
    assert any(f"{HOLE} NUL byte(s) ignored" in p.message for p in run.problems)
    path.unlink()


def test_a_line_with_an_impossible_iteration_number_leaves_the_rest(tmp_path: Path) -> None:
    # one line whose iteration number does not fit 64 bits made the whole log unreadable
    lines = [LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") for i in range(1, 300)]
    lines.insert(150, LINE.format(it=10**30, cs=0, loss="2.0E+00", gn="0.5"))
    (tmp_path / "job.log").write_text("\n".join(lines) + "\n")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("grad norm")[0].tolist() == list(range(1, 300))


def test_the_first_iteration_line_after_megabytes_of_per_rank_warnings(tmp_path: Path) -> None:
    # 1 MiB of NCCL start-up lines, then 4.6 MB of warnings every rank prints, then training:
    # the sniff's reach past the last start-up line must cover them (a review)
    nccl = "".join(f"node{i % 64:02d}:{1000 + i} [{i % 8}] NCCL INFO Channel {i % 32:02d}/0 : "
                   f"{i % 8}[{i % 8}] -> {(i + 1) % 8}[{(i + 1) % 8}] via P2P/IPC\n"
                   for i in range(15000))
    warn = "".join(f"[rank{i % 64}]: /opt/lib/python3.11/site-packages/x.py:{i}: UserWarning: "
                   "this overload is deprecated and will be removed in a future release\n"
                   for i in range(40000))
    assert len(warn) > 4_500_000
    lines = "".join(LINE.format(it=i, cs=2048 * i, loss="2.0E+00", gn="0.5") + "\n"
                    for i in range(1, 101))
    (tmp_path / "slurm-77.out").write_text(nccl + warn + lines)
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("grad norm")[0].tolist() == list(range(1, 101))


def test_a_line_of_thousands_of_fields_is_read_field_by_field(tmp_path: Path) -> None:
    # lines of 1.2 million "fN: 1 |" fields (47 MB) took 20 GB through the column-by-column
    # path, one expression per field (a hostile-input review); past TEMPLATE_FIELDS the
    # field-by-field path reads them, the same points
    n = megatron.TEMPLATE_FIELDS + 500
    lines = [f" iteration {it}/ 1000 | lm loss: {2.0 + it:.1f} | grad norm: 0.5 |"
             + "".join(f" f{i}: {i} |" for i in range(n)) for it in range(1, 4)]
    (tmp_path / "wide.log").write_text("\n".join(lines) + "\n")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("lm loss")[1].tolist() == [3.0, 4.0, 5.0]
    assert run.series(f"f{n - 1}")[1].tolist() == [float(n - 1)] * 3
    assert len(run.tags()) == n + 2
