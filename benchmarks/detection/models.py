"""Small real training tasks for the detection benchmark (CPU, one thread, deterministic).

Each task fixes its data and the batch order up front (a NumPy generator seeded per task), so a
run can be branched at any step and its twin sees exactly the same batches afterwards.

- ``mlp_cls``: an MLP classifier on a synthetic teacher-network task (Adam).
- ``mlp_reg``: an MLP regressor on a synthetic nonlinear target (SGD with momentum).
- ``char_lm``: a 2-layer causal transformer character LM on text taken from the Python standard
  library's own docstrings and the ``this`` module (no downloads) (AdamW).
- ``rnn``: a vanilla tanh RNN character LM on the same text (SGD): spiky, with natural
  explosions at a high learning rate.
- ``cnn_cls``: a conv net with BatchNorm on noisy, shifted 16x16 templates (SGD with momentum
  and weight decay): BatchNorm makes the loss scale-invariant in most weights, so an lr fault
  hurts the loss while the grad norm rises about 2x at most, and (in training mode, as the
  runs are) inputs scaled 10x give the same loss and gradients.
- ``lstm_lm``: an LSTM character LM on the same text (Adam).
"""

from __future__ import annotations

import codecs
import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def corpus_text(max_chars: int = 120_000) -> str:
    """Public-domain-ish English text from the standard library itself: docstrings + ``this``."""
    import collections
    import json
    import pathlib
    import string
    import textwrap

    zen = codecs.decode(_zen_source(), "rot13")  # the Zen of Python, as ``this`` decodes it
    parts = [zen]
    for mod in (collections, json, pathlib, string, textwrap, inspect, math):
        parts.append(inspect.getdoc(mod) or "")
        for name in sorted(dir(mod)):
            obj = getattr(mod, name, None)
            doc = inspect.getdoc(obj) if obj is not None else None
            if doc and not name.startswith("_"):
                parts.append(doc)
    text = "\n\n".join(parts)
    text = "".join(ch for ch in text if 32 <= ord(ch) < 127 or ch == "\n")
    return text[:max_chars]


def _zen_source() -> str:
    """The rot13 text of the ``this`` module without printing it on import."""
    import importlib.util

    spec = importlib.util.find_spec("this")
    assert spec is not None and spec.origin is not None
    src = open(spec.origin, encoding="utf-8").read()  # noqa: SIM115
    start = src.index('"""') + 3
    return src[start : src.index('"""', start)]


@dataclass
class Task:
    """A model factory, a fixed batch schedule and a loss."""

    name: str
    make_model: object
    make_optimizer: object
    batch: object  # step -> (x, y)
    loss: object  # (model, x, y) -> scalar tensor
    base_lr: float

    def corrupt_scale(self, x: torch.Tensor, k: float) -> torch.Tensor:
        """Inputs scaled by ``k`` (for token inputs: random tokens instead)."""
        if x.dtype in (torch.int64, torch.int32):
            g = torch.Generator().manual_seed(int(k * 1000) + 7)
            return torch.randint(0, int(x.max()) + 1, x.shape, generator=g)
        return x * k


def _rows_of(x: torch.Tensor, y: torch.Tensor, order: np.ndarray):
    """The batch of a step: the rows ``order[step]`` of a fixed data table."""

    def batch_fn(step: int):
        i = torch.from_numpy(order[step])
        return x[i], y[i]

    return batch_fn


def _class_loss(model, xb, yb):
    """Cross-entropy of a classifier's logits."""
    return nn.functional.cross_entropy(model(xb), yb)


def _schedule(n_data: int, batch: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    reps = math.ceil(steps * batch / n_data) + 1
    idx = np.concatenate([rng.permutation(n_data) for _ in range(reps)])
    return idx[: steps * batch].reshape(steps, batch)


def mlp_cls(seed: int, steps: int, batch: int = 32, lr: float = 1e-3, width: int = 128) -> Task:
    """MLP classifier, 32 -> width -> width -> 10, Adam, teacher labels with 10 % noise."""
    g = torch.Generator().manual_seed(1000 + seed)
    n, d, c = 8192, 32, 10
    x = torch.randn(n, d, generator=g)
    teacher = nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, c))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
        y = teacher(x).argmax(1)
    flip = torch.rand(n, generator=g) < 0.1
    y = torch.where(flip, torch.randint(0, c, (n,), generator=g), y)
    order = _schedule(n, batch, steps, seed)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, c))

    return Task("mlp_cls", make_model, lambda m, lr_: torch.optim.Adam(m.parameters(), lr=lr_),
                _rows_of(x, y, order), _class_loss, lr)


def mlp_reg(seed: int, steps: int, batch: int = 32, lr: float = 0.02) -> Task:
    """MLP regressor, 16 -> 64 -> 64 -> 1 on y = sin(w.x) + 0.5 (v.x)^2 / d + noise, SGD mom 0.9."""
    g = torch.Generator().manual_seed(2000 + seed)
    n, d = 8192, 16
    x = torch.randn(n, d, generator=g)
    w, v = torch.randn(d, generator=g) / math.sqrt(d), torch.randn(d, generator=g)
    y = (torch.sin(2 * x @ w) + 0.5 * (x @ v) ** 2 / d + 0.1 * torch.randn(n, generator=g))
    y = y.unsqueeze(1)
    order = _schedule(n, batch, steps, seed)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                             nn.Linear(64, 1))

    def loss_fn(model, xb, yb):
        return nn.functional.mse_loss(model(xb), yb)

    return Task("mlp_reg", make_model,
                lambda m, lr_: torch.optim.SGD(m.parameters(), lr=lr_, momentum=0.9),
                _rows_of(x, y, order), loss_fn, lr)


_TEXT_CACHE: dict[str, tuple[torch.Tensor, int]] = {}


def _encoded_text() -> tuple[torch.Tensor, int]:
    if "t" not in _TEXT_CACHE:
        text = corpus_text()
        chars = sorted(set(text))
        table = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([table[c] for c in text], dtype=torch.int64)
        _TEXT_CACHE["t"] = (data, len(chars))
    return _TEXT_CACHE["t"]


def _text_batches(seed: int, steps: int, batch: int, ctx: int, part: int = 0):
    data, vocab = _encoded_text()
    half = len(data) // 2
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, half - ctx - 1, size=(steps, batch))
    return data, vocab, starts, half


class TinyGPT(nn.Module):
    """A 2-layer pre-norm causal transformer over characters."""

    def __init__(self, vocab: int, ctx: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(ctx, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def _char_batches(data: torch.Tensor, starts: np.ndarray, ctx: int):
    """The batch of a step: windows of ``ctx + 1`` characters from ``starts[step]``, shifted by
    one for the targets."""

    def batch_fn(step: int):
        idx = torch.from_numpy(starts[step])[:, None] + torch.arange(ctx + 1)[None, :]
        chunk = data[idx]
        return chunk[:, :-1], chunk[:, 1:]

    return batch_fn


def _char_lm_loss(model, xb, yb):
    """Next-character cross-entropy of a model returning per-position logits."""
    logits = model(xb)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))


def char_lm(seed: int, steps: int, batch: int = 16, ctx: int = 48, lr: float = 3e-3) -> Task:
    """Transformer char LM, AdamW."""
    data, vocab, starts, half = _text_batches(seed, steps, batch, ctx)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return TinyGPT(vocab, ctx)

    batch_fn = _char_batches(data, starts, ctx)

    return Task("char_lm", make_model,
                lambda m, lr_: torch.optim.AdamW(m.parameters(), lr=lr_, weight_decay=0.01),
                batch_fn, _char_lm_loss, lr)


class CharRNN(nn.Module):
    """Embedding -> vanilla RNN (tanh or relu) -> linear."""

    def __init__(self, vocab: int, hidden: int = 96, nonlinearity: str = "tanh"):
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.rnn = nn.RNN(32, hidden, batch_first=True, nonlinearity=nonlinearity)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(idx))
        return self.head(out)


def rnn(seed: int, steps: int, batch: int = 16, ctx: int = 64, lr: float = 0.1,
        nonlinearity: str = "tanh", hidden: int = 96, momentum: float = 0.0) -> Task:
    """Vanilla RNN char LM trained with plain SGD (spiky; explodes naturally at a high lr)."""
    data, vocab, starts, half = _text_batches(seed, steps, batch, ctx)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return CharRNN(vocab, hidden, nonlinearity)

    batch_fn = _char_batches(data, starts, ctx)

    return Task("rnn", make_model,
                lambda m, lr_: torch.optim.SGD(m.parameters(), lr=lr_, momentum=momentum),
                batch_fn, _char_lm_loss, lr)


def cnn_cls(seed: int, steps: int, batch: int = 32, lr: float = 0.05) -> Task:
    """Conv net with BatchNorm, 1x16x16 -> 10 classes: each image one of 10 smoothed random
    templates, rolled by up to 3 pixels, plus unit noise; 5 % of the labels random. SGD with
    momentum 0.9 and weight decay 5e-4."""
    g = torch.Generator().manual_seed(3000 + seed)
    n, c = 6000, 10
    templates = nn.functional.avg_pool2d(torch.randn(c, 1, 16, 16, generator=g), 3, 1, 1)
    y = torch.randint(0, c, (n,), generator=g)
    shift = torch.randint(-3, 4, (n, 2), generator=g)
    x = templates[y].clone()
    for i in range(n):
        x[i] = torch.roll(x[i], (int(shift[i, 0]), int(shift[i, 1])), (1, 2))
    x = x * 1.5 + torch.randn(x.shape, generator=g)
    flip = torch.rand(n, generator=g) < 0.05
    y = torch.where(flip, torch.randint(0, c, (n,), generator=g), y)
    order = _schedule(n, batch, steps, seed)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, c))

    return Task("cnn_cls", make_model,
                lambda m, lr_: torch.optim.SGD(m.parameters(), lr=lr_, momentum=0.9,
                                               weight_decay=5e-4),
                _rows_of(x, y, order), _class_loss, lr)


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> linear."""

    def __init__(self, vocab: int, hidden: int = 96):
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.rnn = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(idx))
        return self.head(out)


def lstm_lm(seed: int, steps: int, batch: int = 16, ctx: int = 48, lr: float = 5e-3) -> Task:
    """LSTM char LM, Adam."""
    data, vocab, starts, _ = _text_batches(seed, steps, batch, ctx)

    def make_model() -> nn.Module:
        torch.manual_seed(seed)
        return CharLSTM(vocab)

    return Task("lstm_lm", make_model, lambda m, lr_: torch.optim.Adam(m.parameters(), lr=lr_),
                _char_batches(data, starts, ctx), _char_lm_loss, lr)


TASKS = {"mlp_cls": mlp_cls, "mlp_reg": mlp_reg, "char_lm": char_lm, "rnn": rnn,
         "cnn_cls": cnn_cls, "lstm_lm": lstm_lm}
