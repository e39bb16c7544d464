"""A blind probe: a family the engine was never tuned on, trained and audited in one go.

A small conv net without BatchNorm (AdamW, lr warm-up over 100 steps, then cosine decay) on
noisy 12x12 class templates, batch 32, logged every step to CSV. Per seed: the clean run and
four fault twins (same seed, weights and batch order; ONE change each): lr x10 for 20 steps
and x3 for 30 steps at step 700, a batch of inputs scaled x20 with shuffled labels at step
900, the lr x4 from step 800 on. The truth is the twin's: the mean of (fault - clean) loss over
the 200 steps from the fault (``score.py``'s horizon).

    pip install torch==2.13.0 && python benchmarks/detection/blind_probe.py --seeds 1-6

Prints, per run, gradaudit's status and first episode against the truth. Not part of the
scored benchmark (``make_runs.py``): a check that detection carries over to a new family.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

import gradaudit

STEPS, HORIZON, CLASSES, BATCH = 1500, 200, 10, 32
FAULTS = {"clean": None, "lr-spike-x10": ("lr", 700, 10.0, 20), "lr-spike-x3": ("lr", 700, 3.0, 30),
          "bad-batch-x20": ("batch", 900, 20.0, 1), "lr-jump-x4": ("lr", 800, 4.0, STEPS)}


def train(seed: int, fault: tuple | None) -> pl.DataFrame:
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
        if fault is not None and fault[1] <= step < fault[1] + fault[3]:
            if fault[0] == "lr":
                lr *= fault[2]
            else:
                x = x * fault[2]
                y = y[torch.randperm(BATCH, generator=gen)]
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf")))
        opt.step()
        rows.append((step, loss.item(), norm, lr))
    return pl.DataFrame(rows, schema=["step", "train/loss", "train/grad_norm",
                                      "train/learning_rate"], orient="row")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1-6", help="a range, e.g. 1-6")
    lo, hi = (int(v) for v in ap.parse_args().seeds.split("-"))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(lo, hi + 1):
            frames = {name: train(seed, fault) for name, fault in FAULTS.items()}
            clean = frames["clean"]["train/loss"].to_numpy()
            for name, frame in frames.items():
                path = Path(tmp) / f"seed{seed}-{name}.csv"
                frame.write_csv(path)
                (run,) = gradaudit.read_runs([path])
                audit = gradaudit.audit_run(run)
                fault = FAULTS[name]
                truth = "-"
                if fault is not None:
                    diff = frame["train/loss"].to_numpy() - clean
                    truth = f"{np.mean(diff[fault[1]:fault[1] + HORIZON]):+.4f}"
                first = audit.episodes[0] if audit.episodes else None
                found = "-" if first is None else (
                    f"{first.onset_step} {first.kind} {first.severity} excess "
                    f"{first.loss_impact.excess_loss:+.4f}" if first.loss_impact and
                    first.loss_impact.excess_loss is not None else
                    f"{first.onset_step} {first.kind} {first.severity}")
                print(f"seed {seed} {name:14s} {audit.status:9s} truth {truth:8s} found {found}")


if __name__ == "__main__":
    main()
