"""Discovery: run naming (TensorBoard logdir semantics), symlinks, several roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gradaudit
from gradaudit import discover as discover_module
from gradaudit.adapters.base import Source
from gradaudit.resumes import redone_differ


class _FolderRuns:
    """A minimal adapter for these tests: every ``*.ev`` file's folder is one run."""

    FORMAT = "ev"

    @staticmethod
    def claim(directory: Path, files: list[Path]) -> list[Source]:
        mine = tuple(f for f in files if f.suffix == ".ev")
        return [Source("ev", ".", mine)] if mine else []

    @staticmethod
    def read(source):  # pragma: no cover - discovery never reads
        raise AssertionError


class _FileRuns:
    """Every ``*.tab`` file is a run of its own; a ``checkpoint-N`` copy belongs to its parent."""

    FORMAT = "tab"

    @staticmethod
    def claim(directory: Path, files: list[Path]) -> list[Source]:
        out = []
        for f in files:
            if f.suffix == ".tab":
                name = ".." if directory.name.startswith("checkpoint-") else f.name
                out.append(Source("tab", name, (f,)))
        return out

    @staticmethod
    def read(source):  # pragma: no cover
        raise AssertionError


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    monkeypatch.setattr(discover_module, "REGISTRY", {"ev": _FolderRuns, "tab": _FileRuns})


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def names(paths) -> list[str]:
    return [s.name for s in discover_module.discover(paths).sources]


def test_folders_holding_files_are_runs_named_relative_to_the_root(tmp_path):
    _touch(tmp_path / "a" / "1.ev")
    _touch(tmp_path / "a" / "2.ev")
    _touch(tmp_path / "b" / "c" / "1.ev")
    _touch(tmp_path / "top.ev")
    found = discover_module.discover([tmp_path]).sources
    assert [s.name for s in found] == [".", "a", "b/c"]
    a = next(s for s in found if s.name == "a")
    assert [f.name for f in a.files] == ["1.ev", "2.ev"]


def test_unknown_files_are_skipped(tmp_path):
    _touch(tmp_path / "r" / "notes.txt")
    _touch(tmp_path / "r" / "x.ev")
    found = discover_module.discover([tmp_path])
    assert [s.name for s in found.sources] == ["r"] and found.missing == []


def test_file_runs_and_checkpoint_copies_merge(tmp_path):
    _touch(tmp_path / "out" / "state.tab")
    _touch(tmp_path / "out" / "checkpoint-10" / "state.tab")
    _touch(tmp_path / "out" / "checkpoint-20" / "state.tab")
    found = discover_module.discover([tmp_path]).sources
    names_ = sorted(s.name for s in found)
    assert names_ == ["out", "out/state.tab"]
    merged = next(s for s in found if s.name == "out")
    assert len(merged.files) == 2


def test_symlink_loop_is_not_followed_forever(tmp_path):
    _touch(tmp_path / "runs" / "a" / "1.ev")
    os.symlink(tmp_path / "runs", tmp_path / "runs" / "a" / "loop")
    assert names([tmp_path / "runs"]) == ["a"]


def test_latest_run_link_is_not_counted_twice_and_real_name_wins(tmp_path):
    _touch(tmp_path / "wandb" / "run-20260101_000000-abc" / "run-abc.ev")
    os.symlink("run-20260101_000000-abc", tmp_path / "wandb" / "latest-run")
    assert names([tmp_path]) == ["wandb/run-20260101_000000-abc"]


def test_linked_file_counted_once(tmp_path):
    real = _touch(tmp_path / "data" / "x.tab")
    (tmp_path / "link").mkdir()
    os.symlink(real, tmp_path / "link" / "y.tab")
    assert names([tmp_path]) == ["data/x.tab"]


def test_several_roots_are_prefixed(tmp_path):
    _touch(tmp_path / "one" / "r" / "1.ev")
    _touch(tmp_path / "two" / "r" / "1.ev")
    got = names([str(tmp_path / "one"), str(tmp_path / "two") + "/"])
    assert got == [f"{tmp_path}/one/r", f"{tmp_path}/two/r"]


def test_a_file_given_directly_is_named_as_given(tmp_path):
    f = _touch(tmp_path / "d" / "x.tab")
    assert names([str(f)]) == [str(f)]


def test_a_file_named_twice_or_also_inside_a_named_folder_is_read_once(tmp_path):
    # scan d/x.tab d/x.tab, or d with d/x.tab: two runs both named d/x.tab (counted twice in
    # the summary), and a folder run listing its file twice. A file inside a folder named too
    # is read with the folder's runs; one named twice where it is named first.
    d = tmp_path / "d"
    x, y = _touch(d / "x.tab"), _touch(d / "y.tab")
    one, two = _touch(d / "r" / "1.ev"), _touch(d / "r" / "2.ev")
    linked = tmp_path / "alias.tab"
    os.symlink(x, linked)

    def found(*paths):
        return [(s.name, s.files) for s in discover_module.discover(list(paths)).sources]

    assert found(str(x), str(x)) == [(str(x), (x,))]
    assert found(str(x), str(linked)) == [(str(x), (x,))]  # one file under another name
    assert found(str(one), str(one)) == [(str(one), (one,))]
    everything = [(f"{d}/r", (one, two)), (str(x), (x,)), (str(y), (y,))]
    assert found(str(d), str(x), str(one)) == everything
    assert found(str(d), str(tmp_path / "d" / "." / "x.tab")) == [
        (f"{d}/r", (one, two)), (str(x), (x,)), (str(y), (y,))]
    # named before its folder, it is still read with it: an event file of a run with its
    # folder's others (a review: the run was split in two, its resume not resolved)
    assert found(str(x), str(d)) == everything
    assert found(str(one), str(d)) == everything
    assert found(str(one), str(d / "r")) == [(f"{d}/r", (one, two))]


def test_a_file_named_directly_that_no_reader_takes_is_an_input_error(tmp_path):
    # a file in a folder may be anything and is passed by; one the user named is reported
    (tmp_path / "ds.log").write_text("steps: 10 loss: 2.3100 iter time (s): 0.412\n" * 50)
    found = discover_module.discover([tmp_path / "ds.log"])
    assert found.sources == [] and found.unrecognised == [str(tmp_path / "ds.log")]
    result = gradaudit.scan([tmp_path / "ds.log"])
    assert [e.path for e in result.errors] == [str(tmp_path / "ds.log")]
    assert "not a log gradaudit reads" in result.errors[0].message
    assert result.exit_code == 2
    assert discover_module.discover([tmp_path]).unrecognised == []  # under a folder: skipped


def test_missing_paths_are_reported(tmp_path):
    found = discover_module.discover([tmp_path / "nope"])
    assert found.sources == [] and found.missing == [str(tmp_path / "nope")]


def test_hidden_folders_are_skipped(tmp_path):
    _touch(tmp_path / ".git" / "1.ev")
    _touch(tmp_path / "r" / "1.ev")
    assert names([tmp_path]) == ["r"]


def test_checkpoint_folder_scanned_from_inside_is_not_named_dotdot(tmp_path):
    f = _touch(tmp_path / "out" / "checkpoint-10" / "state.tab")
    assert names([tmp_path / "out" / "checkpoint-10"]) == ["."]
    assert names([str(f)]) == [str(f)]


def test_below_a_linked_folder_a_latest_link_does_not_name_the_run_it_points_to(tmp_path):
    # root/proj -> ../real, and real/wandb holds two runs and latest-run -> the second: the
    # second was named proj/wandb/latest-run (a baseline then matched it to whichever run was
    # latest that night) and the first never clashed (a review)
    wandb = tmp_path / "real" / "wandb"
    _touch(wandb / "run-20260101_000000-abc" / "run-abc.ev")
    _touch(wandb / "run-20260102_000000-xyz" / "run-xyz.ev")
    os.symlink("run-20260102_000000-xyz", wandb / "latest-run")
    (tmp_path / "root").mkdir()
    os.symlink("../real", tmp_path / "root" / "proj")
    assert names([tmp_path / "root"]) == ["proj/wandb/run-20260101_000000-abc",
                                          "proj/wandb/run-20260102_000000-xyz"]


def test_a_latest_link_deeper_under_a_linked_folder_does_not_name_the_run(tmp_path):
    # root/proj -> ../real, with real/a/latest -> ../b/run1: named proj/a/latest (a review)
    _touch(tmp_path / "real" / "b" / "run1" / "1.ev")
    (tmp_path / "real" / "a").mkdir()
    os.symlink("../b/run1", tmp_path / "real" / "a" / "latest")
    (tmp_path / "root").mkdir()
    os.symlink("../real", tmp_path / "root" / "proj")
    assert names([tmp_path / "root"]) == ["proj/b/run1"]


def test_folder_reached_by_link_and_by_path_is_named_by_its_path(tmp_path):
    # a/link -> ../b is walked before b/ in depth-first order; the real name must still win
    _touch(tmp_path / "b" / "1.ev")
    (tmp_path / "a").mkdir()
    os.symlink("../b", tmp_path / "a" / "link")
    assert names([tmp_path]) == ["b"]


def test_several_roots_given_as_parent_relative_paths_keep_their_runs(tmp_path, monkeypatch):
    # `scan ../teamA ../teamB` (a user review): every name then starts with "../", which the
    # "run names its parent folder" rule took for that case - each root collapsed into one run,
    # its explosions merged away
    _touch(tmp_path / "teamA" / "r1" / "1.ev")
    _touch(tmp_path / "teamA" / "r2" / "1.ev")
    _touch(tmp_path / "teamB" / "r1" / "1.ev")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert names(["../teamA", "../teamB"]) == ["../teamA/r1", "../teamA/r2", "../teamB/r1"]
    assert names(["../teamA"]) == ["r1", "r2"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_log_named_files_that_are_no_regular_file_are_reported_not_passed_over(tmp_path):
    # a FIFO, a link to a device and a dangling link, each named like a log: never opened (a
    # FIFO would block the walk), each an input error; other odd files are passed over
    _touch(tmp_path / "r" / "1.ev")
    os.mkfifo(tmp_path / "events.out.tfevents.1.fifo")
    os.symlink("/dev/zero", tmp_path / "zero.parquet")
    os.symlink(tmp_path / "gone" / "x.csv", tmp_path / "dangling.csv")
    os.mkfifo(tmp_path / "notes.fifo")  # not named like a log: passed over
    found = discover_module.discover([tmp_path])
    assert [s.name for s in found.sources] == ["r"]
    why = dict(found.unreadable)
    assert set(why) == {str(tmp_path / n) for n in (
        "events.out.tfevents.1.fifo", "zero.parquet", "dangling.csv")}
    assert why[str(tmp_path / "dangling.csv")] == "a dangling link (or a link loop): not read"
    assert "not a regular file" in why[str(tmp_path / "zero.parquet")]


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):
    # chmod 000 does not stop root, so the refusal is simulated where the walk lists folders
    _touch(tmp_path / "ok" / "1.ev")
    _touch(tmp_path / "locked" / "1.ev")
    real = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(discover_module.os, "scandir", scandir)
    found = discover_module.discover([tmp_path])
    assert [s.name for s in found.sources] == ["ok"]
    assert found.unreadable == [(str(tmp_path / "locked"),
                                 "cannot list this folder: Permission denied")]


def test_a_redone_step_differs_where_the_grad_norm_went_nan_on_one_pass_only():
    import numpy as np

    # NaN ratios fail both comparisons: a first pass whose norm went NaN looked the same
    steps = np.arange(30, 36)
    loss = (steps, np.full(6, 2.0))
    healthy = (steps, np.ones(6))
    for blown in (np.inf, 50.0, np.nan):
        first = (steps, np.where(steps >= 33, blown, 1.0))
        assert redone_differ(31, (loss, first), (loss, healthy)) == 3
    assert redone_differ(31, (loss, healthy), (loss, healthy)) == 0


def test_a_file_a_sniff_chokes_on_hides_no_other_file_of_its_folder(tmp_path, monkeypatch):
    # an adapter's claim that raises on one hostile file (Python's sqlite3 raised
    # UnicodeDecodeError on a damaged database) is asked again file by file: the good files
    # beside it are still found (before, that adapter lost the whole folder)
    class Choking(_FileRuns):
        @staticmethod
        def claim(directory: Path, files: list[Path]) -> list[Source]:
            if any(f.name == "hostile.tab" for f in files):
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a damaged header")
            return _FileRuns.claim(directory, files)

    monkeypatch.setattr(discover_module, "REGISTRY", {"tab": Choking})
    for name in ("a.tab", "b.tab", "hostile.tab"):
        _touch(tmp_path / name)
    assert names([tmp_path]) == ["a.tab", "b.tab"]
