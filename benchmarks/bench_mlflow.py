"""MLflow's two stores read by gradaudit against MLflow's own client.

    python benchmarks/bench_mlflow.py [--runs 10] [--steps 10000] [--repeat 3] [--keep DIR]

Writes ``--runs`` runs of ``--steps`` steps, each step logging four keys (``train/loss``,
``train/grad_norm``, ``train/learning_rate``, ``train/epoch``), with MLflow's own client
(``MlflowClient.log_batch``, 1,000 points a call) into a file store and into a SQLite store,
then reads every point back with ``gradaudit.read_runs`` and with what a user would otherwise
write: ``MlflowClient.get_metric_history`` for every run and key. Both must find the same number
of points. Prints the median time of ``--repeat`` reads and the ratio (the machine is shared and
noisy). Writing is slow (MLflow's SQLite store takes minutes for a million points):
``--keep DIR`` keeps the stores there and reuses them when they are there.
Needs the full ``mlflow`` package (its SQLite store needs SQLAlchemy).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import median_time

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # (MLflow 3 asks for it)

from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import gradaudit  # noqa: E402

KEYS = ("train/loss", "train/grad_norm", "train/learning_rate", "train/epoch")
BATCH_STEPS = 250  # x 4 keys: MLflow's 1,000 metrics per log_batch


def write(uri: str, runs: int, steps: int) -> float:
    """Log the runs into the store at ``uri``; returns the seconds it took."""
    client = MlflowClient(uri)
    exp = client.create_experiment("bench")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for r in range(runs):
        run = client.create_run(exp, run_name=f"run{r}")
        ts = 1_700_000_000_000
        for first in range(0, steps, BATCH_STEPS):
            batch = []
            for s in range(first, min(steps, first + BATCH_STEPS)):
                values = (2.0 + 0.01 * rng.normal(), 0.5 * np.exp(0.1 * rng.normal()), 1e-3,
                          s / 1000)
                batch += [Metric(k, float(v), ts + s, s) for k, v in zip(KEYS, values,
                                                                          strict=True)]
            client.log_batch(run.info.run_id, metrics=batch)
        client.set_terminated(run.info.run_id)
    return time.perf_counter() - t0


def read_gradaudit(path: Path) -> int:
    return sum(r.frame.height for r in gradaudit.read_runs([path]))


def read_mlflow(uri: str) -> int:
    client = MlflowClient(uri)
    n = 0
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=50_000):
            for key in run.data.metrics:
                n += len(client.get_metric_history(run.info.run_id, key))
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", default=None, help="keep (and reuse) the stores in this folder")
    args = ap.parse_args()
    for noisy in ("mlflow", "alembic"):  # (their INFO lines while creating the database)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp) / f"mlflow-{args.runs}x{args.steps}"
        where.mkdir(parents=True, exist_ok=True)
        stores = {"file store": (where / "mlruns", (where / "mlruns").as_uri()),
                  "SQLite": (where / "mlflow.db", f"sqlite:///{where / 'mlflow.db'}")}
        points = args.runs * args.steps * len(KEYS)
        print(f"{args.runs} runs x {args.steps} steps x {len(KEYS)} keys = {points:,} points; "
              f"median of {args.repeat}")
        print(f"{'store':<11}{'size MB':>9}{'gradaudit s':>13}{'MlflowClient s':>16}"
              f"{'ratio':>8}")
        for name, (path, uri) in stores.items():
            if not path.exists():
                secs = write(uri, args.runs, args.steps)
                print(f"  (wrote the {name} with MLflow in {secs:.0f} s)")
            size = path.stat().st_size if path.is_file() else sum(
                f.stat().st_size for f in path.rglob("*") if f.is_file())
            t_ga, n_ga = median_time(lambda p=path: read_gradaudit(p), args.repeat)
            t_ml, n_ml = median_time(lambda u=uri: read_mlflow(u), args.repeat)
            if n_ga != n_ml or n_ga != points:
                print(f"{name}: gradaudit read {n_ga} points, MLflow {n_ml}, {points} logged")
                return 1
            print(f"{name:<11}{size / 1e6:>9.0f}{t_ga:>13.2f}{t_ml:>16.2f}{t_ml / t_ga:>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
