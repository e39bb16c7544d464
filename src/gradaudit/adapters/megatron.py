"""Megatron-LM / Megatron-DeepSpeed stdout logs: the ``iteration N/ M | field: value |`` lines.

Each field of an iteration line becomes a tag named as logged (``lm loss``, ``grad norm``,
``loss scale``, ``learning rate``, ``num zeros``, ``number of skipped iterations``, ...); the
validation lines (``validation loss at iteration N | lm loss value: ... | lm loss PPL: ...``)
become ``validation/lm loss`` and ``validation/lm loss PPL`` (``test/...`` for the test set).
``nan``/``inf`` values are kept. Whatever surrounds the lines is ignored: rank tags
(``[default7]:``), timestamps (read as wall time when they are ISO-like), ``time (ms)`` lines,
``[...]`` elisions, prose, code fences. A line folded in two (a terminal or paste wrap) is joined
back. Lines may end in LF, CR LF or a lone CR (terminal progress redraws captured with the
log). Identical lines printed by several ranks count once. The DeepSpeed engine's
``step=N, skipped=K, lr=[...]`` lines give ``deepspeed/skipped`` and ``deepspeed/lr``. An
iteration line's losses are means over the log interval (``interval_means``).

The text is parsed in large chunks with Polars' string kernels, not a Python object per field.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from gradaudit.adapters._textlog import (  # noqa: F401 - SNIFF_BYTES: megatron.SNIFF_BYTES, SUFFIXES
    SNIFF_BYTES,
    SUFFIXES,
    TIMESTAMP,
    blocks,
    candidates,
    dropped_problems,
    epoch_seconds,
    last_line_end,
    line_feeds,
    sniff,
)
from gradaudit.adapters.base import RawRun, Source, nonempty_size
from gradaudit.errors import ReadError

FORMAT = "megatron-log"
_STARTUP = re.compile(rb"NCCL INFO|[Mm]egatron|DeepSpeed|deepspeed|torch\.distributed|> building")
CHUNK_BYTES = 32 * 1024 * 1024

_ITER = r"iteration\s+(\d+)\s*/\s*\d+\s*\|"
_ITER_SNIFF = re.compile(rb"iteration\s+\d+\s*/\s*\d+\s*\|")
_ITER_START = re.compile(rb"iteration\s+\d+\s*/")  # where an iteration line's record starts
_NUL_RUN = re.compile(rb"\x00{2,}")
_TAIL_BYTES = 64 * 1024  # how far back from a chunk's end the last iteration line is looked for
#: An iteration line from its step on (``31214/  115311 | field: value | ...``).
_ITER_FAST = re.compile(r"iteration\s+(\d+\s*/\s*\d+\s*\|[^\n]*)")
#: The same, with an ISO-like timestamp before it on the line (read as wall time). Linear: only
#: lines holding an iteration are tried (the lookahead), and the timestamp is looked for before
#: the line's first "iteration N/" only (a line of thousands of timestamps took minutes to
#: backtrack).
_ITER_TIMED = re.compile(
    r"^(?=[^\n]*?iteration\s+\d+\s*/\s*\d+\s*\|)"
    r"(?:(?:(?!iteration\s+\d+\s*/)[^\n])*?(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}))?"
    r"[^\n]*?iteration\s+"
    r"(\d+\s*/\s*\d+\s*\|[^\n]*)",
    re.M,
)
_TIMESTAMP = re.compile(TIMESTAMP)
_VALID = re.compile(r"validation loss at iteration\s+(\d+)(?:\s+on\s+(\w+)\s+set)?\s*\|([^\n]*)")
_DS_STEP = re.compile(r"\bstep=(\d+),\s*skipped=(\d+),\s*lr=\[\s*([^,\]\s]+)")
#: A line folded right after a ``|``: the next line goes on with ``name: value |`` fields.
_FOLD_AT_BAR = re.compile(r"\|[ \t]*\r?\n[ \t]*[A-Za-z][A-Za-z0-9 _./()-]*:\s*[-+.0-9a-zA-Z]+\s*\|")
_FIELD_START = r"^\s*[A-Za-z][A-Za-z0-9 _./()-]*:\s*[-+.0-9a-zA-Z]+\s*\|"
_TIME_LINE = r"^\s*(\[[^\]]*\]:?\s*)?time \(ms\)"

_SCHEMA = {"step": pl.Int64, "tag": pl.String, "value": pl.Float64, "wall_time": pl.Float64}
_COLS = ["i", *_SCHEMA]


def _sniff(path: Path) -> bool:
    return sniff(path, _ITER_SNIFF, _STARTUP)


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Text-ish files whose first MiB holds a Megatron iteration line (or, after a distributed
    job's start-up output, the next ``STARTUP_REACH`` past its last start-up line)."""
    return [Source(FORMAT, f.name, (f,)) for f in candidates(directory, files) if _sniff(f)]


def _fields_generic(records: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """Explode the ``name: value |`` fields of ``body`` into (i, step, tag, value, wall_time)."""
    tag = pl.col("field_0").str.strip_chars()
    return (
        records.lazy()
        .with_columns(pl.col("body").str.split("|"))
        .explode("body")
        .with_columns(pl.col("body").str.split_exact(":", 1).alias("kv"))
        .unnest("kv")
        .select(
            "i",
            "step",
            (pl.lit(prefix) + tag if prefix else tag).alias("tag"),
            pl.col("field_1").str.strip_chars().cast(pl.Float64, strict=False).alias("value"),
            "wall_time",
        )
        .filter(pl.col("value").is_not_null() & (pl.col("tag") != ""))
        .collect()
    )


#: a line of more fields than this is read field by field: the column-by-column path builds one
#: expression per field (a line of 1.2 million fields took 20 GB; Megatron prints about 20)
TEMPLATE_FIELDS = 1000


def _template(cells: list[str | None]) -> list[tuple[int, str, str]] | None:
    """``(position, "name:" exactly as printed, name)`` of the fields of one line."""
    out: list[tuple[int, str, str]] = []
    for pos, cell in enumerate(cells):
        name, sep, _ = (cell or "").partition(":")
        if sep and name.strip():
            out.append((pos, name + sep, name.strip()))
    names = [n for _, _, n in out]
    return out if out and len(set(names)) == len(names) else None


def _fields(records: pl.DataFrame, prefix: str = "") -> pl.DataFrame:
    """Points (step, tag, value, wall_time) of the ``name: value |`` fields of ``body``.

    A field whose value is no number is left out. Lines laid out like the first one (the usual
    case: every line of a run prints the same fields) are read column by column without
    splitting names off each field; other lines go through the generic path.
    """
    records = records.with_row_index("i")
    split = records.select("i", "step", "wall_time", pl.col("body").str.split("|").alias("f"))
    template = _template(split.get_column("f")[0].to_list()) if split.height else None
    if template is None or len(template) > TEMPLATE_FIELDS:
        generic = _fields_generic(records, prefix)
        return generic.drop("i")
    n_cells = split.get_column("f")[0].len()
    f = pl.col("f")
    same = pl.all_horizontal(
        [f.list.len() == n_cells]
        + [
            f.list.get(pos, null_on_oob=True).str.starts_with(head).fill_null(False)
            for pos, head, _ in template
        ]
    )
    marked = split.with_columns(same.alias("same"))
    fast = marked.filter(pl.col("same"))
    wide = fast.select(
        "i",
        "step",
        "wall_time",
        *[
            f.list.get(pos)
            .str.slice(len(head))
            .str.strip_chars()
            .cast(pl.Float64, strict=False)
            .alias(prefix + name)
            for pos, head, name in template
        ],
    )
    points = wide.unpivot(
        index=["i", "step", "wall_time"], variable_name="tag", value_name="value"
    ).filter(pl.col("value").is_not_null())
    if fast.height == split.height:
        return points.select("step", "tag", "value", "wall_time")
    others = records.join(marked.filter(~pl.col("same")).select("i"), on="i", how="semi")
    both = pl.concat([points.select(_COLS), _fields_generic(others, prefix).select(_COLS)])
    # Keep write order within each tag: the lines of both paths interleave in the file.
    return both.sort("i", maintain_order=True).drop("i")


def _records(lines: list[str], stamps: list[str] | None) -> pl.DataFrame:
    """(step, body, wall_time) of iteration lines given from their step on."""
    parts = (
        pl.Series("line", lines, dtype=pl.String)
        .str.splitn("|", 2)
        .struct.rename_fields(["head", "body"])
        .struct.unnest()
    )
    frame = pl.DataFrame(
        {
            # (an iteration number past int64 is no step: that line is left out, not the log)
            "step": parts.get_column("head").str.extract(r"^(\d+)", 1)
            .cast(pl.Int64, strict=False),
            "body": parts.get_column("body"),
        }
    )
    wall = (
        epoch_seconds(pl.Series(stamps, dtype=pl.String))
        if stamps is not None
        else pl.Series("wall_time", [None] * frame.height, dtype=pl.Float64)
    )
    frame = frame.with_columns(wall).filter(pl.col("step").is_not_null())
    if not frame.get_column("step").is_duplicated().any():
        return frame
    # The same line printed by several ranks counts once. If then no step is left twice, no
    # step was printed again with other values (a resume), and the order in which ranks that
    # lag each other printed their lines means nothing: the lines are taken in step order
    frame = frame.unique(subset=["step", "body"], keep="first", maintain_order=True)
    if frame.get_column("step").is_duplicated().any():
        return frame
    return frame.sort("step", maintain_order=True)


def _unfold(text: str) -> str:
    """Join iteration lines folded in two back into one line."""
    lines = pl.Series("line", text.split("\n"), dtype=pl.String).to_frame()
    line = pl.col("line")
    nxt = line.shift(-1)
    is_iter = line.str.contains(_ITER)
    joins = (
        is_iter
        & nxt.is_not_null()
        & ~nxt.str.contains(_ITER)
        & ~nxt.str.contains("validation loss at iteration", literal=True)
        & ~nxt.str.contains(_TIME_LINE)
        & nxt.str.contains("|", literal=True)
        & (~line.str.strip_chars_end().str.ends_with("|") | nxt.str.contains(_FIELD_START))
    )
    marked = lines.with_columns(joins.fill_null(False).alias("join"))
    # A continuation line is dropped once its text was appended to the line before it.
    joined = marked.with_columns(
        pl.when(pl.col("join")).then(line.str.strip_chars_end("\r") + nxt).otherwise(line),
        pl.col("join").shift(1).fill_null(False).alias("absorbed"),
    ).filter(~pl.col("absorbed"))
    return "\n".join(joined.get_column("line").to_list())


def _find_iterations(text: str) -> tuple[list[str], list[str] | None]:
    """Iteration lines from the step on, and their timestamps when the lines carry one."""
    first = _ITER_FAST.search(text)
    if first is None:
        return [], None
    line_start = text.rfind("\n", 0, first.start()) + 1
    if _TIMESTAMP.search(text, line_start, first.start()):
        found = _ITER_TIMED.findall(text)
        return [f[1] for f in found], [f[0] for f in found]
    return _ITER_FAST.findall(text), None


def _folded(text: str, lines: list[str]) -> bool:
    """Whether some iteration line of ``text`` seems folded into two lines."""
    if not lines:
        return False
    body = pl.Series(lines, dtype=pl.String)
    if not text.endswith("\n"):
        body = body.head(-1)  # the file's last line, perhaps cut short by a crash
    if not body.str.strip_chars_end().str.ends_with("|").all():
        return True  # a line cut inside a field
    if body.str.count_matches("|", literal=True).n_unique() == 1:
        return False  # every line has all its fields
    return _FOLD_AT_BAR.search(text) is not None


def parse_text(text: str) -> pl.DataFrame:
    """Points (step, tag, value, wall_time) of a chunk of Megatron log text, in line order."""
    if "iteration" not in text and "skipped=" not in text:
        return pl.DataFrame(schema=_SCHEMA)
    lines, stamps = _find_iterations(text)
    if _folded(text, lines):
        text = _unfold(text)
        lines, stamps = _find_iterations(text)
    parts = [_fields(_records(lines, stamps))] if lines else []
    valid = _VALID.findall(text)
    if valid:
        for split in sorted({v[1] for v in valid}):
            rows = [v for v in valid if v[1] == split]
            lines = [f"{v[0]}/0 |{v[2].replace(' value:', ':')}" for v in rows]
            records = _records(lines, None)
            parts.append(_fields(records, "test/" if split == "test" else "validation/"))
    if "skipped=" in text:
        ds = _DS_STEP.findall(text)
        if ds:
            frame = pl.DataFrame(
                {
                    "step": pl.Series([d[0] for d in ds]).cast(pl.Int64, strict=False),
                    "skipped": pl.Series([d[1] for d in ds]).cast(pl.Float64, strict=False),
                    "lr": pl.Series([d[2] for d in ds]).cast(pl.Float64, strict=False),
                }
            ).unique(keep="first", maintain_order=True)
            parts.append(
                frame.unpivot(on=["skipped", "lr"], index="step", variable_name="tag")
                .with_columns(
                    ("deepspeed/" + pl.col("tag")).alias("tag"),
                    pl.lit(None, dtype=pl.Float64).alias("wall_time"),
                )
                .filter(pl.col("value").is_not_null() & pl.col("step").is_not_null())
            )
    parts = [p for p in parts if p.height]
    if not parts:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.concat([p.select(list(_SCHEMA)).cast(_SCHEMA) for p in parts])


def _chunks(path: Path, dropped: list[int]):  # noqa: ANN202 - a generator of str
    """Decoded text in large pieces, cut after a line end; the last iteration line of a piece
    (a fold may split it over two lines) goes with the next piece, and the file's last piece
    holds the one before it too, so that no piece is a lone line.

    NUL bytes (a crash or a full disk can leave NUL-filled blocks in a log) are dropped and
    counted in ``dropped[0]``; so is a stretch with no line end longer than ``MAX_LINE``
    (``dropped[1]``), which no iteration line is."""
    carry = b""
    pending = b""  # the last piece cut, given out once more text follows it
    with path.open("rb") as fh:
        for block, nul in blocks(fh, CHUNK_BYTES, dropped):
            if nul:  # a run of NULs ends the line a crash cut off; single ones (UTF-16) go
                block = _NUL_RUN.sub(b"\n", block).replace(b"\x00", b"")
            data = line_feeds(carry + block)
            cut, carry = last_line_end(data, dropped)
            if cut < 0:
                continue
            tail = max(0, cut - _TAIL_BYTES)
            last = max((m.start() for m in _ITER_START.finditer(data, tail, cut)), default=None)
            if last is not None and (start := data.rfind(b"\n", 0, last)) >= 0:
                cut = start
                carry = data[cut + 1 :]
            if pending:
                yield pending.decode("utf-8", errors="replace")
            pending = data[: cut + 1]
    if pending or carry:
        yield (pending + carry).replace(b"\r", b"\n").decode("utf-8", errors="replace")


def read_file(path: Path) -> RawRun:
    """Read one Megatron stdout log."""
    nonempty_size(path)
    dropped = [0, 0]
    try:
        parts = [parse_text(text) for text in _chunks(path, dropped)]
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror}") from exc
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=_SCHEMA)
    if frame.height == 0:
        raise ReadError("no Megatron iteration line with a numeric field found")
    problems = dropped_problems(path.name, dropped, "(NUL-filled blocks that a crash or a "
                                "full disk left, or UTF-16 text)")
    if frame.get_column("wall_time").null_count() == frame.height:
        frame = frame.drop("wall_time")
    # the iteration line's losses are averaged over the log interval (training_log)
    tags = frame.get_column("tag").unique().to_list()
    means = frozenset(t for t in tags if t.endswith("loss") and "/" not in t)
    return RawRun(points=frame, problems=problems, interval_means=means)


def read(source: Source) -> list[RawRun]:
    """Read the source's log (one file)."""
    return [read_file(path) for path in source.files]
