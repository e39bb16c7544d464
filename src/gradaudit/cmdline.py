"""The ``gradaudit`` command: parse options, call the library, write, exit with its code."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from gradaudit import __version__, api
from gradaudit.config import load_config
from gradaudit.errors import UNEXPECTED, UsageError, clip_message
from gradaudit.gate import load_baseline
from gradaudit.inspect_view import write_inspection
from gradaudit.report import (
    FORMATTERS,
    SUFFIXES,
    ReportWriteError,
    format_for,
    not_a_file,
    show_controls,
    unread_headline,
)
from gradaudit.result import overwrite_message
from gradaudit.settings import FAIL_ON, Settings
from gradaudit.text import PRINTABLE

MAX_EPOCH = 253402300799  # SOURCE_DATE_EPOCH's last second of year 9999 (datetime's range)

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def _settings(**options: Any) -> Settings:
    """Defaults, then ``[tool.gradaudit]``, then the command line; UsageError when invalid."""
    try:
        return Settings().with_overrides(**load_config()).with_overrides(**options)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _check_writable(target: str | None) -> None:
    """UsageError unless ``target``'s folder exists and can be written (``-`` is stdout)."""
    if target is None or target == "-":
        return
    if not_a_file(target):  # a device, a FIFO: written in place (report.write_report)
        if not os.access(target, os.W_OK):
            raise UsageError(f"cannot write {target!r}: not writable")
        return
    if os.path.isdir(target):
        raise UsageError(f"cannot write {target!r}: it is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {target!r}: no folder {folder!r}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {target!r}: the folder is not writable")


def _not_an_input(targets: tuple[tuple[str, str | None], ...],
                  input_at: Callable[[str], str | None]) -> None:
    """UsageError where a report's target is a log the scan reads: the report would replace
    it (``input_at``: before the scan, :func:`api.input_at`; after, the result's)."""
    for option, target in targets:
        log = input_at(target) if target and target != "-" else None
        if log is not None:
            raise UsageError(f"{option} {overwrite_message(target, log)}")


def _warn_timeout(timeout: float | None, settings: Settings) -> None:
    """Say that ``--timeout`` does nothing without worker processes."""
    if timeout is not None and settings.workers == 1:
        click.echo("gradaudit: warning: --timeout limits worker processes (--workers 2 or "
                   "more); with one, the inputs are read in this process, with no time limit",
                   err=True)


def _usable_cpus() -> int:
    """The CPUs this process may run on (a job's share of a node, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fit_workers(settings: Settings) -> Settings:
    """``settings`` with no more worker processes than CPUs (at least 2 where more were asked
    for: a worker process is also what a time limit and a crash stop at), with a warning:
    more only add memory (a review: 8 workers on 2 CPUs, 2.7x the memory, slower)."""
    cpus = _usable_cpus()
    fit = max(2, cpus)
    if settings.workers <= fit:
        return settings
    click.echo(f"gradaudit: warning: --workers {settings.workers} with {cpus} CPU(s) here: "
               f"using {fit} (more processes than CPUs only add memory)", err=True)
    return settings.with_overrides(workers=fit)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        click.echo(message, err=True)


class _Counter:
    """``gradaudit: 120/2495 inputs read (0:41)`` on a terminal's stderr, rewritten in place at
    most every ``EVERY`` seconds (a scan of an archive runs for long; stdout is the report's)."""

    EVERY = 0.5

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.EVERY:
            return
        self.last, took = now, int(now - self.start)
        click.echo(f"\rgradaudit: {done}/{total} inputs read ({took // 60}:{took % 60:02d})",
                   err=True, nl=False)
        self.shown = True

    def end(self) -> None:
        """End the line the count was written on."""
        if self.shown:
            click.echo(err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradaudit")
def cli() -> None:
    """Find where gradients exploded in training logs, what it cost, and how to clip.

    \b
    Example:
      gradaudit scan runs/ --out report.html
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", "out", default=None, help="Report file ('-' = stdout, the default).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATTERS)),
    default=None,
    help="Report format; defaults from --out's suffix (JSON on stdout). 'github' prints "
    "workflow-command annotations.",
)
@click.option("--json", "json_out", default=None, help="Also write the JSON report here.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default=None,
              help="Lowest run status that fails the gate (exit 1) [explosion]; "
                   "'regression': only what got worse against --baseline does.")
@click.option("--baseline", default=None,
              help="Earlier JSON report of the same runs; what got worse fails the gate.")
@click.option("--grad-tag", default=None, help="Glob naming the grad-norm tag.")
@click.option("--loss-tag", default=None, help="Glob naming the loss tag.")
@click.option("--impact-horizon", type=click.IntRange(min=1), default=None, help="Steps [200].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [1].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds one input may take in a worker process before it is ended and "
                   "reported as an error [600]; with --workers above 1.")
@click.option("--quiet", is_flag=True,
              help="No progress messages (shown only when stderr is a terminal).")
def scan(paths: tuple[str, ...], out: str | None, fmt: str | None, json_out: str | None,
         quiet: bool, **options: Any) -> int:
    """Audit the runs under PATHS and write a report.

    \b
    Examples:
      gradaudit scan runs/ --out report.html
      gradaudit scan nightly/ --format md --fail-on explosion --baseline last-good.json
      gradaudit scan /archive --out audit.html --json audit.json --workers 8
    """
    try:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch is not None and not (re.fullmatch(r"[0-9]{1,12}", epoch.strip())
                                      and int(epoch) <= MAX_EPOCH):
            # (numpy itself fails on one, even empty: an internal error in the middle of a scan)
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds "
                             "from 0 to the end of year 9999")
        settings = _fit_workers(_settings(**options))
        _warn_timeout(options.get("timeout"), settings)
        out = out or "-"
        fmt = format_for(out, fmt)
        named = SUFFIXES.get(os.path.splitext(out)[1].lower()) if out != "-" else None
        if named is not None and named != fmt:  # --out report.html --format md
            click.echo(f"gradaudit: warning: writing the {fmt} report to {out!r}, whose suffix "
                       f"says {named}", err=True)
        if json_out == "-" and out == "-":
            raise UsageError("--json - and a report on stdout would mix two formats on stdout")
        if json_out and json_out != "-" and out != "-" and not not_a_file(out) and \
                os.path.realpath(json_out) == os.path.realpath(out):
            raise UsageError(f"--json and --out name the same file {out!r}: one would overwrite "
                             "the other")
        targets = (("--out", out), ("--json", json_out))
        for _, target in targets:
            _check_writable(target)  # fail before a long scan, not after it
        _not_an_input(targets, lambda target: api.input_at(paths, target))
        if settings.baseline:
            load_baseline(settings.baseline)
        counter = _Counter() if not quiet and sys.stderr.isatty() else None
        if not quiet:
            _progress(f"gradaudit: scanning {', '.join(paths)} ...")
        try:
            result = api.scan(paths, settings, progress=counter)
        finally:
            if counter is not None:
                counter.end()
        _not_an_input(targets, result.input_at)  # one only the scan found: neither written
        written = [(t, f) for t, f in ((out, fmt), (json_out, "json")) if t]
        if not quiet:
            for target, target_fmt in written:
                if target != "-":
                    _progress(f"gradaudit: writing the {target_fmt} report to {target} ...")
        try:  # (both or neither: an interrupt between them left a new --out beside an old --json)
            result.write_all(written)
        except ReportWriteError as exc:  # no space, no permission, ...: named by its path
            raise click.FileError(exc.path, exc.strerror or str(exc)) from exc
    except UsageError as exc:
        raise click.UsageError(show_controls(str(exc))) from exc
    if result.exit_code == 2:  # nothing audited, or a path given unread: say why in a CI log
        first = f" (first: {result.errors[0].path}: {result.errors[0].message})" \
            if result.errors else ""
        click.echo(show_controls(f"gradaudit: {unread_headline(result)}: "
                                 + "; ".join(result.gate_reasons) + first), err=True)
    if not quiet:
        summary = result.summary()
        _progress(
            "gradaudit: {runs} run(s), {explosions} explosion(s), {warnings} warning(s), "
            "{errors} error(s)".format(**summary)
            + (f", {summary['too_short']} too short to judge" if summary["too_short"] else "")
        )
    return result.exit_code


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--grad-tag", default=None, help="Glob naming the grad-norm tag.")
@click.option("--loss-tag", default=None, help="Glob naming the loss tag.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [1].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds one input may take in a worker process [600]; with --workers "
                   "above 1.")
@click.option("--tags", "show_tags", is_flag=True,
              help="Also list every run's tags, with their point counts (text format).")
def inspect(paths: tuple[str, ...], fmt: str, grad_tag: str | None, loss_tag: str | None,
            workers: int | None, timeout: float | None, show_tags: bool) -> int:
    """List the runs and tags found under PATHS, and which tags were chosen.

    \b
    Examples:
      gradaudit inspect runs/ --tags
      gradaudit inspect runs/ --format json
    """
    try:
        settings = _fit_workers(_settings(grad_tag=grad_tag, loss_tag=loss_tag, workers=workers,
                                          timeout=timeout))
        _warn_timeout(timeout, settings)
        found = api.inspect(paths, grad_tag=settings.grad_tag, loss_tag=settings.loss_tag,
                            workers=settings.workers, timeout=settings.timeout)
    except UsageError as exc:
        raise click.UsageError(show_controls(str(exc))) from exc
    write_inspection(found, sys.stdout, fmt, show_tags)
    return found.exit_code


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI timeout) ends the scan as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script's entry point).

    SIGTERM is handled as Ctrl-C: worker processes are stopped and no report is written. A
    name with undecodable bytes is printed with them as ``\\xNN`` (:mod:`gradaudit.text`).
    """
    streams = [(s, s.errors) for s in (sys.stdout, sys.stderr) if isinstance(s, io.TextIOWrapper)]
    for stream, _ in streams:
        stream.reconfigure(errors=PRINTABLE)
    installed, previous = False, None
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
        installed = True
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        code = cli.main(args=argv, prog_name="gradaudit", standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C, or SIGTERM: no report was written
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except UNEXPECTED as exc:  # never exit 1 (the gate's code) on a crash
        click.echo(f"gradaudit: internal error: {clip_message(repr(exc))}", err=True)
        return EXIT_USAGE
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        for stream, errors in streams:
            stream.reconfigure(errors=errors)
    return int(code or EXIT_OK)
