"""Engine speed: audit_run over 1e6 steps, PELT vs ruptures Pelt(l2) at n=3e4.

Run: ``python benchmarks/bench_engine.py [--ruptures-cap SECONDS]``. Prints medians and ratios.
ruptures runs once, in a subprocess killed at the cap (it takes minutes at n=3e4); when capped
the ratio printed is a lower bound.

Measured (2 shared cores, load ~3-6): audit_run n=1e6 median 0.57-0.68 s (was 5.4 s);
pelt l2 n=3e4 median 0.47 s; ruptures Pelt(l2) > 150 s (capped) -> ratio > 321x.
Pathological n=1e6 (before the episode cap -> after): heavy 16.4 s -> ~2.5 s,
allspiky 46 s -> ~1.0 s, sawlr ~0.9 s (normal run unchanged, 0.65 s).
2026-11-26, with the sustained triggers: audit_run n=1e6 median 0.71 s; heavy 2.6 s, allspiky
1.1 s, sawlr 1.1 s; pelt 0.44 s vs ruptures > 150 s (capped): > 343x.
2026-11-27 (second round, another job on the second core): audit_run n=1e6 median 0.75 s;
heavy 3.4 s (997 episodes, was 677: the t(2) loss's lone extreme points now count, up to the
500-per-source cap), allspiky 1.1 s, sawlr 1.1 s; pelt 0.56 s vs ruptures > 150 s: > 270x.
2026-11-27 (third round: level-climb, loss-rise's lagged level, batch-clip quantiles): audit_run
n=1e6 median 0.73 s (0.71 s for the round before, same machine and hour); heavy 3.3 s,
allspiky 1.0 s, sawlr 0.95 s; pelt 0.45 s.
2026-11-27 (fourth round: blow-up floors): audit_run n=1e6 median 0.74-0.76 s (0.73 s for the
round before, same machine and hour); heavy 3.5 s (3.4 s), allspiky 1.0 s, sawlr 0.96 s;
pelt 0.45 s.
2026-11-27 (the longer anchor window, the lr-fall cut): audit_run n=1e6 median 0.56 s (0.56 s
before, same machine and minute); heavy 2.37 s (2.30 s; 3.14 s until the lr lookup read only
its own slice), allspiky 0.80 s, sawlr 1.03 s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from _timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _pathological(n):
    """Heavy-tailed (t(2) in log space) and bimodal (20 % of steps at 50x) grad norms whose loss
    is independent noise, and a sawtooth lr."""
    rng = np.random.default_rng(0)
    return {
        "heavy": (np.exp(rng.standard_t(2, n) * 0.8), 2 + np.exp(rng.standard_t(2, n) * 0.3),
                  np.exp(rng.normal(0, 1, n))),
        "allspiky": (np.where(rng.random(n) < 0.2, 50.0, 1.0), 2 + rng.random(n),
                     np.full(n, 1e-3)),
        "sawlr": (np.exp(rng.normal(0, .2, n)), 2 + 0.1 * rng.random(n),
                  (np.arange(n) % 7 + 1) * 1e-4),
    }


def _ruptures(x, pen, q):
    import ruptures as rpt

    t = time.perf_counter()
    bk = rpt.Pelt(model="l2", min_size=5, jump=1).fit(x).predict(pen=pen)
    q.put((time.perf_counter() - t, bk))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ruptures-cap", type=float, default=120.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import ruptures as rpt
    from _synth import healthy, run_series

    from gradaudit.audit import audit_run
    from gradaudit.detect.pelt import pelt

    s, g, loss = healthy(n=1_000_000, seed=0)
    rng = np.random.default_rng(1)
    for i in rng.integers(1000, s.size - 1000, 20):
        g[i:i + 3] *= 30
        loss[i + 1:i + 40] += 0.5
    run = run_series(s, g, loss)
    t_audit, a = median_time(lambda: audit_run(run), args.repeat)
    print(f"audit_run n=1e6: median {t_audit:.3f} s ({len(a.episodes)} episodes, {a.status})")

    # pathological 1e6-step runs (untrusted or chronically spiky logs): bounded work
    for name, (pg, pl_, plr) in _pathological(1_000_000).items():
        prun = run_series(np.arange(pg.size), pg, pl_, plr)
        t_p, a = median_time(lambda prun=prun: audit_run(prun), args.repeat)
        print(f"audit_run {name} n=1e6: median {t_p:.3f} s ({len(a.episodes)} episodes, "
              f"{a.status})")

    sig, _ = rpt.pw_constant(30_000, 1, 30, noise_std=1.0, seed=1)
    x = sig.ravel()
    pen = 3 * np.log(x.size)
    t_pelt, ours = median_time(lambda: pelt(x, cost="l2", penalty=pen, min_size=5), args.repeat)
    print(f"pelt l2 n=3e4: median {t_pelt:.3f} s, {len(ours) - 1} breakpoints")
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_ruptures, args=(x, pen, q))
    p.start()
    p.join(args.ruptures_cap)
    if p.is_alive():
        p.terminate()
        p.join()
        print(f"ruptures Pelt(l2) n=3e4: > {args.ruptures_cap:.0f} s (capped, run once); "
              f"ratio > {args.ruptures_cap / t_pelt:.0f}x")
    else:
        t_r, bk = q.get()
        print(f"ruptures Pelt(l2) n=3e4: {t_r:.1f} s (run once); ratio {t_r / t_pelt:.0f}x; "
              f"same breakpoints: {bk == ours}")


if __name__ == "__main__":
    main()
