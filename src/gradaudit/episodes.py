"""Assembly of detector hits into episodes (docs/findings.md, "Episodes"), in index space.

Grad-norm episodes: the robust level is computed first from all points, then only from points
outside the previous pass's episodes (the healthy level), again while those episodes grow (at most
four passes: a climb that the first level followed would leave its tail in the healthy set). A
point *triggers* an episode when ``robust-threshold`` flags it (in the run's first points, before
a healthy level exists, only a tenfold jump over all of them; the episode's healthy level is then
their median) or it lies in an upward ``pelt``
level shift (from the shift's first point that is elevated with one of the next two: a segment
boundary is only as sharp as the noise, and an isolated high point just before a shift is no part
of it); the episode extends over neighbouring *elevated* points (outside the healthy band) and
non-finite points, with gaps of at most ``merge_gap`` points joined. Onset: a hinge fit of
``log g`` (flat at the healthy level, then a straight climb) over the points before the peak - the
step where the slope turns from flat to positive; for a one-step spike that is the spike itself,
and so for a step up (the first triggering point half the peak's height, or the points just before
it still at the healthy level: a step to a higher level that later blows up is no slow climb).
Peak: the highest grad norm. End: the first point after the last elevated one (None when the run
ends first). Kind: ``divergence`` when the episode runs to the end of the run and is still climbing
there (non-finite at the end, or its peak among its last tenth of points and, for an episode of
``level_min_points`` or more, the median of its last three points at least ``level_ratio`` above
its median and its last ``2 window`` points not at one level: a level shift that peaks late by
chance, or a second step up that held to the end, is no divergence), ``level_shift`` when it
lasts ``level_min_points`` with a median of ``level_ratio`` x the healthy level (or ``pelt``'s
``level_ratio`` shift covers half of it: the two medians differ by noise), else ``spike``.
A level shift's new level, once it holds (:func:`_new_level_from`, :func:`holds_level`), is the
healthy level after it: the points from there are searched as a series of their own, and an
episode found there (a harmful spike after a benign change of scale) is one of its own - the
shift ends where it begins (``holds_from`` marks where the level held, for the loss episodes
that begin on it: the engine makes them episodes of their own too).
A divergence whose climb began before a detector could flag it (in the first steps of training,
where the level learnt in the warm-up followed the climb up, or a climb that only the non-finite
end flagged) has its onset walked back to where that climb started, and its healthy level is
the level the climb started from (:func:`_climb_before`): the climb is no healthy stretch.

Loss episodes (``loss-spike``) that no grad episode explains become ``loss_spike`` episodes.
A grad norm or loss that jumped before it had a level is flagged at its first point with one;
the onset is walked back over the points before that already stood half as high
(:func:`_up_before_level`), so that a blow-up in the first points is found where it began and
its loss jump is its grad episode's.
Where each logged loss is a mean over a logging interval (a Trainer's ``loss``), a point before
the loss has a level (its first ``min_history`` logged points: 250 steps of a run logged every
10) that stands ``spike_ratio`` x above every earlier one is a jump too (:func:`_warm_jumps`): a
training loss starts at its highest, and the averaging took the batches' tails away (a single
batch's loss logged every 10 steps keeps them: a squared error jumps 3x on ordinary batches).
Severity is set later from the loss impact (:func:`severity`).

Chronically spiky runs: a run with more than ``max_episodes`` (500) candidate episodes of one
source (an untrusted log, a heavy-tailed or bimodal grad norm) is not 500 separate events but a
run whose spikes are its normal regime. Only the ``max_episodes`` largest (by peak excess over
the healthy level; non-finite and run-ending ones first) are kept as episodes - assembled in
detail, with their loss impact - and the rest are counted and summarised (``n_unlisted``,
``unlisted_max_ratio``; the engine writes a run note). Their points still count as anomalous
(never healthy). This bounds every per-episode step (assembly, ZClip/OLMo flags, loss impact)
whatever the input; a normal run never gets near the cap. There the ZClip burn-in before each
episode is 200 steps instead of 1000 (its flags are labels only; the state is forgotten to 0.2 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import median_filter

from gradaudit.detect._common import (
    diff_sigma,
    finite_argmax,
    hinge_gain,
    holds_level,
    log_positive,
    positive,
    runs_of,
)
from gradaudit.detect.ema_zscore import ema_zscore_spans, olmo_skip_spans
from gradaudit.detect.level_climb import BLOCK as CLIMB_BLOCK
from gradaudit.detect.level_climb import ID as ID_CLIMB
from gradaudit.detect.level_climb import level_climb
from gradaudit.detect.loss_rise import BLOCK as RISE_BLOCK
from gradaudit.detect.loss_rise import loss_rise
from gradaudit.detect.loss_spike import loss_spike
from gradaudit.detect.nonfinite import BROKE_RUN, loss_broke, nonfinite
from gradaudit.detect.pelt import level_shifts
from gradaudit.detect.robust_threshold import RobustLevel, robust_threshold


@dataclass
class EpisodeParams:
    """Knobs of the assembly, with their defaults (the Settings fill the first four)."""

    spike_ratio: float = 3.0
    level_ratio: float = 2.0
    merge_gap: int = 5
    window: int = 50
    onset_lookback: int = 30
    level_min_points: int = 20
    min_history: int = 25  # healthy points before the grad level is trusted (warm-up)
    climb_ratio: float = 10.0  # a level climbing this much to the run's end is a divergence
    max_episodes: int = 500  # more candidates than this: a chronically spiky run (module doc)
    log_every: int = 1  # steps between logged points (STEP_SETTLE is in steps)


@dataclass
class RawEpisode:
    """An episode before its loss impact and severity are known (indices into its series)."""

    onset: int  # index into the series it was found in
    peak: int
    last: int  # last anomalous index
    kind: str
    detected_by: set[str] = field(default_factory=set)
    source: str = "grad"  # "grad" or "loss"
    base_log: float | None = None  # healthy log g at onset
    nonfinite_only: bool = False  # no finite anomalous point: only inf/NaN grad norms
    holds_from: int | None = None  # a level shift's: where its new level holds (index)


@dataclass
class GradAnalysis:
    """Everything the grad-norm pass found."""

    episodes: list[RawEpisode]
    level: RobustLevel | None
    in_episode: np.ndarray  # bool per point
    zclip_final_bound: float | None
    n_unlisted: int = 0  # candidate episodes beyond ``max_episodes``, summarised only
    unlisted_max_ratio: float | None = None  # the largest peak ratio among them


def _hinge_onset(x: np.ndarray, base: float, lo: int, first: int, peak: int) -> int:
    """Index where ``x`` turns from flat at ``base`` to a straight climb towards ``peak``: the
    hinge (:func:`hinge_gain`, its level held at ``base``) that fits ``x[lo:peak + 1]`` best,
    from ``lo`` to ``first``."""
    t = np.arange(lo, max(first, peak) + 1)
    ok = np.isfinite(x[t])
    if ok.sum() < 2 or first <= lo:
        return first
    cands = np.arange(lo - 1, first)  # the hinge at k: the onset is k + 1
    gain = hinge_gain(t[ok], x[t[ok]], cands, level=base)
    # hinges that fit the same points tie up to rounding: the earliest of them
    return int(cands[np.flatnonzero(gain >= gain.max() * (1.0 - 1e-9))[0]]) + 1


def _climb_before(x: np.ndarray, level: np.ndarray, lo: int, first_nf: int, p: EpisodeParams,
                  onset: int, base: float | None) -> tuple[int, float | None]:
    """``(onset, healthy log level)`` of a divergence that no detector flagged before its grad
    norm went non-finite: where the finite points before it climbed from the level they started
    at to ``spike_ratio`` x above it (a blow-up in the first steps of training, before the
    detectors had a healthy level, or one the level followed up), the hinge onset of that climb
    and the starting level; else the non-finite point and the level there, unchanged."""
    lo = max(lo, first_nf - p.onset_lookback)
    fin = lo + np.flatnonzero(np.isfinite(x[lo:first_nf]))
    if fin.size < 3:
        return onset, base
    start = _at(level, int(fin[0]))
    if start is None:  # no healthy level yet (the warm-up): the first points' own level
        start = float(np.median(x[fin[:3]]))
    last = int(fin[-1])
    # the first point from which the climb stays spike_ratio x above where it started; where it
    # started is then the median of every point before that (three points alone can be a dip
    # of ordinary noise, making the noise before a sudden jump read as a climb), until it holds
    k = len(fin)
    for _ in range(3):
        high = x[fin] - start >= np.log(p.spike_ratio)
        if not high[-1]:
            return onset, base  # a jump to non-finite from where the run was: no climb
        k_new = len(high) - int(np.argmin(high[::-1])) if not high.all() else 0
        if k_new == k or k_new < 3:
            k = k_new
            break
        k, start = k_new, float(np.median(x[fin[:k_new]]))
    first = int(fin[k]) if k < len(fin) else last
    # the hinge onset before it (a blow-up grows faster than a straight line in log g: fitted
    # up to its top alone, the hinge would fall late, its first steps read as healthy)
    return min(_hinge_onset(x, start, int(fin[0]), first, last), first), start


def _stepped(x: np.ndarray, base: float, first: int, lo: int, before: int = 5) -> bool:
    """A step up at ``first``: the ``before`` points before it sit at the healthy level (their
    median within a quarter of the step) - the climb starts at ``first``, however high the
    episode later goes (a step to a higher level that later diverges)."""
    prev = x[max(lo, first - before):first]
    prev = prev[np.isfinite(prev)]
    return prev.size >= min(before, first - lo) > 0 and \
        float(np.median(prev)) - base <= 0.25 * (x[first] - base)


def grad_episodes(g: np.ndarray, p: EpisodeParams, skip: int = 0,
                  depth: int = 0, open_end: bool = True) -> GradAnalysis:
    """Find grad-norm episodes in ``g`` (raw values; NaN/inf allowed; <= 0 means missing).

    ``skip``: points of the lr warm-up, which neither enter the healthy level nor trigger.
    ``depth``: how many level shifts this series lies within (:func:`_within_shift`);
    ``open_end``: its last point is the run's (one within a shift that came back down is not:
    nothing there grows to the run's end)."""
    g = np.asarray(g, dtype=np.float64)
    n = g.size
    x = log_positive(g)
    x_all = x.copy()  # the warm-up is the first points' past (robust_threshold's lead)
    if skip > 0:
        x[:skip] = np.nan
    nf = nonfinite(g)
    nf[:skip] = False
    if n == 0 or np.isfinite(x).sum() < 3:
        eps = [RawEpisode(a, a, b, "nonfinite", {"nonfinite"}) for a, b in runs_of(nf, p.merge_gap)]
        return GradAnalysis(eps, None, nf.copy(), None)
    shifts = level_shifts(x, level_ratio=p.level_ratio, min_size=10)
    fin_before = np.cumsum(np.isfinite(x))
    # a "shift" out of the warm-up transient has no healthy level to shift from
    shifts = [sh for sh in shifts if fin_before[sh.first] > p.min_history]

    def shift_mask_of(elevated: np.ndarray) -> np.ndarray:
        # a segment boundary is only as sharp as the noise: a shift starts at its first point
        # that is elevated with one of the next two (a high point followed by two ordinary
        # ones, which the segmentation may take in, is no part of it)
        mask = np.zeros(n, bool)
        e = elevated
        pair = e & (np.r_[e[1:], False] | np.r_[e[2:], False, False])
        for a, b, _, top in shifts:
            # (within one block of it: a step the noise hides for longer starts where it is;
            # a ramp from where it turned up: the trailing level follows its first points)
            hits = np.flatnonzero(pair[a:min(b, a + p.level_min_points) + 1])
            first = a if top > a or not hits.size else a + int(hits[0])
            mask[first:b + 1] = True
        return mask & np.isfinite(x)

    def components(rl: RobustLevel) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        shift = shift_mask_of(rl.elevated)
        trig = rl.trigger | shift
        elev = rl.elevated | trig
        # (the stretches holding a trigger or a non-finite point, counted by cumulative sums)
        hit = np.concatenate(([0], np.cumsum(trig | nf)))
        comps = [c for c in runs_of(elev | nf, p.merge_gap) if hit[c[1] + 1] > hit[c[0]]]
        return comps, trig, shift

    # the level from all points, then from the points outside the previous pass's episodes
    # (the healthy level), again while those grow: an anomaly that outlasts the first pass's
    # episode (a climb the first level followed) leaves its tail in the healthy set, and the
    # level would follow it again (at most four passes)
    rl = robust_threshold(x_all, window=p.window, spike_ratio=p.spike_ratio,
                          min_history=p.min_history, lead=skip)
    comps, trig, shift_mask = components(rl)
    excl = nf.copy()
    for i in range(3):
        grown = excl.copy()
        for a, b in comps:
            grown[a:b + 1] = True
        if i and (not (grown & ~excl).any() or len(comps) > p.max_episodes):
            break
        excl = grown
        rl = robust_threshold(x_all, healthy=~excl, window=p.window,
                              spike_ratio=p.spike_ratio, min_history=p.min_history, prior=rl,
                              lead=skip)
        comps, trig, shift_mask = components(rl)
    in_ep = np.zeros(n, bool)
    n_unlisted, unlisted_max = 0, None
    if len(comps) > p.max_episodes:
        for a, b in comps:  # every candidate stays anomalous, listed or not
            in_ep[a:b + 1] = True
        comps, n_unlisted, unlisted_max = _keep_worst(comps, x - rl.level, nf,
                                                       p.max_episodes)
    # a chronically spiky run clips all the time, where the ZClip recursion is a scalar loop:
    # its per-episode burn-in is cut to 200 steps there (alpha^200 = 0.2 % of the start state)
    zc_flag, zc_final = ema_zscore_spans(g, comps, burn_in=200 if n_unlisted else 1000)
    olmo = olmo_skip_spans(g, comps)

    def detected_by(sl: slice) -> set[str]:  # the detectors that flagged a point in ``sl``
        return {d for d, hit in (("robust-threshold", rl.trigger), ("pelt", shift_mask),
                                 ("nonfinite", nf), ("ema-zscore", zc_flag),
                                 ("olmo-skip", olmo)) if hit[sl].any()}

    eps: list[RawEpisode] = []
    prev_last = -1
    for ci, (a, b) in enumerate(comps):
        sl = slice(a, b + 1)
        finite_trig = trig[sl] & np.isfinite(x[sl])
        in_ep[sl] = True
        by = detected_by(sl)
        if not finite_trig.any():
            first_nf = a + int(np.argmax(nf[sl]))
            kind = "divergence" if (open_end and b == n - 1 and nf[n - 1]) else "nonfinite"
            onset, base = first_nf, _at(rl.level, first_nf)
            if kind == "divergence":
                onset, base = _climb_before(x, rl.level, prev_last + 1, first_nf, p, onset, base)
            eps.append(RawEpisode(onset, first_nf, b, kind, by, base_log=base,
                                  nonfinite_only=True))
            in_ep[onset:b + 1] = True
            prev_last = b
            continue
        first = a + int(np.argmax(finite_trig))
        peak = finite_argmax(x, a, b + 1)
        if nf[sl].any() and open_end and b == n - 1 and nf[n - 1]:
            peak = max(peak, a + int(np.argmax(nf[sl])))
        base = _at(rl.level, first)
        if base is None:  # a first-points trigger (robust_threshold): the level before it
            base = _early_level(x_all, rl.past, first, p.window)
        lo = max(prev_last + 1, first - p.onset_lookback)
        onset = first
        jumped = base is not None and (x[first] - base >= 0.5 * (x[peak] - base)
                                       or _stepped(x, base, first, lo))
        if base is not None and not jumped:  # a climb, not a jump: fit where it starts
            onset = _hinge_onset(x, base, lo, first, min(peak, first + p.onset_lookback))
        onset = _up_before_level(x, rl.level, min(onset, first), prev_last + 1)
        if onset < a:  # walked back over points that already stood high: the peak may be there
            top = finite_argmax(x, onset, b + 1)
            if x[top] > x[peak]:
                peak = top
        length = b - onset + 1
        med = float(np.nanmedian(x[onset:b + 1]))
        med_ratio = med - base if base is not None else 0.0
        # still climbing when the run ends: the peak is among the last points and the last
        # three sit well above the episode's bulk (a level shift that peaks late by chance at
        # one point does not; a blow-up in the last few steps does)
        tail = x[max(onset, b - 2):b + 1]
        tail_growing = open_end and b == n - 1 and (nf[n - 1] or (
            peak >= b - max(2, length // 10) and (length < p.level_min_points or (float(
                np.nanmedian(tail)) - med >= np.log(p.level_ratio) and not _held_at_end(
                    x, onset, b, p)))))
        if tail_growing and length >= 3:
            kind = "divergence"
            # a blow-up that began in the warm-up, where the level followed it up
            onset, base = _climb_before(x, rl.level, prev_last + 1, onset, p, onset, base)
        elif length >= p.level_min_points and (med_ratio >= np.log(p.level_ratio) or
                                               2 * shift_mask[onset:b + 1].sum() >= length):
            kind = "level_shift"
        else:
            kind = "spike"
        in_ep[onset:b + 1] = True
        # (a chronically spiky run's listed episodes are all there are: none searched within;
        # the inner ones share the run's budget with those listed and still to come)
        budget = p.max_episodes - len(eps) - (len(comps) - ci)
        holds = inner = None
        # (a ramp's top: where it reached its new level)
        top = max((sh.top for sh in shifts if sh.top > sh.first and sh.top <= b
                   and abs(sh.first - onset) <= p.window), default=None)
        for start, min_held in _new_level_from(x, onset, b, p, top, more=depth < MORE_NESTED,
                                               retry=depth == 0) \
                if kind == "level_shift" and not n_unlisted else ():
            inner = _within_shift(g, rl, start, b, replace(p, max_episodes=budget), depth,
                                  open_end and b == n - 1, min_held)
            if inner is not None:
                holds = start
                break
        if inner is not None and inner.episodes:  # the shift ends where the first event on
            # its new level begins
            in_ep[holds:b + 1] = inner.in_episode  # the new level is healthy from there
            n_unlisted += inner.n_unlisted
            if inner.unlisted_max_ratio is not None:
                unlisted_max = max(unlisted_max or 0.0, inner.unlisted_max_ratio)
            b = inner.episodes[0].onset - 1
        # spikes on a ramp up to the new level, or just after its top (a step's start), are
        # events of their own too (before any event found on the new level: ``b`` ends there,
        # and none is looked for in its last RAMP_LOCAL points)
        on_ramp = [RawEpisode(a, finite_argmax(x, a, z + 1), z, "spike", detected_by(
                       slice(a, z + 1)), base_log=level) for a, z, level in _ramp_spikes(
                           x, onset, min((onset if top is None else top) + p.window, b), p,
                           RAMP_LOCAL if top is not None else
                           max(RAMP_LOCAL, -(-STEP_SETTLE // p.log_every)))] \
            if kind == "level_shift" and not n_unlisted else []
        # (where the shift had already risen spike_ratio x: one cut short below that would
        # read as no shift; and within the run's budget)
        on_ramp = [e for e in on_ramp if base is None or float(
            x[finite_argmax(x, onset, e.onset)]) - base >= np.log(p.spike_ratio)]
        keep = max(0, budget - (len(inner.episodes) if inner is not None else 0))
        n_unlisted += max(0, len(on_ramp) - keep)  # (anomalous, not listed: as over the cap)
        on_ramp = on_ramp[:keep]
        if on_ramp or (inner is not None and inner.episodes):
            b = (on_ramp or inner.episodes)[0].onset - 1
            peak = finite_argmax(x, onset, b + 1)
            by = detected_by(slice(onset, b + 1))
        eps.append(RawEpisode(onset, peak, b, kind, by, base_log=base, holds_from=holds))
        eps.extend(on_ramp)
        eps.extend(inner.episodes if inner is not None else ())
        prev_last = eps[-1].last
    # (a climb is one to the run's end: none where an episode reached it, also one cut by an
    # event on its new level)
    climb = None
    if open_end and not (comps and comps[-1][1] == n - 1):
        climb = level_climb(x, ratio=p.climb_ratio)
    elif open_end and n >= BROKE_RUN and nf[n - BROKE_RUN:].all():
        # the norm went non-finite for good (BROKE_RUN points to the end, not one fp16 overflow
        # in the last step): a slow climb up to there is a climb to the end (a
        # norm growing 3 % a step for 1400 steps, 1e20x, then inf: only the inf was found). Not
        # a blow-up the last episode already holds from its start: a climb read from blocks
        # dates a jump of a few steps to inf up to a few blocks early
        brk = n - int(np.argmin(nf[::-1])) if not nf.all() else 0
        climb = level_climb(x[:brk], ratio=p.climb_ratio) if brk > 0 else None
        if climb is not None and comps and climb[0] > comps[-1][0] - CLIMB_LEAD * CLIMB_BLOCK:
            climb = None
    if climb is not None:  # a slow climb to the end that every trailing level followed
        onset, top, base = climb
        by = {ID_CLIMB}.union(*(e.detected_by for e in eps if e.onset >= onset))
        eps = [e for e in eps if e.onset < onset]
        eps.append(RawEpisode(onset, top, n - 1, "divergence", by, base_log=base))
        in_ep[onset:] = True
    return GradAnalysis(eps, rl, in_ep, zc_final, n_unlisted, unlisted_max)


#: Points either side of a ramp's point that its local level is the median of
RAMP_LOCAL = 10
#: Blocks a climb to a breakdown (a grad norm non-finite to the end) must begin before the last
#: episode: a later one is that episode's own blow-up, found where it starts
CLIMB_LEAD = 10
#: Steps after a step up where a spike is still the step's (too few for the loss as it stood
#: after the step to be told: a harmless spike there would be charged with the step's damage);
#: RAMP_LOCAL points at least
STEP_SETTLE = 20


def _ramp_spikes(x: np.ndarray, onset: int, last: int, p: EpisodeParams,
                 skip: int) -> list[tuple]:
    """Spikes on the ramp of a level shift and just after its top (or its step), in
    ``x[onset:last + 1]``, as ``(first, last, local level)``: points ``spike_ratio`` x and 5
    sigmas (the stretch's point-to-point noise) above the median of the ``RAMP_LOCAL`` points
    either side (a straight climb's own level there, or the new level's), runs of them joined
    across ``merge_gap``; not in the first ``skip`` points nor the last ``RAMP_LOCAL`` (where
    that median leans on what lies beyond)."""
    if last - onset < 4 * RAMP_LOCAL:
        return []
    seg = x[onset:last + 1]
    ok = np.isfinite(seg)
    if ok.sum() < 4 * RAMP_LOCAL:
        return []
    fin = seg[ok]
    sigma = diff_sigma(fin)
    k = 2 * RAMP_LOCAL + 1
    med = np.full(seg.size, np.nan)
    med[np.flatnonzero(ok)] = median_filter(fin, size=k, mode="nearest")
    with np.errstate(invalid="ignore"):
        d = seg - med
        high = ok & (d >= max(np.log(p.spike_ratio), 5.0 * sigma))
    high[:skip] = high[-RAMP_LOCAL:] = False
    return [(onset + a, onset + z, float(med[a])) for a, z in runs_of(high, p.merge_gap)]


def _held_at_end(x: np.ndarray, onset: int, last: int, p: EpisodeParams) -> bool:
    """Whether the grad norm held one level over the episode's last ``2 window`` points
    (:func:`holds_level`, spikes left out), its last three points too: a step up that held to
    the end, not a climb (nor a blow-up in the last few steps)."""
    v = x[max(onset, last + 1 - 2 * p.window):last + 1]
    v = v[np.isfinite(v)]
    if v.size < 2 * p.window:
        return False
    if float(np.median(v[-3:])) - float(np.median(v)) >= np.log(p.level_ratio):
        return False
    return _holds(v, p)


def _holds(v: np.ndarray, p: EpisodeParams) -> bool:
    """:func:`holds_level` of the grad norms whose finite logs are ``v``, the points
    ``spike_ratio`` x above their median left out (a spike on a level is no move of it)."""
    if not v.size:
        return False
    return holds_level(np.exp(v[v - float(np.median(v)) < np.log(p.spike_ratio)]))


#: Level shifts nested deeper than this are not searched for events on their new level
MAX_NESTED = 8
#: Two blocks of a shift (or a block and the shift's later half) whose medians are within
#: this factor of each other stand at one level
SETTLE_RATIO = 1.5
#: Blocks tried for one a shift's new level holds from (bounded work)
NEAR_TRIES = 50
#: Blocks after a shift's last candidate start tried too, where none held (bounded work)
RETRY_BLOCKS = 4
#: Shifts nested this deep or deeper try only the first candidates for their new level
MORE_NESTED = 3


def _block_medians(v: np.ndarray, w: int) -> np.ndarray:
    """The median of the finite points of each block of ``w`` points of ``v`` (the last may be
    shorter); NaN for a block with none."""
    blocks = np.concatenate((v, np.full(-v.size % w, np.nan))).reshape(-1, w)
    meds = np.median(blocks, axis=1) if blocks.size else np.zeros(0)
    for k in np.flatnonzero(~np.isfinite(blocks).all(axis=1)):  # the few with a gap
        b = blocks[k][np.isfinite(blocks[k])]
        meds[k] = float(np.median(b)) if b.size else np.nan
    return meds


def _new_level_from(x: np.ndarray, onset: int, last: int, p: EpisodeParams,
                    top: int | None = None, more: bool = False,
                    retry: bool = False) -> list[tuple[int, int]]:
    """Where a level shift's new level may hold, as ``(index, points it must hold for before
    an event on it counts)``, in the order to try (by index): the first of two consecutive
    blocks of ``level_min_points`` points after its onset whose medians agree within
    ``SETTLE_RATIO`` x (the earliest level it held: an event on it before a second step up is
    its own), for ``window`` points at least (a pause in a climb holds for a few); then the
    first block within ``SETTLE_RATIO`` x of the shift's later half's median. With ``more``
    (shifts nested less than ``MORE_NESTED`` deep: bounded work), also the first of each from which
    the level holds over the next ``2 window`` points (:func:`holds_level`; of the first
    ``NEAR_TRIES``), and after a ramp the first from its ``top`` on that holds: a ramp's last
    blocks agree, and are near its top, while it still climbs; and with ``retry`` (the run's
    own shifts) the ``RETRY_BLOCKS`` blocks after the last of these. Each leaves room for a
    healthy level of its own (``min_history`` points); none for a shorter shift."""
    w = p.level_min_points
    n = last - onset + 1
    seg = x[onset:last + 1]
    if n < 2 * w + p.min_history:
        return []
    meds = _block_medians(seg[w:w + w * len(range(w, n - p.min_history, w))], w)

    def held(cands: np.ndarray) -> int | None:
        for k in cands[:NEAR_TRIES]:
            ahead = seg[w * (int(k) + 1):w * (int(k) + 1) + 2 * p.window]
            ahead = ahead[np.isfinite(ahead)]
            if ahead.size >= w and _holds(ahead, p):
                return onset + w * (int(k) + 1)
        return None

    out: list[tuple[int, int]] = []
    with np.errstate(invalid="ignore"):
        agree = np.flatnonzero(np.abs(np.diff(meds)) <= np.log(SETTLE_RATIO))
    if agree.size:
        out.append((onset + w * (int(agree[0]) + 1), p.window))
        if more and (h := held(agree)) is not None:
            out.append((h, p.window))
    late = seg[n // 2:][np.isfinite(seg[n // 2:])]
    if late.size >= w:
        with np.errstate(invalid="ignore"):
            near = np.flatnonzero(np.abs(meds[:-1] - float(np.median(late)))
                                  <= np.log(SETTLE_RATIO))
        if near.size:
            start = onset + w * (int(near[0]) + 1)
            # (one that must hold for longer, from later on, adds nothing)
            out = [c for c in out if c[0] < start] + [(start, 0)]
            if more and (h := held(near)) is not None:
                out.append((h, 0))
            if more and top is not None and top > onset and \
                    (h := held(near[onset + w * (near + 1) >= top])) is not None:
                out.append((h, 0))
    if retry and out:
        # and the RETRY_BLOCKS blocks after the last of them (a noisy ramp's end holds no
        # level its first blocks can show)
        last_start = max(c[0] for c in out)
        out += [(last_start + w * j, 0) for j in range(1, RETRY_BLOCKS + 1)
                if last_start + w * j < last + 1 - p.min_history - w]
    return sorted(set(out))


def _within_shift(g: np.ndarray, rl: RobustLevel, start: int, last: int, p: EpisodeParams,
                  depth: int, open_end: bool, min_held: int = 0) -> GradAnalysis | None:
    """The events on a level shift's new level, which holds from ``start``
    (:func:`_new_level_from`): a harmful spike after a benign change of scale is an event of its
    own, not part of the shift. From ``start`` the points are a series of their own
    (:func:`grad_episodes`, with its own healthy level, which replaces ``rl``'s there); its
    events count if the new level held (:func:`holds_level`) up to the first of them, for
    ``min_held`` points at least. Their analysis, its episodes in the whole series' index space
    (``p.max_episodes``: what is left of the run's budget); None where the level did not hold
    (nor is looked at, ``MAX_NESTED`` shifts deep)."""
    if depth >= MAX_NESTED or p.max_episodes < 1:
        return None
    ga = grad_episodes(g[start:last + 1], p, depth=depth + 1, open_end=open_end)
    held = last + 1 - start if not ga.episodes else ga.episodes[0].onset
    # (judged on one block at least, its events left out: a few points hold any "level"; and
    # so are spikes the inner analysis could not flag yet, before it had a level)
    k = max(held, p.level_min_points)
    span = positive(g[start:start + k][~ga.in_episode[:k]])
    if ga.level is None or held < min_held or not _holds(np.log(span), p):
        return None  # (still moving, a blow-up climbing on: no new level to judge events on)
    for name in ("level", "spread", "ratio", "z"):  # the healthy level from where the new one
        getattr(rl, name)[start:last + 1] = getattr(ga.level, name)  # holds
    for e in ga.episodes:
        e.onset, e.peak, e.last = e.onset + start, e.peak + start, e.last + start
        if e.holds_from is not None:
            e.holds_from += start
    return ga


def _warm_jumps(ysp: np.ndarray, lvl: np.ndarray, logged: bool, p: EpisodeParams) -> np.ndarray:
    """Points before the loss has a level (its first ``min_history`` points: the detectors'
    warm-up) that stand ``spike_ratio`` x above every earlier point, and twice the run's 99th
    percentile above its level: a training loss starts at its highest, so such a point is a
    jump whatever the level would have been (one bad batch at step 200 of a run logged every 10
    steps is its 21st point). Positive losses only."""
    out = np.zeros(ysp.size, bool)
    if not logged:
        return out
    fin = np.isfinite(ysp)
    warm = fin & ~np.isfinite(lvl)
    idx = np.flatnonzero(fin)
    if idx.size < 4 or not warm.any():
        return out
    prev_max = np.full(ysp.size, np.nan)
    prev_max[idx[1:]] = np.maximum.accumulate(ysp[idx])[:-1]
    enough = np.zeros(ysp.size, bool)
    enough[idx[3:]] = True  # three earlier points at least
    # and beyond the run's own spikiness, as every loss trigger (loss_spike's tail_factor): a
    # squared-error loss jumps 3x on ordinary batches
    excess = (ysp - lvl)[np.isfinite(lvl) & fin]
    tail = float(np.percentile(excess, 99)) if excess.size >= 100 else 0.0
    with np.errstate(invalid="ignore"):
        out = warm & enough & (ysp - prev_max >= max(np.log(p.spike_ratio), 2.0 * tail))
    return out


def _up_before_level(ysp: np.ndarray, lvl: np.ndarray, onset: int, lo: int) -> int:
    """``onset`` walked back over the points before it that have no level yet (the detectors'
    first points) and already stand half its excess above its level, to where they rose from a
    point below that: a series (log g, or the loss) that jumped before its level existed is
    found at the first point that has one, and jumped where it rose. Unmoved where no such rise
    is found from ``lo`` (the previous episode's end + 1) on, before a non-finite point or the
    series' start (one falling from its start rose nowhere)."""
    if not np.isfinite(lvl[onset]):
        return onset
    half = 0.5 * (ysp[onset] - lvl[onset])
    k = onset
    while k > lo and np.isnan(lvl[k - 1]) and np.isfinite(ysp[k - 1]):
        if ysp[k - 1] - lvl[onset] < half:
            return k
        k -= 1
    return onset


def _with_warmup_jumps(spans: list[tuple[int, int]], jumps: np.ndarray,
                       merge_gap: int) -> list[tuple[int, int]]:
    """``spans`` plus one span per run of warm-up ``jumps`` (:func:`_warm_jumps`) they miss."""
    if not jumps.any():
        return spans
    taken = np.zeros(jumps.size, bool)
    for a, b in spans:
        taken[a:b + 1] = True
    return sorted(spans + runs_of(jumps & ~taken, merge_gap))


def _span_max(v: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """``max(v[a:b + 1])`` for each of the disjoint, sorted ``spans`` (vectorised)."""
    ab = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lens = ab[:, 1] - ab[:, 0] + 1
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    idx = np.repeat(ab[:, 0] - starts, lens) + np.arange(int(lens.sum()))
    return np.maximum.reduceat(v[idx], starts)


def _keep_worst(spans: list[tuple[int, int]], excess: np.ndarray, nf: np.ndarray,
                cap: int) -> tuple[list[tuple[int, int]], int, float | None]:
    """The ``cap`` worst of ``spans`` (in order) by peak ``excess`` (log ratio); spans with a
    non-finite point and a span reaching the series' end rank first. Returns the kept spans, how
    many were dropped, and the largest peak ratio among the dropped (None if unknown)."""
    ex = np.where(np.isfinite(excess), excess, -np.inf)
    peak = _span_max(ex, spans)
    score = np.where(_span_max(nf.astype(np.int8), spans) > 0, np.inf, peak)
    if spans[-1][1] == excess.size - 1:
        score[-1] = np.inf
    order = np.argsort(-score, kind="stable")
    keep = np.sort(order[:cap])
    drop = order[cap:]
    dmax = float(np.max(peak[drop])) if drop.size else -np.inf
    ratio = float(np.exp(min(dmax, 700.0))) if np.isfinite(dmax) else None
    return [spans[i] for i in keep.tolist()], int(drop.size), ratio


def _early_level(x: np.ndarray, past: np.ndarray | None, i: int, window: int) -> float | None:
    """Median of the last ``window`` points of ``past`` before ``i`` (None if there are none):
    the level of a run's first points, before the robust level exists."""
    if past is None:
        return None
    prev = x[:i][past[:i]][-window:]
    return float(np.median(prev)) if prev.size else None


def _finite_max(y: np.ndarray, i: int) -> float:
    """``y[i]``, or -inf where it is not finite (for comparing peaks)."""
    return float(y[i]) if np.isfinite(y[i]) else -np.inf


def _at(arr: np.ndarray | None, i: int) -> float | None:
    if arr is None or i < 0 or i >= arr.size or not np.isfinite(arr[i]):
        return None
    return float(arr[i])


class EpisodeList(list):
    """A list of :class:`RawEpisode` that also says how many candidates were left unlisted
    (beyond ``max_episodes``; see the module doc) and their largest peak ratio."""

    def __init__(self, items=(), *, n_unlisted: int = 0,
                 unlisted_max_ratio: float | None = None) -> None:
        super().__init__(items)
        self.n_unlisted = n_unlisted
        self.unlisted_max_ratio = unlisted_max_ratio


def loss_episodes(loss: np.ndarray, p: EpisodeParams, skip: int = 0,
                  loss_only: bool = False, interval_mean: bool = False) -> EpisodeList:
    """Upward loss jumps, sustained rises and non-finite losses, as loss-indexed episodes.

    ``skip``: points of the lr warm-up, left out (no healthy level exists yet). ``loss_only``:
    the run has no usable grad norm, so the loss is the only evidence: jumps are also judged
    over two consecutive points against the run's two-point spikiness (``loss_spike``'s
    ``sustain``), which finds a short bad stretch in a heavy-tailed loss. Where a grad norm
    exists, a loss jump it does not explain is a warning about the data at most, and the
    single-point rule alone keeps those few. ``interval_mean``: each point is the mean over
    several steps (the format says so), where one point at twice the level is an event on its
    own (``loss_spike``'s ``lone_ratio``)."""
    y = np.asarray(loss, dtype=np.float64).copy()
    if skip > 0:
        y[:skip] = np.nan
    n = y.size
    if n == 0:
        return EpisodeList()
    nf = nonfinite(y)
    nf[:skip] = False
    eps: list[RawEpisode] = []
    n_unlisted, lvl, ysp = 0, None, y
    if np.isfinite(y).sum() >= 10:
        sustain = 2 if loss_only else 0
        lone = 2.0 if interval_mean else None
        ll1 = loss_spike(y, window=p.window, min_history=p.min_history, sustain=sustain,
                         lone_ratio=lone)
        excl = nf.copy()
        for a, b in runs_of(ll1.elevated, p.merge_gap):
            if ll1.trigger[a:b + 1].any():
                excl[a:b + 1] = True
        ll = loss_spike(y, healthy=~excl, window=p.window, min_history=p.min_history,
                        prior=ll1, sustain=sustain, lone_ratio=lone)
        fin_y = np.isfinite(y)
        logged = bool(fin_y.any() and np.all(y[fin_y] > 0))  # the space loss_spike works in
        lvl = ll.level
        ysp = np.log(np.where(fin_y & (y > 0), y, 1.0)) if logged else y
        spans = [(a, b) for a, b in runs_of(ll.elevated | ll.trigger, p.merge_gap)
                 if ll.trigger[a:b + 1].any()]
        if len(spans) > p.max_episodes:
            spans, k, _ = _keep_worst(spans, ysp - lvl, np.zeros(n, bool), p.max_episodes)
            n_unlisted += k
        ysp_fin = np.where(fin_y, ysp, np.nan)
        jumps = _warm_jumps(ysp_fin, lvl, logged, p) if interval_mean else np.zeros(n, bool)
        spans = _with_warmup_jumps(spans, jumps, p.merge_gap)
        prev_last = -1
        for a, b in spans:
            trig = ll.trigger[a:b + 1] | jumps[a:b + 1]
            first = a + int(np.argmax(trig))
            onset = first
            while onset - 1 >= a and ll.elevated[onset - 1]:
                onset -= 1
            onset = _up_before_level(ysp_fin, lvl, onset, prev_last + 1)
            prev_last = b
            peak = finite_argmax(y, a, b + 1)
            eps.append(RawEpisode(onset, peak, b, "loss_spike", {"loss-spike"}, "loss"))
        # the spike episodes are sorted and disjoint: the ones a rise touches are found by
        # bisection, plus those an earlier rise extended or created (checked as they are now;
        # rises come in order, so one that ended before this rise's reach is dropped for good)
        on0 = np.array([e.onset for e in eps], dtype=np.int64)
        last0 = np.array([e.last for e in eps], dtype=np.int64)
        grown: list[RawEpisode] = []
        merged: set[int] = set()  # ids of episodes merged into another (dropped below)
        for onset, first, last in loss_rise(y, healthy=~nf & np.isfinite(y)):
            grown = [e for e in grown if e.last >= onset - p.merge_gap and id(e) not in merged]
            j0 = int(np.searchsorted(last0, onset - p.merge_gap))
            j1 = int(np.searchsorted(on0, last + p.merge_gap, side="right"))
            cand = {id(e): e for e in eps[j0:max(j0, j1)] + grown if id(e) not in merged}
            hit = sorted((e for e in cand.values()
                          if e.onset <= last + p.merge_gap and e.last >= onset - p.merge_gap),
                         key=lambda e: e.onset)
            if hit:
                # the rise joins every episode it touches into one (the first): an episode is
                # a maximal stretch
                e = hit[0]
                for o in hit[1:]:
                    merged.add(id(o))
                    e.detected_by |= o.detected_by
                    if _finite_max(y, o.peak) > _finite_max(y, e.peak):
                        e.peak = o.peak
                    e.last = max(e.last, o.last)
                e.detected_by.add("loss-rise")
                # a jump's onset is exact, a rise's only good to a block: the rise moves it
                # only when it clearly started earlier
                if onset < e.onset - RISE_BLOCK:
                    e.onset = onset
                e.last = max(e.last, last)
                grown.append(e)
                continue
            peak = finite_argmax(y, first, last + 1)
            eps.append(RawEpisode(onset, peak, last, "loss_spike", {"loss-rise"}, "loss"))
            grown.append(eps[-1])
        eps = [e for e in eps if id(e) not in merged]
    eps.sort(key=lambda e: e.onset)
    last_of = np.array([e.last for e in eps], dtype=np.int64)
    for a, b in runs_of(nf, p.merge_gap):
        # a breakdown (BROKE_RUN points in a row - not a span that merging made that long - or
        # to the end): the loss diverged; isolated ones, while it carried on finite, are not
        lasting = loss_broke(~nf[a:b + 1], b == n - 1)
        kind = "divergence" if lasting else "nonfinite"
        # inside (or touching) a jump or rise already found: part of that episode
        j = int(np.searchsorted(last_of, a - p.merge_gap))
        if j < last_of.size and eps[j].onset <= b + p.merge_gap and eps[j].source == "loss" \
                and eps[j].kind in ("loss_spike", "divergence"):
            host = eps[j]
            host.detected_by.add("nonfinite")
            host.onset = min(host.onset, a)  # (non-finite just before the jump: from there)
            host.last = max(host.last, b)
            if lasting:
                host.kind = "divergence"
            continue
        eps.append(RawEpisode(a, a, b, kind, {"nonfinite"}, "loss"))
    eps.sort(key=lambda e: e.onset)
    if len(eps) > p.max_episodes:
        # keep the divergences, then the spikes by height above the level, then the rest
        with np.errstate(invalid="ignore"):
            exc = np.where(np.isfinite(ysp - lvl), ysp - lvl, -np.inf) if lvl is not None \
                else None

        def rank(e: RawEpisode) -> float:
            if e.kind == "divergence":
                return np.inf
            return float(exc[e.peak]) if exc is not None and e.kind != "nonfinite" else -1e300

        order = sorted(range(len(eps)), key=lambda i: -rank(eps[i]))
        keep = sorted(order[:p.max_episodes])
        n_unlisted += len(order) - p.max_episodes
        eps = [eps[i] for i in keep]
    return EpisodeList(eps, n_unlisted=n_unlisted)


def severity(kind: str, peak_ratio: float | None, harmful: bool | None, has_grad: bool,
             spike_ratio: float, explosion_ratio: float, grad_every: int = 1) -> str:
    """``explosion`` or ``warning``: severity follows harm.

    - divergence: explosion. nonfinite: warning.
    - spike / level_shift: explosion when the loss was harmed (``harmful``) and the peak ratio
      reached ``spike_ratio``; with no loss series (``harmful is None``) when the peak ratio
      reached ``explosion_ratio``.
    - loss_spike: explosion when harmful and no grad norm is logged, or it is logged only every
      ``grad_every`` > 1 steps (nothing rules an explosion out: a spike between two logged
      points is unseen - the Trainer logging every 10 steps, lr 30x for 20 steps, showed the
      grad norm 1.4-2.6x its level at the logged steps and the loss +7 % for 200 steps); with a
      grad norm logged every step that stayed healthy it is no gradient explosion, a warning.
    """
    if kind == "divergence":
        return "explosion"
    if kind == "nonfinite":
        return "warning"
    if kind == "loss_spike":
        return "explosion" if (harmful and (not has_grad or grad_every > 1)) else "warning"
    r = peak_ratio or 0.0
    if harmful is None:
        return "explosion" if r >= explosion_ratio else "warning"
    return "explosion" if (harmful and r >= spike_ratio) else "warning"
