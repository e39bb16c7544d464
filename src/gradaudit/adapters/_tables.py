"""Shared logic of the table adapters (Parquet, CSV, JSON): layout, step column, run split.

A table comes in one of three layouts:

- **long**: one row per point, columns ``step`` + ``tag`` (or ``metric``/``name``/``key``/
  ``variable``, pandas ``melt``'s) + ``value``, optionally a run column and
  ``wall_time``/``timestamp``; step, tag, value and run are found ignoring case
  (``Step,Metric,Value``);
- **wide**: a step column plus one numeric column per metric (a null cell = not logged); one
  whose only metric is named ``value`` and holds several points at a step, told apart by a
  text column, is refused: a long table whose tag column has an unknown name;
- **history**: a W&B ``run.history()``/``run.scan_history()`` table: a wide table with ``_step``,
  ``_runtime``, ``_timestamp``. A logged trainer step (``train/global_step``,
  ``trainer/global_step``) is preferred over ``_step``, which only counts log calls.

A run column (``run``, ``run_name``, ``run_id``; ``name`` when the tags live elsewhere) splits the
table into several runs, named ``file#run``. Points keep the row order of the file (write order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from gradaudit.adapters.base import RawRun
from gradaudit.errors import ReadError
from gradaudit.series import FileProblem

#: Accepted step columns, in order of preference (``epoch`` is not a step).
STEP_NAMES: tuple[str, ...] = (
    "step",
    "global_step",
    "train/global_step",
    "trainer/global_step",
    "_step",
    "iteration",
    "iter",
    "Step",
)
#: In a W&B history table a step the trainer logged beats ``_step`` (a count of log calls).
HISTORY_STEP_NAMES: tuple[str, ...] = (
    "train/global_step",
    "trainer/global_step",
    "global_step",
    "step",
    "iteration",
    "iter",
    "Step",
    "_step",
)
# (pandas' melt writes "variable"; before "name", which beside it names the run)
TAG_NAMES: tuple[str, ...] = ("tag", "metric", "variable", "name", "key")
VALUE_NAMES: tuple[str, ...] = ("value",)
RUN_NAMES: tuple[str, ...] = ("run", "run_name", "run_id", "dir_name", "name")
WALL_NAMES: tuple[str, ...] = ("wall_time", "walltime", "_timestamp", "timestamp")
#: Bookkeeping columns of W&B history tables that are no metric.
HISTORY_ONLY: tuple[str, ...] = ("_step", "_runtime", "_timestamp")
#: ``run.history()`` returns this many sampled rows by default.
WANDB_HISTORY_SAMPLES = 500


def is_numeric(dtype: pl.DataType) -> bool:
    """Whether a column of this type holds numbers (booleans and strings do not)."""
    return dtype.is_numeric()


@dataclass
class Layout:
    """How a table maps onto points."""

    kind: str  # "long" | "wide" | "history"
    step: str
    metrics: list[str] = field(default_factory=list)  # wide/history
    tag: str | None = None  # long
    value: str | None = None  # long
    run: str | None = None
    wall: str | None = None


def _first(names: tuple[str, ...], columns: list[str]) -> str | None:
    present = set(columns)
    for name in names:
        if name in present:
            return name
    return None


def _first_ci(names: tuple[str, ...], columns: list[str]) -> str | None:
    exact = _first(names, columns)
    if exact is not None:
        return exact
    lower = {c.lower(): c for c in reversed(columns)}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def no_step_message(columns: list[str]) -> str:
    """The error for a table without any step column."""
    shown = ", ".join(repr(c) for c in columns[:20]) + (" ..." if len(columns) > 20 else "")
    return (
        f"no step column found; columns are: {shown or '(none)'}. Accepted step columns: "
        + ", ".join(STEP_NAMES)
        + " (epoch is not a step)"
    )


def numeric_text(sample: pl.DataFrame, empty: bool) -> set[str]:
    """Text columns of ``sample`` that hold mostly numbers (a few garbled cells become "not
    logged", the column stays a metric); with ``empty``, also those that hold nothing yet."""
    out: set[str] = set()
    for name, dtype in sample.schema.items():
        if dtype == pl.Null:
            if empty:
                out.add(name)
            continue
        if dtype != pl.String:
            continue
        text = sample.get_column(name).str.strip_chars()
        text = text.filter(text.is_not_null() & (text != ""))
        if text.len() == 0:
            if empty:
                out.add(name)
        elif 2 * text.cast(pl.Float64, strict=False).null_count() < text.len():
            out.add(name)
    return out


def detect_layout(schema: dict[str, pl.DataType], numeric_text: set[str] | None = None) -> Layout:
    """Decide the layout of a table from its column names and types.

    ``numeric_text`` names string columns known to hold numbers written as text (a CSV column
    whose first cells read ``nan``); they count as numeric metrics.
    """
    numeric_text = numeric_text or set()
    columns = list(schema)
    history = "_step" in schema and ("_runtime" in schema or "_timestamp" in schema)
    step = _first_ci(HISTORY_STEP_NAMES if history else STEP_NAMES, columns)
    if step is None:
        raise ReadError(no_step_message(columns))
    wall = _first(WALL_NAMES, columns)
    if wall == step:
        wall = None
    value = _first_ci(VALUE_NAMES, [c for c in columns if c != step])
    tag = _first_ci(TAG_NAMES, [c for c in columns if c not in (step, value)])
    if value is not None and tag is not None and not is_numeric(schema[tag]):
        # (a tag name left over names the runs: "key" beside pandas' melt's "variable")
        run = _first_ci(RUN_NAMES + TAG_NAMES, [c for c in columns
                                               if c not in (step, value, tag, wall)])
        return Layout("long", step, tag=tag, value=value, run=run, wall=wall)
    run = None
    for name in RUN_NAMES:
        if name in schema and name != step and schema[name] in (pl.String, pl.Categorical):
            run = name
            break
    excluded = {step, run, wall, *STEP_NAMES, *HISTORY_STEP_NAMES}
    if history:
        excluded.update(HISTORY_ONLY)
    metrics = [
        c
        for c, dt in schema.items()
        if c not in excluded and not _is_index(c) and (is_numeric(dt) or c in numeric_text)
    ]
    return Layout("history" if history else "wide", step, metrics=metrics, run=run, wall=wall)


def _is_index(name: str) -> bool:
    """A row-number column pandas writes (``""``, ``Unnamed: 0``, ``index``, ...)."""
    return name.strip() in ("", "index", "__index_level_0__") or name.startswith("Unnamed:")


def _float(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.String:
        return col.str.strip_chars().cast(pl.Float64, strict=False)
    return col.cast(pl.Float64, strict=False)


def _wall_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return (col.dt.epoch("us").cast(pl.Float64) / 1e6).alias("wall_time")
    if is_numeric(dtype):
        return col.cast(pl.Float64).alias("wall_time")
    if dtype == pl.String:
        return col.str.strip_chars().cast(pl.Float64, strict=False).alias("wall_time")
    return pl.lit(None, dtype=pl.Float64).alias("wall_time")


def _step_column(df: pl.DataFrame, name: str, file: str,
                 problems: list[FileProblem]) -> tuple[pl.Series, int]:
    """The step column as Int64, and how many of its nulls are non-integer steps already noted
    in ``problems``; rows without a usable step become null."""
    raw = df.get_column(name)
    if raw.dtype == pl.String:
        raw = raw.str.strip_chars().cast(pl.Float64, strict=False)
    elif not is_numeric(raw.dtype):
        raise ReadError(f"step column {name!r} holds {raw.dtype} values, not numbers")
    if isinstance(raw.dtype, pl.Decimal):  # (cast to Int64 it would drop any fraction)
        raw = raw.cast(pl.Float64)
    bad = 0
    if raw.dtype.is_float():
        finite = raw.is_finite().fill_null(False)
        whole = (raw == raw.floor()).fill_null(False) & finite
        bad = int((raw.is_not_null() & ~whole).sum())
        if bad and bad == int(raw.is_not_null().sum()):
            raise ReadError(f"step column {name!r} holds no whole numbers (is it an epoch?)")
        if bad:
            problems.append(
                FileProblem(file, f"{bad} row(s) with a non-integer step in {name!r} skipped")
            )
        raw = pl.when(whole).then(raw).otherwise(None)
        raw = pl.select(raw).to_series()
    step = raw.cast(pl.Int64, strict=False).alias("step")
    if step.null_count() == step.len() and step.len() > 0:
        raise ReadError(f"step column {name!r} holds no numbers")
    return step, bad


def _looks_sampled(steps: np.ndarray) -> bool:
    """A history table of <= 500 rows whose ``_step`` jumps irregularly: ``run.history()``."""
    if steps.size < 20 or steps.size > WANDB_HISTORY_SAMPLES:
        return False
    diffs = np.diff(np.sort(steps))
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        return False
    return bool(diffs.max() > 1 and np.unique(diffs).size > 1)


def sampled_note(n_rows: int) -> str:
    """The note for a history table that looks like ``run.history()``'s default sample."""
    return (
        f"this W&B history table has {n_rows} rows with irregular gaps in _step: it looks like "
        "run.history()'s default sample of 500 rows, so spikes between the sampled rows may be "
        "lost; export every row with run.scan_history() instead"
    )


def table_runs(
    lf: pl.LazyFrame,
    file: Path,
    *,
    numeric_text: set[str] | None = None,
    problems: list[FileProblem] | None = None,
) -> list[RawRun]:
    """Turn one table (any layout) into raw runs, one per value of its run column."""
    problems = list(problems or [])
    name = file.name
    schema = dict(lf.collect_schema())
    if not schema:
        raise ReadError("the table has no columns")
    layout = detect_layout(schema, numeric_text)
    keep = [layout.step]
    for c in (layout.tag, layout.value, layout.run, layout.wall):
        if c is not None and c not in keep:
            keep.append(c)
    if layout.kind == "history" and layout.step != "_step":
        keep.append("_step")
    metrics = set(layout.metrics)  # (a set: a wide table may hold 10^5 columns)
    index_cols = set(keep)
    keep += [m for m in layout.metrics if m not in index_cols]
    # text columns beside one metric named "value": the tag column of a long table under
    # another name? (a metric of its own name beside a host or date column is a wide table,
    # its repeated steps a resume)
    texts = [c for c, dt in schema.items() if c not in keep and not _is_index(c)
             and dt in (pl.String, pl.Categorical)] \
        if layout.kind == "wide" and len(layout.metrics) == 1 \
        and layout.metrics[0].lower() in VALUE_NAMES else []
    keep += texts
    exprs: list[pl.Expr] = []
    for c in keep:
        if c in metrics or c == layout.value:
            exprs.append(_float(c, schema[c]))
        else:
            exprs.append(pl.col(c))
    df = lf.select(exprs).collect()
    if df.height == 0:
        raise ReadError("the table has a header but no rows")
    if layout.kind != "long" and not layout.metrics:
        raise ReadError(
            f"no numeric metric columns beside the step column {layout.step!r}; columns are: "
            + ", ".join(repr(c) for c in list(schema)[:20])
        )
    if texts:
        why = _unnamed_tag_column(df, layout, texts)
        if why is not None:
            raise ReadError(why)
    step, noted = _step_column(df, layout.step, name, problems)
    index: list[pl.Series] = [step]
    if layout.wall is not None:
        index.append(df.select(_wall_expr(layout.wall, schema[layout.wall])).to_series())
    if layout.run is not None:
        index.append(df.get_column(layout.run).cast(pl.String).alias("__run"))
    if layout.kind == "long":
        body = [
            df.get_column(layout.tag).cast(pl.String).alias("tag"),  # type: ignore[arg-type]
            df.get_column(layout.value).alias("value"),  # type: ignore[arg-type]
        ]
        frame = pl.DataFrame(index + body)
        long = frame.lazy().filter(pl.col("value").is_not_null() & pl.col("tag").is_not_null())
    else:
        # a metric named like a column of the long frame ("value", "tag", "__run", the step's)
        # is unpivoted under a stand-in name and given its own back
        taken = {s.name for s in index} | {"tag", "value"}
        alias = {m: (f"\x00metric {i}" if m in taken else m)
                 for i, m in enumerate(layout.metrics)}
        frame = pl.DataFrame(index + [df.get_column(m).alias(alias[m]) for m in layout.metrics])
        long = (
            frame.lazy()
            .unpivot(
                on=list(alias.values()),
                index=[s.name for s in index],
                variable_name="tag",
                value_name="value",
            )
            .filter(pl.col("value").is_not_null())
        )
        back = {a: m for m, a in alias.items() if a != m}
        if back:
            long = long.with_columns(pl.col("tag").replace(back))
    n_null = step.null_count() - noted  # (the non-integer steps are noted already)
    if n_null:
        problems.append(
            FileProblem(name, f"{n_null} row(s) without a usable {layout.step!r} value skipped")
        )
    long = long.filter(pl.col("step").is_not_null())
    order_note: list[str] = []
    if layout.run is None:  # with a run column, each run is judged on its own (below)
        tags = [df.get_column(layout.tag)] if layout.tag is not None else []
        order_note = _step_order(pl.DataFrame([step.alias("step"), *tags]), layout.tag)
        if order_note:
            long = long.sort("step", maintain_order=True)
    sampled_steps = df.get_column("_step") if layout.kind == "history" else None
    if layout.run is None:
        notes = []
        if sampled_steps is not None and _looks_sampled(_ints(sampled_steps)):
            notes.append(sampled_note(df.height))
        return [RawRun(points=long, problems=problems, notes=notes + order_note)]
    runs_col = index[-1]
    out: list[RawRun] = []
    collected = long.collect()
    parts = collected.partition_by("__run", maintain_order=True, as_dict=True)
    for key, part in parts.items():
        run_name = key[0] if isinstance(key, tuple) else key
        notes = []
        if sampled_steps is not None:
            mask = (runs_col == run_name) if run_name is not None else runs_col.is_null()
            sub = sampled_steps.filter(mask.fill_null(False) if run_name is not None else mask)
            if _looks_sampled(_ints(sub)):
                notes.append(sampled_note(sub.len()))
        points = part.drop("__run")
        order_note = _step_order(points, "tag")
        if order_note:
            points = points.sort("step", maintain_order=True)
        out.append(
            RawRun(
                points=points,
                suffix=str(run_name) if run_name is not None else "(no run)",
                problems=list(problems),
                notes=notes + order_note,
            )
        )
    if not out:
        out.append(RawRun(points=collected.drop("__run"), problems=problems))
    return out


def _unnamed_tag_column(df: pl.DataFrame, layout: Layout, texts: list[str]) -> str | None:
    """Why a "wide" table is a long one, where its one metric holds several points at a step
    that a text column of few values tells apart (a tag column named otherwise); else None.
    Read as wide, its metrics would merge into one series, each step's last point winning."""
    key = [layout.step] + ([layout.run] if layout.run is not None else [])
    rows = df.height
    steps = int(df.select(pl.struct(key).n_unique()).item())
    if steps == rows:
        return None
    for c in texts:
        col = df.get_column(c).cast(pl.String)
        kinds = col.n_unique()
        if kinds < 2 or kinds > rows // 2:  # one value, or one per row (a date): no tags
            continue
        told_apart = int(df.select(pl.struct([*key, c]).n_unique()).item()) - steps
        if 2 * told_apart >= rows - steps:
            shown = ", ".join(repr(v) for v in col.drop_nulls().unique(maintain_order=True)
                              .head(3).to_list()) + (", ..." if kinds > 3 else "")
            return (f"the one metric column {layout.metrics[0]!r} holds several points at a "
                    f"step, told apart by the text column {c!r} ({shown}): a long table "
                    "(a row per point) whose columns are not named as gradaudit knows them; "
                    f"name them {layout.step}, tag (or {', '.join(TAG_NAMES[1:])}) and value "
                    f"(a column naming runs: {', '.join(RUN_NAMES[:3])})")
    return None


def _step_order(rows: pl.DataFrame, tag: str | None) -> list[str]:
    """Rows are write order: a resumed run appended to a table rewinds its step now and then.
    Where a tag's steps go back at least 10 times and in a tenth of the rows, the table was
    exported in another order; its points are then taken sorted by step (the note says so)."""
    if rows.height < 2:
        return []
    went_back = pl.col("step").diff() < 0
    if tag is not None:
        went_back = went_back.over(tag)
    n = int(rows.select(went_back.sum()).item())
    if n <= max(10, rows.height // 10):
        return []
    return [f"the rows are not in step order ({n} step(s) go back): read sorted by step - a "
            "table in another order than it was written cannot show resumed runs"]


def _ints(s: pl.Series) -> np.ndarray:
    v = s.cast(pl.Float64, strict=False).drop_nulls().drop_nans().to_numpy()
    return v.astype(np.int64) if v.size else np.empty(0, np.int64)
