"""``ema-zscore``: the online z-score production trainers compute (ZClip), and OLMo's skip rule.

ZClip (Kumar et al. 2025) keeps an exponential moving mean ``m`` and variance ``v`` of the grad
norm, with ``alpha = 0.97``, initialised from the first ``warmup`` steps. A step is anomalous when
``z = (g - m) / sqrt(v) > z_threshold`` (2.5), and then the value fed to the EMA (and the norm the
gradient is clipped to) is the bound ``m + z_threshold * sqrt(v)``. Here, per finite step:

    bound_t = m_{t-1} + z_threshold * sqrt(v_{t-1});  c_t = min(g_t, bound_t)
    m_t = alpha m_{t-1} + (1 - alpha) c_t;            v_t = alpha v_{t-1} + (1 - alpha)(c_t - m_t)^2

The recursion is run with SciPy's linear filter (fixed-point sweeps, then chunks) and as a
scalar loop only where clips feed clips, so it is exact (to 1e-12) and fast. Non-finite
steps are skipped (the trainer skips them too).

Huge values: the recursions square the grad norm, so values are first limited to ``HUGE``
(1e150, far above any real norm; its square and a sum of 10^6 squares stay finite): a norm of
1e300 is then flagged exactly like one of 1e150, and nothing overflows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

ID = "ema-zscore"
HUGE = 1e150  # values are limited to +-HUGE before squaring (see module doc)


def _finite_limited(values: np.ndarray) -> np.ndarray:
    """``values`` as float64 with finite entries limited to ``[-HUGE, HUGE]``."""
    v = np.asarray(values, dtype=np.float64)
    fin = np.isfinite(v)
    if fin.any() and np.abs(v[fin]).max() > HUGE:
        v = np.where(fin, np.clip(v, -HUGE, HUGE), v)
    return v


@dataclass
class EmaZ:
    """Per-step output of :func:`ema_zscore`; NaN during warm-up and at non-finite steps."""

    z: np.ndarray
    bound: np.ndarray
    flag: np.ndarray  # z > z_threshold
    final_bound: float | None  # the clip bound after the last step (ZClip's threshold now)


def ema_zscore(
    grad_norm: np.ndarray,
    *,
    alpha: float = 0.97,
    z_threshold: float = 2.5,
    warmup: int = 25,
) -> EmaZ:
    """ZClip's EMA z-score of the grad norm, fed clipped values (see module doc)."""
    g_all = _finite_limited(grad_norm)
    n_all = g_all.size
    z_all = np.full(n_all, np.nan)
    b_all = np.full(n_all, np.nan)
    ok = np.isfinite(g_all)
    g = g_all[ok]
    n = g.size
    if n <= warmup or warmup < 2:
        return EmaZ(z_all, b_all, np.zeros(n_all, bool), None)
    mu = float(g[:warmup].mean())
    var = float(g[:warmup].var())
    zs = np.full(n, np.nan)
    bs = np.full(n, np.nan)
    zs[warmup:], bs[warmup:], mu, var = _run(g[warmup:], mu, var, float(alpha), z_threshold)
    z_all[ok] = zs
    b_all[ok] = bs
    final = mu + z_threshold * var ** 0.5
    with np.errstate(invalid="ignore"):
        flag = z_all > z_threshold
    return EmaZ(z_all, b_all, flag, float(final) if np.isfinite(final) else None)


def _run(tail: np.ndarray, mu: float, var: float, a: float,
         z_threshold: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """ZClip's recursion over the finite values ``tail`` from state ``(mu, var)``: per-step z
    and bound, and the state after the last step."""
    c1 = 1.0 - a
    n = tail.size
    zs = np.full(n, np.nan)
    bs = np.full(n, np.nan)
    # Fixed-point sweeps over the whole series: feed clipped values, recompute the EMAs. When
    # two sweeps agree on a prefix (to 1e-12 relative; a clip's influence decays as alpha^k),
    # that prefix is the recursion; a stubborn remainder
    # (e.g. a long divergence, one clip feeding the next) is finished by the chunked recursion.
    c = tail.copy()
    start = 0
    mu0, var0 = mu, var
    for _ in range(30):
        part = c[start:]
        m_seg, v_seg, bound = _sweep(part, mu0, var0, a, c1, z_threshold)
        c_new = np.minimum(tail[start:], bound)
        diff = np.flatnonzero(np.abs(c_new - part) > 1e-12 * np.abs(part))
        c[start:] = c_new
        k = part.size if diff.size == 0 else int(diff[0])
        if k > 0:  # the prefix [start, start + k) is settled: record it, move the state on
            with np.errstate(divide="ignore", invalid="ignore"):
                sd_prev = (bound[:k] - np.concatenate(([mu0], m_seg[:k - 1]))) / z_threshold
                zs[start:start + k] = (tail[start:start + k] - (
                    bound[:k] - z_threshold * sd_prev)) / sd_prev
            bs[start:start + k] = bound[:k]
            mu0, var0 = float(m_seg[k - 1]), float(v_seg[k - 1])
            start += k
        if diff.size == 0:
            break
    mu, var = mu0, var0
    pos, chunk = start, 64
    while pos < n:
        end = min(n, pos + chunk)
        seg = tail[pos:end]
        m_seg = lfilter([c1], [1.0, -a], seg, zi=[a * mu])[0]
        v_seg = lfilter([c1], [1.0, -a], (seg - m_seg) ** 2, zi=[a * var])[0]
        m_prev = np.concatenate(([mu], m_seg[:-1]))
        sd_prev = np.sqrt(np.maximum(np.concatenate(([var], v_seg[:-1])), 0.0))
        bound = m_prev + z_threshold * sd_prev
        viol = seg > bound
        k = int(np.argmax(viol)) if viol.any() else seg.size
        with np.errstate(divide="ignore", invalid="ignore"):
            zs[pos:pos + k] = (seg[:k] - m_prev[:k]) / sd_prev[:k]
        bs[pos:pos + k] = bound[:k]
        if k == seg.size:
            mu, var = float(m_seg[-1]), float(v_seg[-1])
            pos, chunk = end, min(chunk * 2, 1 << 16)
            continue
        if k > 0:
            mu, var = float(m_seg[k - 1]), float(v_seg[k - 1])
        t = pos + k
        while t < n:  # scalar recursion while steps get clipped
            sd = var ** 0.5
            b = mu + z_threshold * sd
            gt = float(tail[t])
            bs[t] = b
            zs[t] = (gt - mu) / sd if sd > 0 else (np.inf if gt > mu else 0.0)
            cc = gt if gt <= b else b
            mu = a * mu + c1 * cc
            var = a * var + c1 * (cc - mu) ** 2
            t += 1
            if cc == gt:
                break
        pos, chunk = t, 64
    return zs, bs, mu, var


def ema_zscore_spans(
    grad_norm: np.ndarray,
    spans: list[tuple[int, int]],
    *,
    alpha: float = 0.97,
    z_threshold: float = 2.5,
    warmup: int = 25,
    burn_in: int = 1000,
) -> tuple[np.ndarray, float | None]:
    """:func:`ema_zscore`'s ``flag`` inside the index ranges ``spans`` (False elsewhere) and its
    ``final_bound``, computing the recursion only over each span and the ``burn_in`` finite
    steps before it (and before the end).

    A window's state is started from the mean and variance of the 100 finite values before it
    (winsorised at 5 MAD-sigmas); the EMA forgets a starting state as ``alpha^burn_in``
    (6e-14 for 0.97 and 1000 steps), so the flags equal the full recursion's except inside a
    stretch where every step of the burn-in is clipped. Short series run the full recursion.
    """
    g_all = _finite_limited(grad_norm)
    n_all = g_all.size
    ok = np.flatnonzero(np.isfinite(g_all))
    g = g_all[ok]
    n = g.size
    far = warmup + burn_in + 100
    if n <= 3 * far:
        full = ema_zscore(g_all, alpha=alpha, z_threshold=z_threshold, warmup=warmup)
        return full.flag, full.final_bound
    wins = []
    for a, b in spans:
        ca = int(np.searchsorted(ok, a))
        cb = int(np.searchsorted(ok, b, side="right")) - 1
        if cb >= ca:
            wins.append([ca - burn_in, cb])
    wins.append([n - 1 - burn_in, n - 1])
    wins.sort()
    merged: list[list[int]] = []
    for w in wins:
        if w[0] < far:
            w[0] = 0
        if merged and w[0] <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], w[1])
        else:
            merged.append(w)
    flag = np.zeros(n_all, bool)
    final = None
    for s0, s1 in merged:
        if s0 == 0:
            if s1 + 1 <= warmup:
                continue
            mu, var = float(g[:warmup].mean()), float(g[:warmup].var())
            s0 = warmup
        else:
            prev = g[s0 - 100:s0]
            med = float(np.median(prev))
            mad = float(np.median(np.abs(prev - med))) * 1.4826
            prev = np.clip(prev, med - 5 * mad, med + 5 * mad)
            mu, var = float(prev.mean()), float(prev.var())
        zs, _, mu, var = _run(g[s0:s1 + 1], mu, var, float(alpha), z_threshold)
        with np.errstate(invalid="ignore"):
            flag[ok[s0:s1 + 1]] = zs > z_threshold
        if s1 == n - 1:
            final = mu + z_threshold * var ** 0.5
    keep = np.zeros(n_all, bool)
    for a, b in spans:
        keep[a:b + 1] = True
    flag &= keep
    return flag, (float(final) if final is not None and np.isfinite(final) else None)


def _sweep(c: np.ndarray, mu: float, var: float, a: float, c1: float,
           z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EMAs of the fed values ``c`` from state (mu, var), and each step's bound before it."""
    m = lfilter([c1], [1.0, -a], c, zi=[a * mu])[0]
    v = lfilter([c1], [1.0, -a], (c - m) ** 2, zi=[a * var])[0]
    m_prev = np.concatenate(([mu], m[:-1]))
    v_prev = np.maximum(np.concatenate(([var], v[:-1])), 0.0)
    return m, v, m_prev + z * np.sqrt(v_prev)


def olmo_skip(
    values: np.ndarray, *, window: int = 128, z_max: float = 6.0, min_history: int = 20
) -> np.ndarray:
    """OLMo-core's skip-step rule: True where ``|value - mean| > z_max * std`` of the previous
    ``window`` finite values (the trainer skips that step). Needs ``min_history`` values first.
    """
    v = _finite_limited(values)
    out = np.zeros(v.size, bool)
    ok = np.isfinite(v)
    x = v[ok]
    if x.size <= min_history:
        return out
    c = x - x.mean()
    s1 = np.concatenate(([0.0], np.cumsum(c)))
    s2 = np.concatenate(([0.0], np.cumsum(c * c)))
    i = np.arange(x.size)
    lo = np.maximum(0, i - window)
    cnt = i - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (s1[i] - s1[lo]) / cnt
        var = (s2[i] - s2[lo]) / cnt - mean**2
        z = np.abs(c - mean) / np.sqrt(np.maximum(var, 0.0))
    flag = (cnt >= min_history) & (z > z_max)
    out[np.flatnonzero(ok)] = flag
    return out


def olmo_skip_spans(values: np.ndarray, spans: list[tuple[int, int]], *, window: int = 128,
                    z_max: float = 6.0, min_history: int = 20) -> np.ndarray:
    """:func:`olmo_skip` inside the index ranges ``spans`` (False elsewhere), computed from each
    span and the ``window`` finite values before it only."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.size, bool)
    ok = np.flatnonzero(np.isfinite(v))
    for a, b in spans:
        k = int(np.searchsorted(ok, a))
        lo = 0 if k <= window else int(ok[k - window])
        f = olmo_skip(v[lo:b + 1], window=window, z_max=z_max, min_history=min_history)
        out[a:b + 1] |= f[a - lo:]
    return out
