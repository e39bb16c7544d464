"""Score gradaudit's explosion detection on the labelled benchmark, beside the anchor rules.

    python benchmarks/detection/score.py [--verbose] [--data DIR ...] [--margin 10]

Reads every run listed in ``data/labels.json`` with ``gradaudit.read_runs``, audits it with
``gradaudit.audit_run`` and runs the anchor rules (anchors.py) on the same series. Needs no
torch. Metric definitions: README.md ("Metrics").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anchors  # noqa: E402
from anchors import ANCHORS  # noqa: E402
from roles import incomplete, is_clean, role  # noqa: E402

import gradaudit  # noqa: E402

IMPACT_FLOOR = 0.02  # |est - true| <= 2 % of the clean loss level also counts as "within 2x"


@dataclass
class Pred:
    onset: int
    severity: str = "explosion"
    excess: float | None = None
    diverged: bool = False
    kind: str = ""


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    neutral: int = 0
    tp_expl: int = 0
    fp_expl: int = 0
    fn_expl: int = 0
    clean_runs: int = 0
    clean_alarms: int = 0
    clean_episodes: int = 0  # predictions of any severity on clean runs
    clean_steps: int = 0  # the clean runs' steps
    onset_err: list[float] = field(default_factory=list)
    impact_ok: list[bool] = field(default_factory=list)  # every matched event
    impact_defined: list[bool] = field(default_factory=list)  # those with a well-defined truth
    sev_ok: list[bool] = field(default_factory=list)
    unread: int = 0

    @staticmethod
    def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        p = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        r = tp / (tp + fn) if tp + fn else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return f, p, r


# ---------------------------------------------------------------------------------------------
# reading


def _pick(runs, label: dict):
    # (a pass a resume cut short, kept as a run where it stands out, is not the labelled run)
    runs = [r for r in runs if "#pass" not in r.name]
    if not runs:
        return None
    if label.get("run"):
        hits = [r for r in runs if r.name.endswith("#" + label["run"])]
        return hits[0] if len(hits) == 1 else None
    return runs[0] if len(runs) == 1 else None


def _series(run, tag):
    if run is None or tag is None:
        return None, None
    s, v = run.series(tag)
    return (s, v) if len(s) else (None, None)


def fallback_series(data: Path, label: dict) -> tuple:
    """Read the run without gradaudit (for the anchors when gradaudit cannot read it yet)."""
    path = data / label["path"]
    gtag, ltag = label["grad_norm_tag"], label["loss_tag"]
    if label["format"] == "tensorboard":
        pts = _read_tb(path)
    elif label["format"] == "parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pydict()
        pts = {}
        for s, tg, v in zip(t["step"], t["tag"], t["value"], strict=True):
            pts.setdefault(tg, []).append((s, v))
    else:
        import csv

        pts = {}
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        prefix = f"{label['run']} - "
        for row in rows:
            s = int(row["Step"])
            for col, val in row.items():
                if col.startswith(prefix) and val not in ("", None):
                    metric = col[len(prefix):]
                    pts.setdefault(metric, []).append((s, float(val)))
        if gtag is not None:
            gtag = gtag + "__MAX"

    def arr(tag):
        if tag is None or tag not in pts:
            return None, None
        d: dict[int, float] = {}
        for s, v in pts[tag]:  # later write wins; a rewind drops later steps
            for k in [k for k in d if k >= s]:
                del d[k]
            d[int(s)] = float(v)
        ks = np.array(sorted(d), dtype=np.int64)
        return ks, np.array([d[k] for k in ks])

    return (*arr(gtag), *arr(ltag))


def _read_tb(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    pts: dict[str, list] = {}
    for f in sorted(p for p in folder.iterdir() if "tfevents" in p.name):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    val = v.simple_value
                elif v.HasField("tensor"):
                    val = v.tensor.float_val[0] if v.tensor.float_val else float("nan")
                else:
                    continue
                pts.setdefault(v.tag, []).append((ev.step, val))
    return pts


# ---------------------------------------------------------------------------------------------
# matching


def score_run(label: dict, preds: list[Pred], tally: Tally, margin: int,
              details: list[str] | None, with_severity: bool) -> None:
    """Match predictions to the run's events and tally them (definitions: README.md)."""
    events = sorted(label["events"], key=lambda e: e["onset_step"])
    notes: list[str] = []
    if is_clean(label):
        tally.clean_runs += 1
        tally.clean_episodes += len(preds)
        tally.clean_steps += int(label["n_steps"])
        if any(p.severity == "explosion" for p in preds):
            tally.clean_alarms += 1
            notes.append("EXPLOSION ON A CLEAN RUN")
    matched: dict[int, int] = {}  # prediction index -> event index
    for j, ev in enumerate(events):
        if role(ev) == "benign":
            continue
        best = None
        for i, p in enumerate(preds):
            d = abs(p.onset - ev["onset_step"])
            if i not in matched and d <= margin and (best is None or d < best[0]):
                best = (d, i)
        if best is not None:
            matched[best[1]] = j
    found = set(matched.values())
    for j, ev in enumerate(events):
        r = role(ev)
        if r == "must" and j not in found:
            tally.fn += 1
            tally.fn_expl += 1
            notes.append(f"MISSED {ev['onset_step']}")
    soft = [(e["onset_step"] - margin, e["active_end_step"] + margin, role(e),
             e["ambiguous"] or incomplete(e)) for e in events if role(e) != "benign"]
    points = list(label.get("neutral_steps") or []) + list(label.get("natural_spikes") or [])
    for i, p in enumerate(preds):
        expl = p.severity == "explosion"
        if i in matched:
            ev = events[matched[i]]
            r = role(ev)
            if r == "must":
                tally.tp += 1
                tally.onset_err.append(abs(p.onset - ev["onset_step"]))
                if expl:
                    tally.tp_expl += 1
                else:
                    tally.fn_expl += 1
                    notes.append(f"{p.onset} found as warning")
            else:
                tally.neutral += 1
                if expl and not ev["ambiguous"] and not incomplete(ev):
                    tally.fp_expl += 1
                    notes.append(f"{p.onset} explosion on a harmless fault")
            if with_severity and not ev.get("truncated"):  # (its truth is a shorter mean)
                if not ev["ambiguous"] and not ev.get("unlogged"):
                    tally.sev_ok.append(p.severity == ev["severity"])
                ok = _impact_ok(p, ev)
                tally.impact_ok.append(ok)
                if not truth_ill_defined(ev):
                    tally.impact_defined.append(ok)
            continue
        inside = [s for s in soft if s[0] <= p.onset <= s[1]]
        if inside:
            tally.neutral += 1
            if expl and not any(r == "must" or amb for _, _, r, amb in inside):
                tally.fp_expl += 1
                notes.append(f"{p.onset} explosion on a harmless fault")
            continue
        if not expl and any(abs(p.onset - s) <= margin for s in points):
            tally.neutral += 1
            continue
        tally.fp += 1
        if expl:
            tally.fp_expl += 1
        notes.append(f"FP {p.severity} {p.onset}")
    if details is not None:
        ps = ", ".join(f"{p.onset}{'!' if p.severity == 'explosion' else '?'}" for p in preds[:8])
        more = f" (+{len(preds) - 8})" if len(preds) > 8 else ""
        truth = "; ".join(
            f"{role(e)} {e['onset_step']} excess {_fmt(e['excess_loss'])}"
            f"{' diverged' if e['diverged'] else ''}" for e in events[:6]) or "clean"
        if len(events) > 6:
            truth += f" (+{len(events) - 6})"
        details.append(f"    truth: {truth}\n    found: {ps or '-'}{more}   {'; '.join(notes[:8])}")


def _row(name: str, t: Tally, seconds: float | None) -> tuple[str, dict]:
    """One table row: its printed line and its JSON record."""
    f, p, r = Tally.f1(t.tp, t.fp, t.fn)
    fe, _, _ = Tally.f1(t.tp_expl, t.fp_expl, t.fn_expl)
    # nothing to find and nothing claimed: no score (a family of harmless faults)
    scored = bool(t.tp + t.fp + t.fn)
    f1s, ps, rs = (f"{x:5.2f}" if scored else f"{'-':>5s}" for x in (f, p, r))
    fes = f"{fe:7.2f}" if t.tp_expl + t.fp_expl + t.fn_expl else f"{'-':>7s}"
    err = f"{np.mean(t.onset_err):.1f}" if t.onset_err else "-"
    imp = f"{100 * np.mean(t.impact_ok):.0f}%" if t.impact_ok else "-"
    imp_def = f"{100 * np.mean(t.impact_defined):.0f}%" if t.impact_defined else "-"
    sev = f"{100 * np.mean(t.sev_ok):.0f}%" if t.sev_ok else "-"
    per_k = 1000 * t.clean_episodes / t.clean_steps if t.clean_steps else None
    cl_ep = f"{per_k:.2f}" if per_k is not None else "-"
    sec = f"{seconds:5.1f}" if seconds is not None else f"{'-':>5s}"
    line = (f"{name:16s} {f1s} {ps} {rs} {fes} "
            f"{t.clean_alarms:>3d}/{t.clean_runs:<4d} {err:>9s} {imp:>8s} {imp_def:>5s} "
            f"{sev:>9s} {cl_ep:>8s} {sec}")
    return line, {"f1": f, "precision": p, "recall": r, "f1_explosion": fe,
            "clean_false_alarms": t.clean_alarms, "clean_runs": t.clean_runs,
            "onset_error": float(np.mean(t.onset_err)) if t.onset_err else None,
            "impact_within_2x": float(np.mean(t.impact_ok)) if t.impact_ok else None,
            "impact_scored": [int(np.sum(t.impact_ok)), len(t.impact_ok)],
            "impact_within_2x_well_defined": float(np.mean(t.impact_defined))
            if t.impact_defined else None,
            "impact_scored_well_defined": [int(np.sum(t.impact_defined)),
                                           len(t.impact_defined)],
            "severity_agreement": float(np.mean(t.sev_ok)) if t.sev_ok else None,
            "clean_episodes_per_1k_steps": per_k,
            "tp": t.tp, "fp": t.fp, "fn": t.fn,
            "seconds": round(seconds, 2) if seconds is not None else None}


def _fmt(x) -> str:
    return "null" if x is None else f"{x:.4g}"


def truth_ill_defined(event: dict) -> bool:
    """A natural explosion whose truth, measured again with a branch clipping at 2x or 4x the
    healthy level instead of 3x (``alt_truths``), would not itself be within 2x of it: the
    excess then depends on the counterfactual chosen (in a chaotic run the next explosions
    come elsewhere). A diagnostic beside the impact score, not part of it (README, "Metrics")."""
    return any(not _impact_ok(Pred(0, excess=alt, diverged=alt is None), event)
               for alt in (event.get("alt_truths") or {}).values())


def _impact_ok(p: Pred, event: dict) -> bool:
    true = event["excess_loss"]
    if true is None:  # the loss diverged: the engine must say so
        return p.diverged or p.excess is None or (p.excess is not None and p.excess > 1.0)
    if p.excess is None or not math.isfinite(p.excess):
        return False
    if abs(p.excess - true) <= IMPACT_FLOOR * event["clean_loss_level"]:
        return True
    return true > 0 and true / 2 <= p.excess <= 2 * true


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description="Score gradaudit against anchor rules.")
    ap.add_argument("--data", action="append", default=None,
                    help="a benchmark folder (repeat to pool several: held-out seeds, see "
                         "README); default: the committed data/")
    ap.add_argument("--margin", type=int, default=10)
    ap.add_argument("--verbose", "-v", action="store_true", help="per-run details")
    ap.add_argument("--only", default=None, help="substring filter on run ids")
    ap.add_argument("--methods", default=None, help="comma-separated subset of methods")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    ap.add_argument("--by-base", action="store_true",
                    help="also gradaudit's scores per base run family (mlpc, rnn-nat, ...)")
    ap.add_argument("--fast-pelt", action="store_true",
                    help="ruptures KernelCPD('linear') (C, same l2 cost) instead of Pelt('l2')")
    args = ap.parse_args()
    anchors.EXACT_PELT = not args.fast_pelt
    if args.by_base and args.methods and "gradaudit" not in args.methods.split(","):
        ap.error("--by-base scores gradaudit: keep it in --methods")
    labels: list[dict] = []  # each with the folder it lives in ("_dir")
    horizons = set()
    dirs = [Path(d) for d in (args.data or [str(HERE / "data")])]
    for data in dirs:
        meta = json.loads((data / "labels.json").read_text())
        horizons.add(int(meta["impact_horizon"]))
        labels += [{**r, "_dir": data} for r in meta["runs"]
                   if not args.only or args.only in r["id"]]
    if len(horizons) != 1:
        ap.error(f"the folders use different impact horizons: {sorted(horizons)}")
    horizon = horizons.pop()
    methods = ["gradaudit", *ANCHORS]
    if args.methods:
        methods = [m for m in methods if m in args.methods.split(",")]
    tallies = {m: Tally() for m in methods}
    details: dict[str, list[str]] = {m: [] for m in methods}
    timing = {m: 0.0 for m in methods}
    by_base: dict[str, Tally] = {}  # gradaudit per base (--by-base)
    t_read = 0.0
    problems: list[str] = []
    for label in labels:
        t = time.perf_counter()
        data = label["_dir"]
        path = data / label["path"]
        try:
            runs = gradaudit.read_runs([str(path)])
        except Exception as exc:  # noqa: BLE001
            runs = []
            problems.append(f"{label['id']}: read_runs raised {exc!r}")
        run = _pick(runs, label)
        t_read += time.perf_counter() - t
        if run is not None:
            gs, g = _series(run, run.grad_norm_tag)
            ls, lo = _series(run, run.loss_tag)
            source = "gradaudit"
        else:
            gs, g, ls, lo = fallback_series(data, label)
            source = "fallback"
            problems.append(f"{label['id']}: gradaudit read no run here "
                            f"(found {len(runs)}); anchors use a fallback reader")
        for m in methods:
            t = time.perf_counter()
            if m == "gradaudit":
                preds: list[Pred] = []
                if run is None:
                    tallies[m].unread += 1
                else:
                    try:
                        audit = gradaudit.audit_run(run, impact_horizon=horizon)
                        for e in audit.episodes:
                            li = e.loss_impact
                            preds.append(Pred(int(e.onset_step), e.severity,
                                              None if li is None else li.excess_loss,
                                              bool(li and li.diverged), e.kind))
                    except Exception as exc:  # noqa: BLE001
                        problems.append(f"{label['id']}: audit_run raised {exc!r}")
                with_sev = True
            else:
                steps = ANCHORS[m](gs, g, ls, lo)
                preds = [Pred(s) for s in steps]
                with_sev = False
            timing[m] += time.perf_counter() - t
            preds.sort(key=lambda p: p.onset)
            d = details[m]
            where = f"{data.name}/" if len(dirs) > 1 else ""
            d.append(f"  {where}{label['id']} ({label['format']}/{label['style']}"
                     f"{', every ' + str(label['log_every']) if label['log_every'] > 1 else ''}, "
                     f"{label.get('kind') or 'clean'}, read by {source})")
            score_run(label, preds, tallies[m], args.margin, d, with_sev)
            if m == "gradaudit" and args.by_base:
                score_run(label, preds, by_base.setdefault(label.get("base", "?"), Tally()),
                          args.margin, None, with_sev)

    evs = [e for r in labels for e in r["events"]]
    n_must = sum(role(e) == "must" for e in evs)
    n_opt = sum(role(e) == "optional" for e in evs)
    n_clean = sum(is_clean(r) for r in labels)
    print(f"{len(labels)} runs in {len(dirs)} folder(s): {n_must} harmful events (must find), "
          f"{n_opt} harmless or ambiguous events (optional), {n_clean} clean or benign-only runs; "
          f"margin "
          f"{args.margin} steps, impact horizon {horizon}")
    if args.verbose:
        for m in methods:
            print(f"\n== {m}")
            print("\n".join(details[m]))
        print()
    head = (f"{'method':16s} {'F1':>5s} {'prec':>5s} {'rec':>5s} {'F1-expl':>7s} "
            f"{'clean-FA':>8s} {'onset-err':>9s} {'impact2x':>8s} {'(def)':>5s} {'sev-agree':>9s} "
            f"{'clean-ep':>8s} {'sec':>5s}")
    print(head)
    print("-" * len(head))
    table = {}
    for m in methods:
        line, table[m] = _row(m, tallies[m], timing[m])
        print(line)
    bases = {}
    if by_base:
        print(f"\ngradaudit per base run family\n{head}\n{'-' * len(head)}")
        for b, t in sorted(by_base.items()):
            line, bases[b] = _row(b, t, None)
            print(line)
    if args.json:
        out = {"margin": args.margin, "runs": len(labels), "methods": table}
        if bases:
            out["gradaudit_by_base"] = bases
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    ga = tallies.get("gradaudit")
    if ga is not None and ga.impact_ok:
        n_ill = len(ga.impact_ok) - len(ga.impact_defined)
        print(f"\ngradaudit impact within 2x: {int(np.sum(ga.impact_ok))} of {len(ga.impact_ok)}"
              f" matched events; (def): {int(np.sum(ga.impact_defined))} of "
              f"{len(ga.impact_defined)} without the {n_ill} natural explosions whose truth moves "
              f"out of its own 2x band when the branch clips at 2x or 4x instead of 3x (a "
              f"diagnostic, README \"Metrics\")")
    if ga is not None and ga.unread:
        print(f"\ngradaudit could not read {ga.unread} of {len(labels)} runs (counted as no "
              f"episodes); reading took {t_read:.1f}s")
    if problems and args.verbose:
        print("\n".join(["", "problems:"] + problems))
    elif problems:
        print(f"{len(problems)} reading/audit problems (see --verbose)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
