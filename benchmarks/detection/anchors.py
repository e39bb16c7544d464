"""The anchor rules gradaudit is measured against, as production training code applies them.

Each rule maps a run's grad-norm and loss series (logged steps, values) to the steps where it
fires; consecutive firings closer than ``MERGE`` steps are one event whose onset is the first
firing. Rules have no severity: every event counts as an explosion claim.

- ``zclip``: ZClip's z-score on the grad norm: EMA mean and variance (alpha 0.97, 25-step
  warm-up), fires when z > 2.5; the EMA is then updated with the clipped norm, as ZClip does.
- ``olmo_skip``: OLMo-core's skip-step: |x - mean| > 6 std over the previous 128 values, on the
  loss or the grad norm (at least 20 values in the window).
- ``median10``: the grad norm above 10x the median of the previous 100 values.
- ``megatron_spiky``: Megatron's spiky-loss check: loss > 10x the max of the first 100 values.
- ``kill_loss_spike``: llm-foundry's KillLossSpike: loss > 2x the mean of the previous 100
  values for more than 4 consecutive logged steps (onset = first of them).
- ``pelt``: PELT with the l2 cost (min_size 5, jump 5) on log10 of the grad norm with a
  BIC-style penalty 3 sigma^2 ln n (sigma from the MAD of first differences); only upward change
  points count (a spike's way down is not an onset). Run only on series of at most 5000 points.
  Runs ruptures ``Pelt(model="l2", min_size=5, jump=5)``; ``EXACT_PELT = False`` (score.py
  ``--fast-pelt``) uses ruptures' C ``KernelCPD(kernel="linear")`` instead: the same l2 cost,
  ~100x faster, slightly different change points (it handles ``jump`` differently).

Non-finite grad norms or losses make the grad-norm and loss rules fire, as they would in training.
"""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np

MERGE = 10
EXACT_PELT = True


def _events(steps: np.ndarray, fire: np.ndarray) -> list[int]:
    out: list[int] = []
    last = None
    for s in steps[fire]:
        s = int(s)
        if last is None or s - last > MERGE:
            out.append(s)
        last = s
    return out


def zclip(steps, g, loss=None, alpha: float = 0.97, z_thr: float = 2.5, warmup: int = 25):
    if g is None or len(g) == 0:
        return []
    fire = np.zeros(len(g), bool)
    init: list[float] = []
    mu = var = None
    for i, x in enumerate(g):
        if not np.isfinite(x):
            fire[i] = True
            continue
        if mu is None:
            init.append(x)
            if len(init) == warmup:
                mu, var = float(np.mean(init)), float(np.var(init))
            continue
        sd = max(var, 1e-30) ** 0.5
        z = (x - mu) / sd
        if z > z_thr:
            fire[i] = True
            x = mu + z_thr * sd
        mu = alpha * mu + (1 - alpha) * x
        var = alpha * var + (1 - alpha) * (x - mu) ** 2
    return _events(steps, fire)


def _rolling_z(x: np.ndarray, window: int = 128, sigma: float = 6.0, min_n: int = 20) -> np.ndarray:
    """|x - mean| > sigma * std over the previous ``window`` finite values; non-finite fires."""
    fire = ~np.isfinite(x)
    idx = np.flatnonzero(~fire)
    v = x[idx].astype(np.float64)
    if len(v) <= min_n:
        return fire
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    k = np.arange(len(v))
    lo = np.maximum(0, k - window)
    cnt = k - lo
    ok = cnt >= min_n
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c1[k] - c1[lo]) / cnt
        var = np.maximum((c2[k] - c2[lo]) / cnt - mean**2, 0.0)
        sd = np.sqrt(var)
        hit = ok & (sd > 0) & (np.abs(v - mean) > sigma * sd)
    fire[idx[hit]] = True
    return fire


def olmo_skip(steps_g, g, steps_l, loss):
    fired = []
    if g is not None and len(g):
        fired.append(steps_g[_rolling_z(g)])
    if loss is not None and len(loss):
        fired.append(steps_l[_rolling_z(loss)])
    if not fired:
        return []
    all_steps = np.unique(np.concatenate(fired))
    return _events(all_steps, np.ones(len(all_steps), bool))


def median10(steps, g, loss=None, factor: float = 10.0, window: int = 100):
    if g is None or len(g) == 0:
        return []
    fire = ~np.isfinite(g)
    idx = np.flatnonzero(~fire)
    v = g[idx]
    if len(v) > 10:
        pad = np.concatenate([np.full(window, np.nan), v])
        win = np.lib.stride_tricks.sliding_window_view(pad[:-1], window)  # previous values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows at the start
            med = np.nanmedian(win, axis=1) if len(win) else np.array([])
        cnt = np.minimum(np.arange(len(v)), window)
        hit = (cnt >= 10) & (v > factor * med)
        fire[idx[hit]] = True
    return _events(steps, fire)


def megatron_spiky(steps, loss, factor: float = 10.0, first: int = 100):
    if loss is None or len(loss) <= first:
        return []
    ref = np.nanmax(loss[:first])
    fire = ~np.isfinite(loss) | (loss > factor * ref)
    fire[:first] = False
    return _events(steps, fire)


def kill_loss_spike(steps, loss, factor: float = 2.0, window: int = 100, patience: int = 4):
    if loss is None or len(loss) == 0:
        return []
    buf: deque[float] = deque(maxlen=window)
    run_start, count, out = None, 0, []
    for i, x in enumerate(loss):
        high = not np.isfinite(x) or (len(buf) >= window // 2 and x > factor * np.mean(buf))
        if high:
            if count == 0:
                run_start = i
            count += 1
            if count == patience + 1:
                out.append(int(steps[run_start]))
        else:
            count = 0
        if np.isfinite(x):
            buf.append(x)
    return out


def pelt(steps, g, loss=None, max_n: int = 5000):
    if g is None or len(g) < 20 or len(g) > max_n:
        return []
    import ruptures as rpt

    y = np.log10(np.where(np.isfinite(g) & (g > 0), g, np.nan))
    if np.all(np.isnan(y)):
        return []
    hi = np.nanmax(y)
    y = np.where(np.isnan(y), hi, y)
    sigma = np.median(np.abs(np.diff(y))) / (0.6745 * np.sqrt(2)) + 1e-12
    pen = 3 * sigma**2 * np.log(len(y))
    if EXACT_PELT:
        algo = rpt.Pelt(model="l2", min_size=5, jump=5)
    else:
        algo = rpt.KernelCPD(kernel="linear", min_size=5, jump=5)
    bkps = [int(b) for b in algo.fit(y).predict(pen=pen)]
    out = []
    cps = [b for b in bkps if b < len(y)]
    bounds = [0] + cps + [len(y)]
    for k, b in enumerate(cps):
        before, after = y[bounds[k]:b], y[b:bounds[k + 2]]
        if after.mean() > before.mean():
            out.append(int(steps[b]))
    return out


ANCHORS = {
    "zclip": lambda sg, g, sl, lo: zclip(sg, g),
    "olmo_skip": lambda sg, g, sl, lo: olmo_skip(sg, g, sl, lo),
    "median10": lambda sg, g, sl, lo: median10(sg, g),
    "megatron_spiky": lambda sg, g, sl, lo: megatron_spiky(sl, lo),
    "kill_loss_spike": lambda sg, g, sl, lo: kill_loss_spike(sl, lo),
    "pelt": lambda sg, g, sl, lo: pelt(sg, g),
}
