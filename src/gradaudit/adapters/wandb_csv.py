"""W&B UI chart exports ("Export panel data" as CSV).

One chart (one metric) per file: a ``Step`` column, then per run ``<run> - <metric>`` and, when
the chart was bucketed, ``<run> - <metric>__MIN`` and ``<run> - <metric>__MAX``. Run names may
contain ``" - "`` themselves, so a column is split on its *last* ``" - "``. The plain column holds
each bucket's last value, so a spike inside a bucket shows only in ``__MAX``; the tags are the
metric name and ``<metric>__MIN``/``<metric>__MAX`` (the tag chooser reads the grad norm from
``__MAX``). An empty cell means the run has no point at that step.

One export in a folder is read as ``file.csv#<run>``; several exports side by side (one per
chart) are one source for the folder, merged by run name: ``folder#<run>``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import polars as pl

from gradaudit.adapters.base import (
    DUPLICATED_HEADER,
    MAX_LINE,
    STEP_LIMIT,
    RawRun,
    Source,
    check_text,
)
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "wandb-csv"

STEP_COLUMN = "Step"
SEPARATOR = " - "


def split_column(column: str) -> tuple[str, str] | None:
    """``"<run> - <metric>"`` -> ``(run, metric)``, split on the last ``" - "``; else None."""
    run, sep, metric = column.rpartition(SEPARATOR)
    if not sep or not run or not metric:
        return None
    return run, metric


def _header(path: Path) -> list[str] | None:
    """The header row of a CSV file (its first line, whole: a sweep's chart of thousands of
    runs has a header of megabytes), or None (also for a first line over ``MAX_LINE``)."""
    try:
        with path.open("rb") as fh:
            head = fh.readline(MAX_LINE + 3)  # (the line, and its CR LF)
    except OSError:
        return None
    line = head.rstrip(b"\r\n")
    if len(line) > MAX_LINE:
        return None
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration):
        return None


def is_export_header(columns: list[str]) -> bool:
    """True for ``Step`` followed only by ``<run> - <metric>`` columns."""
    if len(columns) < 2 or columns[0].strip() != STEP_COLUMN:
        return False
    return all(split_column(c) is not None for c in columns[1:])


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """W&B chart exports among ``*.csv`` files: sniffed by their header row only."""
    exports = []
    for f in sorted(files):
        if f.suffix.lower() == ".csv":
            columns = _header(f)
            if columns is not None and is_export_header(columns):
                exports.append(f)
    if not exports:
        return []
    if len(exports) == 1:
        return [Source(FORMAT, exports[0].name, (exports[0],))]
    return [Source(FORMAT, ".", tuple(exports))]


def _read_table(path: Path) -> tuple[pl.DataFrame, list[FileProblem]]:
    """The export as all-text columns, and problems met reading it."""
    problems: list[FileProblem] = []
    # (glob off: a name may hold [ ] * ?, and polars would read other files under it)
    options = dict(infer_schema=False, has_header=True, encoding="utf8-lossy", glob=False)
    try:
        table = pl.read_csv(path, **options)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise ReadError(f"not a readable CSV file: {path.name}: {exc}") from exc
        table = pl.read_csv(path, truncate_ragged_lines=True, **options)
        problems.append(
            FileProblem(
                str(path),
                "some rows have more fields than the header; the extra fields are ignored",
            )
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ReadError(f"not a readable CSV file: {path.name}: {exc}") from exc
    return table, problems


def _read_file(path: Path) -> tuple[dict[str, pl.DataFrame], list[FileProblem]]:
    """Points per run of one export: ``{run: frame(step, tag, value)}``."""
    check_text(path)
    table, problems = _read_table(path)
    columns = table.columns
    if not columns or not is_export_header(columns):
        raise ReadError(
            f"not a W&B chart export (header is not 'Step, <run> - <metric>, ...'): {path.name}"
        )
    step_text = pl.col(columns[0]).str.strip_chars()
    step_num = step_text.cast(pl.Float64, strict=False)
    table = table.with_columns(step_num.alias("__step"), step_text.alias("__step_text"))
    # a usable step: a whole number a 64-bit step holds (not NaN, inf or 1e30)
    whole = pl.col("__step").is_finite() & (pl.col("__step") == pl.col("__step").floor()) & (
        pl.col("__step").abs() < STEP_LIMIT)
    bad_step = table.filter(
        pl.col("__step").is_null()
        & pl.col("__step_text").is_not_null()
        & (pl.col("__step_text") != "")
        | (pl.col("__step").is_not_null() & ~whole)
    )
    if bad_step.height:
        example = bad_step["__step_text"][0]
        problems.append(
            FileProblem(
                str(path),
                f"{bad_step.height} row(s) skipped: column {STEP_COLUMN!r} is not a whole number "
                f"below 2**62 (e.g. {example!r})",
            )
        )
    table = table.filter(pl.col("__step").is_not_null() & whole)
    # W&B display names need not be unique: polars reads a repeated header as
    # "<name>_duplicated_<k>", the columns of the (k + 2)-th run of that name; each such run
    # gets "<name> (n)", with n past any run of the export already named so
    parsed = []
    for column in columns[1:]:
        again = DUPLICATED_HEADER.search(column)
        name = column[:again.start()] if again else column
        run, metric = split_column(name)  # type: ignore[misc]  # checked by is_export_header
        parsed.append((column, run, metric, int(again.group(1)) if again else None))
    taken = {run for _, run, _, k in parsed if k is None}
    renamed: dict[tuple[str, int], str] = {}
    for _, run, _, k in parsed:
        if k is not None and (run, k) not in renamed:
            n = k + 2
            while f"{run} ({n})" in taken:
                n += 1
            renamed[(run, k)] = f"{run} ({n})"
            taken.add(renamed[(run, k)])
    by_run: dict[str, list[tuple[str, str]]] = {}
    for column, run, metric, k in parsed:
        by_run.setdefault(run if k is None else renamed[(run, k)], []).append((column, metric))
    if renamed:
        problems.append(FileProblem(str(path), "runs of the same name in this export are read "
                                    f"as {', '.join(repr(r) for r in renamed.values())} (in "
                                    "column order)"))
    # one unpivot of every value column (a select per column costs time in the number of
    # columns: quadratic on a sweep's chart of thousands of runs)
    run_of = {c: run for run, cols in by_run.items() for c, _ in cols}
    tag_of = {c: metric for cols in by_run.values() for c, metric in cols}
    values = list(run_of)
    long = (
        table.lazy()
        .select(pl.col("__step").cast(pl.Int64).alias("step"),
                *[pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in values])
        .unpivot(index="step", on=values, variable_name="__column", value_name="value")
        .filter(pl.col("value").is_not_null())
        .select("step",
                pl.col("__column").replace_strict(tag_of, return_dtype=pl.String).alias("tag"),
                "value",
                pl.col("__column").replace_strict(run_of, return_dtype=pl.String).alias("__run"))
        .collect()
    )
    parts = long.partition_by("__run", maintain_order=True, as_dict=True, include_key=False)
    empty = long.clear().drop("__run")
    return {run: parts.get((run,), empty) for run in by_run}, problems


def read(source: Source) -> list[RawRun]:
    """One RawRun per run name across the source's exports (suffix = the run name)."""
    runs: dict[str, list[pl.DataFrame]] = {}
    run_files: dict[str, list[Path]] = {}
    problems: list[FileProblem] = []
    errors: list[str] = []
    for path in source.files:
        try:
            per_run, file_problems = _read_file(path)
        except ReadError as exc:
            errors.append(str(exc))
            problems.append(FileProblem(str(path), str(exc)))
            continue
        problems.extend(file_problems)
        for run, frame in per_run.items():
            runs.setdefault(run, []).append(frame)
            run_files.setdefault(run, []).append(path)
    if not runs:
        raise ReadError("; ".join(errors) or "no runs in this W&B chart export")
    with_runs = {str(f) for files in run_files.values() for f in files}
    out: list[RawRun] = []
    for run, frames in runs.items():
        files = run_files[run]
        names = {str(f) for f in files}
        # A run carries the problems of its own files and of the files that yielded nothing.
        mine = [p for p in problems if p.file in names or p.file not in with_runs]
        out.append(RawRun(points=pl.concat(frames), suffix=run, problems=mine, files=files))
    return out
