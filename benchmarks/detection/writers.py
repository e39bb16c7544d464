"""Write logged series the way real trainers and exports do.

- TensorBoard event files via torch's ``SummaryWriter`` (renamed afterwards so no host name or
  real time stamp ends up in the file name; wall times are synthetic and deterministic).
- Parquet long tables ``step, tag, value`` via pyarrow.
- W&B chart CSV exports: ``Step``, ``<run> - <metric>``, ``__MIN``, ``__MAX``, bucketed.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

T0 = 1_700_000_000.0  # synthetic wall-clock origin (deterministic files)


def write_tensorboard(run_dir: Path, segments: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                      seconds_per_step: float = 0.5) -> list[str]:
    """One event file per segment (a resumed run has two), written in segment order."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, seg in enumerate(segments):
        t_start = T0 + 1000.0 * i
        with tempfile.TemporaryDirectory() as tmp:
            # the writer stamps its first record (file_version) with time.time(): pin it
            with mock.patch.object(time, "time", lambda t=t_start: t):
                w = SummaryWriter(log_dir=tmp, max_queue=1_000_000, flush_secs=3600)
            # interleave tags by step, as a trainer does
            rows = []
            for tag, (steps, vals) in seg.items():
                for s, v in zip(steps.tolist(), vals.tolist(), strict=True):
                    rows.append((s, tag, v))
            rows.sort(key=lambda r: r[0])
            for s, tag, v in rows:
                w.add_scalar(tag, v, global_step=int(s), walltime=t_start + s * seconds_per_step)
            w.close()
            (src,) = [p for p in Path(tmp).iterdir() if "tfevents" in p.name]
            name = f"events.out.tfevents.{int(T0) + 1000 * i}.bench.{i}.0"
            shutil.move(str(src), run_dir / name)
            names.append(name)
    return names


def write_parquet(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A long table (step int64, tag string, value float64), rows in step order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    steps, tags, vals = [], [], []
    for tag, (s, v) in series.items():
        steps.append(s.astype(np.int64))
        tags.extend([tag] * len(s))
        vals.append(v.astype(np.float64))
    st, va = np.concatenate(steps), np.concatenate(vals)
    tg = np.array(tags, dtype=object)
    order = np.argsort(st, kind="stable")
    table = pa.table({"step": st[order], "tag": pa.array(tg[order].tolist()).dictionary_encode(),
                      "value": va[order]})
    pq.write_table(table, path, compression="zstd")


def bucket(steps: np.ndarray, vals: np.ndarray, n_buckets: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """W&B-style buckets: (bucket's last step, last value, min, max)."""
    edges = np.linspace(0, len(steps), n_buckets + 1).round().astype(int)
    out_s, out_v, out_min, out_max = [], [], [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b <= a:
            continue
        out_s.append(steps[b - 1])
        out_v.append(vals[b - 1])
        out_min.append(np.min(vals[a:b]))
        out_max.append(np.max(vals[a:b]))
    return tuple(np.array(x) for x in (out_s, out_v, out_min, out_max))  # type: ignore[return-value]


def write_wandb_csv(path: Path, runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                    n_buckets: int) -> None:
    """One chart export holding every metric of every run (all runs share the step grid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["Step"]
    cols = []
    grid = None
    for run, metrics in runs.items():
        for metric, (s, v) in metrics.items():
            bs, bv, bmin, bmax = bucket(s, v, n_buckets)
            grid = bs if grid is None else grid
            header += [f"{run} - {metric}", f"{run} - {metric}__MIN", f"{run} - {metric}__MAX"]
            cols += [bv, bmin, bmax]
    assert grid is not None
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, s in enumerate(grid):
            w.writerow([int(s)] + [f"{c[i]:.7g}" for c in cols])
