"""Parquet tables of scalars: long, wide or W&B history layout (see :mod:`._tables`).

Read lazily with ``polars.scan_parquet``: only the step, run, wall-time and numeric metric
columns are read. A null cell is a point that was not logged; NaN/inf cells are kept.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gradaudit.adapters import _tables
from gradaudit.adapters.base import RawRun, Source, nonempty_size
from gradaudit.errors import ReadError

FORMAT = "parquet"
SUFFIXES = (".parquet", ".pq")
MAGIC = b"PAR1"


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Every ``.parquet``/``.pq`` file is one source named after the file."""
    return [Source(FORMAT, f.name, (f,)) for f in files if f.suffix.lower() in SUFFIXES]


def _check_magic(path: Path) -> None:
    size = nonempty_size(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            if size >= 12:
                fh.seek(size - 4)
                tail = fh.read(4)
            else:
                tail = b""
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror}") from exc
    if head != MAGIC:
        raise ReadError("not a Parquet file (it does not start with the PAR1 magic bytes)")
    if tail != MAGIC:
        raise ReadError("truncated Parquet file (no PAR1 footer): the writer did not finish it")


def read_file(path: Path) -> list[RawRun]:
    """Read one Parquet table into raw runs."""
    _check_magic(path)
    try:
        lf = pl.scan_parquet(path, glob=False)  # (a name may hold [ ] * ?)
        return _tables.table_runs(lf, path)
    except ReadError:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReadError(f"could not read the Parquet file: {first}") from exc


def read(source: Source) -> list[RawRun]:
    """Read the source's table (one file)."""
    runs: list[RawRun] = []
    for path in source.files:
        runs.extend(read_file(path))
    return runs
