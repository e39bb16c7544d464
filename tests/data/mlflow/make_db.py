"""Write ``mlflow.db.gz``: the runs of ``log_runs.py`` logged into MLflow's SQLite store by
MLflow itself, then read back with MLflow's own client to check gradaudit's reader on it.

    pip install mlflow   # the full package: its SQLite store needs SQLAlchemy and alembic
    python tests/data/mlflow/make_db.py
"""

from __future__ import annotations

import gzip
import math
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import log_runs  # noqa: E402

from gradaudit.adapters import mlflow_db  # noqa: E402
from gradaudit.adapters.base import Source  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        uri = f"sqlite:///{db}"
        mlflow.set_tracking_uri(uri)
        ids = log_runs.log_runs(mlflow)
        client = MlflowClient(uri)
        raw = {r.notes[0]: r for r in mlflow_db.read(Source(mlflow_db.FORMAT, db.name, (db,)))}
        checked = 0
        for name, run_ids in ids.items():
            for rid in run_ids:
                (run,) = [r for note, r in raw.items() if f"(id {rid})" in note]
                frame = run.points
                for key in client.get_run(rid).data.metrics:
                    ref = client.get_metric_history(rid, key)
                    mine = frame.filter(frame["tag"] == key)
                    assert mine.height == len(ref), (name, key)
                    for m, r in zip(mine.iter_rows(named=True), ref, strict=True):
                        v = r.value  # (MLflow hands +-inf back as +-1.797e308)
                        if abs(v) >= mlflow_db.INF_STORED:
                            v = math.copysign(math.inf, v)
                        assert (math.isnan(m["value"]) and math.isnan(v)) or m["value"] == v, (
                            name, key, m, r)
                        assert abs(m["wall_time"] - r.timestamp / 1000.0) < 1e-3, (name, key)
                        checked += 1
        with db.open("rb") as src, gzip.GzipFile(HERE / "mlflow.db.gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    print(f"mlflow {mlflow.__version__}: {len(ids)} run names, {checked} points checked "
          "against MlflowClient.get_metric_history; wrote mlflow.db.gz")


if __name__ == "__main__":
    main()
