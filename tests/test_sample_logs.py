"""Checks on the committed ``sample_logs/`` (written by examples/make_sample_logs.py).

No torch needed. The expected values come from ``sample_logs/MANIFEST.json``, which the
generating script wrote from the training loop's own numbers (the injected fault's step, the
grad norm it logged at the peak, the values a resume overwrote) -- never from gradaudit's output.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import gradaudit
from gradaudit.adapters import REGISTRY

ROOT = Path(__file__).resolve().parent.parent / "sample_logs"
FORBIDDEN = (b"/work/", b"/root/", b"/tmp/", b"/home/", b"/Users/", b"C:\\Users")
MAX_BYTES = 5 * 1024 * 1024
TOLERANCE = 10  # steps between the injected step and the detected onset

def _manifest() -> list[dict]:
    return json.loads((ROOT / "MANIFEST.json").read_text())["runs"]


def _files(entry: dict) -> set[Path]:
    return {(ROOT / f).resolve() for f in entry["files"]}


def _match(entry: dict, runs: list) -> list:
    """The runs (RunSeries or RunAudit) read from this manifest entry's files."""
    want = _files(entry)
    return [r for r in runs if {Path(f).resolve() for f in r.files} & want]


# --- no torch, no adapters ----------------------------------------------------------------------


def test_no_machine_specific_paths() -> None:
    hits = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                if os.path.isabs(os.readlink(path)):
                    hits.append(f"{path}: link to an absolute path")
                continue
            if path.is_file():
                data = path.read_bytes()
                hits += [f"{path}: {n!r}" for n in FORBIDDEN if n in data]
    assert not hits, hits


def test_total_size_under_5_mb() -> None:
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file() and not p.is_symlink())
    assert 0 < size < MAX_BYTES, size


def test_manifest_lists_existing_files_and_the_readme_lists_every_run() -> None:
    entries = _manifest()
    readme = (ROOT / "README.md").read_text()
    assert len({e["run"] for e in entries}) == len(entries)
    kinds = {e["fault"]["kind"] if e["fault"] else None for e in entries}
    assert {None, "lr_spike", "corrupt_batch"} <= kinds
    for e in entries:
        assert e["format"] in REGISTRY
        assert e["files"] and all((ROOT / f).is_file() for f in e["files"]), e["run"]
        assert f"`{e['run']}`" in readme
        if e["fault"]:
            assert f"at step {e['fault']['step']}" in readme


# --- needs the adapters -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inspection() -> gradaudit.api.Inspection:
    return gradaudit.inspect([ROOT])


def test_every_listed_run_is_found_once_with_its_tags(inspection) -> None:
    entries = _manifest()
    for e in entries:
        found = _match(e, inspection.runs)
        assert len(found) == 1, (e["run"], [r.name for r in found])
        run = found[0]
        assert run.name in {e["run"], *e["files"]}, (run.name, e["run"])
        assert run.format == e["format"]
        assert run.grad_norm_tag in e["grad_norm_tags"], (e["run"], run.grad_norm_tag)
        assert run.loss_tag in e["loss_tags"], (e["run"], run.loss_tag)
        assert run.step_summary() == (e["n_steps"], e["first_step"], e["last_step"]), e["run"]


def test_no_unlisted_runs_and_no_errors(inspection) -> None:
    entries = _manifest()
    listed = set().union(*(_files(e) for e in entries))
    extra = [r.name for r in inspection.runs
             if not {Path(f).resolve() for f in r.files} & listed]
    assert not extra, extra
    assert not inspection.errors, [x.to_dict() for x in inspection.errors]


def test_grad_norm_at_the_peak_is_the_logged_value(inspection) -> None:
    for e in _manifest():
        [run] = _match(e, inspection.runs)
        steps, values = run.series(run.grad_norm_tag)
        for check in e["checks"]:
            hit = values[steps == check["step"]]
            assert hit.size == 1, (e["run"], check)
            assert math.isclose(hit[0], check["grad_norm"], rel_tol=1e-6), (e["run"], check)


def test_resume_keeps_the_later_write(inspection) -> None:
    resumed = [e for e in _manifest() if "resume_checks" in e]
    assert resumed, "the sample logs hold a resumed run"
    for e in resumed:
        [run] = _match(e, inspection.runs)
        for check in e["resume_checks"]:
            steps, values = run.series(check["tag"])
            hit = values[steps == check["step"]]
            assert hit.size == 1
            assert check["value"] != check["first_attempt"]
            assert math.isclose(hit[0], check["value"], rel_tol=1e-6), (e["run"], check)


# --- the engine on the sample logs ------------------------------------------------------------


def test_engine_flags_injected_faults() -> None:
    """Each injected fault gives an explosion or warning episode whose onset is within
    10 steps of the injected step; clean runs get no explosion."""
    entries = _manifest()
    result = gradaudit.scan([ROOT])
    for e in entries:
        [audit] = _match(e, result.runs)
        episodes = [(ep.onset_step, ep.severity, ep.kind) for ep in audit.episodes]
        if e["fault"] is None:
            assert all(sev != "explosion" for _, sev, _ in episodes), (e["run"], episodes)
        else:
            step = e["fault"]["step"]
            assert any(sev in ("explosion", "warning") and abs(onset - step) <= TOLERANCE
                       for onset, sev, _ in episodes), (e["run"], step, episodes)


def test_no_episode_starts_just_before_an_injected_fault() -> None:
    """Nothing of a fault shows before its step: no episode starts in the 30 steps before it
    (a loss-rise onset walked back through a loss sitting above its trend once gave the
    Megatron lr spike at iteration 500 a second episode at 489)."""
    entries = _manifest()
    result = gradaudit.scan([ROOT])
    for e in entries:
        if e["fault"] is None:
            continue
        [audit] = _match(e, result.runs)
        step = e["fault"]["step"]
        early = [ep.onset_step for ep in audit.episodes if step - 30 <= ep.onset_step < step]
        assert not early, (e["run"], step, early)


def test_excess_loss_matches_the_clean_twin() -> None:
    """Each fault run whose model has a clean run with the same losses up to the fault (same
    seed and data order: a true counterfactual) gets an excess loss within 15 % of the measured
    one: the mean over [onset, onset + 200) of its loss minus the twin's."""
    entries = _manifest()
    result = gradaudit.scan([ROOT])
    runs = gradaudit.read_runs([ROOT])
    series = {e["run"]: _match(e, runs)[0] for e in entries}
    pairs = 0
    for e in entries:
        if e["fault"] is None:
            continue
        fault = series[e["run"]]
        fs, fv = fault.series(fault.loss_tag)
        before = fs < e["fault"]["step"] - 1
        twin = None
        for c in entries:
            if c["fault"] is None and c["model"] == e["model"]:
                cs, cv = series[c["run"]].series(series[c["run"]].loss_tag)
                if np.allclose(np.interp(fs[before], cs, cv), fv[before], rtol=1e-3, atol=1e-4):
                    twin = (cs, cv)
                    break
        if twin is None:
            continue
        [audit] = _match(e, result.runs)
        [ep] = [ep for ep in audit.episodes
                if abs(ep.onset_step - e["fault"]["step"]) <= TOLERANCE]
        on = ep.onset_step
        window = (fs >= on) & (fs < on + 200)
        truth = float(np.mean(fv[window] - np.interp(fs[window], *twin)))
        assert ep.loss_impact.excess_loss == pytest.approx(truth, rel=0.15), e["run"]
        pairs += 1
    assert pairs == sum(e["fault"] is not None for e in entries)  # every fault run has a twin
