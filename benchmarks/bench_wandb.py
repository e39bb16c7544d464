"""W&B run-file read speed and memory: gradaudit vs wandb's own protobuf classes.

    python benchmarks/bench_wandb.py [--rows 500000] [--repeats 3]

Writes (once, cached under ``benchmarks/.cache/``) an offline run with the real ``wandb``
package: ``--rows`` ``run.log`` calls of the five keys the Hugging Face Trainer logs (loss, grad
norm, learning rate, epoch, ``train/global_step``). Each reader then runs in a fresh subprocess
(interpreter start and imports included), ``--repeats`` times; the table shows medians, points
per second, the ratio to gradaudit and the child's peak RSS, also as a multiple of the file size.

- gradaudit: ``gradaudit inspect --format json`` on the ``.wandb`` file (framing, checksums,
  history decoding, duplicate resolution, sort, tag choice: the full canonical RunSeries).
- wandb protobuf: the file's LevelDB framing in Python and ``wandb_internal_pb2.Record`` per
  record, each history value parsed from its JSON text into per-key lists (what a script of
  one's own does: wandb 0.31 ships no Python reader of run files), ``train/global_step``
  the step as gradaudit takes it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_ingest import CACHE, run_once
from bench_ingest import READERS as TB_READERS

REFERENCE = """
import json, struct, sys, zlib
from wandb.proto import wandb_internal_pb2
series, parts, n = {}, [], 0
with open(sys.argv[1], "rb") as f:
    data = f.read()
for first in range(0, len(data), 32768):  # LevelDB log blocks, the file header in the first
    block = data[first:first + 32768]
    at = 7 if first == 0 else 0
    while at + 7 <= len(block):
        crc, length, kind = struct.unpack_from("<IHB", block, at)
        parts.append(block[at + 7:at + 7 + length])
        at += 7 + length
        if zlib.crc32(bytes([kind]) + parts[-1]) != crc:
            raise SystemExit("bad checksum")
        if kind not in (1, 4):
            continue
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(b"".join(parts))
        parts = []
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {"/".join(i.nested_key) or i.key: i.value_json for i in rec.history.item}
        step = int(row.pop("train/global_step", row["_step"]))  # the trainer's step, as read
        for key, text in row.items():
            if not key.startswith("_"):
                series.setdefault(key, ([], []))[0].append(step)
                series[key][1].append(json.loads(text))
                n += 1
print(n)
"""

# interpreter + imports, and gradaudit's whole read (as for TensorBoard), then the reference
READERS = {name: cmd for name, cmd in TB_READERS.items()
           if name.startswith(("import only", "gradaudit"))}
READERS["wandb protobuf (Record.ParseFromString, json.loads)"] = [sys.executable, "-c",
                                                                  REFERENCE]


def make_run(rows: int) -> Path:
    """The cached run file with ``rows`` history rows (written once by wandb offline)."""
    folder = CACHE / f"wandb_{rows}"
    done = folder / "DONE"
    if done.exists():
        return Path(done.read_text())
    print(f"writing {rows} history rows with wandb (offline) to {folder} (once) ...",
          file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted write left
    folder.mkdir(parents=True)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(folder), "WANDB_CACHE_DIR": str(folder / "cache"),
           "WANDB_CONFIG_DIR": str(folder / "config"), "WANDB_DATA_DIR": str(folder / "data")}
    script = (
        "import math, sys, wandb\n"
        "s = wandb.Settings(console='off', save_code=False, disable_git=True,"
        " x_disable_stats=True, x_disable_meta=True)\n"
        "run = wandb.init(mode='offline', project='bench', settings=s)\n"
        "for i in range(int(sys.argv[1])):\n"
        "    run.log({'train/loss': 3.0 / (1 + i / 1e4) + 0.01 * math.sin(i),"
        " 'train/grad_norm': 1.0 + 0.1 * math.sin(i / 50) + (40.0 if i % 9973 == 0 else 0.0),"
        " 'train/learning_rate': 3e-4, 'train/epoch': i / 1000, 'train/global_step': i + 1})\n"
        "run.finish()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(rows)], env=env, check=True,
                   cwd=folder)
    files = [f for f in folder.rglob("*.wandb") if "latest-run" not in f.parts]
    if len(files) != 1:
        raise RuntimeError(f"expected one run file under {folder}, found {files}")
    done.write_text(str(files[0]))
    return files[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = make_run(args.rows)
    size = path.stat().st_size
    points = 4 * args.rows  # train/global_step is the step axis, not a metric
    results = []
    for name, cmd in READERS.items():
        times, rss = [], []
        for _ in range(args.repeats):
            t, r = run_once(cmd, str(path))
            times.append(t)
            rss.append(r)
        results.append((name, statistics.median(times), max(rss)))
        print(f"{name}: {statistics.median(times):.3f} s (runs "
              f"{', '.join(f'{t:.2f}' for t in times)})", file=sys.stderr)
    ga = results[1][1]
    print(f"\n{args.rows} rows ({points} metric points), {size / 1e6:.1f} MB, "
          f"python {sys.version.split()[0]}, {args.repeats} repeats, medians, whole process\n")
    print("| reader | median s | points/s | gradaudit speed-up | peak RSS MB | x file size |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t, r in results:
        mb = r / 1024
        if name.startswith("import"):
            print(f"| {name} | {t:.3f} | - | - | {mb:.0f} | - |")
            continue
        print(f"| {name} | {t:.3f} | {points / t:,.0f} | {t / ga:.1f}x | {mb:.0f} | "
              f"{r * 1024 / size:.2f} |")
    print(f"\ngradaudit vs wandb protobuf: {results[2][1] / ga:.1f}x faster, whole process"
          f" ({math.ceil(size / 1e6)} MB file)")


if __name__ == "__main__":
    main()
