"""Run every benchmark in one go and print each one's table.

    pip install -e ".[bench]" && python benchmarks/run.py          # the full set
    python benchmarks/run.py --quick                                 # smaller sizes, fewer repeats

Each benchmark also runs on its own (see its --help). The machine these run on is shared and
noisy: every figure printed is a median over repeats, and comparisons are ratios measured in the
same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ("ingestion: TensorBoard vs tbparse / EventAccumulator", ["bench_ingest.py", "--repeats", "3"]),
    ("ingestion: Parquet/CSV vs pyarrow", ["bench_tables.py", "--repeat", "3"]),
    ("ingestion: W&B run files vs wandb's protobuf classes", ["bench_wandb.py", "--repeats", "3"]),
    ("ingestion: Megatron/fairseq stdout logs vs per-line Python",
     ["bench_logs.py", "--repeat", "3"]),
    ("ingestion: MLflow file store and SQLite vs MlflowClient",
     ["bench_mlflow.py", "--repeat", "3"]),
    ("engine: 1e6 steps, PELT vs ruptures", ["bench_engine.py", "--repeat", "3",
                                            "--ruptures-cap", "150"]),
    ("detection quality vs anchor rules", ["detection/score.py", "--by-base"]),
]
QUICK = [
    ("ingestion: TensorBoard vs tbparse / EventAccumulator",
     ["bench_ingest.py", "--events", "200000", "--repeats", "3"]),
    ("ingestion: Parquet/CSV vs pyarrow", ["bench_tables.py", "--rows", "200000", "--repeat", "3"]),
    ("ingestion: W&B run files vs wandb's protobuf classes",
     ["bench_wandb.py", "--rows", "100000", "--repeats", "3"]),
    ("ingestion: Megatron/fairseq stdout logs vs per-line Python",
     ["bench_logs.py", "--lines", "100000", "--repeat", "3"]),
    ("ingestion: MLflow file store and SQLite vs MlflowClient",
     ["bench_mlflow.py", "--runs", "4", "--steps", "2500", "--repeat", "3"]),
    ("engine: 1e6 steps, PELT vs ruptures", ["bench_engine.py", "--repeat", "3",
                                            "--ruptures-cap", "30"]),
    ("detection quality vs anchor rules", ["detection/score.py", "--by-base", "--fast-pelt"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, capped references")
    args = parser.parse_args()
    failed = 0
    for title, command in QUICK if args.quick else FULL:
        print(f"\n## {title}\n", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / command[0]), *command[1:]])
        print(f"\n({command[0]} exited {code} after {time.perf_counter() - start:.0f} s)")
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
