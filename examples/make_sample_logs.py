#!/usr/bin/env python
"""Train tiny real models on CPU and write the logs gradaudit ships as ``sample_logs/``.

Three models (an MLP classifier on a synthetic task, a vanilla RNN forecasting noisy sine
waves, a two-layer character-level transformer LM on locally generated text) are trained for
1,000-1,500 steps each, some cleanly and some with a fault injected at a known step:

- ``lr_spike``: the learning rate is multiplied by a factor for a few steps (a scheduler bug);
- ``corrupt_batch``: one batch is corrupted (inputs scaled x1000, or an LM batch whose targets
  are shuffled).

Every step logs the total gradient norm BEFORE clipping (the value ``clip_grad_norm_`` returns,
as HF Trainer, Megatron-LM and others log it), the loss and the learning rate, written the way
real trainers write them: torch ``SummaryWriter`` event files (HF and Megatron tag names), W&B
offline ``.wandb`` run files, Parquet tables (long and wide), an HF ``trainer_state.json`` with
checkpoint copies, and a Megatron-LM stdout log. ``sample_logs/README.md`` and
``sample_logs/MANIFEST.json`` record the ground truth: which run had which fault at which step.

Deterministic (seeded, one thread, deterministic algorithms): two runs give the same numbers;
only wall times, elapsed-time fields and event-file name timestamps differ.

Usage::

    pip install torch==2.13.0 wandb pyarrow
    python examples/make_sample_logs.py --out sample_logs/

Needs torch, wandb and pyarrow; no network access (W&B runs in offline mode).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
FAKE_HOST = "sample-host"
FORBIDDEN = (b"/work/", b"/root/", b"/tmp/", b"/home/", b"/Users/")


# ----------------------------------------------------------------------------------------------
# Faults and the per-step log
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    """An injected fault: ``kind`` in {"lr_spike", "corrupt_batch"} at trainer step ``step``."""

    kind: str
    step: int
    factor: float = 1.0
    length: int = 1
    detail: str = ""

    def lr_factor(self, step: int) -> float:
        if self.kind == "lr_spike" and self.step <= step < self.step + self.length:
            return self.factor
        return 1.0

    def corrupts(self, step: int) -> bool:
        return self.kind == "corrupt_batch" and self.step <= step < self.step + self.length


@dataclasses.dataclass
class StepLog:
    """What a trainer logs each optimizer step (steps are 1-based, as HF and Megatron count)."""

    step: list[int] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)
    grad_norm: list[float] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    evals: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    eval_seconds: dict[int, float] = dataclasses.field(default_factory=dict)

    def add(self, step: int, loss: float, grad_norm: float, lr: float, seconds: float) -> None:
        self.step.append(step)
        self.loss.append(loss)
        self.grad_norm.append(grad_norm)
        self.lr.append(lr)
        self.seconds.append(seconds)

    def rows(self) -> Iterator[tuple[int, float, float, float]]:
        yield from zip(self.step, self.loss, self.grad_norm, self.lr, strict=True)

    def at(self, step: int) -> int:
        return self.step.index(step)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    lr_at: Callable[[int], float],
    steps: range,
    clip: float,
    fault: Fault | None,
    corrupt: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    log: StepLog,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int = 0,
) -> StepLog:
    """A plain training loop that logs the pre-clip total grad norm, the loss and the lr."""
    for step in steps:
        t0 = time.perf_counter()
        x, y = batch(step)
        if fault is not None and fault.corrupts(step):
            x, y = corrupt(x, y)
        lr = lr_at(step) * (fault.lr_factor(step) if fault else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)  # the norm BEFORE clipping
        opt.step()
        log.add(step, float(loss.item()), float(grad_norm.item()), lr, time.perf_counter() - t0)
        if evaluate is not None and eval_every and step % eval_every == 0:
            model.eval()
            t1 = time.perf_counter()
            with torch.no_grad():
                log.evals.append((step, evaluate(model)))
            log.eval_seconds[step] = time.perf_counter() - t1
    return log


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Model 1: an MLP classifier on a synthetic teacher task (HF Trainer conventions)
# ----------------------------------------------------------------------------------------------

MLP_STEPS = 1500
MLP_BATCH = 64
MLP_TRAIN = 32_000  # 500 steps per epoch, 3 epochs
MLP_LR = 1e-3
MLP_WARMUP = 50


class MLPTask:
    """A fixed dataset labelled by a random teacher network, with 10 % label noise."""

    def __init__(self, seed: int = 0) -> None:
        g = seeded(seed)
        w1, w2 = torch.randn(20, 32, generator=g), torch.randn(32, 4, generator=g)
        x = torch.randn(MLP_TRAIN + 2000, 20, generator=g)
        y = (torch.tanh(x @ w1) @ w2).argmax(1)
        flip = torch.rand(len(y), generator=g) < 0.1
        y = torch.where(flip, torch.randint(0, 4, (len(y),), generator=g), y)
        self.x, self.y = x[:MLP_TRAIN], y[:MLP_TRAIN]
        self.eval_x, self.eval_y = x[MLP_TRAIN:], y[MLP_TRAIN:]
        self.sampler_seed = seed
        self.per_epoch = MLP_TRAIN // MLP_BATCH

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step - 1, self.per_epoch)
        perm = torch.randperm(MLP_TRAIN, generator=seeded(1000 * self.sampler_seed + epoch))
        idx = perm[i * MLP_BATCH : (i + 1) * MLP_BATCH]
        return self.x[idx], self.y[idx]

    def evaluate(self, model: nn.Module) -> float:
        return float(nn.functional.cross_entropy(model(self.eval_x), self.eval_y).item())


def mlp_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def mlp_lr(step: int) -> float:
    """HF's linear schedule with warmup (to 0 at the last step)."""
    if step <= MLP_WARMUP:
        return MLP_LR * step / MLP_WARMUP
    return MLP_LR * max(0.0, (MLP_STEPS - step) / (MLP_STEPS - MLP_WARMUP)) + 1e-6


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def scale_inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x * 1e3, y


def train_mlp(fault: Fault | None, steps: range = range(1, MLP_STEPS + 1)) -> StepLog:
    task = MLPTask()
    model = mlp_model()
    opt = torch.optim.AdamW(model.parameters(), lr=MLP_LR, weight_decay=0.0)
    return train(model, opt, task.batch, ce_loss, mlp_lr, steps, 1.0, fault, scale_inputs,
                 StepLog(), task.evaluate, 500)


def train_mlp_resumed(crash_after: int, checkpoint: int) -> tuple[StepLog, StepLog]:
    """A clean MLP job that dies after ``crash_after`` steps and restarts from ``checkpoint``.

    The restarted job's sampler is reseeded (as a job restarted without the sampler state is),
    so the steps after the checkpoint see other batches than in the first attempt.
    """
    task = MLPTask()
    model = mlp_model()
    opt = torch.optim.AdamW(model.parameters(), lr=MLP_LR, weight_decay=0.0)
    first = StepLog()
    saved = None
    for step in range(1, crash_after + 1):
        train(model, opt, task.batch, ce_loss, mlp_lr, range(step, step + 1), 1.0, None,
              scale_inputs, first, task.evaluate, 500)
        if step == checkpoint:
            saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    assert saved is not None
    model = mlp_model()
    opt = torch.optim.AdamW(model.parameters(), lr=MLP_LR, weight_decay=0.0)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    task.sampler_seed = 1
    second = train(model, opt, task.batch, ce_loss, mlp_lr, range(checkpoint + 1, MLP_STEPS + 1),
                   1.0, None, scale_inputs, StepLog(), task.evaluate, 500)
    return first, second


# ----------------------------------------------------------------------------------------------
# Model 2: a vanilla RNN forecasting noisy sine waves
# ----------------------------------------------------------------------------------------------

RNN_STEPS = 1200
RNN_LR = 3e-3


def rnn_batch(step: int, batch: int = 32, length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = seeded(7_000_000 + step)
    freq = 0.1 + 0.4 * torch.rand(batch, 1, generator=g)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=g)
    t = torch.arange(length + 1, dtype=torch.float32)
    s = torch.sin(freq * t + phase) + 0.05 * torch.randn(batch, length + 1, generator=g)
    return s[:, :-1, None], s[:, 1:, None]


class SineRNN(nn.Module):
    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def mse_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def rnn_lr(step: int) -> float:
    return RNN_LR * min(1.0, step / 50)


def train_rnn(fault: Fault | None) -> StepLog:
    torch.manual_seed(2)
    model = SineRNN()
    opt = torch.optim.Adam(model.parameters(), lr=RNN_LR)
    return train(model, opt, rnn_batch, mse_loss, rnn_lr, range(1, RNN_STEPS + 1), 1.0, fault,
                 scale_inputs, StepLog())


# ----------------------------------------------------------------------------------------------
# Model 3: a tiny character-level transformer LM (Megatron-LM conventions)
# ----------------------------------------------------------------------------------------------

LM_STEPS = 1000
LM_BATCH = 16
LM_CTX = 64
LM_LR = 3e-3
LM_WARMUP = 100


def make_text(n_chars: int = 200_000, seed: int = 0) -> str:
    """Sentences from a small grammar, generated with a seeded PRNG (no download)."""
    r = random.Random(seed)
    subj = ["the model", "a gradient", "the optimizer", "every layer", "the loss",
            "a small network", "the learning rate", "each batch"]
    verb = ["grows", "shrinks", "explodes", "settles", "drifts", "recovers", "oscillates",
            "vanishes"]
    adv = ["slowly", "quickly", "again", "at last", "without warning", "step by step",
           "in silence"]
    tail = ["after warmup", "near the end", "in the first epoch", "when clipped", "under noise",
            "before the spike"]
    out: list[str] = []
    n = 0
    while n < n_chars:
        s = f"{r.choice(subj)} {r.choice(verb)} {r.choice(adv)}"
        if r.random() < 0.5:
            s += " " + r.choice(tail)
        if r.random() < 0.3:
            s += f", and {r.choice(subj)} {r.choice(verb)}"
        s = s[0].upper() + s[1:] + r.choice(".....!?") + (" " if r.random() < 0.8 else "\n")
        out.append(s)
        n += len(s)
    return "".join(out)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.ln1(x)
        x = x + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, vocab: int, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(LM_CTX, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((LM_CTX, LM_CTX), float("-inf")), 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        n = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(n))
        for block in self.blocks:
            x = block(x, self.mask[:n, :n])
        return self.head(self.ln(x))


class CharTask:
    def __init__(self) -> None:
        text = make_text()
        self.chars = sorted(set(text))
        data = torch.tensor([self.chars.index(c) for c in text])
        cut = int(len(data) * 0.9)
        self.train, self.valid = data[:cut], data[cut:]

    @staticmethod
    def _cut(data: torch.Tensor, g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(0, len(data) - LM_CTX - 1, (n,), generator=g)
        x = torch.stack([data[i : i + LM_CTX] for i in ix])
        y = torch.stack([data[i + 1 : i + LM_CTX + 1] for i in ix])
        return x, y

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cut(self.train, seeded(step), LM_BATCH)

    def evaluate(self, model: nn.Module) -> float:
        x, y = self._cut(self.valid, seeded(424242), 64)
        return float(lm_loss(model, x, y).item())


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


def shuffle_targets(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(y.numel(), generator=seeded(99))
    return x, y.flatten()[perm].view_as(y)


def lm_lr(step: int) -> float:
    """Linear warmup then cosine decay to 10 %, as Megatron's --lr-decay-style cosine."""
    if step <= LM_WARMUP:
        return LM_LR * step / LM_WARMUP
    frac = (step - LM_WARMUP) / (LM_STEPS - LM_WARMUP)
    return LM_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_charlm(task: CharTask, fault: Fault | None) -> StepLog:
    torch.manual_seed(3)
    model = CharLM(len(task.chars))
    opt = torch.optim.AdamW(model.parameters(), lr=LM_LR, weight_decay=0.1, betas=(0.9, 0.95))
    return train(model, opt, task.batch, lm_loss, lm_lr, range(1, LM_STEPS + 1), 1.0, fault,
                 shuffle_targets, StepLog(), task.evaluate, 250)


def n_params(task: CharTask) -> int:
    torch.manual_seed(3)
    return sum(p.numel() for p in CharLM(len(task.chars)).parameters())


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def f32(x: float) -> float:
    """The value as a float32 summary stores it."""
    return float(np.float32(x))


def rename_event_files(run_dir: Path, not_before: int = 0) -> list[Path]:
    """Replace the host name and pid in event-file names; keep the time stamp (made increasing)."""
    out = []
    for i, path in enumerate(sorted(run_dir.glob("events.out.tfevents.*"))):
        stamp = max(int(path.name.split(".")[3]), not_before + 1 if not_before else 0)
        new = run_dir / f"events.out.tfevents.{stamp:010d}.{FAKE_HOST}.1000.{i}"
        path.rename(new)
        out.append(new)
    return out


def write_tb_hf(run_dir: Path, log: StepLog, per_epoch: int) -> None:
    """Tags as HF Trainer's TensorBoardCallback writes them."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir), flush_secs=3600)
    evals = dict(log.evals)
    for step, loss, gn, lr in log.rows():
        writer.add_scalar("train/loss", round(loss, 4), step)
        writer.add_scalar("train/grad_norm", gn, step)
        writer.add_scalar("train/learning_rate", lr, step)
        writer.add_scalar("train/epoch", step / per_epoch, step)
        if step in evals:
            writer.add_scalar("eval/loss", evals[step], step)
    writer.close()


def write_tb_megatron(run_dir: Path, log: StepLog, batch: int) -> None:
    """Tags as Megatron-LM's training_log writes them (plus the ``vs samples`` copies)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir), flush_secs=3600)
    evals = dict(log.evals)
    for step, loss, gn, lr in log.rows():
        samples = step * batch
        writer.add_scalar("learning-rate", lr, step)
        writer.add_scalar("learning-rate vs samples", lr, samples)
        writer.add_scalar("batch-size", batch, step)
        writer.add_scalar("lm loss", loss, step)
        writer.add_scalar("lm loss vs samples", loss, samples)
        writer.add_scalar("loss-scale", 1.0, step)
        writer.add_scalar("grad-norm", gn, step)
        writer.add_scalar("grad-norm vs samples", gn, samples)
        if step in evals:
            writer.add_scalar("lm loss validation", evals[step], step)
            writer.add_scalar("lm loss validation vs samples", evals[step], samples)
    writer.close()


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


WANDB_KEEP = (".wandb",)


def write_wandb(out: Path, run_id: str, name: str, log: StepLog, style: str,
                config: dict[str, object]) -> Path:
    """Log through wandb in offline mode, then keep only the run's ``.wandb`` file.

    ``style="hf"`` logs as HF's WandbCallback (``train/*`` keys and ``train/global_step`` as
    the step metric, so ``_step`` counts log calls from 0); ``style="titan"`` logs
    ``loss_metrics/global_avg_loss``, ``grad_norm`` and ``lr`` with ``step=`` the trainer step.
    """
    import wandb

    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_DIR", None)
    out.mkdir(parents=True, exist_ok=True)
    with chdir(out):  # relative paths only: nothing machine-specific gets recorded
        settings = wandb.Settings(
            mode="offline", root_dir=".", host=FAKE_HOST, program="train.py",
            username="sample", disable_code=True, disable_git=True, save_code=False,
            x_disable_meta=True, x_disable_stats=True, x_disable_machine_info=True,
            x_save_requirements=False, console="off", disable_job_creation=True,
        )
        run = wandb.init(project="gradaudit-samples", name=name, id=run_id, dir=".",
                         config=config, settings=settings)
        if style == "hf":
            run.define_metric("train/global_step")
            run.define_metric("*", step_metric="train/global_step", step_sync=True)
            for step, loss, gn, lr in log.rows():
                run.log({"train/loss": round(loss, 4), "train/grad_norm": gn,
                         "train/learning_rate": lr, "train/epoch": step / RNN_STEPS,
                         "train/global_step": step})
        else:
            for step, loss, gn, lr in log.rows():
                run.log({"loss_metrics/global_avg_loss": loss, "grad_norm": gn, "lr": lr},
                        step=step)
        run.finish()
    wandb_dir = out / "wandb"
    run_dirs = [p for p in wandb_dir.iterdir() if p.is_dir() and not p.is_symlink()
                and p.name.endswith(f"-{run_id}")]
    assert len(run_dirs) == 1, run_dirs
    # A fixed folder name, so that a rerun overwrites the same path.
    fixed = wandb_dir / f"offline-run-20260101_000000-{run_id}"
    if fixed.exists() and fixed != run_dirs[0]:
        shutil.rmtree(fixed)
    run_dirs[0].rename(fixed)
    for item in list(fixed.iterdir()):
        if item.is_symlink() or item.is_file():
            if not item.name.endswith(WANDB_KEEP):
                item.unlink()
        else:
            shutil.rmtree(item)
    for item in wandb_dir.iterdir():  # debug.log links, the stale latest-run link
        if item.is_symlink():
            item.unlink()
    return fixed


def write_parquet_long(path: Path, log: StepLog, tags: dict[str, str]) -> None:
    """One row per (step, tag, value), tags as OLMo-core names them."""
    steps, names, values = [], [], []
    for step, loss, gn, lr in log.rows():
        for key, value in (("grad_norm", gn), ("loss", loss), ("lr", lr)):
            steps.append(step)
            names.append(tags[key])
            values.append(value)
    table = pa.table({"step": pa.array(steps, pa.int64()), "tag": pa.array(names, pa.string()),
                      "value": pa.array(values, pa.float64())})
    pq.write_table(table, path)


def write_parquet_wide(path: Path, log: StepLog) -> None:
    """One row per step, one column per metric (what ``run.scan_history()`` tables look like)."""
    table = pa.table({
        "step": pa.array(log.step, pa.int64()),
        "train/loss": pa.array(log.loss, pa.float64()),
        "train/grad_norm": pa.array(log.grad_norm, pa.float64()),
        "train/learning_rate": pa.array(log.lr, pa.float64()),
    })
    pq.write_table(table, path)


def hf_state(log: StepLog, upto: int, per_epoch: int, evals: dict[int, float],
             runtime: float, eval_size: int = 2000) -> dict[str, object]:
    """A ``TrainerState`` as HF's Trainer saves it (``logging_steps=1``)."""
    history: list[dict[str, object]] = []
    for step, loss, gn, lr in log.rows():
        if step > upto:
            break
        history.append({"epoch": step / per_epoch, "grad_norm": gn, "learning_rate": lr,
                        "loss": round(loss, 4), "step": step})
        if step in evals:
            sec = max(log.eval_seconds.get(step, 0.0), 1e-4)
            history.append({"epoch": step / per_epoch, "eval_loss": evals[step],
                            "eval_runtime": round(sec, 4),
                            "eval_samples_per_second": round(eval_size / sec, 3),
                            "eval_steps_per_second": round(eval_size / MLP_BATCH / sec, 3),
                            "step": step})
    final = upto == log.step[-1]
    if final:
        mean_loss = sum(log.loss) / len(log.loss)
        history.append({"epoch": upto / per_epoch, "step": upto, "total_flos": 0.0,
                        "train_loss": mean_loss, "train_runtime": round(runtime, 4),
                        "train_samples_per_second": round(upto * MLP_BATCH / runtime, 3),
                        "train_steps_per_second": round(upto / runtime, 3)})
    return {
        "best_global_step": None,
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": upto / per_epoch,
        "eval_steps": 500,
        "global_step": upto,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": 1,
        "max_steps": log.step[-1],
        "num_input_tokens_seen": 0,
        "num_train_epochs": math.ceil(log.step[-1] / per_epoch),
        "save_steps": 500,
        "stateful_callbacks": {"TrainerControl": {"args": {
            "should_epoch_stop": False, "should_evaluate": False, "should_log": False,
            "should_save": True, "should_training_stop": final}, "attributes": {}}},
        "total_flos": 0.0,
        "train_batch_size": MLP_BATCH,
        "trial_name": None,
        "trial_params": None,
    }


def write_hf(run_dir: Path, log: StepLog, per_epoch: int) -> None:
    """``checkpoint-N/trainer_state.json`` every 500 steps and the final one at the top."""
    runtime = sum(log.seconds)
    evals = dict(log.evals)
    run_dir.mkdir(parents=True, exist_ok=True)
    for upto in range(500, log.step[-1] + 1, 500):
        ckpt = run_dir / f"checkpoint-{upto}"
        ckpt.mkdir(exist_ok=True)
        state = hf_state(log, upto, per_epoch, evals, runtime)
        (ckpt / "trainer_state.json").write_text(
            json.dumps(state, indent=2, sort_keys=True) + "\n")
    state = hf_state(log, log.step[-1], per_epoch, evals, runtime)
    (run_dir / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def megatron_lines(log: StepLog, batch: int, params: int) -> Iterator[str]:
    """stdout of Megatron-LM's pretrain_gpt.py (log-interval 1, eval-interval 250)."""
    stamp = dt.datetime.now().replace(microsecond=0)

    def now(seconds: float = 0.0) -> str:
        return (stamp + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")

    total = log.step[-1]
    yield ("using world size: 1, data-parallel size: 1, context-parallel size: 1, "
           "tensor-model-parallel size: 1, pipeline-model-parallel size: 1")
    yield "> building GPT model ..."
    yield f" > number of parameters on (tensor, pipeline) model parallel rank (0, 0): {params}"
    yield f"[after model, optimizer, and learning rate scheduler are built] datetime: {now()} "
    yield "training ..."
    yield f"[before the start of training step] datetime: {now()} "
    evals = dict(log.evals)
    elapsed = 0.0
    for i, (step, loss, gn, lr) in enumerate(log.rows()):
        elapsed += log.seconds[i]
        s = f" [{now(elapsed)}]"
        s += f" iteration {step:8d}/{total:8d} |"
        s += f" consumed samples: {step * batch:12d} |"
        s += f" elapsed time per iteration (ms): {log.seconds[i] * 1000.0:.1f} |"
        s += f" learning rate: {lr:.6E} |"
        s += f" global batch size: {batch:5d} |"
        s += f" lm loss: {loss:.6E} |"
        s += f" loss scale: {1.0:.1f} |"
        s += f" grad norm: {gn:.3f} |"
        s += f" number of skipped iterations: {0:3d} |"
        s += f" number of nan iterations: {0:3d} |"
        yield s
        if step in evals:
            v = evals[step]
            msg = (f" validation loss at iteration {step} | lm loss value: {v:.6E} | "
                   f"lm loss PPL: {math.exp(min(20, v)):.6E} | ")
            yield "-" * (len(msg) + 1)
            yield msg
            yield "-" * (len(msg) + 1)
    yield f"[after training is done] datetime: {now(elapsed)} "


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------


def peak(log: StepLog, lo: int, hi: int) -> tuple[int, float]:
    """(step, grad norm) of the largest grad norm with lo <= step <= hi."""
    best = max((g, s) for s, g in zip(log.step, log.grad_norm, strict=True) if lo <= s <= hi)
    return best[1], best[0]


def entry(run: str, fmt: str, files: list[str], model: str, log: StepLog, fault: Fault | None,
          grad_tags: list[str], loss_tags: list[str], stored: Callable[[float], float],
          n_steps: int | None = None, **extra: object) -> dict[str, object]:
    """One MANIFEST.json record. ``checks`` are grad-norm values as stored in the file."""
    if fault is None:
        pk_step, pk = peak(log, 51, log.step[-1])
    else:
        pk_step, pk = peak(log, fault.step, fault.step + fault.length + 10)
    gn = np.asarray(log.grad_norm)
    after_warmup = gn[np.asarray(log.step) > 50]
    record: dict[str, object] = {
        "run": run,
        "format": fmt,
        "files": files,
        "model": model,
        "n_steps": n_steps if n_steps is not None else len(set(log.step)),
        "first_step": min(log.step),
        "last_step": max(log.step),
        "grad_norm_tags": grad_tags,
        "loss_tags": loss_tags,
        "fault": None if fault is None else {
            "kind": fault.kind, "step": fault.step, "length": fault.length,
            "factor": fault.factor, "detail": fault.detail},
        "checks": [{"what": "peak grad norm" if fault else "largest grad norm after warmup",
                    "step": pk_step, "grad_norm": stored(pk)}],
        "grad_norm_median_after_warmup": float(np.median(after_warmup)),
    }
    record.update(extra)
    return record


def megatron_stored(x: float) -> float:
    return float(f"{x:.3f}")


def build(out: Path) -> list[dict[str, object]]:
    manifest: list[dict[str, object]] = []
    per_epoch = MLP_TRAIN // MLP_BATCH

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # --- MLP, TensorBoard with HF tags -----------------------------------------------------
    hf_grad, hf_loss = ["train/grad_norm"], ["train/loss"]
    tb = out / "tensorboard"
    for name, fault in (
        ("mlp-clean", None),
        ("mlp-lr-spike", Fault("lr_spike", 700, 1000.0, 5,
                               "learning rate x1000 for steps 700-704 (a scheduler bug)")),
    ):
        say(f"tensorboard/{name}")
        log = train_mlp(fault)
        write_tb_hf(tb / name, log, per_epoch)
        files = [p.relative_to(out).as_posix() for p in rename_event_files(tb / name)]
        manifest.append(entry(f"tensorboard/{name}", "tensorboard", files, "mlp", log, fault,
                              hf_grad, hf_loss, f32))

    say("tensorboard/mlp-resumed")
    first, second = train_mlp_resumed(crash_after=1000, checkpoint=800)
    run_dir = tb / "mlp-resumed"
    write_tb_hf(run_dir, first, per_epoch)
    [a] = rename_event_files(run_dir)
    stamp_a = int(a.name.split(".")[3])
    tmp = run_dir / "_resumed"
    write_tb_hf(tmp, second, per_epoch)
    [b] = rename_event_files(tmp, not_before=stamp_a)
    b = b.rename(run_dir / b.name.replace(f"{FAKE_HOST}.1000.0", f"{FAKE_HOST}.1001.0"))
    tmp.rmdir()
    merged = StepLog()
    for s, l_, g, r in list(first.rows())[:800] + list(second.rows()):
        merged.add(s, l_, g, r, 0.0)
    i900a, i900b = first.at(900), second.at(900)
    manifest.append(entry(
        "tensorboard/mlp-resumed", "tensorboard",
        [p.relative_to(out).as_posix() for p in (a, b)], "mlp", merged, None, hf_grad, hf_loss,
        f32,
        resume={"crashed_after_step": 1000, "resumed_from_step": 800,
                "detail": "the first event file holds steps 1-1000; the job restarted from its "
                          "step-800 checkpoint with a reseeded sampler and wrote steps 801-1500 "
                          "to a second file, so steps 801-1000 were logged twice with different "
                          "values: the later write wins"},
        resume_checks=[{"tag": "train/grad_norm", "step": 900,
                        "first_attempt": f32(first.grad_norm[i900a]),
                        "value": f32(second.grad_norm[i900b])}]))

    # --- char LM, TensorBoard with Megatron tags ---------------------------------------------
    task = CharTask()
    say("tensorboard/charlm-clean")
    log = train_charlm(task, None)
    write_tb_megatron(tb / "charlm-clean", log, LM_BATCH)
    files = [p.relative_to(out).as_posix() for p in rename_event_files(tb / "charlm-clean")]
    manifest.append(entry("tensorboard/charlm-clean", "tensorboard", files, "charlm", log, None,
                          ["grad-norm"], ["lm loss"], f32))

    # --- char LM, Megatron-LM stdout ---------------------------------------------------------
    say("megatron/charlm-lr-spike.log")
    fault = Fault("lr_spike", 500, 30.0, 5, "learning rate x30 for iterations 500-504")
    log = train_charlm(task, fault)
    (out / "megatron").mkdir(parents=True, exist_ok=True)
    path = out / "megatron" / "charlm-lr-spike.log"
    path.write_text("\n".join(megatron_lines(log, LM_BATCH, n_params(task))) + "\n")
    manifest.append(entry("megatron/charlm-lr-spike.log", "megatron-log",
                          ["megatron/charlm-lr-spike.log"], "charlm", log, fault,
                          ["grad norm", "grad-norm"], ["lm loss"], megatron_stored))

    # --- char LM, Parquet long with OLMo-core tags -------------------------------------------
    say("parquet/charlm-corrupt-batch.parquet")
    fault = Fault("corrupt_batch", 600, 1.0, 1,
                  "the targets of the step-600 batch are shuffled (a misaligned batch)")
    log = train_charlm(task, fault)
    (out / "parquet").mkdir(parents=True, exist_ok=True)
    olmo = {"grad_norm": "optim/total grad norm", "loss": "train/CE loss",
            "lr": "optim/LR (group 0)"}
    write_parquet_long(out / "parquet" / "charlm-corrupt-batch.parquet", log, olmo)
    manifest.append(entry("parquet/charlm-corrupt-batch.parquet", "parquet",
                          ["parquet/charlm-corrupt-batch.parquet"], "charlm", log, fault,
                          [olmo["grad_norm"]], [olmo["loss"]], float, layout="long"))

    # --- RNN, W&B offline ----------------------------------------------------------------------
    rnn_config = {"model": "vanilla RNN (tanh), hidden 48", "optimizer": "Adam", "lr": RNN_LR,
                  "max_grad_norm": 1.0, "batch_size": 32, "seq_len": 40}
    say("wandb rnn-clean")
    log = train_rnn(None)
    folder = write_wandb(out, "rnnclean", "rnn-clean", log, "hf", rnn_config)
    files = [p.relative_to(out).as_posix() for p in sorted(folder.glob("*.wandb"))]
    manifest.append(entry(folder.relative_to(out).as_posix(), "wandb", files, "rnn", log, None,
                          ["train/grad_norm"], ["train/loss"], float,
                          note="HF WandbCallback keys; train/global_step is the trainer step "
                               "(_step counts log calls from 0, i.e. global_step - 1)"))

    say("wandb rnn-lr-spike")
    fault = Fault("lr_spike", 600, 30.0, 5, "learning rate x30 for steps 600-604")
    log = train_rnn(fault)
    folder = write_wandb(out, "rnnlrspike", "rnn-lr-spike", log, "titan", rnn_config)
    files = [p.relative_to(out).as_posix() for p in sorted(folder.glob("*.wandb"))]
    manifest.append(entry(folder.relative_to(out).as_posix(), "wandb", files, "rnn", log, fault,
                          ["grad_norm"], ["loss_metrics/global_avg_loss"], float,
                          note="torchtitan-style keys logged with step= the trainer step"))
    wandb_dir = out / "wandb"
    (wandb_dir / "latest-run").symlink_to(folder.name)  # relative, as wandb makes it

    # --- RNN, Parquet wide -----------------------------------------------------------------------
    say("parquet/rnn-corrupt-batch.parquet")
    fault = Fault("corrupt_batch", 700, 1e3, 1, "the step-700 batch's inputs are scaled x1000")
    log = train_rnn(fault)
    write_parquet_wide(out / "parquet" / "rnn-corrupt-batch.parquet", log)
    manifest.append(entry("parquet/rnn-corrupt-batch.parquet", "parquet",
                          ["parquet/rnn-corrupt-batch.parquet"], "rnn", log, fault,
                          ["train/grad_norm"], ["train/loss"], float, layout="wide"))

    # --- MLP, HF trainer_state.json --------------------------------------------------------------
    say("hf/mlp-corrupt-batch")
    fault = Fault("corrupt_batch", 900, 1e3, 1, "the step-900 batch's inputs are scaled x1000")
    log = train_mlp(fault)
    write_hf(out / "hf" / "mlp-corrupt-batch", log, per_epoch)
    files = sorted(p.relative_to(out).as_posix()
                   for p in (out / "hf" / "mlp-corrupt-batch").rglob("trainer_state.json"))
    manifest.append(entry("hf/mlp-corrupt-batch", "hf-trainer-state", files, "mlp", log, fault,
                          ["grad_norm", "train/grad_norm"], ["loss", "train/loss"], float))
    return manifest


# ----------------------------------------------------------------------------------------------
# README, manifest, checks
# ----------------------------------------------------------------------------------------------

MODELS = {
    "mlp": "MLP 20-64-64-4 (ReLU), AdamW lr 1e-3, warmup 50 + linear decay, batch 64, "
           "clip 1.0; a fixed 32,000-example teacher-labelled task with 10 % label noise",
    "rnn": "vanilla RNN (tanh, hidden 48) + linear head, Adam lr 3e-3, warmup 50, batch 32, "
           "clip 1.0; next-value forecasting of noisy sine waves (40 steps)",
    "charlm": "char-level transformer LM (2 pre-LN blocks, d 64, 4 heads, context 64, "
              "vocab 34), AdamW lr 3e-3 (beta2 0.95, wd 0.1), warmup 100 + cosine to 10 %, "
              "batch 16, clip 1.0; sentences from a small grammar generated with a seeded PRNG",
}


def write_readme(out: Path, manifest: list[dict[str, object]]) -> None:
    lines = [
        "# Sample logs",
        "",
        "Real training logs of tiny models trained on CPU by",
        "[`examples/make_sample_logs.py`](../examples/make_sample_logs.py)"
        " (seeded and deterministic;",
        "rerun it with `python examples/make_sample_logs.py --out sample_logs/`). Every step logs",
        "the total gradient norm **before clipping**, the loss and the learning rate. Some runs",
        "are clean; in the others a fault was injected at a known step: this table is the ground",
        "truth to check a report against. `MANIFEST.json` holds the same facts for programs.",
        "",
        "```",
        "gradaudit scan sample_logs/ --out report.html",
        "gradaudit inspect sample_logs/",
        "```",
        "",
        "| run | format | model | steps | grad-norm tag | injected fault |",
        "|---|---|---|---|---|---|",
    ]
    for m in manifest:
        fault = m["fault"]
        if fault is None:
            what = "none (clean)"
        else:
            what = f"**{fault['kind']}** at step {fault['step']}: {fault['detail']}"
        if "resume" in m:
            what += ("; resumed: crashed after step 1000, restarted from the step-800 checkpoint "
                     "(steps 801-1000 logged twice, the second event file wins)")
        grad = str(m["grad_norm_tags"][0])
        lines.append(f"| `{m['run']}` | {m['format']} | {m['model']} | "
                     f"{m['first_step']}-{m['last_step']} | `{grad}` | {what} |")
    lines += [
        "",
        "What to expect: an `lr_spike` makes the grad norm climb from the step after the spike",
        "starts (the norm logged at the spike's first step was computed before the big update)",
        "and leaves a lasting loss rise; a `corrupt_batch` is a one-step grad-norm spike",
        "(x9 to x1000) with a one-step loss jump, after which training carries on. Clean runs have",
        "no injected fault (their grad norm still moves, as real runs' do).",
        "",
        "Models:",
        "",
    ]
    lines += [f"- **{k}**: {v}." for k, v in MODELS.items()]
    lines += [
        "",
        "How each format was written:",
        "",
        "- `tensorboard/*`: torch `SummaryWriter.add_scalar` (float32 `simple_value`). MLP runs",
        "  use HF Trainer's tags (`train/grad_norm`, `train/loss`, `train/learning_rate`,",
        "  `train/epoch`, `eval/loss`); `charlm-clean` uses Megatron-LM's (`grad-norm`, `lm loss`,",
        "  `learning-rate`, their `... vs samples` copies indexed by consumed samples, and",
        "  `lm loss validation`). `mlp-resumed` holds two event files (a resume that rewinds).",
        "- `wandb/offline-run-…/run-<id>.wandb`: wandb 0.31 in offline mode. The run folders",
        "  were renamed to a fixed date and everything but the `.wandb` file was deleted",
        "  (debug logs, `files/`); `latest-run` is a relative link, as wandb makes it.",
        "  `rnnclean` logs as HF's WandbCallback (`train/global_step` is the step metric);",
        "  `rnnlrspike` logs torchtitan-style keys with `step=` the trainer step.",
        "- `parquet/charlm-corrupt-batch.parquet`: long table `step, tag, value` with OLMo-core",
        "  tag names; `parquet/rnn-corrupt-batch.parquet`: wide table, one column per metric.",
        "- `hf/mlp-corrupt-batch/`: `trainer_state.json` as HF's Trainer saves it",
        "  (`logging_steps=1`, eval every 500 steps), plus the copies in `checkpoint-500/` and",
        "  `checkpoint-1000/`.",
        "- `megatron/charlm-lr-spike.log`: Megatron-LM's `pretrain_gpt.py` stdout (log interval",
        "  1, validation every 250 iterations).",
        "",
        "Event-file names, wall times and elapsed-time fields differ between reruns; the",
        "numbers do not. Host names are replaced by `sample-host`; no file holds a local path.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def forbidden_hits(out: Path) -> list[str]:
    """Machine-specific strings in any file (bytes) or link target under ``out``."""
    needles = list(FORBIDDEN) + [str(out.resolve()).encode(), str(REPO).encode()]
    host = socket.gethostname()
    if len(host) >= 4:
        needles.append(host.encode())
    hits = []
    for path in sorted(out.rglob("*")):
        if path.is_symlink():
            target = os.readlink(path)
            if os.path.isabs(target):
                hits.append(f"{path}: link to an absolute path")
            continue
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n.decode()}" for n in needles if n in data]
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "sample_logs",
                        help="output folder (default: sample_logs/ in the repository)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for sub in ("tensorboard", "wandb", "parquet", "hf", "megatron"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    manifest = build(out)
    doc = {
        "about": "Ground truth for the runs in this folder, written by "
                 "examples/make_sample_logs.py. Steps are trainer steps (1-based). "
                 "fault.step is the step whose batch was corrupted or whose update first used "
                 "the spiked learning rate. checks[].grad_norm is the value as stored in the "
                 "file (float32 for TensorBoard, 3 decimals for the Megatron log).",
        "generator": "examples/make_sample_logs.py",
        "torch": torch.__version__.split("+")[0],
        "runs": manifest,
    }
    (out / "MANIFEST.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_readme(out, manifest)
    hits = forbidden_hits(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"wrote {len(manifest)} runs, {size / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s",
          flush=True)
    if hits:
        print("machine-specific strings found:\n  " + "\n  ".join(hits), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
