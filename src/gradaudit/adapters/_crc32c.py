"""CRC32C (Castagnoli) for TFRecord framing: many short messages at once, in NumPy.

TensorBoard event files carry a CRC32C of every record's length field and payload. A pure-Python
byte loop over a million records takes seconds; a call per record into the optional ``crc32c``
package still costs ~0.3 µs of interpreter overhead per call. Here the work is vectorized
*across records*: messages of equal length are checked together, one byte column at a time.

The CRC is affine over GF(2): for a message ``x`` of ``m`` bytes,
``crc(x) = const(m) ^ XOR_j S[m-1-j][x_j]``, where ``S[k][v]`` is the (init 0, no final xor)
CRC of byte ``v`` followed by ``k`` zero bytes. With those positional tables one column costs a
table gather and an xor, with no serial dependency between columns. Messages longer than the
table are done in blocks, carrying the register from block to block.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

try:  # optional: used for long messages, and as a reference in tests
    import crc32c as _crc32c_pkg
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_pkg = None

POLY = 0x82F63B78  # reflected Castagnoli polynomial
MASK_DELTA = 0xA282EAD8
BLOCK = 256  # positional tables cover messages (and blocks) up to this many bytes


def _byte_table() -> np.ndarray:
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(POLY), crc >> 1).astype(np.uint32)
    return crc


TABLE = _byte_table()


def _positional_tables() -> np.ndarray:
    """``S[k][v]``: linear CRC of byte ``v`` then ``k`` zero bytes, for k < BLOCK."""
    tables = np.empty((BLOCK, 256), dtype=np.uint32)
    tables[0] = TABLE
    for k in range(1, BLOCK):
        prev = tables[k - 1]
        tables[k] = TABLE[prev & 0xFF] ^ (prev >> 8)
    return tables


_S: np.ndarray | None = None


def _tables() -> np.ndarray:
    global _S
    if _S is None:
        _S = _positional_tables()
    return _S


def _advance_int(crc: int, nbytes: int) -> int:
    """The register ``crc`` run through ``nbytes`` zero bytes (serial, for constants)."""
    table = TABLE.tolist()
    s = _tables()
    while nbytes >= BLOCK:
        crc = (
            int(s[BLOCK - 1][crc & 0xFF])
            ^ int(s[BLOCK - 2][(crc >> 8) & 0xFF])
            ^ int(s[BLOCK - 3][(crc >> 16) & 0xFF])
            ^ int(s[BLOCK - 4][crc >> 24])
        )
        nbytes -= BLOCK
    for _ in range(nbytes):
        crc = table[crc & 0xFF] ^ (crc >> 8)
    return crc


@lru_cache(maxsize=4096)
def _const(m: int) -> int:
    """``crc32c(b"\\0" * m)``: the init/final-xor part of the CRC of any m-byte message."""
    return _advance_int(0xFFFFFFFF, m) ^ 0xFFFFFFFF


def crc32c_python(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of one message with NumPy only (vectorized along the message)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return 0
    return int(crc32c_many(arr, np.zeros(1, np.int64), np.array([arr.size], np.int64))[0])


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of one message: the ``crc32c`` package when installed, else NumPy."""
    if _crc32c_pkg is not None:
        return int(_crc32c_pkg.crc32c(data))
    return crc32c_python(data)


def mask(crc: np.ndarray | int) -> np.ndarray | int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant (mod 2**32)."""
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint32, copy=False)
        return ((c >> np.uint32(15)) | (c << np.uint32(17))) + np.uint32(MASK_DELTA)
    crc &= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


_T16: dict[int, np.ndarray] = {}
T16_MAX = 96  # messages up to this length use 16-bit tables (256 KiB each, cached)


def _t16(k: int) -> np.ndarray:
    """Table for a little-endian byte pair followed by ``k`` bytes: 2 bytes per gather."""
    t = _T16.get(k)
    if t is None:
        s = _tables()
        t = _T16[k] = (s[k][:, None] ^ s[k + 1][None, :]).reshape(-1)
    return t


def _linear_short(buf: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """Linear CRC of ``m``-byte messages (m <= BLOCK): rows gathered, then column by column."""
    s = _tables()
    out = np.empty(starts.size, dtype=np.uint32)
    window = np.lib.stride_tricks.as_strided(buf, shape=(buf.size - m + 1, m), strides=(1, 1))
    rows = 16384
    tmp = np.empty(min(rows, starts.size), dtype=np.uint32)
    for r0 in range(0, starts.size, rows):
        mat = window[starts[r0 : r0 + rows]]
        n = mat.shape[0]
        reg = np.zeros(n, dtype=np.uint32)
        t = tmp[:n]
        if m <= T16_MAX:
            if m & 1:
                np.take(s[m - 1], mat[:, 0], out=t)
                reg ^= t
                mat = np.ascontiguousarray(mat[:, 1:])
            pairs = mat.view(np.uint16)
            h = pairs.shape[1]
            for j in range(h):
                np.take(_t16(2 * (h - 1 - j)), pairs[:, j], out=t)
                reg ^= t
        else:
            for j in range(m):
                np.take(s[m - 1 - j], mat[:, j], out=t)
                reg ^= t
        out[r0 : r0 + n] = reg
    return out


def _linear_long(buf: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """Linear CRC of long messages: blocks of BLOCK bytes, the register carried across."""
    s = _tables()
    flat = s.reshape(-1)
    out = np.empty(starts.size, dtype=np.uint32)
    first = m % BLOCK or BLOCK
    for i, st in enumerate(starts.tolist()):
        reg = 0
        j0, b = 0, first
        while j0 < m:
            if j0:
                reg = (
                    int(s[b - 1][reg & 0xFF])
                    ^ int(s[b - 2][(reg >> 8) & 0xFF])
                    ^ int(s[b - 3][(reg >> 16) & 0xFF])
                    ^ int(s[b - 4][reg >> 24])
                )
            idx = buf[st + j0 : st + j0 + b].astype(np.intp)
            idx += np.arange(b - 1, -1, -1, dtype=np.intp) * 256
            reg ^= int(np.bitwise_xor.reduce(flat[idx]))
            j0 += b
            b = BLOCK
        out[i] = reg
    return out


def crc32c_many(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC32C of each message ``buf[starts[i] : starts[i] + lengths[i]]`` (uint32 array).

    ``buf`` is a 1-D uint8 array; messages are grouped by length and each group is checked
    in one vectorized pass.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(starts.size, dtype=np.uint32)
    if starts.size == 0:
        return out
    if lengths.size <= 64:
        uniq = sorted(set(lengths.tolist()))
    elif int(lengths.max()) < 1 << 20 and int(lengths.min()) >= 0:
        uniq = np.flatnonzero(np.bincount(lengths)).tolist()
    else:
        uniq = np.unique(lengths).tolist()
    if len(uniq) <= 48:
        groups = ((int(m), np.flatnonzero(lengths == m)) for m in uniq)
    else:
        order = np.argsort(lengths, kind="stable")
        sl = lengths[order]
        cuts = np.flatnonzero(np.diff(sl)) + 1
        groups = (
            (int(sl[a]), order[a:b])
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, sl.size], strict=True)
        )
    for m, idx in groups:
        if m == 0:
            out[idx] = 0
            continue
        if m <= BLOCK:
            lin = _linear_short(buf, starts[idx], m)
        elif _crc32c_pkg is not None:
            out[idx] = crc32c_many_package(buf, starts[idx], lengths[idx])
            continue
        else:
            lin = _linear_long(buf, starts[idx], m)
        out[idx] = lin ^ np.uint32(_const(m))
    return out


def crc32c_many_package(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Same as :func:`crc32c_many`, one ``crc32c`` package call per message (reference)."""
    if _crc32c_pkg is None:
        raise ImportError("the optional 'crc32c' package is not installed")
    mv = memoryview(buf)
    fn = _crc32c_pkg.crc32c
    return np.fromiter(
        (fn(mv[a : a + n]) for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)),
        dtype=np.uint32,
        count=len(starts),
    )
