"""The engine: one RunSeries in, one RunAudit out (episodes, loss impact, clip advice, status).

An audit runs in four stages: :func:`_prepare` cleans the series and notes what is missing,
:func:`_candidates` finds the grad-norm and loss episodes and ties them to lr rises,
:class:`_Judge` measures each one's loss impact and decides its harm, and :func:`_finish` adds
the clip suggestion, the run status and the figures' traces. The words of every finding come
from :mod:`gradaudit.explain`.

Bad input never raises: a run with no usable series, negative grad norms or only NaNs gets
status ``error`` and a note saying why.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple

import numpy as np
from scipy.special import ndtri

from gradaudit import explain
from gradaudit.clip import (
    clip_ceiling,
    clip_options,
    healthy_quantiles,
    suggest,
    unstable_tail,
)
from gradaudit.detect._common import diff_sigma, finite_argmax, holds_level
from gradaudit.detect.head_blowup import ID as ID_HEAD
from gradaudit.detect.head_blowup import head_blowup
from gradaudit.detect.level_climb import BLOCK as CLIMB_BLOCK
from gradaudit.detect.level_climb import ID as ID_CLIMB
from gradaudit.detect.loss_rise import BLOCK as RISE_BLOCK
from gradaudit.detect.loss_rise import ID as ID_RISE
from gradaudit.detect.loss_spike import ID as ID_JUMP
from gradaudit.detect.lr_change import ID as ID_LR
from gradaudit.detect.lr_change import LrRise, lr_time, warmup_end_step
from gradaudit.detect.nonfinite import BROKE_RUN, breakdown_starts, loss_broke
from gradaudit.episodes import (
    EpisodeParams,
    GradAnalysis,
    RawEpisode,
    grad_episodes,
    loss_episodes,
    severity,
)
from gradaudit.errors import UNEXPECTED
from gradaudit.impact import (
    ABRUPT_POINTS,
    MIN_PRE,
    Blowups,
    Impact,
    bucket_mean,
    ends_above,
    loss_impact,
    post_end,
    step_origin,
)
from gradaudit.lr_attribution import attach_lr
from gradaudit.model import MIN_HEALTHY_LEVEL, Episode, LossImpact, RunAudit, interrupted
from gradaudit.points import sorted_points, typical_gap
from gradaudit.series import MAX_STEP, RunSeries
from gradaudit.settings import Settings
from gradaudit.traces import figure_traces

Candidate = tuple[RawEpisode, int, int | None]  # (episode, onset step, end step or None)
#: Harm needs a lasting excess above this share of the fall the counterfactual expects over the
#: horizon (:meth:`_Judge._verdict`; docs/findings.md, "Severity follows harm"). Half: the whole
#: fall (the loss averaging above where the counterfactual was at the onset) removed more false
#: harm, but took the explosion from 53 of 1,732 harmful benchmark runs, against 5 for a half
DECLINE_SHARE = 0.5
#: episode kinds of the grad norm itself (not a loss spike, not fp16 overflow steps)
GRAD_KINDS = frozenset({"spike", "level_shift", "divergence"})


def audit_run(series: RunSeries, settings: Settings | None = None) -> RunAudit:
    """Audit one run; never raises on bad data (status ``error`` with a note instead)."""
    settings = settings or Settings()
    try:
        # values near the float limit overflow sums and ratios to inf, which the engine reads
        # as such: numpy's warnings about it would only reach the user's terminal
        with np.errstate(all="ignore"):
            return _audit(series, settings)
    except UNEXPECTED as exc:  # a bad run must not stop the batch
        return _empty(series, "error", [f"analysis failed: {type(exc).__name__}: {exc}"])


def _audit(series: RunSeries, st: Settings) -> RunAudit:
    run = _prepare(series, st)
    if isinstance(run, RunAudit):  # nothing to analyse: the audit says why
        return run
    cand = _candidates(run)
    judge = _Judge(run, cand)
    episodes = [ep for k in range(len(cand.raw)) if (ep := judge.episode(k)) is not None]
    _never_came_back_to_the_end(episodes, judge.ends_up)
    episodes = _with_head_blowup(run, episodes)
    return _finish(run, cand, episodes, judge.counterfactuals)


def _never_came_back_to_the_end(episodes: list[Episode], ends_up: set[int]) -> None:
    """Mark ``diverged`` (in place) an explosion whose loss had not come back when a later
    episode began, where only warnings follow it and the loss ends the run above its level at
    the onset (``ends_up``): the later warnings lie in its aftermath and answer for none of it
    (a blow-up to 10x that stayed there read ``diverged: false`` for a loss spike on its new
    level 200 steps later). The last episode's is judged with its impact already."""
    for k, e in enumerate(episodes[:-1]):
        li = e.loss_impact
        if e.severity == "explosion" and li is not None and li.recovery_step is None and \
                not li.diverged and e.onset_step in ends_up and \
                all(x.severity == "warning" for x in episodes[k + 1:]):
            li.diverged = True
            e.reason += ("; the loss never came back (diverged): it ends the run above its "
                         "level before the onset, and only warnings follow")


def _with_head_blowup(run: _Run, episodes: list[Episode]) -> list[Episode]:
    """``episodes`` with the run's blow-up before its first healthy level (:mod:`gradaudit.
    detect.head_blowup`), in onset order. One that never came back is an explosion that
    diverged, and it takes the place of the episodes found in the head (judged against the
    broken model's level, or read as a spike that ended) unless one is a divergence (the run
    broke down to non-finite values there: that episode tells it). One that came back is
    added where no episode found covers it: an explosion where it took the impact horizon or
    longer to come back (the loss stood above its start that long, where a run that trains
    stands below it), else a warning."""
    if not run.has_loss or run.n_usable <= run.p.min_history:
        return episodes  # (a run too short for a level: only what needs none is judged)
    ok = np.isfinite(run.g) & (run.g > 0)
    steps = run.gs[ok] if run.has_grad else run.ls[np.isfinite(run.lv)]
    if not steps.size:
        return episodes
    head_end = int(steps[min(run.skip(steps) + run.p.min_history, steps.size - 1)])
    hb = head_blowup(run.ls, run.lv, head_end, run.gs if run.has_grad else None,
                     run.g if run.has_grad else None, spike_ratio=run.p.spike_ratio,
                     explosion_ratio=run.st.explosion_ratio)
    if hb is None:
        return episodes
    if hb.back_step is None:
        within = [e for e in episodes if e.onset_step <= head_end]
        if any(e.kind == "divergence" for e in within):
            return episodes  # (a breakdown to non-finite values there tells it already)
    elif any(e.onset_step <= hb.back_step for e in episodes):
        return episodes  # (reported already)
    else:
        within = []
    fin = np.isfinite(run.lv)
    ls, lv = run.ls[fin], run.lv[fin]
    h = (ls >= hb.onset_step) & (ls < hb.onset_step + run.st.impact_horizon)
    excess = float(np.mean(lv[h]) - hb.loss_start) if h.any() else None
    came_back = hb.back_step is not None
    if hb.grad_start is None:
        kind, ratio, peak_step = "loss_spike", None, hb.loss_peak_step
    else:
        ratio = hb.grad_peak / hb.grad_start
        g_end = float(np.median(run.g[ok][-max(5, int(ok.sum()) // 10):]))
        kind = "spike" if came_back or g_end < run.p.level_ratio * hb.grad_start \
            else "level_shift"
        peak_step = hb.grad_peak_step
    # (one that came back within the horizon has no counterfactual to measure its damage by:
    # the first steps have no fit window; one that stood above its start longer lost that much)
    harmful = not came_back or hb.back_step - hb.onset_step >= run.st.impact_horizon
    head = Episode(
        onset_step=hb.onset_step, peak_step=peak_step, end_step=hb.back_step,
        peak_grad_norm=hb.grad_peak, baseline_grad_norm=hb.grad_start, peak_ratio=ratio,
        kind=kind, severity="explosion" if harmful else "warning",
        detected_by=sorted({ID_HEAD}.union(*(e.detected_by for e in within))),
        loss_impact=LossImpact(excess, hb.loss_peak - hb.loss_start, hb.back_step,
                               not came_back),
        reason=explain.head_blowup_reason(hb, run.st.impact_horizon, excess))
    kept = [e for e in episodes if not any(e is x for x in within)]
    return sorted([*kept, head], key=lambda e: e.onset_step)


@dataclass
class _Run:
    """A run's cleaned series and settings: what every stage of its audit reads."""

    series: RunSeries
    st: Settings
    p: EpisodeParams
    gs: np.ndarray  # grad-norm steps and values (exact zeros left out)
    g: np.ndarray
    ls: np.ndarray  # loss steps and values
    lv: np.ndarray
    has_grad: bool  # some grad norm is finite and > 0
    has_loss: bool  # some loss is finite
    notes: list[str]
    warm: int | None = None  # last step of the lr warm-up: no healthy level exists before it
    lr: tuple[np.ndarray, np.ndarray] | None = None  # the logged lr's finite points > 0
    # why nothing had a healthy level (RunAudit.too_short), None where something had one
    short_note: str | None = None
    n_loss: int = 0  # usable loss points after the lr warm-up
    n_usable: int = 0  # usable points after the lr warm-up (grad norms; loss values if none)
    g_every: int = field(init=False)  # the grad norm's logging interval (1 for a single point)
    l_every: int = field(init=False)  # the loss's

    def __post_init__(self) -> None:
        self.g_every, self.l_every = typical_gap(self.gs), typical_gap(self.ls)

    @property
    def loss_interval_mean(self) -> bool:
        """The format logs the loss as a mean over a logging interval of several steps."""
        return self.series.loss_tag in self.series.interval_means and self.l_every > 1

    def loss_judged_without_level(self) -> str:
        """What the loss detectors judge before the loss has a level (explain)."""
        return explain.loss_judged_without_level(self.loss_interval_mean, self.p.spike_ratio)

    def skip(self, steps: np.ndarray) -> int:
        """Points of ``steps`` within the lr warm-up (the detectors start after them)."""
        return int(np.searchsorted(steps, self.warm, side="right")) if self.warm is not None \
            else 0


@dataclass
class _Candidates:
    """The episodes found, sorted by onset, before their harm is judged."""

    raw: list[Candidate]
    ga: GradAnalysis | None
    lr_notes: dict[int, tuple[str, LrRise]]  # id(episode) -> (lr text, the rise behind it)
    n_loss_unlisted: int  # loss candidates beyond ``max_episodes`` (a chronically spiky loss)


STRAY_STEPS = 0.01  # at most this share of a run's points beyond MAX_STEP are left out, not the run
#: Consecutive inf/NaN grad norms that can still be loss-scaler overflows: a GradScaler halves
#: its scale at each, and 16 halvings take its default 65536 to 1 (more: inf at any scale).
OVERFLOW_RUN = 16
STOOD_LAG = 3  # points after an unrecovered episode's onset before the loss may have "stood"
STOOD_MIN = 10  # the fewest points a level as the loss stood is taken from


def _prepare(series: RunSeries, st: Settings) -> _Run | RunAudit:
    """The run's series cleaned, with notes on what is missing; a finished audit where
    there is nothing to analyse (an error, or a loss that was never finite)."""
    notes: list[str] = []
    gs, g = sorted_points(*series.series(series.grad_norm_tag))
    ls, lv = sorted_points(*series.series(series.loss_tag))
    if series.grad_norm_tag is None:
        alone = ": audited from the loss alone" if series.loss_tag is not None else ""
        notes.append(f"no grad-norm series among the run's tags{alone} (pass --grad-tag if it "
                     "is logged under another name)")
    elif g.size == 0:
        notes.append("grad-norm tag has no points")
    far = [max(-int(x[0]), int(x[-1])) for x in (gs, ls) if x.size]  # (sorted; no int64 abs)
    if far and max(far) > MAX_STEP:
        out = [(x < -MAX_STEP) | (x > MAX_STEP) for x in (gs, ls)]
        n_out = int(sum(np.count_nonzero(o) for o in out))
        if n_out > max(1, STRAY_STEPS * (gs.size + ls.size)):
            return _empty(series, "error", notes + [
                f"steps as far as {max(far)} from 0: beyond +-2**53 ({MAX_STEP}), where steps "
                "stop being exact numbers, no training logs its steps - are they steps?"])
        # a stray point or two at an impossible step (a corrupt record, a bad line) is left
        # out, not the run: one such point hid a real explosion and the gate passed
        notes.append(f"{n_out} point(s) at steps beyond +-2**53 ({MAX_STEP}; as far as "
                     f"{max(far)}) left out: no training logs its steps there")
        (gs, g), (ls, lv) = (gs[~out[0]], g[~out[0]]), (ls[~out[1]], lv[~out[1]])
    if g.size and np.any(np.isfinite(g) & (g < 0)):
        n_neg = int(np.sum(np.isfinite(g) & (g < 0)))
        return _empty(series, "error", notes + [
            f"{n_neg} negative grad-norm value(s): a norm cannot be negative; is "
            f"{series.grad_norm_tag!r} really a grad norm?"])
    has_grad = bool(g.size) and bool(np.any(np.isfinite(g) & (g > 0)))
    if g.size and not has_grad:
        fin = np.isfinite(g)
        if fin.any():
            notes.append("grad norm is logged as a constant 0 (not computed): loss-only analysis")
        else:
            notes.append("grad norm is never finite")
    has_loss = bool(lv.size) and bool(np.isfinite(lv).any())
    if lv.size and not has_loss:
        return _never_finite(series, ls, notes)
    if has_loss and g.size > OVERFLOW_RUN and not np.isfinite(g).any():
        return _grad_never_finite(series, gs, ls, lv, notes)
    if not has_grad and not has_loss:
        if g.size and not np.isfinite(g).any() or lv.size and not np.isfinite(lv).any():
            why = "every grad-norm and loss value is NaN/inf"
        else:
            why = "no usable grad-norm or loss series"
        return _empty(series, "error", notes + [why])
    if has_grad and np.any(g == 0):
        # a norm of exactly 0: no gradient at that step (a batch whose loss underflowed to 0,
        # a frozen step) - a missing point, not an overflow or an event
        zero = g == 0
        notes.append(f"{int(zero.sum())} grad-norm value(s) of exactly 0 left out (no gradient "
                     "at those steps)")
        gs, g = gs[~zero], g[~zero]
    ok = np.isfinite(g) & (g > 0)
    if has_grad and ok.sum() >= 2 and np.ptp(g[ok]) == 0:
        notes.append("grad norm is constant")
    p = EpisodeParams(spike_ratio=st.spike_ratio, level_ratio=st.level_ratio,
                      merge_gap=st.merge_gap)
    warm = lr = None
    if series.lr_tag is not None:
        rs, rv = sorted_points(*series.series(series.lr_tag))
        lr_ok = np.isfinite(rv) & (rv > 0)
        lr = rs[lr_ok], rv[lr_ok]
        warm = warmup_end_step(rs, rv)
        if warm is not None and rs.size and warm > rs[min(rs.size - 1, rs.size // 4)]:
            warm = None  # an lr that rises through most of the run is no warm-up
    # no healthy level exists before p.min_history usable points after the lr warm-up: until
    # then only what needs none is judged
    after = "" if warm is None else " after the lr warm-up"
    n_grad = int(np.count_nonzero(ok if warm is None else ok & (gs > warm)))
    l_fin = np.isfinite(lv)
    n_loss = int(np.count_nonzero(l_fin if warm is None else l_fin & (ls > warm)))
    usable, what = (n_grad, "grad-norm") if has_grad else (n_loss, "loss")
    run = _Run(series, st, p, gs, g, ls, lv, has_grad, has_loss, notes, warm, lr,
               n_loss=n_loss, n_usable=usable)
    if usable <= p.min_history:
        # the loss's own rule for its first points: in an interval mean only (episodes)
        loss_judged = run.loss_judged_without_level()
        judged = explain.JUDGED_WITHOUT_LEVEL if has_grad else loss_judged
        short_note = f"only {usable} usable {what} point{'s' if usable != 1 else ''}{after}: " \
            f"too few for a healthy level (it needs more than {p.min_history}), so only " \
            f"{judged} is judged" + \
            (explain.loss_too(n_loss, p.min_history, loss_judged) if has_grad else "")
        notes.append(short_note)
        # too short: neither series had enough points for a healthy level
        if not (has_grad and n_loss > p.min_history):
            run.short_note = short_note
    else:
        explain.warmup_note(notes, gs[ok] if has_grad else ls[l_fin], warm, p.min_history)
    return run


def _grad_never_finite(series: RunSeries, gs: np.ndarray, ls: np.ndarray, lv: np.ndarray,
                       notes: list[str]) -> RunAudit:
    """A grad norm logged more than ``OVERFLOW_RUN`` times and never finite: as a grad norm
    that goes non-finite to the run's end, a divergence from its first logged step (a loss
    scaler skips an overflowed step; one that overflows at every scale skipped them all - or
    the norm is logged before the gradients are unscaled). An explosion either way: no step
    can be shown healthy, so there is no clip to suggest."""
    audit = _empty(series, "explosion", notes)
    fin = np.isfinite(lv)
    carried_on = bool(fin.any()) and bool(fin[np.searchsorted(ls, gs[0]):].all())
    loss = (f"; the loss was logged finite throughout ({int(fin.sum())} points): look at how "
            "the norm is logged" if carried_on else "")
    audit.episodes = [Episode(
        onset_step=int(gs[0]), peak_step=int(gs[0]), end_step=None, peak_grad_norm=None,
        baseline_grad_norm=None, peak_ratio=None, kind="divergence", severity="explosion",
        detected_by=["nonfinite"],
        loss_impact=LossImpact(None, None, None, not carried_on),
        reason=f"the grad norm was never finite: all {gs.size} logged value(s) of "
               f"{series.grad_norm_tag!r} are NaN/inf, so no step can be shown healthy (a "
               f"loss scaler that overflows at every scale skips every step){loss}")]
    return audit


def _never_finite(series: RunSeries, ls: np.ndarray, notes: list[str]) -> RunAudit:
    """A loss logged and never finite: training diverged before its first logged step (fp16
    without loss scaling, a bad init or lr) - an explosion, not an unreadable run."""
    audit = _empty(series, "explosion", notes)
    audit.episodes = [Episode(
        onset_step=int(ls[0]), peak_step=int(ls[0]), end_step=None, peak_grad_norm=None,
        baseline_grad_norm=None, peak_ratio=None, kind="divergence", severity="explosion",
        detected_by=["nonfinite"], loss_impact=LossImpact(None, None, None, True),
        reason=f"the loss was never finite: all {ls.size} logged value(s) of "
               f"{series.loss_tag!r} are NaN/inf, so training diverged before its first "
               "logged step (or that tag holds no loss)")]
    return audit


class _StoodSince(NamedTuple):
    """An earlier episode whose loss had not come back by this one's onset: this one is judged
    against the loss as it stood since (impact module doc, "Aftershocks")."""

    onset: int  # that episode's onset
    floor: int  # the first step of the loss as it stood
    lr_rise: bool  # an lr rise's aftermath; else an episode whose loss never came back
    mask: np.ndarray | None = None  # the points the level is taken from (None: outside episodes)
    cut_short: bool = False  # that episode's recovery was cut short by this one (not seen)


def _candidates(run: _Run) -> _Candidates:
    """Grad-norm and loss episodes, a loss episode within a grad episode's window merged into
    it, then tied to the lr rises that caused them (:func:`attach_lr`), sorted by onset."""
    gs, g, ls, lv, p = run.gs, run.g, run.ls, run.lv, run.p
    ga: GradAnalysis | None = None
    raw: list[Candidate] = []
    if run.has_grad:
        ga = grad_episodes(g, replace(p, log_every=run.g_every), skip=run.skip(gs))
        for e in ga.episodes:
            if ID_CLIMB in e.detected_by:
                cooled = _cool_down_note(run, int(gs[e.onset]))
                if cooled is not None:  # the schedule's doing: a note, no episode
                    run.notes.append(cooled)
                    continue
            end = int(gs[e.last + 1]) if e.last + 1 < gs.size else None
            raw.append((e, int(gs[e.onset]), end))
    l_eps = loss_episodes(lv, p, skip=run.skip(ls), loss_only=not run.has_grad,
                          interval_mean=run.loss_interval_mean) if run.has_loss else []
    g_every = run.g_every
    lag_steps = g_every * (p.merge_gap + 1) if gs.size > 1 else 0
    # a loss logged more sparsely than the grad norm shows a jump only at its next logged point
    # after the grad episode (never before it: the loss trails the gradient)
    l_late = max(0, run.l_every - g_every) if gs.size > 1 else 0
    # the grad episodes are sorted and disjoint (onsets and ends both rise): the first one whose
    # window [onset - lag, end + lag + l_late] holds a loss onset is found by bisection
    g_on = np.array([r[1] for r in raw], dtype=np.int64)
    # a level climb's onset is known to a block or so of its logged points, and a loss rise's
    # (a hinge fitted to a rise that slows down starts early) to a few: the window reaches four
    # blocks further back
    g_lo = g_on - lag_steps - np.array([4 * CLIMB_BLOCK * g_every if ID_CLIMB in r[0].detected_by
                                        else 0 for r in raw], dtype=np.int64)
    g_end = np.array([r[2] if r[2] is not None else (int(ls[-1]) if ls.size else r[1])
                      for r in raw], dtype=np.int64)
    n_grad = len(raw)
    reach = np.maximum.accumulate(g_end + lag_steps + l_late) if n_grad else g_end  # first >= on
    for le in l_eps:
        on, end = int(ls[le.onset]), (int(ls[le.last + 1]) if le.last + 1 < ls.size else None)
        # a rise's onset is known to a block of its points: one that starts up to two blocks
        # after a grad episode's reach is still that episode's aftermath (the loss lags)
        late = 2 * RISE_BLOCK * run.l_every if le.detected_by == {ID_RISE} else 0
        j = int(np.searchsorted(reach, on)) if n_grad else 0
        if late and not (j < n_grad and g_lo[j] <= on):  # no episode holds it: one just before
            j = int(np.searchsorted(reach, on - late))
        # after a level shift whose new level held, of the episodes whose windows hold it the
        # last one begun by then (the loss follows the event before it: a spike on the new
        # level, not the shift)
        k = int(np.searchsorted(g_on, on, side="right")) - 1
        if j < k and raw[j][0].holds_from is not None and g_end[k] + lag_steps + l_late >= on:
            j = k
        if j < n_grad and g_lo[j] <= on and not _on_new_level(run, raw[j][0], on, lag_steps + late):
            owner = raw[j][0]
            owner.detected_by |= le.detected_by
            if le.kind == "divergence":
                owner.kind = "divergence"
            continue
        raw.append((le, on, end))
    lr_notes: dict[int, tuple[str, LrRise]] = {}
    raw = attach_lr(run.series, raw, gs if run.has_grad else ls, g if run.has_grad else None,
                    ls, lv, lr_notes, p.merge_gap, run.st.lr_ratio, run.st.lr_lookahead,
                    p.level_min_points, ga.episodes if ga is not None else None)
    raw.sort(key=lambda r: r[1])
    return _Candidates(_disjoint(raw, gs, g, ls, lv), ga, lr_notes, getattr(l_eps, "n_unlisted", 0))


def _on_new_level(run: _Run, e: RawEpisode, on: int, lag: int) -> bool:
    """Whether loss onset ``on`` lies on grad level shift ``e``'s new level, which held from
    ``holds_from`` to the shift's last point (:func:`grad_episodes`), later than ``lag`` steps
    and ``min_history`` points after it held: an event of its own, not the shift's (a loss
    jump after a benign change of scale)."""
    if e.source != "grad" or e.kind != "level_shift" or e.holds_from is None:
        return False
    i_on = int(np.searchsorted(run.gs, on))
    return on > int(run.gs[e.holds_from]) + lag and i_on - e.holds_from >= run.p.min_history


def _disjoint(raw: list[Candidate], gs: np.ndarray, g: np.ndarray, ls: np.ndarray,
              lv: np.ndarray) -> list[Candidate]:
    """``raw`` (sorted by onset) with each loss or lr episode that reaches past the next
    episode's onset ended there: a loss rise that a later grad episode interrupts (one it did
    not cause: its onset came first); so is a grad level shift whose new level held, where a
    loss episode begins on that level (:func:`_on_new_level`). Episodes never overlap; the peak
    moves into what is left.
    A loss divergence whose non-finite points go on past the next onset is not cut: the
    episodes inside it join it. (Grad episodes are disjoint by construction, and a loss episode
    inside one's window is merged into it, unless it begins on a level shift's new level.)"""
    out: list[Candidate] = []
    k = 0
    while k < len(raw):
        e, on, end = raw[k]
        k += 1
        nxt = raw[k][1] if k < len(raw) else None
        last_nf = _last_nonfinite(ls, lv, on, end) \
            if e.source != "grad" and e.kind == "divergence" and nxt is not None else None
        if last_nf is not None and last_nf >= nxt:
            # a breakdown of the loss that goes on past a later onset holds what happens inside
            # it: later episodes there join it (to their end, where later; an lr rise's tie is
            # its episode's own, not the host's). One whose non-finite points all come first
            # is cut like any other.
            while k < len(raw) and (end is None or raw[k][1] < end):
                inner, _, inner_end = raw[k]
                e.detected_by |= inner.detected_by - {ID_LR}
                if end is not None and (inner_end is None or inner_end > end):
                    end = inner_end
                    e.last = ls.size - 1 if end is None else \
                        max(e.last, int(np.searchsorted(ls, end)) - 1)
                k += 1
            out.append((e, on, end))
            continue
        # (a grad episode reaches past the next onset only where that is a loss episode on
        # a level shift's new level: _on_new_level)
        if nxt is not None and (end is None or end > nxt) and nxt > on:
            end = nxt
            steps, vals = (gs, g) if e.source == "grad" else (ls, lv)
            e.last = max(e.onset, int(np.searchsorted(steps, nxt)) - 1)
            if e.peak > e.last:
                e.peak = finite_argmax(vals, e.onset, e.last + 1)
        out.append((e, on, end))
    return out


def _last_nonfinite(ls: np.ndarray, lv: np.ndarray, on: int, end: int | None) -> int | None:
    """The step of the last non-finite loss in ``[on, end)`` (the run's end where None), or
    None where there is none."""
    i_on = int(np.searchsorted(ls, on))
    i_end = ls.size if end is None else int(np.searchsorted(ls, end))
    bad = np.flatnonzero(~np.isfinite(lv[i_on:i_end]))
    return int(ls[i_on + bad[-1]]) if bad.size else None


def _cool_down_note(run: _Run, onset: int) -> str | None:
    """The run note where the logged lr fell by half or more from ``onset`` to the run's end
    (a grad norm that climbs while the schedule cools down, common with weight decay, is no
    episode), else None."""
    if run.lr is None:
        return None
    rs, rv = run.lr
    i = int(np.searchsorted(rs, onset, side="right")) - 1
    if rv.size == 0 or i < 0 or rv[-1] > 0.5 * rv[i]:
        return None
    return (f"the grad norm's level climbed from step {onset} to the end while the learning "
            f"rate fell {rv[i] / rv[-1]:.3g}x (the schedule's cool-down, where grad norms "
            "commonly rise): not an episode")


def _lr_halved_after(lr: tuple[np.ndarray, np.ndarray] | None, onset: int,
                     horizon: int) -> int | None:
    """Where the lr, after ``onset``, has fallen to half the lowest it was in the horizon up to
    the onset (an lr spike falling back is no such fall), or None: at a step decay (a fall to
    that at once, between two logged points), or, past two horizons after the onset, at a
    cool-down (a fall to that that also halved the lr within one horizon; a long cosine tail
    is none). The earliest step the fall can have come at (the step after the last logged point
    above it). The loss after it falls faster than a counterfactual without the lr can follow,
    and anchors none (impact module doc, "Bracketing")."""
    if lr is None or lr[0].size == 0:
        return None
    rs, rv = lr
    i0 = int(np.searchsorted(rs, onset - horizon))
    i1 = int(np.searchsorted(rs, onset, side="right"))
    # no further than the anchor window reaches (bounded work per episode)
    i2 = int(np.searchsorted(rs, post_end(onset, horizon, step_origin(rs)), side="right"))
    if i1 <= i0 or i1 >= i2:
        return None
    after = rv[i1:i2]
    low = after <= 0.5 * float(rv[i0:i1].min())
    cuts = []
    at_once = np.flatnonzero(low & (after <= 0.5 * rv[i1 - 1:i2 - 1]))
    if at_once.size:
        cuts.append(int(rs[i1 + at_once[0] - 1]) + 1)
    # a cool-down: halved within the last horizon too (a long cosine tail is no such fall)
    j0 = max(0, i0 - 1)  # (the lr a horizon before each point: from this slice alone)
    h_ago = np.interp(rs[i1:i2] - horizon, rs[j0:i2], rv[j0:i2])
    fast = np.flatnonzero(low & (after <= 0.5 * h_ago))
    if fast.size:
        cuts.append(max(onset + 2 * horizon, int(rs[i1 + fast[0] - 1]) + 1))
    return min(cuts) if cuts else None


class _Judge:
    """Measures each candidate's loss impact and decides its harm, severity and reason, in
    onset order: the loss an episode's aftermath covers is no healthy level for the next
    episode's counterfactual (``healthy``, ``floor``), and an episode within a harmful lr
    rise's unrecovered aftermath is judged against the loss as it stood (``lr_harm``)."""

    def __init__(self, run: _Run, cand: _Candidates) -> None:
        ls, lv, p, st = run.ls, run.lv, run.p, run.st
        self.run, self.cand = run, cand
        self.healthy = np.ones(ls.size, bool)  # loss points outside every episode
        for _, on, end in cand.raw:
            i0 = int(np.searchsorted(ls, on))
            i1 = ls.size if end is None else int(np.searchsorted(ls, end))
            self.healthy[i0:i1] = False
        # the anchor after an episode may use these (later episodes' spans skipped), as they
        # are before any aftermath is taken out of the fit windows below
        self.anchor_points = self.healthy.copy()
        self.lv_mean = _bucket_means(run.series, ls, lv) if run.has_loss and cand.raw else lv
        self.floor: int | None = None  # where the last episode's loss aftermath ended
        self.blowups: Blowups | None = None  # made with the first impact measured
        self.counterfactuals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        n_cand = len(cand.raw) + (cand.ga.n_unlisted if cand.ga is not None else 0) + \
            cand.n_loss_unlisted
        self.chance = None  # a chronically spiky run: the excess chance alone reaches
        self.z_harm = 2.0  # standard errors of its own estimate an excess must reach as harm
        self.h_points = st.impact_horizon / run.l_every if ls.size > 1 else 1.0
        if run.has_loss and n_cand > p.max_episodes:
            self.chance = _chance_excess(ls, self.lv_mean, self.healthy, st.impact_horizon,
                                         len(cand.raw))
            # hundreds of episodes judged at once: each against its own standard error at the
            # Bonferroni level (about one false harm verdict in 20 such runs), not at 2 sigma
            self.z_harm = max(self.z_harm, float(ndtri(1.0 - 0.05 / max(1, len(cand.raw)))))
        # the loss after an lr rise is that rise's to answer for, not an earlier episode's
        # (a schedule restart is the schedule's own doing, no fault: it cuts nothing)
        self.lr_onsets = [on for e, on, _ in cand.raw if ID_LR in e.detected_by
                          and not cand.lr_notes[id(e)][1].restart]  # raw is sorted by onset
        # the loss jumps of their own: episodes where the jump detector found the loss jump
        # afresh (within ABRUPT_POINTS), no lr rise behind them, whether or not the grad norm
        # spiked with it - their loss is their own to answer for, not an earlier episode's (a
        # rise, or a jump climbing over tens of steps, may be an earlier spike's slow answer;
        # a later grad spike whose loss the jump detector does not find afresh, the earlier
        # episode's loss still up, may be its aftershock: that damage stays in its horizon)
        self.own_jumps = [on for e, on, end in cand.raw
                          if (e.source == "grad" or e.kind == "loss_spike")
                          and ID_JUMP in e.detected_by and id(e) not in cand.lr_notes
                          and _jumped(ls, self.lv_mean, on,
                                      end if e.source == "loss" else None, st.impact_horizon)]
        # where the loss went non-finite for good (sorted)
        self.broke_at = ls[breakdown_starts(~np.isfinite(lv))]
        # the harmful lr rises judged so far: (onset, end, recovery step)
        self.lr_harm: list[tuple[int, int, int | None]] = []
        # the episode judged last: (onset, end, harmful, recovery step, kind)
        self.last: tuple[int, int | None, bool | None, int | None, str] | None = None
        # onsets of the episodes whose loss ends the run above its level at the onset
        self.ends_up: set[int] = set()

    def episode(self, k: int) -> Episode | None:
        """The ``k``-th candidate judged (None: a schedule restart that left the loss alone)."""
        run, st, raw = self.run, self.run.st, self.cand.raw
        e, on, end = raw[k]
        nxt = raw[k + 1][1] if k + 1 < len(raw) else None
        k_lr = bisect.bisect_right(self.lr_onsets, on)
        lr_after = self.lr_onsets[k_lr] if k_lr < len(self.lr_onsets) else None
        # the horizon ends at a later lr rise, and at a later loss jump of its own (an lr
        # rise answers for its loss however late it rises)
        cut = lr_after
        k_jump = bisect.bisect_right(self.own_jumps, on)
        if k_jump < len(self.own_jumps) and id(e) not in self.cand.lr_notes:
            cut = min(x for x in (cut, self.own_jumps[k_jump]) if x is not None)
        # the fit floor as it stands before this episode's own aftermath is known (the
        # learning-rate-time re-measure in _verdict uses it too)
        floor = self._fit_floor(on) if run.has_loss else None
        # an aftershock of an lr rise, or an episode right after one whose loss never came
        # back: judged against the loss as it stood
        stood = (self._lr_aftermath(on) or self._stood_since(on)) if run.has_loss else None
        if stood is not None:  # (steps may be negative: no 0 for a missing floor)
            floor = stood.floor if floor is None else max(floor, stood.floor)
        imp = self._impact(e, on, end, nxt, cut, floor, stood=stood) \
            if run.has_loss else None
        rec = imp.impact.recovery_step if imp is not None else None
        if rec is not None and (end is None or rec > end):
            # the loss was still coming back until ``rec``: no healthy level to fit there
            ls = run.ls
            self.healthy[int(np.searchsorted(ls, on)):int(np.searchsorted(ls, rec))] = False
            self.floor = rec if self.floor is None else max(self.floor, rec)
        peak_g, base_g, ratio, peak_step, peak_g_step = self._grad_peak(e, on, end)
        # a loss jump that the grad norm joined - at the jump (the same batch: its step or the
        # next few), spike_ratio x and 3 robust sigmas above its level - in a run whose grad
        # norm varies too much for that rise to trigger alone: a gradient spike found through
        # the loss, not a jump "while the grad norm stayed healthy"
        lr_note = self.cand.lr_notes.get(id(e))
        j_at = _grad_joined(self.cand.ga, run.gs, on, run.g_every, st.spike_ratio) \
            if e.kind == "loss_spike" and e.source == "loss" and lr_note is None else None
        if j_at is not None:  # the grad point that joined the jump is the episode's grad peak
            peak_g, peak_g_step = float(run.g[j_at]), int(run.gs[j_at])
            ratio = float(self.cand.ga.level.ratio[j_at])
        kind = "spike" if j_at is not None else e.kind
        imp, harmful, harm_words = self._verdict(e, on, end, nxt, cut, lr_after, imp,
                                                 lr_note[1] if lr_note is not None else None,
                                                 floor, stood)
        self.last = (on, end, harmful, rec, e.kind)
        back = rec if rec is not None else (on if harmful is False else None)
        if e.kind == "level_shift" and end is not None and back is not None and back < end:
            # a shift the next event interrupted on its new level (or that came back down):
            # the loss since it came back (all of it, harmless) is a healthy level for the
            # next episode's counterfactual
            self.healthy[int(np.searchsorted(run.ls, back)):int(np.searchsorted(run.ls, end))] \
                = True
        if kind == "divergence" and ID_CLIMB in e.detected_by and harmful is False and \
                not (end is None and run.has_grad and run.g.size >= BROKE_RUN
                     and not np.isfinite(run.g[-BROKE_RUN:]).any()):
            kind = "level_shift"  # a slow climb that left the loss alone: no divergence (but
            # one on to a grad norm non-finite to the end is)
        if kind == "divergence" and e.nonfinite_only and self._overflow_at_end(harmful, imp):
            # a few inf/NaN grad norms up to the run's end while the loss went on finite and
            # unharmed after them (fp16 overflow steps in the last steps logged): no divergence
            kind = "nonfinite"
        # a divergence is no warning for a warm restart behind it (that the lr was had before
        # does not make NaN benign)
        restart = lr_note is not None and lr_note[1].restart and kind != "divergence" and \
            not _nan_for_good_after(run, on, end)
        if harmful and lr_note is not None and not restart:
            self.lr_harm.append((on, end if end is not None else on, rec))
        sev = severity(kind, ratio, harmful, run.has_grad, st.spike_ratio, st.explosion_ratio,
                       run.g_every)
        if lr_note is not None:
            if e.kind == "loss_spike":
                # the loss rose after an lr rise: severity follows harm, unless the schedule
                # merely returned to an lr the run already had (a warm restart)
                sev = "explosion" if (harmful and not restart) else "warning"
            if restart:
                sev = "warning"
        # an explosion the loss took no harm from: its grad norm diverged
        harm = harm_words(grad_diverged=sev == "explosion" and harmful is False)
        # (in the words of its raw kind, unless it turned out no divergence)
        reason = explain.episode_reason(
            kind="nonfinite" if kind == "nonfinite" else e.kind, from_grad=e.source == "grad",
            ratio=ratio, base=base_g,
            peak_step=peak_step, harm=harm, harmful=harmful,
            joined_at=peak_g_step if j_at is not None else None, has_grad=run.has_grad,
            g_every=run.g_every, spike_ratio=st.spike_ratio,
            lr_text=lr_note[0] if lr_note is not None else None, lr_restart=restart,
            severity=sev, grad_peak_step=peak_g_step, abrupt=imp is None or imp.abrupt)
        if e.source == "lr" and not harmful and restart:
            return None  # a schedule restart that left no mark on the loss is no episode
        li = imp.impact if imp is not None else None
        if imp is not None and imp.level is not None and ends_above(
                run.lv[max(int(np.searchsorted(run.ls, on)), run.lv.size - 20):], imp.level,
                imp.noise or 0.0):
            self.ends_up.add(on)
        if li is not None and li.diverged and kind in ("spike", "level_shift") and \
                loss_broke(np.isfinite(run.lv[np.searchsorted(run.ls, on):]), True):
            kind, sev = "divergence", "explosion"
        if imp is not None and imp.cf_steps.size:
            # drawn where the loss is there to compare with: not on past a loss gone NaN for
            # good (an isolated NaN point is left out of the window already)
            nan = self.broke_at
            j = int(np.searchsorted(nan, on))
            keep = imp.cf_steps < nan[j] if j < nan.size else slice(None)
            self.counterfactuals[f"counterfactual:{on}"] = (imp.cf_steps[keep],
                                                            imp.cf_values[keep])
        return Episode(
            onset_step=on, peak_step=peak_step, end_step=end, peak_grad_norm=peak_g,
            baseline_grad_norm=base_g, peak_ratio=ratio, kind=kind, severity=sev,
            detected_by=sorted(e.detected_by), loss_impact=li, reason=reason)

    def _overflow_at_end(self, harmful: bool | None, imp: Impact | None) -> bool:
        """The run's grad norm ends with at most ``OVERFLOW_RUN`` inf/NaN points in a row, and
        the loss is logged after the first of them (the loss at that step was computed before
        its update: no evidence), finite to the run's end and not harmed (nor left above its
        level: ``diverged``)."""
        run = self.run
        tail = int(np.argmax(np.isfinite(run.g[::-1])))  # the inf/NaN points the run ends with
        if not run.has_loss or harmful or not 0 < tail <= OVERFLOW_RUN:
            return False
        after = run.lv[int(np.searchsorted(run.ls, run.gs[-tail], side="right")):]
        return bool(after.size) and bool(np.isfinite(after).all()) and \
            not (imp is not None and imp.impact.diverged)

    def _lr_aftermath(self, on: int) -> _StoodSince | None:
        """The harmful lr-rise episode whose unrecovered aftermath ``on`` lies in - within two
        horizons, its loss not come back by ``on`` (impact module doc, "Aftershocks"), with the
        first step after it; None elsewhere."""
        horizon, ls = self.run.st.impact_horizon, self.run.ls
        for on1, end1, rec1 in reversed(self.lr_harm):
            if on < on1 + 2 * horizon and (rec1 is None or rec1 > on):
                # a level needs loss points since the rise's episode (at least 2, outside
                # every episode); with fewer, the loss there cannot be told (judged as before)
                i0, i1 = np.searchsorted(ls, [end1 + 1, on])
                usable = self.anchor_points[i0:i1] & np.isfinite(self.run.lv[i0:i1])
                return _StoodSince(on1, end1 + 1, True) if np.count_nonzero(usable) >= 2 \
                    else None
        return None

    def _stood_since(self, on: int) -> _StoodSince | None:
        """The episode just before ``on`` where its loss never came back (harmful, no recovery
        step) and too few healthy loss points lie between its end and ``on`` for a fit
        (``min_pre``): the fit would reach back across its damage and charge this episode with
        it (a lone harmless grad spike 400 steps after a lasting loss step read as an
        explosion). The level is then the loss as it stood: the longest stretch before ``on``
        (at least ``STOOD_MIN`` points, its own span included) where it held one level
        (:func:`_settled_loss`: a jump still decaying back is no level, and its harm would hide a
        later episode's); None where there is none."""
        if self.last is None:
            return None
        on1, end1, harmful1, rec1, kind1 = self.last
        if not harmful1 or rec1 is not None:
            return None
        ls, lv = self.run.ls, self.run.lv
        i0, i1 = np.searchsorted(ls, [on1, on])
        i_end = int(np.searchsorted(ls, end1)) if end1 is not None else i1
        fin = np.isfinite(lv)
        if np.count_nonzero(self.healthy[i_end:i1] & fin[i_end:i1]) >= MIN_PRE or i1 <= i0:
            return None
        # the longest stretch up to the onset (10, 20, 40, ... points back, after the earlier
        # episode's first STOOD_LAG points) where the loss held one level: a plateau after a
        # jump or a ramp; none where it was still moving (a jump decaying back: its last 10
        # points can pass for level, so 20 are asked for, or all there are)
        pts = i0 + STOOD_LAG + np.flatnonzero(fin[i0 + STOOD_LAG:i1])
        m, best = STOOD_MIN, 0
        while m <= pts.size and _settled_loss(lv[pts[-m:]]):
            best, m = m, 2 * m
        if best < pts.size and best and _settled_loss(lv[pts]):
            best = pts.size
        if best < min(2 * STOOD_MIN, pts.size) or not best:
            return None
        top = int(pts[-best])
        mask = self.anchor_points.copy()
        mask[top:i1] = fin[top:i1]
        # (a level shift this episode interrupted: its loss had not come back by then, which
        # is all that is known)
        cut_short = kind1 == "level_shift" and end1 == on
        return _StoodSince(on1, int(ls[top]), False, mask, cut_short)

    def _fit_floor(self, on: int) -> int | None:
        """The first step the counterfactual of the episode at ``on`` may be fitted from:
        after the last earlier episode's loss aftermath and the last blow-up before ``on``
        (impact module doc, "Aftermath", "Blow-ups")."""
        if self.blowups is None:  # where the loss was above where it started: no trend there
            self.blowups = Blowups(self.run.ls, self.lv_mean)
        floor = self.floor
        settled = self.blowups.floor(on, 2 * self.run.st.impact_horizon)
        if settled is not None:  # the fit starts after the last blow-up before the onset, too
            floor = max(floor or 0, settled)
        return floor

    def _impact(self, e: RawEpisode, on: int, end: int | None, nxt: int | None,
                cut: int | None, floor: int | None,
                lr_t: tuple[np.ndarray, np.ndarray] | None = None,
                stood: _StoodSince | None = None) -> Impact | None:
        """The loss impact of ``e``, its horizon and anchor window ended at ``cut`` (a later
        lr rise or loss jump of its own: :meth:`episode`)."""
        # a level shift that the next episode interrupted on its new level never came back
        # down: its loss is measured as an open-ended one's, up to that episode (whose loss is
        # its own to answer for, as a later lr rise's)
        if e.kind == "level_shift" and end is not None and end == nxt:
            end, cut = None, nxt if cut is None else min(nxt, cut)
        # an aftershock is judged on the loss since the rise's episode, its aftermath included
        flat = stood is not None
        fit_on = self.healthy if not flat else \
            stood.mask if stood.mask is not None else self.anchor_points
        return loss_impact(self.run.ls, self.lv_mean, fit_on, on, end,
                           self.run.st.impact_horizon, next_onset=nxt, cut_at=cut,
                           floor_step=floor, lr_time=lr_t, anchor_points=self.anchor_points,
                           anchor_end=_lr_halved_after(self.run.lr, on,
                                                       self.run.st.impact_horizon), flat=flat)

    def _grad_peak(self, e: RawEpisode, on: int, end: int | None) -> tuple:
        """``(peak grad norm, its healthy level, their ratio, the episode's peak step, the
        grad peak's step)``: a grad episode's own, or the grad norm's highest point within a
        loss episode (None where there is none)."""
        run, ga = self.run, self.cand.ga
        gs, g = run.gs, run.g
        peak_g = base_g = ratio = peak_g_step = None
        if e.source == "grad":
            peak_g = float(g[e.peak])
            base_g = float(np.exp(e.base_log)) if e.base_log is not None else None
            peak_step = int(gs[e.peak])
        else:
            peak_step = int(run.ls[e.peak]) if run.ls.size else on
            if run.has_grad and ga is not None and ga.level is not None:
                i0 = int(np.clip(np.searchsorted(gs, on), 0, gs.size - 1))
                # [onset, end): the end step is the first after the episode
                i1 = int(np.clip(np.searchsorted(gs, end) if end is not None else gs.size,
                                 i0 + 1, gs.size))
                if np.isfinite(g[i0:i1]).any():
                    j = finite_argmax(g, i0, i1)
                    peak_g, peak_g_step = float(g[j]), int(gs[j])
                    lvl = ga.level.level[i0]
                    base_g = float(np.exp(lvl)) if np.isfinite(lvl) else None
        if peak_g is not None and not np.isfinite(peak_g):
            ratio = float("inf")  # (with or without a healthy level to compare it with)
        elif peak_g is not None and base_g:
            # (a finite peak's ratio stays finite: inf says the grad norm went non-finite)
            ratio = min(peak_g / base_g, sys.float_info.max)
        return peak_g, base_g, ratio, peak_step, peak_g_step

    def _verdict(self, e: RawEpisode, on: int, end: int | None, nxt: int | None,
                 cut: int | None, lr_after: int | None, imp: Impact | None, rise: LrRise | None,
                 floor: int | None, stood: _StoodSince | None = None
                 ) -> tuple[Impact | None, bool | None, Callable[..., str]]:
        """``(impact, harmful, harm words)``: harm is lasting damage - the excess over the
        horizon, significant against its own noise - or, where too little of the horizon was
        logged, the jump (None: nothing of the loss could be measured). After a lasting lr
        rise the impact may be measured again in the schedule's learning-rate time. The words
        (:func:`explain.harm_text`) wait for the severity: ``words(grad_diverged=...)``."""
        if imp is None:
            return None, None, lambda grad_diverged: ""
        li = imp.impact
        if imp.level is None:
            said = "the loss went non-finite" if li.diverged else ""
            return imp, (True if li.diverged else None), lambda grad_diverged: said
        run, st = self.run, self.run.st
        lvl = abs(imp.level) or 1.0
        noise = imp.noise or 0.0
        # harm is lasting damage: the excess without the episode's own spike points (None
        # exactly when the excess is)
        ex, jp = imp.lasting_excess, li.loss_jump
        # the run ended (or a later episode's lr rise started) within the horizon, leaving
        # under a quarter of the points a whole horizon holds (and under 5): too short a
        # stretch for lasting damage, so the jump judges (the excess is still reported).
        # Sparse logging alone is no reason.
        short = ex is not None and (imp.cut_step is not None or on + st.impact_horizon >
                                    int(run.ls[-1]) + 1) and \
            imp.horizon_points < max(min(5.0, self.h_points), self.h_points / 4)
        # significant against its own noise: 2 standard errors (the Bonferroni level in a
        # chronically spiky run); the jump only where no excess could be measured
        bars = {"harm": st.harm_excess * lvl, "noise": self.z_harm * imp.excess_noise,
                "chance": self.chance or 0.0}
        ex_thr = max(bars.values())
        # which bar binds, for the words: under the harm bar the loss was not lastingly
        # harmed; under its own noise (or the run's chance) it was only not shown to be
        bar_by = max(bars, key=bars.__getitem__)
        # the counterfactual's trend is the least certain part of the excess (its standard
        # error assumes the model is right): where it expects the loss to keep falling fast
        # (early in training), a loss that only fell less than that - by under DECLINE_SHARE
        # of the expected fall - is no evidence of lasting harm
        fall_bar = DECLINE_SHARE * imp.expected_fall
        harm_thr = max(ex_thr, fall_bar)
        jp_thr = max(st.harm_jump * lvl, 6 * noise)
        # where the lr cut left only a stretch the loss had already recovered in, the jump
        # was transient: no harm
        recovered = imp.cut_step is not None and li.recovery_step is not None and \
            li.recovery_step < imp.cut_step
        harmful = bool(li.diverged
                       or (ex is not None and not short and ex >= harm_thr)
                       or ((ex is None or short) and jp is not None and jp >= jp_thr
                           and not recovered))
        if not li.diverged and ex is None and jp is None:
            harmful = None  # nothing of the loss could be measured (sparse logging)
        # (the horizon is cut at a later lr rise, at a loss jump of its own, or at the
        # episode that interrupted this level shift on its new level)
        held_by = "lr-rise episode" if imp.cut_step is None or imp.cut_step == lr_after else \
            "next episode"
        cut_words = f"the {held_by} at step {imp.cut_step}" if imp.cut_step is not None else \
            "the run ended"
        if harmful is False and not short and rise is not None and \
                not (rise.restart or rise.transient):
            # no harm after a lasting lr rise: measured in the schedule's learning-rate time
            # where the loss after it is where that time puts it (impact module doc)
            lr_t = lr_time(*sorted_points(*run.series.series(run.series.lr_tag)), rise, run.ls,
                           on)
            fast = self._impact(e, on, end, nxt, cut, floor, lr_t, stood) \
                if lr_t is not None else None
            if fast is not None and fast.lasting_excess is not None and \
                    fast.lasting_excess < ex_thr and fast.impact.diverged == li.diverged:
                imp, li = fast, fast.impact
        nonfinite = bool(self.broke_at.size) and self.broke_at[-1] >= on
        # the fall's bar is named where it decided: an excess over the others' but under it
        by_fall = ex is not None and ex_thr <= ex < fall_bar
        words = partial(explain.harm_text, li, imp.level, st.impact_horizon, harmful,
                        harm_thr if by_fall else ex_thr, jp_thr,
                        (imp.horizon_points, cut_words) if short else None,
                        imp.lasting_excess, imp.cut_step, imp.lr_time, nonfinite,
                        by_fall=by_fall, bar_by=bar_by, z=self.z_harm, abrupt=imp.abrupt,
                        aftershock_of=stood.onset if stood is not None else None,
                        after_lr_rise=stood is None or stood.lr_rise, held_by=held_by,
                        cut_short=stood is not None and stood.cut_short)
        return imp, harmful, words


def _finish(run: _Run, cand: _Candidates, episodes: list[Episode],
            counterfactuals: dict[str, tuple[np.ndarray, np.ndarray]]) -> RunAudit:
    """The run's audit: its episodes, status, notes, healthy grad norm, clip suggestion and
    (where it has findings) the figures' traces."""
    series, gs, g, ls, lv, ga = run.series, run.gs, run.g, run.ls, run.lv, cand.ga
    audit = RunAudit(
        run=series.name, format=series.format, files=list(series.files),
        grad_norm_tag=series.grad_norm_tag, loss_tag=series.loss_tag, lr_tag=series.lr_tag,
        n_steps=int(gs.size if gs.size else ls.size), status="ok",
        first_step=int(gs[0]) if gs.size else (int(ls[0]) if ls.size else None),
        last_step=int(gs[-1]) if gs.size else (int(ls[-1]) if ls.size else None),
        errors=list(series.problems), notes=list(series.notes) + run.notes,
        too_short=run.short_note is not None, short_note=run.short_note)
    audit.episodes = episodes
    for what, k, top in (("grad-norm", ga.n_unlisted if ga is not None else 0,
                          ga.unlisted_max_ratio if ga is not None else None),
                         ("loss", cand.n_loss_unlisted, None)):
        if k:
            up = f" of up to {top:.3g}x the healthy level" if top else ""
            audit.notes.append(
                f"chronically spiky {what}: {k} further candidate {what} episodes{up} are not "
                f"listed (only the {run.p.max_episodes} largest are reported, with their loss "
                f"impact); spikes this frequent are the run's normal regime")
    restarts = frozenset(on for e, on, end in cand.raw
                         if id(e) in cand.lr_notes and cand.lr_notes[id(e)][1].restart
                         and not _nan_for_good_after(run, on, end))
    sev_rank = {"warning": 1, "explosion": 2}
    worst = max((sev_rank[e.severity] for e in episodes), default=0)
    audit.status = ("ok", "warning", "explosion")[worst]
    n_logged = gs.size if run.has_grad else ls.size
    audit.spike_rate = 1000.0 * len(episodes) / n_logged if n_logged else None
    if run.has_grad and ga is not None:
        # the finite norms the detectors judged against a healthy level (a level carried over
        # non-finite points judged nothing there)
        judged = np.isfinite(g) & (g > 0)
        judged &= np.isfinite(ga.level.level) if ga.level is not None else False
        clip_notes: list[str] = []
        healthy, regime = _healthy_grad(gs, g, ga.in_episode, episodes, run.warm, judged,
                                        clip_notes, horizon=run.st.impact_horizon)
        n_healthy = int(healthy.sum())
        if n_healthy >= MIN_HEALTHY_LEVEL:  # fewer points are no level to compare runs by
            audit.healthy_grad_norm = float(np.median(g[healthy]))
        if not judged.any() and run.n_usable > run.p.min_history:
            # enough points, but the grad norm never had a level (episodes among its first)
            note = explain.never_judged_note(run.p.min_history, run.n_loss,
                                             run.loss_judged_without_level())
            audit.notes.append(note)
            if run.n_loss <= run.p.min_history:
                audit.too_short, audit.short_note = True, note
        # a threshold comes only from norms judged healthy against a level: where fewer than
        # MIN_HEALTHY_LEVEL were (a short run, a run mostly in episodes), the median above is
        # still a level to compare a smoke run with its baseline by, but a threshold from
        # unjudged norms would be set by whatever explosion they hold (an 11-point excerpt cut
        # around one: its peak)
        no_level = audit.too_short or \
            int(np.count_nonzero(healthy & judged)) < MIN_HEALTHY_LEVEL
        advice = explain.advice(episodes, series, gs, g, run.has_grad, run.g_every, restarts,
                                clip_regime=regime, no_level=no_level)
        ceiling = clip_ceiling(g)
        if ceiling is not None:  # clipped norms: every option would be judged on them
            audit.notes.append(explain.clipped_norm_note(*ceiling,
                                                         int(np.count_nonzero(np.isfinite(g)))))
        if no_level or ceiling is not None:
            audit.clip = suggest([], run.st.clip_max_cost, advice)
        else:
            audit.notes += clip_notes
            audit.healthy_quantiles = healthy_quantiles(g, healthy)
            opts = clip_options(g, healthy, _grad_slices(gs, episodes), ga.zclip_final_bound)
            # (episodes of the grad norm only: fp16 overflow steps and loss spikes are none; and
            # a regime's norms, after a harmless level shift, are not the whole run's)
            n_grad = sum(e.kind in GRAD_KINDS for e in episodes)
            tail = unstable_tail(g[healthy], n_grad) if regime is None else None
            if tail is not None:
                advice = "; ".join(x for x in (explain.unstable_advice(n_grad, tail), advice)
                                   if x)
            audit.clip = suggest(opts, run.st.clip_max_cost, advice, int(healthy.sum()),
                                 unstable=tail is not None)
    else:
        advice = explain.advice(episodes, series, gs, g, run.has_grad, run.g_every, restarts)
        audit.clip = suggest([], run.st.clip_max_cost, advice)
    if episodes:
        audit.traces = figure_traces(counterfactuals, episodes,
                                     (gs, g) if run.has_grad else None,
                                     (ls, lv) if run.has_loss else None,
                                     run.st.impact_horizon)
    return audit


def _empty(series: RunSeries, status: str, notes: list[str]) -> RunAudit:
    n, first, last = series.step_summary()
    return RunAudit(
        run=series.name, format=series.format, files=list(series.files),
        grad_norm_tag=series.grad_norm_tag, loss_tag=series.loss_tag, lr_tag=series.lr_tag,
        n_steps=n, first_step=first, last_step=last, status=status,
        errors=list(series.problems), notes=list(series.notes) + notes,
    )



def _grad_slices(gs: np.ndarray, episodes: list[Episode]) -> list[tuple[int, int] | None]:
    """Each reported episode's first and last grad point (from its onset to before its end, to
    the run's end when it has none); None for a ``loss_spike`` (its grad norm stayed healthy)
    and where no grad point lies in it."""
    out: list[tuple[int, int] | None] = []
    for e in episodes:
        i0, i1 = _span(gs, e)
        i1 = max(i1, min(i0 + 1, gs.size))  # an episode of one step holds its own point
        out.append(None if e.kind == "loss_spike" or i0 >= i1 else (i0, i1 - 1))
    return out


def _span(gs: np.ndarray, e: Episode) -> tuple[int, int]:
    """The grad points from ``e``'s onset to before its end (to the run's end when it has
    none), as ``gs`` indices ``[i0, i1)``."""
    i0 = int(np.searchsorted(gs, e.onset_step))
    return i0, gs.size if e.end_step is None else int(np.searchsorted(gs, e.end_step))


def _healthy_grad(gs: np.ndarray, g: np.ndarray, in_episode: np.ndarray,
                  episodes: list[Episode], warm: int | None,
                  judged: np.ndarray | None = None, notes: list[str] | None = None,
                  min_regime: int = 50,
                  horizon: int = 200) -> tuple[np.ndarray, int | None]:
    """The healthy grad-norm points the clip options are computed from: finite and > 0, after
    the lr warm-up, where the detectors had a healthy level to judge against (``judged``: the
    first points of a run are no evidence of health - an early explosion there is not caught),
    outside every grad-norm episode and outside every reported episode of any kind or severity
    (warnings, loss episodes, lr-attributed episodes whose onset moved to the lr rise), each
    from its onset to its end (to the run's end when it has none; an explosion to its loss's
    ``recovery_step`` where that is later). Where the grad norm changed
    its scale for good and the loss took no lasting harm (a harmless level shift to the run's
    end or to the next event on its new level: a changed batch size, gradient accumulation,
    loss scale), the points after the last such change are the healthy ones (at least
    ``min_regime`` of them; before any explosion the loss never came back from): a threshold
    applied from here on meets that regime, and one from before it would clip every step. After
    an explosion the loss never came back from, the norms are a damaged model's: only the
    points before it count (where at least ``min_regime`` are left). Also returns the onset
    step of the regime the points came from (None where they are not a regime's)."""
    healthy = ~in_episode & np.isfinite(g) & (g > 0)
    if warm is not None:
        healthy &= gs > warm
    if judged is not None and judged.size == g.size and \
            (healthy & judged).sum() >= MIN_HEALTHY_LEVEL:
        healthy &= judged
    damaged = [e.onset_step for k, e in enumerate(episodes)
               if _never_came_back(episodes, k, horizon)]
    cut = min(damaged) if damaged else None
    # a harmless change of scale for good: one that runs to the run's end, or to where the
    # next event began on its new level (before any damage)
    regime = [e for k, e in enumerate(episodes) if e.kind == "level_shift"
              and e.severity == "warning" and (cut is None or e.onset_step < cut)
              and (e.end_step is None or interrupted(episodes, k))]
    out, source = None, None
    if regime:  # the run's last regime (before any damage) is the healthy one
        after = np.isfinite(g) & (g > 0) & (gs >= regime[-1].onset_step)
        if cut is not None:
            after &= gs < cut
        after = _outside(after, gs, [e for e in episodes if e is not regime[-1]])
        # reached by a ramp: the level it settled at, if it did (halves from the end)
        while after.sum() >= 2 * min_regime and not holds_level(g[after]):
            idx = np.flatnonzero(after)
            after[idx[:idx.size // 2]] = False
        if after.sum() >= min_regime and holds_level(g[after]):
            out, source = after, regime[-1].onset_step
    few_before = None
    if out is None and damaged:  # the loss never came back: the norms after are a damaged
        before = _outside(healthy & (gs < cut), gs, episodes)  # model's
        if before.sum() >= min_regime:
            return before, None
        few_before = int(before.sum())
    if out is None:
        out = _outside(healthy, gs, episodes)
    if few_before is not None and notes is not None and out[gs >= min(damaged)].any():
        notes.append(f"the loss never came back from the explosion at step {min(damaged)}, "
                     f"but only {few_before} healthy grad norms precede it (fewer than "
                     f"{min_regime}): the clip options use the norms after it too")
    return out, source



def _settled_loss(v: np.ndarray, min_points: int = 10) -> bool:
    """The loss points ``v`` (in step order; at least ``min_points``) hold one level: the
    medians of their halves differ by at most 3 standard errors of such a difference (from
    the points' noise), or 1 % of the level."""
    if v.size < min_points:
        return False
    h = v.size // 2
    m1, m2 = float(np.median(v[:h])), float(np.median(v[h:]))
    se = 1.25 * diff_sigma(v) * float(np.sqrt(1.0 / h + 1.0 / (v.size - h)))
    return abs(m2 - m1) <= max(3.0 * se, 0.01 * abs(m2))


def _never_came_back(episodes: list[Episode], k: int, horizon: int) -> bool:
    """Whether explosion ``episodes[k]``'s loss is known never to have come back: no recovery
    step where its loss was judged (a run whose loss ends before the onset tells nothing), and
    not a level shift that the next episode interrupted on its new level within a horizon (its
    recovery was not seen)."""
    e = episodes[k]
    li = e.loss_impact
    if e.severity != "explosion" or li is None or li.recovery_step is not None:
        return False
    if li.excess_loss is None and li.loss_jump is None and not li.diverged:
        return False  # no loss after its onset: nothing known of a recovery
    return not (interrupted(episodes, k) and e.end_step - e.onset_step < horizon)


def _outside(mask: np.ndarray, gs: np.ndarray, episodes: list[Episode]) -> np.ndarray:
    """``mask`` (changed in place) with every episode's points, from its onset to its end (to
    the run's end when it has none) - for an explosion, to where its loss came back if that is
    later: the norms while a harmed model recovers are no healthy level - set False."""
    for e in episodes:
        i0, i1 = _span(gs, e)
        li = e.loss_impact
        if e.severity == "explosion" and li is not None and li.recovery_step is not None:
            i1 = max(i1, int(np.searchsorted(gs, li.recovery_step)))
        mask[i0:max(i1, i0 + 1)] = False
    return mask



def _bucket_means(series: RunSeries, ls: np.ndarray, lv: np.ndarray) -> np.ndarray:
    """The loss as the mean of each logged bucket where the export is bucketed (the loss tag has
    ``__MIN``/``__MAX`` siblings, as in a W&B chart CSV; :func:`bucket_mean`), else as logged."""
    tag = series.loss_tag
    if tag is None:
        return lv
    try:
        cats = set(series.frame["tag"].cat.get_categories().to_list())
    except Exception:  # noqa: BLE001 - not a categorical column
        cats = set(series.tags())
    if f"{tag}__MIN" not in cats or f"{tag}__MAX" not in cats:
        return lv
    mn = sorted_points(*series.series(f"{tag}__MIN"))
    mx = sorted_points(*series.series(f"{tag}__MAX"))
    if mn[0].size == 0 or mx[0].size == 0:
        return lv
    return bucket_mean(ls, lv, *mn, *mx)



def _nan_for_good_after(run: _Run, on: int, end: int | None) -> bool:
    """Whether the loss went non-finite for good (to the log's end) from a point in the
    episode at ``on`` (to ``end``, None: the run's end): a divergence, which a schedule's warm
    restart does not make a warning."""
    lv = run.lv
    if not lv.size or np.isfinite(lv[-1]):
        return False
    fin = np.flatnonzero(np.isfinite(lv))
    start = int(run.ls[fin[-1] + 1]) if fin.size else int(run.ls[0])
    return on <= start and (end is None or start < end)


def _jumped(ls: np.ndarray, lv: np.ndarray, on: int, end: int | None, horizon: int,
            lead: int = 9) -> bool:
    """Whether the loss at ``on`` jumped: within ``ABRUPT_POINTS`` logged points it stood half
    the way up from its level (the median of the ``lead`` finite points before) to its
    highest point in the episode (its first horizon)."""
    i0 = int(np.searchsorted(ls, on))
    i1 = int(np.searchsorted(ls, min(end, on + horizon) if end is not None else on + horizon))
    before, seg = lv[max(0, i0 - lead):i0], lv[i0:max(i1, i0 + ABRUPT_POINTS)]
    before, seg = before[np.isfinite(before)], seg[np.isfinite(seg)]
    if not seg.size:
        return False
    if not before.size:
        return True  # (no level before it: the first points)
    lvl = float(np.median(before))
    return bool(np.any(seg[:ABRUPT_POINTS] - lvl >= 0.5 * (float(seg.max()) - lvl)))


def _grad_joined(ga: GradAnalysis | None, gs: np.ndarray, on: int, g_every: int,
                 spike_ratio: float, lag: int = 3, z_min: float = 3.0) -> int | None:
    """The grad point (index) that rose ``spike_ratio`` x and ``z_min`` robust sigmas above
    its level within a logged point before and ``lag`` after step ``on`` (the highest), or
    None. (Not further back where the loss is logged more sparsely: in a grad norm with
    ordinary 3x points, a longer window would hold one by chance.)"""
    if ga is None or ga.level is None or not gs.size:
        return None
    i0 = int(np.searchsorted(gs, on - g_every))
    i1 = int(np.searchsorted(gs, on + lag * g_every, side="right"))
    rl = ga.level
    with np.errstate(invalid="ignore"):
        hit = (rl.ratio[i0:i1] >= spike_ratio) & (rl.z[i0:i1] >= z_min)
    if not hit.any():
        return None
    return i0 + int(np.argmax(np.where(hit, rl.ratio[i0:i1], -np.inf)))



def _chance_excess(ls: np.ndarray, lv: np.ndarray, healthy: np.ndarray, horizon: int,
                   n_tests: int) -> float | None:
    """The excess loss that chance alone reaches in this run, for a chronically spiky run.

    Such a run (more candidate episodes than ``max_episodes``) tests hundreds of episodes at
    once, and its spikes are its normal regime: an episode only counts as harm where its
    excess beats what the run's own loss does over *any* horizon. The statistic, at every
    healthy point ``t``: the mean of the loss (running median of 9) over the next ``horizon``
    points minus its mean over the ``2 horizon`` points before - the excess
    against a flat counterfactual. The bar is its ``1 - 0.05 / n_tests`` quantile (Bonferroni:
    about one false harm verdict in 20 runs however many episodes are listed). None with too
    few points. The episode's own counterfactual fit is noisier than this flat comparison, so
    the engine also raises the bar on each episode's own standard error from 2 to the same
    Bonferroni level (``z_harm``)."""
    from scipy.ndimage import median_filter

    h = int(max(1, horizon))
    fin = np.isfinite(lv)
    if ls.size < 5 * h or fin.sum() < 5 * h:
        return None
    sm = median_filter(np.where(fin, lv, np.nanmedian(lv[fin])), size=9, mode="nearest")
    c = np.concatenate(([0.0], np.cumsum(sm)))
    t = np.arange(2 * h, ls.size - h + 1)
    stat = (c[t + h] - c[t]) / h - (c[t] - c[t - 2 * h]) / (2 * h)
    stat = stat[healthy[t]]
    if stat.size < 100:
        return None
    q = 1.0 - 0.05 / max(1, n_tests)
    return float(np.quantile(stat, min(q, 1.0 - 1.0 / stat.size)))


