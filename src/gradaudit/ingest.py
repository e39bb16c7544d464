"""Read discovered sources into RunSeries, collecting problems instead of aborting."""

from __future__ import annotations

import os
from pathlib import Path

from gradaudit.adapters import REGISTRY, csv_table, json_table, parquet, wandb_csv
from gradaudit.adapters.base import RawRun, Source
from gradaudit.errors import UNEXPECTED, NotATrainingLog, ReadError
from gradaudit.model import InputError
from gradaudit.series import RunSeries, canonical_frame
from gradaudit.tags import choose_tags, interval_mean_tags
from gradaudit.text import printable


def _display(path: Path) -> str:
    return os.fspath(path)


def source_label(source: Source) -> str:
    """How errors name a source: its file when it is one file, else its run name."""
    return source.name if len(source.files) != 1 else _display(source.files[0])


def build_series(
    source: Source, raw: RawRun, grad_tag: str | None = None, loss_tag: str | None = None
) -> RunSeries:
    """Turn one adapter result into a RunSeries: resolve duplicates, choose the tags."""
    frame, notes = canonical_frame(raw.points)
    name = source.name if raw.suffix is None else f"{source.name}#{raw.suffix}"
    files = raw.files if raw.files is not None else list(source.files)
    series = RunSeries(
        name=name,
        format=source.format,
        files=[_display(f) for f in files],
        frame=frame,
        problems=list(raw.problems),
        notes=list(source.notes) + list(raw.notes) + notes,
        interval_means=raw.interval_means,
    )
    tags = series.tags()
    known = interval_mean_tags(tags) - raw.interval_means
    if known:
        series.interval_means |= known
        series.notes.append(
            f"{', '.join(sorted(known))}: read as a mean over each logging interval, as the "
            "framework these tag names come from logs it")
    choice = choose_tags(tags, grad_tag=grad_tag, loss_tag=loss_tag)
    series.grad_norm_tag, series.loss_tag, series.lr_tag = choice.grad_norm, choice.loss, choice.lr
    series.notes.extend(choice.notes)
    return series


#: Readers that hand a path to polars, which cannot open one that is not valid UTF-8.
POLARS_READERS = frozenset({csv_table.FORMAT, json_table.FORMAT, parquet.FORMAT,
                            wandb_csv.FORMAT})


def read_source(
    source: Source, grad_tag: str | None = None, loss_tag: str | None = None
) -> tuple[list[RunSeries], list[InputError]]:
    """Read one source. Never raises for bad input: problems come back as InputErrors."""
    adapter = REGISTRY[source.format]
    where = source_label(source)
    try:
        raws = adapter.read(source)
    except NotATrainingLog:
        return [], []
    except ReadError as exc:
        return [], [InputError(where, str(exc))]
    except MemoryError:
        return [], [InputError(where, "out of memory while reading this input")]
    except UNEXPECTED as exc:  # one bad file must never stop a batch
        if source.format in POLARS_READERS and any(printable(str(f)) != str(f)
                                                   for f in source.files):
            return [], [InputError(where, (
                f"its path is not valid UTF-8 ({printable(str(source.files[0]))}), and the "
                f"{source.format} reader (polars) cannot open such a path: rename it to read "
                f"it ({exc!r})"))]
        return [], [InputError(where, f"unexpected error reading this input: {exc!r}")]
    runs: list[RunSeries] = []
    errors: list[InputError] = []
    for raw in raws:
        try:
            series = build_series(source, raw, grad_tag, loss_tag)
        except UNEXPECTED as exc:
            errors.append(InputError(where, f"could not build the run's series: {exc!r}"))
            continue
        if series.frame.height == 0:
            reasons = "; ".join(f"{p.file}: {p.message}" for p in series.problems)
            errors.append(InputError(series.name, reasons or "no scalar points in this input"))
        else:
            runs.append(series)
    if not runs and not errors:
        errors.append(InputError(where, "no scalar series found in this input"))
    return runs, errors
