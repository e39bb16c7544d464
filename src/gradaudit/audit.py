"""PLACEHOLDER engine: to be replaced by the real detectors (issue 3)."""

from __future__ import annotations

from gradaudit.model import RunAudit
from gradaudit.series import RunSeries
from gradaudit.settings import Settings


def audit_run(series: RunSeries, settings: Settings) -> RunAudit:
    n, first, last = series.step_summary()
    return RunAudit(
        run=series.name, format=series.format, files=series.files,
        grad_norm_tag=series.grad_norm_tag, loss_tag=series.loss_tag, lr_tag=series.lr_tag,
        n_steps=n, first_step=first, last_step=last, status="ok",
        errors=series.problems, notes=series.notes,
    )
