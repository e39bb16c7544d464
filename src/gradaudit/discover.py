"""Walk the given paths and group files into sources, one adapter each.

Runs are named the way ``tensorboard --logdir`` names them: by their folder relative to the
scanned root (``"."`` for the root itself). A file that holds several runs yields
``file.csv#run``. When more than one path is scanned, names are prefixed with the path as given
so that two roots never share a name. Symlinked folders are followed once: a link to a folder
already seen (``wandb/latest-run``, a loop) is not walked again. Folders whose names start with a
dot are skipped, and so are files no adapter claims.
"""

from __future__ import annotations

import heapq
import itertools
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradaudit.adapters import REGISTRY
from gradaudit.adapters.base import Source
from gradaudit.adapters.hf_trainer import FORMAT as HF_FORMAT
from gradaudit.adapters.tensorboard import FORMAT as TB_FORMAT
from gradaudit.errors import UNEXPECTED


@dataclass(frozen=True)
class Discovery:
    """What a walk found: sources to read, and paths that could not be used at all."""

    sources: list[Source]
    missing: list[str]
    unrecognised: list[str] = field(default_factory=list)  # files named but in no known format
    #: ``(path, why)``: folders that could not be listed, and files named like a log that are
    #: no regular file (a FIFO, a device, a dangling link), found while walking
    unreadable: list[tuple[str, str]] = field(default_factory=list)


#: Names that say a reader would take the file without looking inside: one that is no regular
#: file is reported, not passed over (it is never opened: a FIFO would block the walk). Names
#: a reader takes only by content (``*.log`` for Megatron, ``*.json``) are left out: W&B's own
#: ``debug.log`` links dangle once a run folder is deleted.
LOG_NAME_HINTS = ("tfevents", ".csv", ".parquet", ".wandb", ".jsonl", "trainer_state.json")


def _looks_like_log(name: str) -> bool:
    low = name.lower()
    return any(h in low for h in LOG_NAME_HINTS)


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
        if key in seen:
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


def _claim(folder: Path, files: list[Path]) -> list[Source]:
    sources: list[Source] = []
    remaining = list(files)
    for adapter in REGISTRY.values():
        if not remaining:
            break
        try:
            claimed = adapter.claim(folder, remaining)
        except Exception:  # noqa: BLE001 - a sniff that chokes on a hostile file skips it
            claimed = []
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


def _train_loss(source: Source) -> tuple[np.ndarray, np.ndarray] | None:
    """A source's ``train/loss`` series, or None (unreadable, several runs, no such tag)."""
    from gradaudit.ingest import read_source

    try:
        (run,), _ = read_source(source, None, None)
        return run.series("train/loss") if "train/loss" in run.tags() else None
    except UNEXPECTED:  # no run or several, or a run that cannot say: no copy to compare
        return None


def _same_loss(a: tuple[np.ndarray, np.ndarray] | None,
               b: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether two ``train/loss`` series are one, step for step."""
    if a is None or b is None:
        return False
    (sa, va), (sb, vb) = a, b
    return sa.size > 0 and np.array_equal(sa, sb) and np.allclose(va, vb, rtol=1e-6,
                                                                  equal_nan=True)


def _without_trainer_copies(sources: list[Source]) -> list[Source]:
    """Sources less the TensorBoard copies of a Hugging Face Trainer run: ``report_to=
    "tensorboard"`` writes the same log history into ``<output_dir>/runs/<date>_<host>`` (the
    default ``logging_dir``) beside ``trainer_state.json``. Such a folder is dropped where its
    training loss is the Trainer run's, step for step (an earlier run in a reused output folder,
    or a SummaryWriter of one's own, stays a run); the Trainer run's note names it."""
    trainers = {d: i for i, s in enumerate(sources) if (d := _trainer_dir(s)) is not None}
    if not trainers:
        return sources
    copies: dict[int, list[str]] = {}
    drop = set()
    owner_loss: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}  # each Trainer run read once
    for i, s in enumerate(sources):
        if s.format != TB_FORMAT or not s.files:
            continue
        folder = s.files[0].parent
        owner = trainers.get(folder.parent.parent) if folder.parent.name == "runs" else None
        if owner is None:
            continue
        if owner not in owner_loss:
            owner_loss[owner] = _train_loss(sources[owner])
        if _same_loss(owner_loss[owner], _train_loss(s)):
            drop.add(i)
            copies.setdefault(owner, []).append(s.name)
    out = []
    for i, s in enumerate(sources):
        if i in drop:
            continue
        if i in copies:
            note = (f"the TensorBoard log in {', '.join(copies[i])} is this Trainer run's copy "
                    "(report_to='tensorboard'; the same training loss at every step): read "
                    "once, from trainer_state.json")
            s = Source(s.format, s.name, s.files, s.notes + (note,))
        out.append(s)
    return out


def _join(prefix: str, rel: str) -> str:
    return posixpath.normpath(posixpath.join(prefix, rel))


def discover(paths: Iterable[str | os.PathLike[str]]) -> Discovery:
    """Find the sources under ``paths`` (files or folders)."""
    paths = [str(p) for p in paths]
    merged: dict[tuple[str, str], list[Path]] = {}
    missing: list[str] = []
    unrecognised: list[str] = []
    unreadable: list[tuple[str, str]] = []
    seen_files: set[tuple[int, int]] = set()
    for given in paths:
        root = Path(given)
        prefix = given.rstrip("/") or "/" if len(paths) > 1 else "."
        if root.is_file():
            claimed = _claim(root.parent, [root])
            if not claimed:
                unrecognised.append(given)
            for src in claimed:
                name = given if len(paths) > 1 or src.name in (".", "..", root.name) else src.name
                merged.setdefault((src.format, name), []).extend(src.files)
            continue
        if not root.is_dir():
            missing.append(given)
            continue
        for folder, files in _walk(root, unreadable):
            unique = []
            for f in files:
                try:
                    st = f.stat()
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen_files:
                    seen_files.add((st.st_dev, st.st_ino))
                    unique.append(f)
            rel_folder = folder.relative_to(root).as_posix() if folder != root else "."
            for src in _claim(folder, unique):
                rel = _join(rel_folder, src.name)  # relative to the root
                if rel == ".." or rel.startswith("../"):
                    # A run that names its parent folder, scanned from inside: the root it is.
                    rel = "."
                name = _join(prefix, rel)
                merged.setdefault((src.format, name), []).extend(src.files)
    sources = _regroup([Source(fmt, name, tuple(files)) for (fmt, name), files in merged.items()])
    sources = _without_trainer_copies(sources)
    sources.sort(key=lambda s: (s.name, s.format))
    return Discovery(sources=sources, missing=missing, unrecognised=unrecognised,
                     unreadable=unreadable)
