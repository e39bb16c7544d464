"""The library API: discover, read, audit, gate. The CLI only parses options and calls these."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from gradaudit.adapters.base import Source
from gradaudit.discover import discover, entry_key, file_key, replaced
from gradaudit.errors import UNEXPECTED, UsageError
from gradaudit.ingest import read_source, source_label
from gradaudit.model import (
    HEAD_RTOL,
    SCHEMA_VERSION,
    InputError,
    RunAudit,
    close_series,
    same_series,
)
from gradaudit.parallel import DEFAULT_TIMEOUT, run_all
from gradaudit.result import AuditResult
from gradaudit.series import RunSeries
from gradaudit.settings import Settings
from gradaudit.tags import choose_tags
from gradaudit.text import listed, printable

PathLike = str | os.PathLike[str]


@dataclass
class Inspection:
    """What ``gradaudit inspect`` shows: the runs read (no analysis) and inputs that failed."""

    runs: list[RunSeries]
    errors: list[InputError]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "runs": [r.summary_dict() for r in self.runs],
            "errors": [e.to_dict() for e in self.errors],
        }

    @property
    def exit_code(self) -> int:
        """2 when nothing at all could be read, else 0."""
        return 2 if not self.runs and self.errors else 0


UNRECOGNISED = ("not a log gradaudit reads (TensorBoard event files, W&B run files or CSV "
                "exports, Parquet/CSV/JSON tables, HF trainer_state.json, HF Trainer stdout "
                "logs with {'loss': ...} lines, Megatron logs with "
                "'iteration N/ M |' lines, fairseq/metaseq logs with '| train_inner |' lines, "
                "MLflow mlruns/ folders and mlflow.db files)")


def _paths(paths: PathLike | Iterable[PathLike]) -> list[str]:
    """``paths`` as a list of strings: one path (a ``str`` or ``os.PathLike``) is a list of one,
    not of its characters (``scan("runs/")`` would otherwise walk ``/``)."""
    if isinstance(paths, str | bytes | os.PathLike):
        paths = [paths]  # type: ignore[list-item]
    out = []
    for p in paths:
        if not isinstance(p, str | os.PathLike):
            raise UsageError(f"a path must be a str or os.PathLike, not {p!r}")
        out.append(os.fspath(p))
    return out


def _sources(paths: PathLike | Iterable[PathLike], workers: int,
             timeout: float) -> tuple[list[Source], list[InputError]]:
    """The sources under ``paths``, and an error for each file named that no reader takes (and
    each input that failed in a worker process while discovery read it: ``workers``,
    ``timeout`` as for the scan)."""
    paths = _paths(paths)
    if not paths:
        raise UsageError("no path given")
    found = discover(paths, workers, timeout)
    if found.missing:
        odd = [p for p in found.missing if os.path.lexists(p)]
        gone = [p for p in found.missing if p not in odd]
        why = ([f"no such file or folder: {', '.join(gone)}"] if gone else []) + (
            [f"not a regular file or folder (a device, a FIFO or a dangling link): "
             f"{', '.join(odd)}"] if odd else [])
        raise UsageError("; ".join(why))
    return found.sources, [InputError(p, UNRECOGNISED) for p in found.unrecognised] + \
        [InputError(p, why) for p, why in found.unreadable] + \
        [InputError(source_label(s), why) for s, why in found.lost]


def _unread(paths: list[str], audits: list[RunAudit], errors: list[InputError]) -> list[str]:
    """The ``paths`` given that could not be read at all: an input under them failed (a file
    named that no reader takes or that is corrupt, a folder whose every input failed) and no
    run came from them. A folder that yielded a run was read, even where a stray file in it was
    not (that file is listed under the errors); one whose files were all read under another
    name given too (a link and its target, a Trainer's copies) or that holds nothing failed
    nothing."""
    def under(names: list[str], root: str) -> bool:
        top = root.rstrip(os.sep) + os.sep
        return any(f == root or f.startswith(top) for f in names)

    # (compared as the reports write them: undecodable bytes of a name as \xNN text)
    files = [printable(os.path.abspath(f)) for a in audits for f in a.files]
    failed = [printable(os.path.abspath(e.path)) for e in errors]
    out = []
    for p in paths:
        n = printable(os.path.abspath(p))
        if under(failed, n) and not under(files, n):
            out.append(p)
    return out


def _input_files(given: list[str], sources: list[Source]) -> dict[tuple, str]:
    """Each regular file given or read, by :func:`~gradaudit.discover.entry_key` and by
    :func:`~gradaudit.discover.file_key` -> its path (``AuditResult.inputs``)."""
    out: dict[tuple, str] = {}
    for f in [*given, *(os.fspath(f) for s in sources for f in s.files)]:
        try:
            st = os.stat(f)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            out.setdefault((st.st_dev, st.st_ino), f)
            if (key := entry_key(f)) is not None:
                out.setdefault(key, f)
    return out


def _under(path: str, roots: set[tuple[int, int]]) -> bool:
    """Whether a folder walk from one of ``roots`` reaches the entry ``path`` through its
    parents (its folder as spelled or resolved), no dot-folder on the way (discovery skips
    those)."""
    head = os.path.dirname(os.fspath(path)) or "."
    # (as spelled, where no ".." could mean another folder after a link)
    spelled = {os.path.abspath(head)} if ".." not in head.split(os.sep) else set()
    for folder in {*spelled, os.path.realpath(head)}:
        hidden = False
        while True:
            if not hidden and file_key(folder) in roots:
                return True
            hidden = hidden or os.path.basename(folder).startswith(".")
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return False


def input_at(paths: PathLike | Iterable[PathLike], path: PathLike) -> str | None:
    """The log a scan of ``paths`` would read at ``path``, as far as is known before the scan:
    a file given, or a file a reader takes under a folder given (the same folder entry, however
    spelled; writing to a link replaces the link, not the file it points to). After the scan,
    :meth:`AuditResult.input_at` knows every file it read."""
    entry, only = replaced(path)
    if entry is None or not os.path.isfile(path):
        return None
    given = _paths(paths)
    for p in given:
        if entry_key(p) == entry or (only is not None and file_key(p) == only):
            return p
    roots = {k for k in map(file_key, given) if k is not None}
    if _under(os.fspath(path), roots) and discover([path]).sources:
        return os.fspath(path)
    return None


def _lost(source: Source, why: str) -> tuple[list[Any], list[InputError]]:
    """A source whose worker process died: no run, and that as its error."""
    return [], [InputError(source_label(source), why)]


@dataclass(frozen=True)
class _ReadJob:
    grad_tag: str | None
    loss_tag: str | None

    def __call__(self, source: Source) -> tuple[list[RunSeries], list[InputError]]:
        return read_source(source, self.grad_tag, self.loss_tag)


@dataclass(frozen=True)
class _ScanJob:
    settings: Settings

    @staticmethod
    def prepare() -> None:
        """Import the engine (numpy, scipy) when a worker starts, not in its first input's
        time (:mod:`gradaudit.parallel`)."""
        import gradaudit.audit  # noqa: F401

    def __call__(self, source: Source) -> tuple[list[RunAudit], list[InputError]]:
        from gradaudit.audit import audit_run as _audit_run

        runs, errors = read_source(source, self.settings.grad_tag, self.settings.loss_tag)
        audits = []
        for run in runs:
            audit = _audit_run(run, self.settings)
            try:
                audit.series_digest, audit.fingerprint = run.digest(), run.fingerprint()
            except UNEXPECTED:  # only a note depends on them
                pass
            audits.append(audit)
        return audits, errors


def _unmatched_globs(audits: list[RunAudit], settings: Settings) -> None:
    """UsageError where ``--grad-tag`` or ``--loss-tag`` chose no tag in any run read: a typo
    would otherwise audit nothing it names and pass the gate (``inspect --tags`` lists them)."""
    for option, what, glob, chosen in (
            ("--grad-tag", "grad-norm", settings.grad_tag, [a.grad_norm_tag for a in audits]),
            ("--loss-tag", "loss", settings.loss_tag, [a.loss_tag for a in audits])):
        if glob is not None and audits and not any(chosen):
            # where the glob named only the other kind's series, the run's note says so
            said = next((n for a in audits for n in a.notes
                         if n.startswith(f"{option} {glob!r} ")), None)
            why = f"; {said}" if said else ""
            raise UsageError(f"{option} {glob!r} ({option[2:].replace('-', '_')}) chose no "
                             f"{what} tag in any of the {len(audits)} run(s) read{why} "
                             "(`gradaudit inspect PATH --tags` lists the tags)")


def _note_copies(audits: list[RunAudit]) -> None:
    """Note on each run whose grad-norm and loss series another run of the scan has too: one
    training logged twice (Lightning's TensorBoard and CSV loggers write the same series to
    two version folders), which the scan's counts hold twice."""
    for group in same_series(audits):
        for audit in group:
            others = ", ".join(repr(o.run) for o in group if o is not audit)
            what = "grad-norm and loss series" if audit.grad_norm_tag and audit.loss_tag \
                else "series"
            # first: the Markdown report and the HTML notes list show a run's first notes
            audit.notes.insert(0, f"the same {what} (steps and values) as {others}: one "
                               "training logged twice (two loggers, or a copy) or an exact "
                               "re-run; each is counted in this scan")
    for audit, others in close_series(audits):
        names = listed([o.run for o in others], 5)
        audit.notes.insert(0, f"the same grad-norm and loss series within {HEAD_RTOL:.1%} as "
                           f"{names} (at the steps both logged): one "
                           "training logged twice by writers that round it differently (e.g. "
                           "a Trainer's stdout log and its trainer_state.json), or an exact "
                           "re-run; each is counted in this scan")


def inspect(
    paths: PathLike | Iterable[PathLike],
    *,
    grad_tag: str | None = None,
    loss_tag: str | None = None,
    workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> Inspection:
    """Discover and read runs under ``paths`` (one path or several) without analysis; the
    inputs that yielded no run are in ``.errors``, with the reason (``timeout``: seconds one
    input may take in a worker process, with ``workers`` above 1). The four keywords are
    checked as the :class:`~gradaudit.settings.Settings` fields they are (a ValueError)."""
    checked = Settings(grad_tag=grad_tag, loss_tag=loss_tag, workers=workers, timeout=timeout)
    grad_tag, loss_tag = checked.grad_tag, checked.loss_tag
    workers, timeout = checked.workers, checked.timeout
    sources, errors = _sources(paths, workers, timeout)
    runs: list[RunSeries] = []
    for got, bad in run_all(_ReadJob(grad_tag, loss_tag), sources, workers, _lost, timeout):
        runs.extend(got)
        errors.extend(bad)
    return Inspection(runs=runs, errors=errors)


def read_runs(
    paths: PathLike | Iterable[PathLike],
    *,
    grad_tag: str | None = None,
    loss_tag: str | None = None,
    workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[RunSeries]:
    """The runs under ``paths`` (one path or several) in canonical form; inputs that fail are
    left out (:func:`inspect` returns them with the reason)."""
    return inspect(paths, grad_tag=grad_tag, loss_tag=loss_tag, workers=workers,
                   timeout=timeout).runs


def audit_run(series: RunSeries, settings: Settings | None = None, **overrides: Any) -> RunAudit:
    """Find episodes, their loss impact and clip suggestions for one run. ``grad_tag`` and
    ``loss_tag`` globs choose the run's tags again (they are chosen when it is read)."""
    from gradaudit.audit import audit_run as _audit_run

    settings = (settings or Settings()).with_overrides(**overrides)
    if settings.grad_tag is not None or settings.loss_tag is not None:
        # only the tags a glob names are chosen again; the others stay as read
        counts = series.tag_counts()
        choice = choose_tags(counts, grad_tag=settings.grad_tag, loss_tag=settings.loss_tag,
                             counts=counts)
        grad = choice.grad_norm if settings.grad_tag is not None else series.grad_norm_tag
        loss = choice.loss if settings.loss_tag is not None else series.loss_tag
        notes = list(choice.notes)
        if grad is not None and grad.removesuffix("__MAX") == loss and \
                (settings.grad_tag is None or settings.loss_tag is None):
            # one series is never both: the glob given here yields to the tag the run keeps
            option, glob = ("--loss-tag", settings.loss_tag) if settings.grad_tag is None \
                else ("--grad-tag", settings.grad_tag)
            notes.append(f"{option} {glob!r} chose {loss!r}, which this run reads as the "
                         f"{'grad norm' if option == '--loss-tag' else 'loss'}: one series "
                         "cannot be both")
            grad, loss = (grad, None) if option == "--loss-tag" else (None, loss)
        series = replace(series, grad_norm_tag=grad, loss_tag=loss,
                         notes=list(series.notes) + notes)
    return _audit_run(series, settings)


def scan(
    paths: PathLike | Iterable[PathLike], settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None, **overrides: Any
) -> AuditResult:
    """Discover, read and audit every run under ``paths``, then apply the gate.

    Keyword overrides are :class:`~gradaudit.settings.Settings` fields, e.g.
    ``scan(["runs/"], fail_on="warning", impact_horizon=100)``. ``progress(done, total)`` is
    called as each input found is read and audited.
    """
    # The engine (numpy/scipy) is imported here, not at start-up: `inspect` never needs it.
    from gradaudit.clip import batch_clip
    from gradaudit.gate import evaluate_gate

    settings = (settings or Settings()).with_overrides(**overrides)
    given = _paths(paths)
    sources, errors = _sources(given, settings.workers, settings.timeout)
    audits: list[RunAudit] = []
    for got, bad in run_all(_ScanJob(settings), sources, settings.workers, _lost,
                            settings.timeout, progress):
        audits.extend(got)
        errors.extend(bad)
    _unmatched_globs(audits, settings)
    _note_copies(audits)
    result = AuditResult(runs=audits, errors=errors, settings=settings,
                         unread_paths=_unread(given, audits, errors),
                         inputs=_input_files(given, sources))
    result.batch_clip = batch_clip(audits, settings.clip_max_cost)
    evaluate_gate(result)
    return result
