"""MLflow's file store (``mlruns/``): a run's metrics, one file per key.

MLflow's ``FileStore`` (a ``./mlruns`` tracking URI; the default before MLflow 3) keeps a run in
``mlruns/<experiment id>/<run id>/``: ``meta.yaml`` (the run's id, name and lifecycle stage) and
``metrics/<key>``, one file per metric key (a ``/`` in the key makes sub-folders:
``metrics/train/loss``), one line per logged point, ``<timestamp ms> <value> <step>``. Files from
before MLflow had steps hold two fields (read at step 0, as MLflow reads them); a point logged
with a dataset holds five (its name and digest follow). Values are Python's ``str(float)``:
``nan``, ``inf`` and ``-inf`` are kept.

- The run is its folder, named by its path like every run; a note gives the run's and its
  experiment's names from their ``meta.yaml`` files, and says when MLflow marked it deleted.
- Points are read in the order logged (:func:`gradaudit.adapters._mlflow.in_call_order`: MLflow's
  asynchronous logging writes them out of order); a run resumed with
  ``start_run(run_id=...)`` appends to the same files, and repeated steps are resolved as for
  every format.
- A key logged without a step (every point at step 0), or with one that repeats (``step=epoch``
  in the batch loop), is read in the order logged
  (:func:`gradaudit.adapters._mlflow.order_stepless`).
- A line that is not 2, 3 or 5 fields, or whose fields are not numbers, is skipped and counted;
  so is a last line without its line end (a write cut short).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl

from gradaudit.adapters import _mlflow
from gradaudit.adapters.base import RawRun, Source, check_text, nonempty_size
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "mlflow"
METRICS = "metrics"
META = "meta.yaml"
#: A run folder's other folders of one small file per entry: claimed with the run, never read
#: (the stdout-log readers would otherwise open each of a store's many thousand files to sniff
#: it: 300 runs of 150 params took discovery from 0.4 s to 3 s)
SIDE_FOLDERS = ("params", "tags")
#: ``/`` in a metric key nests folders; no key is deeper than this (MLflow caps keys at 250
#: characters)
MAX_KEY_DEPTH = 125
#: The head of a ``meta.yaml`` read to tell a run's (its ``run_id``/``run_uuid`` line) and to
#: name it
META_BYTES = 64 << 10
_RUN_ID = re.compile(rb"^run_(?:id|uuid):", re.M)
_FIELD = re.compile(r"^([a-z_]+):[ \t]*(.*?)[ \t]*$", re.M)


def _run_meta(folder: Path) -> bytes | None:
    """The head of ``folder/meta.yaml`` when it is a run's, else None."""
    try:
        with (folder / META).open("rb") as fh:
            head = fh.read(META_BYTES)
    except OSError:
        return None
    return head if _RUN_ID.search(head) else None


def metrics_root(folder: Path) -> Path | None:
    """The ``metrics`` folder of an MLflow run that ``folder`` is or lies in, or None."""
    folder = folder.absolute()  # ("." has no parents)
    for depth, at in enumerate((folder, *folder.parents)):
        if depth > MAX_KEY_DEPTH:
            break
        if at.name == METRICS and _run_meta(at.parent) is not None:
            return at
    return None


def placed(folder: Path) -> tuple[Path, Path | None] | None:
    """The MLflow run whose files ``folder`` holds, and its ``metrics`` folder where they are
    metric files (None: its ``params/`` or ``tags/``); None where it holds no run's files."""
    root = metrics_root(folder)
    if root is not None:
        return root.parent, root
    if folder.name in SIDE_FOLDERS and _run_meta(folder.absolute().parent) is not None:
        return folder.absolute().parent, None
    return None


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Every file under a run's ``metrics`` folder and in its ``params/`` and ``tags/`` (but a
    dot-file: a Finder's ``.DS_Store``); the run is the folder holding them."""
    files = [f for f in files if not f.name.startswith(".")]
    where = placed(directory) if files else None
    if where is None:
        return []
    return [Source(FORMAT, Path(os.path.relpath(where[0], directory.absolute())).as_posix(),
                   tuple(files))]


def _unquote(value: str) -> str:
    """A YAML scalar as ``yaml.safe_dump`` writes one (plain, '...' or "...")."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _fields(head: bytes | None) -> dict[str, str]:
    """The top-level ``key: value`` lines of a ``meta.yaml`` head."""
    if head is None:
        return {}
    text = head.decode("utf-8", errors="replace")
    return {k: _unquote(v) for k, v in _FIELD.findall(text)}


def _run_name(run_folder: Path, meta: dict[str, str]) -> str | None:
    """The run's name: its ``mlflow.runName`` tag, as logged (``meta.yaml`` folds a long name
    onto lines of its own, which ``_fields`` does not join), else ``meta.yaml``'s."""
    try:
        with (run_folder / "tags" / "mlflow.runName").open("rb") as fh:
            return fh.read(META_BYTES).decode("utf-8", errors="replace") or None
    except OSError:
        return meta.get("run_name") or None


def _note(run_folder: Path) -> str | None:
    run = _fields(_run_meta(run_folder))
    try:
        with (run_folder.parent / META).open("rb") as fh:
            experiment = _fields(fh.read(META_BYTES)).get("name")
    except OSError:
        experiment = None
    return _mlflow.run_note(_run_name(run_folder, run), experiment or None,
                            run.get("lifecycle_stage") == "deleted")


#: A metric file is parsed this many bytes at a time (whole lines): parsing takes about 9 times
#: the text it parses, so a file of 567 MB took 5.3 GB read whole
BLOCK_BYTES = 32 << 20


def _parse(text: str, key: str) -> tuple[pl.DataFrame, int]:
    """Whole lines of a metric file: their points, and how many lines were malformed."""
    lines = (pl.DataFrame({"line": [text]}, schema={"line": pl.String})
             .select(pl.col("line").str.split("\n")).explode("line")
             .select(pl.col("line").str.strip_chars_end("\r")))
    lines = lines.head(lines.height - 1)  # after the last line end: ""
    parts = pl.col("line").str.split(" ")
    n = parts.list.len()
    got = lines.select(
        n.alias("n"),
        parts.list.get(0, null_on_oob=True).cast(pl.Int64, strict=False).alias("ts"),
        parts.list.get(1, null_on_oob=True).cast(pl.Float64, strict=False).alias("value"),
        pl.when(n == 2).then(pl.lit("0")).otherwise(parts.list.get(2, null_on_oob=True))
        .cast(pl.Int64, strict=False).alias("step"),
    )
    good = got.filter(pl.col("n").is_in([2, 3, 5]) & pl.col("ts").is_not_null()
                      & pl.col("value").is_not_null() & pl.col("step").is_not_null())
    points = good.select(
        pl.col("step"),
        pl.lit(key, dtype=pl.String).alias("tag"),
        pl.col("value"),
        (pl.col("ts").cast(pl.Float64) / 1000.0).alias("wall_time"),
    )
    return points, got.height - good.height


def read_metric(path: Path, key: str) -> tuple[pl.DataFrame, int, bool]:
    """One metric file: its points (``step``, ``tag``, ``value``, ``wall_time``) in file order,
    the number of lines skipped as malformed, and whether its last line was cut short (read
    :data:`BLOCK_BYTES` of whole lines at a time)."""
    nonempty_size(path)
    check_text(path)
    frames, bad, rest = [], 0, b""
    try:
        with path.open("rb") as fh:
            while block := fh.read(BLOCK_BYTES):
                block = rest + block
                end = block.rfind(b"\n") + 1
                rest = block[end:]
                if end:
                    points, skipped = _parse(block[:end].decode("utf-8", errors="replace"), key)
                    frames.append(points)
                    bad += skipped
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror or exc}") from exc
    if not frames:
        frames.append(_parse("", key)[0])
    return pl.concat(frames), bad, bool(rest)


def read(source: Source) -> list[RawRun]:
    """Read a run's metric files (one source per run folder; its params and tags are not
    read)."""
    frames: list[pl.DataFrame] = []
    problems: list[FileProblem] = []
    runs: dict[Path, None] = {}
    folders: dict[Path, tuple[Path, Path | None] | None] = {}  # a file's folder -> placed()
    read_files: list[Path] = []
    for f in source.files:
        if f.parent not in folders:
            folders[f.parent] = placed(f.parent)
        where = folders[f.parent]
        if where is None:
            problems.append(FileProblem(str(f), "not under an MLflow run's metrics folder"))
            continue
        run_folder, root = where
        runs[run_folder] = None
        if root is None:  # (a param or tag: the run's, not read)
            continue
        key = f.absolute().relative_to(root).as_posix()
        read_files.append(f)
        try:
            points, bad, cut = read_metric(f, key)
        except ReadError as exc:
            problems.append(FileProblem(str(f), str(exc)))
            continue
        if bad:
            problems.append(FileProblem(str(f), f"{bad} line(s) skipped: not the "
                                                "'<timestamp> <value> <step>' of a metric point"))
        if cut:
            problems.append(FileProblem(str(f), "the last line has no line end (a write cut "
                                                "short): skipped"))
        frames.append(points)
    if not read_files:
        raise ReadError("the MLflow run logged no metric")
    if not frames:
        raise ReadError("no MLflow metric file could be read"
                        + (f": {problems[0].message}" if problems else ""))
    points, notes = _mlflow.order_stepless(_mlflow.in_call_order(pl.concat(frames)))
    run_notes = [n for r in runs if (n := _note(r)) is not None]
    return [RawRun(points=points, problems=problems, notes=run_notes + notes, files=read_files)]

