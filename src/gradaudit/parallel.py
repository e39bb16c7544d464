"""Run a job over many inputs in worker processes, so that no input can take the others down.

- Workers are *spawned* (fresh interpreters): a process forked after polars has started its
  thread pool can hang in its first query (polars' own advice).
- Before inputs are handed out, a worker must answer a no-op. If none can start - a script
  that calls gradaudit at its top level, without ``if __name__ == "__main__":``, is re-run by
  every spawned worker, which then cannot start a pool of its own - the inputs are run in this
  process instead, with a warning.
- A worker that dies (killed for memory, a crash in native code) breaks its pool. The inputs
  it left unfinished are split in two halves, each run in a new pool, and so on: the input that
  kills its workers is isolated in a few rounds and comes back as ``lost(item, why)``; every
  other input is read.
- Ctrl-C (and SIGTERM, which the CLI turns into it) stops the workers at once: the inputs not
  yet started are cancelled and the ones being read are abandoned, so the scan ends in a
  moment, leaves no process behind, and writes no report. The workers ignore SIGINT
  themselves (a Ctrl-C reaches the whole process group): the parent decides. (A worker still
  starting up - importing, about a second - is not ignoring it yet, and may print a traceback
  as it goes.)
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKER_DIED = ("the process reading this input died (killed for memory, or a crash in native "
               "code); the other inputs were read")


class _CannotStart(Exception):
    """No worker process could start."""


def _ready() -> bool:
    return True


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _result(future: Future[R]) -> R:
    """``future.result()``, waited for in short slices: polars installs its own SIGINT handler,
    after which a Ctrl-C no longer ends a wait on a lock - only the wait's own end does."""
    while True:
        try:
            return future.result(timeout=0.2)
        except FuturesTimeout:
            continue


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now; without this the interpreter
    waits at exit for every input being read."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        try:
            proc.terminate()
        except OSError:
            pass


def run_all(fn: Callable[[T], R], items: Sequence[T], workers: int,
            lost: Callable[[T, str], R]) -> list[R]:
    """``[fn(item) for item in items]``, in up to ``workers`` processes (see the module doc)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    out: list[R | None] = [None] * len(items)
    try:
        _run(fn, items, list(range(len(items))), workers, lost, out, check_start=True)
    except _CannotStart:
        warnings.warn("gradaudit: worker processes could not start (a script that calls it at "
                      "its top level needs `if __name__ == \"__main__\":`); reading in this "
                      "process instead", RuntimeWarning, stacklevel=2)
        return [fn(item) for item in items]
    return out  # type: ignore[return-value]  # every slot is filled by _run


def _run(fn: Callable[[T], R], items: Sequence[T], idx: list[int], workers: int,
         lost: Callable[[T, str], R], out: list[R | None], check_start: bool = False) -> None:
    pool = ProcessPoolExecutor(max_workers=min(workers, len(idx)),
                               mp_context=get_context("spawn"), initializer=_ignore_sigint)
    unfinished: list[int] = []
    try:
        if check_start:
            try:
                pool.submit(_ready).result()
            except BrokenProcessPool as exc:
                raise _CannotStart from exc
        futures = [pool.submit(fn, items[i]) for i in idx]
        for i, future in zip(idx, futures, strict=True):
            try:
                out[i] = _result(future)
            except BrokenProcessPool:
                unfinished.append(i)
            except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                out[i] = lost(items[i], f"the worker reading this input failed: {exc!r}")
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    if not unfinished:
        return
    if len(idx) == 1:
        out[idx[0]] = lost(items[idx[0]], WORKER_DIED)
        return
    half = (len(unfinished) + 1) // 2
    for part in (unfinished[:half], unfinished[half:]):
        if part:
            _run(fn, items, part, workers, lost, out)
