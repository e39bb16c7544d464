"""RunSeries: the canonical form every adapter reads a run into.

One Polars frame in one schema (``step: Int64, tag: Categorical, value: Float64,
wall_time: Float64``), sorted by tag then step, with duplicate steps resolved the way current
TensorBoard resolves them: within a tag, a point written at step ``s`` removes every point of that
tag written *earlier* with a step ``>= s``. After a resume that rewinds the step, the later write
wins; a step logged twice keeps its last value.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from gradaudit.errors import clip_message

#: how many first points of a run's grad-norm and loss series a :class:`Fingerprint` holds
HEAD_POINTS = 100
#: about how many points of each series a :class:`Fingerprint` samples over the whole run
SAMPLE_POINTS = 128


def sampled(steps: np.ndarray, n: int) -> np.ndarray:
    """Which of ``steps`` (of a series of ``n`` points) a fingerprint samples: those whose
    hashed step is a multiple of the power of two that leaves about ``SAMPLE_POINTS`` of them.
    A step sampled in a longer run's fingerprint is sampled in a shorter one's too, so two
    runs always share the sampled steps of the coarser within the steps both logged."""
    every = 1 << max(0, int(np.ceil(np.log2(max(n, 1) / SAMPLE_POINTS))))
    hashed = steps.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (hashed >> np.uint64(40)) % np.uint64(every) == 0


@dataclass(frozen=True)
class Fingerprint:
    """The first ``HEAD_POINTS`` (steps, values) of a run's grad-norm and loss series, and a
    sample of each over the whole run (:func:`sampled`), values as float32:
    ``(grad steps, grad values, loss steps, loss values)`` each."""

    head: tuple[np.ndarray, ...]
    sample: tuple[np.ndarray, ...]

#: steps further from 0 are not exact in float64, and no training gets there: a point beyond is
#: a stray (a corrupt record), left out of a run's audit and of its resumes' passes
MAX_STEP = 2**53

SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64(),
    "tag": pl.Categorical(),
    "value": pl.Float64(),
    "wall_time": pl.Float64(),
}


def empty_frame() -> pl.DataFrame:
    """A frame with the canonical schema and no rows."""
    return pl.DataFrame(schema=SCHEMA)


@dataclass
class FileProblem:
    """Something wrong with one input file of a run; the run goes on without it (or its tail)."""

    file: str
    message: str

    def __post_init__(self) -> None:
        self.file, self.message = clip_message(self.file, 4096), clip_message(self.message)

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "message": self.message}


@dataclass
class RunSeries:
    """All scalar series of one run, in the canonical schema, plus the chosen tags.

    ``frame`` holds every point that survived duplicate resolution, sorted by ``(tag, step)``.
    ``grad_norm_tag``/``loss_tag``/``lr_tag`` are chosen by :func:`gradaudit.tags.choose_tags`.
    ``problems`` are per-file read problems (the run still carries what could be read);
    ``notes`` are facts worth reporting (resumed step ranges, a sampled history table, ...).
    ``interval_means``: tags logged as means over the logging interval (from the adapter).
    """

    name: str
    format: str
    files: list[str]
    frame: pl.DataFrame
    grad_norm_tag: str | None = None
    loss_tag: str | None = None
    lr_tag: str | None = None
    problems: list[FileProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interval_means: frozenset[str] = frozenset()

    def tag_counts(self) -> dict[str, int]:
        """Number of points per tag, tags in name order."""
        if self.frame.height == 0:
            return {}
        counts = self.frame.group_by("tag").len().with_columns(pl.col("tag").cast(pl.String))
        return dict(sorted(zip(counts["tag"].to_list(), counts["len"].to_list(), strict=True)))

    def tags(self) -> list[str]:
        """The tag names of this run, sorted."""
        return list(self.tag_counts())

    def _rows(self, tag: str) -> pl.DataFrame:
        """The rows of one tag. A categorical column is compared directly (no cast of the
        column to strings: ~10x faster at 10^6 points)."""
        try:
            return self.frame.filter(pl.col("tag") == tag)
        except pl.exceptions.PolarsError:  # e.g. an Enum without that category
            return self.frame.filter(pl.col("tag").cast(pl.String) == tag)

    def series(self, tag: str | None) -> tuple[np.ndarray, np.ndarray]:
        """``(steps int64, values float64)`` of one tag, sorted by step; empty if absent."""
        if tag is None or self.frame.height == 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        sub = self._rows(tag)
        return sub["step"].to_numpy().astype(np.int64, copy=False), sub[
            "value"
        ].to_numpy().astype(np.float64, copy=False)

    def digest(self, min_points: int = 25) -> str | None:
        """A digest of the chosen grad-norm and loss series (steps and values). Two runs with
        the same digest are one training logged twice (Lightning's TensorBoard and CSV
        loggers, a copied folder) or an exact re-run. None where the series carry too little
        to tell trainings apart: fewer than ``min_points`` finite values, or fewer than 3
        distinct ones (runs that diverged at once, a single logged point)."""
        chosen = self._chosen(min_points)
        if chosen is None:
            return None
        h = hashlib.blake2b(digest_size=16)
        for steps, values in chosen:
            h.update(struct.pack("<q", steps.size))
            h.update(np.ascontiguousarray(steps).tobytes())
            h.update(np.ascontiguousarray(values).tobytes())
        return h.hexdigest()

    def _chosen(self, min_points: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The chosen grad-norm and loss series, or None where they carry too little to tell
        trainings apart (:meth:`digest`)."""
        chosen = [self.series(tag) for tag in (self.grad_norm_tag, self.loss_tag)]
        values = np.concatenate([v[np.isfinite(v)] for _, v in chosen])
        if values.size < min_points or np.unique(values[::max(1, values.size // 1000)]).size < 3:
            return None
        return chosen

    def fingerprint(self, min_points: int = 25) -> Fingerprint | None:
        """What tells this run's training from others within rounding
        (:func:`gradaudit.model.close_series`); None where :meth:`digest` is: too little to
        tell trainings apart."""
        chosen = self._chosen(min_points)
        if chosen is None:
            return None
        head: list[np.ndarray] = []
        sample: list[np.ndarray] = []
        for steps, values in chosen:
            head += [steps[:HEAD_POINTS].copy(), values[:HEAD_POINTS].astype(np.float32)]
            keep = sampled(steps, steps.size)
            sample += [steps[keep], values[keep].astype(np.float32)]
        return Fingerprint(tuple(head), tuple(sample))

    def wall_times(self, tag: str | None) -> np.ndarray:
        """Wall times (seconds since the epoch, NaN where unknown) of one tag, by step."""
        if tag is None or self.frame.height == 0:
            return np.empty(0, np.float64)
        sub = self._rows(tag)
        return sub["wall_time"].fill_null(float("nan")).to_numpy().astype(np.float64, copy=False)

    def step_summary(self) -> tuple[int, int | None, int | None]:
        """``(n_steps, first_step, last_step)`` of the grad-norm series, else of the loss series."""
        tag = self.grad_norm_tag or self.loss_tag
        steps, _ = self.series(tag)
        if steps.size == 0:
            return 0, None, None
        # Steps are sorted (canonical_frame), so distinct steps are the changes plus one.
        return int(np.count_nonzero(np.diff(steps))) + 1, int(steps[0]), int(steps[-1])

    def summary_dict(self) -> dict[str, Any]:
        """The run's entry in ``gradaudit inspect --format json``."""
        n_steps, first, last = self.step_summary()
        return {
            "run": self.name,
            "format": self.format,
            "files": list(self.files),
            "tags": self.tag_counts(),
            "grad_norm_tag": self.grad_norm_tag,
            "loss_tag": self.loss_tag,
            "lr_tag": self.lr_tag,
            "n_steps": n_steps,
            "first_step": first,
            "last_step": last,
            "notes": list(self.notes),
            "errors": [p.to_dict() for p in self.problems],
        }


def _changed(dropped: pl.DataFrame, kept: pl.DataFrame) -> pl.DataFrame:
    """The ``dropped`` points whose later write at the same (tag, step) in ``kept`` holds
    another value, or that no later write replaced at their step (a rewind): a step written
    twice with the same value - Lightning logs ``epoch`` on two rows of one step - is no news.
    Both frames carry the tag as a string (the slow path; the fast path compares in NumPy)."""
    later = kept.join(dropped.select("tag", "step").unique(), on=["tag", "step"], how="semi")
    same = pl.col("value") == pl.col("_later")
    return (
        dropped.select("tag", "step", "value")
        .join(later.select("tag", "step", pl.col("value").alias("_later")),
              on=["tag", "step"], how="left")
        .filter(~(same | (pl.col("value").is_nan() & pl.col("_later").is_nan())).fill_null(False))
    )


def _rewind_notes(changed: pl.DataFrame) -> list[str]:
    """Notes naming, per step range, the tags whose points a later write replaced with another
    value (:func:`_changed`)."""
    if changed.height == 0:
        return []
    per_range = (
        changed.select("tag", "step").group_by("tag")
        .agg(pl.col("step").min().alias("lo"), pl.col("step").max().alias("hi"),
             pl.col("step").n_unique().alias("k"))
        .with_columns(pl.col("tag").cast(pl.String))  # (one string per tag, not per point)
        .group_by("lo", "hi", "k")
        .agg(pl.col("tag").sort())
        .sort("lo", "hi", "k")
    )
    notes: list[str] = []
    for lo_step, hi_step, k, range_tags in per_range.iter_rows():
        shown = ", ".join(repr(t) for t in range_tags[:3])
        more = f" and {len(range_tags) - 3} more" if len(range_tags) > 3 else ""
        where = (f"step {lo_step} was" if lo_step == hi_step
                 else f"steps {lo_step}-{hi_step} were" if k == hi_step - lo_step + 1
                 else f"{k} steps between {lo_step} and {hi_step} were")
        notes.append(
            f"{where} written again later (a resume that rewound the step, or a step"
            f" logged twice): the later write wins for {shown}{more}"
        )
    return notes


def group_order(rank: np.ndarray, n_tags: int) -> np.ndarray | None:
    """Row order grouping rows by ``rank`` (0..n_tags-1), write order kept within a group;
    None when that is already the order. With ``rank`` a tag's place in name order, this is
    the canonical frame's order: an adapter whose points come in that order spares
    :func:`canonical_frame` a reordered copy of the frame."""
    if n_tags == 1 or bool((rank[1:] >= rank[:-1]).all()):
        return None
    if n_tags <= 8:
        return np.concatenate([np.flatnonzero(rank == k) for k in range(n_tags)])
    return np.argsort(rank, kind="stable")


def _canonical_categorical(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str]] | None:
    """:func:`canonical_frame` for a frame whose tag column is Categorical, on the integer
    codes (no string per row); None when the frame does not fit this path."""
    schema = df.schema
    if not isinstance(schema["tag"], pl.Categorical) or not schema["step"].is_integer():
        return None
    if df.height == 0 or df.get_column("step").null_count() or df.get_column("tag").null_count():
        return None
    cols = [
        pl.col("step").cast(pl.Int64),
        pl.col("tag"),
        pl.col("value").cast(pl.Float64),
        pl.col("wall_time").cast(pl.Float64)
        if "wall_time" in schema
        else pl.lit(None, dtype=pl.Float64).alias("wall_time"),
    ]
    df = df.select(cols)
    tag = df.get_column("tag")
    present = tag.unique()
    names = present.cast(pl.String).to_list()
    ids = present.to_physical().to_numpy().astype(np.int64)
    order = sorted(range(len(names)), key=names.__getitem__)  # tags in name order
    rank_of = np.empty(len(names), dtype=np.int64)
    rank_of[order] = np.arange(len(names))
    codes = tag.to_physical().to_numpy()
    dtype = np.uint8 if len(names) <= 1 << 8 else np.uint16 if len(names) <= 1 << 16 else np.int64
    if int(ids.max()) <= 4 * df.height + 1024:
        lut = np.zeros(int(ids.max()) + 1, dtype=dtype)
        lut[ids] = rank_of
        rank = lut[codes]
    else:
        by_id = np.argsort(ids)
        rank = rank_of[by_id][np.searchsorted(ids[by_id], codes)].astype(dtype)
    perm = group_order(rank, len(names))
    step = df.get_column("step").to_numpy()
    if perm is not None:
        step, rank = step[perm], rank[perm]
    # A point survives when every later write of its tag has a larger step. Usually the steps
    # of each tag already increase in write order and all points survive.
    new_group = rank[1:] != rank[:-1]
    rising = step[1:] > step[:-1]
    if bool((rising | new_group).all()):
        keep = None
    else:
        lo, hi = int(step.min()), int(step.max())
        span = hi - lo + 1
        if span * len(names) >= 2**62:
            return None
        key = (step - lo) + rank.astype(np.int64) * span
        later_min = np.minimum.accumulate(key[::-1])[::-1]
        keep = np.ones(step.size, dtype=bool)
        keep[:-1] = key[:-1] < later_min[1:]
    notes: list[str] = []
    if keep is None:
        rows = perm
    else:
        rows = np.flatnonzero(keep) if perm is None else perm[keep]
        gone = np.flatnonzero(~keep) if perm is None else perm[~keep]
        # a rewrite with the same value is no news (_changed): kept keys rise strictly, so each
        # dropped point's later write at its (tag, step) is found by bisection
        kept_key, gone_key = key[keep], key[~keep]
        value = df.get_column("value").to_numpy()
        if perm is not None:
            value = value[perm]
        at = np.minimum(np.searchsorted(kept_key, gone_key), kept_key.size - 1)
        v_gone, v_later = value[~keep], value[keep][at]
        same = (kept_key[at] == gone_key) & ((v_gone == v_later)
                                             | (np.isnan(v_gone) & np.isnan(v_later)))
        notes = _rewind_notes(df.select("tag", "step")[gone[~same]])
    frame = df if rows is None else df[rows]
    return frame, notes


def canonical_frame(raw: pl.DataFrame | pl.LazyFrame) -> tuple[pl.DataFrame, list[str]]:
    """Resolve duplicates and sort a frame of points given **in write order**.

    ``raw`` needs columns ``step`` and ``tag`` and ``value``; ``wall_time`` is optional.
    Returns the canonical frame and notes naming the step ranges a resume replaced.
    """
    if isinstance(raw, pl.LazyFrame):
        raw = raw.collect()
    if {"step", "tag", "value"} <= set(raw.columns):
        df = raw
        if df.schema["tag"] == pl.String:  # one hash per row, then integer codes throughout
            df = df.with_columns(pl.col("tag").cast(pl.Categorical))
        fast = _canonical_categorical(df)
        if fast is not None:
            return fast
    lf = raw.lazy() if isinstance(raw, pl.DataFrame) else raw
    names = lf.collect_schema().names()
    if "wall_time" not in names:
        lf = lf.with_columns(pl.lit(None, dtype=pl.Float64).alias("wall_time"))
    lf = lf.select(
        pl.col("step").cast(pl.Int64),
        pl.col("tag").cast(pl.String),
        pl.col("value").cast(pl.Float64),
        pl.col("wall_time").cast(pl.Float64),
    ).filter(pl.col("step").is_not_null() & pl.col("tag").is_not_null())
    df = lf.collect()
    if df.height == 0:
        return df.with_columns(pl.col("tag").cast(pl.Categorical)), []
    # Group the points by tag (tags in name order), keeping write order within a tag.
    tags = df.get_column("tag").unique().sort()
    rank = df.get_column("tag").replace_strict(
        tags, pl.int_range(tags.len(), eager=True, dtype=pl.Int64)
    )
    df = df.with_columns(rank.alias("_rank")).sort("_rank", maintain_order=True)
    # A point survives when every later write of its tag has a larger step. With the tag rank
    # folded into one key, a single reverse cumulative minimum does it for all tags at once:
    # keys of later tags are larger than any key of an earlier tag.
    lo, hi = df.get_column("step").min(), df.get_column("step").max()
    span = int(hi) - int(lo) + 1
    if span * tags.len() < 2**62:
        key = (pl.col("step") - lo) + pl.col("_rank") * span
        later_min = key.reverse().cum_min().reverse().shift(-1)
        keep = later_min.is_null() | (key < later_min)
    else:
        later_min = pl.col("step").reverse().cum_min().reverse().shift(-1).over("_rank")
        keep = later_min.is_null() | (pl.col("step") < later_min)
    marked = df.with_columns(keep=keep).drop("_rank")
    # Survivors are already sorted by (tag, step): within a tag they strictly increase.
    frame = marked.filter(pl.col("keep")).drop("keep").with_columns(
        pl.col("tag").cast(pl.Categorical)
    )
    return frame, _rewind_notes(_changed(marked.filter(~pl.col("keep")),
                                         marked.filter(pl.col("keep"))))
