"""Run a job over many inputs in worker processes, so that no input can take the others down.

- Workers are *spawned* (fresh interpreters): a process forked after polars has started its
  thread pool can hang in its first query (polars' own advice). A worker runs the job's
  ``prepare()`` (its imports) before it says it is ready, so that an input's time is its own.
- Each worker is given one input at a time, so the parent always knows which input a worker
  is reading, and since when:

  - a worker that dies (killed for memory, a crash in native code) loses that input, which
    comes back as ``lost(item, why)``; a new worker takes the inputs left;
  - an input read for longer than ``timeout`` seconds (a reader stuck in native code, as
    polars is when its threads cannot start under a memory limit) has its worker killed and
    comes back as ``lost(item, why)``; a new worker takes the inputs left;
  - either is first given once more, to a fresh worker, where the worker had read other inputs
    before (and, for a timeout, sat nearly idle - its CPU time and its wait for a CPU under
    ``IDLE_SHARE`` of the time: stuck, not busy): a worker that ran out of memory on an
    earlier input can die or hang on the next one, and the OOM killer picks the largest
    process, often one still holding an earlier input's memory. While the others have all read
    something, one worker more than ``workers`` is started for it; the error of an input that
    failed twice says both times why.
- A worker must say it is ready before it is given an input, within ``START_TIMEOUT``. If none
  ever does - a script that calls gradaudit at its top level, without
  ``if __name__ == "__main__":``, is re-run by every spawned worker, which then cannot start
  one of its own - the inputs are read in this process instead, with a warning. If workers
  stop starting later on (``START_FAILURES`` in a row), no more are spawned; the inputs left
  go to the workers still alive, or, with none, come back as ``lost``.
- Ctrl-C (and SIGTERM, which the CLI turns into it) ends the workers at once: the scan ends
  in a moment, leaves no process behind, and writes no report. The workers ignore SIGINT
  themselves (a Ctrl-C reaches the whole process group): the parent decides. (A worker still
  starting up - importing, about a second - is not ignoring it yet, and may print a traceback
  as it goes.)
"""

from __future__ import annotations

import os
import pickle
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

#: Seconds one input may take in a worker process (reading and auditing it) by default.
DEFAULT_TIMEOUT = 600.0
#: Seconds a worker may take to start (an interpreter, its imports) before it counts as failed.
START_TIMEOUT = 120.0
#: Workers in a row that may fail to start before no more are spawned.
START_FAILURES = 3
#: A timed-out worker that used, or waited for, a CPU less than this share of the time was
#: stuck, not busy.
IDLE_SHARE = 0.25

#: How often the parent wakes while it waits: polars installs its own SIGINT handler, after
#: which a Ctrl-C no longer ends a blocking wait - only the wait's own end does.
_SLICE = 0.2
_READY = "ready"
_STOP = b""  # sent as raw bytes: tell a worker to exit


def died() -> str:
    """The error of an input whose worker process died while reading it."""
    return "the process reading this input died (killed for memory, or a crash in native code)"


def timed_out(timeout: float) -> str:
    """The error of an input whose worker was ended after ``timeout`` seconds."""
    return (f"reading this input took longer than {timeout:g} s (the timeout setting), so its "
            "process was ended (raise the timeout for inputs that are only slow)")


NO_WORKER = "no worker process could start to read it"


class _CannotStart(Exception):
    """No worker process could ever start."""


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """A worker: prepare, say so, then read ``(index, item)`` jobs until ``_STOP`` and answer
    each ``(index, ok, result or error)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare = getattr(fn, "prepare", None)
    if prepare is not None:
        prepare()
    conn.send(_READY)
    while (data := conn.recv_bytes()) != _STOP:
        index = None  # (the parent knows which input it sent)
        try:
            index, item = pickle.loads(data)
            answer = (index, True, fn(item))
        except BaseException as exc:  # noqa: BLE001 - a panic in native code is one too
            answer = (index, False, f"the worker reading this input failed: {_describe(exc)}")
        try:
            conn.send(answer)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled
            conn.send((index, False, f"the worker reading this input failed: {_describe(exc)}"))


def _describe(exc: BaseException) -> str:
    """``repr(exc)``, or its type's name where even that fails."""
    try:
        return repr(exc)
    except Exception:  # noqa: BLE001
        return type(exc).__name__


def _busy_seconds(pid: int) -> float | None:
    """User and system CPU time of process ``pid`` (all its threads), plus the time its main
    thread waited for a CPU: a busy worker on a loaded machine is no idle one (None where
    unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            cpu += int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return cpu


class _Worker:
    """One worker process, and the input it is reading (``job``) since ``since``."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        context = get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.proc = context.Process(target=_serve, args=(theirs, fn), daemon=True)
        try:
            self.proc.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            theirs.close()  # so that the worker's death reads as the end of the pipe
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None
        self.since = 0.0
        self.busy_at: float | None = None  # its busy seconds when given the job
        self.served = 0  # inputs read

    def give(self, index: int, item: Any) -> None:
        """Send the worker its next input (OSError: it has died)."""
        self.conn.send((index, item))
        self.job, self.since = index, time.monotonic()
        self.busy_at = _busy_seconds(self.proc.pid)

    def stuck(self) -> bool:
        """Whether the worker used, or waited for, little CPU on its job (True where that is
        unknown)."""
        now = _busy_seconds(self.proc.pid)
        if now is None or self.busy_at is None:
            return True
        return now - self.busy_at < IDLE_SHARE * (time.monotonic() - self.since)

    def retire(self) -> None:
        """Tell an idle worker to exit."""
        try:
            self.conn.send_bytes(_STOP)
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
            lost: Callable[[T, str], R], timeout: float = DEFAULT_TIMEOUT,
            progress: Callable[[int, int], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in up to ``workers`` processes (see the module doc);
    with ``workers`` 1, in this process, with no time limit. ``progress(done, total)`` is called
    as each item is done."""
    tell = progress or (lambda done, total: None)
    if workers <= 1 or not items:
        out = []
        for item in items:
            out.append(fn(item))
            tell(len(out), len(items))
        return out
    pool = _Pool(fn, items, workers, lost, timeout, tell)
    try:
        pool.run()
    except _CannotStart:
        warnings.warn("gradaudit: worker processes could not start (a script that calls it at "
                      "its top level needs `if __name__ == \"__main__\":`); reading in this "
                      "process instead", RuntimeWarning, stacklevel=2)
        for i in pool.left:  # none was given out
            pool.finish(i, fn(items[i]))
    return pool.out


class _Pool:
    """The workers and the inputs still to read (``left``, and ``retry``: inputs given again,
    to a fresh worker only, while fresh workers can start)."""

    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
                 lost: Callable[[Any, str], Any], timeout: float,
                 tell: Callable[[int, int], None]) -> None:
        self.fn, self.items, self.workers, self.lost, self.timeout, self.tell = \
            fn, items, workers, lost, timeout, tell
        self.out: list[Any] = [None] * len(items)
        self.finished: set[int] = set()
        self.left = deque(range(len(items)))
        self.retry: deque[int] = deque()
        self.why: dict[int, str] = {}  # why a retried input's first attempt failed
        self.pool: list[_Worker] = []
        self.done: list[_Worker] = []  # told to exit
        self.failures = 0  # workers in a row that failed to start
        self.ever_ready = False

    def finish(self, i: int, value: Any) -> None:
        """Item ``i``'s result (or what stands in for it)."""
        self.out[i] = value
        if i not in self.finished:
            self.finished.add(i)
            self.tell(len(self.finished), len(self.items))

    def run(self) -> None:
        try:
            while self.left or self.retry or any(w.job is not None for w in self.pool):
                if not self._staff():
                    break
                self._step()
        except BaseException:
            for worker in self.pool + self.done:
                worker.end()
            raise
        for worker in self.pool:  # still starting, or idle, with nothing left for them
            worker.end()
        for worker in self.done:
            worker.end(grace=5.0)

    def _staff(self) -> bool:
        """Spawn the workers the inputs left need (a retry needs a fresh one: one more than
        ``workers`` for as long as it takes to start, where the others have all read
        something); False when none can read them any more."""
        busy = sum(w.job is not None for w in self.pool)
        want = min(self.workers, busy + len(self.left) + len(self.retry))
        if self.retry and not any(w.served == 0 for w in self.pool):
            want = max(want, len(self.pool) + 1)
        while len(self.pool) < want and self.failures < START_FAILURES:
            try:
                self.pool.append(_Worker(self.fn))
            except OSError:  # no process to be had (a process limit, no memory): a failed start
                self.failures += 1
        if self.pool:
            return True
        if not self.ever_ready:
            raise _CannotStart
        for i in self.retry:
            self.finish(i, self.lost(self.items[i], f"{self.why[i]}; it could not be given "
                                                      f"once more: {NO_WORKER}"))
        for i in self.left:
            self.finish(i, self.lost(self.items[i], NO_WORKER))
        self.retry.clear()
        self.left.clear()
        return False

    def _step(self) -> None:
        """Wait for a message or a deadline, and act on each worker."""
        now = time.monotonic()
        deadlines = [w.since + self.timeout for w in self.pool if w.job is not None] + \
            [w.started + START_TIMEOUT for w in self.pool if not w.ready]
        wake = min([_SLICE] + [d - now for d in deadlines])
        ready = wait([w.conn for w in self.pool], timeout=max(wake, 0.0))
        for worker in list(self.pool):
            if worker.conn in ready:
                self._receive(worker)
            elif worker.job is not None and time.monotonic() - worker.since > self.timeout:
                if not worker.conn.poll(0):  # (its answer may just have come)
                    self._drop(worker, expired=True)
            elif not worker.ready and time.monotonic() - worker.started > START_TIMEOUT:
                self._drop(worker)
            if worker in self.pool and worker.ready and worker.job is None:
                self._assign(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            data = worker.conn.recv_bytes()
        except Exception:  # noqa: BLE001 - it died (or its message cannot be taken whole)
            self._drop(worker)
            return
        try:
            message = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be unpickled here
            message = (worker.job, False, "the result of reading this input could not be "
                                          f"read back: {_describe(exc)}")
        if message == _READY:
            worker.ready, self.ever_ready, self.failures = True, True, 0
            return
        index, ok, result = message
        index = worker.job if index is None else index
        self.finish(index, result if ok else self.lost(self.items[index], result))
        worker.job = None
        worker.served += 1

    def _drop(self, worker: _Worker, expired: bool = False) -> None:
        """End a worker that died, timed out or did not start; its input is given again to a
        fresh worker, or lost (module doc)."""
        self.pool.remove(worker)
        again = not expired or worker.stuck()  # (before it is ended)
        worker.end()
        if worker.job is None:
            if not worker.ready:
                self.failures += 1
            return
        j = worker.job
        why = timed_out(self.timeout) if expired else died()
        if worker.served and again and j not in self.why:
            self.why[j] = why
            self.retry.append(j)
            return
        if j in self.why:
            why = f"{self.why[j]}; given once more to another process: {why}"
        self.finish(j, self.lost(self.items[j], why))

    def _assign(self, worker: _Worker) -> None:
        """Give an idle worker its next input (a retry only to a fresh one, while fresh ones
        can start), or let it wait for a retry to be taken, or tell it to exit."""
        fresh_ok = worker.served == 0 or self.failures >= START_FAILURES
        if self.retry and fresh_ok:
            queue = self.retry
        elif self.left:
            queue = self.left
        elif self.retry:  # wait: if no fresh worker can start, this one takes it
            return
        else:  # nothing left
            self.pool.remove(worker)
            worker.retire()
            self.done.append(worker)
            return
        i = queue.popleft()
        try:
            worker.give(i, self.items[i])
        except OSError:  # it has just died: the input was never given (its end reads next)
            queue.appendleft(i)
        except Exception as exc:  # noqa: BLE001 - an input that cannot be pickled
            self.finish(i, self.lost(self.items[i], f"could not be sent to a worker process: "
                                                      f"{_describe(exc)}"))
