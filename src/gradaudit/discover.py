"""Walk the given paths and group files into sources, one adapter each.

Runs are named the way ``tensorboard --logdir`` names them: by their folder relative to the
scanned root (``"."`` for the root itself). A file that holds several runs yields
``file.csv#run``. When more than one path is scanned, names are prefixed with the path as given
so that two roots never share a name; a file is read once: a file named inside a folder
named too is read with that folder's runs, and one named twice (or through a link) where it is
named first. Symlinked folders are
followed once: a link to a folder already seen (``wandb/latest-run``, a loop) is not walked
again. Folders whose names start with a
dot are skipped, and so are files no adapter claims.
"""

from __future__ import annotations

import heapq
import itertools
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gradaudit.adapters import REGISTRY
from gradaudit.adapters.base import Adapter, Source
from gradaudit.adapters.hf_trainer import FORMAT as HF_FORMAT
from gradaudit.adapters.tensorboard import FORMAT as TB_FORMAT
from gradaudit.errors import UNEXPECTED
from gradaudit.parallel import DEFAULT_TIMEOUT, run_all
from gradaudit.resumes import REDONE_GRAD_FACTOR, REDONE_TOLERANCE, redone_differ


@dataclass(frozen=True)
class Discovery:
    """What a walk found: sources to read, and paths that could not be used at all."""

    sources: list[Source]
    missing: list[str]
    unrecognised: list[str] = field(default_factory=list)  # files named but in no known format
    #: ``(path, why)``: folders that could not be listed, and files named like a log that are
    #: no regular file (a FIFO, a device, a dangling link), found while walking
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: ``(source, why)``: Trainer runs and TensorBoard folders beside them whose reading, to
    #: tell the Trainer's copies, failed in a worker process (timed out, died): not read again
    lost: list[tuple[Source, str]] = field(default_factory=list)


#: Names that say a reader would take the file without looking inside: one that is no regular
#: file is reported, not passed over (it is never opened: a FIFO would block the walk). Names
#: a reader takes only by content (``*.log`` for Megatron, ``*.json``) are left out: W&B's own
#: ``debug.log`` links dangle once a run folder is deleted.
LOG_NAME_HINTS = ("tfevents", ".csv", ".parquet", ".wandb", ".jsonl", "trainer_state.json")


def _looks_like_log(name: str) -> bool:
    low = name.lower()
    return any(h in low for h in LOG_NAME_HINTS)


#: the kernel's own file systems: a "regular" file there can block a read for ever (/proc/kmsg,
#: reached through a link to / or to the file), and nothing there is a training log
_KERNEL_FOLDERS = ("/proc", "/sys", "/dev")


def _kernel_devices() -> frozenset[int]:
    """The devices of :data:`_KERNEL_FOLDERS` on this machine."""
    devs = set()
    for path in _KERNEL_FOLDERS:
        try:
            devs.add(os.stat(path).st_dev)
        except OSError:
            pass
    return frozenset(devs)


def _walk(root: Path, unreadable: list[tuple[str, str]]) -> Iterator[tuple[Path, list[Path]]]:
    """Yield ``(folder, regular files directly in it)``, each real folder once; a folder that
    cannot be listed and a file named like a log that is no regular file go to ``unreadable``.

    Folders are walked by how many symlinks lead to them, fewest first, and, among as many, a
    folder that is itself a link after those that are not: a folder seen several ways is named
    by its real path, or by the path with the fewest links (a ``latest`` link beside the run it
    points to, or anywhere under a linked folder, never names that run). Depth first, in name
    order, among equals. (Two links side by side at one level - ``runs -> ../data/runs`` and
    ``latest -> runs/run-x`` - still name ``run-x`` by the first in name order: ``latest``.)
    """
    seen: set[tuple[int, int]] = set()
    kernel = _kernel_devices()
    order = itertools.count()
    # (symlinks on the way, entered through a link, -push order: depth first), folder
    heap: list[tuple[tuple[int, bool, int], Path]] = [((0, False, 0), root)]
    while heap:
        (links, _, _), folder = heapq.heappop(heap)
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen or st.st_dev in kernel:
            continue
        seen.add(key)
        files: list[Path] = []
        children: list[tuple[Path, bool]] = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            unreadable.append((str(folder), f"cannot list this folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=True):
                    if entry.name.startswith("."):
                        continue
                    children.append((Path(entry.path), entry.is_symlink()))
                elif entry.is_file(follow_symlinks=True):
                    if entry.stat().st_dev in kernel:
                        unreadable.append((entry.path, "a file of the kernel's (/proc, /sys, "
                                                       "/dev): not read"))
                        continue
                    files.append(Path(entry.path))
                elif _looks_like_log(entry.name) and not entry.name.startswith("."):
                    what = "a dangling link (or a link loop)" \
                        if not os.path.exists(entry.path) else \
                        "not a regular file (a FIFO, a device or a socket)"
                    unreadable.append((entry.path, f"{what}: not read"))
            except OSError as exc:
                unreadable.append((entry.path, f"cannot look at it: {exc.strerror or exc}"))
        yield folder, files
        for child, is_link in reversed(children):  # the first name is popped first
            heapq.heappush(heap, ((links + is_link, is_link, -next(order)), child))


def _one_by_one(adapter: Adapter, folder: Path, files: list[Path]) -> list[Source]:
    """What ``adapter`` claims of ``files`` asked one file at a time, leaving out only those
    its sniff chokes on (a damaged file must not hide the good ones beside it)."""
    claimed: list[Source] = []
    for f in files:
        try:
            claimed.extend(adapter.claim(folder, [f]))
        except Exception:  # noqa: BLE001 - as above
            continue
    return claimed


def _claim(folder: Path, files: list[Path]) -> list[Source]:
    sources: list[Source] = []
    remaining = list(files)
    for adapter in REGISTRY.values():
        if not remaining:
            break
        try:
            claimed = adapter.claim(folder, remaining)
        except Exception:  # noqa: BLE001 - a sniff that chokes on a hostile file skips it
            claimed = _one_by_one(adapter, folder, remaining)
        if claimed:
            taken = {f for s in claimed for f in s.files}
            remaining = [f for f in remaining if f not in taken]
            sources.extend(claimed)
    return sources


def _regroup(sources: list[Source]) -> list[Source]:
    """Let each adapter with a ``regroup`` hook fold its sources together (base module doc)."""
    out: list[Source] = []
    for fmt, adapter in REGISTRY.items():
        mine = [s for s in sources if s.format == fmt]
        hook = getattr(adapter, "regroup", None)
        out.extend(hook(mine) if hook is not None and len(mine) > 1 else mine)
    return out


def _trainer_dir(source: Source) -> Path | None:
    """The output folder of a Hugging Face Trainer source (its ``trainer_state.json`` copies
    sit there and in its ``checkpoint-N`` folders)."""
    if source.format != HF_FORMAT or not source.files:
        return None
    folders = {f.parent.parent if f.parent.name.startswith("checkpoint-") else f.parent
               for f in source.files}
    return folders.pop() if len(folders) == 1 else None


Loss = tuple[np.ndarray, np.ndarray]  # a ``train/loss`` series: steps, values


class _Logged(NamedTuple):
    """What a Trainer run's copy is told by: its training loss, its grad norm (None where not
    logged) and the file they were read from."""

    loss: Loss
    grad: Loss | None
    file: str


def _train_loss(source: Source) -> _Logged | None:
    """A source's ``train/loss`` series (and ``train/grad_norm``), or None (unreadable,
    several runs, no such tag)."""
    from gradaudit.ingest import read_source

    try:
        runs, _ = read_source(source, None, None)
        # (one run; the passes a resume cut short come after it, named after it)
        (run,) = [r for r in runs if not r.name.startswith(f"{runs[0].name}#pass")]
        tags = run.tags()
        if "train/loss" not in tags:
            return None
        grad = run.series("train/grad_norm") if "train/grad_norm" in tags else None
        return _Logged(run.series("train/loss"), grad,
                       run.files[0] if run.files else source.name)
    except UNEXPECTED:  # no run or several, or a run that cannot say: no copy to compare
        return None


class _TrainLosses:
    """:func:`_train_loss` as a job for :func:`gradaudit.parallel.run_all`: in worker
    processes, each source is read under the scan's timeout, not in the scan's own process."""

    @staticmethod
    def prepare() -> None:
        """Import the readers when a worker starts (:mod:`gradaudit.parallel`)."""
        import gradaudit.ingest  # noqa: F401

    def __call__(self, source: Source) -> _Logged | None:
        return _train_loss(source)


class _Lost(NamedTuple):
    """A source whose reading failed in a worker process, and why."""

    source: Source
    why: str


def _agrees(state: Loss, log: Loss) -> bool:
    """Whether ``log`` holds the same training loss as ``state`` at every step both hold
    (and they share one)."""
    shared, i, j = np.intersect1d(state[0], log[0], assume_unique=True, return_indices=True)
    return shared.size > 0 and np.allclose(state[1][i], log[1][j], rtol=1e-6, equal_nan=True)


def _before(loss: Loss, step: int | None) -> Loss:
    """``loss`` at the steps below ``step`` (all of it for None)."""
    if step is None:
        return loss
    keep = loss[0] < step
    return loss[0][keep], loss[1][keep]


def _launches(state: Loss, logs: list[tuple[int, Loss]]) -> list[tuple[int, int | None]]:
    """Which TensorBoard logs (in launch order) are the Trainer's copies of ``state``, each with
    the step from which the next launch (a resume) logged again, None for the last one.

    A launch is a copy where its training loss is the state's at every step both hold - below
    the next copy's first step, as those steps were trained again after the resume."""
    copies: list[tuple[int, int | None]] = []
    resumed_at: int | None = None
    for i, loss in reversed(logs):
        if loss[0].size and _agrees(state, _before(loss, resumed_at)):
            copies.append((i, resumed_at))
            resumed_at = int(loss[0][0])
    return copies[::-1]


def _without_trainer_copies(sources: list[Source], workers: int,
                            timeout: float) -> tuple[list[Source], list[_Lost]]:
    """Sources less the TensorBoard copies of a Hugging Face Trainer run: ``report_to=
    "tensorboard"`` writes the same log history into ``<output_dir>/runs/<date>_<host>`` (the
    default ``logging_dir``), one folder per launch (a resume from a checkpoint is a new one).

    A folder there is the Trainer run's copy where its training loss is the one read from
    ``trainer_state.json`` at every step both hold, but for the steps a later copy logged
    again (:func:`_launches`); any other folder (an earlier run in a reused output folder, a
    SummaryWriter of one's own) stays a run. The copies are dropped and the Trainer run's note
    names them - unless they go on past the state read (a run that stopped after its last
    save): then the run is read from the copies, which hold every step the state has, under
    the Trainer run's name. Where they do not hold it all, a copy that goes on stays a run,
    and so does a launch cut short whose first pass over the steps trained again differs
    from the later one (:func:`gradaudit.resumes.redone_differ`: what it crashed on is audited).

    The runs and folders compared are read by ``workers`` processes, each ended after
    ``timeout`` seconds (:func:`gradaudit.parallel.run_all`); those that fail there are left
    out of the sources, and returned."""
    trainers = {d: i for i, s in enumerate(sources) if (d := _trainer_dir(s)) is not None}
    owner_of: dict[int, int] = {}  # a TensorBoard folder in a Trainer's runs/ -> the Trainer
    for i, s in enumerate(sources):
        if s.format == TB_FORMAT and s.files and s.files[0].parent.parent.name == "runs":
            owner = trainers.get(s.files[0].parent.parent.parent)
            if owner is not None:
                owner_of[i] = owner
    if not owner_of:
        return sources, []
    asked = [*owner_of, *dict.fromkeys(owner_of.values())]
    read = dict(zip(asked, run_all(_TrainLosses(), [sources[i] for i in asked], workers, _Lost,
                                   timeout), strict=True))
    logs: dict[int, list[tuple[str, int, Loss]]] = {}
    grad_of: dict[int, Loss | None] = {}
    for i, owner in owner_of.items():
        if isinstance(got := read[i], _Logged):
            files = sources[i].files
            first = min(f.name for f in files)  # events.out.tfevents.<time>...: launch order
            logs.setdefault(owner, []).append((first, i, got.loss))
            grad_of[i] = got.grad
    drop = {i for i, got in read.items() if isinstance(got, _Lost)}
    read_from: dict[int, Source] = {}
    notes: dict[int, list[str]] = {}
    for owner, found in logs.items():
        state = read[owner]
        if not isinstance(state, _Logged):
            continue
        (steps, _), state_file = state.loss, state.file
        found.sort(key=lambda x: (x[0], sources[x[1]].name))
        loss_of = {i: loss for _, i, loss in found}
        copies = _launches(state.loss, [(i, loss) for _, i, loss in found])
        if not copies:
            continue
        kept = {i: _before(loss_of[i], r)[0] for i, r in copies}  # the steps each copy holds
        last = int(steps[-1]) if steps.size else -1
        beyond = [i for i, _ in copies if kept[i].size and kept[i][-1] > last]
        names = [sources[i].name for i, _ in copies]
        held = np.concatenate(list(kept.values()))
        if beyond and np.isin(steps, held).all():
            drop.update(i for i, _ in copies)
            top = max(int(k[-1]) for k in kept.values() if k.size)
            files = tuple(f for i, _ in copies for f in sources[i].files)  # launch order
            read_from[owner] = Source(
                TB_FORMAT, sources[owner].name, files,
                sources[owner].notes + (
                    f"read from the Trainer's TensorBoard log ({', '.join(names)}; "
                    f"report_to='tensorboard'): it goes on to step {top}, past {state_file} "
                    f"(step {last}; the run stopped after its last save), and holds the same "
                    "training loss at every step that file has",))
            continue
        first_passes = set()
        for i, resumed_at in copies:
            if i in beyond:
                notes.setdefault(i, []).append(
                    f"the Trainer's TensorBoard log of {sources[owner].name} (report_to="
                    f"'tensorboard'): kept as a run, as it goes on past {state_file} (step "
                    f"{last}) to step {int(kept[i][-1])}, but the Trainer's logs here do not "
                    "hold every step that file has; the steps both hold are in both runs")
                continue
            differ = 0 if resumed_at is None else redone_differ(
                resumed_at, (loss_of[i], grad_of[i]), (state.loss, state.grad))
            if differ:
                # what happened before the resume (an explosion the run crashed on) is no copy
                first_passes.add(i)
                end = int(loss_of[i][0][-1])
                notes.setdefault(i, []).append(
                    f"the first pass of the Trainer run {sources[owner].name} (report_to="
                    f"'tensorboard'), cut short by a resume: its steps {resumed_at}-{end} were "
                    f"trained again after it, and at {differ} of them its training loss differs "
                    f"from {state_file}'s by over {REDONE_TOLERANCE:.0%} or its grad norm by "
                    f"over {REDONE_GRAD_FACTOR:g}x: kept as a run, so that what happened there is "
                    f"audited (its steps before {resumed_at} are in both runs)")
                notes.setdefault(owner, []).append(
                    f"{sources[i].name} holds this run's first pass up to step {end}, before a "
                    f"resume from step {resumed_at}: it differs from the steps trained again, "
                    "and is a run of its own")
                continue
            drop.add(i)
            if resumed_at is not None:
                notes.setdefault(owner, []).append(
                    f"{sources[i].name} was cut short by a resume: its steps {resumed_at}-"
                    f"{int(loss_of[i][0][-1])} were trained again after it, with a training "
                    f"loss within {REDONE_TOLERANCE:.0%} of the first pass's, and are read from "
                    "the later launch")
        folded = [sources[i].name for i, _ in copies if i not in beyond and i not in first_passes]
        if folded:
            notes.setdefault(owner, []).insert(0, (
                f"the TensorBoard log in {folded[0]} is this Trainer run's copy"
                if len(folded) == 1 else f"the TensorBoard logs in {', '.join(folded)} are "
                "this Trainer run's copies, one per launch") + " (report_to='tensorboard'; "
                "the training loss of trainer_state.json at every step both hold): read once, "
                "from trainer_state.json")
    out = []
    for i, s in enumerate(sources):
        if i in drop:
            continue
        s = read_from.get(i, s)
        if i in notes:
            s = Source(s.format, s.name, s.files, s.notes + tuple(notes[i]))
        out.append(s)
    return out, [got for got in read.values() if isinstance(got, _Lost)]


def file_key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file ``path`` names through any links, or None (none
    there): two paths name one file when their keys are equal, however spelled."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def entry_key(path: str | os.PathLike[str]) -> tuple[int, int, str] | None:
    """The folder entry ``path`` names: its folder's :func:`file_key` (through links, any
    spelling; ``..`` as the kernel takes it, after a link) and its name; None where the folder
    is not there."""
    head, name = os.path.split(os.fspath(path))
    key = file_key(head or ".")
    return None if key is None or name in ("", ".", "..") else (*key, name)


def replaced(path: str | os.PathLike[str]) -> tuple[tuple[int, int, str] | None,
                                                   tuple[int, int] | None]:
    """What writing a new file to ``path`` (atomically, by rename) destroys: the folder entry
    (:func:`entry_key`; a link there, not the file it points to), and the :func:`file_key` of
    the file that entry holds where it is that file's only name (no link, one hard link), else
    None."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return entry_key(path), None
    only = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    return entry_key(path), ((st.st_dev, st.st_ino) if only else None)


def _inside(path: Path, folders: set[Path]) -> bool:
    """Whether a walk of one of ``folders`` reaches the file ``path`` (no dot-folder on the
    way: the walk skips those)."""
    hidden = False
    for parent in path.parents:
        if not hidden and parent in folders:
            return True
        hidden = hidden or parent.name.startswith(".")
    return False


def _join(prefix: str, rel: str) -> str:
    return posixpath.normpath(posixpath.join(prefix, rel))


def discover(paths: Iterable[str | os.PathLike[str]], workers: int = 1,
             timeout: float = DEFAULT_TIMEOUT) -> Discovery:
    """Find the sources under ``paths`` (files or folders). The logs read to tell a Trainer
    run's TensorBoard copies are read by ``workers`` processes, as the scan reads its inputs
    (above 1: each ended after ``timeout`` seconds)."""
    paths = [str(p) for p in paths]
    merged: dict[tuple[str, str], dict[Path, None]] = {}  # a run's files, none twice
    missing: list[str] = []
    unrecognised: list[str] = []
    unreadable: list[tuple[str, str]] = []
    seen_files: set[tuple[int, int]] = set()
    taken: set[tuple[int, int]] = set()  # files some source reads: a file is read once
    folders = {Path(p).resolve() for p in paths if os.path.isdir(p)}
    for given in paths:
        root = Path(given)
        prefix = given.rstrip("/") or "/" if len(paths) > 1 else "."
        if root.is_file():
            if _inside(root.resolve(), folders):
                continue  # a folder named too reads it, with the rest of its run
            key = file_key(root)
            if key in taken:  # named before, or found in a folder named before
                continue
            if key is not None and key[0] in _kernel_devices():
                unreadable.append((given, "a file of the kernel's (/proc, /sys, /dev): not read"))
                continue
            claimed = _claim(root.parent, [root])
            if not claimed:
                unrecognised.append(given)
            elif key is not None:
                seen_files.add(key)
                taken.add(key)
            for src in claimed:
                name = given if len(paths) > 1 or src.name in (".", "..", root.name) else src.name
                merged.setdefault((src.format, name), {}).update(dict.fromkeys(src.files))
            continue
        if not root.is_dir():
            missing.append(given)
            continue
        for folder, files in _walk(root, unreadable):
            keys: dict[Path, tuple[int, int]] = {}  # the folder's new files, by key
            for f in files:
                key = file_key(f)
                if key is not None and key not in seen_files:
                    seen_files.add(key)
                    keys[f] = key
            rel_folder = folder.relative_to(root).as_posix() if folder != root else "."
            for src in _claim(folder, list(keys)):
                # (each file stat'ed once: a file claimed from elsewhere is looked up)
                taken.update(k for f in src.files if (k := keys.get(f) or file_key(f)))
                rel = _join(rel_folder, src.name)  # relative to the root
                if rel == ".." or rel.startswith("../"):
                    # A run that names its parent folder, scanned from inside: the root it is.
                    rel = "."
                name = _join(prefix, rel)
                merged.setdefault((src.format, name), {}).update(dict.fromkeys(src.files))
    sources = _regroup([Source(fmt, name, tuple(files)) for (fmt, name), files in merged.items()])
    sources, lost = _without_trainer_copies(sources, workers, timeout)
    sources.sort(key=lambda s: (s.name, s.format))
    return Discovery(sources=sources, missing=missing, unrecognised=unrecognised,
                     unreadable=unreadable, lost=[(got.source, got.why) for got in lost])
