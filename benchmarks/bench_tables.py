"""Table read speed: gradaudit.read_runs vs pyarrow's own readers + the same unpivot in Polars.

    python benchmarks/bench_tables.py [--rows 1000000] [--metrics 5] [--repeat 3]

Writes a wide table (a step column + one float column per metric, a few nulls and NaNs) as
Parquet and as CSV into a temporary folder, then times, median of ``--repeat``:

- gradaudit: ``gradaudit.read_runs([file])`` (discovery, read, duplicate resolution, sort, tag
  choice: the full canonical RunSeries);
- baseline: ``pyarrow.parquet.read_table`` / ``pyarrow.csv.read_csv`` then ``pl.from_arrow`` and
  the same wide -> long unpivot with nulls dropped (no duplicate resolution, no sort).
- adapter only: the table adapter's own read (``parquet.read`` / ``csv_table.read``, points
  collected), without the canonical frame that ``gradaudit.series.canonical_frame`` builds.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from _timing import median_time

import gradaudit
from gradaudit.adapters import csv_table, parquet
from gradaudit.adapters.base import Source


def _table(rows: int, metrics: int) -> pa.Table:
    rng = np.random.default_rng(0)
    cols: dict[str, np.ndarray | pa.Array] = {"step": np.arange(rows, dtype=np.int64)}
    names = ["train/grad_norm", "train/loss", "train/learning_rate"] + [
        f"metric_{i}" for i in range(max(0, metrics - 3))
    ]
    for name in names[:metrics]:
        values = rng.lognormal(0.0, 0.3, rows)
        values[rng.integers(0, rows, rows // 1000)] = np.nan
        mask = np.zeros(rows, bool)
        mask[rng.integers(0, rows, rows // 100)] = True  # not logged at 1 % of rows
        cols[name] = pa.array(values, mask=mask)
    return pa.table(cols)


def _unpivot(df: pl.DataFrame) -> pl.DataFrame:
    return df.unpivot(index="step", variable_name="tag", value_name="value").filter(
        pl.col("value").is_not_null()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--metrics", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    table = _table(args.rows, args.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        pq_path = Path(tmp) / "wide.parquet"
        csv_path = Path(tmp) / "wide.csv"
        pq.write_table(table, pq_path)
        pacsv.write_csv(table, csv_path)
        print(
            f"wide table: {args.rows:,} rows x {args.metrics} metrics; parquet "
            f"{pq_path.stat().st_size / 1e6:.1f} MB, csv {csv_path.stat().st_size / 1e6:.1f} MB; "
            f"median of {args.repeat}"
        )

        def ours(path: Path) -> Callable[[], int]:
            return lambda: sum(r.frame.height for r in gradaudit.read_runs([path]))

        def base_pq() -> int:
            return _unpivot(pl.from_arrow(pq.read_table(pq_path))).height  # type: ignore[arg-type]

        def base_csv() -> int:
            # Only an empty cell is "not logged"; "nan" cells are logged NaNs (as gradaudit reads).
            opts = pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True)
            table = pacsv.read_csv(csv_path, convert_options=opts)
            return _unpivot(pl.from_arrow(table)).height  # type: ignore[arg-type]

        def adapter_only(mod: object, path: Path) -> Callable[[], int]:
            def run() -> int:
                raws = mod.read(Source(mod.FORMAT, path.name, (path,)))  # type: ignore[attr-defined]
                return sum(r.points.lazy().collect().height for r in raws)

            return run

        cases = (
            ("parquet", pq_path, base_pq, parquet),
            ("csv", csv_path, base_csv, csv_table),
        )
        for label, path, base, mod in cases:
            t_ours, n_ours = median_time(ours(path), args.repeat)
            t_adapt, n_adapt = median_time(adapter_only(mod, path), args.repeat)
            t_base, n_base = median_time(base, args.repeat)
            assert n_ours == n_base == n_adapt, (n_ours, n_base, n_adapt)
            print(
                f"{label:8s} points {n_ours:,}: read_runs {t_ours:.3f} s "
                f"({n_ours / t_ours / 1e6:.2f} M/s) | adapter only {t_adapt:.3f} s "
                f"({n_adapt / t_adapt / 1e6:.2f} M/s) | pyarrow+unpivot {t_base:.3f} s "
                f"({n_base / t_base / 1e6:.2f} M/s) | ratio read_runs {t_ours / t_base:.2f}x, "
                f"adapter {t_adapt / t_base:.2f}x"
            )


if __name__ == "__main__":
    main()
