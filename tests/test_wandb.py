"""The ``.wandb`` run-file adapter, on runs written by the real wandb SDK in offline mode.

Expected values are the values the fixture logged; wandb's own protobuf classes decode the same
file as a second reference. Damaged copies of the real file check the error handling.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gradaudit
from gradaudit.adapters import wandb_run
from gradaudit.adapters.base import Source
from tests._holes import READ_LIMIT, bytes_read, write_with_hole

wandb = pytest.importorskip("wandb")

N_A = 3000  # log calls of run A
SWITCH = 1500  # from this call on, run A passes an explicit step=2*i
EVERY = 7  # eval/loss is logged every EVERY calls
BIG_AT = 1000  # the call that logs LAYERS per-layer norms at once (a record > 32 KiB)
LAYERS = 3000
N_B = 600  # log calls of the HF-style run B
HF_STEP = 4  # run B logs train/global_step = HF_STEP * (i + 1)


def _a_step(i: int) -> int:
    return i if i < SWITCH else 2 * i


def _a_values(i: int) -> dict[str, float]:
    g = 1.0 + 0.25 * math.sin(i / 17.0) + i * 1e-4
    if i == 200:
        g = math.inf
    loss = 3.0 * math.exp(-i / 900.0) + 0.01 * math.cos(i)
    if i == 100:
        loss = math.nan
    out = {
        "train/grad_norm": g,
        "train/loss": loss,
        "train/learning_rate": 3e-4 * min(1.0, (i + 1) / 100.0),
        "opt/moments/v": -math.inf if i == 201 else i / 3.0,  # logged as a nested dict
    }
    if i % EVERY == 0:
        out["eval/loss"] = 2.5 + i / 7.0
    return out


def _b_train(i: int) -> dict[str, float]:
    return {
        "train/grad_norm": 0.5 + (i % 13) / 10.0,
        "train/loss": 2.0 - i / 1000.0,
        "train/learning_rate": 1e-4,
        "train/epoch": i / 100.0,
    }


def _settings() -> object:
    return wandb.Settings(
        console="off", save_code=False, disable_git=True, x_disable_stats=True,
        x_disable_meta=True,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _no_tensorboard_patch_left():
    """Every test here leaves the process without wandb's TensorBoard patch, also one that
    fails before its ``_finish`` (see :func:`_unpatch_tensorboard`)."""
    yield
    _unpatch_tensorboard()


@pytest.fixture(scope="module")
def wandb_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two real offline runs (A: plain steps, B: HF-style train/global_step) in one root."""
    _unpatch_tensorboard()  # (runs written as in a fresh process, whatever ran here before)
    root = tmp_path_factory.mktemp("wandb_runs")
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var, sub in (
            ("WANDB_DIR", root),
            ("WANDB_CACHE_DIR", home / "cache"),
            ("WANDB_CONFIG_DIR", home / "config"),
            ("WANDB_DATA_DIR", home / "data"),
            ("WANDB_ARTIFACT_DIR", home / "artifacts"),
        ):
            mp.setenv(var, str(sub))
        t0 = time.time()
        run = wandb.init(mode="offline", dir=str(root), project="gradaudit-a", settings=_settings())
        for i in range(N_A):
            v = _a_values(i)
            logged: dict[str, object] = {k: x for k, x in v.items() if k != "opt/moments/v"}
            logged["opt"] = {"moments": {"v": v["opt/moments/v"]}}
            logged["note"] = "text is skipped"
            logged["flag"] = True
            logged["shape"] = [1, 2, 3]
            if i == BIG_AT:
                logged.update({f"layers/{j}/grad_norm": j * 0.5 for j in range(LAYERS)})
            if i < SWITCH:
                run.log(logged)
            else:
                run.log(logged, step=_a_step(i))
        id_a = run.id
        _finish(run)
        t1 = time.time()
        run = wandb.init(mode="offline", dir=str(root), project="gradaudit-b", settings=_settings())
        for i in range(N_B):
            run.log({**_b_train(i), "train/global_step": HF_STEP * (i + 1)})
            if (i + 1) % 100 == 0:
                run.log({"eval/loss": 1.5 + i / 1e4, "train/global_step": HF_STEP * (i + 1)})
        run.log({"custom/score": 0.75})  # no train/global_step: stays at W&B's _step
        id_b = run.id
        _finish(run)
    files = sorted(root.rglob("*.wandb"))
    by_id = {f.stem.removeprefix("run-"): f for f in files if "latest-run" not in f.parts}
    # The tests hold gradaudit to the steps logged: wandb must have written them (read by its
    # own protobuf classes). It does not where a TensorBoard patch was left on the process.
    written = sorted(_reference_history(by_id[id_a])["train/loss"])
    assert written == [_a_step(i) for i in range(N_A)], (
        "wandb did not write the steps given with step= (is TensorBoard still patched?)")
    return {"root": root, "a": by_id[id_a], "b": by_id[id_b], "t0": t0, "t1": t1}


def _expected_a() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for i in range(N_A):
        for tag, value in _a_values(i).items():
            out.setdefault(tag, ([], []))
            out[tag][0].append(_a_step(i))
            out[tag][1].append(value)
    return {t: (np.array(s, np.int64), np.array(v, np.float64)) for t, (s, v) in out.items()}


def _run(runs: list, wandb_file: Path):
    folder = wandb_file.parent.name
    hits = [r for r in runs if r.name.endswith(folder) or r.name == "."]
    assert len(hits) == 1, [r.name for r in runs]
    return hits[0]


def _assert_series(run, tag: str, steps: np.ndarray, values: np.ndarray) -> None:
    got_s, got_v = run.series(tag)
    np.testing.assert_array_equal(got_s, steps, err_msg=tag)
    np.testing.assert_array_equal(got_v, values, err_msg=tag)  # NaN == NaN here, exact floats


def test_reads_exactly_what_was_logged(wandb_root):
    runs = gradaudit.read_runs([wandb_root["root"]])
    run = _run(runs, wandb_root["a"])
    assert run.format == "wandb"
    expected = _expected_a()
    for tag, (steps, values) in expected.items():
        _assert_series(run, tag, steps, values)
    layer_tags = {f"layers/{j}/grad_norm" for j in range(LAYERS)}
    assert set(run.tags()) == set(expected) | layer_tags  # no _step/_runtime/text/bool/list
    assert run.grad_norm_tag == "train/grad_norm"
    assert run.loss_tag == "train/loss"
    assert run.lr_tag == "train/learning_rate"
    assert run.problems == []
    wall = run.wall_times("train/loss")
    assert np.all(np.diff(wall) >= 0)
    assert wandb_root["t0"] - 1 <= wall[0] and wall[-1] <= wandb_root["t1"] + 1


def test_record_larger_than_a_block(wandb_root):
    # Precondition: the per-layer record really is split over FIRST/MIDDLE/LAST chunks.
    data = wandb_root["a"].read_bytes()
    kinds = set()
    pos = 7
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        kinds.add(kind)
        pos += 7 + length
    assert {2, 3, 4} <= kinds
    run = _run(gradaudit.read_runs([wandb_root["a"].parent]), wandb_root["a"])
    for j in (0, 1, LAYERS // 2, LAYERS - 1):
        _assert_series(run, f"layers/{j}/grad_norm", np.array([BIG_AT]), np.array([j * 0.5]))


def test_hf_global_step_is_the_step(wandb_root):
    run = _run(gradaudit.read_runs([wandb_root["root"]]), wandb_root["b"])
    steps = HF_STEP * (np.arange(N_B) + 1)
    for tag in ("train/grad_norm", "train/loss", "train/learning_rate", "train/epoch"):
        values = np.array([_b_train(i)[tag] for i in range(N_B)])
        _assert_series(run, tag, steps, values)
    evals = [i for i in range(N_B) if (i + 1) % 100 == 0]
    _assert_series(
        run, "eval/loss", HF_STEP * (np.array(evals) + 1), np.array([1.5 + i / 1e4 for i in evals])
    )
    # The last row carries no global step: it keeps W&B's _step (one per log call).
    _assert_series(run, "custom/score", np.array([N_B + len(evals)]), np.array([0.75]))
    assert "train/global_step" not in run.tags()
    assert any("train/global_step" in note for note in run.notes)


def _reference_history(path: Path) -> dict[str, dict[int, float]]:
    """wandb's own protobuf classes over the file (framing per the LevelDB log spec)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, parts, pos = [], [], 7
    while pos < len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc
        parts.append(chunk)
        if kind in (1, 4):
            records.append(b"".join(parts))
            parts = []
        pos += 7 + length
    out: dict[str, dict[int, float]] = {}
    for raw in records:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {"/".join(item.nested_key) or item.key: item.value_json for item in rec.history.item}
        step = int(row.pop("_step"))
        for key, text in row.items():
            if key.startswith("_") or text[:1] in ('"', "{", "[", "t", "f", "n"):
                continue
            value = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(text)
            out.setdefault(key, {})[step] = float(text) if value is None else value
    return out


def test_matches_wandb_protobuf_reference(wandb_root):
    reference = _reference_history(wandb_root["a"])
    raws = wandb_run.read(Source("wandb", ".", (wandb_root["a"],)))
    frame = raws[0].points
    assert set(frame["tag"].cast(str).unique()) == set(reference)
    for tag, points in reference.items():
        sub = frame.filter(frame["tag"].cast(str) == tag)
        steps = np.array(sorted(points))
        np.testing.assert_array_equal(sub["step"].to_numpy(), steps, err_msg=tag)
        np.testing.assert_array_equal(
            sub["value"].to_numpy(), np.array([points[s] for s in steps]), err_msg=tag
        )


def test_each_run_found_once_under_its_real_folder(wandb_root):
    root = wandb_root["root"]
    assert (root / "wandb" / "latest-run").is_symlink()
    runs = gradaudit.read_runs([root])
    wandb_runs = sorted(r.name for r in runs if r.format == "wandb")
    assert wandb_runs == sorted(f"wandb/{wandb_root[k].parent.name}" for k in ("a", "b")), (
        wandb_runs
    )
    assert all(name.startswith("wandb/offline-run-") for name in wandb_runs)


# --- damaged input -------------------------------------------------------------------------


def _copy_run(src: Path, root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    dst = folder / src.name
    shutil.copyfile(src, dst)
    return dst


def _errors_by_folder(result) -> dict[str, str]:
    """``{folder: message}``; an error's path is the file, or the run's name."""
    out = {}
    for e in result.errors:
        path = Path(e.path)
        out[path.parent.name if path.suffix == ".wandb" else path.name] = e.message
    return out


def _history_chunk_in_block(data: bytes, block: int) -> int:
    """File offset of the data of a FULL chunk in ``block`` that holds a history record."""
    from wandb.proto import wandb_internal_pb2

    pos = block * 32768
    end = pos + 32768
    # Find the first chunk header of the block (chunks never cross blocks: one starts here).
    while pos + 7 <= end:
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        if kind == 1:
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunk)
            if rec.WhichOneof("record_type") == "history":
                return pos + 7
        pos += 7 + length
    raise LookupError("no history record in that block")


def _history_chunk_from_block(data: bytes, first: int) -> int:
    """Like ``_history_chunk_in_block`` for the first block from ``first`` that has one
    (a block can be filled by the middle of one large record)."""
    for block in range(first, len(data) // 32768):
        try:
            return _history_chunk_in_block(data, block)
        except LookupError:
            continue
    raise AssertionError("no history record after that block")


def test_truncated_file_keeps_complete_records(wandb_root, tmp_path):
    data = wandb_root["a"].read_bytes()
    cut = _copy_run(wandb_root["a"], tmp_path, "cut")
    # Cut in the middle of a history record's data, well inside the history (a cut at a
    # fixed fraction of the file can land on a record's end, which leaves nothing to detect).
    at = _history_chunk_from_block(data, len(data) * 3 // 5 // 32768) + 5
    cut.write_bytes(data[:at])
    result = gradaudit.inspect([tmp_path])
    (run,) = result.runs
    assert [p.message for p in run.problems] == [
        "file ends inside a record (run still being written?)"
    ]
    # Every point kept is exactly what was logged; only a tail is missing.
    expected = _expected_a()
    steps, values = run.series("train/loss")
    n = steps.size
    assert 0.4 * N_A < n < 0.8 * N_A
    np.testing.assert_array_equal(steps, expected["train/loss"][0][:n])
    np.testing.assert_array_equal(values, expected["train/loss"][1][:n])


def test_flipped_byte_skips_one_block(wandb_root, tmp_path):
    data = bytearray(wandb_root["a"].read_bytes())
    bad = _copy_run(wandb_root["a"], tmp_path, "flipped")
    _copy_run(wandb_root["b"], tmp_path, "good")
    at = _history_chunk_from_block(bytes(data), 20) + 30
    data[at] ^= 0x5A
    bad.write_bytes(bytes(data))
    result = gradaudit.inspect([tmp_path])
    runs = {r.name: r for r in result.runs}
    assert set(runs) == {"flipped", "good"}
    assert runs["good"].problems == []
    run = runs["flipped"]
    problem, missing = run.problems
    assert "corrupt block" in problem.message and "checksum" in problem.message
    expected = _expected_a()
    exp_s, exp_v = expected["train/grad_norm"]
    steps, values = run.series("train/grad_norm")
    lost = exp_s.size - steps.size
    assert 0 < lost < 200  # one 32 KiB block holds well under 200 log calls
    # the steps that went with the damaged block are named ("a-b" per stretch, "a" for one
    # step), and how many rows: which rows the block held depends on wandb's layout
    gone = exp_s[~np.isin(exp_s, steps)]
    m = re.search(r"history lost where the file is damaged: steps (.+) \(about (\d+) row",
                  missing.message)
    assert m, missing.message
    named = np.zeros(exp_s.size, bool)
    for span in m.group(1).split(", "):
        a, _, b = span.partition("-")
        named |= (exp_s >= int(a)) & (exp_s <= int(b or a))
    np.testing.assert_array_equal(exp_s[named], gone)
    assert int(m.group(2)) == gone.size
    assert steps[-1] == exp_s[-1]  # reading resumed after the damaged block
    keep = np.isin(exp_s, steps)
    np.testing.assert_array_equal(values, exp_v[keep])


def test_lying_chunk_length_is_contained(wandb_root, tmp_path):
    data = bytearray(wandb_root["a"].read_bytes())
    bad = _copy_run(wandb_root["a"], tmp_path, "lying")
    # Make the first chunk of block 10 claim 65535 bytes (more than a block).
    struct.pack_into("<H", data, 10 * 32768 + 4, 0xFFFF)
    bad.write_bytes(bytes(data))
    (run,) = gradaudit.read_runs([tmp_path])
    problem = run.problems[0]
    assert "corrupt block" in problem.message
    assert run.series("train/loss")[0][-1] == _a_step(N_A - 1)


def test_bad_files_are_reported_and_good_runs_still_read(wandb_root, tmp_path):
    _copy_run(wandb_root["a"], tmp_path, "good")
    garbage = tmp_path / "garbage" / "run-x.wandb"
    garbage.parent.mkdir()
    garbage.write_bytes(os.urandom(5000))
    empty = tmp_path / "empty" / "run-y.wandb"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    header_only = tmp_path / "header_only" / "run-z.wandb"
    header_only.parent.mkdir()
    header_only.write_bytes(wandb_root["a"].read_bytes()[:7])
    result = gradaudit.inspect([tmp_path])
    assert [r.name for r in result.runs] == ["good"]
    errors = _errors_by_folder(result)
    assert "not a W&B run file" in errors["garbage"] and "run-x.wandb" in errors["garbage"]
    assert "not a W&B run file (an empty file)" in errors["empty"]
    assert "no history" in errors["header_only"] or "no scalar" in errors["header_only"]
    assert result.exit_code == 0


def test_random_damage_never_crashes(wandb_root, tmp_path):
    """Flipped bytes, lying lengths and cuts anywhere: a clear result, never an exception."""
    data = wandb_root["b"].read_bytes()
    rng = np.random.default_rng(0)
    expected = {HF_STEP * (i + 1): _b_train(i)["train/loss"] for i in range(N_B)}
    for trial in range(12):
        damaged = bytearray(data)
        for at in rng.integers(7, len(data), size=int(rng.integers(1, 40))):
            damaged[at] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(8, len(damaged)))]
        src = Source("wandb", ".", (tmp_path / f"run-{trial}.wandb",))
        src.files[0].write_bytes(bytes(damaged))
        try:
            (raw,) = wandb_run.read(src)
        except gradaudit.errors.ReadError:
            continue
        frame = raw.points.filter(raw.points["tag"] == "train/loss")
        # A CRC-checked record is either lost or exact: no value comes back altered.
        for step, value in zip(frame["step"], frame["value"], strict=True):
            if step in expected:
                assert value == expected[step]


def test_a_value_with_invalid_utf8_is_no_number_and_loses_nothing_else():
    # a damaged byte inside one history value (its record CRC fixed up): polars refuses to
    # cast a whole batch for it; only that value is lost, not the run
    import polars as pl

    from gradaudit.adapters.wandb_run import _parse_numbers

    values, ok = _parse_numbers(pl.Series([b"1.5", b"2\xb9", b"NaN", b"-3e2"], dtype=pl.Binary))
    assert ok.tolist() == [True, False, True, True]
    assert values[0] == 1.5 and values[3] == -300.0 and np.isnan(values[2])


def test_a_zero_filled_block_mid_file_is_damage_with_its_steps_named(wandb_root, tmp_path):
    # zeroed space is padding at a file's end, but a sound chunk after it means a block was lost
    data = bytearray(wandb_root["a"].read_bytes())
    bad = _copy_run(wandb_root["a"], tmp_path, "zeroed")
    data[10 * 32768: 12 * 32768] = bytes(2 * 32768)
    bad.write_bytes(bytes(data))
    (run,) = gradaudit.read_runs([tmp_path])
    exp_s = _expected_a()["train/grad_norm"][0]
    steps = run.series("train/grad_norm")[0]
    gone = exp_s[~np.isin(exp_s, steps)]
    assert gone.size > 0
    messages = " | ".join(p.message for p in run.problems)
    assert "zero-filled" in messages and f"steps {gone[0]}-{gone[-1]}" in messages



def _finish(run) -> None:
    """finish() and shut wandb's service down: finish() alone does not always wait for the
    service to write the last rows on a loaded machine (a test read 269 of 300 rows once).
    Then take off the TensorBoard patch a ``sync_tensorboard`` run leaves on the process."""
    run.finish()
    wandb.teardown()
    _unpatch_tensorboard()


def _unpatch_tensorboard() -> None:
    """Undo what ``wandb.init(sync_tensorboard=True)`` does to the whole process: it patches
    TensorBoard's writers and keeps the patch after finish() and teardown(). While the patch is
    on, ``run.log(..., step=s)`` sends no step (wandb 0.31: ``publish_step`` is off when
    ``wandb.patched["tensorboard"]`` is set), so a later run's rows silently stay on ``_step``,
    and its telemetry says TensorBoard is patched. Under ``pytest -n 2`` a worker that ran a
    synced test before it built ``wandb_root`` wrote run A on steps 0-2999."""
    if wandb.patched["tensorboard"]:
        wandb.tensorboard.unpatch()


def _from_zero(steps: np.ndarray, at_least: int) -> bool:
    """Steps 0, 1, 2, ... with at least ``at_least`` of them."""
    return steps.size >= at_least and steps.tolist() == list(range(steps.size))


def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder for real offline wandb runs, with wandb's own folders under tmp_path too."""
    root, home = tmp_path / "runs", tmp_path / "home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", root), ("WANDB_CACHE_DIR", home / "cache"),
                     ("WANDB_CONFIG_DIR", home / "config"), ("WANDB_DATA_DIR", home / "data"),
                     ("WANDB_ARTIFACT_DIR", home / "artifacts")):
        monkeypatch.setenv(var, str(sub))
    root.mkdir()
    return root


def test_a_resumed_offline_run_is_one_run_unless_its_steps_restart(tmp_path, monkeypatch):
    # wandb.init(id=..., resume="allow") after a crash writes a second run-<time>-<id> folder;
    # read apart, the first half "never came back" from an lr spike the run recovered from
    # (a user review). A later folder whose steps start again at 0 says nothing of where it
    # resumed: those stay runs of their own.
    root = _offline(tmp_path, monkeypatch)

    def session(run_id: str, steps: range, base: float) -> None:
        run = wandb.init(mode="offline", dir=str(root), project="resume", id=run_id,
                         resume="allow", settings=_settings())
        for s in steps:
            run.log({"train/loss": base + s / 1000, "train/grad_norm": 1.0}, step=s)
        _finish(run)
        time.sleep(1.1)  # the next folder's name carries the next second

    session("rsm1", range(0, 80), 1.0)
    session("rsm1", range(60, 150), 5.0)  # resumed from a checkpoint at step 60
    session("rst2", range(0, 60), 1.0)
    session("rst2", range(0, 30), 5.0)  # a counter that starts again at 0
    runs = {r.name.split("-")[-1]: r for r in gradaudit.read_runs([root])}
    resumed = runs["rsm1"]
    steps, loss = resumed.series("train/loss")
    assert _from_zero(steps, at_least=150)
    np.testing.assert_allclose(loss[55:65], [1.055, 1.056, 1.057, 1.058, 1.059,
                                             5.06, 5.061, 5.062, 5.063, 5.064], rtol=1e-6)
    assert any(n.startswith("a resumed run: read as one from 2 run folders") for n in resumed.notes)
    split = [r for r in gradaudit.read_runs([root]) if "rst2" in r.name]
    assert sorted(len(r.series("train/loss")[0]) for r in split) == [30, 60]
    assert all(_from_zero(r.series("train/loss")[0], at_least=30) for r in split)
    assert sum("#resumed-" in r.name for r in split) == 1


def test_a_define_metric_step_axis_is_the_step(tmp_path, monkeypatch):
    # define_metric("*", step_metric="global_step") with a validation wandb.log call of its own
    # every 100 steps: _step counts the calls, so the run read 1528 steps for 1500 and an lr
    # spike at 500 was reported at 510 (a user review)
    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="axis", name="lr-sweep-3",
                     settings=_settings())
    run.define_metric("global_step")
    run.define_metric("*", step_metric="global_step")
    for s in range(300):
        run.log({"train/loss": 2.0 - s / 1000, "train/grad_norm": 1.0 + (s == 250),
                 "global_step": s})
        if s % 100 == 99:
            run.log({"val/loss": 1.5 - s / 1000, "global_step": s})
    _finish(run)
    (got,) = gradaudit.read_runs([root])
    steps, grad = got.series("train/grad_norm")
    assert _from_zero(steps, at_least=300) and grad[250] == 2.0
    assert got.series("val/loss")[0].tolist() == [99, 199, 299]
    assert any("steps are the logged 'global_step'" in n for n in got.notes)
    # the run is named by its folder; the name given to wandb.init tells runs apart
    assert "W&B run 'lr-sweep-3' in project 'axis'" in got.notes


def test_a_trainers_step_wins_over_a_define_metric_axis_in_the_same_row(tmp_path, monkeypatch):
    # an axis of one's own (samples seen) declared for every metric, beside Lightning's
    # trainer/global_step in each row: the trainer's step is the run's (docs/formats.md)
    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="axes", settings=_settings())
    run.define_metric("samples")
    run.define_metric("*", step_metric="samples")
    for s in range(100):
        run.log({"train/loss": 2.0 - s / 1000, "samples": 32 * s, "trainer/global_step": s})
    _finish(run)
    (got,) = gradaudit.read_runs([root])
    assert got.series("train/loss")[0].tolist() == list(range(100))


def test_a_step_axis_for_some_metrics_or_of_fractions_is_no_step(tmp_path, monkeypatch):
    # define_metric("val/*", step_metric="epoch") with `epoch` in the training rows too put
    # every training row at its epoch: 1000 points became 10 (review); an axis of fractions
    # (epoch = s / 100) made a mixed axis that read as rewinds
    root = _offline(tmp_path, monkeypatch)
    for name, glob, epoch in (("val-axis", "val/*", lambda s: s // 100),
                              ("fraction-axis", "*", lambda s: s / 100)):
        run = wandb.init(mode="offline", dir=str(root), project="axes", name=name,
                         settings=_settings())
        run.define_metric("epoch")
        run.define_metric(glob, step_metric="epoch")
        for s in range(300):
            run.log({"train/loss": 2.0 - s / 1000, "train/grad_norm": 1.0, "epoch": epoch(s)},
                    step=s)
        _finish(run)
    for got in gradaudit.read_runs([root]):
        assert _from_zero(got.series("train/grad_norm")[0], at_least=300), got.notes
    fraction = next(r for r in gradaudit.read_runs([root]) if "'fraction-axis'" in r.notes[0])
    assert any("'epoch' is not whole numbers" in n for n in fraction.notes)


def test_a_trainer_logging_to_wandb_and_synced_tensorboard_keeps_each_points_step(
        tmp_path, monkeypatch):
    # The HF Trainer's W&B callback declares train/global_step the step of every metric with
    # step_sync: W&B copies its latest value into each synced TensorBoard row too, so those
    # rows all landed on the latest trainer step (a review). A synced row's own step wins.
    from tensorboardX import SummaryWriter

    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="hfsync", sync_tensorboard=True,
                     settings=_settings())
    run.define_metric("train/global_step")
    run.define_metric("*", step_metric="train/global_step", step_sync=True)
    writer = SummaryWriter(str(root / "runs" / "Nov29"), flush_secs=3600)
    steps = np.arange(10, 1510, 10)
    for s in steps.tolist():
        logs = {"train/loss": (6.0 if 600 <= s < 900 else 3.0) - s * 1e-4,
                "train/grad_norm": 60.0 if s == 600 else 1.0 + 0.01 * (s % 7)}
        for key, value in logs.items():
            writer.add_scalar(key, value, s)
        run.log({**logs, "train/global_step": s})
        if s % 500 == 0:
            writer.flush()
    writer.close()
    _finish(run)
    (got,) = [r for r in gradaudit.read_runs([root]) if r.format == "wandb"]
    s, v = got.series("train/grad_norm")
    np.testing.assert_array_equal(s, steps)
    # every point of the spike, the Trainer's and TensorBoard's copy, at its step (the copy
    # landed at the trainer step W&B had when it synced the event file: 1000)
    # each row on its own step: the Trainer's on its step, the synced ones on theirs (the
    # Trainer's step had claimed all 300, and a step's later copy could carry another's value)
    assert got.notes[:2] == [
        "steps are the TensorBoard steps that sync_tensorboard logged as 'global_step' (150 of "
        "300 history rows carry it)",
        "steps are the logged 'train/global_step' (150 of 300 history rows carry it)"]
    assert [(e.kind, e.onset_step) for e in gradaudit.audit_run(got).episodes] == [
        ("spike", 600)]


def test_own_rows_logged_more_often_than_tensorboard_are_spread_not_merged(tmp_path,
                                                                           monkeypatch):
    # the loss through a SummaryWriter every 10 steps, the grad norm through wandb.log every
    # step: placed each at the TensorBoard step logged last before it, 10 grad norms shared a
    # step and the later won - the spike at 1203-1206 was lost (a review)
    import time

    from tensorboardX import SummaryWriter

    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="dense", sync_tensorboard=True,
                     settings=_settings())
    writer = SummaryWriter(str(root / "tb"), flush_secs=3600)
    for s in range(2000):
        if s % 10 == 0:
            writer.add_scalar("loss", 3.0 - s * 1e-4, s)
        run.log({"grad_norm": 80.0 if 1203 <= s <= 1206 else 1.0 + 0.01 * (s % 7)})
        time.sleep(0.0002)  # (a training step takes time; the log calls' times spread out)
        if (s + 1) % 500 == 0:
            time.sleep(0.3)  # an eval at an interval's end: its rows looked logged at one moment
    writer.close()
    _finish(run)
    (got,) = [r for r in gradaudit.read_runs([root]) if r.format == "wandb"]
    s, v = got.series("grad_norm")
    assert s.size == 2000 and np.unique(s).size == 2000, got.notes
    assert s[v == 80.0].tolist() == [1203, 1204, 1205, 1206]
    assert "2000 rows of the run's own log calls are placed on the TensorBoard steps by wall " \
        "time" in got.notes


def test_own_rows_keep_their_steps_through_pauses_and_past_the_writers_last_point(
        tmp_path, monkeypatch):
    # own rows every 10 steps, TensorBoard every 100, a pause after every 500th step (an eval):
    # placed by time, rows were up to 65 steps off; and the writer's points end at 1000 (a
    # crash loses its unflushed tail) while the own rows go on to 1990: they were squeezed
    # into one interval (a review). Every own row logs its step.
    import time

    from tensorboardX import SummaryWriter

    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="pause", sync_tensorboard=True,
                     settings=_settings())
    writer = SummaryWriter(str(root / "tb"), flush_secs=3600)
    for s in range(2000):
        if s % 100 == 0 and s <= 1000:
            writer.add_scalar("loss", 3.0, s)
        if s % 10 == 0:
            run.log({"own": float(s)})
        time.sleep(0.0005)
        if s % 500 == 0:
            time.sleep(0.3)
    writer.close()
    _finish(run)
    (got,) = [r for r in gradaudit.read_runs([root]) if r.format == "wandb"]
    s, v = got.series("own")
    np.testing.assert_array_equal(s, v)


def test_own_rows_of_a_resumed_synced_run_are_placed_in_each_launch(tmp_path, monkeypatch):
    # a crash at 300, resumed from 200: over the whole run the TensorBoard steps' running top
    # stayed at 299 through the redo, and the redo's own rows piled up there (a review). Each
    # launch's file is placed on its own TensorBoard points. Every own row logs its step (and
    # a half in the second launch, whose values win where it trained again).
    import time

    from tensorboardX import SummaryWriter

    root = _offline(tmp_path, monkeypatch)
    for launch, (lo, hi) in enumerate(((0, 300), (200, 500))):
        run = wandb.init(mode="offline", dir=str(root), project="resume", id="sync1",
                         resume="allow", sync_tensorboard=True, settings=_settings())
        writer = SummaryWriter(str(root / "tb"), flush_secs=3600)
        for s in range(lo, hi):
            if s % 10 == 0:
                writer.add_scalar("loss", 3.0, s)
            run.log({"own": s + 0.5 * launch})
            time.sleep(0.001)
        writer.close()
        _finish(run)
        time.sleep(1.1)  # (the next launch's folder is named by the second it starts)
    (got,) = [r for r in gradaudit.read_runs([root]) if r.format == "wandb"]
    s, v = got.series("own")
    assert s.tolist() == list(range(500)), got.notes
    np.testing.assert_array_equal(v, np.where(s >= 200, s + 0.5, s))


def test_a_sync_tensorboard_run_is_read_on_its_tensorboard_steps(tmp_path, monkeypatch):
    # wandb.init(sync_tensorboard=True) copies each TensorBoard event into a history row with
    # its step as 'global_step'; _step only counts rows. Read on _step, a writer logging every
    # 10 steps put the spike at 600 at step 60 and listed 'global_step' as a metric (review).
    # Two writers (train, val) and the user's own wandb.log rows in one run.
    import time

    from tensorboardX import SummaryWriter

    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="tbsync", sync_tensorboard=True,
                     settings=_settings())
    train = SummaryWriter(str(root / "tb" / "train"), flush_secs=3600, max_queue=100_000)
    val = SummaryWriter(str(root / "tb" / "val"), flush_secs=3600, max_queue=100_000)
    steps = np.arange(0, 3000, 10)
    grad = np.where(steps == 600, 60.0, 1.0 + 0.1 * np.sin(steps))
    loss = np.where((steps >= 600) & (steps < 900), 6.0, 3.0) - steps * 1e-4
    for s, g, x in zip(steps.tolist(), grad.tolist(), loss.tolist(), strict=True):
        train.add_scalar("grad_norm", g, s)
        train.add_scalar("loss", x, s)
        if s % 500 == 0:
            val.add_scalar("loss", 2.0 - s / 1e4, s)
        if s % 1000 == 0:
            run.log({"own/score": s / 1000})
            time.sleep(0.05)  # (the next training step: far longer than a log call)
    train.close()
    val.close()
    _finish(run)
    runs = {r.name: r for r in gradaudit.read_runs([root])}
    (got,) = [r for r in runs.values() if r.format == "wandb"]
    f32 = np.float32  # TensorBoard keeps float32; W&B writes each as its shortest text
    for tag, values in (("train/grad_norm", grad), ("train/loss", loss)):
        s, v = got.series(tag)
        np.testing.assert_array_equal(s, steps, err_msg=tag)
        np.testing.assert_array_equal(v.astype(f32), values.astype(f32), err_msg=tag)
    val_steps = np.arange(0, 3000, 500)
    np.testing.assert_array_equal(got.series("val/loss")[0], val_steps)
    np.testing.assert_array_equal(got.series("val/loss")[1].astype(f32),
                                  (2.0 - val_steps / 1e4).astype(f32))
    assert sorted(got.tags()) == ["own/score", "train/grad_norm", "train/loss", "val/loss"]
    # the run's own log calls by their time between the TensorBoard points around them (they
    # were on _step, 0-2: an lr logged so was 10x off the grad norm's axis, a review); one
    # row alone is placed by its time there, so within its interval (a first log call can be
    # slow on a busy machine)
    own_steps = got.series("own/score")[0]
    assert ((own_steps >= [0, 1000, 2000]) & (own_steps < [10, 1010, 2010])).all(), own_steps
    assert got.series("own/score")[1].tolist() == [0.0, 1.0, 2.0]
    assert any(re.fullmatch(r"steps are the TensorBoard steps that sync_tensorboard logged as "
                            r"'global_step' \(\d+ of \d+ history rows carry it\)", n)
               for n in got.notes), got.notes
    assert "3 rows of the run's own log calls are placed on the TensorBoard steps by wall " \
        "time" in got.notes
    # the same training read from its TensorBoard files: the same steps, values and spike
    tb = {n: r for n, r in runs.items() if r.format == "tensorboard"}
    assert sorted(tb) == ["tb/train", "tb/val"]
    for tag in ("grad_norm", "loss"):
        for mine, theirs in zip(got.series(f"train/{tag}"), tb["tb/train"].series(tag),
                                strict=True):
            np.testing.assert_array_equal(mine.astype(f32), theirs.astype(f32), err_msg=tag)
    onsets = [[(e.kind, e.onset_step) for e in gradaudit.audit_run(r).episodes]
              for r in (got, tb["tb/train"])]
    assert onsets[0] == onsets[1] and ("spike", 600) in onsets[0], onsets


def _tb_signal(kind: str) -> bytes:
    """A ``Record.tbrecord`` (log_dir "tb") or a ``Record.telemetry`` with ``feature``
    ``tensorboard_sync`` (field 35) set."""
    if kind == "tbrecord":
        return bytes([0x08, 1]) + _pb(9, _pb(1, b"tb"))
    return bytes([0x08, 1]) + _pb(11, _pb(3, bytes([0x98, 0x02, 1])))


@pytest.mark.parametrize("signal", [None, "tbrecord", "telemetry"])
def test_global_step_is_the_step_only_in_a_run_that_syncs_tensorboard(signal):
    # a user's own metric named global_step (here samples seen) is no step: only a run that
    # W&B syncs TensorBoard into (a tbrecord, or its telemetry says so) is read on it
    hist = wandb_run._History()
    rows = [_history_record(i + 2, {"_step": str(i), "global_step": str(32 * i),
                                    "loss": "1.0"}) for i in range(4)]
    hist.add_records(([_tb_signal(signal)] if signal else []) + rows)
    frame, notes = hist.to_frame()
    loss = frame.filter(pl.col("tag") == "loss")["step"].to_list()
    if signal is None:
        assert loss == [0, 1, 2, 3] and "global_step" in frame["tag"].cast(str).to_list()
        assert notes == []
    else:
        assert loss == [0, 32, 64, 96] and set(frame["tag"].cast(str)) == {"loss"}
        assert len(notes) == 1 and "sync_tensorboard" in notes[0]


def test_a_run_after_a_sync_tensorboard_run_keeps_the_steps_it_logged(tmp_path, monkeypatch):
    # wandb keeps its TensorBoard patch on the process after a sync_tensorboard run ends, and
    # with it on, wandb.log(step=...) sends no step: under pytest -n 2, a worker that had run a
    # synced test first wrote the module's run A on _step, and 5 tests failed as if gradaudit had
    # misread its step= rows (2 of 5 full runs on a loaded machine). _finish takes it off
    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="order", sync_tensorboard=True,
                     settings=_settings())
    run.log({"x": 1.0})
    _finish(run)
    run = wandb.init(mode="offline", dir=str(root), project="order", settings=_settings())
    for s in range(5):
        run.log({"train/loss": 2.0 - s / 10}, step=10 * s)
    second = run.id
    _finish(run)
    (path,) = root.glob(f"wandb/offline-run-*-{second}/run-{second}.wandb")
    assert sorted(_reference_history(path)["train/loss"]) == [0, 10, 20, 30, 40]  # what wandb wrote
    (got,) = gradaudit.read_runs([path.parent])
    assert got.series("train/loss")[0].tolist() == [0, 10, 20, 30, 40]


def test_an_unusable_folder_of_a_resumed_run_is_a_problem_not_the_runs_end(tmp_path,
                                                                         monkeypatch):
    # the second folder of a resume whose job was killed at start-up holds an empty .wandb
    # file: the whole run was lost (review); the first folder alone read fine
    root = _offline(tmp_path, monkeypatch)
    run = wandb.init(mode="offline", dir=str(root), project="resume", id="kill1",
                     resume="allow", settings=_settings())
    for s in range(100):
        run.log({"train/loss": 1.0, "train/grad_norm": 1.0}, step=s)
    _finish(run)
    first = next(root.glob("wandb/offline-run-*-kill1"))
    later = first.parent / (first.name[:12] + "99991231_235959-kill1")
    later.mkdir()
    (later / "run-kill1.wandb").write_bytes(b"")
    (got,) = gradaudit.read_runs([root])
    assert _from_zero(got.series("train/loss")[0], at_least=100)
    assert any("99991231_235959-kill1" in p.message for p in got.problems), got.problems


def _pb(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``payload`` < 128 bytes)."""
    return bytes([field << 3 | 2, len(payload)]) + payload


def _history_record(num: int, items: dict[str, str] | list[tuple[str, str]],
                    step_num: int | None = None) -> bytes:
    """``Record{num, history{item{nested_key, value_json}..., step{num}}}``; ``items`` as
    pairs where a key comes twice."""
    pairs = items.items() if isinstance(items, dict) else items
    body = b"".join(_pb(1, _pb(2, k.encode()) + b"\x82\x01" + bytes([len(v)]) + v.encode())
                    for k, v in pairs)
    if step_num is not None:
        body += _pb(2, bytes([0x08, step_num]))
    return bytes([0x08, num]) + _pb(2, body)


def test_rows_without_a_step_follow_the_previous_one_and_wandb_keys_are_no_points():
    # W&B's own keys (_step, _timestamp, _runtime) place and time the rows and are no series;
    # a row without any step is one past the previous row's step; a _step that is no whole
    # number leaves the row to HistoryRecord.step.num
    hist = wandb_run._History()
    rows = [
        _history_record(1, {"_step": "10", "_timestamp": "100.5", "b": "2.0", "a": "1.0"}),
        _history_record(2, {"a": "3.0"}),
        _history_record(3, {"b": "4.0", "_runtime": "7"}),
        _history_record(4, {"_step": "20", "a": "5.0"}),
        _history_record(5, {"_step": "1.5", "a": "6.0"}, step_num=30),
    ]
    assert hist.add_records(rows) == 0
    frame, _ = hist.to_frame()
    assert frame["tag"].dtype == pl.Categorical
    got = {tag: list(zip(part["step"], part["value"], strict=True))
           for (tag,), part in frame.group_by("tag", maintain_order=True)}
    assert got == {"a": [(10, 1.0), (11, 3.0), (20, 5.0), (30, 6.0)],
                   "b": [(10, 2.0), (12, 4.0)]}
    assert list(got) == ["a", "b"]  # grouped by tag in name order, as the canonical frame is
    wall = frame.filter(pl.col("wall_time").is_not_nan())
    assert wall.select("tag", "step").rows() == [("a", 10), ("b", 10)]


def _log_file(records: list[bytes], start: bytes = b":W&B\xe1\xbe\x00") -> bytes:
    """A ``.wandb`` file of ``records`` after ``start`` (the W&B header, or a whole file to add
    them to): LevelDB log chunks in 32 KiB blocks with W&B's checksum (IEEE CRC-32 over the
    type byte and the data)."""
    out = bytearray(start)
    for record in records:
        data = memoryview(record)  # (pieces of a long record cut without copying the rest)
        first = True
        while True:
            room = 32768 - len(out) % 32768
            if room < 7:
                out += bytes(room)
                continue
            piece, data = data[: room - 7], data[room - 7:]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece),
                               kind)
            out += piece
            first = False
            if not data:
                break
    return bytes(out)


@pytest.mark.parametrize("block", [20, 40])
def test_rows_lost_to_a_corrupt_block_are_named_after_records_that_could_not_be_decoded(
        tmp_path, block):
    # three history records that frame and checksum fine but cannot be decoded (an item longer
    # than its record), then 30000 rows: a flipped byte in a later block loses the rest of that
    # block, and the problem names exactly the steps lost (the undecodable records are no rows)
    undecodable = bytes([0x08, 0x01]) + _pb(2, b"\x0a\x85\x01" + b"x" * 10)
    rows = [_history_record(2, {"_step": str(i), "loss": f"{i / 7:.4f}"}) for i in range(30000)]
    data = bytearray(_log_file([undecodable] * 3 + rows))
    data[block * 32768 + 100] ^= 0xFF
    path = tmp_path / "wandb" / "offline-run-20260101_000000-lost" / "run-lost.wandb"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(data))
    (run,) = gradaudit.read_runs([path])
    steps = run.series("loss")[0]
    gone = np.setdiff1d(np.arange(30000), steps)
    assert 0 < gone.size < 1000 and gone[-1] - gone[0] == gone.size - 1
    messages = " | ".join(p.message for p in run.problems)
    assert f"history lost where the file is damaged: steps {gone[0]}-{gone[-1]}" in messages


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field of any number and length."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _row(items: list[tuple[str, str]]) -> bytes:
    """``Record{history{item{key, value_json}...}}`` of any size."""
    return _field(2, b"".join(_field(1, _field(1, k.encode()) + _field(16, v.encode()))
                              for k, v in items))


@pytest.mark.parametrize("hostile", ["wide", "wide, an item of a long value first", "long"])
def test_a_history_row_no_real_run_holds_is_skipped_and_the_rest_of_the_run_read(
        wandb_root, tmp_path, hostile):
    # A hostile-input review: one history row of 8 million items (84 MB) took 8 GB and two
    # minutes. A row of more items than a real one holds (in the usual shape, decoded in
    # NumPy, or another, one by one), and a record longer than W&B lets a log call be, are
    # skipped and reported, walked no further than the limit (the record's chunks never
    # joined); the real run they were added to, and a row after them, are read
    if hostile.startswith("wide"):
        first = [("note", '"' + "x" * 200 + '"')] if "long value" in hostile else []
        bad = _row([("_step", "7000"), *first, *[("hostile", "7.0")] * 70_000])
        said = "1 history row(s) of over 65,536 items skipped"
    else:
        bad = _row([("_step", "7000"), ("hostile", "7.0"),
                    ("note", '"' + "x" * (64 << 20) + '"')])
        said = "1 record(s) over 64 MiB skipped unread"
    path = _copy_run(wandb_root["a"], tmp_path, "offline-run-20260101_000000-hostile")
    after = _row([("_step", "7001"), ("train/grad_norm", "2.5")])
    path.write_bytes(_log_file([bad, after], path.read_bytes()))
    (run,) = gradaudit.read_runs([tmp_path])
    steps, values = _expected_a()["train/grad_norm"]
    _assert_series(run, "train/grad_norm", np.append(steps, 7001), np.append(values, 2.5))
    assert "hostile" not in run.tags()
    (problem,) = run.problems
    assert problem.message.startswith(said), problem.message


def test_a_trainer_step_twice_in_a_row_is_one_row_and_the_later_write_wins():
    hist = wandb_run._History()
    rows = [_history_record(i + 1, {"_step": str(i), "train/global_step": str(10 * i),
                                    "loss": "1.0"}) for i in range(3)]
    rows.append(_history_record(9, [("_step", "3"), ("train/global_step", "30"),
                                    ("train/global_step", "31"), ("loss", "2.0")]))
    hist.add_records(rows)
    frame, notes = hist.to_frame()
    assert frame["step"].to_list() == [0, 10, 20, 31]
    assert notes == ["steps are the logged 'train/global_step' (4 of 4 history rows carry it)"]


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_hole_in_a_sparse_run_file_is_jumped_over_not_read(wandb_root, tmp_path, where):
    # a run killed while its file was preallocated, or a hole where blocks were never written:
    # the zeros are skipped as the damage (or end padding) they are, without being read
    data = wandb_root["a"].read_bytes()
    path = _copy_run(wandb_root["a"], tmp_path, f"hole-{where}")
    at = (len(data) // 2) // 32768 * 32768 if where == "middle" else len(data)
    write_with_hole(path, data, at)
    (run,), n_read = bytes_read(lambda: gradaudit.read_runs([path]))
    assert n_read < READ_LIMIT
    exp_s, exp_v = _expected_a()["train/grad_norm"]
    steps, values = run.series("train/grad_norm")
    kept = np.isin(exp_s, steps)
    np.testing.assert_array_equal(values, exp_v[kept])
    messages = " | ".join(p.message for p in run.problems)
    if where == "end":  # zeros to the end: padding, nothing lost
        assert kept.all() and not messages
    else:  # the hole is zero-filled space with data after it: damage, at most a row lost
        assert (~kept).sum() <= 1 and "zero-filled" in messages
    path.unlink()  # (sparse: no disk, but no 2 GiB file left for other tools either)


def test_zeros_read_through_a_large_buffer_give_the_records_a_small_one_does(tmp_path):
    # on a file system with a large block size Python buffers reads by megabytes; looking for
    # the data after a megabyte of zeros must not move the file under that buffer (records
    # were read twice, or every block after looked corrupt)
    from gradaudit.adapters._leveldb_log import LogDamage, iter_records

    rows = [_history_record(2, {"_step": str(i), "loss": f"{i / 7:.4f}"}) for i in range(90000)]
    data = bytearray(_log_file(rows))
    assert len(data) > 3 << 20
    data[1 << 20: 2 << 20] = bytes(1 << 20)  # written zeros: one whole read of them
    path = tmp_path / "run-zeros.wandb"
    path.write_bytes(bytes(data))
    got = {}
    for buffering in (8192, 4 << 20, 16 << 20):
        damage = LogDamage()
        with open(path, "rb", buffering=buffering) as stream:
            got[buffering] = (list(iter_records(stream, 7, damage)), damage)
    assert got[4 << 20] == got[8192] and got[16 << 20] == got[8192]
    records, damage = got[8192]
    assert damage.corrupt_blocks == 1 and len(records) < len(rows)
    assert len(set(records)) == len(records)  # (each row once: _step differs)


_CONSOLE_SCRIPT = """
import wandb
run = wandb.init(mode="offline", project="console", settings=wandb.Settings(
    console="wrap", save_code=False, disable_git=True, x_disable_stats=True))
for s in range(1, 61):
    logs = {"loss": 2 - s / 100, "grad_norm": 0.5 + (9 if s == 40 else 0),
            "learning_rate": 1e-4, "epoch": s / 20}
    run.log({"train/" + k: v for k, v in logs.items()}, step=s)
    print(str({k: f"{v:.4g}" for k, v in logs.items()}), flush=True)  # as the Trainer prints
print(" iteration       60/     100 | lm loss: 1.4E+00 | grad norm: 0.5 |", flush=True)
run.finish()
"""


def test_the_console_copy_in_a_run_folder_is_not_a_second_run(tmp_path):
    # wandb saves what the script printed in <run folder>/files/output.log: a Trainer's (or
    # Megatron's, fairseq's) lines there are the run's metrics again, already in its .wandb
    # file. Each stdout reader read it as a second run.
    import subprocess
    import sys

    from gradaudit.adapters import fairseq_log, hf_log, megatron

    root, home = tmp_path / "runs", tmp_path / "home"
    root.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root),
           "WANDB_CACHE_DIR": str(home / "c"), "WANDB_CONFIG_DIR": str(home / "g"),
           "WANDB_DATA_DIR": str(home / "d")}
    subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT], env=env, check=True, timeout=300,
                   capture_output=True)
    (console,) = root.glob("wandb/*run-*/files/output.log")
    assert "{'loss': '1.6'" in console.read_text()  # the copy holds the Trainer's lines
    result = gradaudit.scan([root])
    assert [r.format for r in result.runs] == ["wandb"] and not result.errors
    steps, _ = gradaudit.read_runs([root])[0].series("train/grad_norm")
    assert steps.tolist() == list(range(1, 61))
    files = sorted(console.parent.iterdir())
    for adapter in (hf_log, megatron, fairseq_log):
        assert not adapter.claim(console.parent, files)
    # named alone on the command line, it is read (a .wandb file cut short holds less)
    assert [s.name for s in hf_log.claim(console.parent, [console])] == ["output.log"]
    # without the run's .wandb file beside it, the copy is all there is: a run of its own
    shutil.copy(console, tmp_path / "output.log")
    assert [s.name for s in hf_log.claim(tmp_path, [tmp_path / "output.log"])] == ["output.log"]
    (wandb_file,) = root.glob("wandb/*run-*/*.wandb")
    wandb_file.unlink()
    assert [s.name for s in hf_log.claim(console.parent, files)] == ["output.log"]
