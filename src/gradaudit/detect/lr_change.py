"""``lr-change``: upward learning-rate changes in the middle of a run.

Schedules warm up from the first step and then decay; an lr that *rises* later (a spike, a
permanent jump, a ramp, a warm restart) is strong evidence for whatever the loss and the grad
norm do next, and it explains a level shift that clipping cannot fix.

Rules (on the positive, finite logged lr values):

- A *rise* is a maximal stretch of consecutive logged increases (each > ``tol`` relative), from
  the last point with the old lr (``start``) to the highest point (``top``). It is reported when
  ``lr[top] / lr[start] >= ratio`` (default 1.5x).
- A rise that begins at the first logged point is the warm-up: never reported.
- ``restart``: the new lr is back at the highest lr the run had before the rise (between
  ``restart_band`` (90 %) of it and 1 % above it): the schedule returning to its peak (a warm
  restart or a cyclic schedule), not a fault on its own. A rise to an intermediate lr (say 1.5x
  in the middle of the decay) is no restart. The highest lr is taken without the points of an
  earlier *transient* rise: one that was no restart and came back down to its old lr in one
  logged step falling ``ratio`` x or more, landing within ``ratio`` x of the old lr (an lr
  spike ended; a step decay far below it, after a lasting raise, ends no spike). A schedule
  restarts to its own peak, not to a spike's (so a second spike like the first is no restart
  either); a phase the schedule raised and then decayed through its old lr keeps its peak.

The onset of what a rise causes (:func:`lr_onset_step`): the lr logged at step ``s`` is the one
the update at ``s`` used, and its effect first shows in the loss/grad norm of the next step. The
new lr may have come into force anywhere after the last logged step with the old lr (``s0``), so
the onset is the first logged point at or after ``s0 + 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ID = "lr-change"


@dataclass
class LrRise:
    """One upward lr change (indices into the lr series)."""

    start: int  # last point with the old lr
    top: int  # highest point of the rise
    factor: float  # lr[top] / lr[start]
    restart: bool  # back to (not above) an lr the run had before
    transient: bool = False  # came back to the old lr in one fall of ``ratio`` x (a spike)


def lr_rises(lr: np.ndarray, *, ratio: float = 1.5, tol: float = 1e-6,
             restart_band: float = 0.9, max_rises: int = 50) -> list[LrRise]:
    """Upward lr changes of at least ``ratio`` outside the warm-up (see module doc).

    A series that rises more than ``max_rises`` times is not read as a learning-rate schedule
    (noise, a many-cycle cyclic schedule, or a tag that is not the lr): no rise is reported.
    """
    v = np.asarray(lr, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(v) & (v > 0))
    if ok.size < 3:
        return []
    x = v[ok]
    up = np.diff(x) > tol * np.abs(x[:-1])
    out: list[LrRise] = []
    idx = np.flatnonzero(up)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    spiked = np.zeros(x.size, dtype=bool)  # points of transient rises (lr spikes)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if a == 0:
            continue  # warm-up
        f = float(x[b] / x[a])
        if f < ratio:
            continue
        peak = float(x[: a + 1][~spiked[: a + 1]].max())  # x[0] is never a spike's
        restart = bool(restart_band * peak <= x[b] <= 1.01 * peak)
        rise = LrRise(int(ok[a]), int(ok[b]), f, restart)
        out.append(rise)
        if len(out) > max_rises:
            return []
        if not restart:
            back = np.flatnonzero(x[b + 1:] <= x[a] * (1 + tol))
            k = b + 1 + int(back[0]) if back.size else None
            # a spike ends on its old lr; a later step decay that falls far below it (a
            # MultiStepLR milestone after a lasting raise) ends no spike
            if k is not None and x[k - 1] >= ratio * x[k] and x[k] * ratio >= x[a]:
                spiked[a + 1: k] = True
                rise.transient = True
    return out


def lr_rise_step(lr_steps: np.ndarray, lr: np.ndarray, rise: LrRise) -> int:
    """The first logged step with the raised lr (the step the rise is seen at in the lr's own
    log; its effect shows from :func:`lr_onset_step` on)."""
    v = np.asarray(lr, dtype=np.float64)
    later = np.flatnonzero(np.isfinite(v[rise.start + 1:]) & (v[rise.start + 1:] > 0))
    return int(lr_steps[rise.start + 1 + int(later[0])]) if later.size else int(lr_steps[rise.top])


def lr_onset_step(lr_steps: np.ndarray, rise: LrRise, steps: np.ndarray) -> int | None:
    """The first step of ``steps`` (sorted) at or after ``lr_steps[rise.start] + 2``."""
    s0 = int(lr_steps[rise.start]) + 2
    i = int(np.searchsorted(steps, s0))
    return int(steps[i]) if i < steps.size else None


def lr_time(lr_steps: np.ndarray, lr: np.ndarray, rise: LrRise, steps: np.ndarray,
            onset: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Learning-rate time at ``steps`` (sorted) around a lasting rise: ``(run, schedule)``.

    Learning-rate time is the sum of the lr over the steps so far, in units of the old lr
    (``lr[rise.start]``): each step counts for the lr in force (the last one logged) over the
    old one. ``run`` is the run's own; ``schedule`` is the same up to ``onset`` and then goes on
    as if the rise had not happened: the old lr up to the rise's top, the run's lr divided by the
    rise's factor after it (a schedule that went on decaying is still followed). None where the
    old lr is not known.
    """
    v = np.asarray(lr, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    ls, lv = np.asarray(lr_steps)[ok], v[ok]
    old = float(v[rise.start]) if ok[rise.start] else 0.0
    i_on = int(np.searchsorted(steps, onset))
    if old <= 0 or ls.size == 0 or i_on >= steps.size:
        return None
    at = np.clip(np.searchsorted(ls, steps, side="right") - 1, 0, ls.size - 1)
    r = lv[at] / old
    top = int(np.asarray(lr_steps)[rise.top])
    r_cf = np.where(steps <= top, np.minimum(r, 1.0), r / rise.factor)
    t = steps.astype(np.float64)
    # from step 0, or from the first step where that is below 0 (as the loss model counts)
    dt = np.diff(t, prepend=min(0.0, float(t[0])))
    run = np.cumsum(dt * r)
    sched = run.copy()
    sched[i_on + 1:] = run[i_on] + np.cumsum(dt[i_on + 1:] * r_cf[i_on + 1:])
    return run, sched


def warmup_end_step(lr_steps: np.ndarray, lr: np.ndarray, *, tol: float = 1e-6) -> int | None:
    """The step where the lr warm-up (a rise from the first logged point) reaches its top, or
    None when the lr does not start by rising. Before it the grad norm and loss have no
    stationary healthy level: the engine learns levels only after it."""
    v = np.asarray(lr, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(v) & (v > 0))
    if ok.size < 2:
        return None
    x = v[ok]
    up = np.diff(x) > tol * np.abs(x[:-1])
    if not up[0]:
        return None
    k = int(np.argmin(up)) if not up.all() else up.size
    return int(lr_steps[ok[k]])
