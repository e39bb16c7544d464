"""Weights & Biases run files (``run-<id>.wandb``), read without the wandb package.

A ``.wandb`` file is W&B's transaction log of a run: a 7-byte header (``:W&B``, magic 0xBEE1
little-endian, version 0) followed by LevelDB-log framed protobuf ``Record`` messages
(``wandb/proto/wandb_internal.proto``). Only history records are read:
``Record.history`` (field 2) -> ``HistoryRecord.item`` (1) -> ``HistoryItem`` with ``key`` (1,
older writers) or ``nested_key`` (2, repeated, joined with ``"/"``) and ``value_json`` (16).

Steps: each history row's ``_step`` (falling back to ``HistoryRecord.step.num``); a row that
carries a trainer step (``train/global_step`` from Hugging Face, ``trainer/global_step`` from
Lightning, the ``step_metric`` a ``define_metric`` call named: ``Record.metric`` (12) ->
``MetricRecord.step_metric`` (4), or the TensorBoard step that ``sync_tensorboard`` copies into
``global_step``) is placed at that step instead. ``_timestamp`` is the wall time. Values that
are not numbers in JSON (strings, booleans, dicts such as histograms or images, lists) are
skipped; ``NaN``/``Infinity``/``-Infinity`` are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gradaudit.adapters._leveldb_log import MAX_RECORD, LogDamage, iter_records
from gradaudit.adapters._protowire import WireError, iter_fields, read_varint
from gradaudit.adapters.base import STEP_LIMIT, RawRun, Source
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem, group_order

FORMAT = "wandb"

MAGIC = b":W&B\xe1\xbe"
FILE_HEADER = 7
SUPPORTED_VERSION = 0

#: Logged trainer steps, preferred over ``_step`` in the rows that carry them.
STEP_KEYS: tuple[str, ...] = ("train/global_step", "trainer/global_step")
#: Where ``wandb.init(sync_tensorboard=True)`` puts each TensorBoard event's step.
TB_STEP_KEY = "global_step"
#: W&B bookkeeping keys that are not metrics.
INTERNAL_KEYS: tuple[str, ...] = ("_step", "_runtime", "_timestamp")

# Codes of the keys handled specially; metric codes start after them.
_C_STEP, _C_TIME, _C_RUNTIME = 0, 1, 2
_C_GLOBAL = (3, 4)
_FIRST_METRIC = 5
_NUMERIC_START = frozenset(b"-0123456789NI")
_KEY_TAGS = (0x0A, 0x12)
_HISTORY_KEY = 0x12  # Record.history (field 2, length-delimited)
_METRIC_KEY = 0x62  # Record.metric (field 12, length-delimited)
_TB_KEY = 0x4A  # Record.tbrecord (field 9): a TensorBoard log folder W&B syncs into the run
_TELEMETRY_KEY = 0x5A  # Record.telemetry (field 11)
_TB_FEATURES = (34, 35)  # Feature.tensorboard_patch, .tensorboard_sync (TelemetryRecord.feature)
_RUN_KEY = 0x8A  # Record.run (field 17, length-delimited; the varint key 0x8A 0x01)
_ROW_BATCH = 1 << 14  # history rows decoded per NumPy batch (its temporaries: ~40 MB)
#: Most fields a history row may hold (its items, and its step). W&B asks that a whole project
#: keep under 10,000 distinct metrics (docs.wandb.ai, "Experiments limits and performance"),
#: and a row holds each of its keys once: real rows hold thousands of items at most (a large
#: model's per-layer norms and histograms). A row of more is skipped and reported, its fields
#: walked no further than this: the walk's cost grows with the widest row of a batch.
MAX_ROW_ITEMS = 1 << 16
_PAD = 512  # zero bytes after a batch, so lockstep reads past a malformed end stay in bounds
_NUMERIC_TABLE = np.zeros(256, bool)
_NUMERIC_TABLE[list(_NUMERIC_START)] = True
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)


def _usable_step(v: np.ndarray) -> np.ndarray:
    """Step values that are integers in int64 range (not NaN, not huge)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (np.abs(v) < STEP_LIMIT) & (v == np.floor(v))


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """One source per ``*.wandb`` file; the folder holding it is the run (name ``"."``)."""
    return [Source(FORMAT, ".", (f,)) for f in sorted(files) if f.name.endswith(".wandb")]


#: A run folder as wandb names it: ``[offline-]run-<YYYYmmdd_HHMMSS>-<run id>``.
_RUN_DIR = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9_-]+)$")


def _run_key(source: Source) -> tuple[Path, str, str] | None:
    """``(parent folder, run id, start time)`` of a source in a wandb-named run folder."""
    if not source.files:
        return None
    folder = source.files[0].parent
    m = _RUN_DIR.match(folder.name)
    return (folder.parent, m.group(2), m.group(1)) if m else None


def regroup(sources: list[Source]) -> list[Source]:
    """Fold the folders of a resumed run into one run: ``wandb.init(id=..., resume=...)`` after
    a crash writes a new ``run-<time>-<id>`` folder with the same id, and ``wandb sync`` uploads
    both into one run. The folders are read in time order (a later write of a step wins); the
    run is named by its first folder."""
    groups: dict[tuple[Path, str], list[tuple[str, int]]] = {}
    for i, src in enumerate(sources):
        key = _run_key(src)
        if key is not None:
            groups.setdefault(key[:2], []).append((key[2], i))
    first_of: dict[int, list[int]] = {}
    merged: set[int] = set()
    for members in groups.values():
        if len(members) > 1:
            order = [i for _, i in sorted(members)]
            first_of[order[0]] = order
            merged.update(order[1:])
    if not first_of:
        return sources
    out = []
    for i, src in enumerate(sources):
        if i in merged:
            continue
        files = tuple(f for j in first_of.get(i, [i]) for f in sources[j].files)
        out.append(Source(src.format, src.name, files))
    return out


class _KeyTable:
    """Maps the raw key bytes of a history item to a small integer code."""

    def __init__(self) -> None:
        self.names: list[str] = ["_step", "_timestamp", "_runtime", *STEP_KEYS]
        self._by_name = {n: i for i, n in enumerate(self.names)}
        self.by_raw: dict[bytes, int] = {}

    def lookup(self, name: str) -> int | None:
        """The code of a key seen by name, or None."""
        return self._by_name.get(name)

    def code(self, raw: bytes) -> int:
        """Code of an item's key fields (``raw`` = the item bytes before its value)."""
        code = self.by_raw.get(raw)
        if code is not None:
            return code
        key = ""
        nested: list[str] = []
        for number, wire, a, b in iter_fields(raw):
            if wire != 2:
                continue
            text = raw[a:b].decode("utf-8", "replace")
            if number == 1:
                key = text
            elif number == 2:
                nested.append(text)
        name = "/".join(nested) if nested else key
        code = self._by_name.get(name)
        if code is None:
            code = len(self.names)
            self.names.append(name)
            self._by_name[name] = code
        self.by_raw[raw] = code
        return code


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One field at ``pos``: ``(key, start, stop)``; LEN payloads are ``buf[start:stop]``."""
    key, pos = read_varint(buf, pos, end)
    wire = key & 7
    if wire == 2:
        size, pos = read_varint(buf, pos, end)
        stop = pos + size
    elif wire == 0:
        _, stop = read_varint(buf, pos, end)
    elif wire == 1:
        stop = pos + 8
    elif wire == 5:
        stop = pos + 4
    else:
        raise WireError(f"unsupported wire type {wire}")
    if stop > end:
        raise WireError("field runs past the end of its message")
    return key, pos, stop


def _field_spans(buf: bytes, pos: int) -> dict[int, tuple[int, int]]:
    """``{field key: (start, stop)}`` of a record's fields from ``pos`` (the last of each key),
    for records not in the usual field order: where ``Record.history``, ``.metric`` or ``.run``
    is."""
    end = len(buf)
    found: dict[int, tuple[int, int]] = {}
    while pos < end:
        key, start, stop = _field(buf, pos, end)
        found[key] = (start, stop)
        pos = stop
    return found


def _item_slow(buf: bytes, start: int, stop: int) -> tuple[int, int] | None:
    """A history item in any shape: ``(end of its key fields, start of value_json)``."""
    q = start
    while q < stop and buf[q] in _KEY_TAGS:
        n, q = read_varint(buf, q + 1, stop)
        q += n
    if q == start or q + 2 > stop or buf[q] != 0x82 or buf[q + 1] != 0x01:
        return None
    n, vstart = read_varint(buf, q + 2, stop)
    if vstart + n != stop:
        return None
    return q, vstart


def _step_num(buf: bytes, start: int, stop: int) -> int:
    """``HistoryStep.num``; -1 when absent."""
    num = -1
    for number, wire, a, _ in iter_fields(buf, start, stop):
        if number == 1 and wire == 0:
            num = a
    return num


class _RowTooWide(WireError):
    """A history row of more than :data:`MAX_ROW_ITEMS` items."""


def _decode_history(buf: bytes, start: int, end: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """Careful decoder of one ``HistoryRecord``: ``([(raw key, value_json)], step num)``.

    Numeric-looking values only. Raises :class:`WireError` for malformed bytes, and
    :class:`_RowTooWide` (before decoding more) for a row too wide.
    """
    points: list[tuple[bytes, bytes]] = []
    step_num = -1
    for k, (number, wire, a, b) in enumerate(iter_fields(buf, start, end)):
        if k > MAX_ROW_ITEMS:
            raise _RowTooWide
        if wire != 2:
            continue
        if number == 2:
            step_num = _step_num(buf, a, b)
        elif number == 1:
            item = _item_slow(buf, a, b)
            if item is None:
                continue
            q, vstart = item
            if vstart < b and buf[vstart] in _NUMERIC_START:
                points.append((buf[a:q], buf[vstart:b]))
    return points, step_num


def _parse_numbers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """JSON number texts (binary) -> ``(float64 values, parsed ok)``; NaN/Infinity included.
    A text that is not valid UTF-8 (a damaged value) is no number; the others still are."""
    try:
        strings = texts.cast(pl.String, strict=False)
    except pl.exceptions.ComputeError:  # polars refuses the whole batch for one bad text
        strings = pl.Series([None if t is None else t.decode("utf-8", "replace")
                             for t in texts.to_list()], dtype=pl.String)
    parsed = strings.cast(pl.Float64, strict=False)
    return parsed.fill_null(float("nan")).to_numpy(), parsed.is_not_null().to_numpy()


def _gather_spans(arr: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> pl.Series:
    """The byte spans ``arr[starts[i]:stops[i]]`` as one binary Series (no Python loop)."""
    lengths = stops - starts
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # index = starts[i] + j for the j-th byte of span i, built as a cumulative sum of steps.
    steps = np.ones(int(offsets[-1]), np.int64)
    nonempty = lengths > 0
    firsts = offsets[:-1][nonempty]
    if firsts.size:
        jumps = starts[nonempty]
        steps[firsts[1:]] = jumps[1:] - (jumps[:-1] + lengths[nonempty][:-1]) + 1
        steps[0] = jumps[0]
    data = arr[np.cumsum(steps, out=steps)]
    spans = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), lengths.size, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pl.Series(pl.from_arrow(spans))


class _History:
    """Columns accumulated from history records: NumPy arrays, no Python object per point.

    The per-record Python work is only to find the history payload; payloads are decoded in
    batches with NumPy, all rows in lockstep (the k-th item of every row at once). Rows in an
    unusual shape are decoded one by one by :func:`_decode_history`.
    """

    def __init__(self) -> None:
        self.keys = _KeyTable()
        self.payloads: list[bytes] = []  # history payloads not yet decoded
        # metric points (codes >= _FIRST_METRIC): key code, value, row
        self.codes: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        # per row: HistoryStep.num (-1: none), the usable _step (NaN: none), _timestamp (NaN)
        self.step_num: list[np.ndarray] = []
        self.row_step: list[np.ndarray] = []
        self.row_wall: list[np.ndarray] = []
        # trainer steps (_C_GLOBAL codes): (rows, values), few rows carry them
        self.global_steps: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {
            c: [] for c in _C_GLOBAL}
        self.n_rows = 0
        self.bad = 0
        self.too_wide = 0  # rows of more than MAX_ROW_ITEMS items, skipped
        self.breaks: list[int] = []  # rows before which the file was damaged (rows were lost)
        self.pending_breaks: list[int] = []  # the same, as places in ``payloads``
        self.lost: list[tuple[int, int, int]] = []  # steps missing there (set by to_frame)
        self.step_metrics: list[str] = []  # define_metric(..., step_metric=X) axes, in order
        self.display: tuple[str, str] | None = None  # the run's (display name, project)
        self.tb_synced = False  # W&B syncs TensorBoard logs into this run (sync_tensorboard)
        self.parts: list[int] = []  # the first row of each file read (a resume starts one)

    def _run(self, payload: bytes) -> None:
        """Note ``RunRecord.display_name`` (8) and ``project`` (3)."""
        got = {n: payload[a:b].decode("utf-8", "replace") for n, w, a, b in iter_fields(payload)
               if w == 2 and n in (3, 8)}
        if got.get(8):
            self.display = (got[8], got.get(3, ""))

    def _metric(self, payload: bytes) -> None:
        """Note the ``step_metric`` (field 4) of a ``MetricRecord`` (``Record.metric``, 12)
        defined for every metric (``glob_name`` (2) ``"*"``): an axis for some metrics only
        (``define_metric("val/*", step_metric="epoch")``) is no step for the rest."""
        got = {n: payload[a:b].decode("utf-8", "replace") for n, w, a, b in iter_fields(payload)
               if w == 2 and n in (2, 4)}
        name = got.get(4)
        if got.get(2) == "*" and name and name not in self.step_metrics:
            self.step_metrics.append(name)

    def _telemetry(self, payload: bytes) -> None:
        """Note a ``TelemetryRecord`` whose ``feature`` (3) says TensorBoard is synced."""
        for n, w, a, b in iter_fields(payload):
            if n == 3 and w == 2 and any(
                    f in _TB_FEATURES and fw == 0 and v
                    for f, fw, v, _ in iter_fields(payload, a, b)):
                self.tb_synced = True

    def add_records(self, records: Iterable[bytes], damage: LogDamage | None = None) -> int:
        """Take ``Record`` messages; history ones become rows. Returns how many were invalid.
        Where ``damage`` grows between two records, the row that follows is noted in
        ``breaks``: the rows logged in between are lost."""
        payloads = self.payloads
        append = payloads.append
        bad = 0
        seen = 0
        for buf in records:
            if damage is not None and damage.corrupt_blocks + bad != seen:
                seen = damage.corrupt_blocks + bad
                self.pending_breaks.append(len(payloads))
            try:
                pos = 0
                if buf[0] == 0x08:  # Record.num
                    pos = 1
                    while buf[pos] & 0x80:
                        pos += 1
                    pos += 1
                tag = buf[pos]
                if tag == _HISTORY_KEY:
                    size = buf[pos + 1]
                    if size < 0x80:
                        pos += 2
                    elif buf[pos + 2] < 0x80:
                        size = (size & 0x7F) | (buf[pos + 2] << 7)
                        pos += 3
                    else:
                        size, pos = read_varint(buf, pos + 1)
                    end = pos + size
                    if end > len(buf):
                        raise WireError("history runs past the end of the record")
                elif (0x1A <= tag <= 0x7A and tag & 7 == 2
                      and tag not in (_METRIC_KEY, _TB_KEY, _TELEMETRY_KEY)):
                    continue  # another record type (summary, output, ...): a oneof
                else:
                    spans = _field_spans(buf, pos)
                    span = spans.get(_HISTORY_KEY)
                    if span is None:
                        metric, run = spans.get(_METRIC_KEY), spans.get(_RUN_KEY)
                        telemetry = spans.get(_TELEMETRY_KEY)
                        if metric is not None:  # Record.metric: a define_metric call
                            self._metric(buf[metric[0]:metric[1]])
                        elif _TB_KEY in spans:  # Record.tbrecord: a synced TensorBoard folder
                            self.tb_synced = True
                        elif telemetry is not None and not self.tb_synced:
                            self._telemetry(buf[telemetry[0]:telemetry[1]])
                        elif run is not None and self.display is None:  # Record.run
                            self._run(buf[run[0]:run[1]])
                        continue
                    pos, end = span
            except (WireError, IndexError):
                bad += 1  # the next record notes the break
                continue
            append(buf[pos:end])
            if len(payloads) >= _ROW_BATCH:
                self._decode_batch()
        self._decode_batch()
        bad += self.bad
        self.bad = 0
        return bad

    def _decode_batch(self) -> None:
        payloads = self.payloads
        n = len(payloads)
        if not n:
            self.breaks.extend(self.n_rows for _ in self.pending_breaks)
            self.pending_breaks.clear()
            return
        lens = np.fromiter(map(len, payloads), np.int64, n)
        ends = np.cumsum(lens)
        starts = ends - lens
        blob = b"".join(payloads) + bytes(_PAD)
        arr = np.frombuffer(blob, np.uint8)
        # 1. Walk the fields of every row in lockstep.
        slow = np.zeros(n, bool)
        item_rows, item_s, item_e, step_rows, step_s = [], [], [], [], []
        pos = starts.copy()
        idx = np.nonzero(pos < ends)[0]
        for _ in range(MAX_ROW_ITEMS + 1):
            if not idx.size:
                break
            p = pos[idx]
            tag = arr[p]
            size = arr[p + 1].astype(np.int64)
            stop = p + 2 + size
            fine = (size < 0x80) & (tag < 0x80) & (tag & 7 == 2) & (stop <= ends[idx])
            slow[idx[~fine]] = True
            is_item = fine & (tag == 0x0A)
            is_step = fine & (tag == 0x12)
            item_rows.append(idx[is_item])
            item_s.append(p[is_item] + 2)
            item_e.append(stop[is_item])
            step_rows.append(idx[is_step])
            step_s.append(p[is_step] + 2)
            idx, stop = idx[fine], stop[fine]
            pos[idx] = stop
            idx = idx[stop < ends[idx]]
        wide = np.zeros(n, bool)
        wide[idx] = True  # fields left after MAX_ROW_ITEMS + 1: no real row
        slow |= wide
        rows = np.concatenate(item_rows)
        s = np.concatenate(item_s)
        e = np.concatenate(item_e)
        keep = ~slow[rows]
        rows, s, e = rows[keep], s[keep], e[keep]
        # 2. Key fields (1 key / 2 nested_key, any number of them), then value_json (16).
        q = s.copy()
        act = np.arange(q.size)
        while act.size:
            qa = q[act]
            t = arr[qa]
            ln = arr[qa + 1].astype(np.int64)
            more = ((t == 0x12) | (t == 0x0A)) & (ln < 0x80) & (qa < e[act])
            act = act[more]
            q[act] = qa[more] + 2 + ln[more]
        vlen = arr[q + 2].astype(np.int64)
        has_value = (q > s) & (q + 3 <= e) & (arr[q] == 0x82) & (arr[q + 1] == 0x01)
        shaped = has_value & (vlen < 0x80) & (q + 3 + vlen == e)
        odd = has_value & ~shaped  # a long value (not a number) or a malformed item
        slow[rows[odd & (q + 3 + vlen > e) & (vlen < 0x80)]] = True
        vs = q + 3
        numeric = shaped & _NUMERIC_TABLE[arr[np.minimum(vs, arr.size - 1)]] & (vs < e)
        numeric &= ~slow[rows]
        rows, s, q, vs, e = rows[numeric], s[numeric], q[numeric], vs[numeric], e[numeric]
        codes = self._key_codes(blob, arr, s, q)
        values, ok = _parse_numbers(_gather_spans(arr, vs, e))
        order_key = s
        # 3. Rows in an unusual shape, one by one.
        slow_rows = np.nonzero(slow)[0]
        step_num = np.full(n, -1, np.int64)
        if slow_rows.size:
            extra_rows, extra_pos, extra_codes, extra_texts = [], [], [], []
            dead = []
            for r in slow_rows.tolist():
                try:
                    if wide[r]:
                        raise _RowTooWide
                    points, num = _decode_history(payloads[r], 0, len(payloads[r]))
                except _RowTooWide:
                    dead.append(r)
                    self.too_wide += 1
                    continue
                except (WireError, IndexError):
                    dead.append(r)
                    self.bad += 1
                    continue
                step_num[r] = num
                for k, (raw, text) in enumerate(points):
                    extra_rows.append(r)
                    extra_pos.append(int(starts[r]) + k)
                    extra_codes.append(self.keys.code(raw))
                    extra_texts.append(text)
            if extra_rows:
                xv, xok = _parse_numbers(pl.Series(extra_texts, dtype=pl.Binary))
                rows = np.concatenate([rows, np.array(extra_rows, np.int64)])
                order_key = np.concatenate([order_key, np.array(extra_pos, np.int64)])
                codes = np.concatenate([codes, np.array(extra_codes, np.int64)])
                values = np.concatenate([values, xv])
                ok = np.concatenate([ok, xok])
        else:
            dead = []
        # HistoryStep.num of the regular rows (needed only where a row has no _step item).
        srows = np.concatenate(step_rows)
        sstart = np.concatenate(step_s)
        fine = ~slow[srows]
        self._step_nums(arr, srows[fine], sstart[fine], step_num)
        # 4. Write order, drop values that did not parse, renumber rows without the dead ones.
        order = pl.Series(order_key).arg_sort().to_numpy()
        rows, codes, values = rows[order], codes[order], values[order]
        good = ok[order]
        alive = np.ones(n, bool)
        alive[dead] = False
        renumber = np.cumsum(alive) - 1
        # a break before payload k is before the k-th row that could be decoded: rows that
        # could not (dead) are no rows
        alive_before = np.concatenate(([0], np.cumsum(alive)))
        self.breaks.extend(self.n_rows + int(alive_before[k]) for k in self.pending_breaks)
        self.pending_breaks.clear()
        rows, codes, values = renumber[rows[good]], codes[good], values[good]
        # 5. W&B's own keys become per-row columns (a later write in a row wins); only the
        # metrics stay points, so a row's _step, _timestamp and _runtime cost no memory each
        n_alive = int(alive.sum())
        own = codes < _FIRST_METRIC
        if own.any():
            o_rows, o_codes, o_values = rows[own], codes[own], values[own]
            rows, codes, values = rows[~own], codes[~own], values[~own]
        else:
            o_rows = o_codes = o_values = np.empty(0, np.int64)
        row_step = np.full(n_alive, np.nan)
        sel = (o_codes == _C_STEP) & _usable_step(o_values)
        row_step[o_rows[sel]] = o_values[sel]
        row_wall = np.full(n_alive, np.nan)
        sel = o_codes == _C_TIME
        row_wall[o_rows[sel]] = o_values[sel]
        for code in _C_GLOBAL:
            sel = o_codes == code
            if sel.any():
                self.global_steps[code].append((o_rows[sel] + self.n_rows, o_values[sel]))
        self.rows.append(rows + self.n_rows)
        self.codes.append(codes.astype(np.uint32))
        self.values.append(values)
        self.step_num.append(step_num[alive])
        self.row_step.append(row_step)
        self.row_wall.append(row_wall)
        self.n_rows += n_alive
        payloads.clear()

    @staticmethod
    def _step_nums(arr: np.ndarray, rows: np.ndarray, start: np.ndarray, out: np.ndarray) -> None:
        """``HistoryStep.num`` (``08 <varint>``) into ``out[rows]``; others left at -1."""
        size = arr[start - 1].astype(np.int64)
        has = (size >= 2) & (arr[start] == 0x08)
        rows, pos, stop = rows[has], start[has] + 1, start[has] + size[has]
        value = np.zeros(rows.size, np.int64)
        done = np.zeros(rows.size, bool)
        for shift in range(0, 63, 7):
            b = arr[np.minimum(pos, arr.size - 1)].astype(np.int64)
            live = ~done & (pos < stop)
            value[live] |= (b[live] & 0x7F) << shift
            done |= live & (b < 0x80)
            pos = pos + 1
        out[rows[done]] = value[done]

    def _key_codes(self, blob: bytes, arr: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Codes of the key spans ``arr[s:q]``: hashed in NumPy, verified, named once each."""
        if not s.size:
            return np.empty(0, np.int64)
        length = (q - s).astype(np.int64)
        words = np.lib.stride_tricks.as_strided(arr, (arr.size - 7, 8), (1, 1)).view("<u8")[:, 0]
        n_words = int((length.max() + 7) // 8)

        chunks = []
        for k in range(n_words):
            rem = np.clip(length - 8 * k, 0, 8).astype(np.uint64)
            mask = np.where(rem >= 8, _ALL_ONES, (np.uint64(1) << (rem << np.uint64(3))) - 1)
            chunks.append(words[np.minimum(s + 8 * k, words.size - 1)] & mask)
        h = length.astype(np.uint64) * _MIX1
        for chunk in chunks:
            h = (h ^ chunk) * _MIX2
            h ^= h >> np.uint64(29)
        uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        rep = first[inverse]
        same = length == length[rep]
        for chunk in chunks:
            same &= chunk == chunk[rep]
        rep_codes = np.array(
            [self.keys.code(blob[int(s[i]) : int(q[i])]) for i in first.tolist()], np.int64
        )
        codes = rep_codes[inverse]
        for i in np.nonzero(~same)[0].tolist():  # a hash collision: name it directly
            codes[i] = self.keys.code(blob[int(s[i]) : int(q[i])])
        return codes

    def to_frame(self) -> tuple[pl.DataFrame, list[str]]:
        """The points as a frame (grouped by tag in name order, write order within a tag), and
        notes about the step used. Called once: the columns gathered so far are released as
        the frame is built (peak memory near the frame's)."""
        notes: list[str] = []
        n = self.n_rows

        def take(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            out = np.concatenate(parts) if parts else np.empty(0, dtype)
            parts.clear()
            return out

        step = take(self.step_num, np.int64)
        row_step = take(self.row_step, np.float64)
        has = ~np.isnan(row_step)
        step[has] = row_step[has].astype(np.int64)
        has_step = (step >= 0) | has
        del row_step, has
        if not has_step.all():
            # Rows without any step: one past the previous row's step.
            idx = np.arange(n)
            last = np.maximum.accumulate(np.where(has_step, idx, -1))
            gap = idx - last
            base = np.where(last >= 0, step[np.maximum(last, 0)], -1)
            step = np.where(has_step, step, base + gap)
        wall = take(self.row_wall, np.float64)
        codes = take(self.codes, np.uint32)
        values = take(self.values, np.float64)
        rows = take(self.rows, np.int64)

        # a row's step: the TensorBoard step of a run that syncs TensorBoard (only there is
        # 'global_step' known to be a step; W&B also copies the latest value of a declared or
        # trainer axis into such rows, step_sync), else a trainer's step (HF and Lightning
        # declare theirs too), else the axis a define_metric("*", step_metric=...) call named
        # (a loop of one's own that logs a global step beside wandb.log calls of its own). An
        # axis that is not whole numbers everywhere (an epoch fraction) is no step.
        declared = [c for c in map(self.keys.lookup, self.step_metrics)
                    if c is not None and c >= _FIRST_METRIC]
        tb = self.keys.lookup(TB_STEP_KEY) if self.tb_synced else None
        axes = [*([tb] if tb is not None else []), *_C_GLOBAL, *declared]
        decided = np.zeros(n, bool)  # rows an axis placed
        on_tb = np.zeros(n, bool)  # rows the TensorBoard step placed
        for code in dict.fromkeys(axes):
            if code in self.global_steps:
                got = self.global_steps[code]
                r = np.concatenate([r for r, _ in got]) if got else np.empty(0, np.int64)
                v = np.concatenate([v for _, v in got]) if got else np.empty(0)
            else:
                sel = codes == code
                r, v = rows[sel], values[sel]
            ok = _usable_step(v)
            name = self.keys.names[code]
            if code >= _FIRST_METRIC and not ok.all():
                what = "define_metric step axis" if code in declared else "sync_tensorboard step"
                notes.append(f"the {what} {name!r} is not whole numbers: steps are W&B's _step")
                continue
            r, v = r[ok], v[ok]
            fresh = ~decided[r]  # (rows a preferred axis placed keep its step)
            if fresh.any():
                step[r[fresh]] = v[fresh].astype(np.int64)
                decided[r[fresh]] = True
                carried = int(np.unique(r[fresh]).size)  # (a key twice in a row is one row)
                what = (f"the TensorBoard steps that sync_tensorboard logged as {name!r}"
                        if code == tb else f"the logged {name!r}")
                msg = f"steps are {what} ({carried} of {n} history rows carry it"
                if carried < n and tb is None:  # (else they go to TensorBoard steps)
                    msg += "; the other rows keep W&B's _step"
                notes.append(msg + ")")
            if code == tb:  # W&B's copy of the step, no metric of the run
                keep = codes != code
                rows, codes, values = rows[keep], codes[keep], values[keep]
                on_tb = decided.copy()
        if tb is not None and on_tb.any():
            _own_rows_at_tensorboard_steps(step, wall, on_tb, ~decided, self.parts or [0],
                                           notes)
        self.lost = _lost_spans(step, self.breaks)
        # the points grouped by tag in name order, write order kept within a tag (the
        # canonical frame's order: no reordered copy of the frame there), and the tag column
        # as categories gathered by code: no string per point
        names = self.keys.names
        rank_of = np.empty(len(names), np.uint32)
        rank_of[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
        order = group_order(rank_of[codes], len(names))
        if order is not None:  # (one column at a time: each old one is freed as it goes)
            rows = rows[order]
            codes = codes[order]
            values = values[order]
        del order
        columns = {"step": step[rows], "wall_time": wall[rows]}
        del step, wall, rows
        columns["tag"] = pl.Series("tag", names, dtype=pl.Categorical).gather(pl.Series(codes))
        del codes
        columns["value"] = values
        del values
        frame = pl.DataFrame(columns).select("step", "tag", "value", "wall_time")
        return frame, notes


def _own_rows_at_tensorboard_steps(step: np.ndarray, wall: np.ndarray, on_tb: np.ndarray,
                                   own_rows: np.ndarray, parts: list[int],
                                   notes: list[str]) -> None:
    """In a run that syncs TensorBoard, place the rows of the run's own ``wandb.log`` calls
    that no axis placed (``own_rows``; their ``_step`` only counts rows) on the TensorBoard
    steps (rows ``on_tb``) by wall time: W&B copies the event files in as it finds them, so
    file order cannot say. Each file of the run (``parts``: its first rows; a resume starts
    one) on its own. The reference points are the TensorBoard points on the run's course (a
    second writer on another axis, stepping back, is not). The rows between two of them (at
    different steps) that were logged through that interval (a series logged regularly, a
    pause for an eval or not) are shared out over its steps in their order, none merged; rows
    logged at one moment (one row, two calls at an epoch's end) are placed by their time
    between the two steps; a row or more per step is always shared out. Past the last point (a
    crash can lose the writer's last points), from where the first of them falls at the last
    interval's pace, a row every so many steps, as the file's own rows are logged elsewhere.
    Rows before the first point keep ``_step``, and so do a file's where most of them lie
    outside its TensorBoard points' times (another clock)."""
    placed = kept = 0
    for lo, hi in zip(parts, [*parts[1:], step.size], strict=True):
        own = lo + np.flatnonzero(own_rows[lo:hi] & np.isfinite(wall[lo:hi]))
        tb = lo + np.flatnonzero(on_tb[lo:hi] & np.isfinite(wall[lo:hi]))
        if not own.size or not tb.size:
            continue
        order = tb[np.argsort(wall[tb], kind="stable")]
        course = step[order].astype(np.float64)
        order = order[course >= np.maximum.accumulate(course)]
        tw, ts = wall[order], step[order].astype(np.float64)
        w = wall[own]
        if 2 * np.count_nonzero((w >= tw[0]) & (w <= tw[-1])) < own.size:
            kept += own.size
            continue
        k = np.searchsorted(tw, w, side="right") - 1  # the point logged last before each
        on = k >= 0
        own, w, k = own[on], w[on], k[on]
        g = np.searchsorted(ts, ts[k], side="left")  # the first point at that step
        j = np.searchsorted(ts, ts[g], side="right")  # the next point at a later step
        pace = (ts[-1] - ts[0]) / (tw[-1] - tw[0]) if tw[-1] > tw[0] else 0.0
        tail = j >= ts.size  # past the last point
        jj = np.minimum(j, ts.size - 1)
        span = ts[jj] - ts[g]
        dt = tw[jj] - tw[g]
        many = np.bincount(g, minlength=ts.size)[g]
        rank = np.empty(g.size, np.int64)
        in_order = np.lexsort((w, g))
        first = np.searchsorted(g[in_order], g[in_order])
        rank[in_order] = np.arange(g.size) - first
        # how long each interval's rows took: rows logged through the interval (regularly,
        # a pause for an eval or not) are shared out over its steps in their order; rows logged
        # at one moment (two calls at an epoch's end, or one row) are placed by that time
        earliest, latest = np.full(ts.size, np.inf), np.full(ts.size, -np.inf)
        np.minimum.at(earliest, g, w)
        np.maximum.at(latest, g, w)
        regular = 0.5 * dt * (many - 1) / np.maximum(many, 1)  # half a regular series' spread
        # (a row or more per step is a series logged through it, a pause inside or not)
        through = ((many >= span) | (many > 1) & (latest[g] - earliest[g] >= regular)) & ~tail
        with np.errstate(divide="ignore", invalid="ignore"):
            by_time = np.floor(np.where(dt > 0, (w - tw[g]) / dt, 0.0) * span)
        at = np.where(through, np.floor(rank * span / np.maximum(many, 1)),
                      np.clip(by_time, 0, np.maximum(span - 1, 0)))
        if tail.any():
            # past the last point: from where the first of them falls at the last interval's
            # pace, a row every so many steps, as the file's own rows are elsewhere (none
            # merged); at that pace where there is no elsewhere
            top = int(np.searchsorted(ts, ts[-1], side="left"))
            if top > 0 and tw[top] > tw[top - 1]:
                pace = (ts[top] - ts[top - 1]) / (tw[top] - tw[top - 1])
            by_pace = np.floor((w - tw[g]) * pace)
            every = span[~tail] / many[~tail]
            if every.size:
                start = float(by_pace[tail].min())
                at = np.where(tail, start + rank * float(np.median(every)), at)
            else:
                at = np.where(tail, by_pace, at)
        step[own] = (ts[g] + at).astype(np.int64)
        placed += own.size
    if placed:
        notes.append(f"{placed} rows of the run's own log calls are placed on the TensorBoard "
                     "steps by wall time")
    if kept:
        notes.append(f"{kept} rows of the run's own log calls keep W&B's _step: their wall "
                     "times lie outside the TensorBoard points' (another clock?)")


def _lost_spans(step: np.ndarray, breaks: list[int]) -> list[tuple[int, int, int]]:
    """``(first, last, about how many rows)`` of the steps missing at each damaged place: the
    steps between the rows around it, beyond the usual step between rows just before it."""
    if step.size < 3 or not breaks:
        return []
    gaps = np.diff(step)
    out = []
    for k in sorted(set(breaks)):
        if not 0 < k < step.size:
            continue
        near = gaps[max(0, k - 21): k - 1] if k > 1 else gaps[k: k + 20]
        usual = max(1, int(np.median(near))) if near.size else 1
        if step[k] - step[k - 1] > usual:
            out.append((int(step[k - 1]) + usual, int(step[k]) - usual,
                        int((step[k] - step[k - 1]) // usual) - 1))
    return out


def _read_file(path: Path, hist: _History) -> list[FileProblem]:
    """Add one file's history to ``hist``; return its problems. Raises ReadError if unusable."""
    problems: list[FileProblem] = []
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ReadError(f"cannot open {path.name}: {exc.strerror or exc}") from exc
    with stream:
        head = stream.read(FILE_HEADER)
        if len(head) < FILE_HEADER or head[:6] != MAGIC:
            what = "an empty file" if not head else "the header is not ':W&B'"
            raise ReadError(f"not a W&B run file ({what}): {path.name}")
        if head[6] != SUPPORTED_VERSION:
            problems.append(
                FileProblem(str(path), f"unknown .wandb format version {head[6]}; read as 0")
            )
        stream.seek(0)
        damage = LogDamage()
        wide_before = hist.too_wide
        bad_records = hist.add_records(iter_records(stream, FILE_HEADER, damage), damage)
    if damage.corrupt_blocks:
        problems.append(
            FileProblem(
                str(path),
                f"{damage.corrupt_blocks} corrupt block(s) skipped (checksum or length wrong, "
                f"or zero-filled; first at byte {damage.first_bad_offset})",
            )
        )
    if bad_records:
        problems.append(
            FileProblem(str(path), f"{bad_records} record(s) skipped: not valid protobuf")
        )
    if damage.oversized:
        problems.append(FileProblem(
            str(path), f"{damage.oversized} record(s) over {MAX_RECORD >> 20} MiB skipped unread "
                       "(W&B asks that a wandb.log call stay under 25 MB)"))
    if hist.too_wide > wide_before:
        problems.append(FileProblem(
            str(path), f"{hist.too_wide - wide_before} history row(s) of over {MAX_ROW_ITEMS:,} "
                       "items skipped (no real row holds that many: W&B asks a project to keep "
                       "under 10,000 metrics)"))
    if damage.truncated:
        problems.append(
            FileProblem(str(path), "file ends inside a record (run still being written?)")
        )
    return problems


def _read_paths(paths: list[Path]) -> RawRun:
    """One run from ``paths``, read in the order given (a later write of a step wins)."""
    hist = _History()
    problems: list[FileProblem] = []
    errors: list[str] = []
    read_any = False
    for path in paths:
        hist.parts.append(hist.n_rows)
        try:
            problems.extend(_read_file(path, hist))
            read_any = True
        except ReadError as exc:
            errors.append(str(exc))
            problems.append(FileProblem(str(path), str(exc)))
    if not read_any:
        raise ReadError("; ".join(errors))
    frame, notes = hist.to_frame()
    if hist.display is not None:
        name, project = hist.display
        notes.insert(0, f"W&B run {name!r}" + (f" in project {project!r}" if project else ""))
    if hist.n_rows == 0:
        notes.append("no history rows in this run file")
    if hist.lost:
        spans = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b, _ in hist.lost[:5])
        more = f" and {len(hist.lost) - 5} more" if len(hist.lost) > 5 else ""
        problems.append(FileProblem(
            str(paths[-1]),
            f"history lost where the file is damaged: steps {spans}{more} (about "
            f"{sum(n for _, _, n in hist.lost)} row(s))"))
    return RawRun(points=frame, problems=problems, notes=notes, files=list(paths))


def _first_step(raw: RawRun) -> int | None:
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    return None if frame.height == 0 else int(frame.get_column("step").min())


def read(source: Source) -> list[RawRun]:
    """Read the history of one run's ``.wandb`` file(s): a folder's in file-name order, the
    folders of a resumed run in time order (:func:`regroup`), as one run - unless a later
    folder's step counter starts again at 0 (an offline resume, which cannot know the steps
    logged before it): its steps say nothing of where it resumed, so each folder is a run of
    its own (``#resumed-<time>``)."""
    folders = list(dict.fromkeys(p.parent for p in source.files))
    groups = {d: sorted(f for f in source.files if f.parent == d) for d in folders}
    if len(folders) == 1:
        return [_read_paths(groups[folders[0]])]
    parts: list[tuple[Path, RawRun]] = []  # the folders that could be read, in time order
    failed: list[FileProblem] = []
    for d in folders:
        try:
            parts.append((d, _read_paths(groups[d])))
        except ReadError as exc:  # one unusable folder (killed at start-up): read the others
            failed.append(FileProblem(str(groups[d][0]), f"{d.name}: {exc}"))
    if not parts:
        raise ReadError("; ".join(p.message for p in failed))
    names = ", ".join(d.name for d, _ in parts)
    first = _first_step(parts[0][1])
    restarted = first is not None and any(_first_step(r) == 0 for _, r in parts[1:])
    if len(parts) == 1 or restarted:
        runs = [r for _, r in parts]
        for k, (d, raw) in enumerate(parts if restarted else ()):
            m = _RUN_DIR.match(d.name)
            if k:
                raw.suffix = f"resumed-{m.group(1) if m else k}"
            raw.notes.insert(0, f"one of {len(parts)} run folders with the same run id "
                                f"({names}); a later one's steps start again at 0, so each is "
                                "read as a run of its own")
        runs[0].problems.extend(failed)
        return runs
    merged = _read_paths([f for d, _ in parts for f in groups[d]])
    merged.problems.extend(failed)
    merged.notes.insert(0, f"a resumed run: read as one from {len(parts)} run folders with "
                           f"the same run id, in time order ({names})")
    return [merged]
