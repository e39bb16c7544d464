"""TensorBoard adapter: real event files written at test time by tensorboardX / tensorboard."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboardX import SummaryWriter

import gradaudit
from gradaudit.adapters import _crc32c, tensorboard
from gradaudit.adapters._tfrecord import FileStatus, read_chunks
from gradaudit.cmdline import main
from tests._holes import HOLE, READ_LIMIT, bytes_read, write_with_hole

N_STEPS = 3000


def _loss(s: int) -> float:
    return 3.0 / (1.0 + s / 500.0)


def _gnorm(s: int) -> float:
    return 1.0 + 0.5 * math.sin(s / 7.0) + (25.0 if s % 997 == 0 else 0.0)


def write_tbx(folder: Path, steps: range = range(N_STEPS), extra: bool = True) -> Path:
    """Scalars through tensorboardX add_scalar (simple_value); returns the event file."""
    w = SummaryWriter(str(folder), flush_secs=3600, max_queue=100_000)
    for s in steps:
        w.add_scalar("train/loss", _loss(s), s)
        w.add_scalar("train/grad_norm", _gnorm(s), s)
        w.add_scalar("train/learning_rate", 1e-4, s)
    if extra:
        w.add_scalar("odd", float("nan"), 1)
        w.add_scalar("odd", float("inf"), 2)
        w.add_scalar("odd", -float("inf"), 3)
        w.add_scalar("odd", 1e39, 4)  # above float32 max: becomes inf
        w.add_scalar("odd", 2.5, 2**40)  # large step: multi-byte varint
    w.close()
    (path,) = list(folder.glob("*tfevents*"))
    return path


def _value(
    tag: str, tensor: tensor_pb2.TensorProto, plugin: str | None
) -> summary_pb2.Summary.Value:
    v = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    if plugin is not None:
        v.metadata.plugin_data.plugin_name = plugin
    return v


def write_tensor_style(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tensor scalars with tensorboard's protobufs through tensorboard's own event writer."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(folder))
    expected: dict[str, list[tuple[int, float]]] = {}
    scalar_shape = tensor_shape_pb2.TensorShapeProto()
    for s in range(50):
        x = 0.1 * s + 1.0 / 3.0
        values = [
            _value("f_val", tensor_pb2.TensorProto(dtype=1, float_val=[x]), "scalars"),
            _value("f_content", tensor_pb2.TensorProto(
                dtype=1, tensor_shape=scalar_shape,
                tensor_content=np.float32(x).tobytes()), "scalars"),
            _value("d_val", tensor_pb2.TensorProto(dtype=2, double_val=[x]), "scalars"),
            _value("h_val", tensor_pb2.TensorProto(
                dtype=19, half_val=[int(np.float16(x).view(np.uint16))]), "scalars"),
            # a tensor under another plugin, and a 3-element "scalars" tensor: both ignored
            _value("text", tensor_pb2.TensorProto(dtype=1, float_val=[x]), "text"),
            _value("vector", tensor_pb2.TensorProto(
                dtype=1, tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
                float_val=[x, x, x]), "scalars"),
            summary_pb2.Summary.Value(tag="hist", histo=summary_pb2.HistogramProto(
                min=0.0, max=1.0, num=2, sum=1.0, sum_squares=1.0, bucket_limit=[1.0],
                bucket=[2.0])),
            summary_pb2.Summary.Value(tag="img", image=summary_pb2.Summary.Image(
                height=1, width=1, colorspace=1, encoded_image_string=b"\x89PNG")),
        ]
        event = event_pb2.Event(wall_time=time.time(), step=s,
                                summary=summary_pb2.Summary(value=values))
        writer.add_event(event)
        expected.setdefault("f_val", []).append((s, float(np.float32(x))))
        expected.setdefault("f_content", []).append((s, float(np.float32(x))))
        expected.setdefault("d_val", []).append((s, x))
        expected.setdefault("h_val", []).append((s, float(np.float16(x))))
    writer.close()
    return expected


def _series(run: gradaudit.api.RunSeries, tag: str) -> tuple[np.ndarray, np.ndarray]:
    return run.series(tag)


def test_tensorboardx_simple_values(tmp_path: Path) -> None:
    write_tbx(tmp_path / "run")
    (run,) = gradaudit.read_runs([tmp_path])
    assert run.name == "run" and run.format == "tensorboard"
    assert run.grad_norm_tag == "train/grad_norm" and run.loss_tag == "train/loss"
    steps, values = run.series("train/grad_norm")
    assert steps.tolist() == list(range(N_STEPS))
    assert values.tolist() == [float(np.float32(_gnorm(s))) for s in range(N_STEPS)]
    steps, values = run.series("train/loss")
    assert values.tolist() == [float(np.float32(_loss(s))) for s in range(N_STEPS)]
    steps, odd = run.series("odd")
    assert steps.tolist() == [1, 2, 3, 4, 2**40]
    assert math.isnan(odd[0]) and odd[1] == math.inf and odd[2] == -math.inf
    assert odd[3] == math.inf and odd[4] == 2.5
    assert not run.problems
    wall = run.wall_times("train/loss")
    assert np.all(np.abs(wall - time.time()) < 600)


def test_tensor_style_scalars_and_ignored_plugins(tmp_path: Path) -> None:
    expected = write_tensor_style(tmp_path / "tf")
    (run,) = gradaudit.read_runs([tmp_path / "tf"])
    assert set(run.tags()) == set(expected)  # text, vector, hist, img are not scalars
    for tag, points in expected.items():
        steps, values = run.series(tag)
        assert steps.tolist() == [s for s, _ in points]
        assert values.tolist() == [v for _, v in points], tag


def test_parity_with_event_accumulator(tmp_path: Path) -> None:
    write_tbx(tmp_path / "a", range(1500), extra=False)
    write_tensor_style(tmp_path / "b")
    # steps whose varints take every length from 1 to 6 bytes (a step of 3e6 lost its 4th
    # byte under a reviewer's mutation and no test saw it)
    big = sorted({0, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 3_000_000, 2**28 - 1, 2**28,
                  100_000_000, 2**35 - 1, 2**35, 2**40})
    write_tbx(tmp_path / "c", big, extra=False)  # type: ignore[arg-type]
    for sub in ("a", "b", "c"):
        acc = EventAccumulator(str(tmp_path / sub), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        (run,) = gradaudit.read_runs([tmp_path / sub])
        tags = acc.Tags()
        n_checked = 0
        for tag in tags["scalars"]:
            ev = acc.Scalars(tag)
            steps, values = run.series(tag)
            assert steps.tolist() == [e.step for e in ev]
            assert values.tolist() == [float(np.float32(e.value)) for e in ev]
            assert run.wall_times(tag).tolist() == [e.wall_time for e in ev]
            n_checked += 1
        for tag in tags["tensors"]:
            meta = acc.SummaryMetadata(tag)
            ev = acc.Tensors(tag)
            arrays = [_tensor_value(e.tensor_proto) for e in ev]
            if meta.plugin_data.plugin_name != "scalars" or arrays[0].size != 1:
                assert tag not in run.tags()
                continue
            steps, values = run.series(tag)
            assert steps.tolist() == [e.step for e in ev]
            assert values.tolist() == [float(a.reshape(-1)[0]) for a in arrays]
            assert run.wall_times(tag).tolist() == [e.wall_time for e in ev]
            n_checked += 1
        assert n_checked >= 3


def _tensor_value(proto: tensor_pb2.TensorProto) -> np.ndarray:
    from tensorboard.util import tensor_util

    return np.asarray(tensor_util.make_ndarray(proto))


def test_resumed_run_later_write_wins(tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    first = write_tbx(run_dir, range(1000), extra=False)
    time.sleep(1.1)  # the file name starts with the timestamp in seconds
    w = SummaryWriter(str(run_dir), flush_secs=3600, max_queue=100_000)
    for s in range(600, 1500):
        w.add_scalar("train/loss", -1.0, s)  # marks points from file two
        w.add_scalar("train/grad_norm", _gnorm(s), s)
    w.close()
    assert len(list(run_dir.glob("*tfevents*"))) == 2
    # (the first file's loss stands well above the marker: that pass is a run too, test_resumes)
    run, first_pass = gradaudit.read_runs([run_dir])
    assert first_pass.name == f"{run.name}#pass1"
    assert run.files[0] == str(first)
    steps, values = run.series("train/loss")
    assert steps.tolist() == list(range(1500))
    assert values[:600].tolist() == [float(np.float32(_loss(s))) for s in range(600)]
    assert (values[600:] == -1.0).all()
    assert any("600-999" in n and "train/loss" in n for n in run.notes), run.notes
    found = gradaudit.inspect([run_dir])
    assert found.runs[0].step_summary() == (1500, 0, 1499)


def _corrupt(path: Path, at: int, new: bytes | None = None, cut: bool = False) -> None:
    data = bytearray(path.read_bytes())
    if cut:
        data = data[:at]
    else:
        data[at : at + len(new or b"")] = new or b""
    path.write_bytes(bytes(data))


def _record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    pos, out = 0, []
    while pos < len(data):
        out.append(pos)
        pos += 16 + int.from_bytes(data[pos : pos + 8], "little")
    return out


def _good(tmp_path: Path, name: str, steps: int = 200) -> Path:
    return write_tbx(tmp_path / name, range(steps), extra=False)


def test_truncated_last_record(tmp_path: Path) -> None:
    path = _good(tmp_path, "t")
    offs = _record_offsets(path)
    _corrupt(path, offs[-1] + 20, cut=True)  # inside the last record's payload
    (run,) = gradaudit.read_runs([tmp_path / "t"])
    assert run.series("train/learning_rate")[0].tolist() == list(range(199))
    assert run.series("train/loss")[0].tolist() == list(range(200))
    (problem,) = run.problems
    assert "ends inside a record" in problem.message and str(len(offs) - 1) in problem.message
    # the record's whole size against what is left of it (it said "asks for 33 bytes, 36
    # remain": the 33 were its payload alone, the 36 counted its framing)
    m = re.search(r"it needs (\d+) bytes with its 16 of framing, (\d+) bytes remain",
                  problem.message)
    assert m and int(m.group(2)) == 20 and int(m.group(1)) > 20, problem.message


def test_payload_crc_mismatch_skips_one_record(tmp_path: Path) -> None:
    path = _good(tmp_path, "c")
    offs = _record_offsets(path)
    rec = offs[10]  # record 10 = step 3, train/loss (record 0 is file_version)
    data = path.read_bytes()
    _corrupt(path, rec + 14, bytes([data[rec + 14] ^ 0xFF]))
    (run,) = gradaudit.read_runs([tmp_path / "c"])
    steps = run.series("train/loss")[0].tolist()
    assert 3 not in steps and len(steps) == 199
    assert run.series("train/grad_norm")[0].size == 200
    (problem,) = run.problems
    assert "1 record(s) skipped" in problem.message and "CRC" in problem.message


def test_length_crc_mismatch_skips_to_the_next_sound_record(tmp_path: Path) -> None:
    path = _good(tmp_path, "l")
    offs = _record_offsets(path)
    _corrupt(path, offs[31], b"\x07")  # record 31 (step 10's loss): its length changes, not its CRC
    (run,) = gradaudit.read_runs([tmp_path / "l"])
    assert run.series("train/loss")[0].tolist() == [s for s in range(200) if s != 10]
    assert run.series("train/grad_norm")[0].size == 200
    (problem,) = run.problems
    assert "record 31" in problem.message and "length CRC mismatch" in problem.message
    assert f"skipped to the next sound record (byte {offs[32]})" in problem.message


def test_length_larger_than_file_in_the_middle_is_skipped(tmp_path: Path) -> None:
    path = _good(tmp_path, "big")
    offs = _record_offsets(path)
    header = (10**12).to_bytes(8, "little")
    crc = _crc32c.mask(_crc32c.crc32c(header)).to_bytes(4, "little")
    _corrupt(path, offs[-3], header + crc)  # a sound header asking for a terabyte
    (run,) = gradaudit.read_runs([tmp_path / "big"])
    assert run.series("train/loss")[0].tolist() == list(range(199))  # that record was 199's
    assert run.series("train/learning_rate")[0].tolist() == list(range(200))  # read after it
    (problem,) = run.problems
    assert str(10**12) in problem.message and "more than the file holds" in problem.message
    assert f"(byte {offs[-2]}), read from there on" in problem.message


def test_junk_spliced_mid_file_loses_nothing_after_it(tmp_path: Path) -> None:
    path = _good(tmp_path, "j", steps=2000)
    offs = _record_offsets(path)
    data = path.read_bytes()
    path.write_bytes(data[: offs[600]] + b"\xde\xad\xbe\xef" * 8 + data[offs[600]:])
    (run,) = gradaudit.read_runs([tmp_path / "j"])
    for tag in ("train/loss", "train/grad_norm", "train/learning_rate"):
        assert run.series(tag)[0].tolist() == list(range(2000))
    (problem,) = run.problems
    assert "32 bytes skipped" in problem.message
    # the same with small chunks: the search crosses chunk boundaries
    status = FileStatus()
    n = sum(c.starts.size for c in read_chunks(path, status, chunk_size=100))
    assert n == len(offs) and len(status.problems) == 1


def test_corrupt_tail_with_no_sound_record_after_it(tmp_path: Path) -> None:
    path = _good(tmp_path, "tail")
    offs = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[offs[-5]] ^= 0x5A  # a corrupt length field ...
    for o in offs[-4:]:
        data[o + 12] ^= 0xFF  # ... and every record after it has a bad payload
    path.write_bytes(bytes(data))
    (run,) = gradaudit.read_runs([tmp_path / "tail"])
    (problem,) = run.problems
    assert "no sound record follows it: the rest of the file was not read" in problem.message


def test_empty_file_next_to_good_one_and_garbage(tmp_path: Path) -> None:
    good = _good(tmp_path, "mix")
    empty = good.parent / "events.out.tfevents.0000000001.host"
    empty.write_bytes(b"")
    (run,) = gradaudit.read_runs([tmp_path / "mix"])
    assert run.series("train/loss")[0].size == 200
    assert [p.file for p in run.problems] == [str(empty)]
    assert "empty" in run.problems[0].message
    # A batch: good runs, a run of random garbage, a run that is only an empty file.
    _good(tmp_path, "ok2")
    rng = np.random.default_rng(1)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "events.out.tfevents.123.junk").write_bytes(rng.bytes(5000))
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "events.out.tfevents.123.zero").write_bytes(b"")
    found = gradaudit.inspect([tmp_path])
    assert sorted(r.name for r in found.runs) == ["mix", "ok2"]
    bad = {e.to_dict()["path"]: e.to_dict()["message"] for e in found.errors}
    assert len(bad) == 2
    assert any("length CRC" in m or "past the end" in m or "ends inside" in m
               for m in bad.values()), bad
    assert any("empty" in m for m in bad.values()), bad


def test_crc_numpy_matches_package_and_reference(tmp_path: Path) -> None:
    pytest.importorskip("crc32c")
    path = write_tbx(tmp_path / "x", range(300))
    status = FileStatus()
    (chunk,) = list(read_chunks(path, status))
    numpy_crc = _crc32c.crc32c_many(chunk.buf, chunk.starts, chunk.lengths)
    pkg_crc = _crc32c.crc32c_many_package(chunk.buf, chunk.starts, chunk.lengths)
    assert numpy_crc.tolist() == pkg_crc.tolist()
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 256, 200_000, dtype=np.uint8)
    lengths = np.array([1, 3, 8, 37, 96, 97, 255, 256, 257, 1000, 70_000] * 3)
    starts = rng.integers(0, buf.size - 70_000, lengths.size)
    assert (_crc32c.crc32c_many(buf, starts, lengths).tolist()
            == _crc32c.crc32c_many_package(buf, starts, lengths).tolist())
    assert _crc32c.crc32c_python(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_numpy_fallback_without_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tbx(tmp_path / "r", range(500))
    expected = gradaudit.read_runs([tmp_path / "r"])[0].frame
    monkeypatch.setattr(_crc32c, "_crc32c_pkg", None)
    got = gradaudit.read_runs([tmp_path / "r"])[0].frame
    assert got.equals(expected)


def test_cli_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tbx(tmp_path / "exp", range(400))
    code = main(["inspect", str(tmp_path), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    (run,) = out["runs"]
    assert run["format"] == "tensorboard"
    assert run["grad_norm_tag"] == "train/grad_norm" and run["loss_tag"] == "train/loss"
    assert (run["n_steps"], run["first_step"], run["last_step"]) == (400, 0, 399)
    assert run["tags"]["train/loss"] == 400 and out["errors"] == []


def test_claim_skips_profile_empty(tmp_path: Path) -> None:
    names = ["events.out.tfevents.2.b", "events.out.tfevents.1.a", "x.profile-empty",
             "events.out.tfevents.3.profile-empty", "notes.txt"]
    files = [tmp_path / n for n in names]
    (src,) = tensorboard.claim(tmp_path, files)
    assert [f.name for f in src.files] == ["events.out.tfevents.1.a", "events.out.tfevents.2.b"]
    assert src.name == "."


_TAG_BYTES = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-", np.uint8)


def _colliding_tag(tag: bytes) -> bytes:
    """A 16-byte tag (of characters tensorboardX keeps as they are) whose word hash (the
    adapter's grouping hash) equals ``tag``'s."""
    assert len(tag) == 16
    seed, prime = tensorboard._SEED, tensorboard._PRIME
    first, last = np.frombuffer(tag, "<u8")
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore"):
        target = ((seed ^ last) * prime) ^ first  # before the final multiply
        while True:
            tails = rng.integers(0x61, 0x7B, (100_000, 8), dtype=np.uint8)
            heads = ((seed ^ tails.view("<u8").ravel()) * prime) ^ target
            hb = heads.view(np.uint8).reshape(-1, 8)
            ok = np.flatnonzero(np.isin(hb, _TAG_BYTES).all(axis=1))
            if ok.size:
                return hb[ok[0]].tobytes() + tails[ok[0]].tobytes()


def test_tags_with_equal_hashes_stay_apart(tmp_path: Path) -> None:
    a = b"train/grad_normA"
    b = _colliding_tag(a)
    assert a != b
    words = [np.frombuffer(t, "<u8")[::-1].copy() for t in (a, b)]
    with np.errstate(over="ignore"):
        hashes = []
        for w in words:
            h = tensorboard._SEED
            for x in w:
                h = (h ^ x) * tensorboard._PRIME
            hashes.append(int(h))
    assert hashes[0] == hashes[1]  # the grouping hash really collides
    w = SummaryWriter(str(tmp_path / "col"), flush_secs=3600, max_queue=100_000)
    for s in range(300):
        w.add_scalar(a.decode(), float(s), s)
        w.add_scalar(b.decode(), -float(s), s)
    w.close()
    (run,) = gradaudit.read_runs([tmp_path / "col"])
    assert sorted(run.tags()) == sorted([a.decode(), b.decode()])
    assert run.series(a.decode())[1].tolist() == [float(s) for s in range(300)]
    assert run.series(b.decode())[1].tolist() == [-float(s) for s in range(300)]


def test_small_chunks_read_the_same_records(tmp_path: Path) -> None:
    path = write_tbx(tmp_path / "ch", range(2000))
    data = path.read_bytes()

    def payloads(chunk_size: int) -> list[bytes]:
        status = FileStatus()
        out = []
        for chunk in read_chunks(path, status, chunk_size=chunk_size):
            for s, n in zip(chunk.starts.tolist(), chunk.lengths.tolist(), strict=True):
                out.append(chunk.buf[s : s + n].tobytes())
        assert not status.problems
        return out

    expected = [data[o + 12 : o + 12 + int.from_bytes(data[o : o + 8], "little")]
                for o in _record_offsets(path)]
    for size in (100, 4096, 50_000, 1 << 24):
        assert payloads(size) == expected, size


def _naive_canonical(rows: list[tuple[int, str, float]]) -> list[tuple[str, int, float]]:
    """TensorBoard's rule, point by point: a write at step s drops earlier points >= s."""
    kept: dict[str, list[tuple[int, float]]] = {}
    for step, tag, value in rows:
        pts = [p for p in kept.get(tag, []) if p[0] < step]
        pts.append((step, value))
        kept[tag] = pts
    return [(tag, s, v) for tag in sorted(kept) for s, v in kept[tag]]


@pytest.mark.parametrize("seed", range(6))
def test_canonical_frame_categorical_path_matches_the_rule(seed: int) -> None:
    import polars as pl

    from gradaudit.series import canonical_frame

    rng = np.random.default_rng(seed)
    tags = ["b/loss", "a/grad", "c", "zz", "m/lr"][: 1 + seed % 5]
    rows, step = [], {t: 0 for t in tags}
    for i in range(3000):
        tag = tags[int(rng.integers(len(tags)))]
        if rng.random() < 0.002 * seed:  # a resume that rewinds this tag
            step[tag] = max(0, step[tag] - int(rng.integers(1, 50)))
        rows.append((step[tag], tag, float(i)))
        step[tag] += int(rng.integers(0, 3)) if seed % 2 else 1
    want = _naive_canonical(rows)
    for dtype, lazy in ((pl.Categorical, False), (pl.String, False), (pl.String, True)):
        raw = pl.DataFrame({"step": [r[0] for r in rows], "tag": [r[1] for r in rows],
                            "value": [r[2] for r in rows]},
                           schema={"step": pl.Int64, "tag": dtype, "value": pl.Float64})
        frame, notes = canonical_frame(raw.lazy() if lazy else raw)  # lazy: the generic path
        got = list(zip(frame["tag"].cast(pl.String).to_list(), frame["step"].to_list(),
                       frame["value"].to_list(), strict=True))
        assert got == want, dtype
        assert frame.schema["tag"] == pl.Categorical
        assert bool(notes) == (len(want) < len(rows))


def test_record_longer_than_16_mib_between_scalars(tmp_path: Path) -> None:
    # A 17 MB text summary: its header has a non-zero byte 3, so the fast framing pass cannot
    # see it; the sequential walk must take over and hand back to the fast pass after it.
    w = SummaryWriter(str(tmp_path / "big"), flush_secs=3600, max_queue=100_000)
    for s in range(0, 5000):
        w.add_scalar("train/loss", _loss(s), s)
        if s == 2500:
            w.add_text("notes", "x" * (17 << 20), s)
    w.close()
    (run,) = gradaudit.read_runs([tmp_path / "big"])
    steps, values = run.series("train/loss")
    assert steps.tolist() == list(range(5000))
    assert values.tolist() == [float(np.float32(_loss(s))) for s in range(5000)]
    assert not run.problems


@pytest.mark.parametrize("chunk_size", [4096, 50_000, 1 << 22])
def test_one_junk_byte_before_a_record_loses_only_itself(tmp_path: Path, chunk_size: int) -> None:
    # the next sound record starts right after the junk byte: reading resumes there and the
    # rest of the file is read whatever the chunk size (a full carry is no end of file)
    path = _good(tmp_path, "one", steps=3000)
    offs = _record_offsets(path)
    for k in (1000, 5000):
        data = path.read_bytes()
        path.write_bytes(data[: offs[k]] + b"\x07" + data[offs[k]:])
        status = FileStatus()
        n = sum(c.starts.size for c in read_chunks(path, status, chunk_size=chunk_size))
        assert n == len(offs) and len(status.problems) == 1, status.problems
        path.write_bytes(data)


def test_an_hparams_record_is_no_run_and_no_error(tmp_path: Path) -> None:
    # add_hparams writes its own sub-folder (the hyperparameters, one point per metric): it is
    # no training log, so it is neither a run nor an error next to the run it describes
    w = SummaryWriter(str(tmp_path / "run"), flush_secs=3600)
    for s in range(300):
        w.add_scalar("train/loss", _loss(s), s)
        w.add_scalar("train/grad_norm", _gnorm(s), s)
    w.add_hparams({"lr": 1e-3, "batch": 32}, {"hparam/accuracy": 0.9, "hparam/loss": 0.5})
    w.close()
    assert len([p for p in (tmp_path / "run").rglob("*tfevents*")]) == 2
    found = gradaudit.inspect([tmp_path])
    assert [r.name for r in found.runs] == ["run"] and found.errors == []
    # hyperparameters written into a run's own files (as Lightning's log_hyperparams does): a
    # run that died after its first log is still a run
    from tensorboardX.summary import hparams

    w = SummaryWriter(str(tmp_path / "short"), flush_secs=3600)
    for summary in hparams({"lr": 1e-3}, {"val_loss": 0.0}):
        w._get_file_writer().add_summary(summary)
    w.add_scalar("train/loss", float("nan"), 0)
    w.add_scalar("train/grad_norm", 1e6, 0)
    w.close()
    assert sorted(r.name for r in gradaudit.inspect([tmp_path]).runs) == ["run", "short"]


def _add_scalars_run(folder: Path, spike: int = 400, steps: int = 600) -> None:
    """tensorboardX add_scalars: a sub-folder per key (``grad_norm/total``...), the same tag in
    each; the lr through add_scalar into the run's own files. One grad spike that harms the
    loss at ``spike``."""
    rng = np.random.default_rng(3)
    w = SummaryWriter(str(folder), flush_secs=3600, max_queue=100_000)
    for s in range(1, steps):
        g = 1.0 + 0.05 * rng.standard_normal() + (40.0 if s == spike else 0.0)
        lo = 2.0 * math.exp(-s / 500) + 0.01 * rng.standard_normal()
        lo += math.exp(-(s - spike) / 150) if s >= spike else 0.0  # above where it was
        w.add_scalars("grad_norm", {"total": g, "clipped": min(g, 1.0)}, s)
        w.add_scalars("loss", {"train": lo, "val": lo + 0.1}, s)
        w.add_scalar("lr", 1e-3, s)
    w.close()


def test_add_scalars_sub_folders_are_one_run_with_the_reference_values(tmp_path: Path) -> None:
    _add_scalars_run(tmp_path / "run")
    found = gradaudit.inspect([tmp_path])
    assert found.errors == [] and [r.name for r in found.runs] == ["run"]
    (run,) = found.runs
    assert sorted(run.tags()) == ["grad_norm/clipped", "grad_norm/total", "loss/train",
                                  "loss/val", "lr"]
    assert (run.grad_norm_tag, run.loss_tag, run.lr_tag) == ("grad_norm/total", "loss/train", "lr")
    assert any("add_scalars sub-folders" in n for n in run.notes)
    for key in ("grad_norm/total", "grad_norm/clipped", "loss/train", "loss/val"):
        acc = EventAccumulator(str(tmp_path / "run" / key), size_guidance={"scalars": 0})
        acc.Reload()
        main_tag = key.split("/")[0]
        ref = acc.Scalars(main_tag)
        steps, values = _series(run, key)
        assert steps.tolist() == [e.step for e in ref]
        assert np.array_equal(values, np.array([e.value for e in ref], dtype=np.float64))
    # the spike is audited with the loss logged beside it, not as a run without a loss
    (audit,) = gradaudit.scan([tmp_path]).runs
    (ep,) = [e for e in audit.episodes if e.severity == "explosion"]
    assert ep.onset_step == 400 and ep.loss_impact is not None
    assert ep.loss_impact.excess_loss > 0.05


def test_torch_add_scalars_layout_and_a_resume_in_a_sub_folder(tmp_path: Path) -> None:
    # torch's SummaryWriter.add_scalars names the sub-folder "<tag with / as _>_<key>" and
    # writes the tag itself there (one file writer per key); built here with tensorboardX
    # writers in that layout. A resume writes a second file whose steps go back: the later
    # write wins within the merged tag as everywhere else.
    run = tmp_path / "exp"
    w = SummaryWriter(str(run), flush_secs=3600)
    w.add_scalar("lr", 1e-3, 0)
    w.close()
    for sub, tag, f in (("train_grad_norm_total", "train/grad_norm", _gnorm),
                        ("loss_train", "loss", _loss)):
        for first, last, bump in ((0, 300, 0.0), (200, 400, 1.0)):
            w = SummaryWriter(str(run / sub), flush_secs=3600, filename_suffix=f".{first}")
            for s in range(first, last):
                w.add_scalar(tag, f(s) + bump, s)
            w.close()
            time.sleep(0.01)
    (got,) = gradaudit.inspect([tmp_path]).runs
    assert got.name == "exp"
    assert (got.grad_norm_tag, got.loss_tag) == ("train/grad_norm/total", "loss/train")
    steps, values = _series(got, "loss/train")
    assert steps.tolist() == list(range(400))
    assert values[199] == pytest.approx(_loss(199), rel=1e-6)
    assert values[200] == pytest.approx(_loss(200) + 1.0, rel=1e-6)


def test_sub_folders_add_scalars_did_not_write_stay_runs(tmp_path: Path) -> None:
    # Keras' logs/train and logs/validation (no event file in logs/), and an "eval" writer
    # nested in a run's folder whose tag is no add_scalars name for it: runs of their own
    for folder in (tmp_path / "logs" / "train", tmp_path / "logs" / "validation",
                   tmp_path / "run", tmp_path / "run" / "eval"):
        write_tbx(folder, steps=range(50), extra=False)
    names = [r.name for r in gradaudit.inspect([tmp_path]).runs]
    assert names == ["logs/train", "logs/validation", "run", "run/eval"]


def test_a_nested_run_whose_first_tag_looks_like_add_scalars_stays_a_run(tmp_path: Path) -> None:
    # a sweep run in exp/lr_3e-3 logs "lr" first, then its loss and grad norm: its name fits
    # add_scalars("lr", {"3e-3": ...}) for the first tag only, so it is a run of its own
    write_tbx(tmp_path / "exp", steps=range(100), extra=False)
    w = SummaryWriter(str(tmp_path / "exp" / "lr_3e-3"), flush_secs=3600)
    for s in range(100):
        w.add_scalar("lr", 3e-3, s)
        w.add_scalar("loss", _loss(s), s)
        w.add_scalar("grad_norm", _gnorm(s), s)
    w.close()
    runs = {r.name: r for r in gradaudit.inspect([tmp_path]).runs}
    assert sorted(runs) == ["exp", "exp/lr_3e-3"]
    assert sorted(runs["exp/lr_3e-3"].tags()) == ["grad_norm", "loss", "lr"]


def test_an_add_scalars_sub_folder_whose_first_file_holds_no_scalar(tmp_path: Path) -> None:
    # a job killed before its first flush leaves an event file with the file-version record
    # only; the resumed job's file in the same sub-folder decides
    write_tbx(tmp_path / "run", steps=range(100), extra=False)
    sub = tmp_path / "run" / "grads_total"
    EventFileWriter(str(sub)).close()
    (killed,) = sub.glob("*tfevents*")
    killed.rename(sub / "events.out.tfevents.0000000001.host.0")  # the earlier file
    w = SummaryWriter(str(sub), flush_secs=3600)
    for s in range(100):
        w.add_scalar("grads", _gnorm(s), s)
    w.close()
    assert sorted(f.stat().st_size > 100 for f in sub.glob("*tfevents*")) == [False, True]
    (run,) = gradaudit.inspect([tmp_path]).runs
    assert run.name == "run" and "grads/total" in run.tags()


def test_a_record_over_the_cap_is_skipped_unread_and_the_records_after_it_are_read(
        tmp_path: Path) -> None:
    # A header whose length CRC holds may claim a payload as large as the file (a sparse file
    # of 4 KB on disk claimed 1 GiB): the reader held the whole record, and its speculative
    # pass took ~48 bytes per byte (12 GB for 256 MiB; found by a fuzzing review). Over
    # MAX_RECORD it is skipped unread, the framing after it is sound, and little is allocated.
    import tracemalloc

    from tensorboard.summary.writer.record_writer import masked_crc32c

    from gradaudit.adapters import _tfrecord

    first = write_tbx(tmp_path / "a", range(0, 100), extra=False).read_bytes()
    after = write_tbx(tmp_path / "b", range(100, 200), extra=False).read_bytes()
    claim = 300 << 20
    head = claim.to_bytes(8, "little")
    path = tmp_path / "run" / "events.out.tfevents.1.host"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        fh.write(first + head + masked_crc32c(head).to_bytes(4, "little"))
        fh.seek(claim + 4, 1)  # a hole: the payload and its CRC are never written
        fh.write(after)
    assert claim > _tfrecord.MAX_RECORD
    tracemalloc.start()
    try:
        (run,) = gradaudit.read_runs([path.parent])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak
    assert run.series("train/loss")[0].tolist() == list(range(200))
    (problem,) = [p.message for p in run.problems]
    assert "1 record(s) over 64 MiB skipped unread" in problem


def test_a_long_record_under_the_cap_is_read_by_walking(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a record that fills its buffer is walked, not passed over speculatively, and read whole
    from gradaudit.adapters import _tfrecord

    monkeypatch.setattr(_tfrecord, "MAX_RECORD", 8 << 20)
    w = SummaryWriter(str(tmp_path / "big"), flush_secs=3600, max_queue=100_000)
    for s in range(0, 3000):
        w.add_scalar("train/loss", _loss(s), s)
        if s == 1000:
            w.add_text("notes", "\0" * (6 << 20), s)  # zero bytes: the worst speculative case
        if s == 2000:
            w.add_text("notes", "\0" * (9 << 20), s)  # over the (patched) cap
    w.close()
    (run,) = gradaudit.read_runs([tmp_path / "big"])
    assert run.series("train/loss")[0].tolist() == list(range(3000))
    (problem,) = [p.message for p in run.problems]
    assert "1 record(s) over 8 MiB skipped unread" in problem


def test_records_after_a_zeroed_stretch_are_found_again(tmp_path: Path) -> None:
    # a crash zeroes 2 MiB of blocks after 100 records: the framing is lost there and found again
    # at the first sound record after the zeros (a review: a chunk mostly of zero bytes once
    # yielded no candidates, and 40 % of the records after it were skipped)
    first = write_tbx(tmp_path / "a", range(0, 100), extra=False).read_bytes()
    after = write_tbx(tmp_path / "b", range(100, 20_000), extra=False).read_bytes()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.out.tfevents.1.host").write_bytes(first + b"\0" * (2 << 20) + after)
    (run,) = gradaudit.read_runs([run_dir])
    assert run.series("train/loss")[0].tolist() == list(range(20_000))
    (problem,) = [p.message for p in run.problems]
    assert f"{2 << 20} bytes skipped to the next sound record" in problem


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_hole_in_a_sparse_file_is_jumped_over_not_read(tmp_path: Path, where: str) -> None:
    # a crash can leave a hole in an event file (the space allocated, never written): the
    # reader resyncs after it as after any damage, without reading gigabytes of zeros
    path = _good(tmp_path, "h")
    data = path.read_bytes()
    offs = _record_offsets(path)
    at = offs[len(offs) // 2] if where == "middle" else len(data)
    write_with_hole(path, data, at)
    (run,), n_read = bytes_read(lambda: gradaudit.read_runs([tmp_path / "h"]))
    assert n_read < READ_LIMIT
    (problem,) = run.problems
    # the hole sits between two records: nothing is lost, every record is read
    assert run.series("train/loss")[0].tolist() == list(range(200))
    if where == "end":  # no record after the hole
        assert "no sound record follows it" in problem.message
    else:  # read again from the record after the hole
        assert f"{HOLE} bytes skipped to the next sound record (byte {at + HOLE})" \
            in problem.message
    path.unlink()  # (sparse: no disk, but no 2 GiB file left for other tools either)


def _event_of_size(step: int, size: int) -> event_pb2.Event:
    """An event (a scalar and a text tensor) whose serialized size is exactly ``size``."""
    def event(n: int) -> event_pb2.Event:
        text = tensor_pb2.TensorProto(dtype=7, string_val=[b"x" * n])
        return event_pb2.Event(wall_time=1.0, step=step, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag="train/loss", simple_value=_loss(step)),
            _value("notes", text, "text")]))

    n = size
    for _ in range(10):
        got = event(n).ByteSize()
        if got == size:
            return event(n)
        n -= got - size
    raise AssertionError(f"no event of {size} bytes")


def test_a_hole_is_searched_past_in_the_same_windows_as_zeros_written_there(
        tmp_path: Path) -> None:
    # after a hole the search goes on in the windows it would use over written zeros, so a
    # long record just after the hole is found exactly where it would be (a jump to the data
    # itself once lost a record nearly a window long: the window no longer held it whole)
    chunk = 1 << 20
    writer = EventFileWriter(str(tmp_path / "w"))
    for s in range(10):
        writer.add_event(event_pb2.Event(wall_time=1.0, step=s, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=_loss(s))])))
    writer.add_event(_event_of_size(10, chunk - 24))  # with its framing: a window less 8
    writer.add_event(event_pb2.Event(wall_time=1.0, step=11, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=_loss(11))])))
    writer.close()
    (written,) = (tmp_path / "w").glob("*tfevents*")
    data = written.read_bytes()
    at = _record_offsets(written)[-2]  # the long record
    # the search windows after the damage at `at` start at at + 1 + j (chunk - 64 KiB): the
    # long record starts 8 bytes into the fourth
    hole = 1 + 3 * (chunk - (1 << 16)) + 8

    def read(path: Path) -> tuple[list[int], list[str]]:
        status = FileStatus()
        sizes = [n for c in read_chunks(path, status, chunk_size=chunk) for n in c.lengths.tolist()]
        return sizes, status.problems

    zeros = tmp_path / "zeros.tfevents"
    zeros.write_bytes(data[:at] + bytes(hole) + data[at:])
    sparse = tmp_path / "sparse.tfevents"
    write_with_hole(sparse, data, at, hole)
    expected = read(zeros)
    assert chunk - 24 in expected[0] and len(expected[0]) == 13  # the long record is found
    assert read(sparse) == expected


def test_the_training_loss_is_read_not_a_validation_or_per_epoch_loss(tmp_path: Path) -> None:
    """A training loss under a name of one's own beside ``eval/loss`` (every 250 steps);
    fairseq's per-update ``train_inner/loss`` beside its per-epoch ``train/loss``; Megatron's
    ``lm loss`` every 5 steps beside its MoE ``z_loss`` every step: the loss that carries the
    fault at step 600 is read, and the gate sees the explosion."""
    for name, train_tag, other, every, train_every in (
            ("ce", "train/ce_loss", "eval/loss", 250, 1),
            ("fairseq", "train_inner/loss", "train/loss", 400, 1),
            ("moe", "lm loss", "z_loss", 1, 5)):
        w = SummaryWriter(str(tmp_path / name), flush_secs=3600, max_queue=100_000)
        for s in range(1000):
            if s % train_every == 0 or s == 600:
                w.add_scalar("train/grad_norm", 40.0 if s == 600 else 1.0 + 0.05 * math.sin(s),
                             s)
                w.add_scalar(train_tag, (6.0 if 600 <= s < 700 else 3.0) - s * 1e-4, s)
            if s % every == every - 1:
                w.add_scalar(other, 3.1 - s * 1e-4, s)
        w.close()
    result = gradaudit.scan([tmp_path])
    runs = {a.run: a for a in result.runs}
    assert [runs[n].loss_tag for n in ("ce", "fairseq", "moe")] == [
        "train/ce_loss", "train_inner/loss", "lm_loss"]  # (tensorboardX writes "lm loss" so)
    for audit in runs.values():
        assert audit.status == "explosion"
        (ep,) = [e for e in audit.episodes if e.severity == "explosion"]
        assert ep.onset_step == 600 and ep.loss_impact.excess_loss > 1.0
    assert result.exit_code == 1


def test_a_tensor_claiming_a_vast_shape_is_skipped_at_once(tmp_path: Path) -> None:
    # 300,000 dims of 2**62 in a 3.6 MB record: multiplied out as Python integers, the shape
    # took hours (its square in the count), and the good run beside it was never reported
    run = tmp_path / "bomb"
    write_tbx(run, range(300), extra=False)
    writer = EventFileWriter(str(run))
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2**62)] * 300_000)
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=5, summary=summary_pb2.Summary(
        value=[_value("train/loss", tensor_pb2.TensorProto(dtype=1, tensor_shape=shape,
                                                            float_val=[1.0]), "scalars")])))
    writer.close()
    script = ("import sys, gradaudit\n"
              "(r,) = gradaudit.read_runs([sys.argv[1]])\n"
              "print(len(r.series('train/loss')[0]))\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "300"  # the vast tensor is no scalar; the rest is read


def test_an_event_of_more_values_than_a_writer_puts_in_one_is_skipped(tmp_path: Path) -> None:
    # A hostile-input review: one 60 MB record of 6 million simple values took 1.7 GB and 43 s
    # (a Python tuple per value). An event of more values than a writer puts in one is skipped
    # and reported, decoded no further than the limit; an event of a few values (a TF1 merged
    # summary) and the run around it are read
    run = tmp_path / "run"
    write_tbx(run, range(300), extra=False)
    writer = EventFileWriter(str(run))
    for step, tags in ((5, ["hostile"] * 70_000), (6, ["merged/a", "merged/b", "merged/c"])):
        values = [summary_pb2.Summary.Value(tag=t, simple_value=1.0) for t in tags]
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                         summary=summary_pb2.Summary(value=values)))
    writer.close()
    (got,) = gradaudit.read_runs([run])
    assert _series(got, "train/loss")[0].tolist() == list(range(300))
    assert "hostile" not in got.tags()
    assert all(_series(got, f"merged/{t}")[0].tolist() == [6] for t in "abc")
    (problem,) = got.problems
    assert problem.message.startswith("1 event(s) of over 65,536 values skipped"), problem
