"""MLflow's SQLite store (``mlflow.db``, the default tracking store since MLflow 3): every run of
every experiment in one database file.

MLflow's ``SqlAlchemyStore`` keeps each logged point as a row of its ``metrics`` table
(``key``, ``value``, ``timestamp`` in ms, ``run_uuid``, ``step``, ``is_nan``), the runs in
``runs`` (``run_uuid``, ``name``, ``experiment_id``, ``lifecycle_stage``) and the experiments'
names in ``experiments``. A NaN is stored as 0 with ``is_nan`` set, and +-inf as +-1.797e308
(the largest float): both are read back as what was logged.

- Each run is ``mlflow.db#<run name>-<first 8 of its id>`` (the same in every scan), in the
  order the runs first logged; a note gives its whole id and experiment, and says when MLflow
  marked it deleted.
- Points are read in the order logged (:func:`gradaudit.adapters._mlflow.in_call_order`):
  repeated steps are resolved as for every format. A row not of MLflow's types (text where a
  number belongs, a missing key) is left out and counted. A key logged without a step is read
  in the order logged (:func:`gradaudit.adapters._mlflow.order_stepless`).
- The file is opened read-only, with ``trusted_schema`` off and a length limit: a database from
  anywhere runs no SQL of its own (a ``metrics`` that is a view, or has generated columns, is
  refused), and one of more than :data:`MAX_POINTS` points is refused before it is read. With a
  rollback journal beside it (a write cut short), or a write-ahead log it cannot apply in place,
  a copy is read (:func:`_open`); the files themselves are never written.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import polars as pl

from gradaudit.adapters import _mlflow
from gradaudit.adapters.base import RawRun, Source, nonempty_size
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "mlflow-sqlite"
SUFFIXES = (".db", ".sqlite", ".sqlite3")
MAGIC = b"SQLite format 3\x00"
#: Largest ``metrics`` table read (every point of every run is held at once)
MAX_POINTS = 50_000_000
#: Rows fetched at a time
CHUNK = 200_000
#: No text or blob in the database read longer (a key, a run name)
MAX_LENGTH = 1 << 20
#: Seconds any one statement may take (the whole ``metrics`` read is many)
MAX_STATEMENT_SECONDS = 120.0
_NEEDED = ("key", "value", "timestamp", "run_uuid", "step")
#: The float MLflow stores for +inf (and its negative for -inf): ``sys.float_info.max``
INF_STORED = 1.7976931348623157e308


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _connect(path: Path, immutable: bool = False, copy: bool = False) -> sqlite3.Connection:
    """``path`` opened read-only (``copy``: our own copy, opened so that SQLite can apply the
    journal or write-ahead log beside it), running none of the database's own SQL."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={'rw' if copy else 'ro'}"
    if immutable:  # (no locks, no write-ahead log: for a folder it cannot write its -shm into)
        uri += "&immutable=1"
    con = sqlite3.connect(uri, uri=True)
    con.text_factory = _text  # (a damaged page's text need not be UTF-8)
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_LENGTH)
    defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)
    if defensive is not None and hasattr(con, "setconfig"):
        con.setconfig(defensive, True)
    con.execute("PRAGMA trusted_schema = OFF")
    con.execute("PRAGMA query_only = ON")
    return con


def _columns(con: sqlite3.Connection, table: str) -> dict[str, int] | None:
    """A plain table's columns (name -> hidden flag), or None when there is no such table."""
    kind = con.execute("SELECT type FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    if kind is None or kind[0] != "table":
        return None
    return {str(r[1]): int(r[6]) for r in con.execute(f"PRAGMA table_xinfo({table})")}


def _kinds(con: sqlite3.Connection) -> dict[str, str]:
    """What ``metrics`` and ``runs`` are: ``table``, ``view`` or ``virtual table`` (absent: not
    in)."""
    return {str(n): "virtual table" if str(sql or "").upper().startswith("CREATE VIRTUAL")
            else str(t)
            for n, t, sql in con.execute("SELECT name, type, sql FROM sqlite_master "
                                         "WHERE name IN ('metrics', 'runs')")}


#: Why a database is passed over (another program's)
NOT_MLFLOW = "not an MLflow database (no 'metrics' and 'runs' tables)"


def _why_not(con: sqlite3.Connection, kinds: dict[str, str]) -> str | None:
    """Why the database (its ``metrics`` and ``runs`` of ``kinds``) is not read, or None."""
    odd = sorted(f"'{n}' is a {k}" for n, k in kinds.items() if k != "table")
    if odd:
        return (f"{' and '.join(odd)}, not MLflow's table: not read (it would run the "
                "database's own SQL)")
    metrics = _columns(con, "metrics")
    if metrics is None or "runs" not in kinds or not all(c in metrics for c in _NEEDED):
        return NOT_MLFLOW
    if any(metrics.values()):
        return "the 'metrics' table has generated columns: not MLflow's"
    return None


def _is_mlflow(path: Path) -> bool:
    """An SQLite file with MLflow's tables (or ``metrics`` and ``runs`` of another kind: read,
    to say why not), or one whose tables cannot be listed (corrupt: read it, to say so)."""
    try:
        with path.open("rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return False
    except OSError:
        return False
    try:
        con = _connect(path)
        try:
            kinds = _kinds(con)
            why = _why_not(con, kinds)
        finally:
            con.close()
    except Exception:  # noqa: BLE001 - corrupt (sqlite3.Error, or text that is not UTF-8)
        return True
    return len(kinds) == 2 and why != NOT_MLFLOW


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """``.db``/``.sqlite``/``.sqlite3`` files holding MLflow's ``metrics`` and ``runs`` tables
    (another program's database is passed over)."""
    return [Source(FORMAT, f.name, (f,)) for f in files
            if f.suffix.lower() in SUFFIXES and _is_mlflow(f)]


class _Deadline:
    """A progress handler that stops a statement running past its time."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.monotonic()

    def restart(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> int:
        return int(time.monotonic() - self.start > self.seconds)


def _runs(con: sqlite3.Connection, cols: dict[str, int]) -> dict[str, tuple[str, str, bool]]:
    """run id -> (name, experiment name, deleted: the run or its experiment)."""
    experiments: dict[str, tuple[str, bool]] = {}
    exp_cols = _columns(con, "experiments") or {}
    if "experiment_id" in exp_cols and "name" in exp_cols:
        stage = "lifecycle_stage" if "lifecycle_stage" in exp_cols else "NULL"
        experiments = {str(i): (str(n), st == "deleted") for i, n, st in con.execute(
            f"SELECT experiment_id, name, {stage} FROM experiments")}
    names: dict[str, str] = {}
    tag_cols = _columns(con, "tags") or {}
    if {"key", "value", "run_uuid"} <= set(tag_cols):  # (runs.name came in MLflow 1.29)
        names = {str(r): str(v) for r, v in con.execute(
            "SELECT run_uuid, value FROM tags WHERE key = 'mlflow.runName'")}
    pick = [c if c in cols else "NULL" for c in ("name", "experiment_id", "lifecycle_stage")]
    out = {}
    for rid, name, exp, stage in con.execute(f"SELECT run_uuid, {', '.join(pick)} FROM runs"):
        rid = str(rid)
        exp_name, exp_deleted = experiments.get(str(exp), ("", False))
        out[rid] = (str(name) if name else names.get(rid, ""), exp_name,
                    stage == "deleted" or exp_deleted)
    return out


# (the run and the key as categories: as text, each point held its 32-character run id)
_SCHEMA = {"run": pl.Categorical, "tag": pl.Categorical, "step": pl.Int64, "value": pl.Float64,
           "is_nan": pl.Int64, "ts": pl.Int64}
#: The rows read: MLflow's types (a row of another type - text in ``value``, a NULL key - is a
#: damaged or foreign row, counted and left out)
_TYPED = ("typeof(run_uuid) = 'text' AND typeof(key) = 'text' AND typeof(step) = 'integer' "
          "AND typeof(value) IN ('real', 'integer') AND typeof(timestamp) = 'integer'")


def _points(con: sqlite3.Connection, cols: dict[str, int], deadline: _Deadline) -> pl.DataFrame:
    """Every metric point of MLflow's types, as stored (a plain scan of the table)."""
    is_nan = "CAST(is_nan AS INTEGER)" if "is_nan" in cols else "0"
    cur = con.execute(f"SELECT run_uuid, key, step, value, {is_nan}, timestamp FROM metrics "
                      f"WHERE {_TYPED} ORDER BY _rowid_")
    frames = []
    while True:
        deadline.restart()
        rows = cur.fetchmany(CHUNK)
        if not rows:
            break
        frames.append(pl.DataFrame(rows, schema=_SCHEMA, orient="row", strict=False))
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    got = pl.concat(frames)
    value = pl.col("value")
    return got.with_columns(
        pl.when(pl.col("is_nan") != 0).then(float("nan"))
        .when(value >= INF_STORED).then(float("inf"))
        .when(value <= -INF_STORED).then(float("-inf"))
        .otherwise(value).alias("value"))


def _suffixes(ids: list[str], runs: dict[str, tuple[str, str, bool]]) -> dict[str, str]:
    """Each run's name in the file: its MLflow name and its id's head, the same in every scan
    (a name alone would change when another run of that name is logged, and a baseline would
    match nothing); the whole id where two heads agree."""
    names = {rid: f"{n}-{rid[:8]}" if (n := runs.get(rid, ("", "", False))[0]) else rid
             for rid in ids}
    seen = Counter(names.values())
    return {rid: n if seen[n] == 1 else f"{runs[rid][0]}-{rid}" for rid, n in names.items()}


def _copy(path: Path, into: Path, sides: tuple[str, ...]) -> Path:
    """The database and those of its ``-journal``/``-wal`` files there are, copied ``into``."""
    for side in ("", *sides):
        src = path.with_name(path.name + side)
        if src.is_file():
            shutil.copyfile(src, into / (path.name + side))
    return into / path.name


def _open(path: Path, tmp: Path, problems: list[FileProblem]) -> sqlite3.Connection:
    """The database opened for reading, with what a write cut short or a write-ahead log it
    cannot apply in place would hide: a rollback journal beside it (a process killed in a
    commit) makes the read-only open see a half-written database, so a copy of the two is read,
    the cut write rolled back; a write-ahead log in a folder that cannot be written is read
    from a copy too."""
    journal = path.with_name(path.name + "-journal")
    if journal.is_file() and journal.stat().st_size > 0:
        problems.append(FileProblem(str(path), "a rollback journal beside it (a write cut short: "
                                               "a killed process): read from a copy, with that "
                                               "write rolled back"))
        return _connect(_copy(path, tmp, ("-journal",)), copy=True)
    try:
        con = _connect(path)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        if path.with_name(path.name + "-wal").is_file():
            return _connect(_copy(path, tmp, ("-wal",)), copy=True)
        problems.append(FileProblem(str(path), "opened without locks (its folder cannot be "
                                               "written)"))
        return _connect(path, immutable=True)


def read(source: Source) -> list[RawRun]:
    """Read every run of the database (one file)."""
    (path,) = source.files
    nonempty_size(path)
    problems: list[FileProblem] = []
    deadline = _Deadline(MAX_STATEMENT_SECONDS)
    try:
        with tempfile.TemporaryDirectory(prefix="gradaudit-mlflow-") as tmp:
            con = _open(path, Path(tmp), problems)
            con.set_progress_handler(deadline, 10_000)
            try:
                why = _why_not(con, _kinds(con))
                if why is not None:
                    raise ReadError(why)
                cols, run_cols = _columns(con, "metrics") or {}, _columns(con, "runs") or {}
                (n,) = con.execute("SELECT count(*) FROM metrics").fetchone()
                if n > MAX_POINTS:
                    raise ReadError(f"{n:,} metric points, more than the {MAX_POINTS:,} read "
                                    "from one MLflow database")
                runs = _runs(con, run_cols)
                points = _points(con, cols, deadline)
                skipped = n - points.height
            finally:
                con.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # (SQLite's message may quote bad text)
        why = "took too long" if isinstance(exc, sqlite3.OperationalError) and \
            "interrupted" in str(exc) else "damaged text in its schema" \
            if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ReadError(f"could not read the SQLite database: {why}") from exc
    except OSError as exc:  # (the copy: no room in the temporary folder)
        raise ReadError(f"could not copy the database to read it: {exc.strerror or exc}") \
            from exc
    if points.height == 0:
        raise ReadError("the MLflow database holds no metric point"
                        + (f" of MLflow's types ({skipped:,} rows of others)" if skipped else ""))
    if skipped:
        problems.append(FileProblem(str(path), f"{skipped:,} row(s) of the metrics table left "
                                               "out: not a metric point of MLflow's types (text "
                                               "where a number belongs, a missing key)"))
    ids = [str(r) for r in points["run"].unique(maintain_order=True).to_list()]
    names = _suffixes(ids, runs)
    out = []
    for (rid,), part in points.group_by("run", maintain_order=True):
        frame, notes = _mlflow.order_stepless(_mlflow.in_call_order(part.select(
            "step", pl.col("tag").cast(pl.String), "value",
            (pl.col("ts").cast(pl.Float64) / 1000.0).alias("wall_time"))))
        name, experiment, deleted = runs.get(str(rid), ("", "", False))
        note = _mlflow.run_note(name or None, experiment or None, deleted, str(rid))
        out.append(RawRun(points=frame, suffix=names[str(rid)], problems=list(problems),
                          notes=([note] if note else []) + notes))
    return out
