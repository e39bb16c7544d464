"""Constructed AuditResults for the formatter and gate tests (built from model.py dataclasses).

The numbers are chosen here, so tests can check that the reports show exactly them.
"""

from __future__ import annotations

import numpy as np

from gradaudit.model import ClipOption, ClipSuggestion, Episode, InputError, LossImpact, RunAudit
from gradaudit.result import AuditResult
from gradaudit.series import FileProblem
from gradaudit.settings import Settings

FIXED_TIME = "2024-01-02T03:04:05Z"


def traces_for(n: int, onset: int, peak: float, seed: int = 0) -> dict:
    """Grad norm ~1 with a spike of ``peak`` at ``onset``, a loss that jumps there, and a
    counterfactual loss (the smooth curve without the jump)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n, dtype=np.int64)
    grad = np.exp(rng.normal(0.0, 0.1, n))
    grad[onset:onset + 5] = peak
    base = 3.0 * np.exp(-steps / (n / 3)) + 2.0
    loss = base + rng.normal(0, 0.01, n)
    loss[onset:] += 0.5 * np.exp(-(steps[onset:] - onset) / 40.0)
    cf_steps = steps[onset:min(n, onset + 200)]
    return {"grad_norm": (steps, grad), "loss": (steps, loss),
            f"counterfactual:{onset}": (cf_steps, base[cf_steps])}


def episode(onset: int, ratio: float, severity: str = "explosion", kind: str = "spike",
            excess: float | None = 0.25, diverged: bool = False, reason: str = "") -> Episode:
    return Episode(
        onset_step=onset, peak_step=onset + 2, end_step=None if diverged else onset + 5,
        peak_grad_norm=ratio * 1.0, baseline_grad_norm=1.0, peak_ratio=ratio, kind=kind,
        severity=severity, detected_by=["robust_z"],
        loss_impact=LossImpact(excess_loss=excess, loss_jump=0.5,
                               recovery_step=None if diverged else onset + 120,
                               diverged=diverged),
        reason=reason or f"grad norm {ratio}x its healthy level of 1.0",
    )


def clip(threshold: float | None = 1.8, advice: str | None = None) -> ClipSuggestion:
    opts = [] if threshold is None else [
        ClipOption("p99 of healthy grad norm", threshold, 0.01, 1.0, [0.9], "99th percentile",
                   all_clipped_fraction=0.03),
        ClipOption("zclip", threshold * 1.5, 0.001, 0.8, [0.85], "ZClip alpha 0.97 z 2.5",
                   all_clipped_fraction=0.012),
    ]
    return ClipSuggestion(suggested_threshold=threshold, method="p99 of healthy grad norm",
                          options=opts, advice=advice)


def run(name: str, status: str = "ok", episodes: list[Episode] | None = None,
        n: int = 1000, healthy: float | None = 1.0, spike_rate: float | None = 0.0,
        with_traces: bool = True, notes: list[str] | None = None,
        errors: list[FileProblem] | None = None, tag: str = "train/grad_norm",
        advice: str | None = None) -> RunAudit:
    episodes = episodes or []
    traces = {}
    if episodes and with_traces:
        traces = traces_for(n, episodes[0].onset_step, episodes[0].peak_ratio or 10.0)
    return RunAudit(
        run=name, format="parquet", files=[f"{name}/metrics.parquet"], grad_norm_tag=tag,
        loss_tag="train/loss", lr_tag=None, n_steps=0 if status == "error" else n,
        first_step=None if status == "error" else 0,
        last_step=None if status == "error" else n - 1, status=status, episodes=episodes,
        clip=None if status == "error" else clip(1.8 if episodes else None, advice),
        errors=errors or [], notes=notes or [], healthy_grad_norm=healthy,
        spike_rate=spike_rate, traces=traces,
    )


def fixed_result(**settings) -> AuditResult:
    """A small batch with every kind of finding; deterministic (for gold files)."""
    runs = [
        run("clean-run"),
        run("exp/lr-3e-4", "explosion",
            [episode(400, 25.0), episode(700, 6.0, "warning", excess=0.01)], spike_rate=2.0),
        run("warn-run", "warning", [episode(500, 4.0, "warning", excess=0.002)],
            spike_rate=1.0, notes=["tag 'train/grad_norm': 10 earlier point(s) at steps 100-109 "
                                   "replaced by later writes"]),
        run("diverged", "explosion", [episode(800, 1e4, kind="divergence", excess=None,
                                              diverged=True)],
            advice="lower the learning rate"),
        run("broken", "error", errors=[FileProblem("broken/events.out", "truncated record")]),
    ]
    return AuditResult(runs=runs, errors=[InputError("junk.csv", "no step column")],
                       settings=Settings(**settings), generated_at=FIXED_TIME)
