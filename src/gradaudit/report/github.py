"""GitHub Actions workflow-command annotations: one line per run with findings, worst first.

``::error title=gradaudit%3A <run>::<message>`` for runs (and regressions) that fail the gate,
``::warning`` for the others, one ``::notice`` with the totals first. GitHub shows only about ten
annotations of each kind per step, so the worst come first. Escaping follows GitHub's rules:
in the message ``%``, CR and LF become ``%25``, ``%0D``, ``%0A``; in property values also ``:``
and ``,`` become ``%3A`` and ``%2C``.
"""

from __future__ import annotations

from typing import Any, TextIO

from gradaudit.report import (
    TOO_SHORT,
    file_problems,
    gate_headline,
    has_findings,
    partly_read,
    run_headline,
    show_controls,
    worst_first,
)
from gradaudit.settings import fails_gate

MAX_TEXT = 1000


def escape_data(text: str) -> str:
    """Escape a workflow-command message."""
    text = show_controls(text)
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow-command property value (e.g. ``title``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _line(level: str, title: str, message: str) -> str:
    if len(message) > MAX_TEXT:
        message = message[: MAX_TEXT - 1] + "…"
    return f"::{level} title={escape_property(title[:200])}::{escape_data(message)}\n"


def lines(result: Any) -> list[str]:
    """The annotation lines, in the order they are printed."""
    s = result.summary()
    out = [_line("notice", "gradaudit",
                 f"{gate_headline(result)}: {s['runs']} run(s), {s['explosions']} explosion(s), "
                 f"{s['warnings']} warning(s), {s['errors']} error(s), "
                 f"{s['regressions']} regression(s)"
                 + (f", {s['too_short']} too short to judge" if s["too_short"] else ""))]
    gate_on = result.settings.fail_on != "never"
    for reg in result.regressions:
        out.append(_line("error" if gate_on else "warning",
                         f"gradaudit regression: {reg.get('run')}", str(reg.get("message"))))
    for run in worst_first(result.runs):
        if has_findings(run):
            level = "error" if fails_gate(run.status, result.settings.fail_on) else "warning"
            out.append(_line(level, f"gradaudit: {run.run}", run_headline(run)))
    for run in result.runs:
        if run.status == "error":
            out.append(_line("warning", f"gradaudit: {run.run}", run_headline(run)))
    for run in result.runs:
        if run.too_short:
            out.append(_line("notice", f"gradaudit: {run.run}",
                             f"too short to judge: {run.short_note or TOO_SHORT}"))
    for run in partly_read(result.runs):
        out.append(_line("warning", f"gradaudit: {run.run}", f"read in part: {file_problems(run)}"))
    for err in result.errors:
        out.append(_line("warning", f"gradaudit: {err.path}", f"could not be read: {err.message}"))
    return out


def write(result: Any, stream: TextIO) -> None:
    """Write the annotations of ``result`` to ``stream`` (normally stdout in a workflow step)."""
    stream.writelines(lines(result))
