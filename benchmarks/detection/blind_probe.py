"""A blind probe: families the engine was never tuned on, trained and audited in one go.

Two families (``--family``), each logged every step to CSV (loss, grad norm before clipping,
and the lr as the run used it, faults included), both AdamW with an lr warm-up over 100 steps,
then cosine decay:

- ``conv``: a small conv net without BatchNorm on noisy 12x12 class templates, batch 32, no
  clipping. Fault twins (same seed, weights and batch order; ONE change each): lr x10 for 20
  steps and x3 for 30 steps at step 700, a batch of inputs scaled x20 with shuffled labels at
  step 900, the lr x4 from step 800 on.
- ``gpt``: a 2-layer decoder-only transformer (d 64, 4 heads, context 64; weight decay 0.1,
  betas 0.9/0.95, batch 16) on the bytes of Python's own standard library sources, clipped at
  1.0 as GPT trainers do (the norm before clipping is logged). Faults: lr x10 for 20 steps at
  700, a batch of random token ids at 900, the lr x4 from 800 on, and two real explosions:
  clipping switched off from step 700 with the lr x30 (or x100) for 10 steps.

The truth is the twin's: the mean of (fault - clean) loss over the 200 steps from the fault
(``score.py``'s horizon).

Each run is audited twice: as logged, and without its lr column. A logged lr rise is an
episode by itself (the lr-change detector), so only the second audit shows whether the grad
norm and the loss alone find the lr faults.

    pip install torch==2.13.0 && python benchmarks/detection/blind_probe.py --seeds 1-6
    python benchmarks/detection/blind_probe.py --family gpt --seeds 1-4

Trains 5 (conv) or 6 (gpt) runs of 1,500 steps per seed (about a minute per seed on one core;
the transformer about four). Prints per run the
clean loss level over the horizon, the truth, and gradaudit's status, the episode found within
10 steps of the fault (onset, kind, severity, detectors, excess loss) and the others, with and
without the lr. Not part of the scored
benchmark (``make_runs.py``): a check that detection carries over to a new family.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import tempfile
from collections.abc import Callable
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
    """One change to the clean run: ``kind`` "lr" (the lr times ``factor``) or "batch" (conv:
    the inputs times ``factor``, the labels shuffled; gpt: random token ids), for ``length``
    steps from ``step``; ``unclipped``: no gradient clipping from ``step`` on."""

    kind: str
    step: int
    factor: float
    length: int
    unclipped: bool = False


FAULTS: dict[str, dict[str, Fault | None]] = {
    "conv": {
        "clean": None,
        "lr-spike-x10": Fault("lr", 700, 10.0, 20),
        "lr-spike-x3": Fault("lr", 700, 3.0, 30),
        "bad-batch-x20": Fault("batch", 900, 20.0, 1),
        "lr-jump-x4": Fault("lr", 800, 4.0, STEPS),
    },
    "gpt": {
        "clean": None,
        "lr-spike-x10": Fault("lr", 700, 10.0, 20),
        "bad-batch-ids": Fault("batch", 900, 1.0, 1),
        "lr-jump-x4": Fault("lr", 800, 4.0, STEPS),
        "unclipped-lr-x30": Fault("lr", 700, 30.0, 10, unclipped=True),
        "unclipped-lr-x100": Fault("lr", 700, 100.0, 10, unclipped=True),
    },
}


def schedule(step: int, fault: Fault | None) -> float:
    """The lr at ``step``: warm-up over 100 steps, cosine decay to a tenth, the fault's
    factor."""
    cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * step / STEPS))
    lr = 1e-3 * min(1.0, (step + 1) / 100) * cosine
    if fault is not None and fault.kind == "lr" and fault.step <= step < fault.step + fault.length:
        lr *= fault.factor
    return lr


def hit(fault: Fault | None, kind: str, step: int) -> bool:
    """Whether ``fault`` is of ``kind`` and active at ``step``."""
    return fault is not None and fault.kind == kind and \
        fault.step <= step < fault.step + fault.length


def train_conv(seed: int, fault: Fault | None) -> pl.DataFrame:
    """One conv-net run: step, loss, grad norm and lr at every step."""
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
        lr = schedule(step, fault)
        if hit(fault, "batch", step):
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


VOCAB, CONTEXT, WIDTH = 128, 64, 64


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(),
                                 nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token and position embeddings, two blocks, a final norm and an output head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool), 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.norm(x))


def stdlib_text() -> torch.Tensor:
    """The bytes of this Python's standard library modules (bytes >= 128 as '?')."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    data = np.frombuffer(b"".join(f.read_bytes() for f in files), dtype=np.uint8).copy()
    data[data >= VOCAB] = ord("?")
    return torch.from_numpy(data.astype(np.int64))


def train_gpt(seed: int, fault: Fault | None) -> pl.DataFrame:
    """One transformer run: step, loss, grad norm (before clipping at 1.0) and lr."""
    torch.manual_seed(seed)
    data, net = stdlib_text(), TinyGPT()
    params = list(net.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for _, p in params if p.dim() >= 2],
                              "weight_decay": 0.1},
                             {"params": [p for _, p in params if p.dim() < 2],
                              "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
    rows = []
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        at = torch.randint(0, len(data) - CONTEXT - 1, (16,), generator=gen)
        x = torch.stack([data[i:i + CONTEXT] for i in at])
        y = torch.stack([data[i + 1:i + CONTEXT + 1] for i in at])
        if hit(fault, "batch", step):
            x, y = torch.randint(0, VOCAB, (2, *x.shape), generator=gen)
        lr = schedule(step, fault)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        clip = float("inf") if fault is not None and fault.unclipped and step >= fault.step \
            else 1.0
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), clip))
        opt.step()
        rows.append((step, loss.item(), norm, lr))
    return pl.DataFrame(rows, schema=["step", "train/loss", "train/grad_norm", LR_TAG],
                        orient="row")


TRAIN: dict[str, Callable[[int, Fault | None], pl.DataFrame]] = {
    "conv": train_conv, "gpt": train_gpt}


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
    ap.add_argument("--family", choices=sorted(TRAIN), default="conv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faults = FAULTS[args.family]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            frames = {name: TRAIN[args.family](seed, fault) for name, fault in faults.items()}
            clean = frames["clean"]["train/loss"].to_numpy()
            for name, frame in frames.items():
                fault = faults[name]
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
                print(f"seed {seed} {name:17s} level {level:.3f} truth {truth:8s} | with lr: "
                      f"{audit_text(with_lr, step)} | without: {audit_text(without, step)}")


if __name__ == "__main__":
    main()
