"""Read discovered sources into RunSeries, collecting problems instead of aborting."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from gradaudit.adapters import REGISTRY, csv_table, json_table, parquet, wandb_csv
from gradaudit.adapters.base import RawRun, Source
from gradaudit.errors import UNEXPECTED, NotATrainingLog, ReadError, clip_message
from gradaudit.model import InputError
from gradaudit.resumes import cut_short_passes
from gradaudit.series import FileProblem, RunSeries, canonical_frame
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
    counts = series.tag_counts()
    tags = list(counts)
    known = interval_mean_tags(tags) - raw.interval_means
    if known:
        series.interval_means |= known
        series.notes.append(
            f"{', '.join(sorted(known))}: read as a mean over each logging interval, as the "
            "framework these tag names come from logs it")
    choice = choose_tags(tags, grad_tag=grad_tag, loss_tag=loss_tag, counts=counts)
    series.grad_norm_tag, series.loss_tag, series.lr_tag = choice.grad_norm, choice.loss, choice.lr
    series.notes.extend(choice.notes)
    return series


#: Readers that hand a path to polars, which cannot open one that is not valid UTF-8 and reads
#: one holding a glob character as a pattern (``seed[1].csv`` would read ``seed1.csv``).
POLARS_READERS = frozenset({csv_table.FORMAT, json_table.FORMAT, parquet.FORMAT,
                            wandb_csv.FORMAT})


GLOB_CHARACTERS = frozenset("*?[]{}")


def _not_plain(path: Path) -> bool:
    """Whether polars could not be handed ``path`` as it is (:data:`POLARS_READERS`)."""
    text = str(path)
    return printable(text) != text or not GLOB_CHARACTERS.isdisjoint(text)


@contextlib.contextmanager
def _plain_paths(source: Source) -> Iterator[tuple[Source, dict[str, str]]]:
    """``source`` with files polars can open as themselves: where a path is not valid UTF-8
    (an odd byte in a folder name; polars takes only UTF-8 paths) or holds a glob character
    (a ``[`` in a Hydra sweep's folder; a reader without polars' ``glob=False``), a symlink
    with a plain name in a temporary folder stands in for it while the source is read. Also
    the map from those stand-ins back to the real paths, for what the run says about its
    files."""
    if source.format not in POLARS_READERS or os.name != "posix" or \
            not any(_not_plain(f) for f in source.files):
        yield source, {}
        return
    with tempfile.TemporaryDirectory(prefix="gradaudit-") as tmp:
        files, back = [], {}
        for i, f in enumerate(source.files):
            if _not_plain(f):
                link = Path(tmp) / f"{i}{''.join(c for c in f.suffix if c.isalnum() or c == '.')}"
                os.symlink(os.fsencode(os.path.abspath(f)), os.fsencode(link))  # (from tmp)
                files.append(link)
                back[str(link)] = str(f)
            else:
                files.append(f)
        yield replace(source, files=tuple(files)), back


def _restore(raw: RawRun, back: dict[str, str]) -> RawRun:
    """``raw`` with the stand-in paths of :func:`_plain_paths` named as the real ones."""
    if not back:
        return raw
    files = None if raw.files is None else [Path(back.get(str(f), str(f))) for f in raw.files]
    problems = [replace(p, file=back.get(p.file, p.file)) for p in raw.problems]
    return replace(raw, files=files, problems=problems)


_SHOWN: set[tuple] = set()  # the warnings read_source showed again (each once per process)


def read_source(
    source: Source, grad_tag: str | None = None, loss_tag: str | None = None
) -> tuple[list[RunSeries], list[InputError]]:
    """Read one source. Never raises for bad input: problems come back as InputErrors (and
    what a reader warned, e.g. polars on a malformed CSV, as the run's problems, not on
    stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _plain_paths(source) as (readable, back):
            runs, errors = _read_source(source, readable, back, grad_tag, loss_tag)
    said = list(dict.fromkeys(clip_message(str(w.message), 300) for w in caught
                              if issubclass(w.category, UserWarning)))
    for w in caught:  # others (a deprecation) are shown once per place, as Python does
        place = (w.category, str(w.message), w.filename, w.lineno)
        if not issubclass(w.category, UserWarning) and place not in _SHOWN:
            _SHOWN.add(place)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if said:
        text = "the reader warned: " + "; ".join(said)
        where = source_label(source)
        runs = [replace(r, problems=[*r.problems, FileProblem(where, text)]) for r in runs]
        errors = [replace(e, message=f"{e.message} ({text})") for e in errors]
    return runs, errors


def _read_source(
    source: Source, readable: Source, back: dict[str, str], grad_tag: str | None,
    loss_tag: str | None
) -> tuple[list[RunSeries], list[InputError]]:
    adapter = REGISTRY[source.format]
    where = source_label(source)
    try:
        raws = [_restore(r, back) for r in adapter.read(readable)]
    except NotATrainingLog:
        return [], []
    except ReadError as exc:
        return [], [InputError(where, str(exc))]
    except MemoryError:
        return [], [InputError(where, "out of memory while reading this input")]
    except UNEXPECTED as exc:  # one bad file must never stop a batch
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
            continue
        runs.append(series)
        try:
            runs.extend(cut_short_passes(raw.points, series))
        except UNEXPECTED as exc:
            series.notes.append(f"the passes a resume cut short could not be compared: {exc!r}")
    if not runs and not errors:
        errors.append(InputError(where, "no scalar series found in this input"))
    return runs, errors
