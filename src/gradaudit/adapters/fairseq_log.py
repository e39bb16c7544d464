"""fairseq / metaseq training stdout logs: the ``train_inner`` lines of ``--log-format json`` or
``simple``, and the validation lines.

fairseq's ``progress_bar`` (``JsonProgressBar``, ``SimpleProgressBar``) logs through Python's
``logging`` under a logger renamed to the line's tag (``rename_logger``), so that the tag stands
where the logger's name does, in fairseq_cli/train.py's format or in Hydra's
(``fairseq-hydra-train``)::

    2026-11-29 09:50:49 | INFO | train_inner | {"epoch": 1, "loss": "1.996", ..., "gnorm": "0.26"}
    2026-11-29 09:50:36 | INFO | train_inner | epoch 001:     10 / 500 loss=2.005, ..., gnorm=0.302
    [2021-03-24 14:33:12,269][train_inner][INFO] - {"epoch": 2, "update": 1.946, "loss": "3.449"}
    2026-11-29 09:50:44 | INFO | valid | {"epoch": 1, "valid_loss": "0.719", ...}
    2026-11-29 09:50:37 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 0.719 | ...

- ``train_inner`` lines (``progress.log``) become ``train_inner/<key>`` at step ``num_updates``:
  the names fairseq's own TensorBoard and W&B wrappers give them (a ``train_inner`` folder, a
  ``train_inner/`` prefix). The JSON bar's ``epoch`` and ``update`` (an epoch fraction) are no
  metrics and no wrapper writes them: left out.
- Validation lines (``progress.print`` with the subset as the tag: ``valid``, ``valid1``,
  ``test``, ...) become ``<subset>/<key>`` (the JSON bar's ``<subset>_`` key prefix taken off),
  at the ``num_updates`` they carry.
- The epoch summary lines (tag ``train``) are left out: each is the mean of an epoch's updates,
  logged at the same ``num_updates`` as the epoch's last ``train_inner`` line, so it holds
  nothing the ``train_inner`` lines do not, hides every spike, and as ``train/loss`` it would
  carry the name most loggers give the per-step loss.
- Any line without a ``num_updates`` is skipped (``fairseq-validate``'s, a tqdm bar's).

Values are as ``format_stat`` printed them (``"{:g}"``: 6 significant digits, after the meter's
own rounding), read as floats; ``nan``/``inf`` are kept. ``num_updates`` is printed so too:
past 1,000,000 updates as ``1.00001e+06``, exact only to 10 updates (a run note says so). The
line's time stamp is the wall time (read as UTC: fairseq prints local time, metaseq UTC).

fairseq restarts its ``train_inner`` meters after each log, so every ``train_inner`` value but
``lr`` and ``num_updates`` is the mean over the updates since the previous line: the loss and
the grad norm are ``interval_means``, and where the log interval is above 1 a run note says how
much that dilutes a one-update grad-norm spike.

The text is read in large chunks with Polars' string kernels, not a Python object per line or
field. Lines may end in LF, CR LF or a lone CR; NUL runs (a crash, a full disk) are dropped and
counted, and the line a NUL run cuts short, or the file's last line without a line end, keeps
only its whole fields (the last one may be cut inside its number). A stretch without a line end
longer than ``MAX_LINE`` is skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from gradaudit.adapters import _textlog
from gradaudit.adapters.base import RawRun, Source, nonempty_size
from gradaudit.errors import ReadError
from gradaudit.series import MAX_STEP, FileProblem

FORMAT = "fairseq-log"
SUFFIXES = _textlog.SUFFIXES
#: (1,000,000 train_inner lines: 8 MiB pieces took 3.4 s of CPU and 0.7 GB at the peak, 32 MiB
#: ones 4.3 s and 1.0 GB)
CHUNK_BYTES = 8 * 1024 * 1024
#: a line of more fields than this is read field by field, not column by column (one
#: expression per field; fairseq prints about 15)
TEMPLATE_FIELDS = 1000

_SNIFF = re.compile(rb"\| train_inner \| |\]\[train_inner\]\[")
#: fairseq's and metaseq's own start-up lines (their loggers' names): the first train_inner line
#: may come after megabytes of model printout and NCCL start-up
_STARTUP = re.compile(rb"\| (?:fairseq|metaseq)[._]|\]\[(?:fairseq|metaseq)[._]")
#: (time stamp and whatever precedes it, the logger's name (the tag), the message), in
#: fairseq_cli's ``%(asctime)s | %(levelname)s | %(name)s | %(message)s`` or Hydra's
#: ``[%(asctime)s][%(name)s][%(levelname)s] - %(message)s``
_PIPE_INNER = " | train_inner | "
_HYDRA_INNER = "][train_inner]["
_LEVEL = "(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)"
_LINE = (rf"^(.*?)(?:\| ?{_LEVEL} \| ([^|]*?) \| |\[([^\[\]]*)\]\[{_LEVEL}\] - )(.*)$")
#: a NUL run (a crash, a full disk) with the field it cut short: the line before it keeps only
#: its whole fields. (A JSON line that ends in ``}`` was whole.)
_NUL_CUT = re.compile(rb"(?:,[^,\n}\x00]*)?\x00{2,}")
_LAST_CUT = re.compile(rb"(?:,[^,\n}\x00]*)?\Z")
#: ``SimpleProgressBar.log``'s prefix before the fields: ``epoch 001:     10 / 500 ``
_SIMPLE_PREFIX = r"^[^=]* "
#: keys of a train_inner line that are no metric: the step, and the JSON bar's epoch counters
_NOT_METRICS = ("num_updates", "epoch", "update")
#: a num_updates that ``format_stat``'s ``"{:g}"`` printed with an exponent (past 999,999)
_COARSE = re.compile(r'num_updates(?:": "?|=| )\d(?:\.\d*)?e\+')
_SCHEMA = {"step": pl.Int64, "tag": pl.Categorical(), "value": pl.Float64,
           "wall_time": pl.Float64}


def _sniff(path: Path) -> bool:
    return _textlog.sniff(path, _SNIFF, _STARTUP)


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Text-ish files whose first MiB holds a ``train_inner`` line (or, after fairseq's own
    start-up output, the next ``STARTUP_REACH`` past its last start-up line)."""
    return [Source(FORMAT, f.name, (f,)) for f in _textlog.candidates(directory, files)
            if _sniff(f)]


def _chunks(path: Path, dropped: list[int]):  # noqa: ANN202 - a generator of str
    """Decoded text in large pieces, each cut after a line end.

    NUL bytes are dropped and counted in ``dropped[0]``; a run of them ends the line it cut
    short, which keeps only its whole fields. A stretch with no line end longer than
    ``MAX_LINE`` is dropped and counted in ``dropped[1]``; ``dropped[2]`` is 1 where the file's
    last line has no line end (cut short: its last field is left out)."""
    carry = b""
    with path.open("rb") as fh:
        for block, nul in _textlog.blocks(fh, CHUNK_BYTES, dropped):
            data = _textlog.line_feeds(carry + block)
            if nul:  # (the line before a NUL run may sit in carry: the run is cut with it)
                data = _NUL_CUT.sub(b"\n", data).replace(b"\x00", b"")
            cut, carry = _textlog.last_line_end(data, dropped)
            if cut >= 0:
                yield data[: cut + 1].decode("utf-8", errors="replace")
    if carry.endswith(b"\r"):  # (a whole line: its CR ends it)
        carry = carry[:-1] + b"\n"
    elif not carry.rstrip().endswith(b"}") and (b"train_inner" in carry or
                                                 b"num_updates" in carry):
        dropped[2] = 1
        carry = _LAST_CUT.sub(b"", carry)
    if carry.strip():
        yield carry.decode("utf-8", errors="replace")


def _lines(text: str) -> pl.DataFrame:
    """(i, wall_time, name, msg) of the lines of ``text`` that may hold metrics: the
    ``train_inner`` lines, and the others that name ``num_updates`` (validation lines); ``i``
    is the line's place in ``text``."""
    lines = pl.DataFrame({"line": pl.Series([text], dtype=pl.String).str.split("\n").explode()})
    line = pl.col("line")
    lines = lines.with_row_index("i").filter(
        line.str.contains("train_inner", literal=True) | line.str.contains("num_updates",
                                                                         literal=True))
    pipe = line.str.contains(_PIPE_INNER, literal=True)
    hydra = line.str.contains(_HYDRA_INNER, literal=True)
    # the train_inner lines (nearly all of them) are cut at their tag, not matched by a pattern
    parts = [
        lines.filter(pipe).select(
            "i", line.str.splitn(_PIPE_INNER, 2).struct.rename_fields(["head", "msg"])
            .struct.unnest(), pl.lit("train_inner").alias("name")),
        lines.filter(hydra & ~pipe).select(
            "i", line.str.splitn(_HYDRA_INNER, 2).struct.rename_fields(["head", "msg"])
            .struct.unnest(), pl.lit("train_inner").alias("name"))
        .with_columns(pl.col("msg").str.splitn("] - ", 2).struct.field("field_1").alias("msg")),
        lines.filter(~pipe & ~hydra).select(
            "i", line.str.extract_groups(_LINE).struct.unnest())
        .select("i", pl.col("1").alias("head"), pl.col("4").alias("msg"),
                pl.coalesce("2", "3").str.strip_chars().alias("name")),
    ]
    return (
        pl.concat(parts, how="vertical_relaxed")
        .sort("i")
        .select(
            "i",
            _textlog.epoch_seconds(pl.col("head").str.extract(f"({_textlog.TIMESTAMP})", 1)),
            "name",
            pl.col("msg").str.strip_chars(),
        )
        .filter(pl.col("msg").is_not_null() & pl.col("name").is_not_null()
                & (pl.col("name") != "train"))
    )


def _cells(frame: pl.DataFrame, kv: str) -> pl.LazyFrame:
    """``frame`` with a row per cell of ``cells`` split at its first ``kv`` into ``key`` and
    ``value`` (a cell whose value is no number is left out)."""
    return (
        frame.lazy()
        .explode("cells")
        .with_columns(pl.col("cells").str.split_exact(kv, 1).struct.rename_fields(["key", "v"])
                      .alias("cells"))
        .unnest("cells")
        .with_columns(
            pl.col("key").str.strip_chars(' "'),
            pl.col("v").str.strip_chars(' "').cast(pl.Float64, strict=False).alias("value"),
        )
        .drop("v")
        .filter(pl.col("value").is_not_null() & (pl.col("key") != ""))
    )


def _template(cells: list[str | None], kv: str) -> list[tuple[int, str, str]] | None:
    """``(position, "key" and kv exactly as printed, key)`` of the cells of one line."""
    out: list[tuple[int, str, str]] = []
    for pos, cell in enumerate(cells):
        key, sep, _ = (cell or "").partition(kv)
        if sep and key.strip(' "'):
            out.append((pos, key + sep, key.strip(' "')))
    keys = [k for _, _, k in out]
    if not out or len(set(keys)) != len(keys) or len(out) > TEMPLATE_FIELDS:
        return None
    return out


def _step(nu: pl.Expr) -> pl.Expr:
    """A ``num_updates`` value as a step: null where it is none (not finite, negative, past
    2**53)."""
    return pl.when(nu.is_finite() & (nu >= 0) & (nu < MAX_STEP)).then(nu.round()).cast(pl.Int64)


def _with_steps(points: pl.LazyFrame) -> pl.LazyFrame:
    """``points`` (i, ..., key, value) with each line's ``num_updates`` as its ``step``; lines
    without a usable one are left out, and so are the keys that are no metric."""
    nu = pl.col("value").filter(pl.col("key") == "num_updates").first().over("i")
    return points.with_columns(_step(nu).alias("step")).filter(
        pl.col("step").is_not_null() & ~pl.col("key").is_in(_NOT_METRICS))


_INNER = ["i", "step", "wall_time", "key", "value"]


def _inner(frame: pl.DataFrame, kv: str) -> pl.DataFrame:
    """(i, step, wall_time, key, value) of train_inner lines (``cells``: their fields).

    Lines laid out like the first one (every line of a run prints the same keys) are read
    column by column; the others cell by cell."""
    template = _template(frame.get_column("cells")[0].to_list(), kv) if frame.height else None
    if template is None or "num_updates" not in [key for *_, key in template]:
        return _with_steps(_cells(frame, kv)).select(_INNER).collect()
    c = pl.col("cells")
    same = pl.all_horizontal(
        [c.list.len() == frame.get_column("cells")[0].len()]
        + [c.list.get(pos, null_on_oob=True).str.starts_with(head).fill_null(False)
           for pos, head, _ in template]
    )
    marked = frame.with_columns(same.alias("same"))
    wide = marked.lazy().filter(pl.col("same")).select(
        "i", "wall_time",
        *[c.list.get(pos).str.slice(len(head)).str.strip_chars(' "')
          .cast(pl.Float64, strict=False).alias(key) for pos, head, key in template],
    ).with_columns(_step(pl.col("num_updates")).alias("step"))
    metrics = [key for *_, key in template if key not in _NOT_METRICS]
    points = (
        wide.filter(pl.col("step").is_not_null())
        .unpivot(on=metrics, index=["i", "step", "wall_time"], variable_name="key",
                 value_name="value")
        .filter(pl.col("value").is_not_null())
        .select(_INNER)
        .collect()
    )
    others = marked.filter(~pl.col("same"))
    if others.height == 0:
        return points
    rest = _with_steps(_cells(others.drop("same"), kv)).select(_INNER).collect()
    return pl.concat([points, rest]).sort("i", maintain_order=True)  # (write order)


def _train_inner(lines: pl.DataFrame) -> pl.DataFrame:
    parts = []
    json = pl.col("msg").str.starts_with("{")
    for is_json, kv in ((True, ":"), (False, "=")):
        sub = lines.filter(json if is_json else ~json)
        if sub.height == 0:
            continue
        body = (pl.col("msg").str.strip_chars_start("{").str.strip_chars_end("} ") if is_json
                else pl.col("msg").str.replace(_SIMPLE_PREFIX, ""))
        cells = sub.select("i", "wall_time", body.str.split(", ").alias("cells"))
        parts.append(_inner(cells, kv))
    if not parts:
        return pl.DataFrame(schema=_SCHEMA)
    points = parts[0] if len(parts) == 1 else pl.concat(parts).sort("i", maintain_order=True)
    return points.select("step", ("train_inner/" + pl.col("key")).alias("tag"), "value",
                         "wall_time")


def _printed(lines: pl.DataFrame) -> pl.DataFrame:
    """Points of ``progress.print`` lines (validation): JSON keys are ``<tag>_<key>``, simple
    fields ``key value`` between `` | ``."""
    json = pl.col("msg").str.starts_with("{")
    js = lines.filter(json).select(
        "i", "wall_time", "name",
        pl.col("msg").str.strip_chars_start("{").str.strip_chars_end("} ").str.split(", ")
        .alias("cells"))
    simple = lines.filter(~json).select(
        "i", "wall_time", "name", pl.col("msg").str.split(" | ").alias("cells"))
    own = pl.col("name") + "_"
    points = pl.concat([
        _cells(js, ":").filter(pl.col("key").str.starts_with(own))
        .with_columns(pl.col("key").str.strip_prefix(own)).collect(),
        _cells(simple, " ").collect(),
    ]).sort("i", maintain_order=True)
    return _with_steps(points.lazy()).select(
        "step", (pl.col("name") + "/" + pl.col("key")).alias("tag"), "value", "wall_time"
    ).collect()


def parse_text(text: str) -> pl.DataFrame:
    """Points (step, tag, value, wall_time) of a chunk of fairseq log text, in line order
    within each tag."""
    lines = _lines(text)
    inner = pl.col("name") == "train_inner"
    parts = [_train_inner(lines.filter(inner))]
    others = lines.filter(~inner)
    if others.height:
        parts.append(_printed(others))
    return pl.concat([p.select(list(_SCHEMA)).cast(_SCHEMA) for p in parts])


def _interval(frame: pl.DataFrame, tag: str) -> int:
    """The typical spacing of ``tag``'s steps (1 for a single point)."""
    steps = frame.filter(pl.col("tag") == tag).get_column("step").to_numpy()
    gaps = np.diff(np.unique(steps))
    return int(np.median(gaps)) if gaps.size else 1


def read_file(path: Path) -> RawRun:
    """Read one fairseq / metaseq stdout log."""
    nonempty_size(path)
    dropped = [0, 0, 0]
    coarse = False  # whether a num_updates was printed as 1.00001e+06
    try:
        parts = []
        for text in _chunks(path, dropped):
            coarse = coarse or _COARSE.search(text) is not None
            parts.append(parse_text(text))
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror}") from exc
    frame = pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=_SCHEMA)
    tags = set(frame.get_column("tag").unique().cast(pl.String).to_list())
    inner = {t for t in tags if t.startswith("train_inner/")}
    if not inner:
        raise ReadError("no fairseq train_inner line with a num_updates and a numeric field "
                        "found (--log-format json or simple logs them; tqdm and none do not)")
    problems = _textlog.dropped_problems(
        path.name, dropped, "(NUL-filled blocks that a crash or a full disk left); a line they "
        "cut short keeps only its whole fields")
    if dropped[2]:
        problems.append(FileProblem(path.name, "the last line has no line end (cut short by a "
                                    "crash?): its last field was left out"))
    if frame.get_column("wall_time").null_count() == frame.height:
        frame = frame.drop("wall_time")
    notes: list[str] = []
    every = _interval(frame, "train_inner/gnorm") if "train_inner/gnorm" in tags else 1
    if every > 1:
        notes.append(
            f"train_inner/gnorm is fairseq's mean over each logging interval of {every} updates: "
            f"a one-update spike shows at about 1/{every} of its height, and clip thresholds "
            "from these means sit below what single updates reach (--log-interval 1 logs each "
            "update's norm)")
    if coarse:
        one = "train_inner/loss" if "train_inner/loss" in inner else min(inner)
        steps = frame.filter(pl.col("tag") == one).get_column("step").to_numpy()
        repeats = int((np.diff(steps) == 0).sum())
        notes.append(
            "fairseq prints num_updates with 6 significant digits ('{:g}'): past 1,000,000 "
            "updates its steps are exact to 10 updates only (to 100 past 10,000,000)"
            + (f"; {repeats} train_inner line(s) printed the step of the line before, and only "
               "the later one is kept" if repeats else ""))
    # every train_inner meter is restarted after each log: its values are interval means
    means = frozenset(t for t in inner if t.endswith("loss") or t == "train_inner/gnorm")
    return RawRun(points=frame, problems=problems, notes=notes, interval_means=means)


def read(source: Source) -> list[RawRun]:
    """Read the source's log (one file)."""
    return [read_file(path) for path in source.files]
