"""JSON and JSON Lines tables of scalars: long, wide or W&B history layout (see :mod:`._tables`).

Claimed: every ``.jsonl``/``.ndjson`` file; a ``.json`` file only when its first bytes show a
table with a step (a list of records or JSON lines with a step-like key, or a pandas ``to_json``
frame in ``columns``/``split``/``table`` orientation whose columns include a step). A list of
records without any step (a data set such as ``train.json``) is no run. Configuration and
summary files (``config.json``, ``tokenizer.json``, ``wandb-summary.json``,
``trainer_state.json``, ...) are never claimed.

Records are read with Polars when it can; files holding ``NaN``/``Infinity`` tokens (what
Python's ``json`` writes for non-finite floats), mixed types or a truncated last line are read
with the standard library instead, up to :data:`MAX_PY_BYTES`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from gradaudit.adapters import _tables
from gradaudit.adapters.base import RawRun, Source, check_text, json_float, nonempty_size
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "json"
LINES_SUFFIXES = (".jsonl", ".ndjson")
SNIFF_BYTES = 8192
#: Largest file read through Python's ``json`` module (a Python object per cell).
MAX_PY_BYTES = 256 * 1024 * 1024
#: Files that are JSON but never a table of scalars.
NOT_TABLES = frozenset(
    {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "preprocessor_config.json",
        "adapter_config.json",
        "vocab.json",
        "wandb-summary.json",
        "wandb-metadata.json",
        "trainer_state.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
    }
)
_STEPS = "|".join(re.escape(s) for s in sorted(set(_tables.STEP_NAMES), key=len, reverse=True))
# (ignoring case, as the table's step column is found: "STEP" too)
_STEP_KEY = re.compile(rf'"(?:{_STEPS})"\s*:', re.IGNORECASE)
_COLUMN_ORIENT = re.compile(rf'"(?:{_STEPS})"\s*:\s*[\[{{]', re.IGNORECASE)
_SPLIT_ORIENT = re.compile(rf'"columns"\s*:\s*\[[^\]]*"(?:{_STEPS})"', re.IGNORECASE)
_TABLE_ORIENT = re.compile(r'"data"\s*:\s*\[\s*\{')


def _head(path: Path) -> str:
    with path.open("rb") as fh:
        raw = fh.read(SNIFF_BYTES)
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")


def _json_lines(head: str) -> bool:
    """The head holds at least two lines that each start a JSON object, the first whole."""
    lines = [ln for ln in head.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[1].lstrip().startswith("{"):
        return False
    try:
        first = json.loads(lines[0])
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict)


def _sniff_json(path: Path) -> bool:
    if path.name.lower() in NOT_TABLES or path.name.lower().endswith(".index.json"):
        return False
    try:
        head = _head(path)
    except OSError:
        return False
    if head.startswith("["):  # a list of records, one of them with a step
        return head[1:].lstrip().startswith("{") and bool(_STEP_KEY.search(head))
    if not head.startswith("{"):
        return False
    if _json_lines(head):
        return bool(_STEP_KEY.search(head))
    if _TABLE_ORIENT.search(head) and _STEP_KEY.search(head):
        return True
    return bool(_COLUMN_ORIENT.search(head) or _SPLIT_ORIENT.search(head))


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """``.jsonl``/``.ndjson`` files, and ``.json`` files that sniff as tables."""
    out: list[Source] = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in LINES_SUFFIXES or (suffix == ".json" and _sniff_json(f)):
            out.append(Source(FORMAT, f.name, (f,)))
    return out


def _cell(v: Any) -> float | str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return json_float(v)
    if isinstance(v, str):
        return v
    return None


def _number(text: str) -> float | None:
    """``text`` read as a number, or None."""
    try:
        return float(text)
    except ValueError:
        return None


def _column(values: list[Any]) -> pl.Series | None:
    """A Float64 column when the cells are numbers - or text that mostly reads as numbers
    (fairseq's JSON log lines quote every value: ``"loss": "2.345"``) - a String column when
    they are text."""
    cells = [_cell(v) for v in values]
    n_num = sum(1 for c in cells if isinstance(c, float))
    n_str = sum(1 for c in cells if isinstance(c, str))
    if n_num >= n_str and n_num:
        return pl.Series([c if isinstance(c, float) else None for c in cells], dtype=pl.Float64)
    if n_str:
        read = [_number(c) if isinstance(c, str) else c for c in cells]
        if 2 * sum(1 for r in read if isinstance(r, float)) >= n_num + n_str:
            return pl.Series([r if isinstance(r, float) else None for r in read],
                             dtype=pl.Float64)
        return pl.Series([c if isinstance(c, str) else None for c in cells], dtype=pl.String)
    return None


def _from_columns(columns: dict[str, list[Any]]) -> pl.DataFrame:
    data: dict[str, pl.Series] = {}
    for name, values in columns.items():
        col = _column(values)
        if col is not None:
            data[str(name)] = col.alias(str(name))
    return pl.DataFrame(data)


def _from_records(records: Iterable[Any]) -> pl.DataFrame:
    columns: dict[str, list[Any]] = {}
    n = 0
    for rec in records:
        if not isinstance(rec, dict):
            continue
        for key, value in rec.items():
            col = columns.get(key)
            if col is None:
                col = columns[key] = [None] * n
            col.append(value)
        n += 1
        for col in columns.values():
            if len(col) < n:
                col.append(None)
    return _from_columns(columns)


def _from_object(obj: Any) -> pl.DataFrame:
    """A pandas ``to_json`` frame in any orientation, or a list of records."""
    if isinstance(obj, list):
        return _from_records(obj)
    if not isinstance(obj, dict):
        raise ReadError("the JSON holds neither records nor a table")
    if isinstance(obj.get("columns"), list) and isinstance(obj.get("data"), list):  # split
        names = [str(c) for c in obj["columns"]]
        rows = [r for r in obj["data"] if isinstance(r, list)]
        return _from_columns(
            {n: [r[i] if i < len(r) else None for r in rows] for i, n in enumerate(names)}
        )
    if isinstance(obj.get("schema"), dict) and isinstance(obj.get("data"), list):  # table
        return _from_records(obj["data"])
    index: list[str] | None = None
    columns: dict[str, list[Any]] = {}
    for name, values in obj.items():  # columns orientation: {col: {row: value}} or {col: [..]}
        if isinstance(values, dict):
            if index is None:
                index = list(values)
            columns[name] = [values.get(k) for k in index]
        elif isinstance(values, list):
            columns[name] = list(values)
    if not columns:
        raise ReadError("the JSON object is not a table (no column of values)")
    n = max(len(v) for v in columns.values())
    return _from_columns({k: v + [None] * (n - len(v)) for k, v in columns.items()})


def _lines_python(path: Path, problems: list[FileProblem]) -> pl.DataFrame:
    bad = 0
    first_bad = 0

    def records() -> Iterable[Any]:
        nonlocal bad, first_bad
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    bad += 1
                    first_bad = first_bad or lineno

    frame = _from_records(records())
    if bad:
        problems.append(
            FileProblem(
                path.name,
                f"{bad} line(s) that are not valid JSON skipped (first at line {first_bad})",
            )
        )
    return frame


def _numbers_as_text(lf: pl.LazyFrame, rows: int = 5000) -> set[str]:
    """Text columns whose first ``rows`` values are mostly numbers (fairseq's JSON log lines
    quote every value, ``"loss": "2.345"``: read as text, they were no metric at all)."""
    names = [n for n, dt in lf.collect_schema().items() if dt == pl.String]
    if not names:
        return set()
    return _tables.numeric_text(lf.select(names).head(rows).collect(), empty=False)


def _read_lines(path: Path, size: int, problems: list[FileProblem]) -> pl.LazyFrame:
    try:
        lf = pl.scan_ndjson(path, infer_schema_length=None)
        return lf.collect().lazy()
    except pl.exceptions.PolarsError:
        if size > MAX_PY_BYTES:
            raise ReadError(
                f"JSON Lines file of {size >> 20} MiB holds NaN/Infinity tokens, mixed types or "
                f"a bad line; such files are read up to {MAX_PY_BYTES >> 20} MiB"
            ) from None
    return _lines_python(path, problems).lazy()


def _read_document(path: Path, size: int) -> pl.LazyFrame:
    head = _head(path)
    if head.startswith("["):
        try:
            return pl.read_json(path, infer_schema_length=None).lazy()
        except pl.exceptions.PolarsError:
            pass
    if size > MAX_PY_BYTES:
        raise ReadError(
            f"JSON file of {size >> 20} MiB is too large to read as one document (the limit is "
            f"{MAX_PY_BYTES >> 20} MiB); save it as JSON Lines or Parquet"
        )
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            obj = json.load(fh)
    except ValueError as exc:
        raise ReadError(f"not valid JSON: {exc}") from exc
    return _from_object(obj).lazy()


def read_file(path: Path) -> list[RawRun]:
    """Read one JSON / JSON Lines table into raw runs."""
    size = nonempty_size(path)
    problems: list[FileProblem] = []
    try:
        if path.suffix.lower() in LINES_SUFFIXES or _json_lines(_head(path)):
            check_text(path)
            lf = _read_lines(path, size, problems)
        else:
            check_text(path, max_line=None)  # a document may well be one long line
            lf = _read_document(path, size)
        if not lf.collect_schema():
            raise ReadError("the file holds no records")
        return _tables.table_runs(lf, path, problems=problems, numeric_text=_numbers_as_text(lf))
    except ReadError:
        raise
    except (pl.exceptions.PolarsError, OSError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReadError(f"could not read the JSON table: {first}") from exc


def read(source: Source) -> list[RawRun]:
    """Read the source's table (one file)."""
    runs: list[RawRun] = []
    for path in source.files:
        runs.extend(read_file(path))
    return runs
