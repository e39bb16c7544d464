"""The engine: one RunSeries in, one RunAudit out (episodes, loss impact, clip advice, status).

Bad input never raises: a run with no usable series, negative grad norms or only NaNs gets
status ``error`` and a note saying why.
"""

from __future__ import annotations

import bisect

import numpy as np
from scipy.special import ndtri

from gradaudit.adapters.hf_trainer import FORMAT as HF_FORMAT
from gradaudit.clip import clip_options, suggest
from gradaudit.detect.loss_rise import BLOCK as RISE_BLOCK
from gradaudit.detect.loss_rise import ID as ID_RISE
from gradaudit.detect.loss_spike import ID as ID_SPIKE
from gradaudit.detect.lr_change import ID as ID_LR
from gradaudit.detect.lr_change import (
    LrRise,
    lr_onset_step,
    lr_rise_step,
    lr_rises,
    lr_time,
    warmup_end_step,
)
from gradaudit.episodes import (
    EpisodeParams,
    GradAnalysis,
    RawEpisode,
    grad_episodes,
    loss_episodes,
    severity,
)
from gradaudit.errors import UNEXPECTED
from gradaudit.impact import bucket_mean, loss_impact
from gradaudit.model import MIN_HEALTHY_LEVEL, Episode, LossImpact, RunAudit
from gradaudit.series import RunSeries
from gradaudit.settings import Settings

MAX_TRACE_POINTS = 2000
MAX_ZOOMS = 3  # episodes of a long run drawn again at full resolution
WARMUP_NOTE_STEPS = 100  # a detectors' warm-up this many steps long or more gets a run note


def _clean(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by step, one value per step (the last given), whatever the caller built."""
    steps = np.asarray(steps, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    n = min(steps.size, values.size)
    steps, values = steps[:n], values[:n]
    if n < 2 or np.all(np.diff(steps) > 0):
        return steps, values
    order = np.argsort(steps, kind="stable")
    s, v = steps[order], values[order]
    keep = np.ones(n, bool)
    keep[:-1] = s[1:] != s[:-1]  # last write of each step
    return s[keep], v[keep]


def decimate(steps: np.ndarray, values: np.ndarray,
             max_points: int = MAX_TRACE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Min/max decimation: at most ~``max_points`` points, every bucket's extremes kept."""
    n = steps.size
    if n <= max_points:
        return steps.copy(), values.copy()
    buckets = max_points // 2
    size = -(-n // buckets)
    pad = buckets * size - n
    v = np.concatenate((values, np.full(pad, np.nan)))
    vv = np.where(np.isfinite(v), v, np.nan).reshape(buckets, size)
    allnan = np.all(np.isnan(vv), axis=1)
    filled = np.where(np.isnan(vv), -np.inf, vv)
    imax = np.argmax(filled, axis=1)
    filled = np.where(np.isnan(vv), np.inf, vv)
    imin = np.argmin(filled, axis=1)
    base = np.arange(buckets) * size
    idx = np.concatenate((base + imin, base + imax))
    idx = idx[(idx < n) & ~np.concatenate((allnan, allnan))]
    # keep non-finite values visible as well (they are the events)
    nonfin = np.flatnonzero(~np.isfinite(values))[:max_points // 10]
    idx = np.unique(np.concatenate((idx, nonfin, [0, n - 1])))
    return steps[idx], values[idx]


def _empty(series: RunSeries, status: str, notes: list[str]) -> RunAudit:
    n, first, last = series.step_summary()
    return RunAudit(
        run=series.name, format=series.format, files=list(series.files),
        grad_norm_tag=series.grad_norm_tag, loss_tag=series.loss_tag, lr_tag=series.lr_tag,
        n_steps=n, first_step=first, last_step=last, status=status,
        errors=list(series.problems), notes=list(series.notes) + notes,
    )


def audit_run(series: RunSeries, settings: Settings | None = None) -> RunAudit:
    """Audit one run; never raises on bad data (status ``error`` with a note instead)."""
    settings = settings or Settings()
    try:
        return _audit(series, settings)
    except UNEXPECTED as exc:  # a bad run must not stop the batch
        return _empty(series, "error", [f"analysis failed: {type(exc).__name__}: {exc}"])


def _audit(series: RunSeries, st: Settings) -> RunAudit:
    notes: list[str] = []
    gs, g = _clean(*series.series(series.grad_norm_tag))
    ls, lv = _clean(*series.series(series.loss_tag))
    if series.grad_norm_tag is None:
        notes.append("no grad-norm series among the run's tags: audited from the loss alone "
                     "(pass --grad-tag if it is logged under another name)")
    elif g.size == 0:
        notes.append("grad-norm tag has no points")
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
        # a loss logged and never finite: training diverged before its first logged step
        # (fp16 without loss scaling, a bad init or lr): an explosion, not an unreadable run
        audit = _empty(series, "explosion", notes)
        audit.episodes = [Episode(
            onset_step=int(ls[0]), peak_step=int(ls[0]), end_step=None, peak_grad_norm=None,
            baseline_grad_norm=None, peak_ratio=None, kind="divergence", severity="explosion",
            detected_by=["nonfinite"], loss_impact=LossImpact(None, None, None, True),
            reason=f"the loss was never finite: all {lv.size} logged value(s) of "
                   f"{series.loss_tag!r} are NaN/inf, so training diverged before its first "
                   "logged step (or that tag holds no loss)")]
        return audit
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
    if has_grad:
        ok = np.isfinite(g) & (g > 0)
        if ok.sum() >= 2 and np.ptp(g[ok]) == 0:
            notes.append("grad norm is constant")
    p = EpisodeParams(spike_ratio=st.spike_ratio, level_ratio=st.level_ratio,
                      merge_gap=st.merge_gap)
    # no healthy level exists before p.min_history points: nothing can be judged against one
    usable = int(ok.sum()) if has_grad else int(np.isfinite(lv).sum())
    if usable <= p.min_history:
        what = "grad-norm" if has_grad else "loss"
        notes.append(f"only {usable} usable {what} points: too few to judge (a healthy level "
                     f"needs more than {p.min_history})")
    warm = None  # last step of the lr warm-up: no healthy level exists before it
    if series.lr_tag is not None:
        rs, rv = _clean(*series.series(series.lr_tag))
        warm = warmup_end_step(rs, rv)
        if warm is not None and rs.size and warm > rs[min(rs.size - 1, rs.size // 4)]:
            warm = None  # an lr that rises through most of the run is no warm-up
    if usable > p.min_history:
        _warmup_note(notes, gs[ok] if has_grad else ls[np.isfinite(lv)], warm, p.min_history)
    ga: GradAnalysis | None = None
    raw: list[tuple[RawEpisode, int, int | None]] = []  # (episode, onset step, end step)
    if has_grad:
        ga = grad_episodes(g, p, skip=int(np.searchsorted(gs, warm, side="right"))
                           if warm is not None else 0)
        for e in ga.episodes:
            end = int(gs[e.last + 1]) if e.last + 1 < gs.size else None
            raw.append((e, int(gs[e.onset]), end))
    # a loss the format logs as a mean over a logging interval of several steps
    interval_mean = series.loss_tag in series.interval_means and _typical_gap(ls) > 1
    l_eps = loss_episodes(lv, p, skip=int(np.searchsorted(ls, warm, side="right"))
                          if warm is not None else 0, loss_only=not has_grad,
                          interval_mean=interval_mean) if has_loss else []
    g_every = _typical_gap(gs)  # the grad norm's logging interval (1 for a single point)
    lag_steps = g_every * (p.merge_gap + 1) if gs.size > 1 else 0
    # a loss logged more sparsely than the grad norm shows a jump only at its next logged point
    # after the grad episode (never before it: the loss trails the gradient)
    l_late = max(0, _typical_gap(ls) - g_every) if gs.size > 1 else 0
    # the grad episodes are sorted and disjoint (onsets and ends both rise): the first one whose
    # window [onset - lag, end + lag + l_late] holds a loss onset is found by bisection
    g_on = np.array([r[1] for r in raw], dtype=np.int64)
    g_end = np.array([r[2] if r[2] is not None else (int(ls[-1]) if ls.size else r[1])
                      for r in raw], dtype=np.int64)
    n_grad = len(raw)
    reach = np.maximum.accumulate(g_end + lag_steps + l_late) if n_grad else g_end  # first >= on
    for le in l_eps:
        on, end = int(ls[le.onset]), (int(ls[le.last + 1]) if le.last + 1 < ls.size else None)
        owner = None
        j = int(np.searchsorted(reach, on)) if n_grad else 0
        if j < n_grad and g_on[j] - lag_steps <= on:
            owner = raw[j][0]
        if owner is not None:
            owner.detected_by |= le.detected_by
            if le.kind == "divergence":
                owner.kind = "divergence"
            continue
        raw.append((le, on, end))
    lr_notes: dict[int, tuple[str, LrRise]] = {}  # id(episode) -> (lr text, the rise)
    if has_loss or has_grad:
        raw = _attach_lr(series, raw, gs if has_grad else ls, g if has_grad else None, ls, lv,
                         lr_notes, p.merge_gap, st.lr_ratio, st.lr_lookahead,
                         p.level_min_points, ga.episodes if ga is not None else None)
    raw.sort(key=lambda r: r[1])
    # healthy loss points: outside every episode
    l_healthy = np.ones(ls.size, bool)
    for _, on, end in raw:
        i0 = int(np.searchsorted(ls, on))
        i1 = ls.size if end is None else int(np.searchsorted(ls, end))
        l_healthy[i0:i1] = False
    episodes: list[Episode] = []
    traces: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    lv_mean = _bucket_means(series, ls, lv) if has_loss and raw else lv
    floor: int | None = None  # where the last episode's loss aftermath ended
    n_cand = len(raw) + (ga.n_unlisted if ga is not None else 0) + \
        getattr(l_eps, "n_unlisted", 0)
    chance = None  # a chronically spiky run: the excess that chance alone reaches (see below)
    z_harm = 2.0  # standard errors of its own estimate an excess must reach to count as harm
    h_points = st.impact_horizon / _typical_gap(ls) if ls.size > 1 else 1.0  # a full horizon
    if has_loss and n_cand > p.max_episodes:
        chance = _chance_excess(ls, lv_mean, l_healthy, st.impact_horizon, len(raw))
        # hundreds of episodes judged at once: each against its own standard error at the
        # Bonferroni level (about one false harm verdict in 20 such runs), not at 2 sigma
        z_harm = max(z_harm, float(ndtri(1.0 - 0.05 / max(1, len(raw)))))
    # the loss after an lr rise is that rise's to answer for, not an earlier episode's (a later
    # grad episode may be this one's aftershock: its damage stays in this horizon)
    # (a schedule restart is the schedule's own doing, no fault: it cuts nothing)
    lr_onsets = [on for e, on, _ in raw if ID_LR in e.detected_by
                 and not lr_notes[id(e)][1].restart]  # raw is sorted by onset
    nan_loss_steps = ls[~np.isfinite(lv)]  # where the loss went NaN/inf (sorted)
    for k, (e, on, end) in enumerate(raw):
        nxt = raw[k + 1][1] if k + 1 < len(raw) else None
        k_lr = bisect.bisect_right(lr_onsets, on)
        lr_after = lr_onsets[k_lr] if k_lr < len(lr_onsets) else None
        imp = loss_impact(ls, lv_mean, l_healthy, on, end, st.impact_horizon, next_onset=nxt,
                          cut_at=lr_after, floor_step=floor) if has_loss else None
        rec = imp.impact.recovery_step if imp is not None else None
        if rec is not None and (end is None or rec > end):
            # the loss was still coming back until ``rec``: no healthy level to fit there
            l_healthy[int(np.searchsorted(ls, on)):int(np.searchsorted(ls, rec))] = False
            floor = rec if floor is None else max(floor, rec)
        peak_g = base_g = ratio = peak_g_step = None
        if e.source == "grad":
            peak_g = float(g[e.peak])
            base_g = float(np.exp(e.base_log)) if e.base_log is not None else None
            peak_step = int(gs[e.peak])
        else:
            peak_step = int(ls[e.peak]) if ls.size else on
            if has_grad and ga is not None and ga.level is not None:
                i0 = int(np.clip(np.searchsorted(gs, on), 0, gs.size - 1))
                i1 = int(np.clip(np.searchsorted(gs, end if end is not None else gs[-1],
                                                 side="right"), i0 + 1, gs.size))
                seg = g[i0:i1]
                fin = np.isfinite(seg)
                if fin.any():
                    j = i0 + int(np.argmax(np.where(fin, seg, -np.inf)))
                    peak_g, peak_g_step = float(g[j]), int(gs[j])
                    lvl = ga.level.level[i0]
                    base_g = float(np.exp(lvl)) if np.isfinite(lvl) else None
        if peak_g is not None and base_g:
            ratio = peak_g / base_g if np.isfinite(peak_g) else float("inf")
        # a loss jump that the grad norm joined - at the jump (the same batch: its step or the
        # next few), spike_ratio x and 3 robust sigmas above its level - in a run whose grad
        # norm varies too much for that rise to trigger alone: a gradient spike found through
        # the loss, not a jump "while the grad norm stayed healthy"
        j_at = _grad_joined(ga, gs, on, g_every, st.spike_ratio) if e.kind == "loss_spike" \
            and e.source == "loss" and id(e) not in lr_notes else None
        joined = j_at is not None
        if joined:  # the grad point that joined the jump is the episode's grad peak
            peak_g, peak_g_step = float(g[j_at]), int(gs[j_at])
            ratio = float(ga.level.ratio[j_at])
        ep_kind = "spike" if joined else e.kind
        harmful = None
        li = imp.impact if imp is not None else None
        harm_text = ""
        if imp is not None and imp.level is not None:
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
                                        int(ls[-1]) + 1) and \
                imp.horizon_points < max(min(5.0, h_points), h_points / 4)
            # harm = lasting damage: the excess over the horizon, significant against its own
            # noise (2 standard errors; the Bonferroni level in a chronically spiky run); the
            # jump only where no excess could be measured
            ex_thr = max(st.harm_excess * lvl, z_harm * imp.excess_noise, chance or 0.0)
            jp_thr = max(st.harm_jump * lvl, 6 * noise)
            # where the lr cut left only a stretch the loss had already recovered in, the jump
            # was transient: no harm
            recovered = imp.cut_step is not None and li.recovery_step is not None and \
                li.recovery_step < imp.cut_step
            harmful = bool(li.diverged
                           or (ex is not None and not short and ex >= ex_thr)
                           or ((ex is None or short) and jp is not None and jp >= jp_thr
                               and not recovered))
            if not li.diverged and ex is None and jp is None:
                harmful = None  # nothing of the loss could be measured (sparse logging)
            cut = f"the lr-rise episode at step {imp.cut_step}" if imp.cut_step is not None else \
                "the run ended"
            rise = lr_notes[id(e)][1] if id(e) in lr_notes else None
            if harmful is False and not short and rise is not None and \
                    not (rise.restart or rise.transient):
                # no harm after a lasting lr rise: measured in the schedule's learning-rate
                # time where the loss after it is where that time puts it (impact module doc)
                lr_t = lr_time(*_clean(*series.series(series.lr_tag)), rise, ls, on)
                fast = loss_impact(ls, lv_mean, l_healthy, on, end, st.impact_horizon,
                                   next_onset=nxt, cut_at=lr_after, floor_step=floor,
                                   lr_time=lr_t) if lr_t is not None else None
                if fast is not None and fast.lasting_excess is not None and \
                        fast.lasting_excess < ex_thr and fast.impact.diverged == li.diverged:
                    imp, li = fast, fast.impact
            harm_text = _harm_text(li, imp.level, st.impact_horizon, harmful, ex_thr, jp_thr,
                                   (imp.horizon_points, cut) if short else None,
                                   imp.lasting_excess, imp.cut_step, imp.lr_time,
                                   bool(nan_loss_steps.size) and nan_loss_steps[-1] >= on)
        elif imp is not None:
            harmful = bool(li.diverged) if li.diverged else None
            if li.diverged:
                harm_text = "the loss went non-finite"
        reason = _grad_text(e.kind, ratio, base_g, peak_step, e.source == "grad")
        if harm_text:
            reason = f"{reason}; {harm_text}" if reason else harm_text
        if harmful is None and e.kind not in ("nonfinite", "divergence"):
            reason = (f"{reason}; " if reason else "") + \
                "no loss to judge the harm: severity from the peak ratio"
        lr_note = lr_notes.get(id(e))
        if joined:
            reason = (f"the loss jumped and the grad norm rose {ratio:.3g}x with it (peak at "
                      f"step {peak_g_step}; this run's grad norm varies too much for that rise to "
                      f"flag alone); {harm_text or reason}")
        elif e.kind == "loss_spike" and has_grad and lr_note is None:
            if g_every > 1:  # a one-step spike between two logged grad norms is invisible
                reason = (f"the loss jumped while the grad norm, logged every {g_every:g} "
                          "steps, stayed healthy at the logged steps: no gradient explosion "
                          f"seen; {harm_text or reason}")
            elif ratio is not None and ratio >= st.spike_ratio:
                # the grad norm rose later in a long loss episode, not with the jump
                reason = ("the loss jumped while the grad norm stayed healthy at the jump (it "
                          f"peaked {ratio:.3g}x later, at step {peak_g_step}): no gradient "
                          f"explosion behind the jump; {harm_text or reason}")
            else:
                reason = ("the loss jumped while the grad norm stayed healthy: no gradient "
                          f"explosion, clipping would not help; {harm_text or reason}")
        sev = severity(ep_kind, ratio, harmful, has_grad, st.spike_ratio, st.explosion_ratio)
        if lr_note is not None:
            text, restart = lr_note[0], lr_note[1].restart
            if e.kind == "loss_spike":
                # the loss rose after an lr rise: severity follows harm, unless the schedule
                # merely returned to an lr the run already had (a warm restart)
                sev = "explosion" if (harmful and not restart) else "warning"
            if restart:
                sev = "warning"
                text += " - a warning only: the schedule returned to an earlier lr"
            reason = f"{text}; {reason}" if reason else text
        if sev == "warning" and harmful and e.kind in ("spike", "level_shift") and \
                ratio is not None and ratio < st.spike_ratio:
            reason += f" (a warning: the grad norm peaked below {st.spike_ratio:g}x)"
        if e.source == "lr" and not harmful and lr_note is not None and lr_note[1].restart:
            continue  # a schedule restart that left no mark on the loss is no episode
        kind = ep_kind
        if li is not None and li.diverged and kind in ("spike", "level_shift") and \
                not np.isfinite(lv[np.searchsorted(ls, on):]).all():
            kind, sev = "divergence", "explosion"
        episodes.append(Episode(
            onset_step=on, peak_step=peak_step, end_step=end, peak_grad_norm=peak_g,
            baseline_grad_norm=base_g, peak_ratio=ratio, kind=kind, severity=sev,
            detected_by=sorted(e.detected_by), loss_impact=li, reason=reason))
        if imp is not None and imp.cf_steps.size:
            # drawn where the loss is there to compare with: not on past a loss gone NaN
            j = int(np.searchsorted(nan_loss_steps, on))
            keep = imp.cf_steps < nan_loss_steps[j] if j < nan_loss_steps.size else slice(None)
            traces[f"counterfactual:{on}"] = (imp.cf_steps[keep], imp.cf_values[keep])
    audit = RunAudit(
        run=series.name, format=series.format, files=list(series.files),
        grad_norm_tag=series.grad_norm_tag, loss_tag=series.loss_tag, lr_tag=series.lr_tag,
        n_steps=int(gs.size if gs.size else ls.size), status="ok",
        first_step=int(gs[0]) if gs.size else (int(ls[0]) if ls.size else None),
        last_step=int(gs[-1]) if gs.size else (int(ls[-1]) if ls.size else None),
        errors=list(series.problems), notes=list(series.notes) + notes)
    audit.episodes = episodes
    for what, k, top in (("grad-norm", ga.n_unlisted if ga is not None else 0,
                          ga.unlisted_max_ratio if ga is not None else None),
                         ("loss", getattr(l_eps, "n_unlisted", 0), None)):
        if k:
            up = f" of up to {top:.3g}x the healthy level" if top else ""
            audit.notes.append(
                f"chronically spiky {what}: {k} further candidate {what} episodes{up} are not "
                f"listed (only the {p.max_episodes} largest are reported, with their loss "
                f"impact); spikes this frequent are the run's normal regime")
    restarts = frozenset(on for e, on, _ in raw if id(e) in lr_notes and lr_notes[id(e)][1].restart)
    sev_rank = {"warning": 1, "explosion": 2}
    worst = max((sev_rank[e.severity] for e in episodes), default=0)
    audit.status = ("ok", "warning", "explosion")[worst]
    n_logged = gs.size if has_grad else ls.size
    audit.spike_rate = 1000.0 * len(episodes) / n_logged if n_logged else None
    if has_grad and ga is not None:
        judged = np.isfinite(ga.level.level) if ga.level is not None else None
        healthy = _healthy_grad(gs, g, ga.in_episode, episodes, warm, judged)
        if healthy.sum() >= MIN_HEALTHY_LEVEL:  # fewer points are no level to compare runs by
            audit.healthy_grad_norm = float(np.median(g[healthy]))
        slices = [(e.onset, e.last) for e in ga.episodes]
        opts = clip_options(g, healthy, slices, ga.zclip_final_bound)
        audit.clip = suggest(opts, st.clip_max_cost,
                             _advice(episodes, series, gs, g, has_grad, g_every, restarts))
    else:
        audit.clip = suggest([], st.clip_max_cost,
                             _advice(episodes, series, gs, g, has_grad, g_every, restarts))
    if episodes:
        if has_grad:
            traces["grad_norm"] = decimate(gs, g)
        if has_loss:
            traces["loss"] = decimate(ls, lv)
        for key in [k for k in traces if k.startswith("counterfactual:")]:
            traces[key] = decimate(*traces[key])
        _zoom_traces(traces, episodes, gs if has_grad else None, g, ls if has_loss else None,
                     lv, st.impact_horizon)
        audit.traces = traces
    return audit


def _warmup_note(notes: list[str], usable: np.ndarray, warm: int | None,
                 min_history: int) -> None:
    """A run note where the detectors' warm-up - the first ``min_history`` usable points after
    the lr warm-up, before any healthy level exists - covers ``WARMUP_NOTE_STEPS`` or more."""
    after = usable[usable > warm] if warm is not None else usable
    if after.size <= min_history:
        return
    first, end = int(after[0]), int(after[min_history])
    if end - first >= WARMUP_NOTE_STEPS:
        notes.append(f"the first {min_history} usable logged points (steps {first}-{end - 1}"
                     f"{', after the lr warm-up' if warm is not None else ''}) are the "
                     "detectors' warm-up: no healthy level exists there yet, so only jumps far "
                     "above every earlier point are judged (log more often to judge the start "
                     "of training)")


def _zoom_traces(traces: dict, episodes: list[Episode], gs: np.ndarray | None, g: np.ndarray,
                 ls: np.ndarray | None, lv: np.ndarray, horizon: int,
                 max_zooms: int = MAX_ZOOMS) -> None:
    """Full-resolution windows around the worst ``max_zooms`` episodes (``zoom:{onset}:grad``,
    ``zoom:{onset}:loss``: one horizon before the onset to two after), where the whole-run
    traces were decimated: on a long run an episode and its counterfactual are a pixel wide."""
    long = (gs is not None and gs.size > MAX_TRACE_POINTS) or \
        (ls is not None and ls.size > MAX_TRACE_POINTS)
    if not long:
        return
    rank = {"explosion": 1, "warning": 0}
    worst = sorted(episodes, key=lambda e: (rank.get(e.severity, 0), e.peak_ratio or 0.0),
                   reverse=True)[:max_zooms]
    for e in worst:
        lo, hi = e.onset_step - horizon, e.onset_step + 2 * horizon
        for key, s, v in (("grad", gs, g), ("loss", ls, lv)):
            if s is None:
                continue
            i0, i1 = int(np.searchsorted(s, lo)), int(np.searchsorted(s, hi, side="right"))
            if i1 > i0:
                traces[f"zoom:{e.onset_step}:{key}"] = decimate(s[i0:i1], v[i0:i1])


def _healthy_grad(gs: np.ndarray, g: np.ndarray, in_episode: np.ndarray,
                  episodes: list[Episode], warm: int | None,
                  judged: np.ndarray | None = None, min_regime: int = 50) -> np.ndarray:
    """The healthy grad-norm points the clip options are computed from: finite and > 0, after
    the lr warm-up, where the detectors had a healthy level to judge against (``judged``: the
    first points of a run are no evidence of health - an early explosion there is not caught),
    outside every grad-norm episode and outside every reported episode of any kind or severity
    (warnings, loss episodes, lr-attributed episodes whose onset moved to the lr rise), each
    from its onset to its end (to the run's end when it has none). Where the grad norm changed
    its scale for good and the loss took no lasting harm (a harmless open-ended level shift: a
    changed batch size, gradient accumulation, loss scale), the points after the last such
    change are the healthy ones (at least ``min_regime`` of them): a threshold applied from here
    on meets that regime, and one from before it would clip every step. After an explosion the
    loss never came back from, the norms are a damaged model's: only the points before it count
    (where at least ``min_regime`` are left)."""
    healthy = ~in_episode & np.isfinite(g) & (g > 0)
    if warm is not None:
        healthy &= gs > warm
    if judged is not None and judged.size == g.size and (healthy & judged).sum() >= 10:
        healthy &= judged
    damaged = [e.onset_step for e in episodes if e.severity == "explosion"
               and e.loss_impact is not None and e.loss_impact.recovery_step is None]
    if damaged:  # the loss never came back: the norms after are a damaged model's
        before = _outside(healthy & (gs < min(damaged)), gs, episodes)
        if before.sum() >= min_regime:
            return before
    regime = [e for e in episodes if e.kind == "level_shift" and e.end_step is None
              and e.severity == "warning"]
    if regime:  # a harmless change of scale for good: the run's last regime is the healthy one
        after = np.isfinite(g) & (g > 0) & (gs >= regime[-1].onset_step)
        after = _outside(after, gs, [e for e in episodes if e is not regime[-1]])
        if after.sum() >= min_regime:
            return after
    return _outside(healthy, gs, episodes)


def _outside(mask: np.ndarray, gs: np.ndarray, episodes: list[Episode]) -> np.ndarray:
    """``mask`` (changed in place) with every episode's points, from its onset to its end (to
    the run's end when it has none), set False."""
    for e in episodes:
        i0 = int(np.searchsorted(gs, e.onset_step))
        i1 = gs.size if e.end_step is None else int(np.searchsorted(gs, e.end_step))
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
    mn = _clean(*series.series(f"{tag}__MIN"))
    mx = _clean(*series.series(f"{tag}__MAX"))
    if mn[0].size == 0 or mx[0].size == 0:
        return lv
    return bucket_mean(ls, lv, *mn, *mx)


def _attach_lr(series: RunSeries, raw: list, steps: np.ndarray, g: np.ndarray | None,
               ls: np.ndarray, lv: np.ndarray, notes: dict, merge_gap: int, ratio: float,
               lookahead: int, level_min_points: int,
               grad_episodes: list | None = None) -> list:
    """Tie episodes to upward lr changes (``lr-change``).

    An episode whose onset lies between the lr rise's onset (:func:`lr_onset_step`, minus the
    merge lag) and ``lookahead`` logged points after the rise's top is caused by it, and so is
    where none does, a sustained loss rise under way at the rise's onset, started at most a
    block of points before that window, that peaks after it (a ``loss-rise`` onset is only
    known to a block, and noise can start it early): its onset moves to the rise's onset and
    ``lr-change`` joins its detectors. A grad episode under way at the rise's onset that peaks
    after it is split there (:func:`_split_at`): a natural spike whose tail the rise's climb
    joined stays itself, the climb is the rise's. A rise that no episode follows becomes a
    candidate loss episode: an explosion where its loss impact shows harm, else a warning (a
    schedule's warm restart that left the loss alone is dropped).
    """
    if series.lr_tag is None or not ls.size:
        return raw
    rs, rv = _clean(*series.series(series.lr_tag))
    rises = lr_rises(rv, ratio=ratio)
    if not rises:
        return raw
    gap = _typical_gap(steps) if steps.size > 1 else 1
    out = [list(r) for r in raw]
    for rise in rises:
        on = lr_onset_step(rs, rise, steps)
        if on is None:
            continue
        top = int(rs[rise.top])
        text = (f"the learning rate rose {rise.factor:.3g}x at step "
                f"{lr_rise_step(rs, rv, rise)} "
                f"({rv[rise.start]:.3g} -> {rv[rise.top]:.3g})"
                + (", back to an earlier level (schedule restart)" if rise.restart else ""))
        lo, hi = on - gap * (merge_gap + 1), top + gap * lookahead
        free = [r for r in out if id(r[0]) not in notes]
        hits = [r for r in free if lo <= r[1] <= hi]
        if not hits:  # a loss rise whose onset noise put a little early (about a block)
            lead = lo - _typical_gap(ls) * RISE_BLOCK
            hits = [r for r in free if lead <= r[1] and _rising_through(r, on, ls)]
        if not hits:
            split = _split_at(out, on, steps, g, level_min_points, grad_episodes)
            if split is not None:
                hits = [split]
        if hits:
            r = min(hits, key=lambda r: r[1])
            r[0].detected_by.add(ID_LR)
            if r[0].source == "grad":
                # keep the grad indices consistent: the onset index moves with the step
                r[0].onset = int(np.searchsorted(steps, on))
            elif r[0].source == "loss":
                r[0].onset = int(np.searchsorted(ls, on))
            r[1] = on
            notes[id(r[0])] = (text, rise)
            continue
        i0 = int(np.searchsorted(ls, on))
        if i0 >= ls.size:
            continue
        last = int(np.clip(np.searchsorted(ls, top, side="right") - 1, i0, ls.size - 1))
        seg = np.where(np.isfinite(lv[i0:last + 1]), lv[i0:last + 1], -np.inf)
        peak = i0 + int(np.argmax(seg))  # within the episode: its end follows its peak
        e = RawEpisode(i0, peak, last, "loss_spike", {ID_LR}, "lr")
        end = int(ls[last + 1]) if last + 1 < ls.size else None
        out.append([e, int(ls[i0]), end])
        notes[id(e)] = (text, rise)
    return [tuple(r) for r in out]


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


def _rising_through(r: tuple, on: int, ls: np.ndarray) -> bool:
    """Whether ``r`` (episode, onset step, end step) is a loss rise under way at step ``on``
    that peaks at or after it."""
    e, start, end = r
    return e.source == "loss" and ID_RISE in e.detected_by and start < on and \
        (end is None or end > on) and int(ls[e.peak]) >= on


def _split_at(out: list, on: int, steps: np.ndarray, g: np.ndarray | None,
              level_min_points: int, grad_episodes: list | None = None) -> list | None:
    """Split the grad episode under way at lr-rise step ``on`` whose peak comes after it: the
    part before the rise stays an episode of its own (a natural spike whose tail the rise's
    climb joined), the part from the rise on is returned (appended to ``out``) for the rise."""
    if g is None:
        return None
    i_on = int(np.searchsorted(steps, on))
    for r in out:
        e, start, end = r
        if e.source != "grad" or not start < on or (end is not None and end <= on) or \
                e.peak < i_on or e.onset >= i_on:
            continue
        seg = np.where(np.isfinite(g[e.onset:i_on]), g[e.onset:i_on], -np.inf)
        head_peak = e.onset + int(np.argmax(seg))
        head_kind = e.kind if e.kind == "level_shift" and i_on - e.onset >= level_min_points \
            else "spike"
        tail = RawEpisode(i_on, e.peak, e.last, e.kind, set(e.detected_by), "grad", e.base_log)
        # the loss detectors the grad episode took in belong to the climb (the loss follows it)
        e.detected_by -= {ID_RISE, ID_SPIKE}
        e.peak, e.last, e.kind = head_peak, i_on - 1, head_kind
        if grad_episodes is not None:  # the clip options slice the grad episodes
            k = next((i for i, x in enumerate(grad_episodes) if x is e), None)
            if k is not None:
                grad_episodes.insert(k + 1, tail)
        r[2] = on
        out.append([tail, on, end])
        return out[-1]
    return None


def _grad_text(kind: str, ratio: float | None, base: float | None, peak_step: int,
               from_grad: bool) -> str:
    """The grad-norm half of an episode's reason."""
    if kind == "nonfinite":
        return ("the grad norm was logged inf/NaN (e.g. fp16 loss-scaler overflow steps that "
                "the optimizer skipped): benign on its own")
    if ratio is None or base is None:
        return ""
    if not np.isfinite(ratio):
        return f"the grad norm went non-finite (healthy level {base:.3g})"
    if not from_grad:
        return f"the grad norm peaked {ratio:.3g}x its healthy level {base:.3g} (step {peak_step})"
    return (f"grad norm rose {ratio:.3g}x above its healthy level {base:.3g} "
            f"(peak at step {peak_step})")


def _harm_text(li, level: float, horizon: int, harmful: bool | None, ex_thr: float,
               jp_thr: float, short: tuple[int, str] | None = None,
               lasting: float | None = None, held_from: int | None = None,
               lr_time: bool = False, nonfinite: bool = True) -> str:
    """The loss half of an episode's reason: the numbers behind the harm verdict
    (``short``: only that many logged points of the horizon, before what cut it; ``lasting``:
    the excess without the episode's own spike points, which the verdict uses;
    ``held_from``: a later lr episode's onset, from which the excess was held; ``lr_time``:
    the counterfactual follows the schedule's learning-rate time; ``nonfinite``: the loss went
    non-finite after the onset)."""
    if li.diverged:
        if nonfinite:
            return "the loss diverged: it went non-finite"
        return ("the loss diverged: it never came back, and ends the run above its level "
                "before the onset")
    parts = []
    if li.loss_jump is not None and li.loss_jump > 0:
        parts.append(f"loss jumped {li.loss_jump:+.3g} from its level {level:.3g}")
    elif li.loss_jump is not None:
        parts.append(f"the loss did not rise above its level {level:.3g}")
    ex = li.excess_loss
    if ex is not None:
        over = (f"over the {short[0]} logged point(s) before {short[1]} (too few to judge "
                "lasting damage: the jump decides)") if short is not None \
            else f"over the next {horizon} steps"
        if lr_time:
            over += (" (on the schedule's learning-rate time: the loss after the rise is where "
                     "the raised lr's own progress puts it)")
        if held_from is not None and short is None:
            over += (f" (held from step {held_from} on at the excess it had reached: the loss "
                     "from there on is that lr-rise episode's)")
        spike = "" if lasting is None or lasting == ex else \
            f" ({lasting:+.3g} without the spike itself)"
        gain = " (a gain)" if ex < 0 and (lasting is None or lasting < 0) else ""
        parts.append(f"averaged {ex:+.3g}{gain} against its counterfactual {over}{spike}")
    text = " and ".join(parts) or "the loss impact could not be measured"
    if harmful is None:
        return text
    if harmful:
        return f"{text}: the loss was harmed"
    if ex is not None and short is None:
        return (f"{text}: below the harm threshold {ex_thr:.3g} (the loss was not "
                f"lastingly harmed, so a warning)")
    return f"{text}: below the harm threshold {jp_thr:.3g} (so a warning)"


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


def _typical_gap(steps: np.ndarray) -> int:
    d = np.diff(steps)
    return int(np.median(d)) if d.size else 1


def _advice(episodes: list[Episode], series: RunSeries, gs: np.ndarray, g: np.ndarray,
            has_grad: bool, g_every: int = 1,
            restarts: frozenset[int] = frozenset()) -> str | None:
    """What would help, where the suggested clip would not (``gs``, ``g``: the grad norm;
    ``restarts``: onsets of episodes a schedule's warm restart explains)."""
    parts = []
    if not has_grad:
        parts.append("no usable grad norm is logged, so no clip threshold can be derived; "
                     "log the global grad norm (before clipping)")
    for e in episodes:
        lr_rise = ID_LR in e.detected_by and e.onset_step not in restarts
        if e.kind == "divergence" and lr_rise:
            parts.append(f"the run diverged at step {e.onset_step} with a learning-rate rise: "
                         "restart from a checkpoint before it and check the lr schedule there")
        elif e.kind == "divergence" and _jumped(e, gs, g):
            parts.append(f"the run diverged at step {e.onset_step} after a one-step grad-norm "
                         f"jump from its healthy level (a bad batch or a numerical fault): a clip "
                         "at the suggested threshold would have capped that update; restart from "
                         "a checkpoint before it with clipping on, and look at the data at step "
                         f"{e.onset_step}")
        elif e.kind == "divergence":
            parts.append(f"the run diverged at step {e.onset_step}: too late to clip; restart "
                         "from a checkpoint before it with a lower learning rate")
        elif e.kind == "level_shift" and e.end_step is None:
            lr_note = _lr_change(series, e.onset_step)
            factor = lr_note[1] if lr_note else None
            settled = _settled_ratio(e, gs, g)
            what = f"after a learning-rate change ({lr_note[0]}) " if lr_note else ""
            if e.severity == "warning":  # the loss took no lasting harm: no lr to lower
                parts.append(
                    f"the grad norm settled ~{settled:.3g}x higher {what}at step "
                    f"{e.onset_step} without lasting harm to the loss (a changed batch size, "
                    "gradient accumulation, loss scale or lr does that): the clip options are "
                    "computed from the steps after it, the run's regime at its end")
            elif lr_note is not None or lr_rise:
                x = factor if factor and factor > 1 else settled
                parts.append(
                    f"clipping cannot fix the sustained level shift {what}at step "
                    f"{e.onset_step} (grad norm settled ~{settled:.3g}x higher): lower the "
                    f"learning rate by the measured factor {x:.3g}")
            else:
                parts.append(
                    f"the grad norm stayed ~{settled:.3g}x higher after step {e.onset_step} "
                    "and the loss was harmed: the model changed there; restart from a "
                    "checkpoint before it (the suggested clip cuts the climb into it)")
        elif lr_rise:
            parts.append(f"the {'loss moved' if e.kind == 'loss_spike' else 'episode began'} "
                         f"at step {e.onset_step} with a learning-rate rise: the cause is the "
                         "lr schedule, check it there (a clip only softens such an episode: "
                         "every update is still taken at the raised lr)")
        elif e.kind == "loss_spike" and has_grad and g_every > 1:
            parts.append(f"the loss spike at step {e.onset_step} came with no grad-norm rise at "
                         f"the logged steps (every {g_every}); look at the data there, and log "
                         "the grad norm every step to see a one-step spike")
        elif e.kind == "loss_spike" and has_grad:
            parts.append(f"clipping would not help the loss spike at step {e.onset_step}: the "
                         f"grad norm stayed healthy; look at the data at step {e.onset_step}")
    if has_grad and episodes and series.format == HF_FORMAT:
        parts.append("the Hugging Face Trainer clips at max_grad_norm (1.0 by default) and logs "
                     "the grad norm before clipping: compare the options with the clip this run "
                     "trained with")
    return "; ".join(parts) if parts else None


def _jumped(e: Episode, gs: np.ndarray, g: np.ndarray, ratio: float = 10.0) -> bool:
    """The episode's first point is a finite grad norm ``ratio`` x above the healthy level: it
    began with one step out of health (a bad batch), not a climb (an lr too high)."""
    i = int(np.searchsorted(gs, e.onset_step))
    return bool(i < gs.size and gs[i] == e.onset_step and np.isfinite(g[i])
                and e.baseline_grad_norm and g[i] >= ratio * e.baseline_grad_norm)


def _settled_ratio(e: Episode, gs: np.ndarray, g: np.ndarray, tail: int = 50) -> float:
    """Where the grad norm ``g`` (at ``gs``) settled in an open-ended episode: the median of its
    last ``tail`` finite points over the healthy level before it (the peak ratio where that is
    unknown)."""
    seg = g[int(np.searchsorted(gs, e.onset_step)):]
    seg = seg[np.isfinite(seg) & (seg > 0)]
    if not seg.size or not e.baseline_grad_norm:
        return float(e.peak_ratio) if e.peak_ratio is not None else 1.0
    return float(np.median(seg[-tail:]) / e.baseline_grad_norm)


def _lr_change(series: RunSeries, onset: int) -> tuple[str, float] | None:
    """A learning-rate change within a few logged points before the onset: (text, factor)."""
    if series.lr_tag is None:
        return None
    s, v = _clean(*series.series(series.lr_tag))
    ok = np.isfinite(v) & (v > 0)
    s, v = s[ok], v[ok]
    if s.size < 2:
        return None
    i = int(np.searchsorted(s, onset, side="right")) - 1
    if i < 1:
        return None
    lo = max(0, i - 10)
    before = v[lo]
    after = v[min(s.size - 1, i + 1)]
    if before > 0 and after / before > 1.5:
        return f"lr {before:.3g} -> {after:.3g}", float(after / before)
    return None
