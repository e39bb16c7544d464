"""MLflow's stores: a file store written at test time by MLflow itself (``mlflow-skinny``), read
back by MLflow's own client as the reference, and the SQLite store ``tests/data/mlflow/
mlflow.db.gz`` that MLflow wrote from the same logging calls (its ``make_db.py`` checked it
against MLflow's client when it wrote it)."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import gradaudit
from gradaudit.adapters import REGISTRY, mlflow_db, mlflow_files
from gradaudit.adapters.base import Source
from gradaudit.errors import ReadError

DATA = Path(__file__).parent / "data" / "mlflow"
sys.path.insert(0, str(DATA))
import log_runs  # noqa: E402

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """An ``mlruns`` file store with log_runs' runs, and each run name's ids."""
    root = tmp_path_factory.mktemp("mlflow") / "mlruns"
    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # (MLflow 3 asks for it)
    try:
        mlflow.set_tracking_uri(root.as_uri())
        ids = log_runs.log_runs(mlflow)
    finally:
        mlflow.set_tracking_uri(None)
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE")
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = old
    return root, ids


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("mlflowdb") / "mlflow.db"
    with gzip.open(DATA / "mlflow.db.gz", "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return db


def _run_folder(root: Path, run_id: str) -> Path:
    (folder,) = [p for p in root.glob(f"*/{run_id}") if p.is_dir()]
    return folder


def _raw(folder: Path) -> pl.DataFrame:
    """What the adapter reads of a run folder, before duplicate steps are resolved."""
    files = tuple(sorted(p for p in (folder / "metrics").rglob("*") if p.is_file()))
    (raw,) = mlflow_files.read(Source(mlflow_files.FORMAT, folder.name, files))
    return raw.points


def _by_name(runs: list, note_id: str):
    (run,) = [r for r in runs if any(f"(id {note_id})" in n or note_id in r.name
                                     for n in r.notes)]
    return run


def test_file_store_points_equal_mlflow_s_own_reading(store) -> None:
    root, ids = store
    client = mlflow.tracking.MlflowClient(root.as_uri())
    compared = 0
    for name, run_ids in ids.items():
        if name == "stepless":
            continue  # (its steps are the order logged: the next test)
        for rid in run_ids:
            points = _raw(_run_folder(root, rid))
            for key in client.get_run(rid).data.metrics:
                ref = client.get_metric_history(rid, key)
                mine = points.filter(pl.col("tag") == key)
                assert mine["step"].to_list() == [m.step for m in ref], (name, key)
                want = np.array([m.value for m in ref])
                got = mine["value"].to_numpy()
                assert np.array_equal(got, want, equal_nan=True), (name, key)
                assert np.allclose(mine["wall_time"].to_numpy(),
                                   [m.timestamp / 1000 for m in ref], rtol=0, atol=1e-3)
                compared += len(ref)
    assert compared == 3541  # every point but the stepless run's 400


def test_the_database_holds_what_the_file_store_does(store, database) -> None:
    # one logging script, two stores: every run's resolved series agree, name by name
    root, ids = store
    from_db = gradaudit.read_runs([database])
    from_files = gradaudit.read_runs([root])
    assert len(from_db) == len(from_files) == sum(len(v) for v in ids.values()) == 6
    for name, run_ids in ids.items():
        db_runs = sorted((r for r in from_db if f"MLflow run '{name}'" in r.notes[0]),
                         key=lambda r: r.series(r.tags()[0])[1][0])
        file_runs = sorted((r for r in from_files if f"MLflow run '{name}'" in r.notes[0]),
                           key=lambda r: r.series(r.tags()[0])[1][0])
        assert len(db_runs) == len(file_runs) == len(run_ids), name
        for a, b in zip(db_runs, file_runs, strict=True):
            assert a.tags() == b.tags()
            for tag in a.tags():
                (sa, va), (sb, vb) = a.series(tag), b.series(tag)
                assert np.array_equal(sa, sb) and np.array_equal(va, vb, equal_nan=True), tag
            assert (a.grad_norm_tag, a.loss_tag) == (b.grad_norm_tag, b.loss_tag)


@pytest.mark.parametrize("which", ["files", "sqlite"])
def test_the_explosion_is_found_at_its_onset(store, database, which) -> None:
    path = store[0] if which == "files" else database
    result = gradaudit.scan([path])
    assert not result.errors
    (audit,) = [a for a in result.runs if "MLflow run 'exploded'" in a.notes[0]]
    assert (audit.grad_norm_tag, audit.loss_tag) == ("train/grad_norm", "train/loss")
    assert audit.format == ("mlflow" if which == "files" else "mlflow-sqlite")
    explosions = [e for e in audit.episodes if e.severity == "explosion"]
    assert [e.onset_step for e in explosions] == [log_runs.ONSET]
    # the stored inf (the SQLite store keeps it as 1.797e308) is an overflow step, not a norm
    assert any(e.kind == "nonfinite" and e.onset_step == log_runs.OVERFLOW
               for e in audit.episodes)
    others = [a for a in result.runs if a is not audit]
    assert all(a.status != "explosion" for a in others), [(a.run, a.status)
                                                         for a in others]


@pytest.mark.parametrize("which", ["files", "sqlite"])
def test_a_resumed_run_keeps_the_second_session_s_values(store, database, which) -> None:
    path = store[0] if which == "files" else database
    (run,) = [r for r in gradaudit.read_runs([path]) if "MLflow run 'resumed'" in r.notes[0]]
    g1, loss1 = log_runs.series(2, explode=False)
    g2, loss2 = log_runs.series(3, explode=False)
    steps, loss = run.series("loss")
    assert steps.tolist() == list(range(log_runs.N))
    cut = log_runs.RESUME_FROM
    assert np.array_equal(loss[:cut], loss1[:cut]) and np.array_equal(loss[cut:], loss2[cut:])
    assert any("resum" in n or "rewound" in n or "logged again" in n for n in run.notes), \
        run.notes


@pytest.mark.parametrize("which", ["files", "sqlite"])
def test_points_logged_without_a_step_are_read_in_the_order_logged(store, database,
                                                                     which) -> None:
    path = store[0] if which == "files" else database
    (run,) = [r for r in gradaudit.read_runs([path]) if "MLflow run 'stepless'" in r.notes[0]]
    g, loss = log_runs.series(4, explode=False)
    steps, got = run.series("loss")
    assert steps.tolist() == list(range(200)) and np.array_equal(got, loss[:200])
    assert np.array_equal(run.series("grad_norm")[1], g[:200])
    assert any("logged without a step" in n and "'grad_norm'" in n and "'loss'" in n
               for n in run.notes), run.notes


def test_database_runs_are_named_by_run_name_and_id_and_deleted_runs_say_so(database) -> None:
    # <run name>-<its id's head>: the same in every scan (a baseline matches it next time, when
    # another run of that name may have been logged), and two runs of one name told apart
    runs = gradaudit.read_runs([database])
    assert len(runs) == 6
    for r in runs:
        (rid,) = re.findall(r"\(id ([0-9a-f]{32})\)", r.notes[0])
        (name,) = re.findall(r"MLflow run '([^']*)'", r.notes[0])
        assert r.name == f"{database}#{name}-{rid[:8]}"
        assert f"in experiment '{log_runs.EXPERIMENT}'" in r.notes[0]
        assert ("deleted in MLflow" in r.notes[0]) == (name == "deleted")
    assert sorted(re.findall(r"MLflow run '([^']*)'", r.notes[0])[0] for r in runs) == [
        "deleted", "exploded", "resumed", "stepless", "twin", "twin"]


def test_runs_of_a_deleted_experiment_say_so(database, tmp_path) -> None:
    # (the file store moves a deleted experiment to its .trash folder, which no scan walks)
    db = _copy_db(database, tmp_path)
    con = sqlite3.connect(db)
    con.execute("UPDATE experiments SET lifecycle_stage = 'deleted' WHERE name = ?",
                (log_runs.EXPERIMENT,))
    con.commit()
    con.close()
    runs = gradaudit.read_runs([db])
    assert len(runs) == 6 and all("deleted in MLflow" in r.notes[0] for r in runs)


def test_deleted_file_store_run_says_so(store) -> None:
    root, ids = store
    runs = gradaudit.read_runs([root])
    (deleted,) = [r for r in runs if "'deleted'" in r.notes[0]]
    assert "deleted in MLflow" in deleted.notes[0]
    assert deleted.name.endswith(ids["deleted"][0])
    assert all("deleted in MLflow" not in r.notes[0] for r in runs if r is not deleted)


def test_runs_are_found_from_inside_a_run_and_its_metrics_folder(store, monkeypatch) -> None:
    root, ids = store
    folder = _run_folder(root, ids["exploded"][0])
    for inside in (folder, folder / "metrics", folder / "metrics" / "train"):
        monkeypatch.chdir(inside)
        (run,) = gradaudit.read_runs(["."])
        assert run.name == "." and run.format == "mlflow"
        assert run.grad_norm_tag == "train/grad_norm"
    monkeypatch.chdir(root)
    names = {r.name for r in gradaudit.read_runs(["."])}
    assert folder.relative_to(root).as_posix() in names


def test_metric_keys_named_like_other_formats_stay_mlflow_s(tmp_path) -> None:
    # a key is the file's name: "train.log" or "loss.csv" is no Megatron log or CSV table
    run = tmp_path / "0" / "abc123"
    (run / "metrics").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: abc123\nrun_name: keys\n")
    lines = "".join(f"{1000 + s} {0.5 + 0.001 * s} {s}\n" for s in range(50))
    for key in ("train.log", "loss.csv", "grad_norm.jsonl"):
        (run / "metrics" / key).write_text(lines)
    (got,) = gradaudit.read_runs([tmp_path])
    assert got.format == "mlflow"
    assert got.tags() == ["grad_norm.jsonl", "loss.csv", "train.log"]
    assert [REGISTRY[f] for f in ("mlflow", "mlflow-sqlite")] == [mlflow_files, mlflow_db]


def test_malformed_lines_and_a_cut_last_line_are_skipped_and_reported(store, tmp_path) -> None:
    root, ids = store
    folder = tmp_path / "run"
    shutil.copytree(_run_folder(root, ids["exploded"][0]), folder)
    loss = folder / "metrics" / "train" / "loss"
    text = loss.read_text().splitlines(keepends=True)
    text[10] = "garbage\n"
    text[11] = "1 2 3 4\n"  # four fields: no MLflow line has four
    text[12] = "1795961465554 not-a-number 12\n"
    loss.write_text("".join(text) + "1795961465999 0.12")  # cut short inside its step
    (run,) = gradaudit.read_runs([folder])
    steps, _ = run.series("train/loss")
    assert steps.size == log_runs.N - 3
    assert not {10, 11, 12} & set(steps.tolist())
    messages = [p.message for p in run.problems]
    assert any(m.startswith("3 line(s) skipped") for m in messages), messages
    assert any("last line has no line end" in m for m in messages), messages
    (audit,) = gradaudit.scan([folder]).runs
    assert [p.message for p in audit.errors] == messages
    assert [e.onset_step for e in audit.episodes if e.severity == "explosion"] == \
        [log_runs.ONSET]


def test_a_run_whose_metrics_cannot_be_read_is_an_error_and_the_scan_goes_on(store,
                                                                             tmp_path) -> None:
    root, ids = store
    bad = tmp_path / "bad"
    shutil.copytree(_run_folder(root, ids["resumed"][0]), bad)
    for f in (bad / "metrics").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\x00\x01binary")
    good = tmp_path / "good"
    shutil.copytree(_run_folder(root, ids["exploded"][0]), good)
    result = gradaudit.scan([tmp_path])
    assert [a.run for a in result.runs] == ["good"]
    (err,) = result.errors
    assert err.path.endswith("bad") or "bad" in err.path
    assert "no MLflow metric file could be read" in err.message


def _copy_db(database: Path, tmp_path: Path, name: str = "mlflow.db") -> Path:
    out = tmp_path / name
    shutil.copyfile(database, out)
    return out


def test_a_truncated_or_corrupt_database_is_an_error_and_the_scan_goes_on(
        database, store, tmp_path) -> None:
    db = _copy_db(database, tmp_path)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])  # cut short: pages the schema points at are gone
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(data[:100] + bytes(range(256)) * 40 + data[100 + 256 * 40:])
    shutil.copytree(_run_folder(store[0], store[1]["exploded"][0]), tmp_path / "good")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(mlflow_db.MAGIC + b"\xff" * 5000)
    result = gradaudit.scan([tmp_path])
    assert [(a.run, a.format) for a in result.runs] == [("good", "mlflow")]
    assert sorted((Path(e.path).name, e.message) for e in result.errors) == [
        ("corrupt.db", "could not read the SQLite database: database disk image is malformed"),
        ("junk.sqlite", "could not read the SQLite database: file is not a database"),
        ("mlflow.db", "could not read the SQLite database: database disk image is malformed")]


def test_sqlite_files_that_are_not_mlflow_s_are_passed_over(tmp_path) -> None:
    other = tmp_path / "optuna.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE trials (id INTEGER, value REAL)")
    con.commit()
    con.close()
    assert mlflow_db.claim(tmp_path, [other]) == []
    with pytest.raises(ReadError, match="not an MLflow database"):
        mlflow_db.read(Source(mlflow_db.FORMAT, other.name, (other,)))


def test_a_database_runs_none_of_its_own_sql(database, tmp_path) -> None:
    # "metrics" as a view (its query runs on every read), or a table with a generated column,
    # is refused before any point is read
    view = _copy_db(database, tmp_path, "view.db")
    con = sqlite3.connect(view)
    con.execute("ALTER TABLE metrics RENAME TO stored")
    con.execute("CREATE VIEW metrics AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                "SELECT x + 1 FROM c) SELECT s.key, s.value, s.timestamp, s.run_uuid, s.step, "
                "s.is_nan FROM stored s, c")
    con.commit()
    con.close()
    assert mlflow_db.claim(tmp_path, [view]) != []  # (reported, not passed over)
    with pytest.raises(ReadError, match="^'metrics' is a view, not MLflow's table: not read"):
        mlflow_db.read(Source(mlflow_db.FORMAT, view.name, (view,)))
    virtual = tmp_path / "virtual.db"
    con = sqlite3.connect(virtual)
    con.execute("CREATE TABLE runs (run_uuid TEXT, name TEXT)")
    con.execute("CREATE VIRTUAL TABLE metrics USING fts5(key, value, timestamp, run_uuid, step)")
    con.commit()
    con.close()
    with pytest.raises(ReadError, match="^'metrics' is a virtual table, not MLflow's table"):
        mlflow_db.read(Source(mlflow_db.FORMAT, virtual.name, (virtual,)))
    gen = _copy_db(database, tmp_path, "generated.db")
    con = sqlite3.connect(gen)
    con.execute("ALTER TABLE metrics ADD COLUMN big BLOB AS (zeroblob(1000000000))")
    con.commit()
    con.close()
    with pytest.raises(ReadError, match="generated columns"):
        mlflow_db.read(Source(mlflow_db.FORMAT, gen.name, (gen,)))


def test_a_database_over_the_point_limit_is_refused_before_it_is_read(database,
                                                                      monkeypatch) -> None:
    monkeypatch.setattr(mlflow_db, "MAX_POINTS", 1000)
    with pytest.raises(ReadError, match="3,941 metric points, more than the 1,000"):
        mlflow_db.read(Source(mlflow_db.FORMAT, database.name, (database,)))


def test_nan_and_inf_come_back_as_logged(store, database) -> None:
    for path in (store[0], database):
        (run,) = [r for r in gradaudit.read_runs([path]) if "'exploded'" in r.notes[0]]
        _, g = run.series("train/grad_norm")
        assert math.isinf(g[log_runs.OVERFLOW]) and g[log_runs.OVERFLOW] > 0
        assert np.isfinite(np.delete(g, log_runs.OVERFLOW)).all()
        steps, ev = run.series("eval/loss")
        assert steps.tolist() == [log_runs.N - 1] and math.isnan(ev[0])


def test_params_and_tags_are_the_run_s_and_never_read(store, tmp_path) -> None:
    # a param's file is the user's value: one that reads like a Megatron line is no log, and a
    # store's many thousand of them are not each opened by the stdout-log readers' sniffs
    root, ids = store
    run = tmp_path / "run"
    shutil.copytree(_run_folder(root, ids["exploded"][0]), run)
    assert any((run / "params").iterdir()) or any((run / "tags").iterdir())
    (run / "params" / "note").write_text(
        " iteration        1/    100 | lm loss: 2.0 | grad norm: 0.5 |\n" * 3)
    (got,) = gradaudit.read_runs([tmp_path])
    assert got.format == "mlflow" and got.name == "run"
    assert all("/metrics/" in f for f in got.files), got.files
    assert "lm loss" not in got.tags()


def test_a_run_that_logged_no_metric_is_reported(tmp_path) -> None:
    run = tmp_path / "0" / "f00d"
    (run / "params").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: f00d\nrun_name: parent\n")
    (run / "params" / "lr").write_text("0.001")
    result = gradaudit.scan([tmp_path])
    assert result.runs == []
    (err,) = result.errors
    assert err.message == "the MLflow run logged no metric" and "f00d" in err.path


def test_points_stored_out_of_order_are_read_in_the_order_logged(tmp_path, monkeypatch) -> None:
    # MLflow's asynchronous logging (the HF Trainer's callback) stamps a point when it is
    # logged and stores it later, out of order: MLflow's own client writes such a store here,
    # with the points' stamps given, stored backwards in batches of 50
    g, loss = log_runs.series(1, explode=True)
    g[log_runs.OVERFLOW] = 1.0  # (finite: the test is about the order)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.create_run(client.create_experiment("async"), run_name="async")
    t0 = 1_790_000_000_000
    for first in range(0, log_runs.N, 50):
        block = [mlflow.entities.Metric(k, float(v[s]), t0 + 10 * s, s)
                 for s in reversed(range(first, first + 50))
                 for k, v in (("loss", loss), ("grad_norm", g))]
        client.log_batch(run.info.run_id, metrics=block)
    stored = [int(line.split()[2]) for line in
              (_run_folder(tmp_path / "mlruns", run.info.run_id) / "metrics" / "loss")
              .read_text().splitlines()]
    assert stored[:3] == [49, 48, 47]  # the store is out of order
    (got,) = gradaudit.read_runs([tmp_path])
    assert not any("#pass" in n or "rewound" in n for n in got.notes), got.notes
    steps, values = got.series("loss")
    assert steps.tolist() == list(range(log_runs.N)) and np.array_equal(values, loss)
    (audit,) = gradaudit.scan([tmp_path]).runs
    assert [e.onset_step for e in audit.episodes if e.severity == "explosion"] == \
        [log_runs.ONSET]


def test_database_rows_stored_out_of_order_are_read_in_the_order_logged(database,
                                                                         tmp_path) -> None:
    shuffled = _copy_db(database, tmp_path, "shuffled.db")
    con = sqlite3.connect(shuffled)
    con.execute("CREATE TABLE kept AS SELECT * FROM metrics")
    con.execute("DELETE FROM metrics")
    con.execute("INSERT INTO metrics SELECT * FROM kept ORDER BY (rowid * 7919) % 3943")
    con.execute("DROP TABLE kept")
    con.commit()
    con.close()
    want = {r.notes[0]: r for r in gradaudit.read_runs([database])}
    got = {r.notes[0]: r for r in gradaudit.read_runs([shuffled])}
    assert sorted(want) == sorted(got)
    for note, r in got.items():
        assert r.tags() == want[note].tags()
        for tag in r.tags():
            (sa, va), (sb, vb) = r.series(tag), want[note].series(tag)
            assert np.array_equal(sa, sb) and np.array_equal(va, vb, equal_nan=True), tag


def test_a_key_without_steps_beside_keys_with_steps_is_not_renumbered(tmp_path,
                                                                     monkeypatch) -> None:
    # its points cannot be put on the other keys' steps: left where MLflow put them (step 0)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
        mlflow.set_experiment("mixed")
        with mlflow.start_run(run_name="mixed"):
            for s in range(100):
                mlflow.log_metric("loss", 2.0 - 0.01 * s)
                if s % 10 == 0:
                    mlflow.log_metric("grad_norm", 0.5, step=s)
    finally:
        mlflow.set_tracking_uri(None)
    (got,) = gradaudit.read_runs([tmp_path])
    assert got.series("grad_norm")[0].tolist() == list(range(0, 100, 10))
    steps, values = got.series("loss")
    assert steps.tolist() == [0] and values.tolist() == [pytest.approx(2.0 - 0.99)]
    assert any("'loss': logged without a step" in n and "cannot be placed" in n
               for n in got.notes), got.notes
    assert not any("written again" in n for n in got.notes), got.notes  # (no resume)


def test_rows_not_of_mlflow_s_types_are_left_out_and_counted(database, tmp_path) -> None:
    db = _copy_db(database, tmp_path)
    con = sqlite3.connect(db)
    con.execute("UPDATE metrics SET value = 'abc' WHERE step = 3 AND key = 'train/loss'")
    con.execute("UPDATE metrics SET step = 'x' WHERE step = 4 AND key = 'train/loss'")
    con.commit()
    con.close()
    runs = gradaudit.read_runs([db])
    assert len(runs) == 6
    (run,) = [r for r in runs if "'exploded'" in r.notes[0]]
    steps, _ = run.series("train/loss")
    assert 3 not in steps and 4 not in steps and steps.size == log_runs.N - 2
    assert [p.message for p in run.problems] == [
        "2 row(s) of the metrics table left out: not a metric point of MLflow's types (text "
        "where a number belongs, a missing key)"]


def test_a_database_with_damaged_schema_text_is_reported_beside_good_ones(database,
                                                                           tmp_path) -> None:
    # a byte flip can leave text that is not UTF-8 in the schema: SQLite's own message quotes
    # it, and Python's sqlite3 raises UnicodeDecodeError, not sqlite3.Error
    _copy_db(database, tmp_path, "good.db")
    bad = _copy_db(database, tmp_path, "damaged.db")
    con = sqlite3.connect(bad)
    con.execute("PRAGMA writable_schema = ON")
    con.execute("INSERT INTO sqlite_master VALUES ('table', CAST(X'78FF' AS TEXT), "
                "CAST(X'78FF' AS TEXT), 0, CAST(X'435245415445205441424C452078FF28' AS TEXT))")
    con.commit()
    con.close()
    result = gradaudit.scan([tmp_path])
    assert len(result.runs) == 6 and {r.run.split("#")[0] for r in result.runs} == {"good.db"}
    (err,) = result.errors
    assert Path(err.path).name == "damaged.db"
    assert err.message.startswith("could not read the SQLite database")


def test_a_journal_left_by_a_killed_writer_is_rolled_back_on_a_copy(database, tmp_path) -> None:
    # a training killed in the middle of an MLflow commit leaves mlflow.db-journal: opened
    # read-only, the database reads as malformed; SQLite rolls the cut write back on a copy
    db = _copy_db(database, tmp_path)
    writer = (
        "import os, sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}); c.execute('PRAGMA cache_size = 10')\n"
        "c.execute('BEGIN')\n"
        "rid = c.execute('SELECT run_uuid FROM runs LIMIT 1').fetchone()[0]\n"
        "c.executemany('INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) '\n"
        "              'VALUES (?, ?, ?, ?, ?, 0)',\n"
        "              [('cut', 1.0, 1795000000000 + s, rid, s) for s in range(200000)])\n"
        "os._exit(0)  # killed before the commit\n")
    subprocess.run([sys.executable, "-c", writer], check=True)
    journal = db.with_name(db.name + "-journal")
    assert journal.stat().st_size > 0
    before = db.read_bytes(), journal.read_bytes()
    runs = gradaudit.read_runs([db])
    assert len(runs) == 6 and all("cut" not in r.tags() for r in runs)
    want = {r.notes[0]: r for r in gradaudit.read_runs([database])}
    for r in runs:
        assert r.tags() == want[r.notes[0]].tags()
        assert [p.message for p in r.problems] == [
            "a rollback journal beside it (a write cut short: a killed process): read from a "
            "copy, with that write rolled back"]
    assert (db.read_bytes(), journal.read_bytes()) == before  # the files are left as found


def test_a_long_run_name_is_named_as_logged(tmp_path, monkeypatch) -> None:
    # meta.yaml folds a long name onto several lines; the run's mlflow.runName tag holds it whole
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    name = "sweep lr=3e-4 " + "warm-up 2000 steps, cosine to 10 percent, " * 3 + "it's seed 7"
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.create_run(client.create_experiment("names"), run_name=name)
    client.log_batch(run.info.run_id, metrics=[
        mlflow.entities.Metric("loss", 1.0 / (s + 1), 1_790_000_000_000 + s, s)
        for s in range(50)])
    meta = (_run_folder(tmp_path / "mlruns", run.info.run_id) / "meta.yaml").read_text()
    assert name not in meta  # folded
    (got,) = gradaudit.read_runs([tmp_path])
    assert got.notes[0] == f"MLflow run '{name}' in experiment 'names'"


def test_a_metric_file_reads_the_same_in_blocks_of_any_size(store, monkeypatch) -> None:
    root, ids = store
    folder = _run_folder(root, ids["exploded"][0])
    loss = folder / "metrics" / "train" / "loss"
    whole = mlflow_files.read_metric(loss, "train/loss")
    for size in (1, 37, 4096):  # (a line is about 40 bytes: blocks of none, one or many)
        monkeypatch.setattr(mlflow_files, "BLOCK_BYTES", size)
        got = mlflow_files.read_metric(loss, "train/loss")
        assert got[1:] == whole[1:] == (0, False), (size, got[1:], whole[1:])
        assert got[0].drop("wall_time").equals(whole[0].drop("wall_time")), size
        # (ms / 1000 may round 1 ulp apart in polars' vectorised and single-row division)
        assert np.allclose(got[0]["wall_time"], whole[0]["wall_time"], rtol=0, atol=1e-6)


def test_per_batch_values_logged_at_the_epoch_are_read_in_the_order_logged(tmp_path,
                                                                        monkeypatch) -> None:
    # log_metrics(..., step=epoch) in the batch loop: 200 points on each of 3 steps; read as
    # stored, one point per epoch is left and the explosion with it
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    g, loss = log_runs.series(1, explode=True)
    g[log_runs.OVERFLOW] = 1.0
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.create_run(client.create_experiment("epochs"), run_name="epochs")
    t0 = 1_790_000_000_000
    for first in range(0, log_runs.N, 100):
        client.log_batch(run.info.run_id, metrics=[
            mlflow.entities.Metric(k, float(v[s]), t0 + 10 * s, s // 200)
            for s in range(first, first + 100) for k, v in (("loss", loss), ("grad_norm", g))])
    (got,) = gradaudit.read_runs([tmp_path])
    steps, values = got.series("loss")
    assert steps.tolist() == list(range(log_runs.N)) and np.array_equal(values, loss)
    assert any("logged with a step that repeats (600 points on 3 steps" in n
               and "read in the order logged" in n for n in got.notes), got.notes
    (audit,) = gradaudit.scan([tmp_path]).runs
    assert [e.onset_step for e in audit.episodes if e.severity == "explosion"] == \
        [log_runs.ONSET]
