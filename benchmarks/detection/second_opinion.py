"""A second opinion on the engine: runs from a generator that shares no code with make_runs.py.

The labelled benchmark (``make_runs.py``) is where the engine's rules were chosen, so it cannot
show on its own that they hold for other training code. This script trains other models with
other optimisers, schedules and logging, then audits them:

- ``cnn``: a small CNN on synthetic 12x12 images, AdamW with weight decay, cosine decay;
- ``lstm``: a 2-layer LSTM character model, Adam, no clipping;
- ``tf``: a 2-layer transformer LM, AdamW, gradient accumulation over 2 micro-batches;
- ``tfclip``: the same with ``clip_grad_norm_(1.0)`` in training (the logged norm is pre-clip);
- ``tfsgdr``: the same with cosine warm restarts every 400 steps (benign lr jumps);
- ``lstmhf``: the LSTM logged as the Hugging Face Trainer does (``trainer_state.json`` every 10
  steps, ``loss`` the mean over the interval, ``grad_norm`` the logging step's own).

Each comes clean and with faults (an lr spike, one bad batch, a loss-scaling bug for 5 steps),
twins with the same seed and data. The true excess loss is the twin difference; for the natural
grad-norm spikes of the clean transformer runs (> 8x the trailing median) a branch clips just
that step, so their harm is measured too. TensorBoard files are written with torch's own
``SummaryWriter``.

    pip install torch==2.13.0 tensorboard
    python benchmarks/detection/second_opinion.py generate --out /tmp/second --seed 10
    python benchmarks/detection/second_opinion.py score /tmp/second

About 2 minutes per seed on one core. Nothing here is scored automatically: the output lists
each run's episodes beside its truth, for a reader to judge.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

HORIZON = 200


# ---------------------------------------------------------------------------------------------
# tasks: (model, optimizer, batch(step) -> (x, y), loss_fn, base lr)


def _text() -> str:
    rng = np.random.default_rng(123)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(200)]
    probs = rng.zipf(1.3, 200).astype(float)
    return " ".join(rng.choice(words, 60000, p=probs / probs.sum()))


def _char_batches(seed: int, batch: int):
    import torch

    text = _text()
    chars = sorted(set(text))
    idx = torch.tensor([chars.index(c) for c in text])

    def sample(step: int):
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        starts = torch.randint(0, len(idx) - 33, (batch,), generator=gen)
        seq = torch.stack([idx[s:s + 33] for s in starts.tolist()])
        return seq[:, :-1], seq[:, 1:]

    return sample, len(chars)


def cnn_task(seed: int):
    import torch
    from torch import nn

    protos = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(seed))

    def sample(step: int):
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        y = torch.randint(0, 10, (32,), generator=gen)
        return protos[y] + 1.5 * torch.randn(32, 1, 12, 12, generator=gen), y

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 36, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    return model, opt, sample, nn.CrossEntropyLoss(), 2e-3


def lstm_task(seed: int):
    import torch
    from torch import nn

    sample, vocab = _char_batches(seed, 16)
    torch.manual_seed(seed)

    class CharLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 32)
            self.rnn = nn.LSTM(32, 96, num_layers=2, batch_first=True)
            self.out = nn.Linear(96, vocab)

        def forward(self, x):
            return self.out(self.rnn(self.emb(x))[0])

    model = CharLSTM()
    ce = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, opt, sample, lambda o, y: ce(o.reshape(-1, vocab), y.reshape(-1)), 3e-3


def tf_task(seed: int):
    import torch
    from torch import nn

    sample, vocab = _char_batches(seed, 8)
    torch.manual_seed(seed)

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 64)
            self.pos = nn.Parameter(torch.zeros(32, 64))
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2)
            self.out = nn.Linear(64, vocab)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(32))

        def forward(self, x):
            return self.out(self.enc(self.emb(x) + self.pos, mask=self.mask, is_causal=True))

    model = TinyLM()
    ce = nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return model, opt, sample, lambda o, y: ce(o.reshape(-1, vocab), y.reshape(-1)), 1e-3


# ---------------------------------------------------------------------------------------------
# training


def schedule(kind: str, base: float, n: int, warm: int = 100):
    """Linear warm-up, then linear decay to 10 %, cosine to 0, or cosine restarts ("sgdr")."""

    def lr_at(t: int) -> float:
        if t < warm:
            return base * (t + 1) / warm
        if kind == "sgdr":
            p = ((t - warm) % 400) / 400
            return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))
        p = (t - warm) / max(1, n - warm)
        return base * (0.5 * (1 + math.cos(math.pi * p)) if kind == "cos" else 1 - 0.9 * p)

    return lr_at


def train(task, seed: int, n: int, sched: str, *, fault: tuple | None = None, accum: int = 1,
          clip: float | None = None, clip_at: dict[int, float] | None = None):
    """Per-step (loss, pre-clip grad norm, lr). ``fault``: ``("lr", start, steps, factor)``,
    ``("batch", step, 1, factor)`` (inputs x factor, or shuffled labels for 0), ``("scale",
    start, steps, factor)`` (the loss x factor in backward); ``clip_at``: clip those steps."""
    import torch

    model, opt, sample, loss_fn, base = task(seed)
    lr_at = schedule(sched, base, n)
    losses, norms, lrs = np.empty(n), np.empty(n), np.empty(n)
    kind, f0, flen, factor = fault if fault else (None, -1, 0, 1.0)
    for t in range(n):
        lr = lr_at(t) * (factor if kind == "lr" and f0 <= t < f0 + flen else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        total = 0.0
        for a in range(accum):
            x, y = sample(t * accum + a)
            if kind == "batch" and t == f0:
                if factor:
                    x = x * factor
                else:
                    y = y.flatten()[torch.randperm(y.numel())].reshape(y.shape)
            loss = loss_fn(model(x), y) / accum
            scale = factor if kind == "scale" and f0 <= t < f0 + flen else 1.0
            (loss * scale).backward()
            total += float(loss.detach())
        norm = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in model.parameters()
                              if p.grad is not None))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if clip_at and t in clip_at:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_at[t])
        opt.step()
        losses[t], norms[t], lrs[t] = total, float(norm), lr
    return losses, norms, lrs


# ---------------------------------------------------------------------------------------------
# writing


def write_tensorboard(path: Path, loss, norm, lr) -> None:
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True, exist_ok=True)
    w = SummaryWriter(log_dir=str(path))
    for t in range(loss.size):
        w.add_scalar("train/loss", loss[t], t)
        w.add_scalar("train/grad_norm", norm[t], t)
        w.add_scalar("train/lr", lr[t], t)
    w.close()


def write_trainer_state(path: Path, loss, norm, lr, every: int = 10) -> None:
    """As the HF Trainer logs: after step k, the mean loss of steps k-every+1..k."""
    path.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": k / loss.size, "grad_norm": float(norm[k - 1]),
                "learning_rate": float(lr[k - 1]),
                "loss": round(float(np.mean(loss[k - every:k])), 4), "step": k}
               for k in range(every, loss.size + 1, every)]
    state = {"global_step": int(loss.size), "max_steps": int(loss.size), "log_history": history}
    (path / "trainer_state.json").write_text(json.dumps(state, indent=2))


# ---------------------------------------------------------------------------------------------

SPECS = [  # name, task, steps, schedule, accumulation, clip, faults
    ("cnn", cnn_task, 1500, "cos", 1, None,
     [("lr", 700, 10, 20.0), ("batch", 800, 1, 30.0), ("scale", 900, 5, 30.0)]),
    ("lstm", lstm_task, 1200, "lin", 1, None,
     [("lr", 600, 10, 10.0), ("batch", 700, 1, 0.0), ("scale", 650, 5, 20.0)]),
    ("tf", tf_task, 1200, "lin", 2, None,
     [("lr", 600, 10, 30.0), ("batch", 700, 1, 0.0), ("scale", 650, 5, 30.0)]),
    ("tfclip", tf_task, 1200, "lin", 2, 1.0, [("lr", 600, 10, 30.0), ("scale", 650, 5, 30.0)]),
    ("tfsgdr", tf_task, 1300, "sgdr", 2, None, [("lr", 700, 10, 30.0)]),
    ("lstmhf", lstm_task, 1200, "lin", 1, None, [("lr", 600, 10, 10.0), ("batch", 700, 1, 0.0)]),
]


def natural_spikes(spec: tuple, seed: int, loss, norm, limit: int = 3) -> list[dict]:
    """Grad-norm spikes > 8x the trailing median of a clean run, each with its measured harm:
    a branch that clips just that step to 2x the median."""
    name, task, n, sched, accum, clip, _ = spec
    out: list[dict] = []
    for t in range(150, n - 50):
        med = float(np.median(norm[max(0, t - 50):t]))
        if norm[t] > 8 * med and not any(abs(t - o["step"]) < 20 for o in out):
            branch, _, _ = train(task, seed, min(n, t + HORIZON + 1), sched, accum=accum,
                                 clip=clip, clip_at={t: 2 * med})
            out.append({"step": t, "ratio": float(norm[t] / med),
                        "true_excess": float(np.mean(loss[t:t + HORIZON] - branch[t:t + HORIZON])),
                        "level": float(np.mean(branch[t:t + HORIZON]))})
            if len(out) == limit:
                break
    return out


def generate(out: Path, seed: int, only: set[str] | None) -> None:
    import torch

    torch.set_num_threads(1)
    labels = []
    for spec in SPECS:
        name, task, n, sched, accum, clip, faults = spec
        if only and name not in only:
            continue
        write = write_trainer_state if name.endswith("hf") else write_tensorboard
        clean = train(task, seed, n, sched, accum=accum, clip=clip)
        write(out / f"{name}-clean", *clean)
        natural = natural_spikes(spec, seed, clean[0], clean[1]) if name.startswith("tf") else []
        labels.append({"id": f"{name}-clean", "clean": True, "natural": natural})
        for fault in faults:
            run = train(task, seed, n, sched, fault=fault, accum=accum, clip=clip)
            rid = f"{name}-{fault[0]}-x{fault[3]:g}"
            write(out / rid, *run)
            t0 = fault[1]
            labels.append({
                "id": rid, "clean": False, "fault_step": t0,
                "true_excess": float(np.mean(run[0][t0:t0 + HORIZON] - clean[0][t0:t0 + HORIZON])),
                "level": float(np.mean(clean[0][t0:t0 + HORIZON])),
                "grad_ratio": float(np.max(run[1][t0:t0 + 20] / clean[1][t0:t0 + 20]))})
        print(f"{name}: {1 + len(faults)} runs", flush=True)
    (out / "labels.json").write_text(json.dumps(labels, indent=1))


def score(folder: Path) -> None:
    import gradaudit

    for lab in json.loads((folder / "labels.json").read_text()):
        (run,) = gradaudit.read_runs([folder / lab["id"]])
        audit = gradaudit.audit_run(run)
        truth = "" if lab["clean"] else (
            f"fault at {lab['fault_step']}: true excess {lab['true_excess']:+.4f} "
            f"({lab['true_excess'] / lab['level']:+.0%}), grad x{lab['grad_ratio']:.1f}")
        print(f"{lab['id']:18s} {audit.status:9s} {truth}")
        for nat in lab.get("natural", []):
            print(f"    natural spike at {nat['step']} ({nat['ratio']:.1f}x): true excess "
                  f"{nat['true_excess']:+.4f} ({nat['true_excess'] / nat['level']:+.1%})")
        for e in audit.episodes:
            ex = e.loss_impact.excess_loss if e.loss_impact else None
            ratio = "-" if e.peak_ratio is None else f"{e.peak_ratio:.1f}x"
            print(f"    {e.onset_step:5d} {e.kind:11s} {e.severity:9s} {ratio:>8s} excess "
                  f"{'-' if ex is None else f'{ex:+.4f}'}  ({', '.join(e.detected_by)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="train and write the runs")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--seed", type=int, default=10)
    g.add_argument("--only", default=None, help="comma-separated run families (cnn, tf, ...)")
    s = sub.add_parser("score", help="audit the runs and print them beside their truth")
    s.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.seed, set(args.only.split(",")) if args.only else None)
    else:
        score(args.folder)


if __name__ == "__main__":
    main()
