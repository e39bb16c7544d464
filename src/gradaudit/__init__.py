"""gradaudit: find where gradients exploded in training logs, what it cost, how to clip.

The library API (the CLI is a thin shell over it)::

    import gradaudit
    result = gradaudit.scan(["runs/"], fail_on="explosion")   # AuditResult
    runs = gradaudit.read_runs(["runs/"])                        # list[RunSeries]
    audit = gradaudit.audit_run(runs[0])                         # RunAudit
    result.write("report.html")
"""

from __future__ import annotations

__version__ = "0.1.0"

from gradaudit.api import audit_run, inspect, read_runs, scan  # noqa: E402
from gradaudit.errors import UsageError  # noqa: E402
from gradaudit.model import Episode, RunAudit  # noqa: E402
from gradaudit.result import AuditResult  # noqa: E402
from gradaudit.series import RunSeries  # noqa: E402
from gradaudit.settings import Settings  # noqa: E402

__all__ = ["AuditResult", "Episode", "RunAudit", "RunSeries", "Settings", "UsageError",
           "__version__", "audit_run", "inspect", "read_runs", "scan"]
