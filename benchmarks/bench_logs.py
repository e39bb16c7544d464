"""Training stdout logs (Megatron, fairseq, HF Trainer) against the per-line Python parsers
users write.

    python benchmarks/bench_logs.py [--lines 1000000] [--repeat 3]

Builds one Megatron log (``iteration N/ M | field: value | ...`` lines, as the shipped
``sample_logs/megatron`` one writes them) and one fairseq ``--log-format json`` log (the
``train_inner`` lines of ``tests/data/fairseq/json1.log``, written by fairseq's own logging),
each of ``--lines`` training lines renumbered, and a Hugging Face Trainer stdout log laid out as
transformers 5.24 writes it with its bar in the same file (``tests/data/hf-stdout``: each line
after the bar's redraw, its epoch advancing), and reads them with ``gradaudit.read_runs`` and
with the parser a user would write: a regex split per Megatron line, ``json.loads`` per fairseq
line, ``ast.literal_eval`` per Trainer line (its step counted), all into Python lists of (step,
tag, value). Both must find the same number of points.
Prints the median time of ``--repeat`` reads and the ratio (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import tempfile
from pathlib import Path

from _timing import median_time

import gradaudit

ROOT = Path(__file__).resolve().parent.parent
MEGATRON = ROOT / "sample_logs" / "megatron" / "charlm-lr-spike.log"
FAIRSEQ = ROOT / "tests" / "data" / "fairseq" / "json1.log"
_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*\d+\s*\|(.*)")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf)$", re.I)


def _template(path: Path, needle: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if needle in line]


def _megatron_log(path: Path, lines: int) -> None:
    body = [line for line in _template(MEGATRON, "iteration") if _ITER.search(line)]
    with path.open("w") as fh:
        for i in range(lines):
            line = body[i % len(body)]
            fh.write(re.sub(r"iteration\s+\d+/", f"iteration {i + 1:8d}/", line) + "\n")


def _fairseq_log(path: Path, lines: int) -> None:
    body = _template(FAIRSEQ, "| train_inner |")
    with path.open("w") as fh:
        for i in range(lines):
            line = body[i % len(body)]
            fh.write(re.sub(r'"num_updates": "\d+"', f'"num_updates": "{i + 1}"', line) + "\n")


def _hf_log(path: Path, lines: int) -> None:
    per_epoch, bar = 5000, " 37%|###7      | {}/{} [00:10<00:17, 99.00it/s]"
    with path.open("w") as fh:
        for i in range(1, lines + 1):
            logs = {"loss": 3 + i % 97 / 100, "grad_norm": 0.5 + i % 89 / 100,
                    "learning_rate": 1e-4 * (1 - i / lines), "epoch": i / per_epoch}
            fh.write("\r" + bar.format(i - 1, lines) + "\r" + " " * 50 + "\r"
                     + str({k: f"{v:.4g}" for k, v in logs.items()}) + "\n")


def _hf_python(path: Path) -> int:
    points = []
    step = 0
    with path.open(newline="\n") as fh:
        for line in fh:
            at = line.find("{'loss'")
            if at < 0:
                continue
            step += 1
            for key, value in ast.literal_eval(line[at:]).items():
                try:
                    points.append((step, "train/" + key, float(value)))
                except ValueError:
                    pass
    return len(points)


def _megatron_python(path: Path) -> int:
    points = []
    with path.open() as fh:
        for line in fh:
            m = _ITER.search(line)
            if not m:
                continue
            step = int(m.group(1))
            for field in m.group(2).split("|"):
                key, sep, value = field.partition(":")
                value = value.strip()
                if sep and _NUMBER.match(value):
                    points.append((step, key.strip(), float(value)))
    return len(points)


def _fairseq_python(path: Path) -> int:
    points = []
    with path.open() as fh:
        for line in fh:
            if "| train_inner |" not in line:
                continue
            stats = json.loads(line.split("| train_inner |", 1)[1])
            step = int(float(stats.pop("num_updates")))
            for key, value in stats.items():
                if key in ("epoch", "update"):
                    continue
                try:
                    points.append((step, "train_inner/" + key, float(value)))
                except ValueError:
                    pass
    return len(points)


def _ours(path: Path) -> int:
    return sum(r.frame.height for r in gradaudit.read_runs([path]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("megatron", Path(tmp) / "train.log", _megatron_log, _megatron_python),
                 ("fairseq", Path(tmp) / "fairseq.log", _fairseq_log, _fairseq_python),
                 ("hf", Path(tmp) / "slurm-1.out", _hf_log, _hf_python)]
        for label, path, make, python in cases:
            make(path, args.lines)
            size = path.stat().st_size / 1e6
            t_ours, n_ours = median_time(lambda p=path: _ours(p), args.repeat)
            t_py, n_py = median_time(lambda p=path, f=python: f(p), args.repeat)
            # gradaudit keeps a repeated step's last value: the renumbered lines repeat none
            assert n_ours == n_py, (label, n_ours, n_py)
            print(f"{label:8s} {args.lines:,} lines, {size:.0f} MB, {n_ours:,} points: "
                  f"read_runs {t_ours:.2f} s | per-line Python {t_py:.2f} s | ratio "
                  f"{t_py / t_ours:.1f}x faster (median of {args.repeat})", flush=True)


if __name__ == "__main__":
    main()
