"""TensorBoard event files (``*tfevents*``): every scalar point, without TensorFlow.

A run is a folder that directly holds event files; they are read in sorted file-name order
(the timestamp leads the name, so that is chronological) and concatenated in write order;
:func:`gradaudit.series.canonical_frame` then applies TensorBoard's "later write wins" rule
across a resume.

Scalars are read from ``Summary.Value.simple_value`` (torch / tensorboardX ``add_scalar``, TF1)
and from one-element float tensors (DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16) whose plugin is
``scalars`` (TF2 ``tf.summary.scalar``, torch ``new_style=True``). Histograms, images, text,
hparams and other plugins' tensors are skipped.

``add_scalars(tag, {key: value})`` (torch, tensorboardX) writes each key into its own sub-folder
of the run's folder, each holding the same ``tag``: torch names it ``tag_key`` (``/`` in the tag
made ``_``), tensorboardX ``tag/key``. TensorBoard shows such a sub-folder as a run of its own;
here (:func:`regroup`) a sub-folder is part of the run whose folder holds it where its name is
what ``add_scalars`` would call it for every scalar tag at the start of its first file with
scalars, and its tag reads as ``tag/key`` (``add_scalars("grad_norm", {"total": g})`` ->
``grad_norm/total``), so the grad norm and the loss logged beside it are audited together. A
folder with event files under no run's folder stays a run (Keras' ``logs/train`` and
``logs/validation``), and so does one that logs other tags (a sweep run in ``exp/lr_3e-3``).

Speed: the common record layouts (one ``simple_value``, or one torch-style scalar tensor, per
event) are decoded for all records of a chunk at once with NumPy; only records of another shape
go through a small general protobuf decoder. Tags are grouped by length and a 64-bit hash of
their bytes, every row then checked byte for byte, so no Python object is made per event.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import polars as pl

from gradaudit.adapters._tfrecord import (
    HEADER,
    Chunk,
    FileStatus,
    read_chunks,
    unaligned,
    walk_records,
)
from gradaudit.adapters.base import RawRun, Source
from gradaudit.errors import NotATrainingLog, ReadError
from gradaudit.series import FileProblem

FORMAT = "tensorboard"

DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF = 1, 2, 14, 19
SCALARS_PLUGIN = "scalars"
HPARAMS_PLUGIN = "hparams"

# torch new_style scalar: after the tag, this tail with the float32 at offset 6.
_TORCH_TENSOR_TAIL = bytes.fromhex("42080801" "2a04") + b"\0\0\0\0" + bytes.fromhex(
    "4a0b0a090a07"
) + b"scalars"
_TAIL_VALUE_AT = 6


#: Most values one event's Summary may hold. torch, tensorboardX, Keras and TF2 write one per
#: event; a TF1 ``merge_all`` summary holds every summary op of the graph, hundreds or a few
#: thousand for a large model. An event of more is no real one: it is skipped and reported, its
#: values decoded no further than this (each costs a Python tuple on this path).
MAX_VALUES = 1 << 16

SNIFF = 1 << 16  # bytes of a sub-folder's event file read to learn its tags
SNIFF_FILES = 8  # a sub-folder's event files sniffed for one that holds a scalar
SUBRUN_DEPTH = 4  # folder levels an add_scalars sub-folder may lie below its run's folder


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """The event files directly in ``directory`` form one run named ``"."``."""
    events = sorted(
        (f for f in files if "tfevents" in f.name and not f.name.endswith(".profile-empty")),
        key=lambda f: f.name,
    )
    return [Source(FORMAT, ".", tuple(events))] if events else []


class _Tags:
    """Tag strings of one source, each with a small integer code."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.codes: dict[str, int] = {}
        self.by_bytes: dict[bytes, int] = {}
        self.plugin: dict[str, str] = {}  # first plugin name seen per tag (TF1 strips repeats)

    def code(self, name: str) -> int:
        c = self.codes.get(name)
        if c is None:
            c = self.codes[name] = len(self.names)
            self.names.append(name)
        return c

    def code_of_bytes(self, raw: bytes) -> int:
        c = self.by_bytes.get(raw)
        if c is None:
            c = self.by_bytes[raw] = self.code(raw.decode("utf-8", errors="replace"))
        return c


# ---------------------------------------------------------------------------------------------
# Fast path: the common layouts, decoded for all records at once.

_PRIME = np.uint64(0x100000001B3)
_SEED = np.uint64(0xCBF29CE484222325)


def _group_words(words: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Group rows whose words are all equal: (group of each row, one row of each group).

    Rows are grouped by a 64-bit hash of their words, then every row is checked against its
    group's representative; only if two different tags share a hash (never seen in practice,
    but the input is untrusted) are the rows grouped exactly by sorting.
    """
    h = np.full(n, _SEED, dtype=np.uint64)
    for word in words:
        h ^= word
        h *= _PRIME
    if n and bool((h == h[0]).all()):
        local = np.zeros(n, dtype=np.int64)
        first = np.zeros(1, dtype=np.int64)
    else:
        uniq = pl.Series(h, dtype=pl.UInt64).unique().sort().to_numpy()
        local = np.searchsorted(uniq, h)
        first = np.empty(uniq.size, dtype=np.int64)
        first[local] = np.arange(n)
    for word in words:
        if not bool((word == word[first][local]).all()):
            mat = np.stack(words, axis=1)
            _, first, local = np.unique(mat, axis=0, return_index=True, return_inverse=True)
            return local.reshape(-1), first
    return local, first


def _tag_codes(buf: np.ndarray, tpos: np.ndarray, tlen: np.ndarray, tags: _Tags) -> np.ndarray:
    """Codes of the tags at ``buf[tpos : tpos + tlen]``, grouped by length and then by their
    8-byte words (checked exactly), so no Python object is made per row."""
    codes = np.empty(tpos.size, dtype=np.int32)
    if tpos.size == 0:
        return codes
    u64 = unaligned(buf, "<u8")
    tend = tpos + tlen
    lengths = np.flatnonzero(np.bincount(tlen)).tolist()
    for ln in lengths:
        rows = np.flatnonzero(tlen == ln) if len(lengths) > 1 else None
        end = tend if rows is None else tend[rows]
        words = []
        for k in range(1, (ln + 7) // 8 + 1):
            word = u64[end - 8 * k]  # end - 8k >= tpos - 7 >= 0: the tag follows a header
            spill = 8 * k - ln  # bytes of this word that lie before the tag
            if spill > 0:
                word &= np.uint64((1 << 64) - (1 << (8 * spill)))
            words.append(word)
        local, first = _group_words(words, end.size)
        first_rows = first if rows is None else rows[first]
        mapping = np.empty(first.size, dtype=np.int32)
        for i, row in enumerate(first_rows.tolist()):
            start = int(tpos[row])
            mapping[i] = tags.code_of_bytes(buf[start : start + ln].tobytes())
        if rows is None:
            codes[:] = mapping[local]
        else:
            codes[rows] = mapping[local]
    return codes


_VARINT4_MASK = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF], dtype=np.uint32)


def _varint4(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of at most 4 bytes at ``pos`` (< buf.size - 3): (value int64, byte count);
    count 0 where the varint is longer."""
    w = unaligned(buf, "<u4")[pos]
    stop = ~w & np.uint32(0x80808080)  # the high bit of the varint's last byte is clear
    low = stop & (~stop + np.uint32(1))  # the first such byte
    count = (low != 0).astype(np.int64)
    count += low > 0x80
    count += low > 0x8000
    count += low > 0x800000
    x = w & _VARINT4_MASK[count]
    v = x & np.uint32(0x7F)
    v |= (x >> np.uint32(1)) & np.uint32(0x3F80)
    v |= (x >> np.uint32(2)) & np.uint32(0x1FC000)
    v |= (x >> np.uint32(3)) & np.uint32(0xFE00000)
    return v.astype(np.int64), count


def _varint_at(buf: np.ndarray, pos: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vectorized varint decode at ``pos``: (value uint64, byte count, ok)."""
    value = np.zeros(pos.size, dtype=np.uint64)
    count = np.zeros(pos.size, dtype=np.int64)
    ok = np.ones(pos.size, dtype=bool)
    idx = np.arange(pos.size)
    p = np.minimum(pos, buf.size - 1)
    for k in range(10):
        b = buf[p]
        part = (b & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        if k == 0:
            value |= part
            count += 1
        else:
            value[idx] |= part
            count[idx] += 1
        more = b >= 0x80
        if not more.any():
            break
        idx, p = idx[more], np.minimum(p[more] + 1, buf.size - 1)
    else:
        ok[idx] = False  # still unterminated after 10 bytes: not a valid varint
    ok &= pos + count <= limit
    return value, count, ok


# After the step: 0x2A <summary len> 0x0A <value len> 0x0A <tag len>, lengths < 0x80.
_HEAD_MASK = np.uint64(0x80FF80FF80FF)
_HEAD_WANT = np.uint64(0x000A000A002A)


def _decode_fast(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """Decode records laid out as one scalar per event; returns (ok, step, value, wall, tpos,
    tlen) where ``ok`` marks the records that fit a fast layout (the others are not decoded).

    ``starts`` lie in the chunk, which ``PAD`` zero bytes follow, so fixed offsets up to
    ``PAD`` past a start can be read without a bounds check."""
    last = buf.size - 1
    p, end = starts, starts + lengths
    ok = (lengths >= 20) & (buf[p] == 0x09)
    wall = unaligned(buf, "<f8")[p + 1]
    q = p + 9
    has_step = buf[q] == 0x10
    step, count = _varint4(buf, q + 1)
    step[~has_step] = 0
    longer = np.flatnonzero(has_step & (count == 0))
    if longer.size:
        v, cnt, vok = _varint_at(buf, q[longer] + 1, end[longer])
        step[longer] = v.view(np.int64)
        count[longer] = cnt
        ok[longer] &= vok
    r = np.where(has_step, q + 1 + count, q)
    head = unaligned(buf, "<u8")[np.minimum(r, last - 7)]
    ok &= (head & _HEAD_MASK) == _HEAD_WANT
    slen = ((head >> np.uint64(8)) & np.uint64(0x7F)).astype(np.int64)
    vlen = ((head >> np.uint64(24)) & np.uint64(0x7F)).astype(np.int64)
    tlen = ((head >> np.uint64(40)) & np.uint64(0x7F)).astype(np.int64)
    ok &= (r + 2 + slen == end) & (slen == vlen + 2)
    tpos = r + 6
    vpos = np.minimum(tpos + tlen, last)
    marker = buf[vpos]
    simple = ok & (marker == 0x15) & (vlen == tlen + 7)
    value_at = vpos + 1
    tensor = ok & (marker == 0x42) & (vlen == tlen + 2 + len(_TORCH_TENSOR_TAIL))
    if tensor.any():
        ti = np.flatnonzero(tensor)
        width = len(_TORCH_TENSOR_TAIL)
        vp = np.minimum(vpos[ti], buf.size - width)
        tail = np.lib.stride_tricks.as_strided(buf, (buf.size - width + 1, width), (1, 1))[vp]
        want = np.frombuffer(_TORCH_TENSOR_TAIL, dtype=np.uint8)
        same = tail == want
        same[:, _TAIL_VALUE_AT : _TAIL_VALUE_AT + 4] = True
        tensor[ti] = same.all(axis=1)
        value_at = np.where(tensor, vpos + _TAIL_VALUE_AT, value_at)
    ok = simple | tensor
    with np.errstate(invalid="ignore"):  # signalling NaNs stay NaN
        value = unaligned(buf, "<f4")[np.minimum(value_at, buf.size - 4)].astype(np.float64)
    return ok, step, value, wall, tpos, tlen


# ---------------------------------------------------------------------------------------------
# General path: any event, one record at a time (records that are not in a fast layout).


class _Malformed(ValueError):
    pass


class _TooManyValues(_Malformed):
    """An event whose Summary holds more than :data:`MAX_VALUES` values."""


def _varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed("bad varint")
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _fields(b: bytes, i: int, end: int):
    """Yield ``(field, wire_type, value)``: an int for varints, else the value's offset (fixed
    types) or ``(start, stop)`` (length-delimited)."""
    while i < end:
        key, i = _varint(b, i, end)
        fn, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i, end)
            yield fn, wt, v
        elif wt == 1:
            if i + 8 > end:
                raise _Malformed("short fixed64")
            yield fn, wt, i
            i += 8
        elif wt == 2:
            n, i = _varint(b, i, end)
            if i + n > end:
                raise _Malformed("length past the end")
            yield fn, wt, (i, i + n)
            i += n
        elif wt == 5:
            if i + 4 > end:
                raise _Malformed("short fixed32")
            yield fn, wt, i
            i += 4
        else:
            raise _Malformed(f"wire type {wt}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _plugin_name(b: bytes, span: tuple[int, int]) -> str:
    for fn, wt, v in _fields(b, *span):
        if fn == 1 and wt == 2:  # plugin_data
            for fn2, wt2, v2 in _fields(b, *v):
                if fn2 == 1 and wt2 == 2:
                    return b[v2[0] : v2[1]].decode("utf-8", errors="replace")
    return ""


def _tensor_scalar(b: bytes, span: tuple[int, int]) -> float | None:
    """The value of a one-element float tensor, else None."""
    dtype = 0
    dims: list[int] | None = None
    content: bytes | None = None
    vals: list[float] = []
    halves: list[int] = []
    for fn, wt, v in _fields(b, *span):
        if fn == 1 and wt == 0:
            dtype = v
        elif fn == 2 and wt == 2:
            dims = []
            for fn2, wt2, v2 in _fields(b, *v):
                if fn2 == 2 and wt2 == 2:
                    size = 0
                    for fn3, wt3, v3 in _fields(b, *v2):
                        if fn3 == 1 and wt3 == 0:
                            size = _signed(v3)
                    dims.append(size)
        elif fn == 4 and wt == 2:
            content = b[v[0] : v[1]]
        elif fn == 5 and dtype in (0, DT_FLOAT):
            if wt == 5 and len(vals) < 2:  # (a second value is enough to know it is no scalar)
                vals.append(struct.unpack_from("<f", b, v)[0])
            elif wt == 2:  # (two values decoded at most: more is no scalar either way)
                vals.extend(x[0] for x in struct.iter_unpack("<f", b[v[0] : min(v[1], v[0] + 8)]))
        elif fn == 6:
            if wt == 1 and len(vals) < 2:
                vals.append(struct.unpack_from("<d", b, v)[0])
            elif wt == 2:
                vals.extend(x[0] for x in struct.iter_unpack("<d", b[v[0] : min(v[1], v[0] + 16)]))
        elif fn == 13:
            if wt == 0 and len(halves) < 2:
                halves.append(v)
            elif wt == 2:
                i, stop = v
                while i < stop and len(halves) < 2:
                    h, i = _varint(b, i, stop)
                    halves.append(h)
    # a scalar: every dim 1 (not their product: 300,000 dims of 2**62 multiplied as Python
    # integers took hours)
    if any(d != 1 for d in dims or ()):
        return None
    if dtype == DT_FLOAT:
        fmt = "<f"
    elif dtype == DT_DOUBLE:
        fmt = "<d"
    elif dtype == DT_HALF:
        fmt = "<e"
    elif dtype == DT_BFLOAT16:
        fmt = "bf16"
    else:
        return None
    if content is not None:
        if fmt == "bf16":
            if len(content) != 2:
                return None
            return struct.unpack("<f", b"\0\0" + content)[0]
        if len(content) != struct.calcsize(fmt):
            return None
        return struct.unpack(fmt, content)[0]
    if dtype in (DT_HALF, DT_BFLOAT16):
        if len(halves) > 1:
            return None
        bits = (halves[0] if halves else 0) & 0xFFFF
        if dtype == DT_HALF:
            return struct.unpack("<e", bits.to_bytes(2, "little"))[0]
        return struct.unpack("<f", (bits << 16).to_bytes(4, "little"))[0]
    if len(vals) > 1:
        return None
    return vals[0] if vals else 0.0


def _decode_event(b: bytes, tags: _Tags, out: list[tuple[int, int, float, float]]) -> None:
    """Append ``(step, tag code, value, wall_time)`` for each scalar in one Event payload."""
    wall = float("nan")
    step = 0
    summary: tuple[int, int] | None = None
    for fn, wt, v in _fields(b, 0, len(b)):
        if fn == 1 and wt == 1:
            wall = struct.unpack_from("<d", b, v)[0]
        elif fn == 2 and wt == 0:
            step = _signed(v)
        elif fn == 5 and wt == 2:
            summary = v
    if summary is None:
        return  # file_version, session_log, graph, ... : no scalars
    values = 0
    for fn, wt, vspan in _fields(b, *summary):
        if fn != 1 or wt != 2:
            continue
        values += 1
        if values > MAX_VALUES:
            raise _TooManyValues
        tag = ""
        simple: float | None = None
        tensor: tuple[int, int] | None = None
        plugin: str | None = None
        for fn2, wt2, v2 in _fields(b, *vspan):
            if fn2 == 1 and wt2 == 2:
                tag = b[v2[0] : v2[1]].decode("utf-8", errors="replace")
            elif fn2 == 2 and wt2 == 5:
                simple = struct.unpack_from("<f", b, v2)[0]
            elif fn2 == 8 and wt2 == 2:
                tensor = v2
            elif fn2 == 9 and wt2 == 2:
                plugin = _plugin_name(b, v2)
        if plugin is not None and tag not in tags.plugin:
            tags.plugin[tag] = plugin
        if simple is not None:
            out.append((step, tags.code(tag), simple, wall))
        elif tensor is not None:
            if (plugin if plugin is not None else tags.plugin.get(tag)) != SCALARS_PLUGIN:
                continue
            value = _tensor_scalar(b, tensor)
            if value is not None:
                out.append((step, tags.code(tag), value, wall))


# ---------------------------------------------------------------------------------------------


def _decode_chunk(chunk: Chunk, tags: _Tags, bad: list[int],
                  crowded: list[int]) -> tuple[np.ndarray, ...]:
    """Scalars of one chunk in write order: (step, code, value, wall); the records that could
    not be decoded go to ``bad``, those of over :data:`MAX_VALUES` values to ``crowded``."""
    buf, starts, lengths = chunk.buf, chunk.starts, chunk.lengths
    ok, step, value, wall, tpos, tlen = _decode_fast(buf, starts, lengths)
    fast = np.flatnonzero(ok)
    if fast.size == starts.size:
        codes = _tag_codes(buf, tpos, tlen, tags)
        return step, codes, value, wall
    codes = _tag_codes(buf, tpos[fast], tlen[fast], tags)
    slow_rows: list[tuple[int, int, float, float]] = []
    slow_order: list[int] = []
    for i in np.flatnonzero(~ok).tolist():
        s = int(starts[i])
        payload = buf[s : s + int(lengths[i])].tobytes()
        before = len(slow_rows)
        try:
            _decode_event(payload, tags, slow_rows)
        except (_Malformed, struct.error, IndexError) as exc:
            del slow_rows[before:]
            (crowded if isinstance(exc, _TooManyValues) else bad).append(int(chunk.index[i]))
            continue
        slow_order.extend([i] * (len(slow_rows) - before))
    if not slow_rows:
        return step[fast], codes, value[fast], wall[fast]
    s_step, s_code, s_value, s_wall = zip(*slow_rows, strict=True)
    order_key = np.concatenate([fast, np.asarray(slow_order, dtype=np.int64)])
    perm = np.argsort(order_key, kind="stable")
    return (
        np.concatenate([step[fast], np.asarray(s_step, dtype=np.int64)])[perm],
        np.concatenate([codes, np.asarray(s_code, dtype=np.int32)])[perm],
        np.concatenate([value[fast], np.asarray(s_value, dtype=np.float64)])[perm],
        np.concatenate([wall[fast], np.asarray(s_wall, dtype=np.float64)])[perm],
    )


def read_file(path: Path, tags: _Tags) -> tuple[list[tuple[np.ndarray, ...]], FileStatus]:
    """Decode one event file: chunks of (step, code, value, wall) and what went wrong."""
    status = FileStatus()
    parts: list[tuple[np.ndarray, ...]] = []
    bad: list[int] = []
    crowded: list[int] = []
    for chunk in read_chunks(path, status):
        parts.append(_decode_chunk(chunk, tags, bad, crowded))
    if bad:
        status.problems.append(
            f"{len(bad)} record(s) could not be decoded as events (first: record {bad[0]})"
        )
    if crowded:
        status.problems.append(
            f"{len(crowded)} event(s) of over {MAX_VALUES:,} values skipped (first: record "
            f"{crowded[0]}; writers put one, or a few thousand at most, in an event)"
        )
    return parts, status


def _hparams_record(source: Source, tags: _Tags, code: np.ndarray,
                    problems: list[FileProblem]) -> bool:
    """Whether the source is what ``add_hparams`` (torch, tensorboardX) writes: a sub-folder of
    a run's folder holding the hyperparameters and one point per metric. (Lightning's
    ``log_hyperparams`` writes into the run's own files: that folder stays a run.)"""
    if HPARAMS_PLUGIN not in tags.plugin.values() or problems:
        return False
    if code.size and np.bincount(code).max() > 1:
        return False
    parent = Path(source.files[0]).parent.parent
    try:
        return any("tfevents" in f.name and f.is_file() for f in parent.iterdir())
    except OSError:
        return False


def subrun_key(rel: str, tag: str) -> str | None:
    """The key of ``add_scalars(tag, {key: ...})`` that wrote the sub-folder ``rel`` (a path
    relative to its run's folder), or None when ``add_scalars`` would not have named it so."""
    for head in (tag + "/", tag.replace("/", "_") + "_"):
        if tag and rel.startswith(head) and len(rel) > len(head):
            return rel[len(head):]
    return None


def _scalar_tags(path: Path) -> set[str] | None:
    """The scalar tags in the first :data:`SNIFF` bytes of an event file (empty: none there;
    None: the bytes are no sound event records)."""
    try:
        with open(path, "rb") as fh:
            b = fh.read(SNIFF)
    except OSError:
        return None
    tags, out = _Tags(), []
    # the records that fit (a record the sniff cut, or a corrupt length, ends the walk: what
    # came before is judged)
    heads, _ = walk_records(np.frombuffer(b, np.uint8), len(b), 0, len(b))
    for i in heads:
        (n,) = struct.unpack_from("<Q", b, i)
        try:
            _decode_event(b[i + HEADER : i + HEADER + n], tags, out)
        except (_Malformed, struct.error, IndexError, UnicodeError):
            return None
    return {tags.names[c] for _, c, _, _ in out}


def _written_by_add_scalars(files: tuple[Path, ...], rel: str) -> bool:
    """Whether the sub-folder ``rel`` (its event files ``files``) is one ``add_scalars``
    wrote: the first of its files with a scalar (a job killed before its first flush leaves
    one without) holds no tag but the one ``add_scalars`` would have named this folder for."""
    for path in files[:SNIFF_FILES]:
        tags = _scalar_tags(path)
        if tags is None:
            return False
        if tags:
            return all(subrun_key(rel, t) for t in tags)
    return False


def regroup(sources: list[Source]) -> list[Source]:
    """Fold ``add_scalars`` sub-folders into the run whose folder holds them (module doc)."""
    by_dir = {s.files[0].parent: i for i, s in enumerate(sources) if s.files}
    into: dict[int, int] = {}
    for i, s in enumerate(sources):
        if not s.files:
            continue
        d = s.files[0].parent
        for anc in d.parents[:SUBRUN_DEPTH]:
            j = by_dir.get(anc)
            if j is not None:
                if _written_by_add_scalars(s.files, d.relative_to(anc).as_posix()):
                    into[i] = j
                break
    if not into:
        return sources

    def root(i: int) -> int:
        seen = {i}
        while i in into and into[i] not in seen:
            i = into[i]
            seen.add(i)
        return i

    extra: dict[int, list[Path]] = {}
    for i in sorted(into, key=lambda i: sources[i].files[0].parent.as_posix()):
        extra.setdefault(root(i), []).extend(sources[i].files)
    return [Source(s.format, s.name, s.files + tuple(extra.get(i, ())))
            for i, s in enumerate(sources) if i not in into]


def _as_subrun(got: list[tuple[np.ndarray, ...]], rel: str, tags: _Tags,
               renamed: dict[str, str]) -> list[tuple[np.ndarray, ...]]:
    """``got`` (a sub-folder ``rel``'s chunks) with each tag ``T`` read as ``T/key``
    (:func:`subrun_key`), or as ``rel/T`` where ``add_scalars`` would not have written it."""
    if not got:
        return got
    lut = np.arange(len(tags.names), dtype=np.int32)
    for c in np.unique(np.concatenate([part[1] for part in got])).tolist():
        old = tags.names[c]
        key = subrun_key(rel, old)
        new = f"{old}/{key}" if key else f"{rel}/{old}"
        renamed[rel] = new
        lut[c] = tags.code(new)
    return [(st, lut[code], val, wall) for st, code, val, wall in got]


def read(source: Source) -> list[RawRun]:
    """Read the event files of one run, in order, into one frame of points in write order."""
    tags = _Tags()
    parts: list[tuple[np.ndarray, ...]] = []
    problems: list[FileProblem] = []
    n_records = 0
    run_dir = min((Path(f).parent for f in source.files), key=lambda d: len(d.parts),
                  default=Path("."))
    renamed: dict[str, str] = {}  # add_scalars sub-folder -> the tag it is read as
    for path in source.files:
        try:
            got, status = read_file(Path(path), tags)
        except OSError as exc:
            problems.append(FileProblem(str(path), f"could not read the file: {exc}"))
            continue
        folder = Path(path).parent
        if folder != run_dir and folder.is_relative_to(run_dir):  # an add_scalars sub-folder
            got = _as_subrun(got, folder.relative_to(run_dir).as_posix(), tags, renamed)
        parts.extend(got)
        n_records += status.n_records
        problems.extend(FileProblem(str(path), msg) for msg in status.problems)
    if n_records == 0 and problems:
        raise ReadError(
            "no event records could be read: "
            + "; ".join(f"{p.file}: {p.message}" for p in problems)
        )
    # One column at a time, each chunk's piece dropped once copied: peak memory stays near
    # the size of the output arrays.
    dtypes = (np.int64, np.int32, np.float64, np.float64)
    pieces = [list(col) for col in zip(*parts, strict=True)] if parts else [[], [], [], []]
    parts.clear()
    cols: list[np.ndarray] = []
    for i, dtype in enumerate(dtypes):
        cols.append(np.concatenate(pieces[i]) if pieces[i] else np.empty(0, dtype))
        pieces[i].clear()
    step, code, value, wall = cols
    del cols
    if _hparams_record(source, tags, code, problems):
        raise NotATrainingLog("an hparams record (add_hparams), not training curves")
    tag = pl.Series("tag", tags.names, dtype=pl.Categorical).gather(code)
    del code
    frame = pl.DataFrame({"step": step, "tag": tag, "value": value, "wall_time": wall})
    notes = []
    if renamed:
        shown = [rel if rel == t else f"{rel} as {t!r}" for rel, t in sorted(renamed.items())]
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        notes.append("add_scalars sub-folders read into this run: " + ", ".join(shown[:5])
                     + more)
    return [RawRun(points=frame, problems=problems, notes=notes)]
