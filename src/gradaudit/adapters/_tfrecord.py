"""TFRecord framing: find every complete record of a file, check both CRCs, in NumPy.

A record is ``u64 LE length``, ``u32 LE masked CRC32C of those 8 bytes``, the payload, and
``u32 LE masked CRC32C of the payload``. The file is read in chunks; each chunk's records are
located by a speculative vectorized pass (every record header has zero bytes 3..7 because
lengths are < 16 MiB; the candidates whose length CRC holds and that chain from offset 0 are the
records) and, where the speculation does not hold, by a plain sequential walk.

What goes wrong, and what happens:

- the file ends inside a record (writer still running, or crashed): keep the complete records,
  note it (``truncated``);
- a length field says the record goes past the end of the file: treated as truncated (nothing
  that size is ever allocated);
- the length CRC does not match: framing cannot be trusted any more; stop there;
- the payload CRC does not match but the length CRC does: skip that record, count it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradaudit.adapters._crc32c import _const as _crc_const
from gradaudit.adapters._crc32c import _tables as _crc_tables
from gradaudit.adapters._crc32c import crc32c_many, mask

HEADER = 12  # u64 length + u32 length CRC
OVERHEAD = 16  # header + u32 payload CRC
PAD = 32  # zero bytes kept after every chunk so fixed-width gathers never run off the end
CHUNK = 16 << 20


@dataclass
class Chunk:
    """Complete records with good CRCs from one chunk of a file.

    ``buf`` holds the chunk (followed by ``PAD`` zero bytes); ``starts``/``lengths`` locate the
    payloads in it; ``index`` is each record's number in the file (0-based, write order).
    """

    buf: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    index: np.ndarray


@dataclass
class FileStatus:
    """What reading one file found besides its records."""

    n_records: int = 0
    n_bad_crc: int = 0
    problems: list[str] = field(default_factory=list)


def unaligned(buf: np.ndarray, dtype: str) -> np.ndarray:
    """A view of ``buf`` where element ``i`` is the ``dtype`` value starting at byte ``i``."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((buf.size - width + 1,), dtype=dtype, buffer=buf, strides=(1,))


def _u64_at(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return unaligned(buf, "<u8")[pos]


def _u32_at(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return unaligned(buf, "<u4")[pos]


def _speculate(buf: np.ndarray, n: int) -> np.ndarray:
    """Header offsets of the records chaining from 0, as far as the fast pass can prove them."""
    if n < 4096:
        return np.empty(0, np.int64)
    zeros = np.flatnonzero(buf[:n] == 0)
    if zeros.size < 5:
        return np.empty(0, np.int64)
    run5 = zeros[4:] == zeros[:-4] + 4
    cand = zeros[:-4][run5] - 3
    cand = cand[(cand >= 0) & (cand <= n - HEADER)]
    if cand.size == 0 or cand[0] != 0:
        return np.empty(0, np.int64)
    # The length CRC of a length < 2**24 depends on its 3 low bytes only: 3 table lookups.
    b0, b1, b2 = buf[cand], buf[cand + 1], buf[cand + 2]
    tables = _crc_tables()
    crc = tables[7][b0] ^ tables[6][b1] ^ tables[5][b2] ^ np.uint32(_crc_const(8))
    good = unaligned(buf, "<u4")[cand + 8] == mask(crc)
    cand = cand[good]
    nxt = cand + (
        OVERHEAD
        + (b0[good].astype(np.int64) | (b1[good].astype(np.int64) << 8)
           | (b2[good].astype(np.int64) << 16))
    )
    if cand.size == 0 or cand[0] != 0:
        return np.empty(0, np.int64)
    # The longest prefix where each record starts where the previous one ends.
    breaks = np.flatnonzero(nxt[:-1] != cand[1:])
    stop = breaks[0] + 1 if breaks.size else cand.size
    chain = cand[:stop]
    # The last record of the proven chain must fit in the chunk.
    while chain.size and nxt[chain.size - 1] > n:
        chain = chain[:-1]
    return chain


def _walk(buf: np.ndarray, n: int, pos: int, limit: int) -> tuple[list[int], int]:
    """Sequential walk from ``pos``: header offsets of records that fit, and where it stopped."""
    mv = memoryview(buf)
    heads: list[int] = []
    while n - pos >= HEADER:
        length = int.from_bytes(mv[pos : pos + 8], "little")
        if length > limit or pos + OVERHEAD + length > n:
            break
        heads.append(pos)
        pos += OVERHEAD + length
    return heads, pos


def _scan(buf: np.ndarray, n: int, limit: int) -> tuple[np.ndarray, int, int]:
    """Header offsets of the records that fit in ``buf[:n]``, how many of them already have a
    checked length CRC (a prefix), and where the last one ends."""
    chain = _speculate(buf, n)
    pos = 0
    if chain.size:
        last = int(chain[-1])
        pos = last + OVERHEAD + int.from_bytes(buf[last : last + 8].tobytes(), "little")
    rest, pos = _walk(buf, n, pos, limit)
    heads = np.concatenate([chain, np.asarray(rest, dtype=np.int64)]) if rest else chain
    return heads.astype(np.int64, copy=False), int(chain.size), pos


def _length_crc_ok(buf: np.ndarray, heads: np.ndarray) -> np.ndarray:
    return _u32_at(buf, heads + 8) == mask(crc32c_many(buf, heads, np.full(heads.size, 8)))


def read_chunks(path: str | os.PathLike[str], status: FileStatus,
                chunk_size: int = CHUNK) -> Iterator[Chunk]:
    """Yield the good records of ``path`` chunk by chunk; problems go into ``status``."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        status.problems.append("empty file (0 bytes): no records")
        return
    carry = np.empty(0, np.uint8)
    consumed = 0  # file offset of carry[0]
    want = chunk_size
    with open(path, "rb") as fh:
        while True:
            fresh = fh.read(max(want - carry.size, 0))
            n = carry.size + len(fresh)
            buf = np.zeros(n + PAD, dtype=np.uint8)
            buf[: carry.size] = carry
            buf[carry.size : n] = np.frombuffer(fresh, dtype=np.uint8)
            del fresh
            final = consumed + n >= size
            heads, verified, end = _scan(buf, n, size - consumed)
            stop_msg = None
            # The header after the last complete record, if one is there: is it sound?
            pending = None
            if n - end >= HEADER:
                pending = end
            if heads.size or pending is not None:
                check = heads[verified:] if pending is None else np.append(
                    heads[verified:], pending)
                ok = _length_crc_ok(buf, check)
                bad = np.flatnonzero(~ok)
                if bad.size:
                    first = verified + int(bad[0])
                    check = heads if pending is None else np.append(heads, pending)
                    heads = heads[:first]
                    stop_msg = (
                        f"record {status.n_records + first} (byte {consumed + int(check[first])})"
                        " has a corrupt length field (length CRC mismatch); the rest of the file"
                        " was not read"
                    )
            lengths = _u64_at(buf, heads).astype(np.int64)
            starts = heads + HEADER
            if heads.size:
                stored = _u32_at(buf, starts + lengths)
                good = stored == mask(crc32c_many(buf, starts, lengths))
                index = status.n_records + np.arange(heads.size, dtype=np.int64)
                nbad = int(heads.size - np.count_nonzero(good))
                status.n_records += int(heads.size)
                if nbad:
                    status.n_bad_crc += nbad
                    starts, lengths, index = starts[good], lengths[good], index[good]
                yield Chunk(buf, starts, lengths, index)
            if stop_msg is not None:
                status.problems.append(stop_msg)
                break
            if end >= n and final:
                break
            need = 0
            if pending is not None:
                need = OVERHEAD + int.from_bytes(buf[end : end + 8].tobytes(), "little")
            if final or need > size - consumed - end:
                asks = f"its header asks for {need - OVERHEAD} bytes, " if need else ""
                status.problems.append(
                    f"{status.n_records} records read; the file ends inside a record ({asks}"
                    f"{size - consumed - end} bytes remain): a writer still running or crashed,"
                    " or a corrupt length; the rest is treated as a truncated tail"
                )
                break
            # Carry the incomplete tail over and read more.
            carry = buf[end:n].copy()
            consumed += end
            want = max(chunk_size, need)
    if status.n_bad_crc:
        status.problems.append(
            f"{status.n_bad_crc} record(s) skipped: payload CRC mismatch (corrupt data)"
        )
