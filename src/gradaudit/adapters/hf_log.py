"""Hugging Face Trainer stdout logs: the ``{'loss': ..., 'grad_norm': ..., 'epoch': ...}`` lines.

The Trainer prints each log as a Python dict (its ``ProgressCallback`` through the progress bar,
or ``PrinterCallback`` with ``disable_tqdm=True``). A job's saved stdout (``train.log``, a SLURM
``.out``) holds them; after a crash it holds the steps past the last ``trainer_state.json``
saved with a checkpoint, and with ``save_strategy="no"`` it is all there is. Keys become the
tags the Trainer reports elsewhere (:func:`gradaudit.adapters.hf_trainer.tag_for`):
``train/loss``, ``train/grad_norm``, ``eval/loss``, ...; the closing summary (``train_runtime``,
...) is no point. transformers 5 prints each float as a 4-digit text (``'4.025'``), 4.x as the
float itself with the epoch rounded to 2 decimals; both are read, with ``nan``/``inf``.

The lines carry no step. It is worked out from each line's epoch (``step = epoch x steps per
epoch``) and the logging interval (lines are ``logging_steps`` apart, the first one perhaps at
step 1), with the steps per epoch taken from, in this order:

- the training bar drawn right after the lines (``45/120 [``): where Python's stdout is not
  buffered (``python -u``, ``PYTHONUNBUFFERED``) and stderr goes to the same file, the bar
  redrawn after each line shows its step;
- the ``Num update steps per epoch = N`` the Trainer prints at info level (transformers 5);
- ``logging_steps=N`` in a printed ``TrainingArguments``.

Without any of them the steps are counted in logging intervals (step 1 is the first interval),
and a note says so. A line's epoch going back (a resume from a checkpoint appended to the same
log) starts the steps again from there, as in every format.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from gradaudit.adapters._textlog import (
    blocks,
    candidates,
    dropped_problems,
    last_line_end,
    line_feeds,
    sniff,
)
from gradaudit.adapters.base import RawRun, Source, nonempty_size
from gradaudit.adapters.hf_trainer import INTERVAL_MEANS
from gradaudit.errors import ReadError

FORMAT = "hf-trainer-log"
CHUNK_BYTES = 32 * 1024 * 1024

_WANTED = re.compile(rb"\{'loss': (?:'|np\.float|tensor\(|[-+0-9.]|nan|inf)")
_NUL_RUN = re.compile(rb"\x00{2,}")
_STARTUP = re.compile(rb"transformers|Running training|it/s\]|s/it\]")
#: Every pattern below runs on Polars' regex engine (linear time: a hostile line cannot make
#: it backtrack), one log line at a time; lines longer than ``MAX_DICT_LINE`` are no log line.
MAX_DICT_LINE = 64 * 1024
#: a logged dict: from its first key to the line's end (a bar may precede it on the line)
_DICT = r"\{('[A-Za-z_][^'\n]{0,255}': .*)\}[ \t]*$"
#: a bar with no description (the Trainer's training and evaluation bars): ``37%|███▋ | 45/120 [``
_BAR = r"^[ \t]*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\["
_PER_EPOCH = r"Num update steps per epoch = ([\d,]+)"
_LOGGING_STEPS = r"\blogging_steps=(\d+),"
_START = r"\*{5} Running training \*{5}"
_FINAL_EPOCH = r"'epoch': '?([0-9.eE+-]+)"
_PAIR = r"'([^'\n]{1,256})': ('[^'\n]*'|np\.float\d*\([^()\n]*\)|tensor\([^()\n]*\)|[^,\n]+)"
_NUMBER = (r"^'?\s*(?:np\.float\d*\(|tensor\()?\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?"
           r"|\.\d+(?:[eE][-+]?\d+)?|nan|inf))")


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Text-ish files whose first MiB (or, after a job's start-up output, a little more) holds
    a Trainer's ``{'loss': ...`` line."""
    return [Source(FORMAT, f.name, (f,)) for f in candidates(directory, files)
            if sniff(f, _WANTED, _STARTUP)]


class _Found:
    """What a log's text holds, by line number over the whole file: the dict lines (``n``,
    ``body``, and ``bar``: the count of the training bar drawn on the next line, -1 for none),
    and the Trainer's own statements."""

    def __init__(self) -> None:
        self.dicts: list[pl.DataFrame] = []
        self.per_epoch: list[pl.DataFrame] = []
        self.starts: list[pl.Series] = []
        self.logging_steps: int | None = None
        self.bar_totals: list[pl.Series] = []
        self.final_epoch: float | None = None
        self.lines = 0

    def add(self, text: str) -> None:
        """Take in one piece of the log, cut at a line end."""
        line = pl.col("line")
        frame = (pl.Series("line", [text]).str.split("\n").explode().to_frame()
                 .with_row_index("n", offset=self.lines)
                 .filter(line.str.len_bytes() <= MAX_DICT_LINE)
                 .filter(line.str.contains(r"\S")))  # a bar's redraw leaves blank lines
        self.lines += text.count("\n") + 1
        bar = line.str.extract(_BAR, 1).cast(pl.Int64, strict=False)
        marked = frame.with_columns(line.str.extract(_DICT, 1).alias("body"),
                                    bar.shift(-1).fill_null(-1).alias("bar"),
                                    line.str.extract(_BAR, 2).cast(pl.Int64, strict=False)
                                    .alias("total"))
        dicts = marked.filter(pl.col("body").is_not_null())
        self.dicts.append(dicts.select("n", "body", "bar"))
        self.bar_totals.append(marked.get_column("total").drop_nulls())
        said = frame.filter(line.str.contains("Num update steps per epoch", literal=True))
        self.per_epoch.append(said.select("n", line.str.extract(_PER_EPOCH, 1)
                                          .str.replace_all(",", "").cast(pl.Int64, strict=False)
                                          .alias("per")).drop_nulls())
        self.starts.append(frame.filter(line.str.contains(_START)).get_column("n"))
        if self.logging_steps is None:
            found = frame.get_column("line").str.extract(_LOGGING_STEPS, 1).drop_nulls()
            if found.len() and int(found[0]) > 0:
                self.logging_steps = int(found[0])
        final = dicts.filter(pl.col("body").str.contains("'train_runtime': ", literal=True))
        epochs = final.get_column("body").str.extract(_FINAL_EPOCH, 1).cast(
            pl.Float64, strict=False).drop_nulls()
        if epochs.len():
            self.final_epoch = float(epochs[-1])

    def done(self) -> tuple[pl.DataFrame, _Log]:
        """The dict lines, and what else the log said."""
        dicts = pl.concat(self.dicts) if self.dicts else pl.DataFrame(
            schema={"n": pl.UInt32, "body": pl.String, "bar": pl.Int64})
        per = (pl.concat(self.per_epoch) if self.per_epoch
               else pl.DataFrame(schema={"n": pl.UInt32, "per": pl.Int64}))
        starts = pl.concat(self.starts).to_numpy() if self.starts else np.zeros(0, np.int64)
        totals = Counter(pl.concat(self.bar_totals).to_list()) if self.bar_totals else Counter()
        return dicts, _Log(per, starts, self.logging_steps, totals, self.final_epoch)


def _scan(path: Path, dropped: list[int]) -> tuple[pl.DataFrame, _Log]:
    """The dict lines of the log at ``path``, and what else it says."""
    found, carry = _Found(), b""
    with path.open("rb") as fh:
        for block, nul in blocks(fh, CHUNK_BYTES, dropped):
            if nul:  # a run of NULs ends the line a crash cut off; single ones go
                block = _NUL_RUN.sub(b"\n", block).replace(b"\x00", b"")
            data = line_feeds(carry + block)
            cut, carry = last_line_end(data, dropped)
            if cut >= 0:
                found.add(data[:cut].decode("utf-8", errors="replace"))
    if carry:
        found.add(carry.replace(b"\r", b"\n").decode("utf-8", errors="replace"))
    return found.done()


def _tables(dicts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The log's lines (``i``: line number; a line printed again whole right after itself, as
    by each node's ``PrinterCallback``, counts once; the closing summary is left out) and one
    row per (line, key) holding a number: ``i``, ``key``, ``text`` (as printed), ``value``."""
    body = pl.col("body")
    lines = (dicts.select(pl.col("n").cast(pl.Int64).alias("i"), "body")
             .filter(body.ne_missing(body.shift(1))
                     & ~body.str.contains("'train_runtime': ", literal=True)))
    pairs = (lines.lazy()
             .with_columns(pl.col("body").str.extract_all(_PAIR).alias("pair"))
             .explode("pair")
             .select("i",
                     pl.col("pair").str.extract(r"^'([^']*)'", 1).alias("key"),
                     pl.col("pair").str.extract(r"^'[^']*': (.*)$", 1).alias("text"))
             .with_columns(pl.col("text").str.extract(_NUMBER, 1).str.to_lowercase()
                           .cast(pl.Float64, strict=False).alias("value"))
             .filter(pl.col("value").is_not_null())
             .unique(subset=["i", "key"], keep="first", maintain_order=True)
             .collect())
    return lines.select("i"), pairs


def _tag() -> pl.Expr:
    """The tag the Trainer reports a key under (:func:`hf_trainer.tag_for`), as an expression."""
    key = pl.col("key")
    return (pl.when(key.str.starts_with("eval_")).then("eval/" + key.str.slice(5))
            .when(key.str.starts_with("test_")).then("test/" + key.str.slice(5))
            .otherwise("train/" + key)).alias("tag")


def _epoch_error(text: pl.Series, value: np.ndarray) -> np.ndarray:
    """How far a printed epoch may be from the true one: 4 significant digits where printed as
    text (transformers 5), 2 decimals otherwise (4.x rounds it so for its bar)."""
    quoted = text.str.starts_with("'").to_numpy()
    exponent = text.str.extract(r"[eE]([-+]?\d+)", 1).cast(pl.Int64, strict=False)
    exponent = exponent.fill_null(0).to_numpy().astype(float)
    decimals = text.str.strip_chars("'").str.extract(r"^[-+]?\d*\.?(\d*)", 1)
    decimals = decimals.str.len_chars().fill_null(0).to_numpy().astype(float)
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(np.where(value == 0, 1.0, value))))
    return np.where(quoted, 0.5 * 10.0 ** (magnitude - 3),
                    0.5 * 10.0 ** (exponent - np.minimum(decimals, 2)))


class _Log(NamedTuple):
    """What :func:`_scan` found besides the dict lines."""

    per_epoch: pl.DataFrame  # (n, per): 'Num update steps per epoch = per' at line n
    starts: np.ndarray  # the lines where a training starts ('***** Running training *****')
    logging_steps: int | None  # from a printed TrainingArguments
    bar_totals: Counter[int]  # the totals of the bars drawn, with how often each was
    final_epoch: float | None  # the epoch of the closing summary line


def _steps_per_epoch(log: _Log, at: np.ndarray, bar: np.ndarray, epoch: np.ndarray,
                     err: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Steps per epoch at each training line (lines ``at``, followed by bar counts ``bar``),
    and where it came from; None where the log does not say."""
    paired = (bar > 0) & (epoch > 0)
    if paired.sum() >= 3:
        per = float(np.median(bar[paired] / epoch[paired]))
        fits = np.abs(bar[paired] - epoch[paired] * per) <= err[paired] * per + 1
        if fits.mean() >= 0.9 and per >= 1:
            return np.full(epoch.size, per), ("the training bar drawn after each line "
                                               f"({per:.6g} steps per epoch)")
    said = log.per_epoch.filter(pl.col("per") > 0)
    if said.height:
        lines = said.get_column("n").to_numpy()
        values = said.get_column("per").to_numpy().astype(float)
        k = np.clip(np.searchsorted(lines, at) - 1, 0, None)  # the last statement before
        shown = ", ".join(f"{n:g}" for n in dict.fromkeys(values))
        return values[k], f"the update steps per epoch the Trainer printed ({shown})"
    if log.final_epoch and log.bar_totals:
        total = log.bar_totals.most_common(1)[0][0]  # the training bar is redrawn the most
        per = total / log.final_epoch
        if per >= 1:
            return np.full(epoch.size, per), (
                f"the {total} steps of the training bar over the {log.final_epoch:g} epochs "
                f"the run ended at ({per:.6g} steps per epoch)")
    return None, ""


def _interval_rate(epoch: np.ndarray) -> float | None:
    """Epochs per logging interval: over the longest stretch of rising epochs, less its first
    line (a ``logging_first_step`` line at step 1 comes early)."""
    if epoch.size < 3:
        return None
    breaks = np.flatnonzero(np.diff(epoch) < 0) + 1
    edges = np.concatenate(([0], breaks, [epoch.size]))
    a, b = max(zip(edges[:-1], edges[1:], strict=True), key=lambda e: e[1] - e[0])
    a += 1
    if b - a < 2 or epoch[b - 1] <= epoch[a]:
        return None
    return float((epoch[b - 1] - epoch[a]) / (b - 1 - a))


def _walk(raw: np.ndarray, err: np.ndarray, every: int, starts: np.ndarray) -> np.ndarray:
    """Integer steps for positions ``raw`` (each within ``err`` of its true step).

    Lines are ``every`` steps apart, the first perhaps at step 1 (``logging_first_step``),
    within stretches that end where the position goes back (a resume) or a new training
    starts (``starts``: line indices). A stretch that does not fit is cut where its offset
    from the pattern changes most (a resume that went back less than the epochs' rounding
    shows) and each part is fitted again; a lone line takes its nearest step."""
    n = raw.size
    steps = np.rint(raw).astype(np.int64)
    tol = err + 0.5
    back = np.flatnonzero(np.diff(raw) < -(tol[1:] + tol[:-1])) + 1
    edges = sorted(set(starts.tolist()) | set(back.tolist()) | {0, n})
    todo = list(zip(edges[:-1], edges[1:], strict=True))
    stretch_starts = set(edges)
    while todo:
        a, b = todo.pop()
        if b - a < 2:
            continue
        offset = raw[a:b] - np.arange(b - a) * every  # the step of the stretch's first line
        first = every * np.rint(np.mean(offset) / every)
        if every > 1 and first <= 0 and a in stretch_starts and abs(raw[a] - 1) <= tol[a]:
            steps[a] = 1  # the first line was logged at step 1, the next one at `every`
            todo.append((a + 1, b))
            continue
        if (np.abs(offset - first) <= tol[a:b]).all():
            steps[a:b] = first + np.arange(b - a) * every
            continue
        k = np.arange(1, b - a)
        total = np.cumsum(offset)
        left = total[:-1] / k
        right = (total[-1] - total[:-1]) / (b - a - k)
        cut = a + int(k[np.argmax(k * (b - a - k) * (left - right) ** 2)])
        todo += [(a, cut), (cut, b)]
    return steps


def _training_steps(log: _Log, train: pl.DataFrame) -> tuple[np.ndarray, np.ndarray | None,
                                                            list[str]]:
    """The steps of the training lines, the steps per epoch at each (None: not known), and a
    note on how the steps were found."""
    if train.get_column("epoch").null_count():
        return np.arange(1, train.height + 1), None, [
            "the log prints no step and no epoch: its training lines are numbered 1, 2, 3, "
            "... in the order printed"]
    at = train.get_column("i").to_numpy()
    epoch = train.get_column("epoch").to_numpy()
    err = _epoch_error(train.get_column("epoch_text"), epoch)
    per, said = _steps_per_epoch(log, at, train.get_column("bar").to_numpy().astype(float),
                                 epoch, err)
    rate = _interval_rate(epoch)
    every = max(1, int(np.rint(rate * per[0]))) if per is not None and rate else 1
    if per is None and log.logging_steps and rate:
        every = log.logging_steps
        per, said = np.full(epoch.size, every / rate), (
            f"the logging_steps={every} of the TrainingArguments printed")
    if per is None and rate:
        per, every = np.full(epoch.size, 1 / rate), 1
        note = ("the log prints no step, nor what gives one (the Trainer's info-level 'Num "
                "update steps per epoch', or its bar after each line as with 'python -u'): "
                "steps are counted in logging intervals, from each line's epoch (multiply by "
                "logging_steps for the Trainer's steps)")
    elif per is None:
        return np.arange(1, train.height + 1), None, [
            "the log prints no step, and its epochs do not say how far apart its lines are: "
            "its training lines are numbered 1, 2, 3, ... in the order printed"]
    else:
        note = f"steps from each line's epoch and {said}"
    starts = np.searchsorted(at, log.starts)
    starts = starts[(starts > 0) & (starts < at.size)]
    return _walk(epoch * per, err * per, every, starts), per, [note]


def read_file(path: Path) -> RawRun:
    """Read one Trainer stdout log."""
    nonempty_size(path)
    dropped = [0, 0]
    try:
        dicts, log = _scan(path, dropped)
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror}") from exc
    kept, pairs = _tables(dicts)
    key = pl.col("key")
    bars = dicts.select(pl.col("n").cast(pl.Int64).alias("i"), "bar")
    lines = kept.join(bars, on="i").join(pairs.group_by("i").agg(
        (key.str.starts_with("eval_") | key.str.starts_with("test_")).any().alias("eval"),
        pl.col("text").filter(key == "epoch").first().alias("epoch_text"),
        pl.col("value").filter(key == "epoch").first().alias("epoch"),
    ), on="i").sort("i")
    train = lines.filter(~pl.col("eval"))
    if train.height == 0:
        raise ReadError("no Trainer training line ({'loss': ...}) with a number found")
    steps, per, notes = _training_steps(log, train)
    step_of = train.select("i", "epoch_text", "epoch").with_columns(
        pl.Series("step", steps, dtype=pl.Int64),
        pl.Series("per", per if per is not None else np.full(train.height, np.nan)))
    # An evaluation prints the epoch of the training line logged at its step, just before it;
    # where it comes between logs, its own epoch gives its step.
    evals = lines.filter(pl.col("eval")).select("i", "epoch_text", "epoch").join_asof(
        step_of.select("i", pl.col("epoch_text").alias("train_epoch"), "step", "per"),
        on="i", strategy="backward")
    evals = evals.with_columns(
        pl.when(pl.col("epoch_text").eq_missing(pl.col("train_epoch"))).then(pl.col("step"))
        .otherwise((pl.col("epoch") * pl.col("per")).round().cast(pl.Int64, strict=False))
        .alias("step")).filter(pl.col("step").is_not_null())
    lost = lines.height - train.height - evals.height
    if lost:
        notes.append(f"{lost} evaluation line(s) left out: the log does not say their step")
    steps_all = pl.concat([step_of.select("i", "step"), evals.select("i", "step")])
    frame = (pairs.join(steps_all, on="i")
             .sort("i", maintain_order=True)
             .select(pl.col("step").cast(pl.Int64), _tag(), "value"))
    problems = dropped_problems(path.name, dropped, "(NUL-filled blocks that a crash or a "
                                "full disk left)")
    return RawRun(points=frame, problems=problems, notes=notes, interval_means=INTERVAL_MEANS)


def read(source: Source) -> list[RawRun]:
    """Read the source's log (one file)."""
    return [read_file(path) for path in source.files]
