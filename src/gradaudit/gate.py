"""PLACEHOLDER gate: to be extended with baselines (issue 4)."""

from __future__ import annotations

from gradaudit.result import AuditResult

_RANK = {"ok": 0, "warning": 1, "explosion": 2, "error": 0}


def evaluate_gate(result: AuditResult) -> None:
    if not result.runs and result.errors:
        result.exit_code = 2
        return
    fail_on = result.settings.fail_on
    if fail_on == "never":
        result.exit_code = 0
        return
    bar = _RANK[fail_on]
    bad = [r.run for r in result.runs if _RANK[r.status] >= bar and r.status != "ok"]
    result.exit_code = 1 if bad else 0
