"""The words of a finding: each episode's reason, the run's advice and its notes.

Every sentence a report shows about an episode or a run is built here from the numbers the
engine measured; the engine decides, this module says it.
"""

from __future__ import annotations

import numpy as np

from gradaudit.adapters.hf_log import FORMAT as HF_LOG_FORMAT
from gradaudit.adapters.hf_trainer import FORMAT as HF_FORMAT
from gradaudit.detect.head_blowup import ID as ID_HEAD
from gradaudit.detect.head_blowup import HeadBlowup
from gradaudit.detect.lr_change import ID as ID_LR
from gradaudit.episodes import SETTLE_RATIO
from gradaudit.model import MIN_HEALTHY_LEVEL, Episode, interrupted
from gradaudit.points import sorted_points
from gradaudit.series import RunSeries

WARMUP_NOTE_STEPS = 100  # a detectors' warm-up this many steps long or more gets a run note


def episode_reason(*, kind: str, from_grad: bool, ratio: float | None, base: float | None,
                   peak_step: int, harm: str, harmful: bool | None, joined_at: int | None,
                   has_grad: bool, g_every: int, spike_ratio: float, lr_text: str | None,
                   lr_restart: bool, severity: str, grad_peak_step: int | None,
                   abrupt: bool = True) -> str:
    """An episode's reason: its grad-norm half (:func:`grad_text`), its loss half (``harm``:
    :func:`harm_text`), what the grad norm did at a loss jump (``joined_at``: the step of the
    grad point that rose with it; ``grad_peak_step``: where the grad norm peaked in a loss
    episode), the lr rise behind it (``lr_text``; ``lr_restart``: a schedule's warm restart)
    and why a harmful episode is only a warning (``severity``). ``abrupt``: the loss reached its
    highest within a few points of the onset (it *jumped*); else it *rose* (a climb)."""
    moved, at, move = ("jumped", "at the jump", "jump") if abrupt else \
        ("rose", "as the climb began", "climb")
    reason = grad_text(kind, ratio, base, peak_step, from_grad)
    if harm:
        reason = f"{reason}; {harm}" if reason else harm
    if harmful is None and kind not in ("nonfinite", "divergence"):
        reason = (f"{reason}; " if reason else "") + \
            "no loss to judge the harm: severity from the peak ratio"
    if joined_at is not None:
        reason = (f"the loss {moved} and the grad norm rose {ratio:.3g}x with it (peak at "
                  f"step {joined_at}; this run's grad norm varies too much for that rise to "
                  f"flag alone); {harm or reason}")
    elif kind == "loss_spike" and has_grad and lr_text is None:
        if g_every > 1:  # a one-step spike between two logged grad norms is invisible
            reason = (f"the loss {moved} while the grad norm, logged every {g_every:g} "
                      "steps, stayed healthy at the logged steps (a spike between two of them "
                      f"would be unseen); {harm or reason}")
        elif ratio is not None and ratio >= spike_ratio:
            # the grad norm rose later in a long loss episode, not with the jump
            reason = (f"the loss {moved} while the grad norm stayed healthy {at} (it "
                      f"peaked {ratio:.3g}x later, at step {grad_peak_step}): no gradient "
                      f"explosion behind the {move}; {harm or reason}")
        else:
            reason = (f"the loss {moved} while the grad norm stayed healthy: no gradient "
                      f"explosion, clipping would not help; {harm or reason}")
    if lr_text is not None:
        if lr_restart:
            lr_text += " - a warning only: the schedule returned to an earlier lr"
        reason = f"{lr_text}; {reason}" if reason else lr_text
    if severity == "warning" and harmful and kind in ("spike", "level_shift") and \
            ratio is not None and ratio < spike_ratio:
        reason += f" (a warning: the grad norm peaked below {spike_ratio:g}x)"
    return reason


def grad_text(kind: str, ratio: float | None, base: float | None, peak_step: int,
               from_grad: bool) -> str:
    """The grad-norm half of an episode's reason."""
    if kind == "nonfinite":
        what = "grad norm" if from_grad else "loss"
        return (f"the {what} was logged inf/NaN while training went on (e.g. fp16 loss-scaler "
                "overflow steps that the optimizer skipped, one at a time or a few in a row "
                "while the scaler finds its scale): benign on its own")
    if ratio is not None and not np.isfinite(ratio):
        level = f" (healthy level {base:.3g})" if base is not None else ""
        return f"the grad norm went non-finite{level}"
    if ratio is None or base is None:
        return ""
    if not from_grad:
        return f"the grad norm peaked {ratio:.3g}x its healthy level {base:.3g} (step {peak_step})"
    return (f"grad norm rose {ratio:.3g}x above its healthy level {base:.3g} "
            f"(peak at step {peak_step})")


def harm_text(li, level: float, horizon: int, harmful: bool | None, ex_thr: float,
               jp_thr: float, short: tuple[int, str] | None = None,
               lasting: float | None = None, held_from: int | None = None,
               lr_time: bool = False, nonfinite: bool = True, by_fall: bool = False,
               bar_by: str = "harm", z: float = 2.0, abrupt: bool = True,
               grad_diverged: bool = False, aftershock_of: int | None = None,
               after_lr_rise: bool = True, held_by: str = "lr-rise episode",
               cut_short: bool = False) -> str:
    """The loss half of an episode's reason: the numbers behind the harm verdict
    (``short``: only that many logged points of the horizon, before what cut it; ``lasting``:
    the excess without the episode's own spike points, which the verdict uses;
    ``held_from``: a later episode's onset (``held_by``: of that kind), from which the excess
    was held; ``lr_time``: the counterfactual follows the schedule's learning-rate time;
    ``nonfinite``: the loss went non-finite after the onset; ``by_fall``: the threshold is half
    the fall the counterfactual expected over the horizon, not the harm bar; ``bar_by``: what
    set ``ex_thr`` - ``harm``, the harm bar; ``noise``, ``z`` standard errors of the estimate;
    ``chance``, what this chronically spiky run's loss does by chance over a horizon;
    ``abrupt``: the loss reached its highest within a few points of the onset - it *jumped*,
    else it *rose*; ``grad_diverged``: the episode is an explosion without harm to the loss, as
    its grad norm diverged;
    ``aftershock_of``: the onset of the lr-rise episode whose aftermath this one lies in, the
    counterfactual being the loss as it stood; ``after_lr_rise`` False: of an episode whose loss
    never came back; ``cut_short``: had not come back when this one began)."""
    if li.diverged and nonfinite:
        return "the loss diverged: it went non-finite"
    parts = []
    if li.loss_jump is not None and li.loss_jump > 0:
        parts.append(f"loss {'jumped' if abrupt else 'rose'} {li.loss_jump:+.3g} from its level "
                     f"{level:.3g}")
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
                     f"from there on is that {held_by}'s)")
        spike = "" if lasting is None or lasting == ex else \
            f" ({lasting:+.3g} without the spike itself)"
        gain = "" if ex >= 0 or not (lasting is None or lasting < 0) else \
            " (a gain)" if aftershock_of is None else \
            " (the loss went on recovering from the lr rise)" if after_lr_rise else ""
        since = "the lr-rise episode" if after_lr_rise else \
            "the episode whose loss had not come back by then," if cut_short else \
            "the episode whose loss never came back,"
        against = "its counterfactual" if aftershock_of is None else (
            f"the loss as it stood after {since} at step {aftershock_of} (the loss "
            "since is that episode's to answer for)")
        parts.append(f"averaged {ex:+.3g}{gain} against {against} {over}{spike}")
    text = " and ".join(parts) or "the loss impact could not be measured"
    if li.diverged:  # finite, but never back: the numbers say how far it stayed up
        return (f"{text}; the loss never came back (diverged): it ends the run above its "
                "level before the onset")
    if harmful is None:
        return text
    if harmful:
        return f"{text}: the loss was harmed"
    # no harm is a warning, unless the grad norm diverged (non-finite, or growing to the end)
    so = "but the grad norm diverged: an explosion" if grad_diverged else "so a warning"
    if ex is not None and short is None:
        if by_fall:
            return (f"{text}: below the harm threshold {ex_thr:.3g}, half the fall its "
                    "counterfactual expected over that stretch (the loss only fell less than "
                    "that trend, too uncertain a trend early in training to call it harmed, "
                    f"{so})")
        if bar_by == "noise":
            return (f"{text}: below the harm threshold {ex_thr:.3g}, {z:.2g} standard errors "
                    f"of this estimate (within its noise: not shown to be lasting harm, {so})")
        if bar_by == "chance":
            return (f"{text}: below the harm threshold {ex_thr:.3g}, what this run's loss "
                    f"does by chance over a horizon (not shown to be lasting harm, {so})")
        return (f"{text}: below the harm threshold {ex_thr:.3g} (the loss was not "
                f"lastingly harmed, {so})")
    return f"{text}: below the harm threshold {jp_thr:.3g} ({so})"


def advice(episodes: list[Episode], series: RunSeries, gs: np.ndarray, g: np.ndarray,
            has_grad: bool, g_every: int = 1, restarts: frozenset[int] = frozenset(),
            clip_regime: int | None = None, no_level: bool = False) -> str | None:
    """What would help, where the suggested clip would not (``gs``, ``g``: the grad norm;
    ``restarts``: onsets of episodes a schedule's warm restart explains; ``clip_regime``: the
    onset of the level shift whose regime the clip options were computed from, if any;
    ``no_level``: too few norms were judged healthy against a level to derive a threshold)."""
    parts = []
    if not has_grad:
        parts.append("no usable grad norm is logged, so no clip threshold can be derived; "
                     "log the global grad norm (before clipping)")
    elif no_level and not any(ID_HEAD in e.detected_by and e.end_step is None
                              for e in episodes):  # (said below)
        parts.append(f"fewer than {MIN_HEALTHY_LEVEL} grad norms could be judged against a "
                     "healthy level and found healthy (too few usable points, or most of them "
                     "in episodes), so no clip threshold can be derived: one from these norms "
                     "would be set by whatever episode they hold")
    for k, e in enumerate(episodes):
        lr_rise = ID_LR in e.detected_by and e.onset_step not in restarts
        # a shift that lasted: to the run's end, or to the next episode on its new level with
        # the grad norm still there at the run's end
        lasted = e.end_step is None or (interrupted(episodes, k) and _still_at(e, gs, g))
        if ID_HEAD in e.detected_by and e.end_step is None:
            parts.append(f"the run blew up at step {e.onset_step}, in its first steps, and never "
                         "trained from there: its learning rate was too high from the start for "
                         "this model (or its initialisation or data were broken); restart it "
                         "with a lower learning rate or a warm-up")
        elif e.kind == "divergence" and lr_rise:
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
        elif e.kind == "level_shift" and lasted:
            lr_note = _lr_change(series, e.onset_step)
            factor = lr_note[1] if lr_note else None
            settled = _settled_ratio(e, gs, g)
            what = f"after a learning-rate change ({lr_note[0]}) " if lr_note else ""
            if e.severity == "warning":  # the loss took no lasting harm: no lr to lower
                clip = ": the clip options are computed from the steps after it, the run's " \
                    "regime at its end" if e.onset_step == clip_regime else ""
                parts.append(
                    f"the grad norm settled ~{settled:.3g}x higher {what}at step "
                    f"{e.onset_step} without lasting harm to the loss (a changed batch size, "
                    f"gradient accumulation, loss scale or lr does that){clip}")
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
    if has_grad and episodes and series.format in (HF_FORMAT, HF_LOG_FORMAT):
        parts.append("the Hugging Face Trainer clips at max_grad_norm (1.0 by default) and logs "
                     "the grad norm before clipping: compare the options with the clip this run "
                     "trained with")
    return "; ".join(parts) if parts else None


def unstable_advice(n_episodes: int, tail: float) -> str:
    """The advice for a run unstable throughout (:func:`gradaudit.clip.unstable_tail`)."""
    return (f"the grad norm is unstable throughout the run ({n_episodes} grad-norm episodes, "
            f"and its healthy norms' 99th percentile is {tail:.3g}x their level there): the "
            "percentile options are set by that instability, so AutoClip's threshold, near "
            "the healthy level, is suggested (its cost column counts the unclipped norms; in "
            "replays of vanilla RNNs unstable so, the clipped runs calmed and it clipped under "
            "1 % of their steps); a lower learning rate would calm it too")


def head_blowup_reason(hb: HeadBlowup, horizon: int, excess: float | None) -> str:
    """The reason of a blow-up before the run's first healthy level (:mod:`gradaudit.detect.
    head_blowup`)."""
    grad = "" if hb.grad_start is None else (
        f"the grad norm rose {hb.grad_peak / hb.grad_start:.3g}x above its first values "
        f"({hb.grad_start:.3g}; peak {hb.grad_peak:.3g} at step {hb.grad_peak_step}) and ")
    over = "" if excess is None else \
        f", {excess:+.3g} on average over the next {horizon} steps against where it started,"
    text = (f"the run blew up in its first steps, before it had a healthy level: {grad}the loss "
            f"rose from {hb.loss_start:.3g} to {hb.loss_peak:.3g} (step {hb.loss_peak_step})")
    if hb.back_step is None:
        return (f"{text}{over} and never came back: it ends the run at {hb.loss_end:.3g}, "
                f"{hb.loss_end / hb.loss_start:.3g}x where it started, where a run that trains "
                "stays below it (diverged)")
    took = hb.back_step - hb.onset_step
    lasted = (f": it stood above where it started for {took} steps, the impact horizon or "
              "longer, where a run that trains stands below it, so the loss was harmed"
              if took >= horizon else f": back within {took} steps, less than the impact "
              "horizon, and with no counterfactual to measure its damage by in the run's "
              "first steps, a warning")
    return f"{text}{over} and came back under 1.2x its start at step {hb.back_step}{lasted}"


#: what the detectors judge before a healthy grad-norm level exists
JUDGED_WITHOUT_LEVEL = "a grad norm far above every earlier one, or a non-finite value,"


def loss_judged_without_level(interval_mean: bool, spike_ratio: float) -> str:
    """What the loss detectors judge before the loss has a level: jumps only in a loss logged
    as a mean over its logging interval (:func:`gradaudit.episodes.loss_episodes`)."""
    if interval_mean:
        return f"a loss {spike_ratio:g}x above every earlier one, or a non-finite one,"
    return "a non-finite loss"


def loss_too(n_loss: int, min_history: int, judged: str = "a non-finite loss") -> str:
    """Beside a grad norm without a level: whether the loss had enough points for one, and
    what is judged in it if not (:func:`loss_judged_without_level`)."""
    if n_loss > min_history:
        return f"; the loss ({n_loss} points) is judged as usual"
    return f"; the loss ({n_loss} points) is too short for one as well: in it only " \
        f"{judged} is judged" if n_loss else ""


def never_judged_note(min_history: int, n_loss: int, loss_judged: str) -> str:
    """The note on a run whose grad norm never had a healthy level although it had enough
    points for one (non-finite values or episodes among its first ones)."""
    return (f"the grad norm never had a healthy level (too few of its usable points lay outside "
            f"episodes: it needs more than {min_history}), so only {JUDGED_WITHOUT_LEVEL} was "
            f"judged in it" + loss_too(n_loss, min_history, loss_judged))


def clipped_norm_note(threshold: float, n_at: int, n: int) -> str:
    """The note on a run whose grad norm piles up at its highest value (:func:`gradaudit.clip.
    clip_ceiling`): logged after clipping, so no clip threshold is suggested from it."""
    return (f"the grad norm sits at its highest value, {threshold:.4g}, on {n_at} of its {n} "
            f"finite points: it looks logged after clipping at {threshold:.4g}, so a spike shows "
            "only up to that threshold, and no clip threshold is suggested from it (log the "
            "norm before clipping: torch.nn.utils.clip_grad_norm_ returns it)")


def warmup_note(notes: list[str], usable: np.ndarray, warm: int | None,
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
                     "above every earlier point and non-finite values are judged (log more "
                     "often to judge the start of training)")


def _jumped(e: Episode, gs: np.ndarray, g: np.ndarray, ratio: float = 10.0) -> bool:
    """The episode's first point is a finite grad norm ``ratio`` x above the healthy level: it
    began with one step out of health (a bad batch), not a climb (an lr too high)."""
    i = int(np.searchsorted(gs, e.onset_step))
    return bool(i < gs.size and gs[i] == e.onset_step and np.isfinite(g[i])
                and e.baseline_grad_norm and g[i] >= ratio * e.baseline_grad_norm)


def _settled_ratio(e: Episode, gs: np.ndarray, g: np.ndarray, tail: int = 50) -> float:
    """Where the grad norm ``g`` (at ``gs``) settled in a level shift that lasted: the median of
    its last ``tail`` finite points (before its end, where the next episode interrupted it) over
    the healthy level before it (the peak ratio where that is unknown)."""
    end = gs.size if e.end_step is None else int(np.searchsorted(gs, e.end_step))
    seg = g[int(np.searchsorted(gs, e.onset_step)):end]
    seg = seg[np.isfinite(seg) & (seg > 0)]
    if not seg.size or not e.baseline_grad_norm:
        return float(e.peak_ratio) if e.peak_ratio is not None else 1.0
    return float(np.median(seg[-tail:]) / e.baseline_grad_norm)


def _still_at(e: Episode, gs: np.ndarray, g: np.ndarray, tail: int = 50) -> bool:
    """Whether the grad norm ``g`` ends the run where level shift ``e`` had settled before its
    end: the medians of the ``tail`` finite points before each within ``SETTLE_RATIO`` x."""
    before = g[int(np.searchsorted(gs, e.onset_step)):int(np.searchsorted(gs, e.end_step))]
    before, end = before[np.isfinite(before) & (before > 0)], g[np.isfinite(g) & (g > 0)]
    if not before.size or not end.size:
        return False
    ratio = float(np.median(end[-tail:])) / float(np.median(before[-tail:]))
    return 1.0 / SETTLE_RATIO <= ratio <= SETTLE_RATIO


def _lr_change(series: RunSeries, onset: int) -> tuple[str, float] | None:
    """A learning-rate change within a few logged points before the onset: (text, factor)."""
    if series.lr_tag is None:
        return None
    s, v = sorted_points(*series.series(series.lr_tag))
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
