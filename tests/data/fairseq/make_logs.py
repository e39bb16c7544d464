"""Write this folder's fairseq logs with fairseq 0.12.2's own logging code.

    python tests/data/fairseq/make_logs.py --fairseq-src fairseq-0.12.2 --out tests/data/fairseq

``--fairseq-src`` is the unpacked sdist (``pip download fairseq==0.12.2 --no-deps --no-binary
:all:``; ``tar xzf fairseq-0.12.2.tar.gz``). Only its ``fairseq/logging`` subpackage (``meters``,
``metrics``, ``progress_bar``) is used, imported from a copy under an empty ``fairseq``
package: the rest of fairseq needs its compiled extensions and is not needed to log. Needs
torch (the model, and ``progress_bar``'s ``SummaryWriter``).

The training loop is fairseq_cli/train.py's ``train``/``validate`` logging around a tiny MLP
(20 -> 64 -> 64 -> 4, AdamW at lr 1e-3, batches of 64, ``clip_grad_norm_`` at 1.0) on a
synthetic 4-class problem; the learning rate is 1000x its value for the 5 updates from
``--spike`` on. ``num_updates`` counts from 1. The metrics are logged as fairseq's trainer,
criterion and task log them (names, priorities, rounding, weights). Each run is one process:
fairseq's metrics and TensorBoard writers are module state.

Runs, one process each (``--run NAME`` runs one):

- ``interval10``: 3 epochs of 500 updates, spike at 700, ``--log-interval 10``, validation on
  the subsets ``valid`` and ``valid1`` after each epoch. One run logged by three bars at once
  (the same stats handed to each): ``json10.log`` (``--log-format json``), ``simple10.log``
  (``simple``), both in fairseq_cli's log format, and ``hydra10.log`` (``json`` in Hydra's
  default format, as ``fairseq-hydra-train`` logs).
- ``interval1``: 2 epochs of 50 updates, spike at 70, ``--log-interval 1``, ``json``, with
  ``--tensorboard-logdir``: ``json1.log`` and fairseq's own TensorBoard folder ``tb/`` (its
  ``TensorboardProgressBarWrapper``: a sub-folder per tag). The event files are renamed to
  hold no host name.
- ``past1e6``: a run resumed at num_updates 999,980 for 40 updates, ``--log-interval 5``:
  ``json5-past-1e6.log``, where ``format_stat``'s ``"{:g}"`` prints num_updates with 6
  significant digits (``1e+06``, ``1.00001e+06``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = ("interval10", "interval1", "past1e6")
PIPE_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"  # fairseq_cli/train.py
PIPE_DATES = "%Y-%m-%d %H:%M:%S"
HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job_logging


def _fairseq_logging(src: Path, into: Path) -> None:
    """Make ``fairseq.logging`` importable from ``into``: a copy of the sdist's subpackage."""
    version = (src / "fairseq" / "version.txt").read_text().strip()
    if version != "0.12.2":
        raise SystemExit(f"{src} is fairseq {version}, not 0.12.2")
    (into / "fairseq").mkdir()
    (into / "fairseq" / "__init__.py").write_text("")
    shutil.copytree(src / "fairseq" / "logging", into / "fairseq" / "logging")
    sys.path.insert(0, str(into))


def _data():  # noqa: ANN202 - (inputs, labels) tensors
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32000, 20, generator=g)
    w = torch.randn(20, 4, generator=g)
    y = (x @ w).argmax(1)
    noisy = torch.rand(32000, generator=g) < 0.1
    y[noisy] = torch.randint(0, 4, (int(noisy.sum()),), generator=g)
    return x, y


def _model():  # noqa: ANN202 - a torch module
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 4))


def _perplexity(loss: float) -> float:
    """fairseq.utils.get_perplexity (base 2, 2 decimals; inf past a float's range)."""
    from fairseq.logging.meters import safe_round

    try:
        return safe_round(2**loss, 2)
    except OverflowError:
        return float("inf")


def _handler(stream, fmt: str, datefmt: str | None) -> logging.Handler:  # noqa: ANN001
    h = logging.StreamHandler(stream)
    h.setFormatter(logging.Formatter(fmt, datefmt))
    return h


class _Outputs:
    """Progress bars, each logging into its own file: the root logger's handler is switched to
    a bar's file while it logs, so that one run's stats reach every bar as fairseq hands them
    to its one."""

    def __init__(self, out: Path, logs: list[tuple[str, str, str, str | None]]) -> None:
        self.logs = [(name, fmt, _handler((out / name).open("w"), style, dates))
                     for name, fmt, style, dates in logs]
        logging.root.setLevel(logging.INFO)

    def each(self):  # noqa: ANN201 - a generator
        """``(k, log format)`` of each bar k, the root logger writing into its file meanwhile."""
        for k, (_, fmt, handler) in enumerate(self.logs):
            logging.root.handlers = [handler]
            yield k, fmt

    def info(self, text: str) -> None:
        for _ in self.each():
            logging.getLogger("fairseq_cli.train").info(text)


def run(name: str, out: Path) -> None:
    import torch
    from fairseq.logging import metrics, progress_bar
    from torch import nn

    torch.set_num_threads(1)
    tb = None
    if name == "interval10":
        epochs, size, interval, spike, start = 3, 500, 10, 700, 0
        outputs = _Outputs(out, [("json10.log", "json", PIPE_FORMAT, PIPE_DATES),
                                 ("simple10.log", "simple", PIPE_FORMAT, PIPE_DATES),
                                 ("hydra10.log", "json", HYDRA_FORMAT, None)])
    elif name == "interval1":
        epochs, size, interval, spike, start = 2, 50, 1, 70, 0
        outputs = _Outputs(out, [("json1.log", "json", PIPE_FORMAT, PIPE_DATES)])
        tb = out / "tb"
        shutil.rmtree(tb, ignore_errors=True)
    else:
        epochs, size, interval, spike, start = 1, 40, 5, -1, 999_980
        outputs = _Outputs(out, [("json5-past-1e6.log", "json", PIPE_FORMAT, PIPE_DATES)])
    # what TensorboardProgressBarWrapper writes as its "sys.argv" text: no path of this machine
    sys.argv = ["fairseq-train", "--log-format", "json", "--log-interval", str(interval),
                "--valid-subset", "valid,valid1", "--clip-norm", "1.0"]
    x, y = _data()
    net = _model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    subsets = {"valid": slice(0, 2000), "valid1": slice(2000, 4000)}
    best: float | None = None  # checkpoint_utils.save_checkpoint.best, once a checkpoint is saved
    metrics.reset()
    num_updates = start
    metrics.log_start_time("wall", priority=790, round=0)
    for epoch in range(1, epochs + 1):
        with metrics.aggregate("train"):
            outputs.info(f"begin training epoch {epoch}")
            bars = [progress_bar.progress_bar(
                list(range(size)), log_format=fmt, log_interval=interval, epoch=epoch,
                tensorboard_logdir=str(tb) if tb else None, default_log_format="tqdm")
                for _, fmt in outputs.each()]
            for _ in zip(*bars, strict=True):  # (each bar iterated, as fairseq's one is)
                with metrics.aggregate("train_inner"):
                    metrics.log_start_time("train_wall", priority=800, round=0)
                    idx = torch.randint(0, 32000, (64,), generator=g)
                    lr = 1e-3 * (1000 if spike <= num_updates + 1 < spike + 5 else 1)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss = nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="sum")
                    opt.zero_grad()
                    (loss / 64).backward()
                    gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    num_updates += 1
                    # the criterion (base-2 loss), the task and the trainer, as fairseq logs them
                    metrics.log_scalar("loss", loss.item() / 64 / math.log(2), 64, round=3)
                    metrics.log_scalar("nll_loss", loss.item() / 64 / math.log(2), 64, round=3)
                    metrics.log_derived("ppl", lambda m: _perplexity(m["nll_loss"].avg))
                    metrics.log_speed("wps", 64, priority=180, round=1)
                    metrics.log_speed("ups", 1.0, priority=100, round=2)
                    metrics.log_scalar("wpb", 64, priority=180, round=1)
                    metrics.log_scalar("bsz", 64, priority=190, round=1)
                    metrics.log_scalar("num_updates", num_updates, weight=0, priority=200)
                    metrics.log_scalar("lr", lr, weight=0, priority=300)
                    metrics.log_scalar("gnorm", gnorm, priority=400, round=3)
                    metrics.log_scalar("clip", torch.where(gnorm > 1.0, gnorm.new_tensor(100),
                                                           gnorm.new_tensor(0)),
                                       priority=500, round=1)
                    metrics.log_stop_time("train_wall")
                if num_updates % interval == 0:
                    stats = metrics.get_smoothed_values("train_inner")
                    stats["wall"] = round(metrics.get_meter("default", "wall").elapsed_time, 0)
                    for k, _ in outputs.each():
                        bars[k].log(stats, tag="train_inner", step=num_updates)
                    metrics.reset_meters("train_inner")
            for k, (subset, rows) in enumerate(subsets.items()):
                outputs.info(f'begin validation on "{subset}" subset')
                with metrics.aggregate(new_root=True) as agg, torch.no_grad():
                    vl = nn.functional.cross_entropy(net(x[rows]), y[rows], reduction="sum")
                    n = rows.stop - rows.start
                    metrics.log_scalar("loss", vl.item() / n / math.log(2), n, round=3)
                    metrics.log_scalar("nll_loss", vl.item() / n / math.log(2), n, round=3)
                    metrics.log_derived("ppl", lambda m: _perplexity(m["nll_loss"].avg))
                stats = agg.get_smoothed_values()
                stats["num_updates"] = num_updates  # get_valid_stats
                if k == 0 and best is not None:
                    stats["best_loss"] = min(best, stats["loss"])
                for _, fmt in outputs.each():
                    progress_bar.progress_bar(
                        [0], log_format=fmt, log_interval=interval, epoch=epoch,
                        prefix=f"valid on '{subset}' subset",
                        tensorboard_logdir=str(tb) if tb else None, default_log_format="tqdm",
                    ).print(stats, tag=subset, step=num_updates)
                if k == 0:
                    best = stats["loss"] if best is None else min(best, stats["loss"])
            outputs.info(f"end of epoch {epoch} (average epoch stats below)")
            stats = metrics.get_smoothed_values("train")
            stats["wall"] = round(metrics.get_meter("default", "wall").elapsed_time, 0)
            for k, _ in outputs.each():
                bars[k].print(stats, tag="train", step=num_updates)
            metrics.reset_meters("train")
    outputs.info(f"done training in {metrics.get_meter('default', 'wall').elapsed_time:.1f} "
                 "seconds")
    progress_bar._close_writers()


def _rename_event_files(tb: Path) -> None:
    """``events.out.tfevents.<time>.<host>.<pid>.<n>`` -> ``...<time>.fairseq.<n>``."""
    for f in sorted(tb.rglob("events.out.tfevents.*")):
        parts = f.name.split(".")
        f.rename(f.with_name(".".join([*parts[:4], "fairseq", parts[-1]])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fairseq-src", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--run", choices=RUNS)
    args = ap.parse_args()
    if args.run is None:  # each run in a process of its own
        for name in RUNS:
            subprocess.run([sys.executable, __file__, "--fairseq-src", str(args.fairseq_src),
                            "--out", str(args.out), "--run", name], check=True)
        _rename_event_files(args.out / "tb")
        return
    with tempfile.TemporaryDirectory() as tmp:
        _fairseq_logging(args.fairseq_src.resolve(), Path(tmp))
        os.environ["TZ"] = "UTC"  # (fairseq stamps its lines in local time)
        time.tzset()
        run(args.run, args.out)


if __name__ == "__main__":
    main()
