"""A blind probe: a family the engine was never tuned on, trained and audited in one go.

A small conv net without BatchNorm (AdamW, lr warm-up over 100 steps, then cosine decay) on
noisy 12x12 class templates, batch 32, logged every step to CSV (loss, grad norm before
clipping, and the lr as the run used it, faults included). Per seed: the clean run and four
fault twins (same seed, weights and batch order; ONE change each): lr x10 for 20 steps and x3
for 30 steps at step 700, a batch of inputs scaled x20 with shuffled labels at step 900, the lr
x4 from step 800 on. The truth is the twin's: the mean of (fault - clean) loss over the 200
steps from the fault (``score.py``'s horizon).

Each run is audited twice: as logged, and without its lr column. A logged lr rise is an
episode by itself (the lr-change detector), so only the second audit shows whether the grad
norm and the loss alone find the lr faults.

    pip install torch==2.13.0 && python benchmarks/detection/blind_probe.py --seeds 1-6

Trains 5 runs of 1,500 steps per seed (about a minute per seed on one core). Prints per run the
clean loss level over the horizon, the truth, and gradaudit's status, the episode found within
10 steps of the fault (onset, kind, severity, detectors, excess loss) and the others, with and
without the lr. Not part of the scored
benchmark (``make_runs.py``): a check that detection carries over to a new family.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import torch
from torch import nn

import gradaudit

STEPS, HORIZON, CLASSES, BATCH = 1500, 200, 10, 32
LR_TAG = "train/learning_rate"


class Fault(NamedTuple):
    """One change to the clean run: ``kind`` "lr" (the lr times ``factor``) or "batch" (the
    inputs times ``factor``, the labels shuffled), for ``length`` steps from ``step``."""

    kind: str
    step: int
    factor: float
    length: int


FAULTS: dict[str, Fault | None] = {
    "clean": None,
    "lr-spike-x10": Fault("lr", 700, 10.0, 20),
    "lr-spike-x3": Fault("lr", 700, 3.0, 30),
    "bad-batch-x20": Fault("batch", 900, 20.0, 1),
    "lr-jump-x4": Fault("lr", 800, 4.0, STEPS),
}


def train(seed: int, fault: Fault | None) -> pl.DataFrame:
    """One run: step, loss, grad norm (before clipping) and lr at every step."""
    torch.manual_seed(seed)
    templates = torch.randn(CLASSES, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                        nn.Flatten(), nn.Linear(288, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    rows = []
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        x = templates[y] + 1.5 * torch.randn(BATCH, 1, 12, 12, generator=gen)
        cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * step / STEPS))
        lr = 1e-3 * min(1.0, (step + 1) / 100) * cosine
        if fault is not None and fault.step <= step < fault.step + fault.length:
            if fault.kind == "lr":
                lr *= fault.factor
            else:
                x = x * fault.factor
                y = y[torch.randperm(BATCH, generator=gen)]
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf")))
        opt.step()
        rows.append((step, loss.item(), norm, lr))
    return pl.DataFrame(rows, schema=["step", "train/loss", "train/grad_norm", LR_TAG],
                        orient="row")


def audit_text(path: Path, at: int | None) -> str:
    """The audit of one CSV: its status, the episode within 10 steps of the fault step ``at``
    (onset, kind, severity, detectors, excess loss) and how many other episodes it has."""
    (run,) = gradaudit.read_runs([path])
    audit = gradaudit.audit_run(run)
    near = [ep for ep in audit.episodes if at is not None and abs(ep.onset_step - at) <= 10]
    others = len(audit.episodes) - len(near[:1])
    text = audit.status
    if near:
        ep = near[0]
        excess = ep.loss_impact.excess_loss if ep.loss_impact is not None else None
        text += (f", {ep.onset_step} {ep.kind} {ep.severity} [{','.join(sorted(ep.detected_by))}]"
                 f" excess {'-' if excess is None else format(excess, '+.4f')}")
    elif at is not None:
        text += ", not found"
    rest = [f"{e.onset_step} {e.kind} {e.severity}" for e in audit.episodes if e not in near[:1]]
    return text + (f" (+{others} other: {', '.join(rest)})" if others else "")


def seeds(text: str) -> range:
    """``1-6`` or ``3``."""
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=seeds, default=seeds("1-6"), help="a range (1-6) or a seed")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in ap.parse_args().seeds:
            frames = {name: train(seed, fault) for name, fault in FAULTS.items()}
            clean = frames["clean"]["train/loss"].to_numpy()
            for name, frame in frames.items():
                fault = FAULTS[name]
                at = fault.step if fault is not None else 700
                window = slice(at, at + HORIZON)
                level = float(np.mean(clean[window]))
                diff = frame["train/loss"].to_numpy()[window] - clean[window]
                truth = "-" if fault is None else f"{np.mean(diff):+.4f}"
                with_lr = Path(tmp) / f"{seed}-{name}.csv"
                without = Path(tmp) / f"{seed}-{name}-nolr.csv"
                frame.write_csv(with_lr)
                frame.drop(LR_TAG).write_csv(without)
                step = None if fault is None else fault.step
                print(f"seed {seed} {name:14s} level {level:.3f} truth {truth:8s} | with lr: "
                      f"{audit_text(with_lr, step)} | without: {audit_text(without, step)}")


if __name__ == "__main__":
    main()
