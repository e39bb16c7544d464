"""Passes a resume cut short: what a run logged before a restart that rewound its step.

A run's series keep the later write at every step (:mod:`gradaudit.series`, as TensorBoard
reads a resumed run). Where a job blew up, crashed and was restarted from an earlier
checkpoint into the same log, the steps it crashed on are written again, and the explosion
is gone from the series. A pass that holds over the steps trained again what the later pass
does not (:func:`_stands_out`: a grad norm over twice the later pass's highest and 10x its
median, a training loss well above its highest, a value gone non-finite for good), or that
reached steps the later pass never did, is therefore kept as a run of its own,
``<run>#pass<k>``: the run as it stood when the k-th rewind began (a write below the step
written just before it, in the loss or the grad norm, whichever went back more often; the
other series cut at its own restart write: :func:`_pass_ends`). A resume that
trained the same steps again alike, with other batches or not, is only the note the series
already carry; so are a step counter that goes back to its first step 3 times or more (per
epoch) and steps that go back over ``MAX_REWINDS`` times (written out of order).

:func:`redone_differ` is the step-by-step comparison for a Hugging Face Trainer's launches,
which resume deterministically (:mod:`gradaudit.discover`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from gradaudit.detect._common import diff_sigma
from gradaudit.detect.nonfinite import loss_broke
from gradaudit.series import MAX_STEP, RunSeries, canonical_frame

#: a step trained again after a resume differs from its first pass where the training loss
#: moved by more than this share (a resume's own nondeterminism moves it by under 0.1 %; the
#: HF Trainer logs it to 4 decimals: 1e-4 apart at least), or the grad norm by this factor
REDONE_TOLERANCE, REDONE_LOSS_FLOOR, REDONE_GRAD_FACTOR = 0.01, 1e-4, 2.0

#: a pass cut short stands out from the later pass over the same steps where its training loss,
#: smoothed over this many points, rises this share and this many sigmas of the later pass's
#: batch noise above the later pass's highest there
STRETCH_SMOOTH, STRETCH_LOSS_RISE, STRETCH_NOISE = 5, 0.2, 3.0
#: ... and where its grad norm reaches twice the later pass's highest and this many times its
#: median there (a spike, as the detectors' spike_ratio)
STRETCH_GRAD_LEVEL = 10.0

#: the passes of one run kept as runs of their own (each is audited), and the rewinds of one
#: run compared at most: more are steps logged out of order, not resumes
MAX_PASSES, MAX_REWINDS = 20, 1000
#: rewinds to a tag's first step, this many or more, are a step counter that restarts
RESTARTS_FROM_SCRATCH = 3

Series = tuple[np.ndarray, np.ndarray]  # steps, values


def redone_differ(resumed_at: int, first: tuple[Series, Series | None],
                  later: tuple[Series, Series | None]) -> int:
    """At how many steps from ``resumed_at`` on (trained again after a resume) the first
    pass's training loss (``(loss, grad norm)`` series) differs from the later pass's by more
    than ``REDONE_TOLERANCE``, or its grad norm by more than ``REDONE_GRAD_FACTOR`` either way
    (clipping can keep a blow-up out of the loss), or went NaN on one pass only."""
    differ: set[int] = set()
    for k, (mine, theirs) in enumerate(zip(first, later, strict=True)):
        if mine is None or theirs is None:
            continue
        redone = mine[0] >= resumed_at
        steps, i, j = np.intersect1d(theirs[0], mine[0][redone], assume_unique=True,
                                     return_indices=True)
        a, b = theirs[1][i], mine[1][redone][j]
        if k == 0:
            off = ~np.isclose(a, b, rtol=REDONE_TOLERANCE, atol=REDONE_LOSS_FLOOR,
                              equal_nan=True)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.abs(b) / np.abs(a)
            off = (ratio > REDONE_GRAD_FACTOR) | (ratio < 1 / REDONE_GRAD_FACTOR) \
                | (np.isnan(a) != np.isnan(b))  # (a norm gone NaN on one pass only)
        differ.update(steps[off].tolist())
    return len(differ)


def _rewinds(steps: np.ndarray) -> list[tuple[int, int]]:
    """``(i, step)`` of each write whose step is below the one this tag was written at just
    before (a restart; ``steps`` in write order, ``i`` its place among them). Where 3 or more go
    back to the tag's first step, those are left out: a step counter that restarts (per epoch),
    not resumes from a checkpoint."""
    if steps.size < 2:
        return []
    back = np.flatnonzero(steps[1:] < steps[:-1]) + 1
    to_start = steps[back] <= steps[0]
    if np.count_nonzero(to_start) >= RESTARTS_FROM_SCRATCH:
        back = back[~to_start]
    return [(int(i), int(steps[i])) for i in back]


def _survivors(steps: np.ndarray, values: np.ndarray, n: int) -> Series:
    """A tag's points among its first ``n`` writes that no later one of them replaced
    (every later write has a larger step), sorted by step."""
    s, v = steps[:n], values[:n]
    if s.size == 0:
        return s, v
    later_min = np.minimum.accumulate(s[::-1])[::-1]
    keep = np.ones(s.size, bool)
    keep[:-1] = s[:-1] < later_min[1:]
    return s[keep], v[keep]


def _pass_ends(ref: list[tuple[int, int]], tops: list[int], ref_walls: np.ndarray | None,
               other: list[tuple[int, int]], walls: np.ndarray | None,
               steps: np.ndarray) -> list[int]:
    """For each rewind of the reference tag (``(i, step)``; ``tops``: each pass's last step),
    how many of another tag's writes (``steps``) belong to the pass it ended: those written
    before it, by wall time where both tags have it (or before the other's own restart write,
    one not above the step it wrote before, nearer in time to this restart than to the ones
    either side: written just before the loss), else those before the other tag's rewind of
    the same rank where both rewound as often (a table holds each tag's writes apart), else
    those before its first write not above the one before it at a step the pass trained again
    (a series logged every 100 steps writes its last one again after a restart), else all
    (the caller keeps the ones up to the pass's last step)."""
    n = steps.size
    again = np.flatnonzero(steps[1:] <= steps[:-1]) + 1  # restart writes, strict or not
    if ref_walls is not None and walls is not None:
        order = np.maximum.accumulate(walls)  # (write order: times that never go back)
        at = [float(ref_walls[i]) for i, _ in ref]
        other_at = walls[again]
        ends = []
        for k, cut in enumerate(at):
            lo = (at[k - 1] + cut) / 2 if k else -np.inf
            hi = (cut + at[k + 1]) / 2 if k + 1 < len(at) else np.inf
            near = other_at[(other_at > lo) & (other_at < hi)]
            if near.size:
                cut = min(cut, float(near[int(np.argmin(np.abs(near - cut)))]))
            ends.append(int(np.searchsorted(order, cut, side="left")))
        return ends
    if len(other) == len(ref):
        return [i for i, _ in other]
    ends, prev = [], 0
    for (_, step), top in zip(ref, tops, strict=True):
        cand = again[(again > prev) & (steps[again] >= step) & (steps[again] <= top)]
        prev = int(cand[0]) if cand.size else prev
        ends.append(int(cand[0]) if cand.size else n)
    return ends


def _running_max(values: np.ndarray, width: int) -> float:
    """The highest running median of ``width`` finite values (of all of them where fewer)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.nan
    if v.size <= width:
        return float(np.median(v))
    return float(np.median(np.lib.stride_tricks.sliding_window_view(v, width), axis=1).max())


def _stands_out(resumed_at: int, first: tuple[Series | None, Series | None],
                later: tuple[Series, Series]) -> list[str]:
    """What a pass cut short by a resume from ``resumed_at`` holds that the later pass over
    the same steps does not (``(loss, grad norm)`` each): a grad norm over
    ``REDONE_GRAD_FACTOR`` x the later pass's highest there and ``STRETCH_GRAD_LEVEL`` x its
    median, a training loss (running median of ``STRETCH_SMOOTH`` points, or the lower of its
    last two) over ``STRETCH_LOSS_RISE`` and ``STRETCH_NOISE`` sigmas of its batch noise above
    its highest, a value gone non-finite for good on this pass only (3 in a row; the loss also
    to the pass's end), or points past the later pass's last step. Compared as
    stretches, not step by step: a resume that draws other batches moves each step's value."""
    why: list[str] = []
    beyond = np.empty(0, np.int64)
    for k, (mine, theirs) in enumerate(zip(first, later, strict=True)):
        if mine is None:
            continue
        top = int(theirs[0][-1]) if theirs[0].size else resumed_at - 1
        beyond = np.union1d(beyond, mine[0][mine[0] > top])
        a = mine[1][(mine[0] >= resumed_at) & (mine[0] <= top)]
        b = theirs[1][(theirs[0] >= resumed_at) & (theirs[0] <= int(mine[0][-1]))]
        if a.size == 0 or b.size == 0:
            continue
        what = "training loss" if k == 0 else "grad norm"
        # non-finite for good (3 in a row), not an fp16 overflow step the optimizer skipped,
        # also in the pass's last step
        # (the loss non-finite to the pass's end too: a crash logged every 20 steps)
        if loss_broke(np.isfinite(a), k == 0) and not loss_broke(np.isfinite(b), False):
            why.append(f"its {what} went non-finite, the later pass's did not")
            continue
        if k == 0:
            # (the lower of the last two points before the crash counts as one more running
            # median: a loss logged every 20 steps that blew up for its last two is no wider)
            tail = a[-2:][np.isfinite(a[-2:])]
            hi = max(_running_max(a, STRETCH_SMOOTH), float(tail.min()) if tail.size else np.nan)
            hi_later = _running_max(b, STRETCH_SMOOTH)
            # (a noisy loss's running median wanders by some of its batch noise: a rise must
            # clear STRETCH_NOISE sigmas of it too)
            noise = diff_sigma(b[np.isfinite(b)]) if np.isfinite(b).sum() > 2 else 0.0
            bar = max(STRETCH_LOSS_RISE * abs(hi_later), STRETCH_NOISE * noise)
            if hi - hi_later > bar + REDONE_LOSS_FLOOR:
                why.append(f"its training loss (a running median of {STRETCH_SMOOTH} points) "
                           f"reached {hi:.4g}, over {STRETCH_LOSS_RISE:.0%} and "
                           f"{STRETCH_NOISE:g} noise sigmas above the later pass's highest "
                           f"there ({hi_later:.4g})")
        else:
            fa, fb = np.abs(a[np.isfinite(a)]), np.abs(b[np.isfinite(b)])
            # over twice the later pass's highest, and a spike over its level: the highest of
            # a few noisy norms is twice another few's by chance (3-13 % of short rewinds)
            if fa.size and fb.size and fa.max() > max(REDONE_GRAD_FACTOR * fb.max(),
                                                      STRETCH_GRAD_LEVEL * float(np.median(fb))):
                why.append(f"its grad norm reached {fa.max():.4g}, over "
                           f"{REDONE_GRAD_FACTOR:g}x the later pass's highest there "
                           f"({fb.max():.4g}) and {STRETCH_GRAD_LEVEL:g}x its median")
    if beyond.size:
        why.append(f"it holds {beyond.size} steps past the later pass's last step")
    return why


def cut_short_passes(points: pl.DataFrame | pl.LazyFrame, run: RunSeries) -> list[RunSeries]:
    """The passes of ``run`` that a resume cut short and that differ from the steps trained
    again (module doc), each a run of its chosen series; ``points`` are the run's points in
    write order, ``run`` their series with its tags chosen. Notes on both say so."""
    chosen = [t for t in (run.loss_tag, run.grad_norm_tag, run.lr_tag) if t is not None]
    if not chosen or not run.notes:  # (a rewind always leaves a note on the run)
        return []
    df = points.collect() if isinstance(points, pl.LazyFrame) else points
    # (a stray point at an impossible step, a corrupt record, is no rewind: gradaudit.audit)
    df = df.filter(pl.col("tag").cast(pl.String).is_in(chosen) & pl.col("step").is_not_null()
                   & (pl.col("step").abs() <= MAX_STEP))
    per_tag: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for tag in chosen:
        sub = df.filter(pl.col("tag").cast(pl.String) == tag)
        wall = sub.get_column("wall_time").cast(pl.Float64).fill_null(np.nan).to_numpy() \
            if "wall_time" in sub.columns else np.full(sub.height, np.nan)
        per_tag[tag] = (sub.get_column("step").to_numpy().astype(np.int64),
                        sub.get_column("value").to_numpy().astype(np.float64), wall)
    rewinds = {t: _rewinds(per_tag[t][0]) for t in chosen}
    # the rewinds of whichever of the loss and the grad norm rewound more (one logged every
    # 100 steps may never go back: the other's steps do)
    ref = max([t for t in (run.loss_tag, run.grad_norm_tag) if t is not None],
              key=lambda t: len(rewinds[t]))
    starts = rewinds[ref]
    if not starts:
        return []
    if len(starts) > MAX_REWINDS:
        run.notes.append(f"{ref!r} goes back {len(starts)} times: steps logged out of order, "
                         "not resumes; the passes were not compared")
        return []
    walls = {t: w if np.isfinite(w).all() else None for t, (_, _, w) in per_tag.items()}
    highest = np.maximum.accumulate(per_tag[ref][0])
    tops = [int(highest[i - 1]) for i, _ in starts]  # each pass's last step
    ends = {t: [i for i, _ in starts] if t == ref else
            _pass_ends(starts, tops, walls[ref], rewinds[t], walls[t], per_tag[t][0])
            for t in chosen}
    final = tuple(run.series(t) for t in (run.loss_tag, run.grad_norm_tag))
    out: list[RunSeries] = []
    for k, (_, step) in enumerate(starts, start=1):
        top = tops[k - 1]
        first = {}
        for t in chosen:
            got = _survivors(*per_tag[t][:2], ends[t][k - 1])
            first[t] = (got[0][got[0] <= top], got[1][got[0] <= top])
        end = max(int(f[0][-1]) for f in first.values() if f[0].size)
        pair = tuple(None if t is None else first[t] for t in (run.loss_tag, run.grad_norm_tag))
        why = _stands_out(step, pair, final)
        if not why:
            continue
        if len(out) == MAX_PASSES:
            run.notes.append(f"more than {MAX_PASSES} passes cut short by a resume differ from "
                             "the steps trained again: the first are runs of their own")
            break
        frame = pl.concat([
            pl.DataFrame({"step": f[0], "tag": [t] * f[0].size, "value": f[1]},
                         schema={"step": pl.Int64, "tag": pl.String, "value": pl.Float64})
            for t, f in first.items()])
        frame, _ = canonical_frame(frame)
        name = f"{run.name}#pass{k}"
        out.append(RunSeries(
            name=name, format=run.format, files=list(run.files), frame=frame,
            grad_norm_tag=run.grad_norm_tag, loss_tag=run.loss_tag, lr_tag=run.lr_tag,
            interval_means=run.interval_means,
            notes=[f"the pass of {run.name} up to step {end}, cut short by a resume from step "
                   f"{step}: {'; '.join(why)}. Kept as a run of its {', '.join(chosen)} "
                   f"series, so that what happened there is audited (its steps before {step} "
                   "are in both runs)"]))
        run.notes.append(f"{name} holds this run's pass up to step {end}, before a resume from "
                         f"step {step}: it differs from the steps trained again, and is a run "
                         "of its own")
    return out
