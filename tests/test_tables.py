"""Parquet / CSV / JSON tables: long, wide and W&B history layouts, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gradaudit
from gradaudit.adapters import csv_table, json_table, parquet
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError
from gradaudit.series import RunSeries

NAN = float("nan")
INF = float("inf")


def _runs(path: Path) -> dict[str, RunSeries]:
    return {r.name: r for r in gradaudit.read_runs([path])}


def _values(run: RunSeries, tag: str) -> dict[int, float]:
    steps, values = run.series(tag)
    return dict(zip(steps.tolist(), values.tolist(), strict=True))


def _same(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == v, (k, got[k], v)


# A W&B history as run.scan_history() returns it for an HF Trainer run: one row per log call,
# eval rows interleaved (train metrics null there), train/global_step logged on every row.
def _history(n_train: int = 60, eval_every: int = 4) -> list[dict[str, float | None]]:
    rng = np.random.default_rng(3)
    rows: list[dict[str, float | None]] = []
    t0 = 1_700_000_000.0
    for i in range(n_train):
        gstep = (i + 1) * 10
        gn = float(rng.lognormal(0, 0.2))
        if i == 30:
            gn = 400.0
        if i == 31:
            gn = NAN
        rows.append(
            {
                "_step": len(rows), "_runtime": 2.0 * len(rows), "_timestamp": t0 + 2.0 * len(rows),
                "train/global_step": gstep, "train/epoch": gstep / 200, "train/loss": 2.0 - i / 100,
                "train/grad_norm": gn, "train/learning_rate": 1e-4, "eval/loss": None,
            }
        )  # fmt: skip
        if (i + 1) % eval_every == 0:
            rows.append(
                {
                    "_step": len(rows), "_runtime": 2.0 * len(rows),
                    "_timestamp": t0 + 2.0 * len(rows), "train/global_step": gstep,
                    "train/epoch": gstep / 200, "train/loss": None, "train/grad_norm": None,
                    "train/learning_rate": None, "eval/loss": 2.1 - i / 100,
                }
            )  # fmt: skip
    return rows


def _expected(rows: list[dict[str, float | None]], key: str) -> dict[int, float]:
    return {int(r["train/global_step"]): r[key] for r in rows if r[key] is not None}  # type: ignore[arg-type,misc]


def _write_csv(path: Path, rows: list[dict[str, float | None]], sep: str = ",") -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=sep)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else repr(v) for k, v in r.items()})


def _check_history_run(run: RunSeries, rows: list[dict[str, float | None]]) -> None:
    assert run.grad_norm_tag == "train/grad_norm" and run.loss_tag == "train/loss"
    _same(_values(run, "train/grad_norm"), _expected(rows, "train/grad_norm"))
    _same(_values(run, "train/loss"), _expected(rows, "train/loss"))
    _same(_values(run, "eval/loss"), _expected(rows, "eval/loss"))
    assert "_step" not in run.tags() and "_runtime" not in run.tags()
    assert "train/global_step" not in run.tags()
    walls = run.wall_times("train/grad_norm")
    want = [r["_timestamp"] for r in rows if r["train/grad_norm"] is not None]
    np.testing.assert_array_equal(walls, want)
    assert not any("sampled" in n for n in run.notes)


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl", "json-records", "json-nan"])
def test_wandb_history_tables(tmp_path: Path, kind: str) -> None:
    rows = _history()
    if kind == "csv":
        path = tmp_path / "history.csv"
        _write_csv(path, rows)
    elif kind == "tsv":
        path = tmp_path / "history.tsv"
        _write_csv(path, rows, "\t")
    elif kind == "parquet":
        path = tmp_path / "history.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "jsonl":
        path = tmp_path / "history.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN token inside
    elif kind == "json-records":
        path = tmp_path / "history.json"
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in r.items()} for r in rows]  # fmt: skip
        path.write_text(json.dumps(clean))
    else:
        path = tmp_path / "history.json"
        path.write_text(json.dumps(rows, indent=1))  # Python writes NaN tokens
    runs = _runs(tmp_path)
    assert list(runs) == [path.name]
    run = runs[path.name]
    assert run.format == {"tsv": "csv", "jsonl": "json", "json-records": "json",
                          "json-nan": "json"}.get(kind, kind)  # fmt: skip
    if kind == "json-records":
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in r.items()} for r in rows]  # fmt: skip
    _check_history_run(run, rows)


def test_sampled_history_note(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    full = 20_000
    sampled = np.sort(rng.choice(full, 500, replace=False))
    pq.write_table(
        pa.table(
            {
                "_step": sampled,
                "_runtime": sampled * 1.0,
                "_timestamp": sampled + 1.7e9,
                "grad_norm": rng.random(500),
                "loss": rng.random(500),
            }
        ),  # fmt: skip
        tmp_path / "sampled.parquet",
    )
    consecutive = np.arange(400)
    pq.write_table(
        pa.table(
            {"_step": consecutive, "_runtime": consecutive * 1.0, "grad_norm": rng.random(400)}
        ),  # fmt: skip
        tmp_path / "every-row.parquet",
    )
    runs = _runs(tmp_path)
    assert any("sampled" in n and "scan_history" in n for n in runs["sampled.parquet"].notes)
    assert _values(runs["sampled.parquet"], "grad_norm").keys() == set(sampled.tolist())
    assert not any("sampled" in n for n in runs["every-row.parquet"].notes)


def test_wide_parquet_nulls_nan_inf_and_epoch(tmp_path: Path) -> None:
    table = pa.table(
        {
            "epoch": [0.0, 0.5, 1.0, 1.5, 2.0],
            "global_step": pa.array([0, 100, 200, 300, 400], pa.int32()),
            "grad_norm": [1.0, NAN, INF, None, 2.0],
            "loss": pa.array([3.0, 2.9, None, 2.7, 2.6], pa.float32()),
            "note": ["a", "b", "c", "d", "e"],
            "ok": [True, False, True, True, True],
        }
    )
    path = tmp_path / "metrics.pq"
    pq.write_table(table, path)
    (run,) = _runs(tmp_path).values()
    assert run.format == "parquet" and run.name == "metrics.pq"
    assert set(run.tags()) == {"epoch", "grad_norm", "loss"}
    _same(_values(run, "grad_norm"), {0: 1.0, 100: NAN, 200: INF, 400: 2.0})
    f32 = {k: float(np.float32(v)) for k, v in {100: 2.9, 300: 2.7, 400: 2.6}.items()}
    _same(_values(run, "loss"), {0: 3.0, **f32})  # written as float32
    _same(_values(run, "epoch"), {0: 0.0, 100: 0.5, 200: 1.0, 300: 1.5, 400: 2.0})


def test_long_csv_with_runs_and_write_order(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    lines = ["run,step,metric,value,wall_time"]
    # run a resumes at step 2: its later writes at steps 2-3 replace the earlier ones.
    for run, step, tag, value in [
        ("a", 1, "grad_norm", 1.0), ("a", 2, "grad_norm", 9.0), ("a", 3, "grad_norm", 9.5),
        ("b", 1, "grad_norm", 0.5), ("a", 2, "grad_norm", 2.0), ("a", 3, "grad_norm", 3.0),
        ("b", 2, "loss", 4.0), ("b", 3, "grad_norm", "nan"),
    ]:  # fmt: skip
        lines.append(f"{run},{step},{tag},{value},{1000 + step}")
    path.write_text("\n".join(lines) + "\n")
    runs = _runs(tmp_path)
    assert set(runs) == {"long.csv#a", "long.csv#b"}
    assert _values(runs["long.csv#a"], "grad_norm") == {1: 1.0, 2: 2.0, 3: 3.0}
    assert any("written again later" in n for n in runs["long.csv#a"].notes)
    _same(_values(runs["long.csv#b"], "grad_norm"), {1: 0.5, 3: NAN})
    assert _values(runs["long.csv#b"], "loss") == {2: 4.0}
    assert runs["long.csv#b"].wall_times("loss").tolist() == [1002.0]


def test_long_json_name_is_tag_when_no_tag_column(tmp_path: Path) -> None:
    recs = [{"step": s, "name": "grad_norm", "value": 0.1 * s, "run_id": "r1"} for s in range(5)]
    (tmp_path / "points.json").write_text(json.dumps(recs))
    runs = _runs(tmp_path)
    assert list(runs) == ["points.json#r1"]
    assert _values(runs["points.json#r1"], "grad_norm") == {s: 0.1 * s for s in range(5)}


def test_pandas_index_and_tbparse_dir_name(tmp_path: Path) -> None:
    # df.to_csv() of a tbparse scalars frame: an unnamed index column, dir_name = the run.
    rows = [",step,tag,value,dir_name", "0,1,grad_norm,0.5,runA", "1,1,grad_norm,0.7,runB",
            "2,2,grad_norm,0.6,runA"]  # fmt: skip
    (tmp_path / "scalars.csv").write_text("\n".join(rows) + "\n")
    # A wide frame saved with its index.
    (tmp_path / "wide.csv").write_text("Unnamed: 0,step,loss\n0,10,2.0\n1,20,1.5\n")
    runs = _runs(tmp_path)
    assert _values(runs["scalars.csv#runA"], "grad_norm") == {1: 0.5, 2: 0.6}
    assert _values(runs["scalars.csv#runB"], "grad_norm") == {1: 0.7}
    assert runs["wide.csv"].tags() == ["loss"]


def test_wide_csv_text_nan_and_sparse_columns(tmp_path: Path) -> None:
    rows = ["iteration,grad norm,val_loss"]
    rows += ["1,nan,", "2,Infinity,", "3,-inf,", "4,NaN,"]
    rows += [f"{i},{i / 10},," for i in range(5, 6000)]
    rows += ["6000,0.5,1.25"]  # a metric first seen after the type-inference sample
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    (run,) = _runs(tmp_path).values()
    gn = _values(run, "grad norm")
    assert math.isnan(gn[1]) and gn[2] == INF and gn[3] == -INF and math.isnan(gn[4])
    assert gn[5] == 0.5 and gn[6000] == 0.5 and len(gn) == 6000
    assert _values(run, "val_loss") == {6000: 1.25}


@pytest.mark.parametrize("row", [5001, 5100, 19_000])
def test_a_text_cell_after_the_type_sample_is_one_point_not_logged(tmp_path: Path,
                                                                    row: int) -> None:
    # a metric column whose cell is "None" just past the 5000-row sample: polars parses whole
    # blocks, and the sample read failed the file (found by a fuzzing review)
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["step", "grad_norm", "loss"])
        for s in range(20_000):
            out.writerow([s, "None" if s == row else 1.0 + s % 7 / 10, 2.0 - s / 20_000])
    (run,) = _runs(tmp_path).values()
    gn = _values(run, "grad_norm")
    assert len(gn) == 19_999 and row not in gn and gn[row + 1] == 1.0 + (row + 1) % 7 / 10
    assert len(_values(run, "loss")) == 20_000


def test_wide_metrics_named_like_the_long_frames_columns_keep_their_names(tmp_path: Path) -> None:
    # a metric column named "value" or "tag" (or "__run" beside a run column) clashed with the
    # unpivoted frame's own columns: DuplicateError, the run lost (a fuzzing review)
    steps = np.arange(300)
    pq.write_table(pa.table({"step": steps, "grad_norm": 1.0 + steps % 3, "value": steps * 0.5,
                             "tag": steps * 2.0}), tmp_path / "w.parquet")
    with open(tmp_path / "r.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["step", "grad_norm", "__run", "run"])
        out.writerows([s, 1.0, 3.0, "a"] for s in range(300))
    runs = _runs(tmp_path)
    wide = runs["w.parquet"]
    assert _values(wide, "value")[10] == 5.0 and _values(wide, "tag")[10] == 20.0
    assert _values(wide, "grad_norm")[10] == 2.0 and len(wide.tags()) == 3
    assert _values(runs["r.csv#a"], "__run") == dict.fromkeys(range(300), 3.0)


def test_what_polars_warns_on_a_malformed_csv_is_said_in_the_report_not_on_stderr(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # a quoted field cut off by a writer that was killed: polars warned "CSV malformed" on
    # stderr (a fuzzing review), and the run's error did not say why
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        out = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        out.writerow(["step", "grad_norm"])
        out.writerows([s, "1.0"] for s in range(300))
    text = (tmp_path / "m.csv").read_text()
    (tmp_path / "m.csv").write_text(text.replace('"1.0"', '"1.0', 1))  # (a quote left open)
    listed = gradaudit.inspect([tmp_path])
    said = [e.message for e in listed.errors] + [
        p.message for r in listed.runs for p in r.problems]
    assert any("the reader warned: CSV malformed" in m for m in said), said
    assert "malformed" not in capfd.readouterr().err


def test_decimal_steps_with_a_fraction_are_skipped_once_not_truncated(tmp_path: Path) -> None:
    # a Decimal step 3.5 was cast to 3 without a word; a skipped row was also counted twice,
    # as a non-integer step and as a row without a usable step (reviews)
    import decimal

    steps = pa.array([decimal.Decimal("3.5") if s == 3 else decimal.Decimal(s)
                      for s in range(300)], pa.decimal128(10, 1))
    pq.write_table(pa.table({"step": steps, "grad_norm": np.arange(300.0)}),
                   tmp_path / "d.parquet")
    (run,) = _runs(tmp_path).values()
    gn = _values(run, "grad_norm")
    assert 3 not in gn and gn[4] == 4.0 and len(gn) == 299
    assert [p.message for p in run.problems] == ["1 row(s) with a non-integer step in 'step' "
                                                 "skipped"]


def test_a_header_that_names_a_column_twice_is_said(tmp_path: Path) -> None:
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["step", "grad_norm", "grad_norm", "loss"])
        out.writerows([s, 1.0, 200.0 if s == 150 else 2.0, 3.0] for s in range(300))
    (run,) = _runs(tmp_path).values()
    assert _values(run, "grad_norm_duplicated_0")[150] == 200.0
    assert [p.message for p in run.problems] == [
        "the header names 'grad_norm' more than once: that column is read as "
        "'grad_norm_duplicated_0'"]


def test_another_warning_a_reader_raises_is_shown_once_not_once_per_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a review: re-emitted after the capture, a RuntimeWarning was shown once per source
    import warnings

    for i in range(5):
        (tmp_path / f"r{i}.csv").write_text("step,grad_norm\n" + "".join(
            f"{s},1.0\n" for s in range(50)))
    read_file = csv_table.read_file

    def warning_reader(path: Path):
        np.array([1e39]).astype(np.float32)  # RuntimeWarning: overflow encountered in cast
        return read_file(path)

    monkeypatch.setattr(csv_table, "read_file", warning_reader)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        assert len(gradaudit.read_runs([tmp_path])) == 5
    assert [w.category for w in shown] == [RuntimeWarning]


def test_a_json_lines_integer_too_large_for_a_float_is_inf(tmp_path: Path) -> None:
    # one value of 400 digits failed the file with an OverflowError (a fuzzing review)
    rows = [{"step": s, "grad_norm": 1.0 + s % 5 / 10} for s in range(300)]
    rows[5]["grad_norm"] = 10**400
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run,) = _runs(tmp_path).values()
    gn = _values(run, "grad_norm")
    assert len(gn) == 300 and gn[5] == INF and gn[6] == 1.1


def test_pandas_column_and_split_orient_json(tmp_path: Path) -> None:
    cols = {"_step": {"0": 0, "1": 1, "2": 2}, "_runtime": {"0": 1, "1": 2, "2": 3},
            "loss": {"0": 2.0, "1": None, "2": 1.5}}  # fmt: skip
    (tmp_path / "cols.json").write_text(json.dumps(cols))
    split = {"columns": ["step", "grad_norm"], "index": [0, 1], "data": [[10, 0.5], [20, 0.7]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    table = {"schema": {"fields": [{"name": "index"}, {"name": "step"}], "primaryKey": ["index"]},
             "data": [{"index": 0, "step": 3, "grad_norm": 1.5}]}  # fmt: skip
    (tmp_path / "table.json").write_text(json.dumps(table))
    runs = _runs(tmp_path)
    assert _values(runs["cols.json"], "loss") == {0: 2.0, 2: 1.5}
    assert _values(runs["split.json"], "grad_norm") == {10: 0.5, 20: 0.7}
    assert runs["table.json"].tags() == ["grad_norm"]
    assert _values(runs["table.json"], "grad_norm") == {3: 1.5}


def test_json_claim_skips_config_and_summaries(tmp_path: Path) -> None:
    def put(name: str, obj: object) -> None:
        (tmp_path / name).write_text(json.dumps(obj))

    put("config.json", {"architectures": ["GPT2"], "n_layer": 12})
    put("tokenizer.json", {"version": "1.0", "model": {"vocab": {}}})
    put("wandb-summary.json", {"_step": 99, "_runtime": 5, "loss": 1.0})
    put("wandb-metadata.json", {"os": "Linux", "python": "3.11"})
    put("trainer_state.json", {"global_step": 5, "log_history": []})
    put("summary.json", {"step": 5, "loss": 1.0})
    put("records.json", [{"step": 1, "loss": 2.0}])
    put("other.json", [1, 2, 3])
    put("train.json", [{"text": "a data set, not a log"}, {"text": "step: 5"}])
    (tmp_path / "lines.json").write_text('{"step": 1, "loss": 2}\n{"step": 2, "loss": 1}\n')
    (tmp_path / "x.ndjson").write_text('{"step": 1, "loss": 2}\n')
    claimed = {s.name for s in json_table.claim(tmp_path, sorted(tmp_path.iterdir()))}
    assert claimed == {"records.json", "lines.json", "x.ndjson"}


def _read_one(adapter: object, path: Path) -> list:
    return adapter.read(Source(adapter.FORMAT, path.name, (path,)))  # type: ignore[attr-defined]


def test_bad_inputs(tmp_path: Path) -> None:
    nostep = tmp_path / "nostep.csv"
    nostep.write_text("epoch,loss\n0.5,2.0\n1.0,1.9\n")
    with pytest.raises(ReadError) as err:
        _read_one(csv_table, nostep)
    assert "'epoch', 'loss'" in str(err.value) and "global_step" in str(err.value)
    assert "epoch is not a step" in str(err.value)

    fake = tmp_path / "fake.parquet"
    fake.write_text("step,loss\n1,2\n")
    with pytest.raises(ReadError, match="not a Parquet file"):
        _read_one(parquet, fake)
    cut = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"step": [1, 2], "loss": [1.0, 2.0]}), cut)
    cut.write_bytes(cut.read_bytes()[:-10])
    with pytest.raises(ReadError, match="truncated"):
        _read_one(parquet, cut)

    for name in ("empty.csv", "empty.parquet", "empty.jsonl", "empty.json"):
        (tmp_path / name).write_text("")
    for adapter, name in ((csv_table, "empty.csv"), (parquet, "empty.parquet"),
                          (json_table, "empty.jsonl"), (json_table, "empty.json")):  # fmt: skip
        with pytest.raises(ReadError, match="empty"):
            _read_one(adapter, tmp_path / name)

    header = tmp_path / "header.csv"
    header.write_text("step,loss,grad_norm\n")
    with pytest.raises(ReadError, match="no rows"):
        _read_one(csv_table, header)

    textstep = tmp_path / "textstep.csv"
    textstep.write_text("step,loss\nfirst,2.0\nsecond,1.0\n")
    with pytest.raises(ReadError, match="no numbers"):
        _read_one(csv_table, textstep)

    somebad = tmp_path / "somebad.csv"
    somebad.write_text("step,loss\n1,2.0\nx,1.5\n3,1.0\n2.5,0.9\n")
    (raw,) = _read_one(csv_table, somebad)
    points = raw.points.collect()
    assert points["step"].to_list() == [1, 3]
    assert any("non-integer" in p.message for p in raw.problems)
    assert any("without a usable" in p.message for p in raw.problems)

    badutf = tmp_path / "badutf.csv"
    badutf.write_bytes(b"run,step,loss\nr\xff1,1,2.0\nr2,2,1.0\n")
    raws = _read_one(csv_table, badutf)
    assert len(raws) == 2
    assert all(any("UTF-8" in p.message for p in r.problems) for r in raws)

    notjson = tmp_path / "broken.jsonl"
    notjson.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    (raw,) = _read_one(json_table, notjson)
    assert raw.points.collect()["value"].to_list() == [2.0]
    assert any("not valid JSON" in p.message for p in raw.problems)

    # One bad file never stops the others.
    runs = gradaudit.inspect([tmp_path])
    assert "somebad.csv" in {r.name for r in runs.runs}
    assert any("nostep.csv" in e.path for e in runs.errors)


def test_binary_and_endless_lines_are_refused_before_parsing(tmp_path: Path) -> None:
    # a sparse (all-NUL) file or one endless line would be held whole by the parser, many times
    # its size: refused with a clear reason before any parse, and one bad file stops nothing
    sparse = tmp_path / "sparse.csv"
    with sparse.open("wb") as fh:
        fh.truncate(64 << 20)  # 64 MiB of NUL bytes, no disk used
    with pytest.raises(ReadError, match="NUL byte at byte 0"):
        _read_one(csv_table, sparse)
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_bytes(b'{"step": 1, "loss": 2.0}\n' + b"\x00" * 100)
    with pytest.raises(ReadError, match="NUL byte at byte 25"):
        _read_one(json_table, jsonl)
    endless = tmp_path / "endless.csv"
    endless.write_bytes(b"step,loss\n1,2.0\n" + b"9" * (17 << 20) + b"\n2,1.0\n")
    with pytest.raises(ReadError, match="a line longer than 16 MiB \\(from byte 16\\)"):
        _read_one(csv_table, endless)
    doc = tmp_path / "one_line.json"  # a JSON document may be one long line
    doc.write_text(json.dumps({"step": list(range(3)), "loss": [2.0, 1.5, 1.0]}))
    (raw,) = _read_one(json_table, doc)
    assert raw.points.collect()["value"].to_list() == [2.0, 1.5, 1.0]


def test_error_messages_quoting_a_file_stay_short(tmp_path: Path) -> None:
    wide = tmp_path / "wide.csv"
    wide.write_text("x" * (2 << 20) + ",y\n1,2\n")  # a 2 MiB column name, no step column
    found = gradaudit.inspect([tmp_path])
    (err,) = found.errors
    assert len(err.message) <= 1000 and "more characters" in err.message


def test_table_in_no_step_order_is_read_sorted_but_appended_resumes_still_rewind(tmp_path):
    # rows shuffled (an export sorted by something else): read sorted by step, with a note -
    # not as 700 "resumes" that would leave a handful of points
    rng = np.random.default_rng(0)
    steps = np.arange(1500)
    g = np.exp(rng.normal(0, 0.1, 1500))
    g[1000] = 30.0
    perm = rng.permutation(1500)
    pq.write_table(pa.table({"step": steps[perm], "grad_norm": g[perm]}),
                   tmp_path / "shuffled.parquet")
    (run,) = gradaudit.read_runs([tmp_path / "shuffled.parquet"])
    s, v = run.series("grad_norm")
    assert s.tolist() == list(range(1500)) and v[1000] == 30.0
    assert any("not in step order" in n for n in run.notes)
    assert [e.onset_step for e in gradaudit.audit_run(run).episodes] == [1000]
    # three resumes appended to a table (steps rewind 3 times): the later write still wins
    rows = np.concatenate([np.arange(0, 400), np.arange(350, 800), np.arange(780, 1200),
                           np.arange(1100, 1500)])
    vals = np.arange(rows.size, dtype=float)
    pq.write_table(pa.table({"step": rows, "loss": vals}), tmp_path / "resumed.parquet")
    (run,) = gradaudit.read_runs([tmp_path / "resumed.parquet"])
    s, v = run.series("loss")
    assert s.tolist() == list(range(1500)) and v[360] == 410.0  # the first resume's step 360
    assert not any("not in step order" in n for n in run.notes)


def test_step_order_is_judged_per_run_and_many_resumes_stay_resumes(tmp_path):
    rng = np.random.default_rng(1)
    steps = np.arange(300)
    shuffled = rng.permutation(300)
    pq.write_table(pa.table({
        "run": ["a"] * 300 + ["b"] * 300,
        "step": np.concatenate([steps, steps[shuffled]]),
        "loss": np.concatenate([np.linspace(3, 2, 300), np.linspace(3, 2, 300)[shuffled]])}),
        tmp_path / "two.parquet")
    runs = {r.name.rsplit("#", 1)[1]: r for r in gradaudit.read_runs([tmp_path / "two.parquet"])}
    assert not any("not in step order" in n for n in runs["a"].notes)
    assert any("not in step order" in n for n in runs["b"].notes)
    assert runs["b"].series("loss")[0].tolist() == list(range(300))
    # 12 resumes appended in 600 rows (each rewinds 20 steps): still later-write-wins
    rows = np.concatenate([np.arange(max(0, 50 * k - 20), 50 * (k + 1)) for k in range(12)])
    pq.write_table(pa.table({"step": rows, "loss": np.arange(rows.size, dtype=float)}),
                   tmp_path / "resumes.parquet")
    (run,) = gradaudit.read_runs([tmp_path / "resumes.parquet"])
    assert not any("not in step order" in n for n in run.notes)
    s, v = run.series("loss")
    assert s.tolist() == list(range(600)) and v[30] == 50.0  # the first resume's step 30


def test_utf16_csv_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("step,loss\n1,2.0\n2,1.5\n".encode("utf-16"))
    with pytest.raises(ReadError, match="UTF-16 text"):
        _read_one(csv_table, path)



@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_name_with_glob_characters_is_read_as_that_file_only(tmp_path: Path, fmt: str) -> None:
    """polars reads a path as a glob by default: ``seed[1].csv`` would read ``seed1.csv``, and
    ``ab[c.csv`` fail. Each file here holds its own values; every one is read as itself."""
    names = ["seed1", "seed[1]", "ab[c", "x*", "q?"]
    want = {}
    for k, stem in enumerate(names):
        steps = np.arange(1, 31)
        g = np.full(steps.size, float(k + 1))
        rows = [{"step": int(s), "grad_norm": float(v)} for s, v in zip(steps, g, strict=True)]
        path = tmp_path / f"{stem}.{fmt}"
        if fmt == "csv":
            _write_csv(path, rows)
        elif fmt == "parquet":
            pq.write_table(pa.table({"step": steps, "grad_norm": g}), path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        want[path.name] = {int(s): float(k + 1) for s in steps}
    layers = tmp_path / "layers=[1,2]"  # a Hydra sweep folder
    layers.mkdir()
    _write_csv(layers / "metrics.csv", [{"step": s, "grad_norm": 9.0} for s in (1, 2)])
    want["layers=[1,2]/metrics.csv"] = {1: 9.0, 2: 9.0}
    result = gradaudit.scan([tmp_path])
    assert result.errors == []
    runs = _runs(tmp_path)
    assert sorted(runs) == sorted(want)
    for name, values in want.items():
        _same(_values(runs[name], "grad_norm"), values)


def _write_table(path: Path, columns: list[str], rows: list[tuple]) -> None:
    """``rows`` under ``columns`` in the format ``path``'s suffix names (csv, parquet, json,
    jsonl), each with its real writer."""
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(columns)
            out.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _long_rows(run: str | None = None) -> list[tuple]:
    extra = () if run is None else (run,)
    return [row for s in range(60)
            for row in ((s, "loss", 3 - s / 100, *extra), (s, "grad_norm", 1 + s / 100, *extra))]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json", ".jsonl"])
@pytest.mark.parametrize("columns", [["Step", "Metric", "Value"], ["STEP", "Tag", "VALUE"],
                                     ["step", "variable", "value"]])
def test_long_tables_columns_are_matched_ignoring_case_and_melts_variable_is_a_tag(
        tmp_path: Path, suffix: str, columns: list[str]) -> None:
    # Step,Metric,Value was read as a wide table: one series "Value" holding whichever metric
    # came last at each step, then "no grad-norm series" and a note blaming a resume (a review)
    _write_table(tmp_path / f"t{suffix}", columns, _long_rows())
    (run,) = _runs(tmp_path).values()
    assert run.tags() == ["grad_norm", "loss"] and run.grad_norm_tag == "grad_norm"
    assert _values(run, "grad_norm") == {s: 1 + s / 100 for s in range(60)}
    assert _values(run, "loss") == {s: 3 - s / 100 for s in range(60)}
    assert not any("written again" in n for n in run.notes)


def test_pandas_melt_as_polars_writes_it_and_a_capitalised_run_column(tmp_path: Path) -> None:
    # df.melt(id_vars="step") (polars' unpivot: the same step, variable, value); a long table's
    # Run column is matched ignoring case too, or its runs merged
    import polars as pl

    wide = pl.DataFrame({"step": range(60), "grad_norm": [1 + s / 100 for s in range(60)],
                         "loss": [3 - s / 100 for s in range(60)]})
    wide.unpivot(index="step").write_parquet(tmp_path / "melt.parquet")
    _write_table(tmp_path / "runs.csv", ["Step", "Metric", "Value", "Run"],
                 _long_rows("a") + [(s, "grad_norm", 5.0, "b") for s in range(60)])
    runs = _runs(tmp_path)
    assert set(runs) == {"melt.parquet", "runs.csv#a", "runs.csv#b"}
    assert _values(runs["melt.parquet"], "grad_norm") == {s: 1 + s / 100 for s in range(60)}
    assert _values(runs["runs.csv#a"], "grad_norm") == {s: 1 + s / 100 for s in range(60)}
    assert _values(runs["runs.csv#b"], "grad_norm") == dict.fromkeys(range(60), 5.0)


def test_a_melt_with_a_name_column_takes_variable_as_the_tag_and_name_as_the_run(
        tmp_path: Path) -> None:
    # df.melt(id_vars=["step", "name"]): "name" was taken as the tag column (a review)
    import polars as pl

    wide = pl.DataFrame({"step": list(range(60)) * 2, "name": ["a"] * 60 + ["b"] * 60,
                         "grad_norm": [1 + s / 100 for s in range(60)] * 2,
                         "loss": [3 - s / 100 for s in range(60)] * 2})
    wide.unpivot(index=["step", "name"]).write_csv(tmp_path / "melt.csv")
    wide.rename({"name": "key"}).unpivot(index=["step", "key"]).write_csv(tmp_path / "k.csv")
    runs = _runs(tmp_path)
    assert set(runs) == {"melt.csv#a", "melt.csv#b", "k.csv#a", "k.csv#b"}
    for run in runs.values():
        assert run.tags() == ["grad_norm", "loss"] and run.grad_norm_tag == "grad_norm"
        assert _values(run, "grad_norm") == {s: 1 + s / 100 for s in range(60)}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json", ".jsonl"])
def test_a_long_table_with_an_unknown_tag_column_says_so(tmp_path: Path, suffix: str) -> None:
    # read as wide, its one metric column merged the metrics, and the run's note blamed a resume
    _write_table(tmp_path / f"t{suffix}", ["step", "series", "value"], _long_rows())
    found = gradaudit.inspect(tmp_path)
    assert found.runs == []
    (error,) = found.errors
    assert "told apart by the text column 'series' ('loss', 'grad_norm')" in error.message
    assert "a long table" in error.message and "tag (or metric" in error.message


def test_a_wide_table_with_a_text_column_and_a_resume_is_still_wide(tmp_path: Path) -> None:
    # a text column of one value (a phase) or of one value per row (a date) tells no metrics
    # apart, and one naming each launch (a host) beside a metric of its own name neither (a
    # review: that was refused): a step written twice is a resume, as before
    rows = [(s, 3 - s / 100) for s in range(60)] + [(s, 2.0) for s in range(30, 60)]
    _write_table(tmp_path / "host.csv", ["step", "loss", "host"],
                 [(s, v, "node-a" if i < 60 else "node-b") for i, (s, v) in enumerate(rows)])
    _write_table(tmp_path / "phase.csv", ["step", "loss", "phase"],
                 [(s, v, "train") for s, v in rows])
    _write_table(tmp_path / "date.csv", ["step", "loss", "date"],
                 [(s, v, f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}")
                  for i, (s, v) in enumerate(rows)])
    runs = _runs(tmp_path)
    for name in ("phase.csv", "date.csv", "host.csv"):
        assert runs[name].tags() == ["loss"] and _values(runs[name], "loss")[40] == 2.0
        assert any("written again" in n for n in runs[name].notes)


def test_a_table_naming_a_million_columns_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # 1,000,000 columns of three rows: 14 MB that took 6 GB and a minute to read (a review);
    # beside it, a good run is read
    header = ",".join(["step"] + [f"m{i}" for i in range(1_000_000)])
    rows = "\n".join(",".join([str(s)] + ["1"] * 1_000_000) for s in range(3))
    (tmp_path / "wide.csv").write_text(header + "\n" + rows + "\n")
    (tmp_path / "good.csv").write_text(
        "step,loss,grad_norm\n" + "".join(f"{s},{2.0 - s / 1000},1.0\n" for s in range(300)))
    result = gradaudit.scan([tmp_path])
    assert [r.run for r in result.runs] == ["good.csv"]
    (err,) = result.errors
    assert err.path.endswith("wide.csv") and "1000001 columns" in err.message


@pytest.mark.parametrize("bad_line", [False, True])
def test_json_lines_that_quote_their_numbers_are_read_as_numbers(tmp_path: Path,
                                                                 bad_line: bool) -> None:
    # fairseq's JSON log lines quote every value ("loss": "2.345"): read as text, the metrics
    # were dropped and the run had "no grad-norm series" (a review). A bad line sends the file
    # through the line-by-line reader, which must read them alike
    lines = []
    for s in range(1, 1201):
        g = 80.0 if 700 <= s < 705 else 0.3 + 0.01 * (s % 7)
        loss = 2.0 - s / 2000 + (1.0 if s >= 700 else 0.0)
        lines.append(json.dumps({"epoch": 1, "step": str(s), "loss": f"{loss:.3f}",
                                 "gnorm": f"{g:.3f}", "lr": "0.001", "train_wall": "0"}))
    if bad_line:
        lines.insert(300, "{not json")
    (tmp_path / "train_inner.jsonl").write_text("\n".join(lines) + "\n")
    (run,) = _runs(tmp_path).values()
    assert (run.grad_norm_tag, run.loss_tag) == ("gnorm", "loss")
    steps, values = run.series("gnorm")
    assert steps.size == 1200 and values.max() == 80.0
