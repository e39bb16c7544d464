"""What an adapter read, as ``{tag: {step: value}}``: for comparing readers point by point."""

from __future__ import annotations

import polars as pl

from gradaudit.adapters.base import RawRun


def by_tag(raw: RawRun) -> dict[str, dict[int, float]]:
    """``raw``'s points by tag and step, in write order (a later point at a step wins)."""
    frame = raw.points if isinstance(raw.points, pl.DataFrame) else raw.points.collect()
    out: dict[str, dict[int, float]] = {}
    for step, tag, value in frame.select("step", pl.col("tag").cast(pl.String), "value").rows():
        out.setdefault(tag, {})[step] = value
    return out
