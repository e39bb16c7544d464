"""PLACEHOLDER adapter for json: to be written (claims nothing yet)."""

from __future__ import annotations

from pathlib import Path

from gradaudit.adapters.base import RawRun, Source

FORMAT = "json"


def claim(directory: Path, files: list[Path]) -> list[Source]:
    return []


def read(source: Source) -> list[RawRun]:
    raise NotImplementedError
