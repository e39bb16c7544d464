"""Holes in sparse files: space a crash or a preallocating writer left allocated and never
written reads as zeros, possibly gigabytes of them. The readers ask the file system where the
data resumes (``SEEK_DATA``) and jump there instead of reading the zeros."""

from __future__ import annotations

import errno
import os
from typing import BinaryIO


def data_after(stream: BinaryIO, offset: int) -> int | None:
    """Where the file's data resumes at or after ``offset``: ``offset`` itself where there is
    data, the file's size where only a hole follows; None where the file system cannot tell
    (no ``SEEK_DATA``, not a file). The stream's position is left as it was (under a buffered
    stream the raw position is the buffer's business)."""
    seek_data = getattr(os, "SEEK_DATA", None)
    if seek_data is None:
        return None
    try:
        fd = stream.fileno()
        raw = os.lseek(fd, 0, os.SEEK_CUR)
    except (AttributeError, ValueError, OSError):  # an in-memory stream, a pipe, closed
        return None
    try:
        return max(offset, os.lseek(fd, offset, seek_data))
    except OSError as exc:
        return max(offset, os.fstat(fd).st_size) if exc.errno == errno.ENXIO else None
    finally:
        os.lseek(fd, raw, os.SEEK_SET)
