"""Hugging Face Trainer stdout logs: the ``{'loss': ..., 'grad_norm': ..., 'epoch': ...}`` lines.

The Trainer prints each log as a Python dict (its ``ProgressCallback`` through the progress bar,
or ``PrinterCallback`` with ``disable_tqdm=True``). A job's saved stdout (``train.log``, a SLURM
``.out``) holds them; after a crash it holds the steps past the last ``trainer_state.json``
saved with a checkpoint, and with ``save_strategy="no"`` it is all there is. Keys become the
tags the Trainer reports elsewhere (:func:`gradaudit.adapters.hf_trainer.tag_for`):
``train/loss``, ``train/grad_norm``, ``eval/loss``, ...; the closing summary (``train_runtime``,
...) is no point. transformers 5 prints each float as a 4-digit text (``'4.025'``), 4.x as the
float itself with the epoch rounded to 2 decimals; both are read, with ``nan``/``inf``.

The lines carry no step (a line printing its own ``'step'``, as ``log_history`` entries do, is
read at it). Within a stretch of lines whose epoch never goes back, the Trainer logged every
``logging_steps`` steps (the first line perhaps at step 1): the steps are ``first + k x
logging_steps``. The epoch places the stretch: ``step ~ epoch x steps per epoch``, with the
steps per epoch taken, for each stretch, from

- the training bar redrawn right after each line (``45/120 [``), which shows the line's step
  where stderr goes to the same file and Python's stdout is not buffered (``python -u``);
- the ``Num update steps per epoch = N`` the Trainer prints at info level (transformers 5);
- the training bar's total over the epoch the closing summary line gives (a run that ended;
  without a bar, the steps that line says were trained);
- the logging interval of the log's other stretches, or a printed ``logging_steps=N``.

Without any of them the steps are counted in logging intervals, and a note says so. A stretch
that starts again at the run's first steps (a second training appended to the log, a
hyperparameter search) is a run of its own (``#training-2``, ...); one that goes back less (a
resume from a checkpoint) is the same run, resolved as in every format.
"""

from __future__ import annotations

import re
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
CHUNK_BYTES = 8 * 1024 * 1024

_WANTED = re.compile(rb"\{'loss': (?:'|np\.float|tensor\(|[-+0-9.]|nan|inf)")
_NUL_RUN = re.compile(rb"\x00{2,}")
#: what a Trainer job prints before its first log line, which can be megabytes away: the
#: library's own lines, and the datasets library's bars (not any bar: a tqdm log of another
#: script would be read 256 MiB deep)
_STARTUP = re.compile(rb"transformers|Running training|Trainer|Generating \w+ split"
                      rb"|(?:Map|Filter)(?: \(num_proc=\d+\))?: +\d+%")
#: Every pattern below runs on Polars' regex engine (linear time: a hostile line cannot make
#: it backtrack), one log line at a time; lines longer than ``MAX_DICT_LINE`` are no log line.
MAX_DICT_LINE = 64 * 1024
#: a logged dict: from its first key to the line's end (a bar may precede it on the line)
_DICT = r"\{('[A-Za-z_][^'\n]{0,255}': .*)\}[ \t]*$"
#: a bar with no description (the Trainer's training and evaluation bars), perhaps after a
#: launcher's line prefix (``[default0]:`` from torchrun --tee, ``0:`` from srun --label):
#: ``37%|███▋ | 45/120 [``
_BAR = r"^[ \t]*(?:\[[^\]\n]{0,64}\]:?|\d{1,6}:)?[ \t]*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\["
_PER_EPOCH = r"Num update steps per epoch = ([\d,]+)"
_LOGGING_STEPS = r"\blogging_steps=(\d+),"
_PAIR = r"'([^'\n]{1,256})': ('[^'\n]*'|np\.float\d*\([^()\n]*\)|tensor\([^()\n]*\)|[^,\n]+)"
_NUMBER = (r"^'?\s*(?:np\.float\d*\(|tensor\()?\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?"
           r"|\.\d+(?:[eE][-+]?\d+)?|nan|inf))")
#: a log whose epochs go back this often is no training's (nor a few resumes): its lines are
#: numbered in order, not cut into thousands of runs
MAX_STRETCHES = 1000
#: keys that are a line's own step (a printed ``log_history`` entry, a loop of one's own)
OWN_STEP = ("global_step", "step")
#: how far the steps per epoch read off a bar may be from the true one (a bar drawn a step
#: ahead; a closing epoch printed to 2 decimals), as a fraction
PER_EPOCH_SLACK = 2e-3
#: how far a line's epoch may put it from its step besides: gradient accumulation counts the
#: epoch in micro-batches, which runs up to a step ahead of the update steps within an epoch
STEP_SLACK = 1.5


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """Text-ish files whose first MiB (or, after a job's start-up output, a little more) holds
    a Trainer's ``{'loss': ...`` line."""
    return [Source(FORMAT, f.name, (f,)) for f in candidates(directory, files)
            if sniff(f, _WANTED, _STARTUP)]


class _Log(NamedTuple):
    """What :func:`_scan` found, by line number over the whole file."""

    lines: pl.DataFrame  # a dict line: n, digest (of its text), bar (the count drawn next, -1)
    pairs: pl.DataFrame  # its numbers: n, key, value, and text (the epoch's, as printed)
    per_epoch: pl.DataFrame  # n, per: 'Num update steps per epoch = per' at line n
    bars: pl.DataFrame  # n, total: the bars drawn (with no description)
    logging_steps: int | None  # from a printed TrainingArguments


class _Found:
    """The pieces of :class:`_Log`, gathered one piece of text at a time."""

    def __init__(self) -> None:
        self.lines: list[pl.DataFrame] = []
        self.pairs: list[pl.DataFrame] = []
        self.per_epoch: list[pl.DataFrame] = []
        self.bars: list[pl.DataFrame] = []
        self.logging_steps: int | None = None
        self.count = 0

    def add(self, text: str) -> None:
        """Take in one piece of the log, cut at a line end."""
        line = pl.col("line")
        frame = (pl.Series("line", [text]).str.split("\n").explode().to_frame()
                 .with_row_index("n", offset=self.count)
                 .with_columns(pl.col("n").cast(pl.Int64))
                 .filter(line.str.len_bytes() <= MAX_DICT_LINE)
                 .filter(line.str.contains(r"\S")))  # a bar's redraw leaves blank lines
        self.count += text.count("\n") + 1
        bar = line.str.extract(_BAR, 1).cast(pl.Int64, strict=False)
        marked = frame.with_columns(line.str.extract(_DICT, 1).alias("body"),
                                    bar.shift(-1).fill_null(-1).alias("bar"),
                                    line.str.extract(_BAR, 2).cast(pl.Int64, strict=False)
                                    .alias("total"))
        dicts = marked.filter(pl.col("body").is_not_null())
        self.lines.append(dicts.select("n", pl.col("body").hash().alias("digest"), "bar"))
        pairs = (dicts.lazy().select("n", pl.col("body").str.extract_all(_PAIR).alias("pair"))
                 .explode("pair")
                 .select("n", pl.col("pair").str.extract(r"^'([^']*)'", 1).alias("key"),
                         pl.col("pair").str.extract(r"^'[^']*': (.*)$", 1).alias("text"))
                 .with_columns(pl.col("text").str.extract(_NUMBER, 1).str.to_lowercase()
                               .cast(pl.Float64, strict=False).alias("value"))
                 .filter(pl.col("value").is_not_null())
                 .unique(subset=["n", "key"], keep="first", maintain_order=True)
                 .with_columns(pl.when(pl.col("key") == "epoch").then(pl.col("text"))
                               .alias("text"), pl.col("key").cast(pl.Categorical))
                 .collect())
        self.pairs.append(pairs)
        self.bars.append(marked.filter(pl.col("total").is_not_null()).select("n", "total"))
        said = frame.filter(line.str.contains("Num update steps per epoch", literal=True))
        self.per_epoch.append(said.select("n", line.str.extract(_PER_EPOCH, 1)
                                          .str.replace_all(",", "").cast(pl.Int64, strict=False)
                                          .alias("per")).drop_nulls())
        if self.logging_steps is None:
            found = frame.get_column("line").str.extract(_LOGGING_STEPS, 1).drop_nulls()
            if found.len() and int(found[0]) > 0:
                self.logging_steps = int(found[0])

    def done(self) -> _Log:
        """What the log said."""
        def joined(parts: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
            return pl.concat(parts) if parts else pl.DataFrame(schema=schema)

        return _Log(
            joined(self.lines, {"n": pl.Int64, "digest": pl.UInt64, "bar": pl.Int64}),
            joined(self.pairs, {"n": pl.Int64, "key": pl.Categorical, "text": pl.String,
                                "value": pl.Float64}),
            joined(self.per_epoch, {"n": pl.Int64, "per": pl.Int64}),
            joined(self.bars, {"n": pl.Int64, "total": pl.Int64}),
            self.logging_steps)


def _scan(path: Path, dropped: list[int]) -> _Log:
    """What the log at ``path`` says; a run of NULs (a crash's) ends a line."""
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


def _once(lines: pl.DataFrame) -> pl.DataFrame:
    """The lines less the copies of a log printed by each node (``PrinterCallback`` prints on
    each node's process 0): where lines come in runs of the same text, nearly all of one length
    m > 1 and the first 20 all of it, each run stands for len / m lines. Elsewhere a line like
    the one before it is a log of its own (a diverged run prints the same nan line at every
    step while its 2-decimal epoch stays)."""
    lengths = lines.get_column("digest").rle().struct.field("len").to_numpy()
    m = int(np.median(lengths)) if lengths.size else 1
    if m < 2 or (lengths == m).mean() < 0.9 or (lengths[:20] != m).any():
        return lines  # (copies begin with the log; a diverged run's repeats come later)
    run = (pl.col("digest") != pl.col("digest").shift(1)).fill_null(True).cum_sum()
    return lines.filter(pl.int_range(pl.len()).over(run) % m == 0)


def _tag() -> pl.Expr:
    """The tag the Trainer reports a key under (:func:`hf_trainer.tag_for`), as an expression."""
    key = pl.col("key").cast(pl.String)
    return (pl.when(key.str.starts_with("eval_")).then("eval/" + key.str.slice(5))
            .when(key.str.starts_with("test_")).then("test/" + key.str.slice(5))
            .otherwise("train/" + key)).alias("tag")


def _epoch_error(text: pl.Series, value: np.ndarray) -> np.ndarray:
    """How far a printed epoch may be from the true one: 4 significant digits where printed as
    text (transformers 5), 2 decimals where it shows no more (4.x rounds it so for its bar,
    and ``0.1`` is its 0.10), else the digits shown (4.x's ``PrinterCallback``)."""
    quoted = text.str.starts_with("'").fill_null(False).to_numpy()
    exponent = text.str.extract(r"[eE]([-+]?\d+)", 1).cast(pl.Int64, strict=False)
    exponent = exponent.fill_null(0).to_numpy().astype(float)
    decimals = text.str.strip_chars("'").str.extract(r"^[-+]?\d*\.?(\d*)", 1)
    decimals = decimals.str.len_chars().fill_null(0).to_numpy().astype(float)
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(np.where(value == 0, 1.0, value))))
    return np.where(quoted, 0.5 * 10.0 ** (magnitude - 3),
                    0.5 * 10.0 ** (exponent - np.maximum(decimals, 2)))


def _slope(epoch: np.ndarray) -> float | None:
    """Epochs per line over a stretch of ``epoch`` (least squares), None under 3 lines."""
    if epoch.size < 3:
        return None
    k = np.arange(epoch.size, dtype=float)
    slope = float(np.polyfit(k, epoch, 1)[0])
    return slope if slope > 0 else None


class _Stretch(NamedTuple):
    """Training lines ``a:b`` whose epoch never goes back, and what places them."""

    a: int
    b: int
    slope: float | None  # epochs per line
    per: float | None  # steps per epoch
    said: str  # where ``per`` came from
    slack: float  # how far ``per`` may be from the true one, as a fraction of it
    total: int | None = None  # the steps of the training the stretch ends (its bar's total)


class _Closing(NamedTuple):
    """The log's closing summary lines, and its bars' totals: what :func:`_from_summary`
    looks at for each stretch, gathered once."""

    pairs: pl.DataFrame  # the numbers of the lines holding 'train_runtime'
    totals: np.ndarray  # the bars' totals, the one drawn most first

    @classmethod
    def of(cls, log: _Log) -> _Closing:
        lines = log.pairs.filter(pl.col("key") == "train_runtime").get_column("n")
        drawn = log.bars.get_column("total").value_counts(sort=True)
        return cls(log.pairs.filter(pl.col("n").is_in(lines.implode())),
                   drawn.get_column("total").to_numpy().astype(float))


def _from_summary(closing: _Closing, last: int, end: int, slope: float | None,
                  fresh: bool) -> tuple[float | None, str, int | None, float]:
    """Steps per epoch from the closing summary line after line ``last`` (before line
    ``end``): the training bar's total over the epoch the line ends at, the total being one
    that puts the stretch's lines (``slope`` epochs apart) a whole number of steps apart. Of
    several, the least that is not below the steps the line says this launch trained
    (``train_runtime x train_steps_per_second``; a resumed launch trains the rest), or else
    the one drawn most. Without a bar (``disable_tqdm``), the steps the line says were
    trained, where the stretch is the training's first (``fresh``). (The bar goes to stderr:
    where it stands beside a buffered stdout's lines says nothing.)"""
    summary = closing.pairs.filter((pl.col("n") > last) & (pl.col("n") < end)
                                   & (pl.col("key") == "train_runtime")).get_column("n")
    if not summary.len() or not slope:
        return None, "", None, 0.0
    line = closing.pairs.filter(pl.col("n") == summary[0])
    values = dict(line.select(pl.col("key").cast(pl.String), "value").iter_rows())
    epoch = values.get("epoch")
    shown = line.filter(pl.col("key") == "epoch")
    if not epoch or epoch <= 0 or not shown.height:
        return None, "", None, 0.0
    unsure = float(_epoch_error(shown.get_column("text"), np.array([epoch]))[0]) / epoch
    if unsure > 0.01:
        return None, "", None, 0.0  # printed too short to divide by (0.03 for 0.025)
    slack = max(PER_EPOCH_SLACK, 2 * unsure)
    totals = closing.totals
    apart = slope * totals / epoch
    whole = (np.rint(apart) >= 1) & (np.abs(apart - np.rint(apart)) <= 0.05 * np.rint(apart))
    totals = totals[whole]
    trained = values.get("train_runtime", 0.0) * values.get("train_steps_per_second", 0.0)
    if not totals.size:
        apart = slope * trained / epoch
        if fresh and trained >= 1 and abs(apart - np.rint(apart)) <= 0.05 * max(np.rint(apart), 1):
            return trained / epoch, (  # no bar (disable_tqdm): the line's own steps, to its digits
                f"the steps the closing line gives (train_runtime x train_steps_per_second: "
                f"{trained:.6g}) over the {epoch:g} epochs the run ended at "
                f"({trained / epoch:.6g} steps per epoch)"), None, slack
        return None, "", None, 0.0
    enough = totals[totals >= trained * (1 - PER_EPOCH_SLACK) - 1]  # a resumed launch trains
    total = int(enough.min() if trained > 0 and enough.size else totals[0])  # fewer
    return total / epoch, (f"the {total} steps of the training bar over the {epoch:g} epochs "
                           f"the run ended at ({total / epoch:.6g} steps per epoch)"), total, slack


def _stretches(log: _Log, n: np.ndarray, epoch: np.ndarray, err: np.ndarray,
               bar: np.ndarray) -> list[_Stretch]:
    """Cut the training lines (file lines ``n``) where the epoch goes back, and find each
    stretch's steps per epoch. (The Trainer's '***** Running training *****' is no cut: it
    goes to stderr, which a buffered stdout's lines can come after.)"""
    step = np.diff(epoch)
    back = step < -(err[1:] + err[:-1])
    if epoch.size > 2:  # where lines are epochs apart and their epochs exact (logging_strategy
        rise = np.median(step)  # "epoch"), one that does not go on is a resume too
        back |= (step <= 0) & (rise > 4 * np.maximum(err[1:], err[:-1]))
    edges = [0, *(np.flatnonzero(back) + 1).tolist(), n.size]
    said_at = log.per_epoch.filter(pl.col("per") > 0)
    closing = _Closing.of(log)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        end = n[b] if b < n.size else np.iinfo(np.int64).max  # up to the next stretch
        slope = _slope(epoch[a + 1:b] if b - a > 3 else epoch[a:b])
        paired = (bar[a:b] > 0) & (epoch[a:b] > 0)
        before = said_at.filter(pl.col("n") < n[a])
        per = float(np.median(bar[a:b][paired] / epoch[a:b][paired])) if paired.any() else 0
        fits = np.abs(bar[a:b] - epoch[a:b] * per) <= err[a:b] * per + STEP_SLACK
        if paired.sum() >= 3 and (paired & fits).sum() >= 0.9 * (b - a):
            # (with a buffered stdout, lines come in blocks: a bar after the last of a block
            # shows a later step)
            out.append(_Stretch(a, b, slope, per, "the training bar drawn after each line "
                                                  f"({per:.6g} steps per epoch)", PER_EPOCH_SLACK))
        elif before.height:
            per = float(before.get_column("per")[-1])
            out.append(_Stretch(a, b, slope, per, "the update steps per epoch the Trainer "
                                                  f"printed ({per:g})", 0.0))
        else:
            fresh = slope is not None and epoch[a] <= 1.5 * slope  # from the first interval
            per, said, total, slack = _from_summary(closing, n[b - 1], end, slope, fresh)
            out.append(_Stretch(a, b, slope, per, said, slack, total))
    return out


def _place(epoch: np.ndarray, err: np.ndarray, bar: np.ndarray, per: float, slack: float,
           every: int, fresh: bool, interval: bool, total: int | None = None) -> np.ndarray:
    """Steps of one stretch's lines: ``first + k x every``, the first line perhaps at step 1
    (``fresh``: the stretch starts a training; ``interval``: steps are logging intervals, the
    first line perhaps at 0). Where a line's epoch (``err``; ``per`` steps per epoch, ``slack``
    of it unsure) cannot be at its step, the pattern starts again there (a log line lost)."""
    steps = np.zeros(epoch.size, np.int64)
    raw = epoch * per
    tol = (err + slack * epoch) * per + (0.3 if interval else STEP_SLACK)
    if total is not None and not interval:
        # the training ended: its last line was logged at the last multiple of `every`, and
        # the lines before it `every` apart (the first perhaps at step 1): exact where the
        # epochs are printed too short to tell the first line's step
        last = every * (total // every)
        fit = last - every * np.arange(epoch.size - 1, -1, -1)
        if fresh and fit[0] <= 0 and every > 1 and epoch.size > 1:
            fit[0] = 1
        if fit[0] >= 1 and (np.abs(fit - raw) <= tol).all():
            return fit
        # more lines than the steps hold: a resume went back by less than the epochs tell
        # (a crash right after a save). Cut where the lines' offset from the pattern drops
        # most: before it the lines go on from the first one, after it up to the last.
        offset = raw - every * np.arange(epoch.size)
        k = np.arange(1, epoch.size)
        total_ = np.cumsum(offset)
        drop = total_[:-1] / k - (total_[-1] - total_[:-1]) / (epoch.size - k)
        cut = int(k[np.argmax(drop)]) if k.size else 0
        if cut:
            head = slice(0, min(10, cut))
            first = every * np.rint(np.median(offset[head]) / every)
            if fresh and first <= 0 and every > 1:
                first = 0.0  # the first line at step 1 below
            fit = np.concatenate((first + every * np.arange(cut),
                                  last - every * np.arange(epoch.size - cut - 1, -1, -1)))
            if fresh and fit[0] <= 0 and every > 1:
                fit[0] = 1
            if fit[0] >= 1 and fit[cut] < fit[cut - 1] and (np.abs(fit - raw) <= tol).all():
                return fit
    a = 0
    if fresh and not interval and every > 1 and epoch.size > 1 and abs(raw[0] - 1) <= tol[0] \
            and abs(raw[1] - every) <= tol[1]:
        steps[0] = 1  # logging_first_step
        a = 1
    while a < epoch.size:
        if a:
            lowest = steps[a - 1] + 1
        elif interval:  # interval 0 only for a line seen to come before the first interval
            lowest = 0 if fresh and raw[0] + err[0] * per < 0.75 else 1
        else:
            lowest = every
        near = slice(a, min(a + 64, epoch.size))
        lead = np.flatnonzero(bar[near] > 0)[:10]  # the bar after each line shows its step
        offsets = bar[near][lead] - lead * every
        if lead.size >= 3 and (offsets == np.median(offsets)).sum() > lead.size / 2:
            first = float(np.median(offsets))
        else:
            head = slice(a, min(a + 10, epoch.size))  # the most exact epochs: the first
            first = every * float(np.rint(np.median(raw[head] - np.arange(head.stop - a)
                                                    * every) / every))
        floor = every * np.ceil(lowest / every)
        first = max(first, floor)
        if abs(first - raw[a]) > tol[a]:  # this line is off the pattern: its own nearest step
            first = max(every * float(np.rint(raw[a] / every)), floor)
        end = _fits_to(raw, tol, a, first, every)
        steps[a:end] = first + np.arange(end - a) * every
        a = end
    return steps


def _fits_to(raw: np.ndarray, tol: np.ndarray, a: int, first: float, every: int) -> int:
    """Where the pattern ``first + k x every`` from line ``a`` stops fitting ``raw`` (within
    ``tol``), at least a line on: looked for in windows that double, so that a log whose
    pattern breaks often costs its length, not its square."""
    size = 16
    while True:
        hi = min(a + size, raw.size)
        fit = first + np.arange(hi - a) * every
        bad = np.flatnonzero(np.abs(fit - raw[a:hi]) > tol[a:hi])
        if bad.size:
            return a + max(1, int(bad[0]))
        if hi == raw.size:
            return hi
        size *= 2


def _from_bars(train: pl.DataFrame, bar: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray, list[list[str]]]:
    """:func:`_training_steps` where the training bar is drawn right after (nearly) every line:
    its count is the line's step (stdout not buffered, stderr in the same file). A line
    without one is a logging interval after the line before; a count that goes back is a
    resume, or, back at the first steps, another training."""
    steps = bar.astype(np.int64)
    shown = np.flatnonzero(bar > 0)
    gaps = np.diff(steps[shown])
    every = int(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1
    for i in np.flatnonzero(bar <= 0):  # few: the lines whose bar a piece's end cut off
        steps[i] = steps[i - 1] + every if i else max(1, int(steps[shown[0]]) - every)
    back = np.flatnonzero(np.diff(steps) < 0) + 1
    first = int(steps[0])
    training = np.zeros(steps.size, np.int64)
    notes = [["steps from the training bar drawn after each line (it shows the line's step)"]]
    for i in back if back.size < MAX_STRETCHES else ():  # (else no training's log: one run)
        if steps[i] <= first + every:  # back at the first steps: another training
            training[i:] = training[i - 1] + 1
            notes.append(list(notes[0]))
    epoch = train.get_column("epoch").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(epoch > 0, steps / epoch, np.nan)
    return steps, per, training, notes


def _training_steps(log: _Log, train: pl.DataFrame) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray, list[list[str]]]:
    """The steps of the training lines, the steps per epoch at each (NaN: not known), the
    training each belongs to (0, 1, ...), and each training's notes on how its steps were
    found."""
    size = train.height
    if train.get_column("own_step").null_count() == 0:
        steps = train.get_column("own_step").to_numpy().astype(np.int64)
        return steps, np.full(size, np.nan), np.zeros(size, np.int64), [[
            "steps as each line printed them (its 'step' or 'global_step')"]]
    if train.get_column("epoch").null_count():
        return np.arange(1, size + 1), np.full(size, np.nan), np.zeros(size, np.int64), [[
            "the log prints no step and no epoch: its training lines are numbered 1, 2, 3, "
            "... in the order printed"]]
    bar = train.get_column("bar").to_numpy()
    if (bar > 0).mean() >= 0.9:
        return _from_bars(train, bar)
    n = train.get_column("n").to_numpy()
    epoch = train.get_column("epoch").to_numpy()
    err = _epoch_error(train.get_column("epoch_text"), epoch)
    steps = np.zeros(size, np.int64)
    per_line = np.full(size, np.nan)
    training = np.zeros(size, np.int64)
    notes: list[list[str]] = [[]]
    first_step: int | None = None
    if (np.diff(epoch) < -(err[1:] + err[:-1])).sum() >= MAX_STRETCHES:
        return np.arange(1, size + 1), np.full(size, np.nan), np.zeros(size, np.int64), [[
            f"the epochs of its lines go back {MAX_STRETCHES} times or more: no training's "
            "log, nor a few resumes; its training lines are numbered 1, 2, 3, ... in the "
            "order printed"]]
    stretches = _stretches(log, n, epoch, err, bar)
    placed = [st for st in stretches if st.per is not None and st.slope]
    longest = max(placed, key=lambda st: st.b - st.a, default=None)
    if log.logging_steps:
        known, known_said = log.logging_steps, (f"the logging_steps={log.logging_steps} of the "
                                                "TrainingArguments printed")
    elif longest is not None:
        known = max(1, int(np.rint(longest.slope * longest.per)))  # type: ignore[operator]
        known_said = f"the logging interval of the log's other lines ({known} steps)"
    else:
        known, known_said = None, ""
    for st in stretches:
        part = slice(st.a, st.b)
        per, said, slack = st.per, st.said, st.slack
        interval = False
        if per is not None:
            every = max(1, int(np.rint(st.slope * per))) if st.slope else (known or 1)
        elif known and st.slope:
            every, per, said, slack = known, known / st.slope, known_said, PER_EPOCH_SLACK
        elif known and longest is not None:  # a stretch of a line or two
            every, per, slack = known, longest.per, longest.slack
            said = (f"the steps per epoch of the log's other lines ({per:.6g}) and "
                    f"{known_said}")
        elif st.slope:
            # (the slope is as unsure as the stretch's epochs are short: 0.03 +- 0.005)
            span = max(float(epoch[st.b - 1] - epoch[st.a]), 1e-12)
            slack = max(PER_EPOCH_SLACK, 2 * float(np.median(err[part])) / span)
            per, every, interval = 1 / st.slope, 1, True
            said = ("no step, nor how many steps an epoch has, exactly enough (the Trainer's "
                    "info-level 'Num update steps per epoch', its bar after each line as with "
                    "'python -u', or a closing line of a run that ended): steps are counted in "
                    "logging intervals, from each line's epoch (multiply by logging_steps for "
                    "the Trainer's steps)")
        else:  # two lines or fewer, nothing to place them by
            per, every, interval, said = 1.0 / max(epoch[part].max(initial=0), 1e-9), 1, True, (
                "no step, and too few lines to tell how far apart they are: numbered in order")
        fresh = first_step is None or epoch[st.a] * per <= first_step + err[st.a] * per + 1.5
        steps[part] = _place(epoch[part], err[part], bar[part], per, slack, every, fresh,
                             interval, st.total)
        per_line[part] = per
        if first_step is None:
            first_step = int(steps[st.a])
        elif fresh and st.a:
            training[st.a:] = training[st.a - 1] + 1
            notes.append([])
        said = (f"the log prints {said}" if said.startswith("no step")
                else f"steps from each line's epoch and {said}")
        if said not in notes[-1]:
            notes[-1].append(said)
    return steps, per_line, training, notes


def read_file(path: Path) -> list[RawRun]:
    """Read one Trainer stdout log: a run for each training it holds."""
    nonempty_size(path)
    dropped = [0, 0]
    try:
        log = _scan(path, dropped)
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror}") from exc
    # (by the keys' categories: a column of 5 million key names is no small thing)
    names = log.pairs.get_column("key").unique().cast(pl.String)
    evals = names.filter(names.str.starts_with("eval_") | names.str.starts_with("test_"))
    key = pl.col("key")

    def lines_with(*names: str) -> pl.Series:
        return log.pairs.filter(key.is_in(list(names))).get_column("n").unique()

    epochs = log.pairs.filter(key == "epoch").select("n", pl.col("text").alias("epoch_text"),
                                                     pl.col("value").alias("epoch"))
    steps_said = (log.pairs.filter(key.is_in(list(OWN_STEP))).sort("n", "key")
                  .unique("n", keep="last", maintain_order=True)  # "step" before "global_step"
                  .select("n", pl.col("value").alias("own_step")))
    # a Trainer's line holds two numbers at least (its log and the epoch, or the lr):
    # "... {'loss': 1.0}" ending a sentence is none
    counts = log.pairs.group_by("n").len().filter(pl.col("len") >= 2).get_column("n")
    lines = (_once(log.lines)
             .filter(pl.col("n").is_in(counts.implode())
                     & ~pl.col("n").is_in(lines_with("train_runtime").implode()))
             .with_columns(pl.col("n").is_in(lines_with(*evals).implode()).alias("eval"))
             .join(epochs, on="n", how="left").join(steps_said, on="n", how="left")
             .sort("n"))
    train = lines.filter(~pl.col("eval"))
    if train.height == 0:
        raise ReadError("no whole Trainer training line ({'loss': ..., 'epoch': ...}) found (a "
                        "line cut short is not read)")
    steps, per, training, notes = _training_steps(log, train)
    placed = train.select("n", "epoch_text").with_columns(
        pl.Series("step", steps, dtype=pl.Int64), pl.Series("per", per),
        pl.Series("training", training))
    # An evaluation prints the epoch of the training line logged at its step, just before it;
    # where it comes between logs, its own epoch (or step) gives its step.
    # Where the bar follows the lines, it follows this one too: its count is the step.
    bars_follow = (train.get_column("bar") > 0).mean() >= 0.9
    evals = lines.filter(pl.col("eval")).select("n", "epoch_text", "epoch", "own_step",
                                                "bar").join_asof(
        placed.rename({"epoch_text": "train_epoch", "step": "train_step"}), on="n",
        strategy="backward")
    evals = evals.with_columns(
        pl.coalesce(pl.col("own_step").cast(pl.Int64, strict=False),
                    pl.when(pl.lit(bars_follow) & (pl.col("bar") > 0)).then(pl.col("bar")),
                    pl.when(pl.col("epoch_text").eq_missing(pl.col("train_epoch")))
                    .then(pl.col("train_step")),
                    (pl.col("epoch") * pl.col("per")).round().cast(pl.Int64, strict=False))
        .alias("step"), pl.col("training").fill_null(0)).filter(pl.col("step").is_not_null())
    lost = lines.height - train.height - evals.height
    if lost:
        notes[0].append(f"{lost} evaluation line(s) left out: the log does not say their step")
    where = pl.concat([placed.select("n", "step", "training"),
                       evals.select("n", "step", "training")])
    frame = (log.pairs.lazy().select("n", "key", "value")
             .join(where.lazy(), on="n").filter(~pl.col("key").is_in(list(OWN_STEP)))
             .sort("n", maintain_order=True)
             .select(pl.col("step").cast(pl.Int64), _tag(), "value", "training").collect())
    problems = dropped_problems(path.name, dropped, "(NUL-filled blocks that a crash or a "
                                "full disk left)")
    count = int(training.max()) + 1
    runs = []
    for t in range(count):
        one = frame.filter(pl.col("training") == t).drop("training")
        said = list(notes[t])
        if count > 1:
            said.insert(0, f"training {t + 1} of the {count} this log holds (each starts "
                           "again at the first steps: a second training appended to the log, "
                           "or a hyperparameter search)")
        runs.append(RawRun(points=one, suffix=None if t == 0 else f"training-{t + 1}",
                           problems=problems if t == 0 else [], notes=said,
                           interval_means=INTERVAL_MEANS))
    return runs


def read(source: Source) -> list[RawRun]:
    """Read the source's log (one file)."""
    return [run for path in source.files for run in read_file(path)]
