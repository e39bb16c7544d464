"""Hugging Face ``trainer_state.json``: the ``log_history`` of a Trainer run.

Training entries (``loss``, ``grad_norm``, ``learning_rate``, ``epoch``, ...) become the tags the
Trainer reports to TensorBoard/W&B: ``train/loss``, ``train/grad_norm``, ``train/learning_rate``,
``train/epoch``; eval entries (``eval_loss``, ``eval_runtime``, ...) become ``eval/loss``, ...;
``test_*`` become ``test/*``. The final summary entry (``train_runtime``, ``train_loss``, ...) is
no series point. Non-finite values (``NaN``/``Infinity`` tokens written by Python's ``json``) are
kept. ``loss`` is the mean over the steps since the previous log (``interval_means``).

An output folder ``out/`` is one run; each ``out/checkpoint-N/trainer_state.json`` is a copy of the
state at step N and belongs to the same run. The copy with the largest ``global_step`` is read
(on a tie, the top-level one); a note names it. Where the top-level copy (written last in a run)
is behind a checkpoint whose history does not go on from it, or where a copy written later than
the most advanced one has a history that one does not go on from (an earlier, longer run's
top-level copy left in the folder), one of them is left from an earlier run in a reused folder:
the copy written last is read (the most advanced one when both carry the same time, as after a
copy), and a note says the copies disagree.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import polars as pl

from gradaudit.adapters.base import RawRun, Source, json_float, nonempty_size
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

FORMAT = "hf-trainer-state"
FILE_NAME = "trainer_state.json"
#: Largest trainer_state.json loaded (parsed as one Python object).
MAX_BYTES = 512 * 1024 * 1024
_CHECKPOINT = re.compile(r"checkpoint-\d+$")
_GLOBAL_STEP = re.compile(rb'"global_step"\s*:\s*(\d+)')
#: Keys of the final summary entry the Trainer appends after training.
_SUMMARY_KEYS = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second"})
#: The Trainer logs ``loss`` as the mean over the steps since its previous log.
INTERVAL_MEANS = frozenset({"train/loss"})


def claim(directory: Path, files: list[Path]) -> list[Source]:
    """``trainer_state.json``; a copy inside ``checkpoint-N/`` belongs to the parent run."""
    out: list[Source] = []
    for f in files:
        if f.name == FILE_NAME:
            name = ".." if _CHECKPOINT.match(directory.name) else "."
            out.append(Source(FORMAT, name, (f,)))
    return out


def tag_for(key: str) -> str:
    """The tag the Trainer reports a log_history key under (its ``rewrite_logs``)."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if key.startswith("test_"):
        return "test/" + key[len("test_") :]
    return "train/" + key


def _sniff_step(path: Path) -> int | None:
    """``global_step`` from the head of the file (keys are sorted: it precedes log_history)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    m = _GLOBAL_STEP.search(head)
    return int(m.group(1)) if m else None


def _extends(later: Path, earlier: Path) -> bool:
    """Whether ``later``'s log_history goes on from ``earlier``'s (a run resumed and saved
    further), rather than being another run's; False when either cannot be read."""
    try:
        a, b = _load(earlier)["log_history"], _load(later)["log_history"]
    except (ReadError, KeyError):
        return False
    steps_a = [e.get("step") for e in a if isinstance(e, dict)]
    steps_b = [e.get("step") for e in b if isinstance(e, dict)][: len(steps_a)]
    return steps_a == steps_b and a[: len(steps_b)] == b[: len(steps_b)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _is_top_level(path: Path) -> bool:
    return not _CHECKPOINT.match(path.parent.name)


def _load(path: Path) -> dict[str, Any]:
    size = nonempty_size(path)
    if size > MAX_BYTES:
        raise ReadError(
            f"the file is {size >> 20} MiB; trainer_state.json files over {MAX_BYTES >> 20} MiB "
            "are not loaded"
        )
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace") as fh:  # a BOM is allowed
            state = json.load(fh)
    except ValueError as exc:
        raise ReadError(f"not valid JSON (a partly written file?): {exc}") from exc
    except RecursionError as exc:
        raise ReadError("the JSON nests too deeply") from exc
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ReadError("not a trainer_state.json: no log_history list")
    return state


INT64 = range(-(2**63), 2**63)  # the steps a table holds


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return json_float(v)


def _points(state: dict[str, Any]) -> tuple[pl.DataFrame, int]:
    steps: list[int] = []
    tags: list[str] = []
    values: list[float] = []
    skipped = 0
    for entry in state["log_history"]:
        if not isinstance(entry, dict):
            skipped += 1
            continue
        if _SUMMARY_KEYS & entry.keys():
            continue
        step = entry.get("step")
        if isinstance(step, float) and math.isfinite(step) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step not in INT64:
            skipped += 1
            continue
        # An eval entry repeats the epoch of the training entry at the same step.
        is_eval = any(k.startswith(("eval_", "test_")) for k in entry)
        for key, raw in entry.items():
            if key == "step" or (is_eval and key == "epoch"):
                continue
            value = _number(raw)
            if value is None:
                continue
            steps.append(step)
            tags.append(tag_for(key))
            values.append(value)
    frame = pl.DataFrame(
        {"step": steps, "tag": tags, "value": values},
        schema={"step": pl.Int64, "tag": pl.String, "value": pl.Float64},
    )
    return frame, skipped


def read(source: Source) -> list[RawRun]:
    """Read the most advanced copy of the run's ``trainer_state.json``."""
    steps = {p: _sniff_step(p) for p in source.files}
    files = sorted(
        source.files,
        key=lambda p: (-(steps[p] or -1), not _is_top_level(p), str(p)),
    )
    conflict = None
    top = [p for p in files if _is_top_level(p) and steps[p] is not None]
    newest = max(files, key=_mtime)
    if newest != files[0] and steps[newest] is not None \
            and _mtime(newest) - _mtime(files[0]) >= 1.0 and not _extends(files[0], newest):
        # a copy written after the most advanced one, whose history that one does not go on
        # from: the most advanced one is left from an earlier, longer run in the same folder
        conflict = (f"the copies disagree ({files[0]} is at step {steps[files[0]]} but {newest}, "
                    f"written later, at step {steps[newest]}; an output folder used again?): "
                    "the one written last was read")
        files.sort(key=_mtime, reverse=True)
    elif top and (steps[files[0]] or -1) > (steps[top[0]] or -1) \
            and not _extends(files[0], top[0]):
        # the top-level state (written last in a run) is behind a checkpoint that does not go
        # on from it: one of them is left from an earlier run in the same output folder, and
        # the copy written last is this run's - unless both were written at once (copied)
        pair = f"{top[0]} is at step {steps[top[0]]} but {files[0]} at step {steps[files[0]]}"
        if abs(_mtime(top[0]) - _mtime(files[0])) < 1.0:
            conflict = (f"the copies disagree ({pair}; an output folder used again?) and were "
                        "written at the same time: the most advanced one was read")
        else:
            files.sort(key=_mtime, reverse=True)
            conflict = (f"the copies disagree ({pair}; an output folder used again?): the one "
                        "written last was read")
    problems: list[FileProblem] = []
    last_error: ReadError | None = None
    for path in files:
        try:
            state = _load(path)
        except ReadError as exc:
            problems.append(FileProblem(str(path), str(exc)))
            last_error = exc
            continue
        frame, skipped = _points(state)
        if skipped:
            problems.append(
                FileProblem(str(path), f"{skipped} log_history entries without a usable step "
                            "(a whole number in int64) skipped")
            )
        notes = [conflict] if conflict else []
        if len(source.files) > 1 and not conflict:
            notes.append(
                f"read {path} (global_step {state.get('global_step')}), the most advanced of "
                f"{len(source.files)} trainer_state.json copies"
            )
        return [RawRun(points=frame, problems=problems, notes=notes, files=[path],
                       interval_means=INTERVAL_MEANS)]
    if len(files) == 1 and last_error is not None:
        raise last_error
    raise ReadError(
        "no trainer_state.json copy could be read: "
        + "; ".join(f"{p.file}: {p.message}" for p in problems)
    )
