"""TFRecord framing: find every complete record of a file, check both CRCs, in NumPy.

A record is ``u64 LE length``, ``u32 LE masked CRC32C of those 8 bytes``, the payload, and
``u32 LE masked CRC32C of the payload``. The file is read in chunks; each chunk's records are
located by a speculative vectorized pass (every record header has zero bytes 3..7 because
lengths are < 16 MiB; the candidates whose length CRC holds and that chain from offset 0 are the
records) and, where the speculation does not hold (a record of 16 MiB or more, corruption), by a
plain sequential walk of a few records before the fast pass is tried again. Chunks are small
(4 MiB) so that a chunk and the temporaries of its passes stay in the CPU caches.

What goes wrong, and what happens:

- the length CRC does not match, or a length field says the record goes past the end of the
  file (nothing that size is ever allocated): the framing is lost there. The bytes after it are
  searched for the next sound record (length CRC and payload CRC both hold, under 16 MiB);
  reading resumes there and the skipped bytes are noted. Found none: the file ends inside a
  record (a writer still running or crashed), or its rest is corrupt; either is noted;
- the payload CRC does not match but the length CRC does: skip that record, count it;
- a record over ``MAX_RECORD`` (64 MiB; its length CRC holds): skipped unread, counted (no
  scalar record is that large, and nothing a header asks for is allocated); a chunk that one
  long record fills is walked instead of passed over, and the speculative pass takes its zero
  quads a block at a time (a zero-filled stretch holds one every 2 bytes, ~80 bytes each).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradaudit.adapters._crc32c import _const as _crc_const
from gradaudit.adapters._crc32c import _t16, crc32c_many, mask
from gradaudit.adapters._crc32c import _tables as _crc_tables
from gradaudit.adapters._sparse import data_after

HEADER = 12  # u64 length + u32 length CRC
OVERHEAD = 16  # header + u32 payload CRC
PAD = 32  # zero bytes kept after every chunk so fixed-width gathers never run off the end
CHUNK = 4 << 20  # small enough that a chunk and its temporaries stay in cache
QUAD_BLOCK = 1 << 18  # zero quads checked at a time (real event files: one per 22 bytes at most,
# ~190k in a 4 MiB chunk; a zero-filled stretch, one per 2 bytes)
MAX_RECORD = 64 << 20  # larger records (a graph, a tensor, an image: never a scalar) are skipped
# unread: their length CRC holds, so the framing after them is sound, and nothing their header
# asks for is allocated


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
    n_too_big: int = 0  # records over MAX_RECORD, skipped unread
    problems: list[str] = field(default_factory=list)


def unaligned(buf: np.ndarray, dtype: str) -> np.ndarray:
    """A view of ``buf`` where element ``i`` is the ``dtype`` value starting at byte ``i``."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((buf.size - width + 1,), dtype=dtype, buffer=buf, strides=(1,))


def _u64_at(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return unaligned(buf, "<u8")[pos]


def _u32_at(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return unaligned(buf, "<u4")[pos]


class _Candidates:
    """Record headers found by the speculative pass over one chunk.

    Every header of a record shorter than 16 MiB has zero bytes 3..7, and five zero bytes always
    hold an even-aligned run of four: so the candidates are found from the even offsets where
    four zero bytes start (two positions each, then checked exactly). A candidate is kept when
    its record fits in the chunk, its successor (``offset + 16 + length``) could be a header
    too, and its length CRC holds. ``breaks`` are the indexes ``i`` where candidate ``i + 1``
    does not start where candidate ``i`` ends.
    """

    def __init__(self, buf: np.ndarray, n: int) -> None:
        self.heads = np.empty(0, np.int64)
        self.nxt = np.empty(0, np.int64)
        self.breaks = np.empty(0, np.int64)
        if n < 64:
            return
        pairs = buf[: n & ~1].view(np.uint16) == 0
        quad = pairs[:-1] & pairs[1:]  # quad[j]: bytes 2j .. 2j+3 are zero
        del pairs
        heads, nxts = [], []
        # a block of quads at a time: each costs ~80 bytes of temporaries, and a zero-filled
        # stretch (a hole, a zeroed payload) holds one every 2 bytes
        for j0 in range(0, quad.size, QUAD_BLOCK):
            q = np.flatnonzero(quad[j0 : j0 + QUAD_BLOCK])
            q += j0
            q *= 2
            head, nxt = self._checked(buf, n, quad, q)
            heads.append(head)
            nxts.append(nxt)
        if heads:
            self.heads, self.nxt = np.concatenate(heads), np.concatenate(nxts)
        self.breaks = np.flatnonzero(self.nxt[:-1] != self.heads[1:])

    @staticmethod
    def _checked(buf: np.ndarray, n: int, quad: np.ndarray,
                 q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidate headers of the zero quads at even offsets ``q`` that hold, and where
        each one's record ends."""
        # A header at h has its quad at the first even offset >= h + 3: h = q - 4 or q - 3.
        cand = np.empty((q.size, 2), dtype=np.int64)
        np.subtract(q, 4, out=cand[:, 0])
        np.subtract(q, 3, out=cand[:, 1])
        cand = cand.reshape(-1)  # sorted: q grows by at least 2
        lo, hi = np.searchsorted(cand, [0, n - HEADER + 1]).tolist()
        cand = cand[lo:hi]
        length = unaligned(buf, "<u8")[cand]
        keep = length < 1 << 24
        nxt = length.view(np.int64)
        nxt += cand
        nxt += OVERHEAD
        # The record must fit in the chunk, and the next header, unless the chunk ends first,
        # must have its zero quad too.
        nq = nxt + 4
        nq >>= 1
        np.clip(nq, 0, quad.size - 1, out=nq)  # garbage lengths: any index
        linked = quad[nq]
        linked |= nxt > n - HEADER
        linked &= nxt <= n
        keep &= linked
        del nq, linked, length
        idx = np.flatnonzero(keep)
        cand, nxt = cand[idx], nxt[idx]
        # The length CRC of a length < 2**24 depends on its 3 low bytes only: 2 table lookups.
        crc = _t16(6)[unaligned(buf, "<u2")[cand]]
        crc ^= _crc_tables()[5][buf[cand + 2]]
        crc ^= np.uint32(_crc_const(8))
        good = unaligned(buf, "<u4")[cand + 8] == mask(crc)
        return cand[good], nxt[good]

    def chain(self, pos: int, n: int) -> np.ndarray:
        """Headers of the records chaining from ``pos`` that fit in the chunk (maybe none)."""
        i = int(np.searchsorted(self.heads, pos))
        if i >= self.heads.size or int(self.heads[i]) != pos:
            return self.heads[:0]
        b = int(np.searchsorted(self.breaks, i))
        stop = int(self.breaks[b]) + 1 if b < self.breaks.size else self.heads.size
        # The last record of the chain must fit in the chunk.
        while stop > i and int(self.nxt[stop - 1]) > n:
            stop -= 1
        return self.heads[i:stop]


RESTARTS = 64  # records walked one by one before the speculative chain is tried again


def walk_records(buf: np.ndarray, n: int, pos: int, limit: int,
                 max_records: int | None = None) -> tuple[list[int], int]:
    """Sequential walk from ``pos`` over the framing alone (no CRC checked): header offsets of
    the records of at most ``limit`` bytes that fit in ``buf[:n]``, and where it stopped."""
    mv = memoryview(buf)
    heads: list[int] = []
    while n - pos >= HEADER:
        if max_records is not None and len(heads) >= max_records:
            break
        length = int.from_bytes(mv[pos : pos + 8], "little")
        if length > limit or pos + OVERHEAD + length > n:
            break
        heads.append(pos)
        pos += OVERHEAD + length
    return heads, pos


def _scan(buf: np.ndarray, n: int, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Header offsets of the records that fit in ``buf[:n]``, which of them already have a
    checked length CRC, and where the last one ends."""
    if n >= HEADER and 2 * int.from_bytes(buf[:8].tobytes(), "little") >= n:
        # one record fills the buffer (a long one carried over whole): walk, no pass over it
        heads, pos = walk_records(buf, n, 0, limit)
        return np.asarray(heads, dtype=np.int64), np.zeros(len(heads), dtype=bool), pos
    cands = _Candidates(buf, n)
    parts: list[np.ndarray] = []
    checked: list[np.ndarray] = []
    pos = 0
    while n - pos >= HEADER:
        chain = cands.chain(pos, n)
        if chain.size:
            parts.append(chain)
            checked.append(np.ones(chain.size, dtype=bool))
            last = int(chain[-1])
            pos = last + OVERHEAD + int.from_bytes(buf[last : last + 8].tobytes(), "little")
            continue
        # Off the speculative chain (a long record, or corruption): walk a few records.
        rest, new_pos = walk_records(buf, n, pos, limit, RESTARTS)
        if not rest:
            break
        parts.append(np.asarray(rest, dtype=np.int64))
        checked.append(np.zeros(len(rest), dtype=bool))
        pos = new_pos
    if not parts:
        return np.empty(0, np.int64), np.empty(0, bool), pos
    if len(parts) == 1:
        return parts[0], checked[0], pos
    return np.concatenate(parts), np.concatenate(checked), pos


RESYNC_KEEP = 1 << 16  # bytes kept at a chunk's end while searching: a record may start there


def _resync(buf: np.ndarray, n: int) -> int | None:
    """Offset of the first sound record in ``buf[:n]``: its length (< 16 MiB) and payload CRCs
    hold and it fits in the chunk; None if there is none."""
    if not buf[:n].any():  # a NUL-filled stretch (a crash leaves them): no record here
        return None
    heads = _Candidates(buf, n).heads
    if not heads.size:
        return None
    lengths = _u64_at(buf, heads).astype(np.int64)
    starts = heads + HEADER
    sound = np.flatnonzero(_u32_at(buf, starts + lengths)
                           == mask(crc32c_many(buf, starts, lengths)))
    return int(heads[sound[0]]) if sound.size else None


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
    lost: tuple[int, str, str] | None = None  # framing lost: (byte, what, message if no resync)
    with open(path, "rb", buffering=0) as fh:
        while True:
            room = max(want - carry.size, 0)
            store = np.empty(carry.size + room + PAD, dtype=np.uint8)
            store[: carry.size] = carry
            got = fh.readinto(memoryview(store)[carry.size : carry.size + room]) or 0
            n = carry.size + got
            buf = store[: n + PAD]
            buf[n:] = 0
            final = consumed + n >= size or (room > 0 and got == 0)  # got 0: the file shrank
            if lost is not None:  # search for the next sound record
                at = _resync(buf, n)
                if at is None:
                    # a chunk of zeros may be a hole: where does the data resume?
                    data = None if final or buf[:n].any() else data_after(fh, consumed + n)
                    if final or data is not None and data >= size:
                        status.problems.append(lost[2])
                        break
                    keep = min(n, RESYNC_KEEP, max(1, want // 2))
                    step = n - keep  # where the next window of the search starts
                    if data is not None and data > consumed + n and step > 0:
                        # a hole: on to the first window of the same search that reaches the
                        # data (the windows passed over hold nothing but the hole)
                        consumed += ((data - consumed - n) // step + 1) * step
                        fh.seek(consumed)
                        carry = np.empty(0, np.uint8)
                        want = chunk_size
                        continue
                    carry = buf[n - keep : n].copy()
                    consumed += n - keep
                    want = chunk_size
                    continue
                status.problems.append(
                    f"{lost[1]}: {consumed + at - lost[0]} bytes skipped to the next sound record"
                    f" (byte {consumed + at}), read from there on"
                )
                lost = None
                carry = buf[at:n].copy()
                consumed += at
                if final and carry.size < HEADER:
                    break
                continue
            heads, checked, end = _scan(buf, n, size - consumed)
            bad_at = None
            # Length CRCs the speculative pass did not check, and the header after the last
            # complete record if one is there: are they sound?
            todo = np.flatnonzero(~checked)
            check = heads[todo]
            if n - end >= HEADER:
                check = np.append(check, end)
            if check.size:
                bad = np.flatnonzero(~_length_crc_ok(buf, check))
                if bad.size:
                    k = int(bad[0])
                    first = int(todo[k]) if k < todo.size else int(heads.size)
                    heads = heads[:first]
                    bad_at = int(check[k])
                    what = (f"record {status.n_records + first} (byte {consumed + bad_at}) has a"
                            " corrupt length field (length CRC mismatch)")
                    lost = (consumed + bad_at, what,
                            f"{what}; no sound record follows it: the rest of the file was not"
                            " read")
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
            if bad_at is None:
                if end >= n and final:
                    break
                need = 0
                if n - end >= HEADER:
                    need = OVERHEAD + int.from_bytes(buf[end : end + 8].tobytes(), "little")
                if not (final or need > size - consumed - end):
                    if need > MAX_RECORD + OVERHEAD:  # its length CRC held: skip it unread
                        status.n_records += 1
                        status.n_too_big += 1
                        consumed += end + need
                        fh.seek(consumed)
                        carry = np.empty(0, np.uint8)
                        want = chunk_size
                        continue
                    # Carry the incomplete tail over and read more.
                    carry = buf[end:n].copy()
                    consumed += end
                    want = max(chunk_size, need)
                    continue
                asks = (f"it needs {need} bytes with its {OVERHEAD} of framing, "
                        if need else "")
                bad_at = end
                lost = (consumed + end,
                        f"record {status.n_records} (byte {consumed + end}) claims"
                        f" {need - OVERHEAD} bytes, more than the file holds (a corrupt length)",
                        f"{status.n_records} records read; the file ends inside a record ({asks}"
                        f"{size - consumed - end} bytes remain): a writer still running or"
                        " crashed, or a corrupt length; the rest is treated as a truncated tail")
            # Framing lost at bad_at: search the bytes after it for the next sound record.
            carry = buf[bad_at + 1 : n].copy()
            consumed += bad_at + 1
            want = chunk_size
    if status.n_too_big:
        status.problems.append(
            f"{status.n_too_big} record(s) over {MAX_RECORD >> 20} MiB skipped unread (no "
            "scalar record is that large: a graph, a tensor or an image)"
        )
    if status.n_bad_crc:
        status.problems.append(
            f"{status.n_bad_crc} record(s) skipped: payload CRC mismatch (corrupt data)"
        )
