"""Run a job over many inputs in worker processes, so that no input can take the others down.

- Workers are *spawned* (fresh interpreters): a process forked after polars has started its
  thread pool can hang in its first query (polars' own advice).
- Each worker is given one input at a time, so the parent always knows which input a worker
  is reading, and since when:

  - a worker that dies (killed for memory, a crash in native code) loses only that input,
    which comes back as ``lost(item, WORKER_DIED)``; a new worker takes the inputs left;
  - an input read for longer than ``timeout`` seconds (a reader stuck in native code, as
    polars is when its threads cannot start under a memory limit) has its worker killed and
    comes back as ``lost(item, timed_out(timeout))``; a new worker takes the inputs left. If
    that worker had read other inputs before, the input is first given once more, to a fresh
    worker: a worker that ran out of memory on an earlier input can hang on the next one.
- A worker must say it is ready before it is given an input. If none can start - a script
  that calls gradaudit at its top level, without ``if __name__ == "__main__":``, is re-run by
  every spawned worker, which then cannot start one of its own - the inputs left are read in
  this process instead, with a warning.
- Ctrl-C (and SIGTERM, which the CLI turns into it) ends the workers at once: the scan ends
  in a moment, leaves no process behind, and writes no report. The workers ignore SIGINT
  themselves (a Ctrl-C reaches the whole process group): the parent decides. (A worker still
  starting up - importing, about a second - is not ignoring it yet, and may print a traceback
  as it goes.)
"""

from __future__ import annotations

import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKER_DIED = ("the process reading this input died (killed for memory, or a crash in native "
               "code); the other inputs were read")

#: Seconds one input may take in a worker process (reading and auditing it) by default.
DEFAULT_TIMEOUT = 600.0

#: How often the parent wakes while it waits: polars installs its own SIGINT handler, after
#: which a Ctrl-C no longer ends a blocking wait - only the wait's own end does.
_SLICE = 0.2

#: Workers in a row that may die before saying they are ready before the rest is read here.
_START_FAILURES = 3

_READY = "ready"


def timed_out(timeout: float) -> str:
    """The error of an input whose worker was ended after ``timeout`` seconds."""
    return (f"reading this input took longer than {timeout:g} s (the timeout setting), so its "
            "process was ended; the other inputs were read")


class _CannotStart(Exception):
    """No worker process could start."""


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """A worker: read ``(index, item)`` jobs until ``None``, answer ``(index, ok, result)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(_READY)
    while (job := conn.recv()) is not None:
        index, item = job
        try:
            answer = (index, True, fn(item))
        except Exception as exc:  # noqa: BLE001 - the parent reports it as this input's
            answer = (index, False, f"the worker reading this input failed: {exc!r}")
        try:
            conn.send(answer)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled
            conn.send((index, False, f"the worker reading this input failed: {exc!r}"))


class _Worker:
    """One worker process, and the input it is reading (``job``) since ``since``."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        context = get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.proc = context.Process(target=_serve, args=(theirs, fn), daemon=True)
        self.proc.start()
        theirs.close()  # so that the worker's death reads as the end of the pipe
        self.ready = False
        self.job: int | None = None
        self.since = 0.0
        self.served = 0  # inputs read

    def give(self, index: int, item: Any) -> None:
        """Send the worker its next input (a worker that has just died is found by the next
        wait, with the input as its job)."""
        self.job, self.since = index, time.monotonic()
        try:
            self.conn.send((index, item))
        except OSError:
            pass

    def retire(self) -> None:
        """Tell an idle worker to exit."""
        try:
            self.conn.send(None)
        except OSError:
            pass

    def end(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the process to exit, then kill it."""
        self.proc.join(timeout=grace)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_all(fn: Callable[[T], R], items: Sequence[T], workers: int,
            lost: Callable[[T, str], R], timeout: float = DEFAULT_TIMEOUT) -> list[R]:
    """``[fn(item) for item in items]``, in up to ``workers`` processes (see the module doc);
    with ``workers`` 1, in this process, with no time limit."""
    if workers <= 1 or not items:
        return [fn(item) for item in items]
    out: list[Any] = [None] * len(items)
    left = deque(range(len(items)))
    try:
        _run(fn, items, left, workers, lost, timeout, out)
    except _CannotStart:
        warnings.warn("gradaudit: worker processes could not start (a script that calls it at "
                      "its top level needs `if __name__ == \"__main__\":`); reading in this "
                      "process instead", RuntimeWarning, stacklevel=2)
        for i in left:
            out[i] = fn(items[i])
    return out


def _run(fn: Callable[[T], R], items: Sequence[T], left: deque[int], workers: int,
         lost: Callable[[T, str], R], timeout: float, out: list[Any]) -> None:
    """Fill ``out`` for the indices in ``left``, taking each from ``left`` as it is given out
    (what is still in ``left`` when ``_CannotStart`` is raised was never given out)."""
    pool: list[_Worker] = []
    done: list[_Worker] = []  # told to exit
    failures = 0  # workers in a row that died before they were ready
    retried: set[int] = set()  # inputs given again, to a fresh worker, after a timeout
    try:
        while left or pool:
            busy = sum(w.job is not None for w in pool)
            while len(pool) < min(workers, busy + len(left)):
                pool.append(_Worker(fn))
            now = time.monotonic()
            wake = min([_SLICE] + [w.since + timeout - now for w in pool if w.job is not None])
            ready = wait([w.conn for w in pool], timeout=max(wake, 0.0))
            for worker in list(pool):
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):  # the worker died
                        if worker.job is not None:
                            out[worker.job] = lost(items[worker.job], WORKER_DIED)
                        elif not worker.ready:
                            failures += 1
                            if failures >= _START_FAILURES and not any(w.ready for w in pool):
                                raise _CannotStart from None
                        pool.remove(worker)
                        worker.end()
                        continue
                    if message == _READY:
                        worker.ready, failures = True, 0
                    else:
                        index, ok, result = message
                        out[index] = result if ok else lost(items[index], result)
                        worker.job = None
                        worker.served += 1
                elif worker.job is not None and time.monotonic() - worker.since > timeout:
                    if worker.served and worker.job not in retried:  # the worker's fault?
                        retried.add(worker.job)
                        left.appendleft(worker.job)
                    else:
                        out[worker.job] = lost(items[worker.job], timed_out(timeout))
                    pool.remove(worker)
                    worker.end()
                    continue
                if worker.ready and worker.job is None:
                    if left:
                        i = left.popleft()
                        try:
                            worker.give(i, items[i])
                        except Exception as exc:  # noqa: BLE001 - an input that cannot be pickled
                            out[i], worker.job = lost(items[i], f"could not be sent to a "
                                                      f"worker process: {exc!r}"), None
                    else:
                        pool.remove(worker)
                        worker.retire()
                        done.append(worker)
    except BaseException:
        for worker in pool + done:
            worker.end()
        raise
    for worker in done:
        worker.end(grace=5.0)
