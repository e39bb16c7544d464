"""Clip-threshold suggestions per run and for a batch (docs/findings.md, "Clip suggestions").

Options, each computed from the run's *healthy* grad norms (finite, outside every episode) and
named so a user can reproduce it:

- ``p99.9-healthy`` / ``p99-healthy``: that empirical percentile (``numpy.quantile(...,
  method="inverted_cdf")``: the smallest norm with at least 99.9 / 99 % of healthy norms at or
  below it, so it clips at most 0.1 / 1 % of them) of the healthy grad norms.
- ``autoclip-p10``: AutoClip (Seetharaman et al. 2020): the 10th percentile of the whole norm
  history (it clips most steps by design; the cost column shows it).
- ``zclip-z2.5-a0.97``: ZClip's bound ``mean + 2.5 sd`` of its EMA (alpha 0.97) after the last step.
- ``fixed-1.0``: the threshold most LLM recipes use.
- ``pascanu-5x-mean`` / ``pascanu-10x-mean``: 5 and 10 times the mean healthy norm (Pascanu 2013).

Each option reports the fraction of healthy steps it clips (cost), the fraction of finite episode
steps it clips and, per reported episode (in the order of the run's ``episodes``), the fraction
of the peak norm it cuts (benefit); ``None`` for a ``loss_spike``, whose grad norm stayed
healthy (clipping would not touch it).

Rule for the suggested threshold: the *smallest* option whose cost is at most
``clip_max_cost`` (default 1 % of healthy steps); p99-healthy and p99.9-healthy always qualify,
so the suggestion is at least as strong as the 99th percentile of the healthy norms.
Why 1 %: a threshold is judged by replay (retrain the faulted run with it): on the
benchmark's fault pairs with a clean twin, p99-healthy removed a median 79 % of the lasting
damage and cost the clean twin's final loss <= 1 % on 6 of 8 pairs (median 0.00 %; both misses
share one SGD-regressor twin, +1.9 % and +2.1 %), where p99.9-healthy (the 0.5 % rule)
removed only 47 % (<= 1 % on 8 of 8); fixed 1.0 removed 84 % but broke the 1 % bar on 3 of 8
(benchmarks/detection/README.md, "replay").
The healthy norms exclude the lr warm-up and every episode (warnings too; an explosion up to
where its loss came back), so an explosion never raises its own threshold.
A run **unstable throughout** (``UNSTABLE_EPISODES`` (3) grad-norm episodes or more, and norms whose
99th percentile against their level there - the higher of the medians of the 51 points up to
and from each - is ``UNSTABLE_TAIL`` (2.5) x or more; 1.1-1.5x in vanilla RNNs that train
calmly) holds its instability in its "healthy" norms: the percentile options are set by it.
Such a run is suggested AutoClip's threshold (``UNSTABLE_METHOD``), near its healthy level:
replayed with every option (``benchmarks/detection/replay_unstable.py`` and a reviewer's
trainer: 10 unclipped vanilla RNNs found so), it ended within 0-2.4 % of the best option's final
loss on each, where ``p99-healthy`` ended 7.7-65 % above it; clipped, the runs calmed and it
clipped 0-0.2 % of their steps (its cost column, from the unclipped norms, reads 82-90 %).
With fewer than ``MIN_HEALTHY_LEVEL`` (10) healthy norms nothing is suggested: the "99th
percentile" of three norms is their largest. The engine passes no options at all where fewer
than that were judged healthy against a healthy level (every ``RunAudit.too_short`` run):
norms no detector could judge may be an undetected explosion's.
A grad norm logged after clipping piles up at the threshold (:func:`clip_ceiling`): the engine
notes it and passes no options (each would clip nothing of clipped norms).
Batch rule (:func:`batch_clip`): the median over runs of their p99-healthy thresholds where it
clips at most ``clip_max_cost`` of every run's healthy steps, else the largest of them (which
always does): each with its cost on each run (the share of that run's healthy steps it clips,
from quantiles the run keeps). Runs unstable throughout are left out (their p99 is their
instability's) and named in the batch suggestion's advice.
No batch threshold where the runs' healthy grad norms are more than ``BATCH_MAX_SPREAD`` (10) x
apart: different models, whose one shared threshold would clip every step of some runs and none
of others.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

from gradaudit.detect.ema_zscore import HUGE
from gradaudit.model import MIN_HEALTHY_LEVEL, ClipOption, ClipSuggestion, RunAudit

BATCH_MAX_SPREAD = 10.0  # the most the runs' healthy grad norms may differ for one threshold
QUANTILES = np.linspace(0.0, 1.0, 1001)  # the healthy-norm quantiles a run keeps for the batch


def clip_options(
    g: np.ndarray,
    healthy: np.ndarray,
    episode_slices: list[tuple[int, int] | None],
    zclip_bound: float | None,
) -> list[ClipOption]:
    """The clip options for one run (``g`` raw grad norms, ``healthy`` bool mask,
    ``episode_slices`` each reported episode's first and last grad point, or None where
    clipping does not concern it)."""
    fin = np.isfinite(g) & (g > 0)
    h = g[healthy & fin]
    if h.size == 0:
        return []
    allg = g[fin]
    top = float(h.max())
    # (the mean of norms near the float limit: scaled, so that their sum cannot overflow)
    mean = float(np.mean(h / top)) * top if top > 0 else 0.0
    cands: list[tuple[str, float, str]] = [
        ("p99.9-healthy", float(np.quantile(h, 0.999, method="inverted_cdf")),
         "99.9th percentile of healthy norms (empirical, inverted CDF)"),
        ("p99-healthy", float(np.quantile(h, 0.99, method="inverted_cdf")),
         "99th percentile of healthy norms (empirical, inverted CDF)"),
        ("autoclip-p10", float(np.quantile(allg, 0.10)),
         "AutoClip: 10th percentile of the norm history"),
        ("fixed-1.0", 1.0, "the fixed threshold most LLM recipes use"),
        ("pascanu-5x-mean", 5.0 * mean, "5x the mean healthy norm (Pascanu et al.)"),
        ("pascanu-10x-mean", 10.0 * mean, "10x the mean healthy norm (Pascanu et al.)"),
    ]
    # (a bound at the recursion's cap is saturated: norms beyond 1e150 have no ZClip bound)
    if zclip_bound is not None and np.isfinite(zclip_bound) and zclip_bound < HUGE:
        cands.insert(3, ("zclip-z2.5-a0.97", float(zclip_bound),
                         "ZClip bound mean + 2.5 sd of its EMA (alpha 0.97) at the run's end"))
    ep_vals = [None if sl is None else g[sl[0]:sl[1] + 1] for sl in episode_slices]
    got = [v for v in ep_vals if v is not None]
    ep_all = np.concatenate(got) if got else np.empty(0)
    ep_all = ep_all[np.isfinite(ep_all)]
    out = []
    for method, thr, desc in cands:
        cost = float(np.mean(h > thr))
        ep_frac = float(np.mean(ep_all > thr)) if ep_all.size else None
        cuts: list[float | None] = []
        for v in ep_vals:
            if v is None:
                cuts.append(None)
                continue
            fv = v[np.isfinite(v)]
            if fv.size == 0:
                cuts.append(1.0 if v.size else None)  # a non-finite peak is cut entirely
                continue
            pk = float(fv.max())
            cuts.append(max(0.0, 1.0 - thr / pk) if pk > 0 else 0.0)
        out.append(ClipOption(method, thr, cost, ep_frac, cuts, desc,
                              all_clipped_fraction=float(np.mean(allg > thr))))
    return out


#: a run unstable throughout: this many episodes or more, and healthy norms whose 99th
#: percentile against their level there (``UNSTABLE_WINDOW`` points either side) is
#: ``UNSTABLE_TAIL`` x or more (module doc)
UNSTABLE_EPISODES = 3
UNSTABLE_TAIL = 2.5
UNSTABLE_WINDOW = 51
UNSTABLE_METHOD = "autoclip-p10"  # what such a run is suggested


def unstable_tail(h: np.ndarray, n_episodes: int) -> float | None:
    """How far the healthy norms ``h`` (in order) reach above their level there - the 99th
    percentile of their ratio to the higher of the medians of the ``UNSTABLE_WINDOW`` points
    up to and from each - where the run is unstable throughout (``UNSTABLE_*``), else None.
    Against the norms' level where they are, not their overall median: a grad norm that drifts
    or changes its scale over a run is no instability (and a step up is high only against the
    points before it)."""
    h = h[np.isfinite(h) & (h > 0)]
    if n_episodes < UNSTABLE_EPISODES or h.size < UNSTABLE_WINDOW:
        return None
    log_h = np.log(h)
    half = UNSTABLE_WINDOW // 2
    before, after = (median_filter(log_h, size=UNSTABLE_WINDOW, mode="nearest", origin=o)
                     for o in (half, -half))
    local = log_h - np.maximum(before, after)
    tail = float(np.exp(np.quantile(local, 0.99)))
    return tail if tail >= UNSTABLE_TAIL else None


def suggest(options: list[ClipOption], max_cost: float, advice: str | None,
            n_healthy: int | None = None, unstable: bool = False) -> ClipSuggestion:
    """Pick the smallest option clipping at most ``max_cost`` of healthy steps (none from fewer
    than ``MIN_HEALTHY_LEVEL`` healthy norms: ``n_healthy``); ``UNSTABLE_METHOD``'s in a run
    unstable throughout (:func:`unstable_tail`)."""
    if n_healthy is not None and n_healthy < MIN_HEALTHY_LEVEL:
        return ClipSuggestion(None, "none", options, advice)
    if unstable and (pick := next((o for o in options if o.method == UNSTABLE_METHOD),
                                  None)) is not None:
        return ClipSuggestion(pick.threshold, pick.method, options, advice)
    ok = [o for o in options if o.healthy_clipped_fraction <= max_cost + 1e-12]
    if not ok:
        return ClipSuggestion(None, "none", options, advice)
    best = min(ok, key=lambda o: o.threshold)
    return ClipSuggestion(best.threshold, best.method, options, advice)


#: a grad norm logged after clipping piles up at the threshold: its highest value held by at
#: least this many points, and by ``CEILING_PILE`` x as many as its next distinct value below
#: (a norm logged to a few decimals also repeats its highest value, about as often as the next)
CEILING_MIN_POINTS, CEILING_PILE = 5, 5.0
CEILING_TOLERANCE = 1e-5  # relative: clip_grad_norm_'s scaled grads' norm is max_norm to ~1e-6


def clip_ceiling(g: np.ndarray) -> tuple[float, int] | None:
    """``(threshold, points there)`` where the grad norms pile up at their highest value, as
    norms logged after clipping at that threshold do (``CEILING_*``); None otherwise, and for a
    constant series."""
    v = g[np.isfinite(g)]
    if v.size < CEILING_MIN_POINTS:
        return None
    top = float(v.max())
    if not top > 0:
        return None
    at = v >= top * (1.0 - CEILING_TOLERANCE)
    n_at = int(np.count_nonzero(at))
    below = v[~at]
    if below.size == 0 or n_at < CEILING_MIN_POINTS:
        return None
    n_next = int(np.count_nonzero(below == below.max()))
    return (top, n_at) if n_at >= CEILING_PILE * n_next else None


def healthy_quantiles(g: np.ndarray, healthy: np.ndarray,
                      sample: int = 1 << 16) -> np.ndarray | None:
    """The quantiles (``QUANTILES``) of the healthy finite norms a run keeps for
    :func:`batch_clip`, or None with fewer than ``MIN_HEALTHY_LEVEL`` of them. From at most
    ``sample`` of them, evenly spaced over the run (a cost known to 0.1 % needs no more; sorting
    a million norms would double the engine's time on a long run)."""
    h = g[healthy & np.isfinite(g) & (g > 0)]
    if h.size < MIN_HEALTHY_LEVEL:
        return None
    if h.size > sample:
        h = h[np.linspace(0, h.size - 1, sample).astype(np.int64)]
    return np.quantile(h, QUANTILES)


def _cost(q: np.ndarray, thr: float) -> float:
    """The share of a run's healthy norms above ``thr``, from its quantiles (to 0.1 %)."""
    return float(1.0 - np.searchsorted(q, thr, side="right") / q.size) if q.size else 0.0


def batch_clip(audits: list[RunAudit], max_cost: float = 0.01) -> ClipSuggestion | None:
    """One threshold for the batch: the median of the runs' p99-healthy thresholds, or their
    largest where the median clips too much of a run, with what each clips on each run; none
    where the runs' healthy levels are too far apart (module doc)."""
    runs: list[tuple[str, float, float, np.ndarray]] = []
    unstable: list[str] = []  # (their p99 is set by their instability: each has its own)
    for a in audits:
        if a.clip is None or a.healthy_quantiles is None or a.healthy_grad_norm is None:
            continue
        if a.clip.method == UNSTABLE_METHOD:
            unstable.append(a.run)
            continue
        for o in a.clip.options:
            if o.method == "p99-healthy" and np.isfinite(o.threshold):
                runs.append((a.run, o.threshold, a.healthy_grad_norm, a.healthy_quantiles))
    left_out = None if not unstable else (
        f"{len(unstable)} run(s) unstable throughout left out ({', '.join(unstable[:3])}"
        f"{', ...' if len(unstable) > 3 else ''}): each is suggested AutoClip's threshold of "
        "its own")
    if not runs:
        return ClipSuggestion(None, "none", [], left_out) if unstable else None
    lo = min(runs, key=lambda r: r[2])
    hi = max(runs, key=lambda r: r[2])
    if hi[2] > BATCH_MAX_SPREAD * lo[2]:
        ratio = hi[2] / lo[2]
        apart = f"{ratio:.3g}x apart" if np.isfinite(ratio) else "over 1e308x apart"
        return ClipSuggestion(None, "none", [], (
            f"no single threshold for the batch: the runs' healthy grad norms range from "
            f"{lo[2]:.3g} ({lo[0]}) to {hi[2]:.3g} ({hi[0]}), {apart} "
            f"(different models or scales); use each run's own suggestion"))
    options = [_batch_option("median-of-runs-p99-healthy", float(np.median([r[1] for r in runs])),
                             runs, max_cost, f"median over the {len(runs)} runs of their "
                             "p99-healthy"),
               _batch_option("max-of-runs-p99-healthy", max(r[1] for r in runs), runs, max_cost,
                             "the largest of the runs' p99-healthy")]
    # as for one run: the smallest that clips at most max_cost of every run's healthy steps
    # (the largest p99 always does; the median does where the runs are alike)
    best = next((o for o in options if all(_cost(r[3], o.threshold) <= max_cost + 1e-12
                                           for r in runs)), options[-1])  # (quantiles to 0.1 %)
    return ClipSuggestion(best.threshold, best.method, options, left_out)


def _batch_option(method: str, thr: float, runs: list[tuple[str, float, float, np.ndarray]],
                  max_cost: float, what: str) -> ClipOption:
    """A batch threshold with its mean cost over the runs, and how many it costs too much."""
    costs = [(_cost(r[3], thr), r[0]) for r in runs]
    over = [c for c in costs if c[0] > max_cost + 1e-12]
    desc = what
    if over:
        worst = max(over)
        desc += (f"; clips more than {max_cost:.0%} of the healthy steps on {len(over)} of "
                 f"{len(runs)} runs (most: {worst[1]}, {worst[0]:.1%})")
    else:
        desc += f"; clips at most {max_cost:.0%} of the healthy steps on every run"
    return ClipOption(method, thr, float(np.mean([c[0] for c in costs])), None, [], desc)
