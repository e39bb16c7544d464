"""Judge gradaudit's clip suggestions by replay (docs/findings.md, "Clip suggestions").

For a subset of the harmful fault pairs of the detection benchmark, read the faulted
(unclipped) run's logs with ``gradaudit.read_runs``, audit it with ``gradaudit.audit_run`` and
take every clip option it offers (and the one it suggests). Then replay the same training (same
task, seed, batch order, schedule and fault, through ``trainer.train``) with
``torch.nn.utils.clip_grad_norm_(params, threshold)`` added, on the fault run AND its clean twin:

- damage removed = 1 - excess_clipped / excess_unclipped, with excess = mean over
  [onset, onset + 200) of L(t) - L_clean_unclipped(t) (the benchmark's ``excess_loss``);
- clean cost = relative change of the clean twin's final loss (mean of the last 100 per-step
  losses) with the threshold vs without; the bar is <= 1 %.

    python benchmarks/detection/replay_clip.py [--pairs ID,ID] [--all] [--methods M,M]
        [--logs-only] [--json FILE]

Needs torch (CPU); one thread, deterministic. Before anything is measured, the unclipped replay
of every pair is checked against the logged losses (and grad norms) it must reproduce: to RTOL
it is the logged training exactly, to DRIFT the same training with another torch build's or
CPU's float rounding (measured and reported). A replay beyond DRIFT is another training than the
logs (chaos amplifies rounding): its own unclipped run is written the way make_runs writes the
pair's logs and audited instead (``--logs-only``: skipped). Exits non-zero when no pair could be
measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_runs  # noqa: E402
import models  # noqa: E402
import torch  # noqa: E402
from faults import Fault  # noqa: E402
from make_runs import NATURAL, STYLES, H, RunSpec, View, first_diff, logged  # noqa: E402
from trainer import Schedule, Trace, train  # noqa: E402
from writers import bucket  # noqa: E402

import gradaudit  # noqa: E402

DATA = HERE / "data"
FINAL = 100  # final loss = mean of the last FINAL per-step losses
COST_BAR = 0.01  # a threshold may cost the clean run's final loss at most 1 %
RTOL = 2e-6  # logged values: float32 (TensorBoard) or 7 significant digits (W&B CSV)
# Float rounding drift tolerated between the replay and the logs (max relative error of any
# logged loss or grad norm): torch 2.13 on this CPU puts the MLP pairs 1e-5 to 6.2e-4 off logs
# written by another build (bit-identical up to a late step, then a slow walk), while the pairs
# whose replay is another training (transformer LM, natural RNN) are 1.5e-2 and more off.
DRIFT = 1e-3
FORMATS = {"tensorboard": "tb", "parquet": "parquet", "wandb-csv": "csv"}  # label -> View.fmt

# A representative default subset: lr spikes (Adam, SGD, AdamW), corrupted batches, loss-scaling
# bugs (Adam, AdamW, RNN/SGD) and natural explosions of a vanilla RNN.
DEFAULT_PAIRS = [
    "mlpc-lr-spike-x50",
    "mlpr-lr-spike-x2",
    "lm-lr-spike-x30",
    "mlpr-bad-batch-x5",
    "mlpc-loss-scale-x100",
    "lm-loss-scale-x30",
    "rnn-loss-scale-x20",
    "mlpc-b8-lr-spike-x10",
    "rnn-nat-lr4-unclipped",
]
COMPARE = ("fixed-1.0", "p99.9-healthy")  # options always shown beside the suggestion


@dataclass
class Pair:
    """A fault run, its clean twin and how to retrain both."""

    fid: str
    label: dict
    twin: dict
    task: object
    sched: Schedule
    n: int
    fault: Fault | None  # None: a natural explosion (the run itself is unclipped)
    ref_clip: float | None = None  # natural: the twin is the run clipped at this threshold
    t0: int = 0  # per-step index of the onset
    event: dict = field(default_factory=dict)  # the event judged (labels.json, or the replay's)
    clean: Trace | None = None  # clean twin, unclipped (natural: clipped at ref_clip)
    fault_tr: Trace | None = None  # fault run, unclipped
    checks: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# setup and replay


def _labels() -> dict[str, dict]:
    meta = json.loads((DATA / "labels.json").read_text())
    return {r["id"]: r for r in meta["runs"]}


def harmful_pairs(labels: dict[str, dict]) -> list[str]:
    """Every harmful, non-diverged fault pair with a usable logged grad norm (a clipped RNN
    twin's own natural events have branches, not a twin run: no pair; in a run with an
    injected fault only the fault's event, the first, counts: its other natural events have
    branches too)."""
    out = []
    for rid, r in labels.items():
        if r["label"] != "fault" or not r["grad_norm_usable"] or r["twin"] is None:
            continue
        own = r["events"] if r["kind"] == "natural" else r["events"][:1]
        evs = [e for e in own if e["harmful"] and not e["ambiguous"]]
        if evs and not any(e["diverged"] for e in evs):
            out.append(rid)
    return out


def make_pair(fid: str, labels: dict[str, dict]) -> Pair:
    """Rebuild the task, schedule and fault of a labelled fault run from make_runs' specs."""
    lab = labels[fid]
    twin = labels[lab["twin"]]
    for cfg in NATURAL:
        if fid == f"{cfg['bid']}-unclipped":
            n = cfg["steps"]
            task = models.rnn(cfg["seed"], n, lr=cfg["lr"], **cfg["kw"])
            return Pair(fid, lab, twin, task, Schedule(cfg["lr"], cfg["warmup"], n), n, None)
    for base in make_runs.BASES:
        for spec in base.faults:
            if fid == f"{base.bid}-{spec.rid}":
                if spec.fault.kind in ("resume", "overflow"):
                    raise SystemExit(f"{fid}: benign {spec.fault.kind} runs are not replayed")
                n = base.steps
                task = models.TASKS[base.task](base.seed, n, lr=base.lr, **base.task_kw)
                return Pair(fid, lab, twin, task, Schedule(base.lr, base.warmup, n), n,
                            spec.fault)
    raise SystemExit(f"{fid}: not a fault run of make_runs.BASES / NATURAL")


def replay(p: Pair, clip: float | None) -> tuple[Trace, Trace]:
    """(clean twin, fault run) retrained with ``clip_grad_norm_(params, clip)`` (None: none).

    The fault run branches from the clean run at the fault step, as make_runs does. Where the
    clean run's grad norm never exceeds ``clip`` (the clip is then an exact multiply by 1), the
    unclipped clean run is reused instead of being retrained.
    """
    if p.fault is None:  # natural explosion: the run itself with the threshold
        return p.clean, train(p.task, p.n, p.sched, clip=clip)
    start = p.fault.start
    if clip is None or p.clean is not None and _never_clips(p.clean.grad, clip, p.n):
        clean = p.clean or train(p.task, p.n, p.sched, snapshot_at=(start,))
    elif p.clean is not None and _never_clips(p.clean.grad, clip, start):
        # identical up to the fault step: branch the fault run from the unclipped snapshot
        clean = train(p.task, p.n, p.sched, clip=clip)
        fault = train(p.task, p.n, p.sched, p.fault, start=start, base=p.clean, clip=clip)
        return clean, fault
    else:
        clean = train(p.task, p.n, p.sched, snapshot_at=(start,), clip=clip)
    fault = train(p.task, p.n, p.sched, p.fault, start=start, base=clean, clip=clip)
    return clean, fault


def _never_clips(g: np.ndarray, clip: float, upto: int) -> bool:
    seg = g[:upto]
    return bool(np.all(np.isfinite(seg)) and np.max(seg) < clip * (1 - 1e-5))


def prepare(p: Pair) -> None:
    """Unclipped replay of the pair, its onset, and the check against the logs."""
    if p.fault is None:
        # (snapshots: a replay that is not the logged run has its events measured by branches)
        p.fault_tr = train(p.task, p.n, p.sched, snapshot_at=tuple(range(0, p.n, 10)))
        # the twin: the same run clipped at 3x its healthy level throughout (make_runs)
        p.ref_clip = float(3 * np.median(p.fault_tr.grad[50:]))
        p.clean = train(p.task, p.n, p.sched, clip=p.ref_clip)
        p.event = next(e for e in p.label["events"] if e["harmful"])  # first harmful event
        p.t0 = p.event["onset_step"] - STYLES[p.label["style"]][3]
    else:
        p.clean, p.fault_tr = replay(p, None)
        p.t0 = first_diff(p.clean, p.fault_tr, p.fault.start)
        p.event = p.label["events"][0]
    p.checks["fault"] = check_logs(p.label, p.fault_tr, p.n)
    p.checks["twin"] = check_logs(p.twin, p.clean, p.n)


def verdict(p: Pair) -> tuple[str, float, str]:
    """How the unclipped replay compares with the logs: ``exact`` (every logged loss and grad
    norm within RTOL), ``drift`` (within DRIFT), ``differs`` (beyond DRIFT, a non-finite value
    on one side only, or another onset than the label's: not the logged training) or ``error``
    (the logs could not be compared); the max relative error and why."""
    worst, why = 0.0, ""
    for who, chk in p.checks.items():
        for key, c in chk.items():
            if isinstance(c, str) or "error" in c:
                msg = c if isinstance(c, str) else c["error"]
                return "error", math.nan, f"the logs could not be compared: {who} {key}: {msg}"
            if not c["nonfinite_match"]:
                return "differs", math.inf, ("not the logged training: "
                                             f"{who} {key}: non-finite values differ from the logs")
            if c["max_rel_err"] >= worst:
                worst, why = c["max_rel_err"], f"{who} {key} max rel err {c['max_rel_err']:.2e}"
    off = STYLES[p.label["style"]][3]
    if p.fault is not None and p.label["log_every"] == 1 and not p.label["buckets"] \
            and p.event["onset_step"] != p.t0 + off:
        return "differs", worst, (f"not the logged training: onset step {p.t0 + off}, the "
                                  f"label's {p.event['onset_step']}")
    if worst > DRIFT:
        return "differs", worst, f"not the logged training: {why} > {DRIFT:g}"
    return ("exact" if worst <= RTOL else "drift"), worst, why


def audit_replay(p: Pair, root: Path) -> str | None:
    """Make the pair's unclipped replay, not its logs, the run audited and judged: write it
    under ``root`` the way make_runs writes the pair's logs (format, tag style, log interval,
    W&B buckets) and take its event as make_runs labels one (a natural run: its first harmful
    explosion, measured by branches). Returns why the replay cannot be judged, else None."""
    lab = p.label
    view = View(FORMATS[lab["format"]], lab["style"], lab["log_every"], lab["buckets"])
    series, t_idx = logged(view, p.fault_tr, p.n)
    make_runs.write_view(root / lab["path"], lab["id"], view, [series])
    p.checks["fault_as_written"] = chk = check_logs(lab, p.fault_tr, p.n, root)
    if any(isinstance(c, str) or c.get("max_rel_err", math.inf) > RTOL for c in chk.values()):
        return f"the replay does not read back as written: {chk}"
    if p.fault is None:
        warmup = next(c["warmup"] for c in NATURAL if lab["id"] == f"{c['bid']}-unclipped")
        evs = make_runs._natural_truths(p.task, p.sched, view, p.fault_tr, p.n, t_idx, None,
                                        make_runs.natural_events(p.fault_tr.grad, warmup))
    else:
        evs = make_runs.fault_truth(RunSpec(lab["id"], view, p.fault), p.clean, p.fault_tr,
                                    p.n, t_idx)["events"]
    # as harmful_pairs and prepare choose from the labels
    judged = [e for e in evs if e["harmful"] and not e["ambiguous"]]
    if not judged or any(e["diverged"] for e in judged):
        return ("the replay's " + ("natural explosions" if p.fault is None else "fault")
                + (" diverged" if judged else " did no clear harm") + ": "
                + ", ".join(f"step {e['onset_step']} rel excess {e['rel_excess']}" for e in evs))
    p.event = next(e for e in evs if e["harmful"])
    if p.fault is None:  # (a fault run's onset is already the replay's: first_diff)
        p.t0 = p.event["onset_step"] - STYLES[lab["style"]][3]
    return None


def check_logs(label: dict, tr: Trace, n: int, root: Path = DATA) -> dict:
    """Max relative error of the replay against the logged loss / grad norm of ``label``
    (under ``root``)."""
    runs = gradaudit.read_runs([root / label["path"]])
    run = _pick(runs, label)
    if run is None:
        return {"error": "gradaudit read no matching run"}
    view = View("", label["style"], label["log_every"], label["buckets"])
    series, _ = logged(view, tr, n)
    out = {}
    for key, tag in (("loss", label["loss_tag"]), ("grad_norm", label["grad_norm_tag"])):
        if tag is None or tag not in series:
            continue
        steps, want = series[tag]
        got_tag = tag
        if view.buckets:  # W&B export: bucket last value (loss), bucket max (grad norm)
            bs, bv, _, bmax = bucket(steps, want, view.buckets)
            steps, want = bs, (bmax if key == "grad_norm" else bv)
            got_tag = tag + "__MAX" if key == "grad_norm" else tag
        gs, gv = run.series(got_tag)
        common, iw, ig = np.intersect1d(steps, gs, return_indices=True)
        if len(common) != len(steps):
            out[key] = {"error": f"{len(steps) - len(common)} logged steps missing"}
            continue
        a, b = want[iw], gv[ig]
        fin = np.isfinite(a) & np.isfinite(b)
        same_nonfinite = bool(np.all(np.isfinite(a) == np.isfinite(b)))
        rel = np.abs(a[fin] - b[fin]) / np.maximum(np.abs(b[fin]), 1e-12)
        out[key] = {"points": int(len(common)), "max_rel_err": float(rel.max(initial=0.0)),
                    "nonfinite_match": same_nonfinite}
    return out


def _pick(runs, label: dict):
    if label.get("run"):
        hits = [r for r in runs if r.name.endswith("#" + label["run"])]
        return hits[0] if len(hits) == 1 else None
    return runs[0] if len(runs) == 1 else None


# ---------------------------------------------------------------------------------------------
# measures


def excess(tr: Trace, ref: Trace, t0: int) -> float | None:
    """The benchmark's excess loss: mean of L - L_ref over [t0, t0 + H) (None: non-finite)."""
    w = slice(t0, min(len(ref.loss), t0 + H))
    d = tr.loss[w] - ref.loss[w]
    return float(np.mean(d)) if np.all(np.isfinite(d)) else None


def final_loss(tr: Trace) -> float:
    v = tr.loss[-FINAL:]
    return float(np.mean(v)) if np.all(np.isfinite(v)) else math.inf


def options_of(p: Pair, root: Path = DATA) -> tuple[list[dict], dict]:
    """The audit's clip options for the fault run's logs (under ``root``), and its
    suggestion."""
    runs = gradaudit.read_runs([root / p.label["path"]])
    run = _pick(runs, p.label)
    if run is None:
        raise SystemExit(f"{p.fid}: gradaudit read no matching run from {p.label['path']}")
    audit = gradaudit.audit_run(run, impact_horizon=H)
    if audit.clip is None:
        return [], {"threshold": None, "method": "none", "advice": None}
    opts = [{"method": o.method, "threshold": float(o.threshold),
             "healthy_clipped_fraction": o.healthy_clipped_fraction} for o in audit.clip.options]
    sug = {"threshold": audit.clip.suggested_threshold, "method": audit.clip.method,
           "advice": audit.clip.advice, "status": audit.status}
    return opts, sug


def measure(p: Pair, thr: float | None, cache: dict) -> dict:
    """Damage removed and clean cost of one threshold (None: no clipping)."""
    if thr is None:
        return {"threshold": None, "damage_removed": 0.0, "clean_cost": 0.0,
                "excess": excess(p.fault_tr, p.clean, p.t0), "note": "no clipping"}
    key = round(thr, 12)
    if key not in cache:
        t = time.time()
        clean_c, fault_c = replay(p, thr)
        ex_u = excess(p.fault_tr, p.clean, p.t0)
        ex_c = excess(fault_c, p.clean, p.t0)
        ex_twin = excess(fault_c, clean_c, p.t0)
        removed = None if ex_c is None or not ex_u else 1.0 - ex_c / ex_u
        cost = None
        if p.fault is not None:  # natural runs have no unclipped clean twin
            cost = final_loss(clean_c) / final_loss(p.clean) - 1.0
        cache[key] = {"threshold": thr, "damage_removed": removed, "clean_cost": cost,
                      "excess": ex_c, "excess_vs_clipped_twin": ex_twin,
                      "diverged": ex_c is None, "seconds": round(time.time() - t, 1)}
    return dict(cache[key])


# ---------------------------------------------------------------------------------------------
# report


def _pct(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{nd}f}"


def print_pair(res: dict) -> None:
    print(f"\n{res['pair']}  ({res['kind']}; onset step {res['onset_index']}, "
          f"excess unclipped {res['excess_unclipped']:.4f}, rel {res['rel_excess']:.3f}; "
          f"audit: {res['suggested']['method']} @ {_num(res['suggested']['threshold'])})")
    if res["suggested"].get("advice"):
        print(f"  advice: {res['suggested']['advice']}")
    print(f"  {'option':<22}{'threshold':>11}{'healthy clip %':>15}{'damage removed %':>18}"
          f"{'clean cost %':>14}{'<=1 %':>7}")
    for r in res["rows"]:
        ok = "-" if r["clean_cost"] is None else ("yes" if r["clean_cost"] <= COST_BAR else "NO")
        star = "*" if r["suggested"] else " "
        dmg = "diverged" if r.get("diverged") else _pct(r["damage_removed"])
        print(f" {star}{r['method']:<22}{_num(r['threshold']):>11}"
              f"{_pct(r.get('healthy_clipped_fraction')):>15}{dmg:>18}"
              f"{_pct(r['clean_cost'], 2):>14}{ok:>7}")


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.4g}"


def summarise(results: list[dict]) -> list[dict]:
    """Per method: median damage removed, share of pairs meeting the clean-cost bar."""
    methods = ["suggested", *COMPARE]
    for res in results:
        for r in res["rows"]:
            if r["method"] not in methods:
                methods.append(r["method"])
    out = []
    for m in methods:
        rows = []
        for res in results:
            if m == "suggested":
                rows += [r for r in res["rows"] if r["suggested"]] or [res["no_clip"]]
            else:
                rows += [r for r in res["rows"] if r["method"] == m]
        dmg = [r["damage_removed"] for r in rows if r["damage_removed"] is not None]
        costs = [r["clean_cost"] for r in rows if r["clean_cost"] is not None]
        out.append({
            "method": m,
            "pairs": len(rows),
            "median_damage_removed": float(np.median(dmg)) if dmg else None,
            "min_damage_removed": float(np.min(dmg)) if dmg else None,
            "diverged": sum(1 for r in rows if r.get("diverged")),
            "cost_pairs": len(costs),
            "share_cost_ok": float(np.mean([c <= COST_BAR for c in costs])) if costs else None,
            "median_clean_cost": float(np.median(costs)) if costs else None,
        })
    return out


def by_kind(results: list[dict]) -> dict[str, dict]:
    """gradaudit's suggestion per fault kind: median damage removed over the pairs."""
    out: dict[str, dict] = {}
    for res in results:
        row = next((r for r in res["rows"] if r["suggested"]), res["no_clip"])
        out.setdefault(res["kind"], {"pairs": [], "damage_removed": []})
        out[res["kind"]]["pairs"].append(res["pair"])
        out[res["kind"]]["damage_removed"].append(row["damage_removed"])
    for v in out.values():
        d = [x for x in v["damage_removed"] if x is not None]
        v["median_damage_removed"] = float(np.median(d)) if d else None
    return out


def print_summary(summary: list[dict]) -> None:
    print(f"\n{'method':<24}{'pairs':>6}{'median dmg removed %':>22}{'min %':>8}{'diverged':>9}"
          f"{'cost<=1 % share':>17}{'median cost %':>15}")
    for s in summary:
        share = ("n/a" if s["share_cost_ok"] is None else
                 f"{round(s['share_cost_ok'] * s['cost_pairs'])}/{s['cost_pairs']}")
        print(f"{s['method']:<24}{s['pairs']:>6}{_pct(s['median_damage_removed']):>22}"
              f"{_pct(s['min_damage_removed']):>8}{s['diverged']:>9}{share:>17}"
              f"{_pct(s['median_clean_cost'], 2):>15}")


# ---------------------------------------------------------------------------------------------


def run_pair(fid: str, labels: dict[str, dict], methods: set[str] | None,
             logs_only: bool = False) -> dict:
    """One pair measured, or ``{"pair", "skipped": why, ...}`` where it cannot be judged."""
    t = time.time()
    p = make_pair(fid, labels)
    prepare(p)
    status, err, why = verdict(p)
    head = {"pair": fid, "replay_vs_logs": status, "max_rel_err": err, "worst": why}
    root, skip = DATA, None
    with tempfile.TemporaryDirectory() as tmp:
        if status == "error" or status == "differs" and logs_only:
            skip = why
        elif status == "differs":
            root = Path(tmp)
            skip = audit_replay(p, root)
        if skip is None:
            opts, sug = options_of(p, root)
    if skip is not None:
        return {**head, "skipped": skip, "checks": p.checks, "seconds": round(time.time() - t, 1)}
    cache: dict = {}
    no_clip = measure(p, None, cache)
    ex_u = no_clip["excess"]
    rows = []
    for o in opts:
        is_sug = sug["threshold"] is not None and o["method"] == sug["method"]
        if methods is not None and o["method"] not in methods and not is_sug:
            continue
        r = measure(p, o["threshold"], cache)
        r.update(method=o["method"], suggested=is_sug,
                 healthy_clipped_fraction=o["healthy_clipped_fraction"])
        rows.append(r)
    no_clip.update(method="none", suggested=True, healthy_clipped_fraction=0.0)
    level = float(np.mean(p.clean.loss[p.t0:p.t0 + H]))
    res = {
        **head, "audited": "logs" if root == DATA else "replay",
        "twin": p.twin["id"], "kind": p.label["kind"],
        "fault": p.fault.describe() if p.fault else f"natural; twin clipped at {p.ref_clip:.4g}",
        "onset_index": p.t0, "label_onset_step": p.event["onset_step"],
        "excess_unclipped": ex_u, "label_excess_loss": p.event["excess_loss"],
        "rel_excess": ex_u / level,
        "clean_final_loss": final_loss(p.clean), "checks": p.checks, "suggested": sug,
        "options": opts, "rows": rows, "no_clip": no_clip, "seconds": round(time.time() - t, 1),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=None, help="comma-separated fault run ids (labels.json)")
    ap.add_argument("--all", action="store_true",
                    help="every harmful non-diverged pair with a usable grad norm (slow)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated option methods to replay (the suggestion always is)")
    ap.add_argument("--list", action="store_true", help="list the replayable pairs and exit")
    ap.add_argument("--logs-only", action="store_true",
                    help="skip a pair whose replay is not the logged training (beyond the drift "
                         "tolerated) instead of auditing its replay")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    labels = _labels()
    if args.list:
        print("\n".join(harmful_pairs(labels)))
        return
    ids = (args.pairs.split(",") if args.pairs else
           harmful_pairs(labels) if args.all else DEFAULT_PAIRS)
    methods = set(args.methods.split(",")) if args.methods else None
    t0 = time.time()
    results, skipped = [], []
    for fid in ids:
        res = run_pair(fid, labels, methods, args.logs_only)
        if "skipped" in res:
            print(f"\n{fid}  SKIPPED: {res['skipped']}")
            skipped.append(res)
        else:
            print_pair(res)
            results.append(res)
        print(f"  ({res['seconds']:.0f}s; unclipped replay vs the logs: {res['replay_vs_logs']} "
              + ", ".join(f"{w} {k} {c['max_rel_err']:.1e}" for w, ch in res["checks"].items()
                          for k, c in ch.items() if isinstance(c, dict) and "max_rel_err" in c)
              + (f"; its own run audited instead: {res['worst']}"
                 if res.get("audited") == "replay" else "") + ")", flush=True)
    summary = summarise(results)
    kinds = by_kind(results)
    if results:
        print_summary(summary)
        print("\nsuggested threshold, median damage removed by fault kind: " + "; ".join(
            f"{k} {_pct(v['median_damage_removed'])} % ({len(v['pairs'])})"
            for k, v in kinds.items()))
    drift = [r["pair"] for r in results if r["replay_vs_logs"] == "drift"]
    own = [r["pair"] for r in results if r["audited"] == "replay"]
    if drift:
        print(f"\nreplay within {DRIFT:g} of the logs (float rounding, not exact): "
              + ", ".join(drift))
    if own:
        print("audited the unclipped replay, not the logs (another training than the logs): "
              + ", ".join(own))
    for r in skipped:
        print(f"skipped {r['pair']}: {r['skipped']}")
    secs = time.time() - t0
    print(f"\n{len(results)} pairs measured, {len(skipped)} skipped, in {secs:.0f}s. damage "
          f"removed = 1 - excess_clipped / excess_unclipped over [onset, onset+{H}) vs the "
          f"unclipped clean twin; clean cost = change of the clean twin's mean loss over its last "
          f"{FINAL} steps (bar <= 1 %). * = gradaudit's suggestion.")
    if args.json:
        out = {"impact_horizon": H, "final_window": FINAL, "cost_bar": COST_BAR,
               "rtol": RTOL, "drift_tolerated": DRIFT, "torch": torch.__version__,
               "seconds": round(secs, 1), "pairs": results, "skipped": skipped,
               "summary": summary, "suggested_by_kind": kinds}
        Path(args.json).write_text(json.dumps(out, indent=1, default=_jsonable) + "\n")
    if not results:
        raise SystemExit("no pair could be measured")


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


if __name__ == "__main__":
    main()
