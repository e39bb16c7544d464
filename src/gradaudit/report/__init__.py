"""Report formats, one module each, and writing a report atomically.

Formatters are registered by name in :data:`FORMATTERS`; each is ``write(result, stream)``.
They are imported on first use, so the command line does not pay for matplotlib unless it
writes HTML. The helpers here (ranking runs worst first, one-line summaries) are shared by the
formats so that HTML, Markdown and the GitHub annotations tell the same story in the same order.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import re
import stat
import sys
import tempfile
import unicodedata
from collections.abc import Callable
from typing import Any, TextIO

from gradaudit.errors import UsageError
from gradaudit.text import PRINTABLE, printable

_MODULES = {"json": "json_report", "html": "html", "md": "markdown", "github": "github"}
#: ``gradaudit.detect.head_blowup.ID``, not imported: the reports need no engine
HEAD_BLOWUP = "head-blowup"


def _lazy(module: str) -> Callable[[Any, TextIO], None]:
    def writer(result: Any, stream: TextIO) -> None:
        importlib.import_module(f"gradaudit.report.{module}").write(result, stream)

    writer.__name__ = f"write_{module}"
    writer.__doc__ = f"Write the report with gradaudit.report.{module}.write."
    return writer


FORMATTERS: dict[str, Callable[[Any, TextIO], None]] = {
    name: _lazy(module) for name, module in _MODULES.items()
}
SUFFIXES = {".json": "json", ".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}

STATUS_RANK = {"explosion": 3, "warning": 2, "error": 1, "ok": 0}
#: what a ``too_short`` run's status rests on (RunAudit.too_short)
TOO_SHORT = ("no healthy level formed (too few usable points, or episodes among the first "
             "ones), so only what needs none was judged")

# C0/C1 controls but tab, CR and LF (ANSI escapes in hostile run or tag names)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# and every invisible format character (Unicode category Cf: bidi marks, overrides and
# isolates, zero-width spaces, the BOM, the tag characters that can spell hidden text) and the
# line and paragraph separators (Zl, Zp): a run name with them can pass for another in a CI
# summary. The zero-width (non-)joiners U+200C/U+200D are left alone: Persian and Indic names
# spell with them
_INVISIBLE = frozenset({"Cf", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")


def show_controls(text: object) -> str:
    """``text`` with control characters other than tab, CR and LF and invisible format
    characters but the two joiners written as backslash escapes, so that they never reach a
    terminal or log; undecodable bytes of a file name too (:func:`gradaudit.text.printable`)."""
    out = _CONTROL.sub(_escaped, printable(str(text)))
    if out.isascii():
        return out
    return "".join(_escape(c) if unicodedata.category(c) in _INVISIBLE and c not in _JOINERS
                   else c for c in out)


def _escaped(m: re.Match[str]) -> str:
    return _escape(m.group())


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
        raise UsageError(f"cannot tell the report format from {path!r}; pass --format "
                         "(fmt= in Python): html, md or json")
    return SUFFIXES[suffix]


def _final_mode(path: str) -> int:
    """The mode a newly created file would get (0666 less the umask), or the existing one's."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def not_a_file(path: str) -> bool:
    """``path`` exists (through any symlinks) and is neither a regular file nor a folder: a
    device, a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_report(result: object, path: str, fmt: str | None = None) -> None:
    """Write ``result`` to ``path`` (``-`` = stdout); a temporary file is renamed into place.

    A formatter that fails leaves neither a partial report nor the temporary file behind. The
    report gets the permissions of the file it replaces, or 0666 less the umask. A path that
    is no regular file (``/dev/null``, a FIFO, ``/dev/stdout`` on a pipe; also through a
    symlink) is opened and written, the whole report at once: renamed over, a device node
    would be replaced by a file. A symlink to a regular file is replaced, not written through
    (one planted in a shared folder would otherwise redirect the report onto its target).
    """
    write_reports(result, [(path, fmt)])


class ReportWriteError(OSError):
    """Writing one report failed (``path``: which; the OSError it raised is the cause)."""

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.path = path


def write_reports(result: object, targets: list[tuple[str, str | None]]) -> None:
    """Write ``result`` to each ``(path, fmt)`` as :func:`write_report` does, so that they change
    together: every report to a file is written to a temporary file first, and all are renamed
    into place once all are written. An interrupt or a failed write before then leaves every
    earlier report as it was (a new HTML report beside the previous scan's JSON, the next
    scan's baseline, was possible). A failed write raises :class:`ReportWriteError`."""
    staged: list[tuple[str, str]] = []  # (temporary file, report path)
    try:
        for path, fmt in targets:
            if path != "-" and not not_a_file(path):
                staged.append((_stage(result, path, fmt), path))
        for path, fmt in targets:
            if path == "-" or not_a_file(path):
                _write_stream(result, path, fmt)
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise ReportWriteError(path, exc) from exc
        staged = []
    finally:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _write_stream(result: object, path: str, fmt: str | None) -> None:
    """A report onto stdout (``-``) or a path that is no regular file, the whole at once."""
    writer = FORMATTERS[format_for(path, fmt)]
    if path == "-":
        writer(result, sys.stdout)
        sys.stdout.flush()
        return
    text = io.StringIO()
    writer(result, text)
    try:
        with open(path, "w", encoding="utf-8", errors=PRINTABLE, newline="\n") as stream:
            stream.write(text.getvalue())
    except OSError as exc:
        raise ReportWriteError(path, exc) from exc


def _stage(result: object, path: str, fmt: str | None) -> str:
    """The report for ``path`` written to a temporary file beside it, with the final
    permissions: its path (removed again where writing it fails)."""
    writer = FORMATTERS[format_for(path, fmt)]
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".gradaudit-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot write the report {path!r}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors=PRINTABLE, newline="\n") as stream:
            writer(result, stream)
        os.chmod(tmp, _final_mode(path))
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ReportWriteError(path, exc) from exc
        raise
    return tmp


# --- shared by the formats ------------------------------------------------------------------


def _num(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else -math.inf


def worst_peak_ratio(run: Any) -> float | None:
    """The largest finite ``peak_ratio`` among the run's episodes, or ``None``."""
    ratios = [e.peak_ratio for e in run.episodes
              if e.peak_ratio is not None and math.isfinite(e.peak_ratio)]
    return max(ratios) if ratios else None


def worst_excess_loss(run: Any) -> float | None:
    """The largest finite excess loss among the run's episodes, or ``None``."""
    values = [e.loss_impact.excess_loss for e in run.episodes
              if e.loss_impact is not None and e.loss_impact.excess_loss is not None
              and math.isfinite(e.loss_impact.excess_loss)]
    return max(values) if values else None


def diverged(run: Any) -> bool:
    """Whether any of the run's episodes diverged."""
    return any(e.loss_impact is not None and e.loss_impact.diverged for e in run.episodes)


def worst_peak_text(run: Any) -> str:
    """The run table's peak-ratio cell: ``inf`` where a grad norm went non-finite."""
    if any(e.peak_ratio is not None and math.isinf(e.peak_ratio) for e in run.episodes):
        return "inf"
    return fmt_num(worst_peak_ratio(run))


def worst_excess_text(run: Any) -> str:
    """The run table's excess-loss cell: ``diverged`` where an episode did (no finite mean)."""
    return "diverged" if diverged(run) else fmt_num(worst_excess_loss(run))


def suggested_clip(run: Any) -> float | None:
    """The run's suggested clip threshold, or ``None``."""
    if run.clip is None or run.clip.suggested_threshold is None:
        return None
    t = run.clip.suggested_threshold
    return t if math.isfinite(t) else None


def severity_key(run: Any) -> tuple[float, ...]:
    """Sort key, larger = worse: status, then any diverged episode, peak ratio, excess loss."""
    return (STATUS_RANK.get(run.status, 0), float(diverged(run)), _num(worst_peak_ratio(run)),
            _num(worst_excess_loss(run)), float(len(run.episodes)))


def worst_first(runs: list[Any]) -> list[Any]:
    """``runs`` ordered worst first (stable: equal runs keep their scan order)."""
    return sorted(runs, key=severity_key, reverse=True)


def has_findings(run: Any) -> bool:
    """True when the run has episodes or a non-ok status worth a detailed section."""
    return bool(run.episodes) or run.status in ("warning", "explosion")


def recovery_text(episode: Any) -> str:
    """An episode's "recovered at" cell: the step, ``stayed in band`` where the loss never left
    its counterfactual's band (the recovery step is then the onset), ``diverged`` or ``-``."""
    li = episode.loss_impact
    if li is None or (li.recovery_step is None and not li.diverged):
        return "-"
    if li.diverged:
        return "diverged"
    return "stayed in band" if li.recovery_step == episode.onset_step else str(li.recovery_step)


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A short human number; ``-`` when missing (non-finite values print as nan/inf)."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage; ``-`` when missing."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.3g}%"


def file_problems(run: Any) -> str:
    """A run's file problems as one line, ``file: message; ...`` (plain text, NOT escaped)."""
    return "; ".join(f"{p.file}: {p.message}" for p in run.errors)


def error_reason(run: Any) -> str:
    """Why a run in status ``error`` could not be audited: its notes (the engine's reason),
    then its file problems (plain text, NOT escaped)."""
    msgs = list(run.notes)
    if run.errors:
        msgs.append(file_problems(run))
    return "; ".join(msgs) or "no data"


def partly_read(runs: list[Any]) -> list[Any]:
    """Audited runs with a file problem: a corrupt record skipped, a truncated tail, a bad file
    beside good ones. Their findings stand on what could be read."""
    return [r for r in runs if r.status != "error" and r.errors]


def copies(runs: list[Any]) -> int:
    """How many of ``runs`` have the same grad-norm and loss series as another of them, or the
    same within rounding (one training logged twice: each such run's notes say
    with which)."""
    from gradaudit.model import close_series, same_series

    same = {id(r) for group in same_series(runs) for r in group}
    return len(same | {id(r) for r, _ in close_series(runs)})


def run_headline(run: Any) -> str:
    """One plain-text line on a run's findings (untrusted parts are NOT escaped here)."""
    if run.status == "error":
        return f"could not be audited: {error_reason(run)}"
    if not run.episodes:
        return f"{run.status}: no episodes"
    n_exp = sum(e.severity == "explosion" for e in run.episodes)
    worst = max(run.episodes, key=lambda e: _num(e.peak_ratio))
    parts = [f"{run.status}: {len(run.episodes)} episode(s)"
             + (f", {n_exp} explosion(s)" if n_exp else "")]
    # (a blow-up before any healthy level is measured against the norm's first values)
    base = "its first values" if HEAD_BLOWUP in worst.detected_by else "healthy"
    parts.append(f"worst {worst.kind} at step {worst.onset_step}"
                 + ((" (grad norm non-finite)" if math.isinf(worst.peak_ratio) else
                     f" (peak {fmt_num(worst.peak_ratio)}x {base})")
                    if worst.peak_ratio is not None else ""))
    excess = worst_excess_loss(run)
    if excess is not None:
        parts.append(f"excess loss {fmt_num(excess)}")
    if any(e.loss_impact is not None and e.loss_impact.diverged for e in run.episodes):
        parts.append("diverged")
    clip = suggested_clip(run)
    if clip is not None:
        parts.append(f"suggested clip {fmt_num(clip)}")
    elif run.clip is not None and run.clip.advice:
        parts.append(run.clip.advice)
    return "; ".join(parts)


def gate_headline(result: Any) -> str:
    """One plain-text line on the gate's verdict."""
    code = result.exit_code
    if code == 0:
        return "gate passed (exit 0)"
    if code == 1:
        return "gate failed (exit 1)"
    return f"{unread_headline(result)} (exit {code})"


def unread_headline(result: Any) -> str:
    """What an exit 2 says: runs were audited but a path given yielded none, or nothing at all
    could be audited."""
    if result.unread_paths and any(r.status != "error" for r in result.runs):
        return "not every path given could be read"
    return "nothing could be audited"
