"""fairseq / metaseq stdout logs, on logs written by fairseq 0.12.2's own logging code
(tests/data/fairseq: its README and make_logs.py say how)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gradaudit
from gradaudit.adapters import REGISTRY, fairseq_log, megatron
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError
from tests._points import by_tag

DATA = Path(__file__).parent / "data" / "fairseq"
#: the three logs of one run (--log-interval 10): json, simple, and json in Hydra's format
INTERVAL10 = ("json10.log", "simple10.log", "hydra10.log")


def _points(path: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` as the adapter reads ``path`` (in write order)."""
    (raw,) = fairseq_log.read(Source(fairseq_log.FORMAT, path.name, (path,)))
    return by_tag(raw)


def _same(a: float, b: float, rtol: float) -> bool:
    with np.errstate(over="ignore"):
        a = float(np.float32(a))  # as TensorBoard stores it
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=rtol)


def test_series_equal_fairseq_s_own_tensorboard_files_of_the_run() -> None:
    # json1.log and tb/ are one run: fairseq's TensorboardProgressBarWrapper wrote tb/ from the
    # stats its JsonProgressBar printed. TensorBoard keeps float32 of the value (inf past
    # 3.4e38); the log prints it with "{:g}" (6 significant digits): equal to 5e-6 relative
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    got = _points(DATA / "json1.log")
    compared = 0
    for run in ("train_inner", "valid", "valid1"):
        acc = EventAccumulator(str(DATA / "tb" / run), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert tags, run
        for tag in tags:
            ref = {e.step: e.value for e in acc.Scalars(tag)}
            mine = got[f"{run}/{tag}"]
            assert sorted(mine) == sorted(ref), (run, tag)
            bad = [s for s in ref if not _same(mine[s], ref[s], 5e-6)]
            assert not bad, (run, tag, [(s, mine[s], ref[s]) for s in bad[:3]])
            compared += len(ref)
    assert compared >= 12 * 100  # every train_inner metric at each of the 100 updates
    assert sorted(got["train_inner/gnorm"]) == list(range(1, 101))
    assert math.isinf(got["train_inner/ppl"][80])  # fairseq's get_perplexity past 2**1024
    # fairseq writes the epoch summary to TensorBoard's train/ too; the reader leaves it out
    assert not [t for t in got if t.startswith("train/")]


def test_json_simple_and_hydra_logs_of_one_run_give_the_same_series() -> None:
    json10, simple10, hydra10 = (_points(DATA / name) for name in INTERVAL10)
    assert json10 == simple10 == hydra10
    assert sorted(json10["train_inner/gnorm"]) == list(range(10, 1501, 10))
    assert set(json10) == {f"train_inner/{k}" for k in (
        "loss", "nll_loss", "ppl", "ups", "wps", "wpb", "bsz", "lr", "gnorm", "clip",
        "train_wall", "wall")} | {f"{s}/{k}" for s in ("valid", "valid1")
                                  for k in ("loss", "nll_loss", "ppl")} | {"valid/best_loss"}
    # the values as printed: the 10 updates from 701 hold the lr spike (1 instead of 0.001)
    assert json10["train_inner/gnorm"][700] == 0.653 and json10["train_inner/gnorm"][710] == 28.97
    assert json10["train_inner/lr"][710] == 0.001 and json10["train_inner/lr"][700] == 1.0


@pytest.mark.parametrize("name", INTERVAL10)
def test_a_scan_finds_the_explosion_at_its_onset(name: str) -> None:
    # the lr is 1000x for updates 700-704; lines every 10 updates: the onset within one interval
    result = gradaudit.scan([DATA / name])
    (run,) = result.runs
    assert run.format == "fairseq-log"
    assert (run.grad_norm_tag, run.loss_tag, run.lr_tag) == (
        "train_inner/gnorm", "train_inner/loss", "train_inner/lr")
    assert run.status == "explosion"
    first = run.episodes[0]
    assert 700 <= first.onset_step <= 710, first
    (series,) = gradaudit.read_runs([DATA / name])
    assert "train_inner/loss" in series.interval_means
    note = next(n for n in run.notes if n.startswith("train_inner/gnorm is fairseq's"))
    assert "logging interval of 10 updates" in note and "1/10 of its height" in note


def test_an_interval_of_one_gets_no_dilution_note() -> None:
    (run,) = gradaudit.read_runs([DATA / "json1.log"])
    assert not [n for n in run.notes if "logging interval" in n]


def test_validation_lines_land_under_their_subset_and_are_not_the_loss() -> None:
    got = _points(DATA / "json10.log")
    assert got["valid/loss"] == {500: 0.719, 1000: 2.21, 1500: 1.876}
    assert sorted(got["valid1/loss"]) == [500, 1000, 1500]
    # fairseq tracks the best loss on the first subset only, once a checkpoint was saved
    assert sorted(got["valid/best_loss"]) == [1000, 1500] and "valid1/best_loss" not in got
    (run,) = gradaudit.read_runs([DATA / "simple10.log"])
    assert run.loss_tag == "train_inner/loss"
    # the epoch summary ("train" lines) and the JSON bar's epoch counters are no series
    assert not [t for t in run.tags() if t.startswith("train/") or t.endswith(("epoch", "update"))]
    assert not [t for t in run.tags() if t.endswith("num_updates")]


def test_wall_time_is_the_line_s_time_stamp() -> None:
    (raw,) = fairseq_log.read(Source(fairseq_log.FORMAT, "x", (DATA / "json10.log",)))
    frame = raw.points.filter(pl.col("tag") == "train_inner/loss")
    stamp = (DATA / "json10.log").read_text().split("\n")[1][:19]  # the first train_inner line
    from datetime import UTC, datetime
    want = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    assert frame.get_column("wall_time")[0] == want


def test_num_updates_past_a_million_as_fairseq_prints_it() -> None:
    # format_stat's "{:g}": 1000000 and 1000005 both print 1e+06, 1000010 1.00001e+06
    (run,) = gradaudit.read_runs([DATA / "json5-past-1e6.log"])
    steps, _ = run.series("train_inner/loss")
    assert steps.tolist() == [999985, 999990, 999995, 1000000, 1000010, 1000020]
    assert any("6 significant digits" in n and "2 train_inner line(s)" in n for n in run.notes)
    (plain,) = gradaudit.read_runs([DATA / "json10.log"])
    assert not any("significant digits" in n for n in plain.notes)


def test_a_cut_file_is_a_clear_error_and_the_good_runs_beside_it_are_read(
        tmp_path: Path) -> None:
    text = (DATA / "json10.log").read_text()
    shutil.copy(DATA / "json10.log", tmp_path / "good.log")
    first = text.index("| train_inner |")
    (tmp_path / "cut.log").write_text(text[: first + 60])  # a crash inside the first line
    (tmp_path / "junk.log").write_bytes(text[: first + 40].encode() + bytes(range(1, 250)) * 50)
    result = gradaudit.scan([tmp_path])
    assert [r.run for r in result.runs] == ["good.log"]
    assert result.runs[0].status == "explosion"
    errors = {Path(e.path).name: e.message for e in result.errors}
    assert set(errors) == {"cut.log", "junk.log"}
    assert all("no fairseq train_inner line" in m for m in errors.values())
    assert result.exit_code == 1  # the explosion's gate; not 2: a run was read


def test_a_log_cut_inside_a_line_keeps_its_whole_fields(tmp_path: Path) -> None:
    text = (DATA / "json10.log").read_text()
    at = text.index('"gnorm": "28.97"') + len('"gnorm": "28.9')  # cut inside the number
    (tmp_path / "crash.log").write_text(text[:at])
    got = _points(tmp_path / "crash.log")
    assert max(got["train_inner/loss"]) == 710  # the cut line's fields before gnorm
    assert max(got["train_inner/gnorm"]) == 700  # not 28.9
    (raw,) = fairseq_log.read(Source(fairseq_log.FORMAT, "x", (tmp_path / "crash.log",)))
    assert any("no line end" in p.message for p in raw.problems)


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 4099])
def test_crlf_and_a_nul_run_read_like_the_plain_log(tmp_path: Path, monkeypatch,
                                                   chunk_bytes: int) -> None:
    # CR LF line ends (a log written on Windows), and a crash's NUL-filled block: it cuts the
    # line before it inside its gnorm (the line keeps its fields before that one), and the
    # lines after it are read
    monkeypatch.setattr(fairseq_log, "CHUNK_BYTES", chunk_bytes)
    src = DATA / "simple10.log"
    plain = _points(src)
    text = src.read_text()
    (tmp_path / "crlf.log").write_bytes(text.replace("\n", "\r\n").encode())
    assert _points(tmp_path / "crlf.log") == plain
    at = text.index("num_updates=710, lr=0.001, gnorm=28.97") + len("num_updates=710, lr=0.001, gn")
    line_end = text.index("\n", at)
    (tmp_path / "nul.log").write_bytes(text[:at].encode() + b"\x00" * 5000
                                       + text[line_end + 1:].encode())
    got = _points(tmp_path / "nul.log")
    kept = {f"train_inner/{k}" for k in ("loss", "nll_loss", "ppl", "ups", "wps", "wpb", "bsz",
                                         "lr")}
    for tag in plain:
        assert got[tag] == {s: v for s, v in plain[tag].items() if s != 710 or tag in kept}, tag
    assert 710 not in got["train_inner/gnorm"] and got["train_inner/lr"][710] == 0.001
    (raw,) = fairseq_log.read(Source(fairseq_log.FORMAT, "x", (tmp_path / "nul.log",)))
    assert any("5000 NUL byte(s) ignored" in p.message for p in raw.problems)


def test_no_train_inner_line_is_a_read_error(tmp_path: Path) -> None:
    lines = (DATA / "json10.log").read_text().splitlines()
    (tmp_path / "valid-only.log").write_text(
        "\n".join(ln for ln in lines if "| train_inner |" not in ln) + "\n")
    (tmp_path / "tqdm.log").write_text(
        "2026-11-29 09:50:36 | INFO | train_inner | epoch 001:  10%|# | 50/500 [00:01<00:09]\n")
    for name in ("valid-only.log", "tqdm.log"):
        path = tmp_path / name
        with pytest.raises(ReadError, match="no fairseq train_inner line"):
            fairseq_log.read(Source(fairseq_log.FORMAT, name, (path,)))


def test_claimed_as_fairseq_and_not_megatron(tmp_path: Path) -> None:
    for name in (*INTERVAL10, "json1.log"):
        shutil.copy(DATA / name, tmp_path / name.replace(".log", ".out"))
    (tmp_path / "notes.log").write_text("a train_inner mention, not a line of one\n")
    files = sorted(tmp_path.iterdir())
    claimed = {s.name for s in fairseq_log.claim(tmp_path, files)}
    assert claimed == {"json10.out", "simple10.out", "hydra10.out", "json1.out"}
    assert not megatron.claim(tmp_path, files)
    assert list(REGISTRY).index("fairseq-log") < list(REGISTRY).index("megatron-log")
    # the command line reads a fairseq log, not "not a log gradaudit reads"
    from gradaudit.cmdline import main

    out = tmp_path / "r.json"
    assert main(["scan", "--quiet", str(tmp_path / "json10.out"), "--json", str(out),
                 "--out", str(tmp_path / "r.md")]) == 1  # the explosion fails the gate
    doc = json.loads(out.read_text())
    assert doc["runs"][0]["format"] == "fairseq-log" and doc["errors"] == []


def test_first_train_inner_line_after_megabytes_of_start_up(tmp_path: Path) -> None:
    # a large model's printout and NCCL start-up can fill the first MiB
    startup = "".join(f"2026-11-29 09:50:00 | INFO | fairseq_cli.train | (layers): Linear {i}\n"
                      for i in range(30000))
    assert len(startup) > 2 * (1 << 20)
    (tmp_path / "train.log").write_text(startup + (DATA / "json10.log").read_text())
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.series("train_inner/gnorm")[0].tolist() == list(range(10, 1501, 10))


def test_a_line_with_other_keys_and_non_finite_values(tmp_path: Path) -> None:
    # lines laid out unlike the first (fp16's loss_scale appears, gb_free), JSON numbers
    # unquoted (a tensor's tolist()), nan/inf as format_stat prints them
    head = "2026-11-29 09:50:49 | INFO | train_inner | "
    rows = [
        '{"epoch": 1, "update": 0.1, "loss": "2.5", "num_updates": "10", "gnorm": "0.3"}',
        '{"epoch": 1, "update": 0.2, "loss": "nan", "num_updates": "20", "gnorm": "inf", '
        '"loss_scale": "64"}',
        '{"epoch": 1, "update": 0.3, "loss": 2.25, "num_updates": 30, "gnorm": 0.5, '
        '"gb_free": "10.5", "vals": [1.0, 2.0]}',
        '{"epoch": 1, "update": 0.4, "loss": "2.0", "gnorm": "0.4"}',  # no num_updates: skipped
    ]
    (tmp_path / "fp16.log").write_text("".join(head + r + "\n" for r in rows))
    got = _points(tmp_path / "fp16.log")
    assert got["train_inner/loss"][10] == 2.5 and math.isnan(got["train_inner/loss"][20])
    assert got["train_inner/loss"][30] == 2.25
    assert math.isinf(got["train_inner/gnorm"][20]) and got["train_inner/gnorm"][30] == 0.5
    assert got["train_inner/loss_scale"] == {20: 64.0}
    assert got["train_inner/gb_free"] == {30: 10.5}
    assert sorted(got) == ["train_inner/gb_free", "train_inner/gnorm", "train_inner/loss",
                           "train_inner/loss_scale"]


def test_large_log_speed(tmp_path: Path) -> None:
    # 200,000 train_inner lines made from the real json1.log's lines, renumbered
    import time

    src = [ln for ln in (DATA / "json1.log").read_text().splitlines() if "| train_inner |" in ln]
    n = 200_000
    rng = np.random.default_rng(0)
    gn = np.round(rng.lognormal(-1.0, 0.3, n), 3)
    parts = []
    for i in range(n):
        line = src[i % len(src)]
        a = line.index('"num_updates": "')
        b = line.index('"clip"')
        parts.append(f'{line[:a]}"num_updates": "{i + 1}", "lr": "0.001", "gnorm": "{gn[i]:g}", '
                     f"{line[b:]}\n")
    path = tmp_path / "big.log"
    path.write_text("".join(parts))
    c0 = time.process_time()
    (raw,) = fairseq_log.read(Source(fairseq_log.FORMAT, path.name, (path,)))
    cpu = time.process_time() - c0
    got = raw.points.filter(pl.col("tag") == "train_inner/gnorm")
    assert got["step"].to_list() == list(range(1, n + 1))
    np.testing.assert_array_equal(got["value"].to_numpy(), gn)
    rate = n / cpu
    print(f"fairseq-log: {n} train_inner lines in {cpu:.2f} s CPU = {rate:,.0f} lines per CPU s")
    assert rate > 50_000  # ~230k here; lenient for a loaded machine
