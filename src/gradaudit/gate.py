"""The CI gate: the exit code of a scan, and what got worse against a baseline report.

Exit codes (docs/ci.md, "Exit codes"):

- **0**: no run at or above ``fail_on`` and nothing regressed (or ``fail_on="never"``;
  ``fail_on="regression"``: nothing regressed, whatever the runs' status).
- **1**: the gate failed: a run's status is at or above ``fail_on`` (``explosion``: only
  explosions fail; ``warning``: warnings too), or a run regressed against the baseline.
- **2**: nothing could be audited: no run was read at all (every input failed, or no run was
  found), or no run read has usable data (all NaN, negative grad norms); or a path given
  yielded no run at all (a file named that could not be read, a folder whose every input failed)
  and the gate did not fail (1) otherwise (not with ``fail_on="never"``). Usage errors (a
  missing path, an unreadable baseline) raise :class:`~gradaudit.errors.UsageError`, which the
  command line also maps to 2.

A baseline is an earlier schema-1 JSON report (``--json`` output) of the same runs, matched by
run name. A run *regressed* when, compared with its baseline entry:

- it is a **new explosion**: its status was ``ok`` or ``warning`` and is ``explosion`` now;
- its **healthy grad-norm level** (``healthy_grad_norm``) grew more than
  ``baseline_grad_norm_ratio`` times (default 1.5);
- its **spike rate** (``spike_rate``, episodes per 1000 steps) grew by more than
  ``baseline_spike_rate_delta`` per 1000 steps (default 1.0) *and* to more than
  ``baseline_spike_rate_ratio`` times the baseline (default 2.0).

Runs that are not in the baseline are new, not regressions; they and baseline runs that are
missing now are reported in ``gate_reasons`` (as notes) but do not fail the gate. Where no run
matched a baseline run at all, the note says that nothing was compared, and why names differ.
Regressions fail the gate whatever ``fail_on`` is, except ``never``, which turns the gate off
(regressions are still listed).
"""

from __future__ import annotations

import json
import math
from typing import Any

from gradaudit.errors import UsageError
from gradaudit.model import MIN_HEALTHY_LEVEL, STATUSES
from gradaudit.result import AuditResult
from gradaudit.settings import fails_gate
from gradaudit.text import listed

EXIT_OK, EXIT_GATE, EXIT_NOTHING = 0, 1, 2

MAX_LISTED = 20


def load_baseline(path: str) -> dict[str, dict[str, Any]]:
    """The runs of a schema-1 JSON report, by run name. Raises UsageError when unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError as exc:
        raise UsageError(f"baseline {path!r}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"baseline {path!r}: cannot read it: {exc}") from exc
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise UsageError(f"baseline {path!r}: not a JSON report: {exc}") from exc
    except RecursionError as exc:
        raise UsageError(f"baseline {path!r}: not a JSON report (nested too deeply)") from exc
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise UsageError(f"baseline {path!r}: not a gradaudit JSON report (no schema_version)")
    if doc["schema_version"] != 1 or isinstance(doc["schema_version"], bool):
        raise UsageError(
            f"baseline {path!r}: schema_version {doc['schema_version']!r} is not supported "
            "(this gradaudit reads schema_version 1)"
        )
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise UsageError(f"baseline {path!r}: 'runs' must be a list")
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(runs):
        if not isinstance(entry, dict) or not isinstance(entry.get("run"), str):
            raise UsageError(f"baseline {path!r}: runs[{i}] has no run name")
        # a scan report's run, not another listing (``inspect --format json`` has no status):
        # a run the gate cannot read would compare as nothing and pass
        if entry.get("status") not in STATUSES or not isinstance(entry.get("episodes"), list):
            raise UsageError(
                f"baseline {path!r}: runs[{i}] ({entry['run']!r}) has no status in "
                f"{', '.join(STATUSES)} or no episodes list: not a scan report")
        out[entry["run"]] = entry
    return out


def _finite(x: Any) -> float | None:
    """``x`` as a finite float, else None (also an integer too large for a float)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    try:
        x = float(x)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def compare(result: AuditResult, baseline: dict[str, dict[str, Any]]) -> tuple[
        list[dict[str, Any]], list[str]]:
    """The regressions of ``result`` against ``baseline`` runs, and notes (missing runs)."""
    settings = result.settings
    # the tolerances are Settings fields with documented defaults (1.5x; +1 per 1000 and 2x)
    gn_ratio = settings.baseline_grad_norm_ratio
    sr_delta = settings.baseline_spike_rate_delta
    sr_ratio = settings.baseline_spike_rate_ratio
    regressions: list[dict[str, Any]] = []
    notes: list[str] = []
    current = {r.run: r for r in result.runs}
    for run in result.runs:
        old = baseline.get(run.run)
        if old is None:
            continue
        old_status = old.get("status")
        if run.status == "explosion" and old_status in ("ok", "warning"):
            regressions.append({
                "run": run.run, "metric": "status", "baseline": old_status,
                "current": run.status,
                "message": f"new explosion (was {old_status} in the baseline)",
            })
        old_gn, new_gn = _finite(old.get("healthy_grad_norm")), _finite(run.healthy_grad_norm)
        if old_gn is not None and new_gn is not None and old_gn > 0 and new_gn > gn_ratio * old_gn:
            regressions.append({
                "run": run.run, "metric": "healthy_grad_norm", "baseline": old_gn,
                "current": new_gn,
                "message": f"healthy grad-norm level rose {new_gn / old_gn:.3g}x "
                           f"({old_gn:.4g} -> {new_gn:.4g}; tolerance {gn_ratio:g}x)",
            })
        elif (old_gn is None) != (new_gn is None) and run.status != "error":
            notes.append(f"note: run {run.run!r}: healthy grad-norm level not compared (none "
                         f"{'now' if new_gn is None else 'in the baseline'}: under "
                         f"{MIN_HEALTHY_LEVEL} healthy points, or no grad norm)")
        old_sr, new_sr = _finite(old.get("spike_rate")), _finite(run.spike_rate)
        if (old_sr is not None and new_sr is not None and new_sr > old_sr + sr_delta
                and new_sr > sr_ratio * old_sr):
            regressions.append({
                "run": run.run, "metric": "spike_rate", "baseline": old_sr, "current": new_sr,
                "message": f"spike rate rose from {old_sr:.3g} to {new_sr:.3g} episodes per 1000 "
                           f"steps (tolerance +{sr_delta:g} and {sr_ratio:g}x)",
            })
        if run.status == "error" and old_status not in (None, "error"):
            notes.append(f"note: run {run.run!r} was readable in the baseline and is not now")
    missing = [name for name in baseline if name not in current]
    if missing:
        notes.append(f"note: {len(missing)} baseline run(s) missing now: "
                     f"{listed(missing, MAX_LISTED)}")
    new = [run.run for run in result.runs if run.run not in baseline]
    if new and len(new) == len(result.runs):
        notes.append(
            f"note: no run matched a baseline run by name, so nothing was compared (new: "
            f"{listed(new, MAX_LISTED)}); runs are matched by their path relative to the scanned "
            "folder, and W&B offline-run-<time>-<id> or HF runs/<date>_<host> folders change "
            "name every run: scan them under a stable name (copy or link each to a fixed folder)")
    elif new:
        notes.append(f"note: {len(new)} run(s) not in the baseline (new, not compared): "
                     f"{listed(new, MAX_LISTED)}")
    return regressions, notes


def evaluate_gate(result: AuditResult, baseline: dict[str, dict[str, Any]] | None = None) -> None:
    """Set ``result.exit_code``, ``result.regressions`` and ``result.gate_reasons``.

    ``baseline`` (runs by name) defaults to loading ``result.settings.baseline`` when set.
    Raises :class:`~gradaudit.errors.UsageError` for an unusable baseline file.
    """
    settings = result.settings
    if baseline is None and settings.baseline:
        baseline = load_baseline(settings.baseline)
    reasons: list[str] = []
    regressions: list[dict[str, Any]] = []
    notes: list[str] = []
    unusable = [r for r in result.runs if r.status == "error"]
    if len(unusable) == len(result.runs):  # no run at all, or none that could be audited
        result.regressions = []
        if unusable:
            failed = f", {len(result.errors)} input(s) failed" if result.errors else ""
            reasons.append(f"no run could be audited ({len(unusable)} run(s) with no usable "
                           f"data{failed})")
        elif result.errors:
            reasons.append(f"no run could be read ({len(result.errors)} input(s) failed)")
        else:
            reasons.append("no run found under the given paths")
        result.gate_reasons = reasons
        result.exit_code = EXIT_NOTHING
        return
    if baseline is not None:
        regressions, notes = compare(result, baseline)
    elif settings.fail_on == "regression":
        notes.append("no --baseline: --fail-on regression had nothing to compare, so nothing "
                     "failed")
    result.regressions = regressions
    failing = [r.run for r in result.runs if fails_gate(r.status, settings.fail_on)]
    if failing:
        level = "explosion" if settings.fail_on == "explosion" else "warning or explosion"
        reasons.append(f"{len(failing)} run(s) at {level} (--fail-on {settings.fail_on}): "
                       f"{listed(failing, MAX_LISTED)}")
    regressions_fail = bool(regressions) and settings.fail_on != "never"
    if regressions_fail:
        runs = sorted({r["run"] for r in regressions})
        reasons.append(f"{len(regressions)} regression(s) against the baseline in "
                       f"{len(runs)} run(s): {listed(runs, MAX_LISTED)}")
    elif regressions:
        reasons.append(f"{len(regressions)} regression(s) against the baseline "
                       "(not failing: --fail-on never)")
    result.exit_code = EXIT_GATE if (failing or regressions_fail) else EXIT_OK
    if result.unread_paths and result.exit_code == EXIT_OK and settings.fail_on != "never":
        # a path given that yielded no run could hold anything: the gate cannot vouch for it
        # (DESIGN's exit 2; the failed gate's 1 says more where a run failed it too)
        reasons.append(f"{len(result.unread_paths)} path(s) given yielded no run, so the gate "
                       f"could not check them: {listed(result.unread_paths, MAX_LISTED)}")
        result.exit_code = EXIT_NOTHING
    result.gate_reasons = reasons + notes
