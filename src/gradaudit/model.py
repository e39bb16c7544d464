"""The audit's results: episodes, loss impact, clip suggestions, per run and for the batch.

``AuditResult.to_dict()`` is the schema-1 JSON contract of docs/json.md; every report
format derives from it (plus ``RunAudit.traces`` for figures). Non-finite floats become null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradaudit.errors import clip_message
from gradaudit.series import FileProblem, Fingerprint

SCHEMA_VERSION = 1

STATUSES = ("ok", "warning", "explosion", "error")
KINDS = ("spike", "level_shift", "divergence", "nonfinite", "loss_spike")
SEVERITIES = ("warning", "explosion")
#: Healthy grad-norm points a run needs for a ``healthy_grad_norm`` (fewer: no level to
#: compare runs by, e.g. a run that diverged in its first steps).
MIN_HEALTHY_LEVEL = 10


def finite_or_none(x: float | int | None) -> float | None:
    """``x`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class LossImpact:
    """What an episode cost the loss (docs/findings.md, "Loss impact")."""

    excess_loss: float | None
    loss_jump: float | None
    recovery_step: int | None
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "excess_loss": finite_or_none(self.excess_loss),
            "loss_jump": finite_or_none(self.loss_jump),
            "recovery_step": self.recovery_step,
            "diverged": bool(self.diverged),
        }


@dataclass
class Episode:
    """One stretch of anomalous gradient norm (or loss), as docs/findings.md defines it."""

    onset_step: int
    peak_step: int
    end_step: int | None
    peak_grad_norm: float | None
    baseline_grad_norm: float | None
    peak_ratio: float | None
    kind: str
    severity: str
    detected_by: list[str]
    loss_impact: LossImpact | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "onset_step": int(self.onset_step),
            "peak_step": int(self.peak_step),
            "end_step": None if self.end_step is None else int(self.end_step),
            "peak_grad_norm": finite_or_none(self.peak_grad_norm),
            "baseline_grad_norm": finite_or_none(self.baseline_grad_norm),
            "peak_ratio": finite_or_none(self.peak_ratio),
            "kind": self.kind,
            "severity": self.severity,
            "detected_by": list(self.detected_by),
            "loss_impact": None if self.loss_impact is None else self.loss_impact.to_dict(),
            "reason": self.reason,
        }


@dataclass
class ClipOption:
    """One clip threshold and what it would have done on this run."""

    method: str
    threshold: float
    healthy_clipped_fraction: float
    episode_steps_clipped_fraction: float | None
    episode_peak_cut: list[float | None]
    description: str = ""
    #: the share of every finite logged norm it clips, from the first logged step (the warm-up
    #: and the episodes too), as the run went: what a run clipped from step 0 would clip, to
    #: the extent clipping leaves the norms as they were; None for a batch option
    all_clipped_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": finite_or_none(self.threshold),
            "healthy_clipped_fraction": finite_or_none(self.healthy_clipped_fraction),
            "all_clipped_fraction": finite_or_none(self.all_clipped_fraction),
            "episode_steps_clipped_fraction": finite_or_none(self.episode_steps_clipped_fraction),
            "episode_peak_cut": [finite_or_none(x) for x in self.episode_peak_cut],
            "description": self.description,
        }


@dataclass
class ClipSuggestion:
    """The suggested threshold, the method that gave it, and the options considered.

    ``advice`` says what to do instead where clipping cannot help (a level shift after a
    learning-rate change, a loss spike with a healthy grad norm).
    """

    suggested_threshold: float | None
    method: str
    options: list[ClipOption] = field(default_factory=list)
    advice: str | None = None

    def chosen(self) -> ClipOption | None:
        """The option the suggestion is (None where nothing is suggested)."""
        return next((o for o in self.options if o.method == self.method), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested_threshold": finite_or_none(self.suggested_threshold),
            "method": self.method,
            "options": [o.to_dict() for o in self.options],
            "advice": self.advice,
        }


@dataclass
class RunAudit:
    """The audit of one run. ``traces`` holds decimated series for figures (not in the JSON)."""

    run: str
    format: str
    files: list[str]
    grad_norm_tag: str | None
    loss_tag: str | None
    lr_tag: str | None
    n_steps: int
    first_step: int | None
    last_step: int | None
    status: str
    episodes: list[Episode] = field(default_factory=list)
    clip: ClipSuggestion | None = None
    errors: list[FileProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    healthy_grad_norm: float | None = None  # median healthy g; None under MIN_HEALTHY_LEVEL
    spike_rate: float | None = None
    # nothing had a healthy level (too few usable points: ``EpisodeParams.min_history``): only
    # what needs none was judged, and "ok" says only that none of it was found
    too_short: bool = False
    # the note saying why (not in the JSON, where it is among the notes)
    short_note: str | None = field(default=None, repr=False)
    traces: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    # the healthy grad norms' quantiles 0, 0.001, ..., 1 (not in the JSON): what a batch-wide
    # threshold would clip on this run
    healthy_quantiles: np.ndarray | None = field(default=None, repr=False)
    # RunSeries.digest of the series audited (not in the JSON): the same in two runs of a scan
    # means one training logged twice
    series_digest: str | None = field(default=None, repr=False)
    # RunSeries.fingerprint of the series audited (not in the JSON): the same within rounding
    # in two runs of a scan means one training logged twice in two formats
    fingerprint: Fingerprint | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # short: the episodes and clip have their own reprs
        clip = self.clip.suggested_threshold if self.clip is not None else None
        return (f"<RunAudit {self.run!r}: {self.status}, {len(self.episodes)} episode(s), "
                f"suggested clip {clip if clip is None else format(clip, '.4g')}>")

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "format": self.format,
            "files": list(self.files),
            "grad_norm_tag": self.grad_norm_tag,
            "loss_tag": self.loss_tag,
            "lr_tag": self.lr_tag,
            "n_steps": int(self.n_steps),
            "first_step": self.first_step,
            "last_step": self.last_step,
            "status": self.status,
            "healthy_grad_norm": finite_or_none(self.healthy_grad_norm),
            "spike_rate": finite_or_none(self.spike_rate),
            "too_short": self.too_short,
            "episodes": [e.to_dict() for e in self.episodes],
            "clip": None if self.clip is None else self.clip.to_dict(),
            "notes": list(self.notes),
            "errors": [p.to_dict() for p in self.errors],
        }


def same_series(runs: list[RunAudit]) -> list[list[RunAudit]]:
    """The groups of two or more ``runs`` with the same ``series_digest``: one training
    logged twice (two loggers, a copy) or an exact re-run."""
    groups: dict[str, list[RunAudit]] = {}
    for run in runs:
        if run.series_digest is not None:
            groups.setdefault(run.series_digest, []).append(run)
    return [g for g in groups.values() if len(g) > 1]


#: how far apart two runs' head values may be and still be one training: 4 significant
#: digits (transformers 5 prints its logs so; its trainer_state.json keeps the floats)
HEAD_RTOL = 1e-3


#: the first steps two runs must share to be compared (runs of fewer points carry no
#: fingerprint: :meth:`RunSeries.digest`)
KEY_POINTS = 25


def _agree(a: Fingerprint, b: Fingerprint) -> bool:
    """Whether two fingerprints agree within ``HEAD_RTOL`` at every step both hold: their
    heads' and their samples' (a shorter run's all lie among the longer one's steps)."""
    for (ha, hb) in ((a.head, b.head), (a.sample, b.sample)):
        for k in (0, 2):
            (sa, va), (sb, vb) = ha[k:k + 2], hb[k:k + 2]
            _, i, j = np.intersect1d(sa, sb, assume_unique=True, return_indices=True)
            if not np.isclose(va[i], vb[j], rtol=HEAD_RTOL, atol=0, equal_nan=True).all():
                return False
    return True


def _key(print_: Fingerprint) -> bytes:
    """The first ``KEY_POINTS`` steps of both series: runs are compared only with runs that
    logged the same first steps."""
    return b"|".join(np.ascontiguousarray(a[:KEY_POINTS]).tobytes() for a in print_.head[0::2])


def close_series(runs: list[RunAudit]) -> list[tuple[RunAudit, list[RunAudit]]]:
    """Each run with the others of ``runs`` whose series agree with its own within
    ``HEAD_RTOL`` at every step both hold (their fingerprints' heads and samples: a log cut
    short beside its full copy agrees), but are not the same series (:func:`same_series`
    groups those): one training logged twice by writers that round it differently, or an
    exact re-run. Runs are compared within groups of the same first steps, each with those
    whose first value is close to its own."""
    buckets: dict[bytes, list[RunAudit]] = {}
    for run in runs:
        if run.fingerprint is not None:
            buckets.setdefault(_key(run.fingerprint), []).append(run)
    close: dict[int, list[RunAudit]] = {}
    for members in buckets.values():
        if len(members) < 2:
            continue
        # (the same first steps: their first values stack)
        values = np.stack([np.concatenate([v[:KEY_POINTS] for v in r.fingerprint.head[1::2]])  # type: ignore[union-attr]
                           for r in members])
        order = np.argsort(values[:, 0], kind="stable")
        values, members = values[order], [members[i] for i in order]
        first = values[:, 0].astype(np.float64)
        reach = np.searchsorted(first, first + np.abs(first) * 2 * HEAD_RTOL, side="right")
        for i in range(len(members)):
            if reach[i] <= i + 1:
                continue
            near = np.isclose(values[i + 1:reach[i]], values[i], rtol=HEAD_RTOL, atol=0,
                              equal_nan=True).all(axis=1)
            for j in np.flatnonzero(near) + i + 1:
                a, b = members[i], members[j]
                if a.series_digest is not None and a.series_digest == b.series_digest:
                    continue
                if not _agree(a.fingerprint, b.fingerprint):  # type: ignore[arg-type]
                    continue
                close.setdefault(id(a), [a]).append(b)
                close.setdefault(id(b), [b]).append(a)
    return [(group[0], group[1:]) for group in close.values()]


def interrupted(episodes: list[Episode], k: int) -> bool:
    """Whether level shift ``episodes[k]`` (sorted by onset) ends where the next episode
    begins: the next one began on its new level, so it never came back down."""
    e = episodes[k]
    return e.kind == "level_shift" and e.end_step is not None and k + 1 < len(episodes) and \
        episodes[k + 1].onset_step == e.end_step


@dataclass
class InputError:
    """An input that yielded no run at all."""

    path: str
    message: str

    def __post_init__(self) -> None:
        self.message = clip_message(self.message)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}
