"""How ``gradaudit inspect`` shows what it found: JSON, or a readable table."""

from __future__ import annotations

from typing import TextIO

from gradaudit.api import Inspection
from gradaudit.report import show_controls
from gradaudit.text import json_text


def _safe(text: object) -> str:
    """``text`` with every control character (tab and line ends too: one table row per run)
    written as a backslash-x escape."""
    return show_controls(str(text).replace("\t", "\\x09").replace("\r", "\\x0d")
                         .replace("\n", "\\x0a"))


def _cell(value: object) -> str:
    return "-" if value is None else _safe(value)


def write_inspection(found: Inspection, stream: TextIO, fmt: str = "text",
                     show_tags: bool = False) -> None:
    """Write ``found`` to ``stream`` as ``json`` or ``text`` (``show_tags``: each run's tags
    and point counts under the table, the names ``--grad-tag``/``--loss-tag`` match)."""
    if fmt == "json":
        stream.write(json_text(found.to_dict(), 2))
        stream.write("\n")
        return
    header = ("run", "format", "grad norm", "loss", "lr", "steps", "first", "last", "tags")
    rows = []
    counts = [run.tag_counts() for run in found.runs]
    for run, tag_counts in zip(found.runs, counts, strict=True):
        n, first, last = run.step_summary()
        rows.append((_safe(run.name), run.format, _cell(run.grad_norm_tag), _cell(run.loss_tag),
                     _cell(run.lr_tag), str(n), _cell(first), _cell(last),
                     str(len(tag_counts))))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in (header, *rows):
        stream.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        stream.write("\n")
    for run, tag_counts in zip(found.runs, counts, strict=True):
        if show_tags:
            tags = ", ".join(f"{name} ({n})" for name, n in tag_counts.items())
            stream.write(_safe(f"  {run.name}: tags: {tags or '-'}") + "\n")
        for problem in run.problems:
            stream.write(_safe(f"! {run.name}: {problem.file}: {problem.message}") + "\n")
        for note in run.notes:
            stream.write(_safe(f"  {run.name}: {note}") + "\n")
    for error in found.errors:
        stream.write(_safe(f"! {error.path}: {error.message}") + "\n")
    if not found.runs and not found.errors:
        stream.write("no runs found\n")
