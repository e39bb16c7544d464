"""Generate the labelled detection benchmark: real small-model training runs on the CPU.

Every fault run is branched from a clean base run at its fault step (same weights, optimizer
state and batch order), so the clean run's loss is the fault run's true counterfactual. Each
run is then written the way some real trainer or export writes it (TensorBoard tag sets of HF /
Megatron / Lightning, Parquet long tables, bucketed W&B chart CSV exports, sparse logging,
loss-only logs) and labelled in ``data/labels.json``.

    pip install torch==2.13.0 && python benchmarks/detection/make_runs.py

Deterministic (fixed seeds, one thread). See README.md for the label definitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
import torch  # noqa: E402
from faults import Fault  # noqa: E402
from roles import clean_or_fault, incomplete  # noqa: E402
from trainer import Schedule, Trace, train  # noqa: E402
from writers import bucket, write_parquet, write_tensorboard, write_wandb_csv  # noqa: E402

H = 200  # impact horizon (steps)
HARM_REL = 0.05  # harmful: excess loss >= 5 % of the clean loss level over the horizon
AMBIG_LO, AMBIG_HI = 0.8, 1.25  # relative excess in [0.8, 1.25] x HARM_REL: ambiguous

# style -> (grad tag, loss tag, lr tag, step offset, loss averaged over the log interval).
# The HF Trainer averages its loss over the logging interval (and logs train/epoch beside it);
# Megatron's TensorBoard "lm loss" is the logging iteration's own (only its stdout line averages).
STYLES = {
    "hf": ("train/grad_norm", "train/loss", "train/learning_rate", 1, True),
    "megatron": ("grad-norm", "lm loss", "learning-rate", 1, False),
    "lightning": ("grad_2.0_norm_total", "train_loss", "lr-Adam", 0, False),
    "olmo": ("optim/total grad norm", "train/CE loss", "optim/LR (group 0)", 1, False),
    "loss_only": (None, "train/loss", "lr", 0, False),
    "bloom0": ("grad-norm", "lm loss", "learning-rate", 1, False),  # grad norm logged as 0.0
}


@dataclass
class View:
    """How a run is written: format, tag style, log interval, W&B buckets."""

    fmt: str  # tb | parquet | csv
    style: str = "hf"
    every: int = 1
    buckets: int | None = None


@dataclass
class RunSpec:
    rid: str
    view: View
    fault: Fault | None = None


@dataclass
class Base:
    """A clean base run and the fault twins branched from it."""

    bid: str
    task: str
    seed: int
    steps: int
    lr: float
    warmup: int
    task_kw: dict = field(default_factory=dict)
    clean_views: list[View] = field(default_factory=list)
    faults: list[RunSpec] = field(default_factory=list)


def V(fmt: str, style: str = "hf", every: int = 1, buckets: int | None = None) -> View:
    return View(fmt, style, every, buckets)


def F(kind: str, start: int, length: int = 1, factor: float = 1.0, **kw) -> Fault:
    return Fault(kind, start, length, factor, **kw)


BASES: list[Base] = [
    # MLP classifier, Adam: lr faults hurt the loss while the grad norm barely moves.
    Base("mlpc", "mlp_cls", 0, 1500, 1e-3, 100,
         clean_views=[V("tb", "hf"), V("parquet", "olmo"), V("csv", "hf", buckets=250)],
         faults=[
             RunSpec("lr-spike-x50", V("parquet", "olmo"), F("lr_spike", 900, 10, 50)),
             RunSpec("lr-spike-x5", V("tb", "hf"), F("lr_spike", 1000, 40, 5)),
             RunSpec("bad-batch-x10", V("tb", "megatron"), F("corrupt_scale", 1100, 2, 10)),
             RunSpec("loss-scale-x100", V("tb", "lightning"), F("loss_scale", 700, 20, 100)),
             RunSpec("lr-ramp-x12", V("csv", "hf", buckets=250),
                     F("lr_ramp", 800, 50, 12, hold=100)),
             RunSpec("fp16-overflow", V("tb", "hf"),
                     F("overflow", 900, steps=(900, 901, 1100, 1300))),
             RunSpec("resume-after-spike", V("tb", "hf"),
                     F("resume", 1200, factor=30, crash_spike=True)),
             RunSpec("grad-accum-x4", V("parquet", "olmo"), F("grad_accum", 800, factor=4)),
             RunSpec("shuffled-labels", V("tb", "hf", every=10), F("corrupt_labels", 1250, 3)),
             RunSpec("lr-jump-x4", V("csvpair", "hf", buckets=250), F("lr_jump", 1000, 1, 4)),
         ]),
    # MLP regressor, SGD + momentum near its stability edge: spiky, lr faults hurt a lot.
    Base("mlpr", "mlp_reg", 1, 1500, 0.02, 100,
         clean_views=[V("tb", "megatron"), V("tb", "lightning", every=10)],
         faults=[
             RunSpec("lr-spike-x2", V("tb", "megatron"), F("lr_spike", 800, 30, 2)),
             RunSpec("lr-spike-x1.5", V("parquet", "olmo"), F("lr_spike", 600, 50, 1.5)),
             RunSpec("lr-jump-x1.5", V("tb", "hf"), F("lr_jump", 900, 1, 1.5)),
             RunSpec("bad-batch-x5", V("csv", "hf", buckets=250), F("corrupt_scale", 700, 1, 5)),
             RunSpec("loss-scale-x3", V("parquet", "olmo"), F("loss_scale", 1000, 5, 3)),
             RunSpec("lr-ramp-x3", V("tb", "lightning"), F("lr_ramp", 800, 60, 3)),
             RunSpec("shuffled-labels-lossonly", V("tb", "loss_only"),
                     F("corrupt_labels", 1100, 2)),
             RunSpec("lr-jump-x50-diverges", V("tb", "hf"), F("lr_jump", 1200, 1, 50)),
         ]),
    # Transformer char LM, AdamW.
    Base("lm", "char_lm", 2, 1000, 3e-3, 100,
         clean_views=[V("tb", "hf"), V("tb", "bloom0")],
         faults=[
             RunSpec("lr-spike-x30", V("tb", "hf"), F("lr_spike", 600, 10, 30)),
             RunSpec("lr-spike-x8", V("parquet", "olmo"), F("lr_spike", 650, 20, 8)),
             RunSpec("loss-scale-x30", V("tb", "megatron"), F("loss_scale", 700, 10, 30)),
             RunSpec("warm-restart", V("tb", "megatron"), F("lr_restart", 750)),
             RunSpec("grad-accum-x4", V("parquet", "olmo"), F("grad_accum", 600, factor=4)),
             RunSpec("shuffled-labels-bloom0", V("tb", "bloom0"), F("corrupt_labels", 700, 1)),
             RunSpec("fp16-overflow", V("parquet", "olmo"),
                     F("overflow", 500, steps=(500, 501, 502, 800))),
             RunSpec("lr-ramp-x10", V("tb", "hf", every=10), F("lr_ramp", 550, 50, 10)),
         ]),
    # Vanilla tanh RNN, SGD: spiky.
    Base("rnn", "rnn", 3, 1200, 0.3, 50,
         clean_views=[V("tb", "lightning"), V("parquet", "olmo")],
         faults=[
             RunSpec("lr-spike-x10", V("tb", "lightning"), F("lr_spike", 700, 30, 10)),
             RunSpec("lr-jump-x3", V("tb", "hf", every=10), F("lr_jump", 600, 1, 3)),
             RunSpec("loss-scale-x20", V("csv", "hf", buckets=250), F("loss_scale", 800, 5, 20)),
             RunSpec("lr-spike-x20-lossonly", V("tb", "loss_only"), F("lr_spike", 900, 10, 20)),
         ]),
    # MLP classifier with batch 8: a healthy but spiky run.
    Base("mlpc-b8", "mlp_cls", 4, 3000, 1e-3, 100, task_kw={"batch": 8},
         clean_views=[V("parquet", "olmo"), V("csv", "hf", buckets=250)],
         faults=[
             RunSpec("lr-spike-x10", V("parquet", "olmo"), F("lr_spike", 2000, 40, 10)),
             RunSpec("bad-batch-x20", V("parquet", "olmo"), F("corrupt_scale", 1500, 1, 20)),
             RunSpec("lr-ramp-x10", V("tb", "megatron", every=10),
                     F("lr_ramp", 1800, 50, 10, hold=100)),
             RunSpec("resume", V("tb", "lightning", every=10), F("resume", 2200)),
             RunSpec("loss-scale-x50", V("csv", "hf", buckets=250), F("loss_scale", 2500, 10, 50)),
         ]),
    # Early training only (the loss still falls fast, the grad norm moves a lot).
    Base("mlpr-early", "mlp_reg", 5, 400, 0.02, 20,
         clean_views=[V("tb", "megatron")],
         faults=[RunSpec("bad-batch-x10", V("tb", "hf"), F("corrupt_scale", 150, 1, 10)),
                 RunSpec("lr-spike-x3", V("parquet", "olmo"), F("lr_spike", 200, 20, 3))]),
    # Conv net with BatchNorm, SGD + momentum + weight decay: the loss is blind to most weights'
    # scale, so lr faults hurt while the grad norm rises about 2x at most. Added 2026-11-28
    # after a blind run of the engine on it (README, "Two families added blind").
    Base("cnn", "cnn_cls", 10, 1500, 0.05, 100,
         clean_views=[V("tb", "hf"), V("parquet", "olmo"), V("csv", "hf", buckets=250)],
         faults=[
             RunSpec("lr-spike-x10", V("tb", "hf"), F("lr_spike", 900, 20, 10)),
             RunSpec("lr-spike-x3", V("parquet", "olmo"), F("lr_spike", 1000, 40, 3)),
             RunSpec("bad-batch-x10", V("tb", "megatron"), F("corrupt_scale", 1100, 2, 10)),
             RunSpec("loss-scale-x30", V("tb", "lightning"), F("loss_scale", 700, 10, 30)),
             RunSpec("lr-jump-x3", V("tb", "hf"), F("lr_jump", 800, 1, 3)),
             RunSpec("fp16-overflow", V("tb", "hf"),
                     F("overflow", 900, steps=(900, 901, 1100, 1300))),
             RunSpec("resume-after-spike", V("tb", "hf"),
                     F("resume", 1200, factor=30, crash_spike=True)),
             RunSpec("lr-ramp-x8", V("csv", "hf", buckets=250),
                     F("lr_ramp", 800, 50, 8, hold=100)),
             RunSpec("shuffled-labels", V("tb", "hf", every=10), F("corrupt_labels", 1250, 3)),
         ]),
    # LSTM char LM, Adam: gated, so lr faults hurt it far less than the vanilla RNN.
    Base("lstm", "lstm_lm", 11, 1000, 5e-3, 100,
         clean_views=[V("tb", "megatron"), V("parquet", "olmo")],
         faults=[
             RunSpec("lr-spike-x20", V("tb", "megatron"), F("lr_spike", 600, 10, 20)),
             RunSpec("lr-spike-x5", V("parquet", "olmo"), F("lr_spike", 650, 30, 5)),
             RunSpec("loss-scale-x30", V("tb", "hf"), F("loss_scale", 700, 10, 30)),
             RunSpec("bad-batch", V("tb", "hf"), F("corrupt_scale", 550, 2, 10)),
             RunSpec("lr-jump-x4", V("tb", "hf", every=10), F("lr_jump", 600, 1, 4)),
             RunSpec("warm-restart", V("tb", "megatron"), F("lr_restart", 750)),
             RunSpec("fp16-overflow", V("parquet", "olmo"),
                     F("overflow", 500, steps=(500, 501, 502, 800))),
         ]),
]

# Natural explosions: unclipped vanilla RNNs at a high learning rate (no injection). The clean
# partner is the same run with clipping at 3x its healthy grad norm (the logged norm is still
# the pre-clip one, so its spikes stay visible).
NATURAL: list[dict] = [
    {"bid": "rnn-nat", "seed": 7, "steps": 1000, "lr": 3.0, "warmup": 20,
     "kw": {"ctx": 32, "hidden": 64, "nonlinearity": "tanh"},
     "view": V("tb", "lightning"), "clean_view": V("tb", "hf")},
    {"bid": "rnn-nat-lr4", "seed": 7, "steps": 900, "lr": 4.0, "warmup": 20,
     "kw": {"ctx": 32, "hidden": 64, "nonlinearity": "tanh"},
     "view": V("parquet", "olmo"), "clean_view": V("parquet", "olmo")},
]


# ---------------------------------------------------------------------------------------------
# logging views


def logged(view: View, tr: Trace, n: int, run_steps: int | None = None
           ) -> tuple[dict, np.ndarray]:
    """The series a trainer in ``view.style`` logs from its first ``n`` per-step records, and
    the t indices; ``run_steps``: the whole run's length (default ``n``; a resumed run's first
    segment stops early)."""
    gtag, ltag, lrtag, off, avg = STYLES[view.style]
    every = view.every
    t_idx = np.array([t for t in range(n) if (t + off) % every == 0], dtype=np.int64)
    steps = t_idx + off
    if avg and every > 1:
        loss = np.array([np.mean(tr.loss[max(0, t - every + 1): t + 1]) for t in t_idx])
    else:
        loss = tr.loss[t_idx]
    out = {ltag: (steps, loss), lrtag: (steps, tr.lr[t_idx])}
    if view.style == "hf":  # the Trainer logs the epoch with every loss (here: one per run)
        out["train/epoch"] = (steps, steps / (run_steps or n))
    if gtag is not None:
        g = np.zeros(len(t_idx)) if view.style == "bloom0" else tr.grad[t_idx]
        out[gtag] = (steps, g)
    if view.style == "megatron" and every > 1:  # Megatron also logs sample-indexed copies
        out["lm loss vs samples"] = (steps * 32, loss)
    return out, t_idx


def grid_of(view: View, t_idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(t index, step label) of each observable point: logged points, or W&B bucket ends."""
    off = STYLES[view.style][3]
    if view.buckets:
        edges = np.linspace(0, len(t_idx), view.buckets + 1).round().astype(int)
        ends = np.array([t_idx[b - 1] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a])
        return ends, ends + off
    return t_idx, t_idx + off


def write_view(path: Path, run_name: str, view: View, segments: list[dict]) -> str:
    if view.fmt == "tb":
        write_tensorboard(path, segments)
        return "tensorboard"
    merged = segments[-1] if len(segments) == 1 else _merge(segments)
    if view.fmt == "parquet":
        write_parquet(path, merged)
        return "parquet"
    write_wandb_csv(path, {run_name: merged}, view.buckets or 250)
    return "wandb-csv"


def _merge(segments: list[dict]) -> dict:
    """Write-order concatenation (a Parquet/CSV of a resumed run keeps both segments)."""
    out = {}
    for tag in segments[0]:
        out[tag] = (np.concatenate([s[tag][0] for s in segments]),
                    np.concatenate([s[tag][1] for s in segments]))
    return out


# ---------------------------------------------------------------------------------------------
# truth


def natural_spikes(view: View, series: dict, factor: float = 5.0,
                   window: int = 100) -> list[int]:
    """Logged steps where the run's own grad norm (W&B: the bucket max) exceeds ``factor`` x the
    median of the previous ``window`` logged values: spikes the twin cannot label (neutral)."""
    gtag = STYLES[view.style][0]
    if gtag is None or view.style == "bloom0" or gtag not in series:
        return []
    steps, g = series[gtag]
    if view.buckets:
        _, _, _, g = bucket(steps, g, view.buckets)
        steps, _, _, _ = bucket(steps, steps, view.buckets)
    out = []
    for i in range(10, len(g)):
        prev = g[max(0, i - window):i]
        prev = prev[np.isfinite(prev)]
        if len(prev) < 10 or not np.isfinite(g[i]):
            continue
        if g[i] > factor * np.median(prev):
            out.append(int(steps[i]))
    return out


def first_diff(c: Trace, f: Trace, start: int) -> int:
    n = len(c.loss)
    for t in range(start, n):
        gc, gf, lc, lf = c.grad[t], f.grad[t], c.loss[t], f.loss[t]
        if not (np.isfinite(gf) and np.isfinite(lf)):
            return t
        if abs(gf - gc) > 1e-9 * max(abs(gc), 1e-12) or abs(lf - lc) > 1e-9 * max(abs(lc), 1e-12):
            return t
    return start


def event_truth(view: View, c: Trace, f: Trace, n: int, t_idx: np.ndarray, t0: int,
                active: int, kind: str, benign: bool, forced_harmless: bool = False) -> dict:
    """The truth of one event whose effect starts at per-step index ``t0``, on the view's grid."""
    gt, gs = grid_of(view, t_idx, n)

    def on_grid(t: int) -> int:
        return int(gs[min(int(np.searchsorted(gt, t)), len(gs) - 1)])

    w = slice(t0, min(n, t0 + H))
    diff = f.loss[w] - c.loss[w]
    level = float(np.mean(c.loss[w]))
    diverged = not np.all(np.isfinite(f.loss[w]))
    excess = None if diverged else float(np.mean(diff))
    rel = math.inf if diverged else excess / level
    gw = np.arange(t0, min(n, t0 + active + 30))
    has_grad = STYLES[view.style][0] is not None and view.style != "bloom0"
    sig = f.grad[gw] if has_grad else f.loss[gw] - c.loss[gw]
    sig = np.where(np.isfinite(sig), sig, np.inf)
    t_peak = int(gw[int(np.argmax(sig))])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = f.grad[gw] / c.grad[gw]
        ratio = float(np.nanmax(r)) if np.any(np.isfinite(r)) else math.inf
    if forced_harmless:
        harmful, ambiguous = False, False
    else:
        harmful = bool(rel >= HARM_REL)
        ambiguous = bool(AMBIG_LO * HARM_REL <= rel <= AMBIG_HI * HARM_REL) and not diverged
    return {
        "kind": kind,
        "benign": benign,
        "onset_step": on_grid(t0),
        "peak_step": on_grid(t_peak),
        "active_end_step": on_grid(min(n - 1, t0 + active)),
        "excess_loss": excess,
        "clean_loss_level": level,
        "rel_excess": None if diverged else rel,
        "diverged": diverged,
        "peak_ratio_vs_twin": ratio if math.isfinite(ratio) else None,
        "harmful": harmful,
        "ambiguous": ambiguous,
        "severity": "explosion" if harmful else "warning",
    }


def _fault_span(fault: Fault, c: Trace, f: Trace) -> tuple[int, int]:
    """``(t0, active)``: the per-step index where a fault run first differs from its clean
    twin ``c`` and how many steps its fault is active from there."""
    if fault.kind == "resume":
        t0 = fault.start - fault.rewind
    elif fault.kind == "overflow":
        t0 = min(fault.steps)
    else:
        t0 = first_diff(c, f, fault.start)
    active = {"lr_spike": fault.length, "corrupt_scale": fault.length,
              "loss_scale": fault.length, "corrupt_labels": fault.length,
              "lr_ramp": fault.length + (fault.hold if fault.hold is not None else 50)}.get(
                  fault.kind, 50)
    return t0, active


def fault_truth(spec: RunSpec, c: Trace, f: Trace, n: int, t_idx: np.ndarray) -> dict:
    """Run-level truth fields and the single event of an injected fault."""
    fault = spec.fault
    assert fault is not None
    t0, active = _fault_span(fault, c, f)
    ev = event_truth(spec.view, c, f, n, t_idx, t0, active, fault.kind, fault.benign,
                     forced_harmless=fault.kind in ("overflow", "resume"))
    if fault.benign and ev["harmful"]:
        print(f"  NOTE: benign {fault.kind} measured harmful (rel {ev['rel_excess']:.3f})")
    gt, gs = grid_of(spec.view, t_idx, n)
    off = STYLES[spec.view.style][3]
    neutral: list[int] = []
    if fault.kind == "overflow":
        neutral = [int(gs[min(int(np.searchsorted(gt, t)), len(gs) - 1)]) for t in fault.steps]
    elif fault.kind == "resume":
        neutral = [ev["onset_step"], int(fault.start + off)]
    elif fault.benign:
        neutral = [ev["onset_step"]]
    ev["fault_step"] = int(fault.start + off)
    return {"kind": fault.kind, "benign": fault.benign, "description": fault.describe(),
            "events": [ev], "neutral_steps": neutral}


def _summarise(entry: dict) -> None:
    """Run-level copies of the (first) event's truth, for convenience."""
    evs = entry.get("events") or []
    if entry.get("kind") not in (None, "natural"):
        evs = evs[:1]  # a fault run's own fault: its natural events are events of their own
    # (a natural event whose truth is incomplete - truncated, unlogged - is optional)
    entry["harmful"] = any(e["harmful"] and not incomplete(e) for e in evs)
    if entry["label"] == "clean":
        entry["severity"] = None
    else:
        entry["severity"] = "explosion" if entry["harmful"] else "warning"
    first = evs[0] if evs else {}
    for k in ("onset_step", "peak_step", "excess_loss"):
        entry[k] = first.get(k)


def _show(entry: dict, secs: float) -> None:
    evs = entry.get("events") or []
    parts = []
    for e in evs:
        rel = "diverged" if e["rel_excess"] is None else f"rel {e['rel_excess']:+.3f}"
        gr = e["peak_ratio_vs_twin"]
        parts.append(f"onset {e['onset_step']} {rel} g x{gr:.1f} -> {e['severity']}"
                     f"{' (ambiguous)' if e['ambiguous'] else ''}" if gr is not None else
                     f"onset {e['onset_step']} {rel} -> {e['severity']}")
    nat = len(entry.get("natural_spikes") or [])
    print(f"  {entry['id']}: {secs:.1f}s {'; '.join(parts) or 'clean'}"
          f"{f' ({nat} natural spikes)' if nat else ''}", flush=True)


# ---------------------------------------------------------------------------------------------


def run_base(base: Base, out: Path, labels: list[dict]) -> None:
    n = base.steps
    task = models.TASKS[base.task](base.seed, n, lr=base.lr, **base.task_kw)
    sched = Schedule(base.lr, base.warmup, n)
    snaps: set[int] = set()
    for spec in base.faults:
        f = spec.fault
        if f.kind == "resume":
            snaps |= {f.start - f.rewind, f.start - 8}
        elif f.kind == "overflow":
            snaps.add(min(f.steps))
        else:
            snaps.add(f.start)
    t = time.time()
    every10 = tuple(range(0, n, 10))  # a natural event's branch starts at one of these
    clean = train(task, n, sched, snapshot_at=tuple(sorted(snaps.union(every10))))
    clean_nat = natural_events(clean.grad, base.warmup)
    print(f"{base.bid}: clean {n} steps in {time.time() - t:.1f}s "
          f"(final loss {np.nanmean(clean.loss[-50:]):.3f}), natural events at "
          f"{[e[0] for e in clean_nat]}", flush=True)
    clean_ids = []
    clean_cache: dict = {}  # branches of the clean run's natural events, shared by its views
    for view in base.clean_views:
        t = time.time()
        rid = f"{base.bid}-clean-{view.style}{'-every' + str(view.every) if view.every > 1 else ''}"
        rid += "-wandb" if view.fmt == "csv" else ""
        series, t_idx = logged(view, clean, n)
        rel = _path(view, rid)
        fmt = write_view(out / rel, rid, view, [series])
        clean_ids.append(rid)
        entry = _clean_entry(task, sched, base, view, rid, rel, fmt, clean, n, series, t_idx,
                             clean_nat, clean_cache)
        labels.append(entry)
        _show(entry, time.time() - t)
    for spec in base.faults:
        f = spec.fault
        t = time.time()
        if f.kind == "resume":
            r0 = f.start - f.rewind
            rng = np.random.default_rng(base.seed + 99)
            reorder = np.arange(n)
            reorder[r0:] = r0 + rng.permutation(n - r0)
            seg2 = train(task, n, sched, None, start=r0, base=clean, reorder=reorder,
                         snapshot_at=every10)
            if f.crash_spike:
                seg1 = train(task, f.start, sched, f, start=f.start - 8, base=_cut(clean, f.start))
            else:
                seg1 = _cut(clean, f.start)
            s1, _ = logged(spec.view, seg1, f.start, run_steps=n)
            s2, t_idx = logged(spec.view, seg2, n)
            off = STYLES[spec.view.style][3]
            s2 = {k: (v[0][v[0] - off >= r0], v[1][v[0] - off >= r0]) for k, v in s2.items()}
            segments = [s1, s2]
            ftr = seg2  # canonical (later write wins) = clean prefix + resumed segment
            canonical, _ = logged(spec.view, seg2, n)
        else:
            reorder = None
            ftr = train(task, n, sched, f, start=_start(f), base=clean,
                        snapshot_at=every10)
            series, t_idx = logged(spec.view, ftr, n)
            segments = [series]
            canonical = series
        rid = f"{base.bid}-{spec.rid}"
        truth = fault_truth(spec, clean, ftr, n, t_idx)
        spikes = natural_spikes(spec.view, canonical)
        truth["events"] += _fault_run_natural(task, sched, spec, clean, ftr, n, t_idx, clean_nat,
                                              clean_cache, reorder, spikes)
        if spec.view.fmt == "csvpair":
            rel = f"wandb_csv/{rid}-pair.csv"
            cid = f"{rid}-pair-clean"
            cseries, ct_idx = logged(spec.view, clean, n)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            write_wandb_csv(out / rel, {cid: cseries, rid: segments[-1]}, spec.view.buckets or 250)
            fmt = "wandb-csv"
            centry = _clean_entry(task, sched, base, spec.view, cid, rel, fmt, clean, n, cseries,
                                  ct_idx, clean_nat, clean_cache)
            labels.append(centry)
            _show(centry, 0.0)
        else:
            rel = _path(spec.view, rid)
            fmt = write_view(out / rel, rid, spec.view, segments)
        entry = _entry(rid, rel, fmt, spec.view, base.task, base.bid, n, "fault", clean_ids[0])
        entry.update(truth)
        # the fault's own window is its event's, not a natural spike's (nor are its natural
        # events')
        entry["natural_spikes"] = _outside_events(spikes, truth["events"])
        _summarise(entry)
        labels.append(entry)
        _show(entry, time.time() - t)


def _clean_entry(task, sched: Schedule, base: Base, view: View, rid: str, rel: str, fmt: str,
                 clean: Trace, n: int, series: dict, t_idx: np.ndarray,
                 clean_nat: list[tuple[int, int, float]], clean_cache: dict) -> dict:
    """The label of one view of the clean run: its natural events' truths (branches shared
    through ``clean_cache``), ``clean`` unless one did harm, and its other spikes."""
    spikes = natural_spikes(view, series)
    evs = _natural_truths(task, sched, view, clean, n, t_idx, None, clean_nat,
                          cache=clean_cache, logged_spikes=spikes)
    entry = _entry(rid, rel, fmt, view, base.task, base.bid, n, clean_or_fault(evs), None)
    _with_natural(entry, evs)
    entry["natural_spikes"] = _outside_events(spikes, evs)
    _summarise(entry)
    return entry


def find_natural_events(g: np.ndarray, factor: float = 3.0, window: int = 100,
                        skip: int = 50, gap: int = 20, warmup: int = 0,
                        early_factor: float = 5.0) -> list[tuple[int, int, float]]:
    """(onset, last anomalous step, healthy level) of each natural explosion: g above
    ``factor`` x the median of the previous ``window`` healthy steps, merged within ``gap``.
    Before ``skip`` that median is still the lr warm-up's (5x it is ordinary there), and only
    an extreme step after the ``warmup`` counts: ``early_factor`` x above every earlier one."""
    healthy: list[float] = []
    events: list[list] = []
    top = -np.inf  # the largest finite g so far
    for t, x in enumerate(g):
        ref = float(np.median(healthy[-window:])) if len(healthy) >= 20 else None
        anomalous = ref is not None and (not np.isfinite(x) or x > factor * ref)
        early = warmup < t < skip and np.isfinite(x) and x > early_factor * top
        top = max(top, float(x)) if np.isfinite(x) else top
        extends = bool(events) and t - events[-1][1] <= gap  # an early event goes on
        if (anomalous and (t >= skip or extends)) or (early and ref is not None):
            if extends:
                events[-1][1] = t
            else:
                events.append([t, t, ref])
        elif not anomalous and np.isfinite(x):
            healthy.append(float(x))
    return [(a, b, r) for a, b, r in events]


def run_natural(cfg: dict, out: Path, labels: list[dict]) -> None:
    n, bid = cfg["steps"], cfg["bid"]
    task = models.rnn(cfg["seed"], n, lr=cfg["lr"], **cfg["kw"])
    sched = Schedule(cfg["lr"], cfg["warmup"], n)
    t = time.time()
    un = train(task, n, sched, snapshot_at=tuple(range(0, n, 10)))
    events = natural_events(un.grad, cfg["warmup"])
    print(f"{bid}: unclipped {n} steps in {time.time() - t:.1f}s, {len(events)} natural events "
          f"at {[e[0] for e in events]}", flush=True)
    # clean partner: clipped at 3x the healthy level throughout. Its own grad norm still spikes
    # past the clip, and such a spike can still hurt (the clip is 3x the level of the whole run,
    # up to 15x the level late in training), so its spikes are measured like the unclipped
    # run's (as every run's are: roles.clean_or_fault)
    healthy = np.median(un.grad[50:]) if n > 50 else np.median(un.grad)
    clip = float(3 * healthy)
    t = time.time()
    clipped = train(task, n, sched, clip=clip, snapshot_at=tuple(range(0, n, 10)))
    cview = cfg["clean_view"]
    cid = f"{bid}-clipped-clean"
    cseries, ct_idx = logged(cview, clipped, n)
    crel = _path(cview, cid)
    cfmt = write_view(out / crel, cid, cview, [cseries])
    cevs = _natural_truths(task, sched, cview, clipped, n, ct_idx, clip,
                           natural_events(clipped.grad, cfg["warmup"]))
    centry = _entry(cid, crel, cfmt, cview, "rnn", bid, n, clean_or_fault(cevs), None)
    centry.update({"kind": "natural" if cevs else None, "events": cevs,
                   "description": f"the unclipped run's twin with clip_grad_norm {clip:.3g} (3x "
                                  "healthy); its own natural spikes measured like the "
                                  "unclipped run's"})
    centry["natural_spikes"] = _outside_events(natural_spikes(cview, cseries), cevs)
    _summarise(centry)
    labels.append(centry)
    _show(centry, time.time() - t)
    # the natural run: one counterfactual branch per event
    view = cfg["view"]
    t = time.time()
    series, t_idx = logged(view, un, n)
    evs = _natural_truths(task, sched, view, un, n, t_idx, None, events)
    rid = f"{bid}-unclipped"
    rel = _path(view, rid)
    fmt = write_view(out / rel, rid, view, [series])
    entry = _entry(rid, rel, fmt, view, "rnn", bid, n, clean_or_fault(evs), cid if evs else None)
    entry.update({"kind": "natural" if evs else None, "benign": False,
                  "description": f"vanilla {cfg['kw']['nonlinearity']} RNN, SGD lr {cfg['lr']}, "
                                 "no clipping: natural explosions",
                  "events": evs, "neutral_steps": []})
    entry["natural_spikes"] = _outside_events(natural_spikes(view, series), evs)
    _summarise(entry)
    labels.append(entry)
    _show(entry, time.time() - t)


def _natural_truths(task, sched: Schedule, view: View, run: Trace, n: int, t_idx: np.ndarray,
                    clip: float | None, events: list[tuple[int, int, float]], *,
                    fault: Fault | None = None, reorder: np.ndarray | None = None,
                    cache: dict | None = None,
                    logged_spikes: list[int] | None = None) -> list[dict]:
    """The truth of each natural explosion of ``run`` (trained with ``clip``, or none; its
    ``events`` from :func:`find_natural_events`): a branch from just before the onset that clips
    the grad norm at 3x the healthy level during the event (+10 steps; never looser than
    ``clip``), then trains as the run did (with its injected ``fault`` and batch ``reorder``).
    ``alt_truths``: the same with a clip at
    2x and 4x, where tighter than ``clip`` (``score.py`` reports, beside the impact score, the
    score over the events whose truth stays within its own 2x band that way: a chaotic run's
    excess depends on the counterfactual chosen, not only on the explosion). ``cache`` shares
    the branches between the views of one run.

    An event is ``truncated`` where the run ends within its horizon (its excess is a mean over
    fewer steps: larger, and not comparable), and ``unlogged`` where the view logs every few
    steps and none of its logged grad norms in the event (to 10 steps after it; ``logged_spikes``
    from :func:`natural_spikes`) stands out: the spike fell between the logged steps. Either
    makes it optional whatever its truth (``roles.role``)."""
    cache = {} if cache is None else cache
    evs = []
    for onset, last, ref in events:
        def branch(k: float, onset: int = onset, last: int = last, ref: float = ref) -> Trace:
            if (onset, k) not in cache:
                cache[(onset, k)] = _branch(task, sched, run, n, onset, last, k * ref, clip,
                                            fault, reorder)
            return cache[(onset, k)]
        ev = event_truth(view, branch(3), run, n, t_idx, onset, last - onset + 1, "natural",
                         False)
        ev["fault_step"] = ev["onset_step"]
        ev["counterfactual"] = f"clip at {3 * ref:.3g} for steps [{onset}, {last + 10})"
        # (a clip no tighter than the partner's own would be no intervention at all)
        ev["alt_truths"] = {f"clip {k}x": _excess_over(run, branch(k), n, onset)
                            for k in ALT_CLIPS if clip is None or k * ref < clip}
        ev["truncated"] = onset + H > n
        ev["unlogged"] = view.every > 1 and logged_spikes is not None and not any(
            ev["onset_step"] <= s <= ev["active_end_step"] + 10 for s in logged_spikes)
        evs.append(ev)
    return evs


ALT_CLIPS = (2, 4)  # the other clips a natural explosion's truth is measured with (x healthy)
NATURAL_FACTOR = 5.0  # a natural explosion: the grad norm 5x its healthy level
SETTLE = 30  # steps after an injected fault's active end that are still its own


def natural_events(g: np.ndarray, warmup: int, skip: int = 50) -> list[tuple[int, int, float]]:
    """The natural explosions of a per-step grad norm: :func:`find_natural_events` at
    ``NATURAL_FACTOR``."""
    return find_natural_events(g, factor=NATURAL_FACTOR, warmup=warmup, skip=skip)


def _fault_run_natural(task, sched: Schedule, spec: RunSpec, clean: Trace, ftr: Trace, n: int,
                       t_idx: np.ndarray, clean_nat: list[tuple[int, int, float]],
                       clean_cache: dict, reorder: np.ndarray | None,
                       logged_spikes: list[int]) -> list[dict]:
    """The natural explosions of a fault run outside its fault (README, "Natural events in
    every run"): the clean run's that end before the fault changes anything, with the clean
    run's truth (the same spike in every run of the base; its branches are the clean run's),
    and the fault run's own after the fault's active end and ``SETTLE`` steps, found against
    the healthy level it has there (learned afresh from those ``SETTLE`` steps on: a lasting
    lr raise moves it) and branched with the fault kept (its lr, loss scale, batches; a
    resume's batch order)."""
    f = spec.fault
    t0, active = _fault_span(f, clean, ftr)
    if f.kind == "overflow":
        active = max(f.steps) - t0 + 1  # its later overflow steps are neutral, not natural
    w_end = t0 + active + SETTLE
    before = [e for e in clean_nat if e[1] + 10 < t0]
    evs = _natural_truths(task, sched, spec.view, clean, n, t_idx, None, before,
                          cache=clean_cache, logged_spikes=logged_spikes)
    lead = SETTLE  # a fresh history: the steps after the fault's active end
    if w_end < n - 50:
        g = ftr.grad[w_end - lead:]
        after = [(a + w_end - lead, b + w_end - lead, r)
                 for a, b, r in natural_events(g, warmup=n, skip=lead) if a >= lead
                 # a non-finite grad norm there is the fault's divergence
                 and np.isfinite(g[a: b + 1]).all()]
        # nor is there a natural event where the fault run's loss blows up within its
        # horizon: non-finite, or 100x the clean run's there (a diverging grad norm keeps
        # passing 5x its last level)
        with np.errstate(invalid="ignore"):
            after = [(a, b, r) for a, b, r in after
                     if np.isfinite(ftr.loss[a: a + H]).all()
                     and np.nanmax(ftr.loss[a: a + H]) <= 100 * np.nanmax(clean.loss[a: a + H])]
        evs += _natural_truths(task, sched, spec.view, ftr, n, t_idx, None, after,
                               fault=None if f.kind == "resume" else f, reorder=reorder,
                               logged_spikes=logged_spikes)
    return evs


def _with_natural(entry: dict, evs: list[dict]) -> None:
    if evs:
        entry.update({"kind": "natural", "events": evs,
                      "description": f"{entry['description'] or 'no injected fault'}; "
                                     f"its natural explosions measured by branches"})


def _branch(task, sched: Schedule, run: Trace, n: int, onset: int, last: int, clip_at: float,
            clip: float | None, fault: Fault | None = None,
            reorder: np.ndarray | None = None) -> Trace:
    """``run`` again from just before ``onset``, clipping the grad norm at ``clip_at`` during
    the event and 10 steps after (never looser than ``clip``), for a horizon; with ``fault``
    (and ``reorder``) as the run had them."""
    if fault is None:
        f = Fault("natural", onset, length=last - onset + 10, factor=clip_at)
    else:
        f = dataclasses.replace(fault, clip_window=(onset, last + 10, clip_at))
    return train(task, min(n, onset + H), sched, f, start=(onset // 10) * 10,
                 base=run, clip=clip, reorder=reorder)


def _excess_over(run: Trace, br: Trace, n: int, onset: int) -> float | None:
    """The excess of ``run`` over a branch ``br`` (:func:`_branch`): how far the truth depends
    on the clip chosen for the counterfactual. None where either loss is not finite there."""
    w = slice(onset, min(n, onset + H))
    d = run.loss[w] - br.loss[w]
    return float(np.mean(d)) if np.all(np.isfinite(d)) else None


def _outside_events(spikes: list[int], evs: list[dict]) -> list[int]:
    """The spikes outside every event's window (onset to ``SETTLE`` steps after its active
    end)."""
    spans = [(e["onset_step"], e["active_end_step"] + SETTLE) for e in evs]
    return [s for s in spikes if not any(a <= s <= b for a, b in spans)]


def _start(f: Fault) -> int:
    return min(f.steps) if f.kind == "overflow" else f.start


def _cut(tr: Trace, upto: int) -> Trace:
    return Trace(tr.loss[:upto].copy(), tr.grad[:upto].copy(), tr.lr[:upto].copy(), tr.snapshots)


def _path(view: View, rid: str) -> str:
    if view.fmt == "tb":
        return f"tb/{rid}"
    if view.fmt == "parquet":
        return f"parquet/{rid}.parquet"
    return f"wandb_csv/{rid}.csv"


def _entry(rid, rel, fmt, view, task, bid, n, label, twin) -> dict:
    gtag, ltag, lrtag, off, avg = STYLES[view.style]
    return {
        "id": rid,
        "path": rel,
        "run": rid if fmt == "wandb-csv" else None,
        "format": fmt,
        "style": view.style,
        "log_every": view.every,
        "buckets": view.buckets,
        "grad_norm_tag": gtag,
        "grad_norm_usable": gtag is not None and view.style != "bloom0",
        "loss_tag": ltag,
        "lr_tag": lrtag,
        "loss_averaged_over_interval": bool(avg and view.every > 1),
        "task": task,
        "base": bid,
        "n_steps": n,
        "label": label,
        "twin": twin,
        "kind": None,
        "benign": False,
        "description": "clean run" if label == "clean" else "",
        "events": [],
        "neutral_steps": [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "data"))
    ap.add_argument("--only", default=None, help="comma-separated base ids (for debugging)")
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="add this to every seed: a held-out benchmark with the same faults on "
                         "other initialisations and data orders (the committed one uses 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    if out.exists() and args.only is None:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only and (out / "labels.json").exists():  # drop the files of the bases redone
        for r in json.loads((out / "labels.json").read_text())["runs"]:
            if r["base"] in args.only.split(","):
                p = out / r["path"]
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    labels: list[dict] = []
    t0 = time.time()
    for base in BASES:
        if args.only and base.bid not in args.only.split(","):
            continue
        run_base(dataclasses.replace(base, seed=base.seed + args.seed_offset), out, labels)
    for cfg in NATURAL:
        if args.only and cfg["bid"] not in args.only.split(","):
            continue
        run_natural({**cfg, "seed": cfg["seed"] + args.seed_offset}, out, labels)
    old = out / "labels.json"
    gen_seconds = round(time.time() - t0, 1)
    if args.only and old.exists():  # keep the other bases' labels, replace the regenerated ones
        prev = json.loads(old.read_text())
        redone = set(args.only.split(","))
        labels = [r for r in prev["runs"] if r["base"] not in redone] + labels
        gen_seconds = prev.get("generation_seconds")
    meta = {
        "impact_horizon": H,
        "harm_rel_threshold": HARM_REL,
        "ambiguous_band": [AMBIG_LO * HARM_REL, AMBIG_HI * HARM_REL],
        "generated_with": f"torch {torch.__version__}",
        "generation_seconds": gen_seconds,
        "seed_offset": args.seed_offset,
        "runs": labels,
    }
    (out / "labels.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(labels)} runs in {time.time() - t0:.0f}s -> {out}")


if __name__ == "__main__":
    main()
