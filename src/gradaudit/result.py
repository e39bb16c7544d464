"""AuditResult: a whole scan's outcome, its JSON contract, and writing it out."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

from gradaudit import __version__
from gradaudit.discover import replaced
from gradaudit.errors import UsageError
from gradaudit.model import SCHEMA_VERSION, ClipSuggestion, InputError, RunAudit
from gradaudit.settings import Settings


def _now() -> str:
    """Now, in UTC; ``SOURCE_DATE_EPOCH`` (seconds) where set, so that a report can be
    reproduced byte for byte (the reproducible-builds convention)."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = _dt.datetime.now(_dt.UTC)
    if fixed.isdigit():
        try:
            when = _dt.datetime.fromtimestamp(int(fixed), _dt.UTC)
        except (OverflowError, OSError, ValueError):  # beyond the calendar: ignored
            pass
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def overwrite_message(target: str, log: str) -> str:
    """Why a report is not written to ``target``: it is ``log``, an input of the scan."""
    what = "a log" if log == target else f"the log {log!r}, a log"
    return f"{target!r} is {what} this scan reads: the report would replace it; write it elsewhere"


@dataclass
class AuditResult:
    """Runs, inputs that yielded no run, the batch clip suggestion, and the gate's verdict.

    ``exit_code`` follows docs/ci.md: 0 nothing at or above ``fail_on``, 1 the gate failed,
    2 nothing could be read, or a path given yielded no run at all. ``regressions`` lists
    what got worse against ``--baseline``.
    """

    runs: list[RunAudit]
    errors: list[InputError] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    batch_clip: ClipSuggestion | None = None
    regressions: list[dict[str, Any]] = field(default_factory=list)
    gate_reasons: list[str] = field(default_factory=list)
    # the paths given to the scan that yielded no run at all (exit 2: docs/ci.md)
    unread_paths: list[str] = field(default_factory=list)
    exit_code: int = 0
    generated_at: str = field(default_factory=_now)
    #: each file the scan read, by folder entry (:func:`~gradaudit.discover.entry_key`) and
    #: by file (:func:`~gradaudit.discover.file_key`) -> its path: :meth:`write` replaces none
    inputs: dict[tuple, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # a notebook cell shows this, not a dump of every run
        s = self.summary()
        return (f"<AuditResult: {s['runs']} run(s), {s['explosions']} explosion(s), "
                f"{s['warnings']} warning(s), {s['errors']} error(s), "
                f"{s['regressions']} regression(s); exit_code {self.exit_code}>")

    def summary(self) -> dict[str, int]:
        statuses = [r.status for r in self.runs]
        return {
            "runs": len(self.runs),
            "explosions": statuses.count("explosion"),
            "warnings": statuses.count("warning"),
            "errors": statuses.count("error") + len(self.errors),
            "regressions": len(self.regressions),
            "too_short": sum(r.too_short for r in self.runs),
        }

    def to_dict(self) -> dict[str, Any]:
        """The schema-1 JSON document."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "gradaudit", "version": __version__},
            "generated_at": self.generated_at,
            "settings": self.settings.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "errors": [e.to_dict() for e in self.errors],
            "batch_clip": None if self.batch_clip is None else self.batch_clip.to_dict(),
            "regressions": list(self.regressions),
            "gate": {"exit_code": self.exit_code, "reasons": list(self.gate_reasons)},
            "summary": self.summary(),
        }

    def episodes_frame(self) -> Any:
        """Every episode of every run as one Polars frame, a row per episode (``run``,
        ``status`` of its run, the episode's fields and its loss impact's, flattened)."""
        import polars as pl

        rows = []
        for r in self.runs:
            for e in r.episodes:
                d = e.to_dict()
                li = d.pop("loss_impact") or {}
                d["detected_by"] = ",".join(d["detected_by"])
                rows.append({"run": r.run, "status": r.status, **d,
                             **{k: li.get(k) for k in ("excess_loss", "loss_jump",
                                                       "recovery_step", "diverged")}})
        schema = {"run": pl.String, "status": pl.String, "onset_step": pl.Int64,
                  "peak_step": pl.Int64, "end_step": pl.Int64, "peak_grad_norm": pl.Float64,
                  "baseline_grad_norm": pl.Float64, "peak_ratio": pl.Float64,
                  "kind": pl.String, "severity": pl.String, "detected_by": pl.String,
                  "reason": pl.String, "excess_loss": pl.Float64, "loss_jump": pl.Float64,
                  "recovery_step": pl.Int64, "diverged": pl.Boolean}
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else \
            pl.DataFrame(schema=schema)

    def to_json(self, indent: int | None = 2) -> str:
        """The schema-1 JSON document as text (strict JSON: no NaN or Infinity)."""
        from gradaudit.text import json_text

        return json_text(self.to_dict(), indent)

    def input_at(self, path: str) -> str | None:
        """The file this scan read that writing to ``path`` would destroy (its folder entry,
        however spelled, or the file itself where ``path`` is its only name), or None."""
        if path == "-" or not self.inputs:
            return None
        entry, only = replaced(path)
        return self.inputs.get(entry) or (self.inputs.get(only) if only is not None else None)

    def write(self, path: str, fmt: str | None = None) -> None:
        """Write the report to ``path`` (``-`` for stdout) atomically, in ``fmt`` or by suffix;
        a UsageError, and nothing written, where ``path`` is a file the scan read."""
        self.write_all([(path, fmt)])

    def write_all(self, targets: list[tuple[str, str | None]]) -> None:
        """Write each ``(path, fmt)`` report so that they change together (all renamed into
        place once all are written: :func:`gradaudit.report.write_reports`); a UsageError,
        and nothing written, where a path is a file the scan read."""
        from gradaudit.report import write_reports

        for path, _ in targets:
            log = self.input_at(path)
            if log is not None:
                raise UsageError(f"cannot write the report: {overwrite_message(path, log)}")
        write_reports(self, targets)
