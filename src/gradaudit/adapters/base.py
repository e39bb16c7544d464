"""What every adapter module provides, and the unit of work discovery hands it.

An adapter is a module with:

- ``FORMAT``: the format name written into reports (``"tensorboard"``, ``"csv"``, ...).
- ``claim(directory, files) -> list[Source]``: given one folder and the regular files directly
  in it that no earlier adapter claimed, return the sources (groups of files, each one run or a
  file holding several runs) this adapter reads. Sniff cheaply: names and a few header bytes.
- ``read(source) -> list[RawRun]``: read one source. Raise :class:`gradaudit.errors.ReadError`
  when nothing at all could be read; record partial problems (a truncated tail, one bad file
  among several) in ``RawRun.problems`` and return what was read.
- Optionally ``regroup(sources) -> list[Source]``: given all of this format's sources found in
  one scan, fold together those that are one run (TensorBoard's ``add_scalars`` sub-folders).

Adapters stream: they never hold a Python object per logged point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

MAX_LINE = 16 << 20  # bytes: no table or log line is longer; a parser would hold it whole
_TEXT_BLOCK = 16 << 20


def check_text(path: Path, max_line: int | None = MAX_LINE) -> None:
    """ReadError when ``path`` holds a NUL byte (binary data, or a sparse or NUL-filled file)
    or, unless ``max_line`` is None, a line longer than ``max_line`` bytes: a CSV or JSON
    Lines parser would hold such a line whole in memory (many times its size)."""
    offset = line_start = 0
    try:
        with path.open("rb") as fh:
            while block := fh.read(_TEXT_BLOCK):
                if offset == 0 and block[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    raise ReadError("UTF-16 text (Excel's 'Unicode Text', PowerShell): save it "
                                    "as UTF-8")
                nul = block.find(b"\0")
                if nul >= 0:
                    raise ReadError(f"binary data (a NUL byte at byte {offset + nul}): not a "
                                    "text table")
                if max_line is not None:
                    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + offset
                    starts = np.concatenate(([line_start], ends[:-1] + 1))
                    long = np.flatnonzero(ends - starts > max_line)
                    if long.size or (not ends.size and offset + len(block) - line_start
                                     > max_line):
                        at = int(starts[long[0]]) if long.size else line_start
                        raise ReadError(f"a line longer than {max_line >> 20} MiB (from byte "
                                        f"{at}): not a table of scalars")
                    if ends.size:
                        line_start = int(ends[-1]) + 1
                offset += len(block)
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror or exc}") from exc
    if max_line is not None and offset - line_start > max_line:
        raise ReadError(f"a line longer than {max_line >> 20} MiB (from byte {line_start}): "
                        "not a table of scalars")


#: polars' name for a repeated header column: ``<name>_duplicated_<k>`` (k from 0)
DUPLICATED_HEADER = re.compile(r"_duplicated_(\d+)$")
#: A step read from a float (a W&B ``_step``, a chart export's ``Step``) is usable below this
STEP_LIMIT = 2.0**62


def json_float(v: int | float) -> float:
    """A JSON number as a float: an integer too large for one (hundreds of digits) is +-inf."""
    try:
        return float(v)
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


def nonempty_size(path: Path) -> int:
    """The size of ``path`` in bytes; ReadError when it cannot be read or is empty."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReadError(f"cannot read the file: {exc.strerror or exc}") from exc
    if size == 0:
        raise ReadError("the file is empty")
    return size


@dataclass(frozen=True)
class Source:
    """Files that one adapter reads together.

    ``name`` is the run name relative to the scanned root (``"."`` for the root itself).
    Sources of the same format and name found in different folders are merged (their ``files``
    concatenated) before reading, e.g. ``checkpoint-N/trainer_state.json`` copies.
    """

    format: str
    name: str
    files: tuple[Path, ...]
    notes: tuple[str, ...] = ()  # said by discovery about this run (what it stands for)


@dataclass
class RawRun:
    """What an adapter read: points in write order, before duplicate resolution.

    ``suffix`` names one run inside a multi-run source (a W&B CSV export): the run is then
    called ``f"{source.name}#{suffix}"``. ``files`` defaults to the source's files.
    ``interval_means``: tags whose logged value is the mean over the steps since the previous
    logged point (a Trainer's ``loss``, Megatron's ``lm loss``), where the format says so.
    """

    points: pl.DataFrame | pl.LazyFrame
    suffix: str | None = None
    problems: list[FileProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] | None = None
    interval_means: frozenset[str] = frozenset()


class Adapter(Protocol):
    """The module interface above, as a type."""

    FORMAT: str

    def claim(self, directory: Path, files: list[Path]) -> list[Source]: ...

    def read(self, source: Source) -> list[RawRun]: ...
