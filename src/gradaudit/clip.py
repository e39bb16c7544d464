"""PLACEHOLDER clip suggestions: to be replaced (issue 3)."""

from __future__ import annotations

from gradaudit.model import ClipSuggestion, RunAudit


def batch_clip(audits: list[RunAudit]) -> ClipSuggestion | None:
    return None
