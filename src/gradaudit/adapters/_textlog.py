"""What the readers of training stdout logs (Megatron, fairseq) share: the sniff that reads on
past a distributed job's start-up output, line ends, and time stamps as wall time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

import polars as pl

from gradaudit.adapters._sparse import data_after
from gradaudit.adapters.base import MAX_LINE
from gradaudit.series import FileProblem

#: the names a training job's stdout is saved under (``train.log``, ``slurm-123.out``, ``stdout``)
SUFFIXES = frozenset({".log", ".txt", ".out", ".err", ""})
SNIFF_BYTES = 1024 * 1024  # start-up output (argument dumps, warnings) can fill the first 100 KB
#: Where the first MiB shows a distributed job's start-up (``NCCL_DEBUG=INFO`` prints a dozen
#: lines per rank and channel, megabytes on a large job), the sniff reads on while start-up
#: lines keep coming: ``STARTUP_REACH`` past the last block holding one, this far at most. (Any
#: distributed job's stdout starts so: a 300 MB DeepSpeed log read to this limit cost 256 MiB;
#: 4.6 MB of per-rank warnings after the start-up lines were too far for a 4 MiB reach.)
LONG_SNIFF_BYTES = 256 * 1024 * 1024
STARTUP_REACH = 16 * 1024 * 1024  # (a job's per-rank warnings can follow for megabytes)


#: W&B's copy of a run's console, in its run folder: ``run-<time>-<id>/files/output.log``
WANDB_CONSOLE = "output.log"


def candidates(directory: Path, files: list[Path]) -> list[Path]:
    """The files of ``directory`` a stdout-log reader sniffs: names a job's output is saved
    under (``SUFFIXES``), less W&B's copy of the console (``files/output.log`` in a run folder
    holding the run's ``.wandb`` file, which has the same metrics: read, it was the run
    twice). Named alone on the command line, the copy is read."""
    out = [f for f in files if f.suffix.lower() in SUFFIXES]
    if directory.name == "files" and len(files) > 1 and any(f.name == WANDB_CONSOLE
                                                            for f in out):
        try:
            run = any(p.name.endswith(".wandb") for p in directory.parent.iterdir())
        except OSError:
            run = False
        if run:
            out = [f for f in out if f.name != WANDB_CONSOLE]
    return out


def sniff(path: Path, wanted: re.Pattern[bytes], startup: re.Pattern[bytes]) -> bool:
    """Whether ``wanted`` occurs in the first ``SNIFF_BYTES`` of ``path`` or, where those show
    a job's start-up (``startup``), within ``STARTUP_REACH`` past the last block holding one
    (``LONG_SNIFF_BYTES`` at most). NUL bytes are no reason to pass a log by: a crash can leave
    NUL-filled blocks in it."""
    seen, tail, limit = 0, b"", SNIFF_BYTES
    try:
        with path.open("rb") as fh:
            while seen < limit and (block := fh.read(64 * 1024 if seen < SNIFF_BYTES
                                                     else 1024 * 1024)):
                seen += len(block)
                text = tail + block.replace(b"\x00", b"")
                if wanted.search(text) is not None:
                    return True
                if startup.search(text) is not None:  # a training job's start-up: its lines
                    limit = max(limit, min(LONG_SNIFF_BYTES, seen + STARTUP_REACH))  # come later
                tail = text[-256:]  # a line start cut by the block's end
    except OSError:
        return False
    return False


def blocks(fh: BinaryIO, size: int, dropped: list[int]) -> Iterator[tuple[bytes, int]]:
    """``(block, NUL bytes in it)`` for blocks of ``size`` bytes of ``fh``; the NUL bytes are
    counted in ``dropped[0]``. A hole in a sparse file (space a crash left allocated and never
    written) is jumped over, its zeros counted as read."""
    while block := fh.read(size):
        nul = block.count(b"\x00")
        if nul == len(block):  # a hole, maybe
            at = fh.tell()
            data = data_after(fh, at)
            if data is not None and data > at:
                nul += data - at
                fh.seek(data)
        dropped[0] += nul
        yield block, nul


def last_line_end(data: bytes, dropped: list[int]) -> tuple[int, bytes]:
    """Where ``data``'s last line end is, and what follows it (the start of the next line):
    ``(-1, data)`` where it has none, ``(-1, b"")`` where that stretch is longer than
    ``MAX_LINE`` (no log line is: it is dropped, and counted in ``dropped[1]``)."""
    cut = data.rfind(b"\n")
    if cut >= 0:
        return cut, data[cut + 1 :]
    if len(data) > MAX_LINE:
        dropped[1] += len(data)
        return -1, b""
    return -1, data


def dropped_problems(name: str, dropped: list[int], nul_what: str) -> list[FileProblem]:
    """The problems of file ``name`` read through :func:`blocks` and :func:`last_line_end`: its
    NUL bytes (``dropped[0]``; ``nul_what`` says what they were and what became of them) and
    its stretches without a line end (``dropped[1]``)."""
    problems = []
    if dropped[0]:
        problems.append(FileProblem(name, f"{dropped[0]} NUL byte(s) ignored {nul_what}"))
    if dropped[1]:
        problems.append(FileProblem(name, f"{dropped[1]} bytes without a line end (longer than "
                                    f"{MAX_LINE >> 20} MiB) skipped"))
    return problems


def line_feeds(data: bytes) -> bytes:
    """``data`` with every CR line end (CR LF, or a lone CR: an old Mac file, a terminal's
    progress redraws captured with the log) made LF; a CR at the very end is kept, since the LF
    of a CR LF may begin the next block."""
    if b"\r" not in data:
        return data
    keep = data.endswith(b"\r")
    body = data[:-1] if keep else data
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep else b"")


#: an ISO-like time stamp (``2024-03-01 12:00:05``, ``2024-03-01T12:00:05``), read to the second
_S = TypeVar("_S", pl.Series, pl.Expr)
TIMESTAMP = r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}"


def epoch_seconds(stamps: _S) -> _S:
    """``wall_time``: seconds since the epoch of :data:`TIMESTAMP` texts, read as UTC (a log's
    stamps carry no zone); null where there is none."""
    parsed = stamps.str.replace("T", " ", literal=True).str.to_datetime(
        "%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"
    )
    return (parsed.dt.epoch("us").cast(pl.Float64) / 1e6).alias("wall_time")
