"""An event's role in scoring, read from its label alone: shared by ``make_runs.py``, which
writes the labels (a run's ``clean``/``fault`` label), and ``score.py``, which scores against
them (README, "Metrics"). Neither imports the other: the generator needs torch, the scorer
gradaudit."""

from __future__ import annotations


def incomplete(event: dict) -> bool:
    """A natural event whose truth is incomplete: truncated by the run's end, or between a
    sparse view's logged steps."""
    return bool(event.get("truncated") or event.get("unlogged"))


def role(event: dict) -> str:
    """'must' (harmful: must be found), 'optional' (harmless or ambiguous, or a natural event
    whose truth is incomplete) or 'benign'."""
    if event["benign"]:
        return "benign"
    if event["harmful"] and not event["ambiguous"] and not incomplete(event):
        return "must"
    return "optional"


def harmless_natural(event: dict) -> bool:
    """A natural event that did no harm (nor harm within the ambiguous band), or whose truth
    is incomplete: an explosion on it is a false alarm."""
    return event["kind"] == "natural" and (
        incomplete(event) or not (event["harmful"] or event["ambiguous"]))


def clean_or_fault(natural_events: list[dict]) -> str:
    """The label of a run with no injected fault: clean unless one of its natural events did
    harm (an explosion on a harmless natural spike is a false alarm on a clean run)."""
    return "clean" if all(harmless_natural(e) for e in natural_events) else "fault"


def is_clean(label: dict) -> bool:
    """Clean runs and runs whose only events are benign or harmless natural spikes: an
    explosion there is a false alarm."""
    return label["label"] == "clean" or all(
        role(e) == "benign" or harmless_natural(e) for e in label["events"])
