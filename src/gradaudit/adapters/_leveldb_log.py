"""Record framing of the LevelDB log format, as W&B's ``.wandb`` files use it.

The file is cut into 32 KiB blocks counted from the start of the file. A record is stored as one
or more chunks; each chunk has a 7-byte header (``u32`` LE checksum, ``u16`` LE length, ``u8``
type: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST) and never crosses a block boundary; a block tail shorter
than a chunk header is zero padding. W&B's checksum is a plain IEEE CRC-32 (``zlib.crc32``) over
the type byte and the data, neither masked nor CRC32C (checked on files written by wandb 0.31).

Damage is contained: a chunk whose checksum or length is wrong costs the rest of its block (the
reader resumes at the next block, as LevelDB does) and the record it was part of; a file that
ends inside a record keeps every complete record before it. A record longer than
:data:`MAX_RECORD` is skipped as its chunks come, never joined: a header chain of any length
costs no memory.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from gradaudit.adapters._sparse import data_after

BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_READ_BLOCKS = 32  # read 1 MiB at a time
#: Longest record assembled. W&B asks that one ``wandb.log`` call stay under 25 MB
#: (docs.wandb.ai, "Experiments limits and performance"; media are files, not in the row), and
#: its other records (config, summary, console lines) are smaller: a longer record is no real
#: one, and is skipped unread.
MAX_RECORD = 64 << 20

_HEADER = struct.Struct("<IHB")
_TYPE_SEED = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


@dataclass
class LogDamage:
    """What a read had to skip; all zero for an intact file."""

    corrupt_blocks: int = 0
    first_bad_offset: int | None = None
    truncated: bool = False
    oversized: int = 0  # records over MAX_RECORD, skipped unread

    def _corrupt(self, offset: int) -> None:
        self.corrupt_blocks += 1
        if self.first_bad_offset is None:
            self.first_bad_offset = offset


def iter_records(stream: BinaryIO, start: int, damage: LogDamage) -> Iterator[bytes]:
    """Yield the records of a LevelDB log whose first chunk starts at file offset ``start``.

    ``stream`` must be positioned at offset 0 (block boundaries count from the file start).
    Problems are counted in ``damage`` instead of raised.
    """
    pending: list[bytes] | None = None
    pending_size = 0
    zeroed: int | None = None  # offset of zeroed space that a sound chunk may still follow
    base = 0  # file offset of buf[0]
    unpack = _HEADER.unpack_from
    crc32 = zlib.crc32
    seeds = _TYPE_SEED
    while True:
        buf = stream.read(BLOCK_SIZE * _READ_BLOCKS)
        if not buf:
            break
        size = len(buf)
        for block_start in range(0, size, BLOCK_SIZE):
            block_end = min(block_start + BLOCK_SIZE, size)
            partial_block = block_end - block_start < BLOCK_SIZE  # only the file's last block
            pos = block_start
            if base + block_start < start:
                pos = block_start + (start - base - block_start)
            while True:
                if pos + CHUNK_HEADER > block_end:
                    if partial_block and any(buf[pos:block_end]):
                        damage.truncated = True
                    break
                crc, length, kind = unpack(buf, pos)
                data_end = pos + CHUNK_HEADER + length
                if kind == 0 and length == 0 and crc == 0:
                    # Zeroed space (preallocation or padding): nothing more in this block. If a
                    # sound chunk follows it later, the zeros were damage (a block lost)
                    if zeroed is None:
                        zeroed = base + pos
                    break
                if data_end > block_end:
                    if partial_block:
                        damage.truncated = True
                    else:
                        damage._corrupt(base + pos)
                        pending = None  # a record cut in two by the damage
                    break
                seed = seeds.get(kind)
                data = buf[pos + CHUNK_HEADER : data_end]
                if seed is None or crc32(data, seed) != crc:
                    damage._corrupt(base + pos)
                    pending = None
                    break
                pos = data_end
                if zeroed is not None:
                    damage._corrupt(zeroed)
                    zeroed = None
                    pending = None
                if kind == FULL:
                    pending = None
                    yield data
                elif kind == FIRST:
                    pending = [data]
                    pending_size = len(data)
                elif pending is None:
                    # MIDDLE/LAST without its FIRST: the start was in a damaged block, or the
                    # record is over MAX_RECORD.
                    continue
                elif pending_size + len(data) > MAX_RECORD:
                    damage.oversized += 1
                    pending = None
                elif kind == MIDDLE:
                    pending.append(data)
                    pending_size += len(data)
                else:
                    pending.append(data)
                    record = b"".join(pending)
                    pending = None
                    yield record
        base += size
        if size < BLOCK_SIZE * _READ_BLOCKS:
            break
        if zeroed is not None and buf.count(0) == size:  # NUL-filled: a hole, maybe
            data = data_after(stream, base)
            if data is not None and data - data % BLOCK_SIZE > base:  # on to its block
                base = data - data % BLOCK_SIZE
                stream.seek(base)
    if pending is not None:
        damage.truncated = True
