"""Whole-process ingestion speed: gradaudit vs tbparse vs TensorBoard's EventAccumulator.

    python benchmarks/bench_ingest.py [--events 1000000] [--repeats 3] [--skip-slow]

Writes (once, cached under ``benchmarks/.cache/``) an event file of ``--events`` scalar events
with torch's ``SummaryWriter.add_scalar`` (tensorboardX when torch is missing), three tags
cycling per step. Each reader then runs in a fresh subprocess (interpreter start and imports
included), ``--repeats`` times (gradaudit and the import line at least 7 times); the table
shows medians, events/s, the ratio to gradaudit and the
peak RSS of the child (``resource.getrusage(RUSAGE_CHILDREN)`` measured per run in a wrapper).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TAGS = ("train/loss", "train/grad_norm", "train/learning_rate")

READERS = {
    "import only (python -c 'import gradaudit.cmdline')": [
        sys.executable, "-c", "import gradaudit.cmdline"],
    "gradaudit inspect --format json": [
        sys.executable, "-c",
        "import sys; from gradaudit.cmdline import main; sys.exit(main(['inspect', sys.argv[1],"
        " '--format', 'json']))"],
    "tbparse SummaryReader(...).scalars": [
        sys.executable, "-c",
        "import sys; from tbparse import SummaryReader; "
        "df = SummaryReader(sys.argv[1]).scalars; print(len(df))"],
    "EventAccumulator(size_guidance scalars=0).Reload()": [
        sys.executable, "-c",
        "import sys\n"
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
        "ea = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0}); ea.Reload()\n"
        "print(sum(len(ea.Scalars(t)) for t in ea.Tags()['scalars']))"],
}

# Run a command and print its peak RSS (KiB) on stderr's last line.
WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode,"
    " file=sys.stderr)\n"
)


def make_log(n_events: int) -> Path:
    """The cached event-file folder with ``n_events`` scalars (written once)."""
    folder = CACHE / f"tb_{n_events}"
    done = folder / "DONE"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*tfevents*"):
        old.unlink()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover
        from tensorboardX import SummaryWriter
    import math

    print(f"writing {n_events} scalar events to {folder} (once) ...", file=sys.stderr)
    writer = SummaryWriter(str(folder), max_queue=10_000, flush_secs=3600)
    steps = n_events // len(TAGS)
    for step in range(steps):
        g = 1.0 + 0.1 * math.sin(step / 50.0) + (40.0 if step % 9973 == 0 else 0.0)
        writer.add_scalar(TAGS[0], 3.0 / (1.0 + step / 1e4), step)
        writer.add_scalar(TAGS[1], g, step)
        writer.add_scalar(TAGS[2], 3e-4, step)
    writer.close()
    done.write_text(str(steps * len(TAGS)))
    return folder


def run_once(cmd: list[str], target: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd, target], capture_output=True, text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    rss = 0
    for line in proc.stderr.splitlines():
        if line.startswith("RSS "):
            _, kib, code = line.split()
            rss = int(kib)
            if code != "0":
                raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="only time gradaudit")
    args = parser.parse_args()
    folder = make_log(args.events)
    n_events = int((folder / "DONE").read_text())
    files = sorted(folder.glob("*tfevents*"))
    size = sum(f.stat().st_size for f in files)
    env_note = f"{n_events} events, {size / 1e6:.1f} MB, python {sys.version.split()[0]}"
    results = []
    for name, cmd in READERS.items():
        if args.skip_slow and not name.startswith(("gradaudit", "import")):
            continue
        times, rss = [], []
        # The fast readers are cheap to repeat: more runs give a steadier median.
        fast = name.startswith(("gradaudit", "import"))
        for _ in range(max(args.repeats, 7) if fast else args.repeats):
            t, r = run_once(cmd, str(files[0]) if "inspect" in name else str(folder))
            times.append(t)
            rss.append(r)
        results.append((name, statistics.median(times), max(rss)))
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name}: {statistics.median(times):.3f} s (runs {runs})", file=sys.stderr)
    ga = {n: t for n, t, _ in results}["gradaudit inspect --format json"]
    print(f"\n{env_note}, {args.repeats} repeats, medians, whole process\n")
    print("| reader | median s | events/s | gradaudit speed-up | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, t, r in results:
        if name.startswith("import"):
            print(f"| {name} | {t:.3f} | - | - | {r / 1024:.0f} |")
            continue
        print(f"| {name} | {t:.3f} | {n_events / t:,.0f} | {t / ga:.1f}x | {r / 1024:.0f} |")
    for name, t, _ in results:
        if name.startswith(("tbparse", "EventAccumulator")):
            print(f"gradaudit vs {name.split('(')[0].split()[0]}: {t / ga:.1f}x faster,"
                  " whole process"
                  + (" (target >= 20x)" if name.startswith("tbparse") else ""))
    imp = [t for n, t, _ in results if n.startswith("import")][0]
    print(f"\ngradaudit without interpreter+import: {ga - imp:.3f} s "
          f"= {n_events / max(ga - imp, 1e-9):,.0f} events/s")
    print(json.dumps({n: t for n, t, _ in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
