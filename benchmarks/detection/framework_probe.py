"""Blind probe on the real frameworks' own writers: the Hugging Face Trainer and Lightning.

The labelled benchmark (``make_runs.py``) trains with its own loop and writes each framework's
tags itself. This probe lets the frameworks write: a 2-layer GPT-2 character LM
(``transformers.GPT2LMHeadModel``, 64 wide, AdamW, clipping at 1.0) trained for 800 steps by
``transformers.Trainer`` (``report_to="tensorboard"``, checkpoints with ``trainer_state.json``)
and by ``lightning.Trainer`` (TensorBoardLogger and CSVLogger, ``grad_norm`` logged in
``on_before_optimizer_step``), clean and with one fault at step 400, logged every step and
every 10 steps. Each fault run's truth is its loss minus its clean twin's (same seed, same
data order, identical up to the fault) over the 200 steps from the fault, read from the
framework's own per-step log; gradaudit reads the run's folder as a user would.

    pip install torch==2.13.0 transformers lightning
    python benchmarks/detection/framework_probe.py --out /tmp/probe --seeds 1 2 3 4

Faults: ``lr-x30``/``lr-x10`` (the lr x30/x10 for 20 steps; the schedule the frameworks log is
unchanged, as with a bug outside it), ``bad-batch`` (5 batches of random tokens),
``loss-scale`` (the loss x30 for 10 steps; the Trainer logs the scaled loss, Lightning the
unscaled one). Not part of the test suite (it needs torch, transformers and lightning, and
about 20 s a run on one thread).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS, FAULT_AT, CTX, HORIZON = 800, 400, 64, 200
FAULTS = ("clean", "lr-x30", "lr-x10", "bad-batch", "loss-scale")
LR_FAULTS = {"lr-x30": (30.0, 20), "lr-x10": (10.0, 20)}


def _data():
    import torch

    sys.path.insert(0, str(HERE))
    from models import corpus_text

    text = corpus_text()
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([table[c] for c in text])
    starts = torch.randint(0, len(data) - CTX - 1, (20000,),
                           generator=torch.Generator().manual_seed(1234))
    return data, starts, len(chars)


def _model(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=CTX, n_embd=64, n_layer=2,
                                      n_head=2))


def train_hf(out: Path, seed: int, fault: str, every: int) -> None:
    """One run with ``transformers.Trainer``."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    data, starts, vocab = _data()

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(starts)

        def __getitem__(self, i: int) -> dict:
            x = data[starts[i]:starts[i] + CTX]
            return {"input_ids": x, "labels": x.clone()}

    class FaultTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            step = self.state.global_step
            if fault == "bad-batch" and FAULT_AT <= step < FAULT_AT + 5:
                # its own generator: the global one drives the dropout masks
                noise = torch.randint(0, vocab, inputs["input_ids"].shape,
                                      generator=torch.Generator().manual_seed(step))
                inputs = {**inputs, "input_ids": noise, "labels": torch.roll(noise, 1, dims=1)}
            res = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            if fault == "loss-scale" and FAULT_AT <= step < FAULT_AT + 10:
                res = (res[0] * 30, res[1]) if return_outputs else res * 30
            return res

    class LrFault(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
            mult = LR_FAULTS.get(fault)
            if mult and FAULT_AT <= state.global_step < FAULT_AT + mult[1]:
                # the schedule's lr, raised (the scheduler sets its own again after the step)
                for group, lr in zip(optimizer.param_groups, lr_scheduler.get_last_lr(),
                                     strict=True):
                    group["lr"] = lr * mult[0]

    torch.manual_seed(seed)
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=16,
                             learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=50,
                             logging_steps=every, report_to=["tensorboard"], save_steps=400,
                             seed=seed, data_seed=seed, use_cpu=True, disable_tqdm=True)
    FaultTrainer(model=_model(vocab), args=args, train_dataset=Windows(),
                 callbacks=[LrFault()]).train()


def train_lightning(out: Path, seed: int, fault: str, every: int) -> None:
    """One run with ``lightning.Trainer``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities import grad_norm

    data, starts, vocab = _data()

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(starts)

        def __getitem__(self, i: int):
            return data[starts[i]:starts[i] + CTX]

    class LM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.m = _model(vocab)

        def training_step(self, x, i):
            step = self.global_step
            if fault == "bad-batch" and FAULT_AT <= step < FAULT_AT + 5:
                x = torch.randint(0, vocab, x.shape, generator=torch.Generator().manual_seed(step))
            loss = self.m(input_ids=x, labels=x).loss
            self.log("train_loss", loss)
            if fault == "loss-scale" and FAULT_AT <= step < FAULT_AT + 10:
                loss = loss * 30
            return loss

        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self, norm_type=2))

        def on_train_batch_start(self, batch, i):
            mult = LR_FAULTS.get(fault)
            if mult and FAULT_AT <= self.global_step < FAULT_AT + mult[1]:
                lr = self.lr_schedulers().get_last_lr()[0]
                for group in self.optimizers().param_groups:
                    group["lr"] = lr * mult[0]

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=STEPS,
                                                        pct_start=0.06)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    L.seed_everything(seed)
    module = LM()
    trainer = L.Trainer(max_steps=STEPS, logger=[TensorBoardLogger(out), CSVLogger(out)],
                        log_every_n_steps=every, gradient_clip_val=1.0, accelerator="cpu",
                        devices=1, callbacks=[LearningRateMonitor(logging_interval="step")],
                        enable_progress_bar=False, enable_model_summary=False,
                        deterministic=True)
    loader = torch.utils.data.DataLoader(Windows(), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    trainer.fit(module, loader)


TRAIN = {"hf": train_hf, "lightning": train_lightning}  # --frameworks


def logged_loss(run: Path, framework: str) -> tuple[np.ndarray, np.ndarray]:
    """The per-step training loss as the framework logged it (steps, values)."""
    if framework == "hf":
        states = sorted(run.glob("checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.split("-")[1]))
        hist = [e for e in json.loads(states[-1].read_text())["log_history"] if "loss" in e]
        return np.array([e["step"] for e in hist]), np.array([e["loss"] for e in hist])
    (path,) = run.glob("lightning_logs/version_*/metrics.csv")
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train_loss")]
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["train_loss"])
                                                               for r in rows])


FAULT_STEPS = {"lr-x30": 20, "lr-x10": 20, "bad-batch": 5, "loss-scale": 10}


def truth(run: Path, clean: Path, framework: str, fault: str) -> tuple[float, float, float]:
    """``(excess, after, level)``: the mean loss over the horizon from the fault minus the clean
    twin's, the same from the end of the fault's steps on, and the twin's level before it."""
    s, v = logged_loss(run, framework)
    s0, v0 = logged_loss(clean, framework)
    assert np.array_equal(s, s0), "twins logged different steps (a run stopped early?)"
    pre = s < FAULT_AT
    assert np.array_equal(v[pre], v0[pre]), "twins differ before the fault"
    w = (s >= FAULT_AT) & (s < FAULT_AT + HORIZON)
    after = (s > FAULT_AT + FAULT_STEPS[fault]) & (s < FAULT_AT + HORIZON)
    level = float(np.mean(v0[(s0 >= FAULT_AT - 50) & pre]))
    return float(np.mean(v[w] - v0[w])), float(np.mean(v[after] - v0[after])), level


def audit(run: Path) -> list[str]:
    """gradaudit's episodes (and a note on copies) per run found in the folder, as a scan of
    it reads them."""
    import gradaudit

    out = []
    for r in gradaudit.scan([str(run)]).runs:
        found = ", ".join(
            f"{e.onset_step} {e.severity} {e.kind}"
            + (f" {e.loss_impact.excess_loss:+.3f}" if e.loss_impact and
               e.loss_impact.excess_loss is not None else "") for e in r.episodes) or "-"
        copy = " (logged twice)" if any("one training logged twice" in n for n in r.notes) else ""
        out.append(f"{r.run} ({r.format}): {found}{copy}")
    return out


def _train(run: Path, fw: str, seed: int, fault: str, every: int) -> None:
    """Train one run in its own process, into a temporary folder renamed when it finished (an
    interrupted run is never taken for a finished one); its output goes to ``run.log``."""
    part = run.with_name(run.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(run.with_name(run.name + ".log"), "w") as log:
        subprocess.run([sys.executable, __file__, "--out", str(part), "--one", fw, str(seed),
                        fault, str(every)], check=True, env=env, stdout=log, stderr=log)
    part.rename(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--frameworks", nargs="+", choices=sorted(TRAIN), default=sorted(TRAIN))
    ap.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    ap.add_argument("--every", type=int, nargs="+", default=[1, 10],
                    help="logging intervals (the truths come from every step where it is one)")
    ap.add_argument("--one", nargs=4, metavar=("FRAMEWORK", "SEED", "FAULT", "EVERY"),
                    help=argparse.SUPPRESS)  # train one run (in its own process)
    a = ap.parse_args()
    if a.one:
        fw, seed, fault, every = a.one
        TRAIN[fw](a.out, int(seed), fault, int(every))
        return
    faults = ["clean"] + [f for f in a.faults if f != "clean"]  # the twins first
    everies = sorted(set(a.every))
    a.out.mkdir(parents=True, exist_ok=True)
    for fw in a.frameworks:
        for seed in a.seeds:
            for every in everies:
                for fault in faults:
                    run = a.out / f"{fw}-s{seed}-every{every}-{fault}"
                    if not run.exists():
                        _train(run, fw, seed, fault, every)
                    head = run.name
                    if fault != "clean":
                        # the truth from the runs logged every step where there are (logging
                        # does not change training)
                        e = 1 if (a.out / f"{fw}-s{seed}-every1-{fault}").exists() else every
                        ex, after, level = truth(a.out / f"{fw}-s{seed}-every{e}-{fault}",
                                                 a.out / f"{fw}-s{seed}-every{e}-clean", fw,
                                                 fault)
                        head += (f"  truth {ex:+.3f} ({100 * ex / level:+.1f} % of the level; "
                                 f"after its faulty steps {100 * after / level:+.1f} %)")
                    print(head, flush=True)
                    for line in audit(run):
                        print("    " + line, flush=True)


if __name__ == "__main__":
    main()
