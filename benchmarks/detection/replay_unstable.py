"""Replay gradaudit's clip options on runs unstable throughout (docs/findings.md, "Clip
suggestions": a run unstable throughout is suggested ``autoclip-p10``).

Each run is the benchmark's natural-explosion setup (``make_runs.NATURAL``: a vanilla tanh RNN
char LM, plain SGD, 20-step warm-up, cosine decay) at a seed and a peak learning rate, trained
unclipped. Its per-step grad norm, loss and lr are written to a CSV and audited from there
(``gradaudit.read_runs`` + ``gradaudit.audit_run``); then the run is trained again from step 0
with ``clip_grad_norm_`` at every clip option the audit lists. A threshold is judged by the final
loss: the mean per-step training loss over the last 100 steps (lower is better).

    python benchmarks/detection/replay_unstable.py                 # seeds 7-10, lr 3 and 4
    python benchmarks/detection/replay_unstable.py --seeds 7-8 --lrs 3 --json out.json

Prints, per run, whether the audit calls it unstable throughout, its suggestion and each
option's final loss; then, over the runs called unstable, the suggestion's final loss and
``p99-healthy``'s relative to the best option's. Needs torch (CPU); one thread, deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
import torch  # noqa: E402
from make_runs import NATURAL  # noqa: E402
from trainer import Schedule, train  # noqa: E402

import gradaudit  # noqa: E402
from gradaudit.clip import UNSTABLE_METHOD  # noqa: E402

FINAL = 100  # final loss = mean of the last FINAL per-step losses


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def _final(loss: np.ndarray) -> float:
    tail = loss[-FINAL:]
    return float(np.mean(tail)) if np.isfinite(tail).all() else float("inf")


def replay(seed: int, lr: float, cfg: dict) -> dict:
    """One run: trained unclipped, audited, and trained again at each option."""
    n = cfg["steps"]
    task = models.rnn(seed, n, lr=lr, **cfg["kw"])
    sched = Schedule(lr, cfg["warmup"], n)
    un = train(task, n, sched)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rnn-lr{lr:g}-s{seed}.csv"
        steps = np.arange(n)
        np.savetxt(path, np.column_stack([steps, un.grad, un.loss, un.lr]), delimiter=",",
                   header="step,grad_norm,loss,lr", comments="", fmt=["%d", "%.9g", "%.9g",
                                                                       "%.9g"])
        run = gradaudit.read_runs([str(path)])[0]
    audit = gradaudit.audit_run(run)
    clip = audit.clip
    out = {"seed": seed, "lr": lr, "status": audit.status, "episodes": len(audit.episodes),
           "healthy": audit.healthy_grad_norm, "suggested": clip.method,
           "unstable": clip.advice is not None and "unstable throughout" in clip.advice,
           "unclipped": _final(un.loss), "options": {}}
    for o in clip.options:
        out["options"][o.method] = {"threshold": o.threshold,
                                    "final": _final(train(task, n, sched, clip=o.threshold).loss)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="7-10", help="seed range, e.g. 7-10")
    ap.add_argument("--lrs", default="3,4", help="comma-separated peak learning rates")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = NATURAL[0]
    results = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for seed in _seeds(args.seeds):
            t = time.time()
            r = replay(seed, lr, cfg)
            results.append(r)
            best = min(r["options"].items(), key=lambda kv: kv[1]["final"])
            got = r["options"].get(r["suggested"], {}).get("final")
            print(f"lr {lr:g} seed {seed}: {r['status']}, {r['episodes']} episodes, "
                  f"{'UNSTABLE' if r['unstable'] else 'stable'}; unclipped {r['unclipped']:.3f}; "
                  f"suggested {r['suggested']} -> {got if got is None else round(got, 3)}; "
                  f"best {best[0]} -> {best[1]['final']:.3f} ({time.time() - t:.0f} s)",
                  flush=True)
            for m, o in sorted(r["options"].items(), key=lambda kv: kv[1]["threshold"]):
                print(f"    {m:18s} thr {o['threshold']:9.4g}  final {o['final']:.3f}")
    unstable = [r for r in results if r["unstable"]]
    if unstable:
        def rel(r: dict, m: str) -> float:
            best = min(o["final"] for o in r["options"].values())
            return r["options"][m]["final"] / best - 1
        sug = [rel(r, UNSTABLE_METHOD) for r in unstable]
        p99 = [rel(r, "p99-healthy") for r in unstable if "p99-healthy" in r["options"]]
        print(f"\n{len(unstable)} of {len(results)} runs unstable throughout; final loss above "
              f"the best option's: {UNSTABLE_METHOD} (suggested) median "
              f"{100 * np.median(sug):.1f} % (max {100 * max(sug):.1f} %), p99-healthy median "
              f"{100 * np.median(p99):.1f} % (max {100 * max(p99):.1f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
