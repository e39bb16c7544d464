"""Sparse files for the readers' tests: a log with a hole (a crash, a preallocated file), and
the bytes a read asked the kernel for (``/proc/self/io``), which a hole read through counts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

HOLE = 2 << 30  # 2 GiB: read through, it would be counted; jumped over, it costs nothing
#: bytes a read may take with the hole jumped over: the data, and a reader's one buffer of zeros
READ_LIMIT = 256 << 20


def write_with_hole(path: Path, data: bytes, at: int, hole: int = HOLE) -> None:
    """``data[:at]``, ``hole`` bytes never written, then ``data[at:]`` (at the end: the hole
    runs to the end of the file). Skips the test where the file system stores holes (tried
    first on a small file)."""
    probe = path.with_name(path.name + ".probe")
    with probe.open("wb") as f:
        f.truncate(16 << 20)
    stored = probe.stat().st_blocks * 512
    probe.unlink()
    if stored >= 1 << 20:
        pytest.skip("this file system stores holes")
    with path.open("wb") as f:
        f.write(data[:at])
        if at < len(data):
            f.seek(at + hole)
            f.write(data[at:])
        else:
            f.truncate(at + hole)
    if path.stat().st_blocks * 512 > len(data) + (1 << 20):
        path.unlink()
        pytest.skip("this file system stores holes")


def bytes_read(fn: Callable[[], object]) -> tuple[object, int]:
    """``fn()`` and the bytes this process read while it ran (``rchar``)."""
    def rchar() -> int:
        try:
            text = Path(f"/proc/{os.getpid()}/io").read_text()
        except OSError:
            pytest.skip("no /proc/<pid>/io here")
        return int(next(line for line in text.splitlines() if line.startswith("rchar"))
                   .split()[1])

    before = rchar()
    out = fn()
    return out, rchar() - before
