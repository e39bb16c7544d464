"""Report formats, one module each, and writing a report atomically."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import TextIO

from gradaudit.errors import UsageError
from gradaudit.report import json_report

FORMATTERS: dict[str, Callable[..., None]] = {
    "json": json_report.write,
}
SUFFIXES = {".json": "json", ".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}


def format_for(path: str, fmt: str | None) -> str:
    """The format asked for, or the one ``path``'s suffix names (JSON for stdout)."""
    if fmt is not None:
        if fmt not in FORMATTERS:
            raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATTERS)}")
        return fmt
    if path == "-":
        return "json"
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES or SUFFIXES[suffix] not in FORMATTERS:
        raise UsageError(f"cannot tell the report format from {path!r}; pass --format")
    return SUFFIXES[suffix]


def write_report(result: object, path: str, fmt: str | None = None) -> None:
    """Write ``result`` to ``path`` (``-`` = stdout); a temporary file is renamed into place."""
    fmt = format_for(path, fmt)
    writer = FORMATTERS[fmt]
    if path == "-":
        writer(result, sys.stdout)
        sys.stdout.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gradaudit-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            writer(result, stream)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


