"""Faults injected into a training run at a known step, and the benign events we also log.

A fault changes exactly one thing from its start step on; everything else (seed, model, batch
order) stays as in the clean twin. Harm is never assumed: it is measured against the twin.

Kinds (``BENIGN`` ones must never be called an explosion):

- ``lr_spike``: learning rate x``factor`` for ``length`` steps, then back.
- ``lr_jump``: learning rate x``factor`` from ``start`` to the end of the run.
- ``lr_ramp``: learning rate climbs linearly to x``factor`` over ``length`` steps, then stays
  there for ``hold`` steps (``hold=None``: to the end), then back.
- ``corrupt_scale``: the inputs of ``length`` batches scaled by ``factor`` (random tokens for
  token inputs).
- ``corrupt_labels``: the targets of ``length`` batches shuffled.
- ``loss_scale``: the loss is multiplied by ``factor`` before backward for ``length`` steps (a
  loss-scaling bug): the grad norm jumps, the logged (true) loss barely moves under Adam.
- ``overflow``: fp16 loss-scaler overflow: at ``steps`` the grad norm is non-finite and the
  optimizer step is skipped (benign).
- ``resume``: crash and resume from a checkpoint ``rewind`` steps back; the resumed job draws a
  different batch order; the first event file keeps the stale steps (benign).
- ``small_batch``: from ``start`` on, only a quarter of each batch is used (grad norm level
  rises, loss is fine: benign level change).
- ``grad_accum``: from ``start`` on the loss is summed instead of averaged over ``factor``
  micro-batches (grad norm x``factor`` for good; Adam is scale-invariant, so the loss is fine:
  a benign level change).
- ``lr_restart``: a warm restart: the cosine schedule restarts from its peak at ``start``
  (benign level change).
- ``natural``: no injection: a natural explosion of an unclipped vanilla RNN. Its
  counterfactual branches from the same run just before the onset and clips the gradient norm
  at ``factor`` (3x the healthy level) for ``length`` steps, then trains unclipped again.
  A natural explosion in a run with an injected fault (before it, or after its aftermath)
  branches with that fault kept and ``clip_window`` set instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BENIGN = {"overflow", "resume", "small_batch", "lr_restart", "grad_accum"}


@dataclass
class Fault:
    """One injected fault or benign event; see the module docstring for the kinds."""

    kind: str
    start: int
    length: int = 1
    factor: float = 1.0
    hold: int | None = None
    steps: tuple[int, ...] = ()
    rewind: int = 100
    crash_spike: bool = False
    extra: dict = field(default_factory=dict)
    # (start, stop, clip): a natural event's branch clip on top of this fault (any kind)
    clip_window: tuple[int, int, float] | None = None

    @property
    def benign(self) -> bool:
        return self.kind in BENIGN

    def lr(self, step: int, base: Callable[[int], float], restart: Callable[[int], float]
           ) -> float:
        """The learning rate at ``step`` given the clean schedule ``base``."""
        k, s, n = self.kind, self.start, self.length
        if k == "lr_spike" and s <= step < s + n:
            return base(step) * self.factor
        if k == "lr_jump" and step >= s:
            return base(step) * self.factor
        if k == "lr_ramp" and step >= s:
            if step < s + n:
                return base(step) * (1 + (self.factor - 1) * (step - s + 1) / n)
            if self.hold is None or step < s + n + self.hold:
                return base(step) * self.factor
        if k == "lr_restart" and step >= s:
            return restart(step - s)
        if k == "resume" and self.crash_spike and s - 8 <= step < s:
            return base(step) * self.factor
        return base(step)

    def loss_mult(self, step: int) -> float:
        if self.kind == "loss_scale" and self.start <= step < self.start + self.length:
            return self.factor
        if self.kind == "grad_accum" and step >= self.start:
            return self.factor
        return 1.0

    def clip(self, step: int) -> float | None:
        """``natural`` counterfactual: clip at ``factor`` inside [start, start + length), or at
        ``clip_window``'s clip inside its steps."""
        if self.kind == "natural" and self.start <= step < self.start + self.length:
            return self.factor
        if self.clip_window is not None and self.clip_window[0] <= step < self.clip_window[1]:
            return self.clip_window[2]
        return None

    def skip(self, step: int) -> bool:
        """True where the fp16 scaler overflows: the step is skipped."""
        return self.kind == "overflow" and step in self.steps

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor, task) -> tuple:
        k = self.kind
        active = self.start <= step < self.start + self.length
        if k == "corrupt_scale" and active:
            return task.corrupt_scale(x, self.factor), y
        if k == "corrupt_labels" and active:
            g = torch.Generator().manual_seed(step)
            perm = torch.randperm(y.shape[0], generator=g)
            if y.dim() == 2 and y.dtype == torch.int64:  # token targets: shuffle within rows too
                flat = y.reshape(-1)
                return x, flat[torch.randperm(flat.numel(), generator=g)].reshape(y.shape)
            return x, y[perm]
        if k == "small_batch" and step >= self.start:
            q = max(1, x.shape[0] // 4)
            return x[:q], y[:q]
        return x, y

    def describe(self) -> str:
        k = self.kind
        if k in ("lr_spike", "corrupt_scale", "loss_scale"):
            return f"{k} x{self.factor:g} for {self.length} steps at {self.start}"
        if k == "lr_ramp":
            hold = "to the end" if self.hold is None else f"for {self.hold} steps"
            return (f"lr ramp to x{self.factor:g} over {self.length} steps at {self.start}, "
                    f"held {hold}")
        if k == "grad_accum":
            return f"loss summed over {self.factor:g} micro-batches from {self.start} on"
        if k == "lr_jump":
            return f"lr x{self.factor:g} from {self.start} on"
        if k == "corrupt_labels":
            return f"shuffled labels for {self.length} steps at {self.start}"
        if k == "overflow":
            return f"fp16 overflow (step skipped, grad norm non-finite) at {list(self.steps)}"
        if k == "resume":
            spike = " after an lr spike" if self.crash_spike else ""
            return f"crash at {self.start}{spike}, resumed {self.rewind} steps back"
        return f"{k} at {self.start}"
