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


def order_stepless(points: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """``points`` (``step``, ``tag``, ``value``, ``wall_time``, in the order logged) with each tag
    whose points all share one step (and are more than one) stepped 0, 1, ... in that order,
    where no tag of the run has steps of its own, and a note naming those tags. MLflow stores a
    point logged without a step at step 0: a loss logged so in a loop would otherwise read as
    one point rewritten again and again. Beside keys logged with steps, such a key's points
    cannot be placed on those steps: they are left at 0 (the later kept), and the note says so.
    """
    if points.height == 0:
        return points, []
    by_tag = points.group_by("tag").agg(pl.len().alias("n"), pl.col("step").n_unique().alias("k"))
    stepless = sorted(by_tag.filter((pl.col("n") > 1) & (pl.col("k") == 1))["tag"].to_list())
    if not stepless:
        return points, []
    shown = ", ".join(f"'{t}'" for t in stepless[:5]) + (" ..." if len(stepless) > 5 else "")
    if (by_tag["k"] > 1).any():
        return points, [f"{shown}: logged without a step (MLflow puts every such point at step "
                        "0) beside keys logged with steps: its points cannot be placed on those "
                        "steps, so only the last one logged is read"]
    ordinal = pl.int_range(pl.len(), dtype=pl.Int64).over("tag")
    points = points.with_columns(
        pl.when(pl.col("tag").is_in(stepless)).then(ordinal).otherwise(pl.col("step"))
        .alias("step"))
    return points, [f"{shown}: logged without a step (MLflow puts every such point at step 0): "
                    "read in the order logged, as steps 0, 1, 2, ..."]


def run_note(run_name: str | None, experiment: str | None, deleted: bool,
             run_id: str | None = None) -> str | None:
    """The note that names an MLflow run (runs are named by their path or database)."""
    parts = [f"'{run_name}'" if run_name else "", f"(id {run_id})" if run_id else "",
             f"in experiment '{experiment}'" if experiment else "",
             "(deleted in MLflow: kept until its garbage collection)" if deleted else ""]
    said = " ".join(p for p in parts if p)
    return f"MLflow run {said}" if said else None
