"""What MLflow's two stores share: metric points keyed by run, name and step, stamped when logged
(the order they were logged in), and the step 0 that ``log_metric(key, value)`` gives every
point logged without one."""

from __future__ import annotations

import polars as pl


def in_call_order(points: pl.DataFrame) -> pl.DataFrame:
    """``points`` (``step``, ``tag``, ``value``, ``wall_time``, as stored) in the order they were
    logged: by time stamp, then step, then as stored. MLflow stamps a point when it is logged,
    but its asynchronous logging (``log_metrics(..., synchronous=False)``, what the HF Trainer's
    MLflow callback uses) stores them out of order: read as stored, each step that went back
    would be a resume that rewound it. A resume's points come later in time, as they should."""
    return points.with_row_index("_order").sort(["wall_time", "step", "_order"],
                                                nulls_last=True).drop("_order")


#: A key whose points average this many or more per step, its steps never going back, was
#: logged with a step that is no step (the epoch, for per-batch values)
PILED = 5


def order_stepless(points: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """``points`` (``step``, ``tag``, ``value``, ``wall_time``, in the order logged) with the
    tags logged without a step (all their points at one step, MLflow's 0 for a point logged
    without one) or with a step that is no step (:data:`PILED` points or more per step, never
    going back: ``step=epoch`` for per-batch values) stepped 0, 1, 2, ... in that order, where
    every tag of the run is such a tag; and notes naming them. Read as logged, a loss logged so
    is one point per step, the rest rewritten. Beside keys with steps of their own, their
    points cannot be placed on those steps: they are left as logged (the last of each step
    kept), and the note says so."""
    if points.height == 0:
        return points, []
    by_tag = points.group_by("tag").agg(
        pl.len().alias("n"), pl.col("step").n_unique().alias("k"),
        (pl.col("step").diff().min().fill_null(0) >= 0).alias("forward"))
    by_tag = by_tag.filter(pl.col("n") > 1).with_columns(
        (pl.col("k") == 1).alias("stepless"),
        ((pl.col("k") > 1) & (pl.col("n") >= PILED * pl.col("k")) & pl.col("forward"))
        .alias("piled"))
    odd = by_tag.filter(pl.col("stepless") | pl.col("piled")).sort("tag")
    if odd.height == 0:
        return points, []

    def shown(rows: pl.DataFrame) -> str:
        names = rows["tag"].to_list()
        return ", ".join(f"'{t}'" for t in names[:5]) + (" ..." if len(names) > 5 else "")

    stepless, piled = odd.filter(pl.col("stepless")), odd.filter(pl.col("piled"))
    what = [f"{shown(stepless)}: logged without a step (MLflow puts every such point at step 0)"
            if stepless.height else "",
            f"{shown(piled)}: logged with a step that repeats ({int(piled['n'][0]):,} points on "
            f"{int(piled['k'][0]):,} steps: the epoch?)" if piled.height else ""]
    what = [w for w in what if w]
    names = odd["tag"].to_list()
    if odd.height < by_tag.height:  # (the rest left out here: no resume to tell of)
        last = pl.struct("tag", "step").is_last_distinct()
        return points.filter(~pl.col("tag").is_in(names) | last), [
            f"{w} beside keys logged with steps: its points cannot be placed on those steps, "
            "so only the last one of each step is read" for w in what]
    ordinal = pl.int_range(pl.len(), dtype=pl.Int64).over("tag")
    points = points.with_columns(
        pl.when(pl.col("tag").is_in(names)).then(ordinal).otherwise(pl.col("step"))
        .alias("step"))
    return points, [f"{w}: read in the order logged, as steps 0, 1, 2, ..." for w in what]


def run_note(run_name: str | None, experiment: str | None, deleted: bool,
             run_id: str | None = None) -> str | None:
    """The note that names an MLflow run (runs are named by their path or database)."""
    parts = [f"'{run_name}'" if run_name else "", f"(id {run_id})" if run_id else "",
             f"in experiment '{experiment}'" if experiment else "",
             "(deleted in MLflow: kept until its garbage collection)" if deleted else ""]
    said = " ".join(p for p in parts if p)
    return f"MLflow run {said}" if said else None
