"""The HTML report: one self-contained page that opens offline.

Inline CSS and JavaScript (``report.css``/``report.js`` beside this module), figures as embedded
PNG data URIs, no network. A Content-Security-Policy allows only the page's own script (by
hash), inline styles and data: images, so even a mistake in escaping could not run a script
from a log. Every piece of text that comes from the logs (run names, tags, files, messages) is
escaped with :func:`html.escape`; the script reads nothing but the DOM.

A batch of thousands of runs stays usable: every run is one row of a sortable, filterable
summary table; the worst :data:`MAX_DETAILED` runs with findings get a section, and the worst
:data:`MAX_FIGURES` of those a figure.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import sys
from functools import cache
from importlib import resources
from typing import Any, TextIO

from gradaudit import __version__
from gradaudit.errors import UNEXPECTED, clip_message
from gradaudit.report import (
    STATUS_RANK,
    TOO_SHORT,
    diverged,
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
    worst_excess_loss,
    worst_excess_text,
    worst_first,
    worst_peak_ratio,
    worst_peak_text,
)

MAX_FIGURES = 200
MAX_DETAILED = 1000
MAX_EPISODE_ROWS = 50
MAX_LISTED_ERRORS = 500


def e(value: Any) -> str:
    """Escape any value for HTML text and attribute values (control characters, invalid in
    HTML, as backslash-x escapes)."""
    return html.escape(show_controls("" if value is None else value), quote=True)


@cache
def _asset(name: str) -> str:
    return resources.files("gradaudit.report").joinpath(name).read_text(encoding="utf-8")


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")


def _badge(status: str) -> str:
    return f'<span class="badge {e(status)}">{e(status)}</span>'


def _num_cell(x: float | None, text: str | None = None) -> str:
    v = "" if x is None or not math.isfinite(x) else repr(float(x))
    return f'<td class="num" data-v="{v}">{e(text if text is not None else fmt_num(x))}</td>'


def _sort_high(x: float | None, worst: bool) -> float | None:
    """A cell's sort value: the largest float where the text says inf or diverged."""
    return sys.float_info.max if worst else x


def _head(result: Any, script: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{e(_csp(script))}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="gradaudit">\n'
        f"<title>gradaudit report: {result.summary()['runs']} run(s)</title>\n"
        f"<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
    )


def _header(result: Any) -> str:
    code = result.exit_code
    cls = "pass" if code == 0 else "fail" if code == 1 else "none"
    return (
        '<header class="top"><div class="inner"><div><h1>gradaudit report</h1>'
        f'<div class="meta">generated {e(result.generated_at)} by gradaudit '
        f'{e(__version__)} &middot; fail-on {e(result.settings.fail_on)}'
        + (f" &middot; baseline <span class=\"mono\">{e(result.settings.baseline)}</span>"
           if result.settings.baseline else "")
        + f'</div></div><span class="verdict {cls}" id="verdict">{e(gate_headline(result))}'
        "</span></div></header>\n<main>\n"
    )


def _cards(result: Any) -> str:
    s = result.summary()
    items = [("runs", s["runs"], ""), ("explosions", s["explosions"], "exp"),
             ("warnings", s["warnings"], "warn"), ("errors", s["errors"], "err"),
             ("regressions", s["regressions"], "exp" if s["regressions"] else "")]
    if s["too_short"]:  # their "ok" says only that nothing could be found
        items.append(("too short to judge", s["too_short"], "warn"))
    out = ['<section class="cards" id="summary">']
    for label, n, cls in items:
        out.append(f'<div class="card {cls}"><div class="n">{n}</div>'
                   f'<div class="l">{e(label)}</div></div>')
    clip = result.batch_clip
    if clip is not None and clip.suggested_threshold is not None:
        what = chosen.description if (chosen := clip.chosen()) is not None else ""
        out.append(f'<div class="card"><div class="n">{e(fmt_num(clip.suggested_threshold))}'
                   f'</div><div class="l">batch clip</div><div class="note mono">'
                   f'{e(clip.method)}</div><div class="note">{e(what)}</div></div>')
    elif clip is not None and clip.advice:
        out.append(f'<div class="card"><div class="n">-</div><div class="l">batch clip</div>'
                   f'<div class="note">{e(clip.advice)}</div></div>')
    out.append("</section>\n")
    return "".join(out)


def _gate(result: Any) -> str:
    if not result.gate_reasons and not result.regressions:
        return ""
    out = ['<h2 id="gate">Gate</h2><div class="panel">']
    if result.gate_reasons:
        out.append('<ul class="reasons">')
        out.extend(f"<li>{e(r)}</li>" for r in result.gate_reasons)
        out.append("</ul>")
    if result.regressions:
        out.append('<h3 style="margin-top:12px">What regressed against the baseline</h3>'
                   "<table><thead><tr><th>run</th><th>metric</th><th class=\"num\">baseline"
                   "</th><th class=\"num\">now</th><th>what</th></tr></thead><tbody>")
        for reg in result.regressions:
            out.append(
                f'<tr><td class="run mono">{e(reg.get("run"))}</td><td>{e(reg.get("metric"))}'
                f'</td><td class="num">{e(_plain(reg.get("baseline")))}</td>'
                f'<td class="num">{e(_plain(reg.get("current")))}</td>'
                f'<td>{e(reg.get("message"))}</td></tr>')
        out.append("</tbody></table>")
    out.append("</div>\n")
    return "".join(out)


def _plain(x: Any) -> str:
    if isinstance(x, float):
        return fmt_num(x, 4)
    return "-" if x is None else str(x)


def _summary_table(runs: list[Any], anchors: dict[int, str]) -> str:
    out = [
        '<h2 id="runs">Runs</h2><div class="controls">'
        '<input type="search" id="runs-filter" placeholder="Filter runs by name" '
        'aria-label="Filter runs by name">'
        '<select id="runs-status" aria-label="Filter by status">'
        '<option value="">all statuses</option><option value="findings">with findings</option>'
        '<option value="explosion">explosion</option><option value="warning">warning</option>'
        '<option value="error">error</option><option value="ok">ok</option>'
        '<option value="too_short">too short to judge</option></select>'
        f'<span class="count" id="runs-count">{len(runs)} runs</span></div>'
        '<div class="tablewrap"><table id="runs-table" class="sortable"><thead><tr>'
        '<th data-type="text">run</th><th data-type="num">status</th>'
        '<th data-type="text">format</th><th class="num" data-type="num">steps</th>'
        '<th class="num" data-type="num">episodes</th>'
        '<th class="num" data-type="num">worst peak ratio</th>'
        '<th class="num" data-type="num">excess loss</th>'
        '<th class="num" data-type="num">suggested clip</th></tr></thead><tbody>'
    ]
    for run in runs:
        name = e(run.run)
        anchor = anchors.get(id(run))
        label = f'<a href="#{anchor}">{name}</a>' if anchor else name
        peak_text = worst_peak_text(run)
        out.append(
            f'<tr data-run="{name}" data-status="{e(run.status)}"'
            + (' data-short="1">' if run.too_short else ">")
            + f'<td class="run mono" data-v="{name}">{label}</td>'
            f'<td data-v="{STATUS_RANK.get(run.status, 0)}">{_badge(run.status)}'
            + (f' <span class="note" title="{e(run.short_note or TOO_SHORT)}">too short</span>'
               if run.too_short else "") + "</td>"
            f"<td>{e(run.format)}</td>"
            + _num_cell(run.n_steps, str(run.n_steps))
            + _num_cell(len(run.episodes), str(len(run.episodes)))
            + _num_cell(_sort_high(worst_peak_ratio(run), peak_text == "inf"), peak_text)
            + _num_cell(_sort_high(worst_excess_loss(run), diverged(run)), worst_excess_text(run))
            + _num_cell(suggested_clip(run))
            + "</tr>"
        )
    out.append("</tbody></table></div>\n")
    return "".join(out)


def _episodes_table(run: Any) -> str:
    out = ['<table><thead><tr><th class="num">onset</th><th class="num">peak</th>'
           '<th class="num">end</th><th>kind</th><th>severity</th>'
           '<th class="num">peak grad norm</th><th class="num">healthy</th>'
           '<th class="num">ratio</th><th class="num">excess loss</th>'
           '<th class="num">loss jump</th><th class="num">recovered at</th>'
           "<th>detected by</th></tr></thead><tbody>"]
    for ep in run.episodes[:MAX_EPISODE_ROWS]:
        li = ep.loss_impact
        out.append(
            f'<tr><td class="num">{ep.onset_step}</td><td class="num">{ep.peak_step}</td>'
            f'<td class="num">{"-" if ep.end_step is None else ep.end_step}</td>'
            f"<td>{e(ep.kind)}</td><td>{_badge(ep.severity)}</td>"
            f'<td class="num">{e(fmt_num(ep.peak_grad_norm))}</td>'
            f'<td class="num">{e(fmt_num(ep.baseline_grad_norm))}</td>'
            f'<td class="num">{e(fmt_num(ep.peak_ratio))}</td>'
            f'<td class="num">{e(fmt_num(None if li is None else li.excess_loss))}</td>'
            f'<td class="num">{e(fmt_num(None if li is None else li.loss_jump))}</td>'
            f'<td class="num">{e(recovery_text(ep))}</td>'
            f"<td>{e(', '.join(ep.detected_by))}</td></tr>")
    out.append("</tbody></table>")
    more = len(run.episodes) - MAX_EPISODE_ROWS
    if more > 0:
        out.append(f'<p class="note">and {more} more episode(s); see the JSON report.</p>')
    return "".join(out)


def _reasons(run: Any) -> str:
    items = [(ep.onset_step, ep.reason) for ep in run.episodes[:MAX_EPISODE_ROWS] if ep.reason]
    if not items:
        return ""
    lis = "".join(f"<li><b>step {step}</b>: {e(reason)}</li>" for step, reason in items)
    return f'<h4>Why</h4><ul class="reasons">{lis}</ul>'


def _clip_table(run: Any) -> str:
    clip = run.clip
    if clip is None:
        return ""
    out = []
    if clip.suggested_threshold is not None:
        out.append(f"<p><b>Suggested clip threshold: {e(fmt_num(clip.suggested_threshold))}"
                   f"</b> <span class=\"muted\">({e(clip.method)})</span></p>")
    if clip.advice:
        out.append(f'<div class="advice">{e(clip.advice)}</div>')
    if clip.options:
        out.append('<table><thead><tr><th>method</th><th class="num">threshold</th>'
                   '<th class="num">healthy steps clipped</th>'
                   '<th class="num">all steps clipped</th>'
                   '<th class="num">episode steps clipped</th>'
                   "<th>episode peak cut</th><th>how</th></tr></thead><tbody>")
        for opt in clip.options:
            cuts = ", ".join(fmt_pct(c) for c in opt.episode_peak_cut[:10])
            if len(opt.episode_peak_cut) > 10:
                cuts += ", ..."
            out.append(
                f"<tr><td>{e(opt.method)}</td><td class=\"num\">{e(fmt_num(opt.threshold))}</td>"
                f'<td class="num">{e(fmt_pct(opt.healthy_clipped_fraction))}</td>'
                f'<td class="num">{e(fmt_pct(opt.all_clipped_fraction))}</td>'
                f'<td class="num">{e(fmt_pct(opt.episode_steps_clipped_fraction))}</td>'
                f"<td>{e(cuts or '-')}</td><td>{e(opt.description)}</td></tr>")
        out.append("</tbody></table>")
    return "<h4>Clipping</h4>" + "".join(out) if out else ""


def _notes(run: Any) -> str:
    parts = []
    if run.notes:
        parts.append('<ul class="reasons note">'
                     + "".join(f"<li>{e(n)}</li>" for n in run.notes[:50]) + "</ul>")
    if run.errors:
        parts.append('<ul class="reasons note">' + "".join(
            f'<li><span class="mono">{e(p.file)}</span>: {e(p.message)}</li>'
            for p in run.errors[:50]) + "</ul>")
    return "<h4>Notes</h4>" + "".join(parts) if parts else ""


def _run_section(run: Any, anchor: str, figure: str | None, regressions: list[Any],
                 zooms: list[tuple[int, str]] = (), figure_failed: str | None = None) -> str:
    tags = [f"grad norm <span class=\"mono\">{e(run.grad_norm_tag or '-')}</span>",
            f"loss <span class=\"mono\">{e(run.loss_tag or '-')}</span>"]
    if run.lr_tag:
        tags.append(f"lr <span class=\"mono\">{e(run.lr_tag)}</span>")
    span = ("" if run.first_step is None
            else f" &middot; steps {run.first_step}&ndash;{run.last_step}")
    out = [f'<section class="run" id="{anchor}"><h3>{_badge(run.status)} '
           f'<span class="mono">{e(run.run)}</span></h3>'
           f'<div class="sub">{e(run.format)} &middot; {" &middot; ".join(tags)}'
           f"{span} ({run.n_steps} logged)</div>"]
    if regressions:
        out.append('<div class="advice" style="border-color:#b91c1c;background:#fef2f2">'
                   "<b>Regressed:</b> " + "; ".join(e(r.get("message")) for r in regressions)
                   + "</div>")
    if figure:
        out.append(f'<img alt="grad norm and loss of this run, episodes shaded" src="{figure}">')
    elif figure_failed:
        out.append('<p class="note">The figure of this run could not be drawn '
                   f"({e(clip_message(figure_failed, 300))}); its findings are below.</p>")
    for onset, uri in zooms:  # a long run's worst episodes, at full resolution
        out.append(f'<div class="sub">Episode at step {int(onset)}, zoomed: one impact horizon '
                   f'before it to two after</div><img alt="grad norm and loss around the '
                   f'episode at step {int(onset)}, with its counterfactual" src="{uri}">')
    if run.episodes:
        out.append(_episodes_table(run))
    out.append(_reasons(run))
    out.append(_clip_table(run))
    out.append(_notes(run))
    out.append("</section>\n")
    return "".join(out)


def _errors(result: Any) -> str:
    bad_runs = [r for r in result.runs if r.status == "error"]
    partial = partly_read(result.runs)
    if not bad_runs and not result.errors and not partial:
        return ""
    out = ['<h2 id="errors">Errors</h2><div class="panel">']
    if bad_runs:
        out.append("<h3>Runs that could not be audited</h3><ul class=\"reasons\">")
        for run in bad_runs[:MAX_LISTED_ERRORS]:
            out.append(f'<li><span class="mono">{e(run.run)}</span>: {e(error_reason(run))}</li>')
        out.append("</ul>")
        if len(bad_runs) > MAX_LISTED_ERRORS:
            out.append(f'<p class="note">and {len(bad_runs) - MAX_LISTED_ERRORS} more.</p>')
    if partial:
        out.append("<h3>Runs read in part (findings stand on what could be read)</h3>"
                   "<ul class=\"reasons\">")
        for run in partial[:MAX_LISTED_ERRORS]:
            out.append(f'<li><span class="mono">{e(run.run)}</span>: {e(file_problems(run))}</li>')
        out.append("</ul>")
        if len(partial) > MAX_LISTED_ERRORS:
            out.append(f'<p class="note">and {len(partial) - MAX_LISTED_ERRORS} more.</p>')
    if result.errors:
        out.append("<h3>Inputs that yielded no run</h3><ul class=\"reasons\">")
        for err in result.errors[:MAX_LISTED_ERRORS]:
            out.append(f'<li><span class="mono">{e(err.path)}</span>: {e(err.message)}</li>')
        out.append("</ul>")
        if len(result.errors) > MAX_LISTED_ERRORS:
            out.append(f'<p class="note">and {len(result.errors) - MAX_LISTED_ERRORS} more.</p>')
    out.append("</div>\n")
    return "".join(out)


def _notes_section(result: Any, detailed: set[int]) -> str:
    rows = [r for r in result.runs if r.notes and id(r) not in detailed]
    if not rows:
        return ""
    out = ['<h2 id="notes">Notes</h2><details class="panel"><summary>'
           f"{len(rows)} run(s) with notes (resumed step ranges, sampled tables, ...)</summary>"
           '<ul class="reasons note">']
    for run in rows[:MAX_LISTED_ERRORS]:
        out.append(f'<li><span class="mono">{e(run.run)}</span>: '
                   f'{e("; ".join(run.notes[:5]))}</li>')
    out.append("</ul></details>\n")
    return "".join(out)


def write(result: Any, stream: TextIO) -> None:
    """Write the HTML report of ``result`` to ``stream``."""
    script = _asset("report.js")
    ranked = worst_first(result.runs)
    regressions_by_run: dict[str, list[Any]] = {}
    for reg in result.regressions:
        regressions_by_run.setdefault(str(reg.get("run")), []).append(reg)
    # Regressed runs first (they are what fails a gated CI job), then worst first.
    with_findings = sorted((r for r in ranked if has_findings(r) or r.run in regressions_by_run),
                           key=lambda r: r.run not in regressions_by_run)
    detailed = with_findings[:MAX_DETAILED]
    anchors = {id(run): f"run-{i}" for i, run in enumerate(detailed)}

    stream.write(_head(result, script))
    stream.write(_header(result))
    stream.write(_cards(result))
    stream.write(_gate(result))
    stream.write(_summary_table(ranked, anchors))
    if detailed:
        stream.write('<h2 id="findings">Findings</h2>\n')
        if len(with_findings) > len(detailed):
            stream.write(f'<p class="note">The {len(detailed)} worst of {len(with_findings)} '
                         "runs with findings are shown in detail; the rest are rows of the "
                         "table above and entries of the JSON report.</p>\n")
        if len(detailed) > MAX_FIGURES:  # said first: a reader looks for a missing figure
            stream.write(f'<p class="note">Figures are drawn for the first {MAX_FIGURES} of '
                         f"these {len(detailed)} runs (in the order below: regressed runs, "
                         "then the worst status, divergences, the highest peak ratio); scan a "
                         "subset of the runs to see the others' figures.</p>\n")
        figure_maker = None
        for i, run in enumerate(detailed):
            figure, zooms, failed = None, [], None
            if i < MAX_FIGURES and run.traces:
                if figure_maker is None:
                    from gradaudit.report.figures import RunFigure

                    figure_maker = RunFigure()
                try:
                    figure = figure_maker.png_data_uri(run)
                    zooms = figure_maker.zoom_data_uris(run)
                except UNEXPECTED as exc:  # one run's figure never costs the report
                    figure, zooms, failed = None, [], f"{type(exc).__name__}: {exc}"
                    figure_maker = None  # (its reused axes may hold that run's artists)
            stream.write(_run_section(run, anchors[id(run)], figure,
                                      regressions_by_run.get(run.run, []), zooms, failed))
    stream.write(_errors(result))
    stream.write(_notes_section(result, {id(r) for r in detailed}))
    stream.write(
        f'<footer>gradaudit {e(__version__)} &middot; schema_version 1 &middot; '
        "steps are training steps as logged; excess loss is the mean of loss minus its "
        "counterfactual over the impact horizon after an onset.</footer>\n</main>\n"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )
