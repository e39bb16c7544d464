"""A minimal training loop that records what trainers log, with branching for fault twins.

Per step ``t`` it records the mini-batch loss (before the update), the total L2 grad norm
before clipping (``inf``/``nan`` on a simulated fp16 overflow, where the step is then skipped)
and the learning rate used. A run can be snapshotted before any step and a twin branched from
the snapshot: same weights, optimizer state and batch order.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from faults import Fault


@dataclass
class Schedule:
    """Linear warmup to ``peak``, then cosine decay to ``floor * peak`` at ``total``."""

    peak: float
    warmup: int
    total: int
    floor: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac)))

    def restart(self, since: int) -> float:
        """A warm restart: the schedule's post-warmup cosine started again ``since`` steps ago."""
        frac = min(1.0, since / max(1, self.total - self.warmup))
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class Trace:
    """Per-step records of one run (index = step)."""

    loss: np.ndarray
    grad: np.ndarray
    lr: np.ndarray
    snapshots: dict[int, tuple] = field(default_factory=dict, repr=False)


def _grad_norm(params: list[torch.Tensor]) -> float:
    sq = 0.0
    for p in params:
        if p.grad is not None:
            sq += float(p.grad.detach().double().pow(2).sum())
    return math.sqrt(sq)


def train(
    task,
    steps: int,
    sched: Schedule,
    fault: Fault | None = None,
    *,
    start: int = 0,
    base: Trace | None = None,
    snapshot_at: tuple[int, ...] = (),
    clip: float | None = None,
    reorder: np.ndarray | None = None,
) -> Trace:
    """Train ``steps`` steps (from ``base.snapshots[start]`` when ``start > 0``)."""
    if start > 0:
        assert base is not None
        model, opt = copy.deepcopy(base.snapshots[start])
        loss_a, grad_a, lr_a = base.loss.copy(), base.grad.copy(), base.lr.copy()
    else:
        model = task.make_model()
        opt = task.make_optimizer(model, sched(0))
        loss_a, grad_a, lr_a = (np.full(steps, np.nan) for _ in range(3))
    params = [p for p in model.parameters()]
    snaps: dict[int, tuple] = {}
    for t in range(start, steps):
        if t in snapshot_at:
            snaps[t] = copy.deepcopy((model, opt))
        lr = fault.lr(t, sched, sched.restart) if fault else sched(t)
        for group in opt.param_groups:
            group["lr"] = lr
        bt = int(reorder[t]) if reorder is not None else t
        x, y = task.batch(bt)
        if fault:
            x, y = fault.batch(t, x, y, task)
        loss = task.loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        mult = fault.loss_mult(t) if fault else 1.0
        (loss * mult).backward()
        g = _grad_norm(params)
        loss_a[t], lr_a[t] = float(loss.detach()), lr
        if fault and fault.skip(t):
            grad_a[t] = math.inf if t % 2 == 0 else math.nan
            continue
        grad_a[t] = g
        if not math.isfinite(g) or not math.isfinite(loss_a[t]):
            # diverged: the run would stop here; record the rest as non-finite
            loss_a[t + 1:], grad_a[t + 1:], lr_a[t + 1:] = math.nan, math.nan, lr
            break
        # a fixed clip and a natural event's branch clip together: the tighter one
        fc = fault.clip(t) if fault else None
        c = fc if clip is None else (clip if fc is None else min(clip, fc))
        if c is not None:
            torch.nn.utils.clip_grad_norm_(params, c)
        opt.step()
    return Trace(loss_a, grad_a, lr_a, snaps)
