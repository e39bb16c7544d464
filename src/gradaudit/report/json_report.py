"""The schema-1 JSON report (the contract every other format derives from)."""

from __future__ import annotations

from typing import TextIO


def write(result: object, stream: TextIO) -> None:
    """Write ``result.to_json()`` and a final newline."""
    stream.write(result.to_json())  # type: ignore[attr-defined]
    stream.write("\n")
