"""Episodes tied to the learning-rate rises that caused them (detector ``lr-change``)."""

from __future__ import annotations

import numpy as np

from gradaudit.detect._common import finite_argmax
from gradaudit.detect.loss_rise import BLOCK as RISE_BLOCK
from gradaudit.detect.loss_rise import ID as ID_RISE
from gradaudit.detect.loss_spike import ID as ID_SPIKE
from gradaudit.detect.lr_change import ID as ID_LR
from gradaudit.detect.lr_change import lr_onset_step, lr_rise_step, lr_rises
from gradaudit.episodes import RawEpisode
from gradaudit.points import sorted_points, typical_gap
from gradaudit.series import RunSeries


def attach_lr(series: RunSeries, raw: list, steps: np.ndarray, g: np.ndarray | None,
               ls: np.ndarray, lv: np.ndarray, notes: dict, merge_gap: int, ratio: float,
               lookahead: int, level_min_points: int,
               grad_episodes: list | None = None) -> list:
    """Tie episodes to upward lr changes (``lr-change``).

    An episode whose onset lies between the lr rise's onset (:func:`lr_onset_step`, minus the
    merge lag) and ``lookahead`` logged points after the rise's top, and that is still going at
    the rise's onset (its effect can show no earlier), is caused by it, and so is
    where none does, a sustained loss rise under way at the rise's onset, started at most a
    block of points before that window, that peaks after it (a ``loss-rise`` onset is only
    known to a block, and noise can start it early): its onset moves to the rise's onset (not
    past its peak: one that peaked before keeps its onset and peak) and ``lr-change`` joins its
    detectors. A grad episode under way at the rise's onset that peaks
    after it is split there (:func:`_split_at`): a natural spike whose tail the rise's climb
    joined stays itself, the climb is the rise's. A rise that no episode follows becomes a
    candidate loss episode from the rise's onset, or from the end of a grad episode under way
    there (none inside an open-ended one): an explosion where its loss impact shows harm, else a
    warning (a schedule's warm restart that left the loss alone is dropped).
    """
    if series.lr_tag is None or not ls.size:
        return raw
    rs, rv = sorted_points(*series.series(series.lr_tag))
    rises = lr_rises(rv, ratio=ratio)
    if not rises:
        return raw
    gap = typical_gap(steps) if steps.size > 1 else 1
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
        # (an episode over before the rise's onset - where its effect can first show: a grad
        # norm at the first step with the new lr is computed before that lr's first update -
        # came before it)
        hits = [r for r in free if lo <= r[1] <= hi and _last_step(r[0], steps, ls) >= on]
        if not hits:  # a loss rise whose onset noise put a little early (about a block)
            lead = lo - typical_gap(ls) * RISE_BLOCK
            hits = [r for r in free if lead <= r[1] and _rising_through(r, on, ls)]
        if not hits:
            split = _split_at(out, on, steps, g, level_min_points, grad_episodes)
            if split is not None:
                hits = [split]
        if hits:
            r = min(hits, key=lambda r: r[1])
            e = r[0]
            e.detected_by.add(ID_LR)
            i_on = int(np.searchsorted(steps if e.source == "grad" else ls, on))
            # the onset moves to the rise's (the indices with it), unless the episode peaked
            # before it: under way when the lr rose, it keeps its onset and peak
            if e.source not in ("grad", "loss"):
                r[1] = on
            elif i_on <= e.peak:
                e.onset, r[1] = i_on, on
            notes[id(r[0])] = (text, rise)
            continue
        # a grad episode under way at the rise (it peaked before it) is no part of the rise's:
        # the rise's own episode starts after it, and there is none inside an open-ended one
        # (a loss episode under way is cut at the rise's instead: audit's _disjoint)
        ends = [r[2] for r in out
                if r[0].source == "grad" and r[1] < on and (r[2] is None or r[2] > on)]
        if None in ends:
            continue
        start = max([on, *ends])
        i0 = int(np.searchsorted(ls, start))
        if i0 >= ls.size or start > hi:
            continue
        last = int(np.clip(np.searchsorted(ls, max(top, start), side="right") - 1, i0,
                           ls.size - 1))
        peak = finite_argmax(lv, i0, last + 1)  # within the episode: its end follows its peak
        e = RawEpisode(i0, peak, last, "loss_spike", {ID_LR}, "lr")
        end = int(ls[last + 1]) if last + 1 < ls.size else None
        out.append([e, int(ls[i0]), end])
        notes[id(e)] = (text, rise)
    return [tuple(r) for r in out]


def _last_step(e: RawEpisode, steps: np.ndarray, ls: np.ndarray) -> int:
    """The step of ``e``'s last anomalous point (a grad episode's in ``steps``, any other's in
    ``ls``)."""
    return int((steps if e.source == "grad" else ls)[e.last])


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
        head_peak = finite_argmax(g, e.onset, i_on)
        head_kind = e.kind if e.kind == "level_shift" and i_on - e.onset >= level_min_points \
            else "spike"
        held = e.holds_from if e.holds_from is not None and e.holds_from >= i_on else None
        tail = RawEpisode(i_on, e.peak, e.last, e.kind, set(e.detected_by), "grad", e.base_log,
                          holds_from=held)
        if held is not None or head_kind != "level_shift":  # where the new level held
            e.holds_from = None
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
