"""The Markdown report (GitHub-flavoured), short enough for a CI job summary.

``$GITHUB_STEP_SUMMARY`` takes at most 1 MiB per step, so the report stays well under that
whatever the batch size: the worst :data:`MAX_TABLE_ROWS` runs with findings in the summary
table, the worst :data:`MAX_DETAILED` in detail, the rest counted; every untrusted string is
escaped and cut to :data:`MAX_TEXT` characters, and a final guard cuts the output at
:data:`MAX_BYTES` on a line boundary.
"""

from __future__ import annotations

import html
import re
from typing import Any, TextIO

from gradaudit import __version__
from gradaudit.report import (
    TOO_SHORT,
    copies,
    error_reason,
    file_problems,
    fmt_num,
    fmt_pct,
    gate_headline,
    has_findings,
    partly_read,
    recovery_text,
    show_controls,
    suggested_clip,
    worst_excess_text,
    worst_first,
    worst_peak_text,
)

MAX_TABLE_ROWS = 100
MAX_DETAILED = 20
MAX_EPISODE_ROWS = 10
MAX_LISTED = 50
MAX_TEXT = 300
MAX_REASON = 800  # an episode's reason ends with its verdict: keep it whole
MAX_BYTES = 900 * 1024

# Markdown punctuation that can act mid-line (emphasis, code, links, table cells, strike);
# & < > are left to html.escape. Line-start syntax (#, -, +, >) never starts our lines.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_ICON = {"explosion": "🔴", "warning": "🟠", "error": "⚪", "ok": "🟢"}
# GitHub turns "@name" into a mention (a notification) and "x://y" / "www." into links even in
# escaped text; a word joiner (U+2060) after "@" and inside "://" and "www." breaks both.
_AUTOLINK = re.compile(r"(@|:(?=//)|(?<![\w.])www(?=\.))", re.IGNORECASE)
_JOINER = "\u2060"


def md(value: Any, limit: int = MAX_TEXT) -> str:
    """Escape untrusted text for a Markdown table cell or paragraph (one line, bounded)."""
    text = "" if value is None else str(value)
    text = show_controls(" ".join(text.split()))  # newlines, tabs, \r -> single spaces
    if len(text) > limit:
        cut = text[: limit - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > limit // 2 else cut) + "…"  # at a word's end
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _AUTOLINK.sub(lambda m: m.group() + _JOINER, text)
    return html.escape(text, quote=False)


def code(value: Any, limit: int = MAX_TEXT) -> str:
    """Untrusted text shown as code (escaped, not in backticks: backticks cannot be escaped)."""
    return f"<code>{md(value, limit)}</code>"


def _summary(result: Any) -> list[str]:
    s = result.summary()
    icon = {0: "✅", 1: "❌"}.get(result.exit_code, "⚠️")
    lines = [f"## {icon} gradaudit: {gate_headline(result)}", ""]
    lines.append(f"**{s['runs']}** run(s): **{s['explosions']}** explosion(s), "
                 f"**{s['warnings']}** warning(s), **{s['errors']}** error(s)"
                 + (f", **{s['regressions']}** regression(s) against the baseline"
                    if result.settings.baseline else "")
                 + (f", **{s['too_short']}** too short to judge" if s["too_short"] else "")
                 + f" · fail-on `{result.settings.fail_on}`")
    if (twice := copies(result.runs)):
        lines += ["", f"**{twice}** of them have the same grad-norm and loss series as another "
                      "run of this scan, or within rounding (one training "
                      "logged twice, e.g. by two loggers, or an exact re-run): each is counted, "
                      "and the JSON report's notes say with which."]
    clip = result.batch_clip
    if clip is not None and clip.suggested_threshold is not None:
        lines.append("")
        what = chosen.description if (chosen := clip.chosen()) is not None else ""
        lines.append("Suggested clip threshold for the batch: "
                     f"**{fmt_num(clip.suggested_threshold)}** ({md(what or clip.method)})")
    elif clip is not None and clip.advice:
        lines += ["", md(clip.advice)]
    lines.append("")
    return lines


def _gate(result: Any) -> list[str]:
    lines: list[str] = []
    if result.gate_reasons:
        lines += ["### Gate", ""]
        lines += [f"- {md(r, 2000)}" for r in result.gate_reasons]
        lines.append("")
    if result.regressions:
        lines += ["### What regressed against the baseline", "",
                  "| run | metric | baseline | now | what |", "|---|---|--:|--:|---|"]
        for reg in result.regressions[:MAX_TABLE_ROWS]:
            lines.append(f"| {code(reg.get('run'))} | {md(reg.get('metric'))} | "
                         f"{md(_plain(reg.get('baseline')))} | {md(_plain(reg.get('current')))} "
                         f"| {md(reg.get('message'))} |")
        more = len(result.regressions) - MAX_TABLE_ROWS
        if more > 0:
            lines.append(f"\n…and {more} more regression(s) (see the JSON report).")
        lines.append("")
    return lines


def _plain(x: Any) -> str:
    if isinstance(x, float):
        return fmt_num(x, 4)
    return "-" if x is None else str(x)


def _table(result: Any, ranked: list[Any], regressed: set[str]) -> list[str]:
    shown = [r for r in ranked if has_findings(r) or r.status == "error" or r.run in regressed]
    if not shown:
        return [f"No episodes found in {len(result.runs)} run(s).", ""] + _too_short(result)
    lines = ["### Runs with findings", "",
             "| run | status | episodes | worst peak ratio | excess loss | suggested clip |",
             "|---|---|--:|--:|--:|--:|"]
    for run in shown[:MAX_TABLE_ROWS]:
        lines.append(f"| {code(run.run, 150)} | {_ICON.get(run.status, '')} {md(run.status)} | "
                     f"{len(run.episodes)} | {worst_peak_text(run)} | "
                     f"{worst_excess_text(run)} | {fmt_num(suggested_clip(run))} |")
    rest = len(shown) - MAX_TABLE_ROWS
    ok = len(result.runs) - len(shown)
    tail = []
    if rest > 0:
        tail.append(f"{rest} more run(s) with findings")
    if ok > 0:
        tail.append(f"{ok} run(s) without findings")
    if tail:
        lines += ["", "…and " + ", ".join(tail) + " (not listed; see the HTML or JSON report)."]
    lines.append("")
    return lines + _too_short(result)


def _too_short(result: Any) -> list[str]:
    """The runs too short for a healthy level: their "ok" says only that no jump far above
    every earlier point was found."""
    short = [r for r in result.runs if r.too_short]
    if not short:
        return []
    lines = [f"**Too short to judge** ({len(short)} run(s)): {TOO_SHORT}.", ""]
    lines += [f"- {code(r.run, 150)}" + (f": {md(r.short_note)}" if r.short_note else "")
              for r in short[:MAX_TABLE_ROWS]]
    if len(short) > MAX_TABLE_ROWS:
        lines.append(f"- …and {len(short) - MAX_TABLE_ROWS} more (see the JSON report)")
    lines.append("")
    return lines


def _details(run: Any, regressions: list[Any]) -> list[str]:
    lines = [f"#### {_ICON.get(run.status, '')} {code(run.run, 200)}", ""]
    lines.append(f"{md(run.format)} · grad norm {code(run.grad_norm_tag or '-')} · "
                 f"loss {code(run.loss_tag or '-')} · {run.n_steps} steps"
                 + ("" if run.first_step is None else f" ({run.first_step}–{run.last_step})"))
    lines.append("")
    for reg in regressions:
        lines.append(f"- **Regressed:** {md(reg.get('message'))}")
    if regressions:
        lines.append("")
    if run.episodes:
        lines += ["| onset | peak | end | kind | severity | ratio | excess loss | recovered |",
                  "|--:|--:|--:|---|---|--:|--:|--:|"]
        for ep in run.episodes[:MAX_EPISODE_ROWS]:
            li = ep.loss_impact
            lines.append(f"| {ep.onset_step} | {ep.peak_step} | "
                         f"{'-' if ep.end_step is None else ep.end_step} | {md(ep.kind)} | "
                         f"{md(ep.severity)} | {fmt_num(ep.peak_ratio)} | "
                         f"{fmt_num(None if li is None else li.excess_loss)} | "
                         f"{recovery_text(ep)} |")
        more = len(run.episodes) - MAX_EPISODE_ROWS
        if more > 0:
            lines.append(f"\n…and {more} more episode(s).")
        lines.append("")
        for ep in run.episodes[:MAX_EPISODE_ROWS]:
            if ep.reason:
                lines.append(f"- step {ep.onset_step}: {md(ep.reason, MAX_REASON)}")
    clip = run.clip
    if clip is not None:
        if clip.suggested_threshold is not None:
            lines.append(f"- **Suggested clip: {fmt_num(clip.suggested_threshold)}** "
                         f"({md(clip.method)})")
        if clip.advice:
            lines.append(f"- **Advice:** {md(clip.advice)}")
        if clip.options:
            lines += ["", "| clip option | threshold | healthy steps clipped | all steps "
                      "clipped | episode steps clipped | episode peak cut |",
                      "|---|--:|--:|--:|--:|---|"]
            for opt in clip.options[:8]:
                cuts = ", ".join(fmt_pct(c) for c in opt.episode_peak_cut[:5])
                lines.append(f"| {md(opt.method, 80)} | {fmt_num(opt.threshold)} | "
                             f"{fmt_pct(opt.healthy_clipped_fraction)} | "
                             f"{fmt_pct(opt.all_clipped_fraction)} | "
                             f"{fmt_pct(opt.episode_steps_clipped_fraction)} | "
                             f"{cuts or '-'} |")
            lines.append("")
    for note in run.notes[:5]:
        lines.append(f"- _note:_ {md(note)}")
    for prob in run.errors[:5]:
        lines.append(f"- _problem:_ {code(prob.file, 150)}: {md(prob.message)}")
    lines.append("")
    return lines


def _errors(result: Any) -> list[str]:
    bad = [r for r in result.runs if r.status == "error"]
    partial = partly_read(result.runs)
    if not bad and not result.errors and not partial:
        return []
    lines = ["### Errors", ""]
    for run in bad[:MAX_LISTED]:
        lines.append(f"- run {code(run.run, 150)}: {md(error_reason(run))}")
    for err in result.errors[:MAX_LISTED]:
        lines.append(f"- input {code(err.path, 150)}: {md(err.message)}")
    for run in partial[:MAX_LISTED]:
        lines.append(f"- run {code(run.run, 150)} read in part: {md(file_problems(run))}")
    more = sum(max(0, len(x) - MAX_LISTED) for x in (bad, result.errors, partial))
    if more:
        lines.append(f"- …and {more} more (see the JSON report).")
    lines.append("")
    return lines


def render(result: Any) -> str:
    """The Markdown report as a string (at most :data:`MAX_BYTES` bytes of UTF-8)."""
    ranked = worst_first(result.runs)
    by_run: dict[str, list[Any]] = {}
    for reg in result.regressions:
        by_run.setdefault(str(reg.get("run")), []).append(reg)
    lines = _summary(result) + _gate(result) + _table(result, ranked, set(by_run))
    # Regressed runs first (they are what fails a gated CI job), then worst first.
    flagged = sorted((r for r in ranked if has_findings(r) or r.run in by_run),
                     key=lambda r: r.run not in by_run)
    detailed = flagged[:MAX_DETAILED]
    if detailed:
        lines += ["### Findings", ""]
        if len(flagged) > MAX_DETAILED:
            lines += [f"The {MAX_DETAILED} worst runs:", ""]
        for run in detailed:
            lines += _details(run, by_run.get(run.run, []))
    lines += _errors(result)
    lines.append(f"<sub>gradaudit {md(__version__)} · schema_version 1</sub>")
    text = "\n".join(lines) + "\n"
    data = text.encode("utf-8")
    if len(data) > MAX_BYTES:
        cut = data[:MAX_BYTES].decode("utf-8", errors="ignore")
        text = cut[: cut.rfind("\n") + 1] + "\n…(cut to stay under the job-summary limit)\n"
    return text


def write(result: Any, stream: TextIO) -> None:
    """Write the Markdown report of ``result`` to ``stream``."""
    stream.write(render(result))
