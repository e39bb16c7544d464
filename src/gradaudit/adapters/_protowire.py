"""Minimal protobuf wire-format decoding: varints, field walking, nothing generated.

Only what the adapters need to pick a few fields out of messages whose schema they know by
field number. Every read is bounds-checked; malformed input raises :class:`WireError`.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode a varint at ``pos``; return ``(value, position after it)``."""
    if end is None:
        end = len(buf)
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def iter_fields(
    buf: bytes, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the fields of one message in ``buf[pos:end]``.

    Yields ``(field_number, wire_type, a, b)``: for VARINT ``a`` is the value (``b`` unused);
    for LEN fields ``buf[a:b]`` is the payload; for fixed-width fields ``buf[a:b]`` are the raw
    little-endian bytes. Groups (deprecated wire types 3/4) are rejected.
    """
    if end is None:
        end = len(buf)
    if end > len(buf):
        raise WireError("message runs past the end of the buffer")
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == LEN:
            size, pos = read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise WireError("length-delimited field runs past the end of the message")
            yield number, wire, pos, stop
            pos = stop
        elif wire == FIXED64:
            if pos + 8 > end:
                raise WireError("fixed64 field runs past the end of the message")
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == FIXED32:
            if pos + 4 > end:
                raise WireError("fixed32 field runs past the end of the message")
            yield number, wire, pos, pos + 4
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire}")
