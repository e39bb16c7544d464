"""The series a run's figures are drawn from: decimated whole-run traces, each episode's
counterfactual, and full-resolution windows around the worst episodes of a long run."""

from __future__ import annotations

import numpy as np

from gradaudit.model import Episode
from gradaudit.points import MAX_TRACE_POINTS, decimate

MAX_ZOOMS = 3  # episodes of a long run drawn again at full resolution

Trace = tuple[np.ndarray, np.ndarray]


def figure_traces(counterfactuals: dict[str, Trace], episodes: list[Episode],
                  grad: Trace | None, loss: Trace | None, horizon: int) -> dict[str, Trace]:
    """The traces of a run with findings: ``counterfactual:{onset}`` (as given, decimated),
    ``grad_norm`` and ``loss`` (decimated; None where the run has no such series) and the
    zoom windows (:func:`zoom_traces`)."""
    traces = dict(counterfactuals)
    if grad is not None:
        traces["grad_norm"] = decimate(*grad)
    if loss is not None:
        traces["loss"] = decimate(*loss)
    for key in [k for k in traces if k.startswith("counterfactual:")]:
        traces[key] = decimate(*traces[key])
    gs, g = grad if grad is not None else (None, np.empty(0))
    ls, lv = loss if loss is not None else (None, np.empty(0))
    zoom_traces(traces, episodes, gs, g, ls, lv, horizon)
    return traces


def zoom_traces(traces: dict, episodes: list[Episode], gs: np.ndarray | None, g: np.ndarray,
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
