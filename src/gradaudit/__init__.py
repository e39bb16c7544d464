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

__all__ = ["__version__", "audit_run", "inspect", "read_runs", "scan"]
