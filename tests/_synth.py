"""Synthetic runs with known, injected events (helpers for the engine tests)."""

from __future__ import annotations

import numpy as np
import polars as pl

from gradaudit.series import RunSeries


def run_series(steps, g=None, loss=None, lr=None, name="run", loss_steps=None) -> RunSeries:
    """A run of the given series at ``steps`` (the loss at ``loss_steps`` where it is logged
    at other steps)."""
    rows_s, rows_t, rows_v = [], [], []
    for tag, vals in (("grad_norm", g), ("loss", loss), ("lr", lr)):
        if vals is not None:
            at = loss_steps if tag == "loss" and loss_steps is not None else steps
            rows_s.append(np.asarray(at, np.int64))
            rows_t += [tag] * len(vals)
            rows_v.append(np.asarray(vals, np.float64))
    frame = pl.DataFrame({
        "step": np.concatenate(rows_s) if rows_s else np.empty(0, np.int64),
        "tag": pl.Series(rows_t, dtype=pl.String).cast(pl.Categorical),
        "value": np.concatenate(rows_v) if rows_v else np.empty(0),
        "wall_time": pl.Series([None] * len(rows_t), dtype=pl.Float64),
    })
    return RunSeries(name, "csv", [], frame, "grad_norm" if g is not None else None,
                     "loss" if loss is not None else None, "lr" if lr is not None else None)


def healthy(n=3000, seed=0, sigma=0.15, level=0.5, loss_noise=0.02):
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    g = level * np.exp(rng.normal(0, sigma, n))
    loss = 2.5 + 3.0 * (s + 20.0) ** -0.4 + rng.normal(0, loss_noise, n)
    return s, g, loss
