"""CSV/TSV tables of scalars: long, wide or W&B history layout (see :mod:`._tables`).

Read lazily with ``polars.scan_csv``. Metric columns are parsed as Float64, so ``nan``, ``NaN``,
``inf``, ``Infinity`` cells are kept as the non-finite values that were logged, while an empty
cell is a point that was not logged. A cell that is not a number becomes "not logged" too.
Invalid UTF-8 does not stop the read: the file is read again with replacement characters and the
run carries a problem saying so (numbers are ASCII, so only text such as run names can suffer).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gradaudit.adapters import _tables
from gradaudit.adapters.base import (
    DUPLICATED_HEADER,
    MAX_LINE,
    RawRun,
    Source,
    check_text,
    nonempty_size,
)
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "csv"
SUFFIXES = {".csv": ",", ".tsv": "\t"}
#: Rows read up front to decide column types (sparse metrics may be empty for a while).
SAMPLE_ROWS = 5000


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Every ``.csv``/``.tsv`` file is one source named after the file."""
    return [Source(FORMAT, f.name, (f,)) for f in files if f.suffix.lower() in SUFFIXES]


def _read(path: Path, sep: str, encoding: str) -> tuple[pl.LazyFrame, set[str]]:
    try:
        sample = pl.read_csv(
            path,
            glob=False,  # a name may hold [ ] * ?: polars would read other files under it
            separator=sep,
            n_rows=SAMPLE_ROWS,
            infer_schema_length=SAMPLE_ROWS,
            encoding=encoding,
            truncate_ragged_lines=True,
            # (polars parses whole blocks: a text cell just past the sample would fail the file)
            ignore_errors=True,
        )
    except pl.exceptions.NoDataError as exc:
        raise ReadError("the file is empty") from exc
    # (an all-empty sample column may still be a sparse metric: the sample is the file's start)
    numeric_text = _tables.numeric_text(sample, empty=True)
    # An all-empty sample column reads as String: it may still be a sparse metric.
    layout = _tables.detect_layout(dict(sample.schema), numeric_text)
    overrides: dict[str, pl.DataType] = dict(sample.schema)
    metrics = set(layout.metrics)  # (a set: a wide table may hold 10^5 columns)
    for name, dtype in sample.schema.items():
        if name in metrics or name == layout.value:
            overrides[name] = pl.Float64()
        elif name == layout.step and dtype != pl.Int64:
            overrides[name] = pl.Float64() if dtype.is_numeric() else pl.String()
        elif dtype == pl.Null:
            overrides[name] = pl.String()
    lf = pl.scan_csv(
        path,
        glob=False,
        separator=sep,
        schema_overrides=overrides,
        infer_schema_length=SAMPLE_ROWS,
        ignore_errors=True,
        encoding=encoding,
        truncate_ragged_lines=True,
    )
    return lf, numeric_text


def _duplicates(lf: pl.LazyFrame, path: Path) -> list[FileProblem]:
    """A problem naming each column the header names twice (polars reads the second under
    ``<name>_duplicated_<k>``: a metric there would otherwise go unseen)."""
    again = [c for c in lf.collect_schema().names() if DUPLICATED_HEADER.search(c)]
    return [FileProblem(path.name, f"the header names {DUPLICATED_HEADER.sub('', c)!r} more than "
                        f"once: that column is read as {c!r}") for c in again]


#: the most columns a table's header may name (a W&B export of many runs and metrics holds
#: 10^5; a million columns of three rows, 14 MB, took 6 GB to read)
MAX_COLUMNS = 200_000


def _header_columns(path: Path, sep: str) -> int:
    """How many columns the header line names (counted in its first ``MAX_LINE`` bytes)."""
    with path.open("rb") as fh:
        head = fh.readline(MAX_LINE)
    return head.count(sep.encode()) + 1


def read_file(path: Path) -> list[RawRun]:
    """Read one CSV/TSV table into raw runs."""
    nonempty_size(path)
    check_text(path)
    sep = SUFFIXES.get(path.suffix.lower(), ",")
    if (n := _header_columns(path, sep)) > MAX_COLUMNS:
        raise ReadError(f"the header names {n} columns, more than {MAX_COLUMNS}: not a metrics "
                        "table gradaudit reads")
    problems: list[FileProblem] = []
    try:
        try:
            lf, numeric_text = _read(path, sep, "utf8")
            return _tables.table_runs(lf, path, numeric_text=numeric_text,
                                      problems=_duplicates(lf, path))
        except pl.exceptions.ComputeError as exc:
            if "utf-8" not in str(exc).lower() and "utf8" not in str(exc).lower():
                raise
        problems.append(
            FileProblem(
                path.name,
                "the file is not valid UTF-8; it was read with replacement characters",
            )
        )
        lf, numeric_text = _read(path, sep, "utf8-lossy")
        return _tables.table_runs(lf, path, numeric_text=numeric_text,
                                  problems=problems + _duplicates(lf, path))
    except ReadError:
        raise
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReadError(f"could not parse the CSV: {first}") from exc


def read(source: Source) -> list[RawRun]:
    """Read the source's table (one file)."""
    runs: list[RawRun] = []
    for path in source.files:
        runs.extend(read_file(path))
    return runs
