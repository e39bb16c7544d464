"""The report formats (HTML, Markdown, GitHub annotations, JSON) on constructed AuditResults."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import stat
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from reportkit import FIXED_TIME, episode, fixed_result, run

from gradaudit import __version__
from gradaudit.errors import UsageError
from gradaudit.gate import evaluate_gate
from gradaudit.model import ClipSuggestion, InputError
from gradaudit.report import FORMATTERS, format_for, github, html, markdown, write_report
from gradaudit.result import AuditResult
from gradaudit.series import FileProblem
from gradaudit.settings import Settings

GOLD = Path(__file__).parent / "gold"

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>alert(2)</script>",
    "<!--",
    "a|b|c",
    "`code` **bold** [link](http://evil.example)",
    "line1\nline2\r\n::error title=x::injected",
    "100%, done: yes",
]


def render(fmt: str, result: AuditResult) -> str:
    buf = io.StringIO()
    FORMATTERS[fmt](result, buf)
    return buf.getvalue()


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def hostile_result() -> AuditResult:
    runs = []
    for i, name in enumerate(HOSTILE):
        r = run(name, "explosion", [episode(300, 10.0 + i, reason=f"because {name}")],
                tag=name, notes=[f"note {name}"], errors=[FileProblem(name, f"problem {name}")],
                advice=f"advice {name}")
        for o in r.clip.options:  # every text a report shows, from the run's own names
            o.method, o.description = f"{o.method} {name}", f"how {name}"
        r.clip.method = r.clip.options[0].method
        runs.append(r)
    runs.append(run(HOSTILE[1] + "-broken", "error", errors=[FileProblem(HOSTILE[0], HOSTILE[1])]))
    result = AuditResult(runs=runs, errors=[InputError(HOSTILE[2], HOSTILE[0])],
                         generated_at=FIXED_TIME,
                         batch_clip=ClipSuggestion(None, "none", [], f"batch {HOSTILE[0]}"))
    evaluate_gate(result)
    result.regressions = [{"run": HOSTILE[0], "metric": "status", "baseline": "ok",
                           "current": "explosion", "message": f"new explosion {HOSTILE[1]}"}]
    return result


# --- registry, format choice, atomic writing ----------------------------------------------


def test_formatters_registered_and_suffixes():
    assert {"json", "html", "md", "github"} <= set(FORMATTERS)
    assert format_for("r.html", None) == "html"
    assert format_for("r.md", None) == "md"
    assert format_for("-", None) == "json"
    assert format_for("x.txt", "github") == "github"
    with pytest.raises(UsageError):
        format_for("report.txt", None)


def test_failed_formatter_leaves_no_file_and_no_temp(tmp_path, monkeypatch):
    def broken(result, stream):
        stream.write("half a report" * 1000)
        raise RuntimeError("formatter died")

    monkeypatch.setitem(FORMATTERS, "md", broken)
    target = tmp_path / "report.md"
    with pytest.raises(RuntimeError):
        write_report(fixed_result(), str(target))
    assert list(tmp_path.iterdir()) == []


def test_failed_formatter_keeps_the_previous_report(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("previous\n")

    def broken(result, stream):
        stream.write("partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(FORMATTERS, "md", broken)
    with pytest.raises(KeyboardInterrupt):
        write_report(fixed_result(), str(target))
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_report_permissions_follow_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_report(fixed_result(), str(tmp_path / "r.json"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode


def test_report_keeps_mode_of_replaced_file(tmp_path):
    target = tmp_path / "r.md"
    target.write_text("old")
    target.chmod(0o640)
    write_report(fixed_result(), str(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_text().startswith("## ")


def test_a_symlinked_report_path_is_replaced_not_written_through(tmp_path):
    # a symlink planted in a shared folder must not redirect the report onto its target (a
    # review: following it, the report overwrote any file the user could write)
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "victim.conf"
    real.write_text("precious")
    link = tmp_path / "report.md"
    link.symlink_to(real)
    write_report(fixed_result(), str(link))
    assert not link.is_symlink() and link.read_text().startswith("## ")
    assert real.read_text() == "precious"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_report_path_that_is_no_regular_file_is_written_not_replaced(tmp_path):
    # --out /dev/null (a device) or a FIFO: the temporary file was renamed over it, and as root
    # /dev/null itself became a regular file (found by a fuzzing review); written in place now
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "pipe.md"  # (through a symlink too: /dev/stdout on a pipe is one)
    link.symlink_to(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_report(fixed_result(), str(link))
    reader.join(timeout=10)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and got and got[0].startswith("## ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "pipe.md"]  # no temp file


def test_missing_output_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot write"):
        write_report(fixed_result(), str(tmp_path / "no" / "such" / "r.md"))


def test_dash_means_stdout(capsys):
    result = fixed_result()
    write_report(result, "-", "md")
    assert capsys.readouterr().out == markdown.render(result)
    write_report(result, "-")
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1


# --- JSON ---------------------------------------------------------------------------------


def test_json_contract_fields():
    result = fixed_result()
    evaluate_gate(result)
    doc = json.loads(render("json", result))
    assert doc["schema_version"] == 1
    assert doc["tool"] == {"name": "gradaudit", "version": __version__}
    assert doc["summary"] == {"runs": 5, "explosions": 2, "warnings": 1, "errors": 2,
                              "regressions": 0, "too_short": 0}
    assert doc["gate"]["exit_code"] == 1
    by_name = {r["run"]: r for r in doc["runs"]}
    ep = by_name["exp/lr-3e-4"]["episodes"][0]
    assert ep["onset_step"] == 400 and ep["peak_ratio"] == 25.0
    assert by_name["diverged"]["episodes"][0]["loss_impact"]["excess_loss"] is None
    assert doc["errors"] == [{"path": "junk.csv", "message": "no step column"}]


# --- HTML ---------------------------------------------------------------------------------


def test_html_is_self_contained_and_complete():
    result = fixed_result()
    evaluate_gate(result)
    text = render("html", result)
    parser = TagCollector()
    parser.feed(text)
    tags = parser.tags
    # No network: no external scripts, stylesheets, images or links.
    for tag, attrs in tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(?i)\s*(https?:|//|ftp:)", value), (tag, attrs)
        assert tag != "link"
    assert sum(1 for t, _ in tags if t == "script") == 1
    # The CSP allows exactly the page's own script.
    script = "".join(parser.script_text)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = next(a["content"] for t, a in tags if t == "meta" and a.get("http-equiv"))
    assert f"'sha256-{digest}'" in csp and "default-src 'none'" in csp
    # One figure per run with findings and traces (3 here), each an embedded PNG.
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert len(imgs) == 3 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert base64.b64decode(imgs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # The summary table lists every run; its sort/filter hooks are there.
    rows = [a for t, a in tags if t == "tr" and "data-run" in a]
    assert [r["data-run"] for r in rows] == ["diverged", "exp/lr-3e-4", "warn-run", "broken",
                                             "clean-run"]
    assert 'id="runs-filter"' in text and 'class="sortable"' in text
    # Findings: reasons, advice, clip options, notes, errors of runs and of inputs.
    for needle in ("grad norm 25.0x its healthy level of 1.0", "lower the learning rate",
                   "ZClip alpha 0.97 z 2.5", "replaced by later writes", "truncated record",
                   "no step column", "junk.csv", "gate failed (exit 1)"):
        assert needle in text, needle


def test_html_cap_on_figures_and_details(monkeypatch):
    monkeypatch.setattr(html, "MAX_FIGURES", 2)
    monkeypatch.setattr(html, "MAX_DETAILED", 3)
    runs = [run(f"r{i}", "explosion", [episode(100, 5.0 + i)], n=300) for i in range(6)]
    text = render("html", AuditResult(runs=runs, generated_at=FIXED_TIME))
    assert text.count("<img ") == 2
    assert text.count('<section class="run"') == 3
    # The worst (largest ratio) runs get figures: r5 and r4 first.
    first_sections = re.findall(r'<section class="run" id="run-\d+"><h3>.*?mono">(r\d)<', text)
    assert first_sections == ["r5", "r4", "r3"]
    # both caps are said before the first section (a reader looks for the missing figures)
    cap = text.index("Figures are drawn for the first 2 of these 3 runs")
    assert text.index("The 3 worst of 6 runs") < cap < text.index('<section class="run"')


def test_html_escapes_hostile_text():
    text = render("html", hostile_result())
    parser = TagCollector()
    parser.feed(text)
    assert sum(1 for t, _ in parser.tags if t == "script") == 1
    for tag, attrs in parser.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        assert tag != "img" or attrs["src"].startswith("data:image/png;base64,")
    # The hostile text is shown, as text: names, reasons, advice, clip options, batch advice.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for shown in ("advice ", "how ", "zclip ", "batch ", "because "):
        assert f"{shown}&lt;script&gt;alert(1)&lt;/script&gt;" in text, shown
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<script>alert" not in text and "<img src=x" not in text
    assert text.count("</script>") == 1
    # data-run attributes hold the names intact (the HTML parser unescapes them).
    names = {a["data-run"] for t, a in parser.tags if t == "tr" and "data-run" in a}
    assert set(HOSTILE) <= names


def test_html_names_regressions():
    result = fixed_result()
    result.regressions = [{"run": "warn-run", "metric": "spike_rate", "baseline": 0.1,
                           "current": 3.0, "message": "spike rate rose from 0.1 to 3"}]
    text = render("html", result)
    assert "What regressed against the baseline" in text
    assert "spike rate rose from 0.1 to 3" in text


def test_html_5000_runs_stays_small_and_fast():
    runs = []
    for i in range(5000):
        if i % 5 == 0:  # 1000 runs with findings, each with traces of 2000 steps
            runs.append(run(f"sweep/lr-{i}/seed-{i % 7}", "explosion" if i % 10 == 0 else
                            "warning", [episode(900, 3.0 + i % 97)], n=2000))
        else:
            runs.append(run(f"sweep/lr-{i}/seed-{i % 7}"))
    result = AuditResult(runs=runs, generated_at=FIXED_TIME)
    evaluate_gate(result)
    start = time.perf_counter()
    text = render("html", result)
    elapsed = time.perf_counter() - start
    size = len(text.encode())
    print(f"\n5000-run HTML: {size / 1e6:.2f} MB in {elapsed:.1f} s")
    assert size < 25e6
    assert text.count("<img ") == html.MAX_FIGURES
    assert text.count('<tr data-run="') == 5000
    md_text = markdown.render(result)
    md_size = len(md_text.encode())
    print(f"5000-run Markdown: {md_size / 1024:.0f} KiB")
    assert md_size < 1024 * 1024


# --- Markdown -----------------------------------------------------------------------------


def _table_cells(line: str) -> list[str]:
    # Split a GFM table row on unescaped pipes.
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_markdown_content():
    result = fixed_result()
    evaluate_gate(result)
    text = markdown.render(result)
    assert text.startswith("## ❌ gradaudit: gate failed (exit 1)")
    assert "| <code>exp/lr-3e-4</code> | 🔴 explosion | 2 | 25 | 0.25 | 1.8 |" in text
    assert "| 400 | 402 | 405 | spike | explosion | 25 | 0.25 | 520 |" in text
    assert "**Advice:** lower the learning rate" in text
    assert "input <code>junk.csv</code>: no step column" in text
    assert "1 run(s) without findings" in text


def test_markdown_escapes_hostile_text():
    text = markdown.render(hostile_result())
    assert "<script" not in text and "<img" not in text and "<!--" not in text
    # Every row of a table has as many cells as its header (no pipe or newline broke out).
    tables: list[list[str]] = []
    for block in text.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            tables.append(rows)
    assert tables
    for rows in tables:
        widths = {len(_table_cells(r)) for r in rows}
        assert len(widths) == 1, rows
    assert r"a\|b\|c" in text
    assert r"\`code\` \*\*bold\*\* \[link\]" in text
    assert "line1 line2 ::error" in text


def test_markdown_5000_regressions_and_long_names_stay_under_limit():
    runs = [run("x" * 5000 + str(i), "explosion", [episode(10, 50.0)] * 30, n=100,
                with_traces=False) for i in range(300)]
    result = AuditResult(runs=runs, generated_at=FIXED_TIME)
    result.regressions = [{"run": r.run, "metric": "status", "baseline": "ok",
                           "current": "explosion", "message": "m" * 10000} for r in runs]
    assert len(markdown.render(result).encode()) < 1024 * 1024


# --- GitHub annotations -------------------------------------------------------------------


def test_github_escaping_rules():
    assert github.escape_data("50% a\r\nb") == "50%25 a%0D%0Ab"
    assert github.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_github_annotations_worst_first():
    result = fixed_result()
    evaluate_gate(result)
    lines = github.lines(result)
    assert lines[0].startswith("::notice title=gradaudit::gate failed (exit 1)")
    assert lines[1].startswith("::error title=gradaudit%3A diverged::")
    assert lines[2].startswith("::error title=gradaudit%3A exp/lr-3e-4::explosion: 2 episode")
    assert lines[3].startswith("::warning title=gradaudit%3A warn-run::warning")
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)


def test_github_warning_is_error_when_it_fails_the_gate():
    result = fixed_result(fail_on="warning")
    evaluate_gate(result)
    assert any(ln.startswith("::error title=gradaudit%3A warn-run::") for ln in
               github.lines(result))


def test_github_escapes_hostile_text():
    result = hostile_result()
    out = render("github", result)
    for line in out.splitlines():
        assert re.match(r"^::(notice|warning|error) title=[^:]*::", line), line
        title = line.split("::")[1]
        assert "," not in title.split("title=", 1)[1]
    assert "line1%0Aline2%0D%0A%3A%3Aerror title=x%3A%3Ainjected" in out
    assert "100%25%2C done%3A yes" in out
    assert "regression%3A <script>alert(1)</script>::new explosion" in out


# --- gold files ---------------------------------------------------------------------------


def _html_skeleton(text: str) -> str:
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,FIGURE", text)
    text = re.sub(r"<style>.*?</style>", "<style>CSS</style>", text, flags=re.S)
    text = re.sub(r"<script>.*?</script>", "<script>JS</script>", text, flags=re.S)
    text = re.sub(r"sha256-[A-Za-z0-9+/=]+", "sha256-HASH", text)
    text = text.replace(FIXED_TIME, "TIME").replace(f"gradaudit {__version__}", "gradaudit VER")
    return text.replace("><", ">\n<")


def _markdown_stable(text: str) -> str:
    return text.replace(f"gradaudit {__version__}", "gradaudit VER")


@pytest.mark.parametrize("name,fmt,clean", [("report.md", "md", _markdown_stable),
                                            ("report.html", "html", _html_skeleton)])
def test_gold(name, fmt, clean):
    result = fixed_result(baseline="last-good.json")
    result.regressions = [{"run": "warn-run", "metric": "healthy_grad_norm", "baseline": 1.0,
                           "current": 2.0, "message": "healthy grad-norm level rose 2x"}]
    result.gate_reasons = ["1 regression(s) against the baseline in 1 run(s): 'warn-run'"]
    result.exit_code = 1
    got = clean(render(fmt, result))
    path = GOLD / name
    if os.environ.get("GRADAUDIT_UPDATE_GOLD") == "1":
        GOLD.mkdir(exist_ok=True)
        path.write_text(got, encoding="utf-8")
        pytest.skip(f"updated {path}")
    assert path.exists(), f"{path} missing: run with GRADAUDIT_UPDATE_GOLD=1"
    assert got == path.read_text(encoding="utf-8")


def test_markdown_does_not_mention_or_link_from_run_names():
    from gradaudit.report.markdown import md

    # GitHub would notify @org/team and link the URL; a word joiner breaks both, visibly intact
    for text in ("@org/team run", "see https://evil.example/x", "www.evil.com"):
        out = md(text)
        assert out.replace("\u2060", "") == text
        assert "@o" not in out and "://" not in out and "www." not in out


def test_every_format_names_files_read_in_part_and_why_a_run_could_not_be_audited():
    # an audited run whose event file had a corrupt record (no findings), and a run read but
    # with nothing usable (its reason is in its notes): each format says both
    partial = run("partial", errors=[FileProblem("partial/events.out", "record 600: skipped")])
    nan = run("all-nan", "error", notes=["every grad-norm and loss value is NaN/inf"],
              errors=[FileProblem("all-nan.csv", "1 row(s) without a usable 'step' skipped")])
    result = AuditResult(runs=[run("clean"), partial, nan], generated_at=FIXED_TIME)
    evaluate_gate(result)
    for fmt in ("md", "html", "github"):
        text = render(fmt, result)
        assert "record 600: skipped" in text, fmt
        assert "every grad-norm and loss value is NaN/inf" in text, fmt
        assert "no data" not in text and "could not be read: could not be read" not in text


def test_nothing_but_unusable_runs_is_exit_2():
    result = AuditResult(runs=[run("all-nan", "error", notes=["every value is NaN"])],
                         generated_at=FIXED_TIME)
    evaluate_gate(result)
    assert result.exit_code == 2 and "no run could be audited" in result.gate_reasons[0]


def test_terminal_escapes_in_names_never_reach_the_terminal():
    name = "run_\x1b[2J\x1b]0;PWNED\x07\x9b31m"
    result = AuditResult(runs=[run(name, "explosion", [episode(300, 20.0, reason=name)],
                                   errors=[FileProblem(name, name)])],
                         generated_at=FIXED_TIME)
    evaluate_gate(result)
    for fmt in ("md", "github", "html", "json"):
        text = render(fmt, result)
        assert not any(c in text for c in "\x1b\x07\x9b"), fmt
        if fmt == "json":  # JSON keeps the name, escaped
            assert "\\u001b[2J" in text and json.loads(text)["runs"][0]["run"] == name
    assert "\\x1b[2J" in render("github", result).replace("%5B", "[")


def test_invisible_characters_in_names_are_shown_not_obeyed():
    # a bidi override or a zero-width space in a run name made one run look like another in a
    # CI summary (found by a fuzzing review): shown as \uXXXX escapes in md, github and html
    name = "good-run\u202e\u200bnur-dab\u2066x\ufeff"
    result = AuditResult(runs=[run(name, "explosion", [episode(300, 20.0)])],
                         generated_at=FIXED_TIME)
    evaluate_gate(result)
    for fmt in ("md", "github", "html"):
        text = render(fmt, result)
        assert not any(c in text for c in "\u202e\u200b\u2066\ufeff"), fmt
        assert "\\u202e" in text, fmt
    assert json.loads(render("json", result))["runs"][0]["run"] == name  # JSON keeps the name
    from gradaudit.report import show_controls

    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # a joiner spells it: kept
    assert show_controls(persian) == persian
    # every other invisible format character too: the Arabic letter mark, a soft hyphen, a line
    # separator, and tag characters (they can spell text no one sees: "hi" here)
    assert show_controls("run\u061c\u00ad\u2028\U000e0068\U000e0069-\u4e2d") == \
        "run\\u061c\\xad\\u2028\\U000e0068\\U000e0069-\u4e2d"


def test_a_long_runs_worst_episodes_get_full_resolution_zooms():
    # 200k logged steps drawn 800 px wide put an episode and its counterfactual in one pixel
    # (a user review); the worst episodes are drawn again from full-resolution windows
    import numpy as np
    from _synth import healthy, run_series

    from gradaudit.audit import audit_run
    from gradaudit.traces import MAX_ZOOMS

    s, g, loss = healthy(n=20000, seed=4)
    for on in (5000, 9000, 13000, 17000):
        g[on:on + 30] *= 25.0
        loss[on:on + 30] += 1.0
        loss[on + 30:on + 230] += np.linspace(0.3, 0.0, 200)
    long_run = audit_run(run_series(s, g, loss, name="long"))
    zoomed = sorted({k.split(":")[1] for k in long_run.traces if k.startswith("zoom:")})
    assert len(zoomed) == MAX_ZOOMS and len(long_run.episodes) > MAX_ZOOMS
    for key in (f"zoom:{zoomed[0]}:grad", f"zoom:{zoomed[0]}:loss"):
        steps, _ = long_run.traces[key]
        assert steps[0] == int(zoomed[0]) - 200 and steps[-1] == int(zoomed[0]) + 400
        assert np.all(np.diff(steps) == 1)  # every logged point, not the decimated trace
    result = AuditResult(runs=[long_run])
    evaluate_gate(result)
    page = render("html", result)
    assert len(re.findall(r"Episode at step \d+, zoomed", page)) == MAX_ZOOMS
    s, g, loss = healthy(n=1500, seed=4)  # a short run's figure already shows its episodes
    g[700:730] *= 25.0
    loss[700:730] += 1.0
    short_run = audit_run(run_series(s, g, loss, name="short"))
    assert short_run.episodes and not any(k.startswith("zoom:") for k in short_run.traces)


def test_a_loss_that_blew_up_is_drawn_on_a_log_scale_and_the_next_run_is_not():
    # a run that diverged in its first steps is mostly its climb to 1e21: on a linear axis,
    # a flat line (a user review); the reused axes go back to linear for the next run
    import numpy as np
    from _synth import healthy, run_series

    from gradaudit.audit import audit_run
    from gradaudit.report.figures import RunFigure

    s, g, loss = healthy(n=1500, seed=1)
    g[5:30] *= np.exp(np.arange(25) * 1.2)
    g[30:] = np.inf
    loss[5:30] *= np.exp(np.arange(25) * 2.0)
    loss[30:] = np.nan
    blown = audit_run(run_series(s, g, loss, name="blown"))
    # its counterfactual is drawn up to the loss's last finite step, not 1000 steps past it
    (cf_steps, _), = [v for k, v in blown.traces.items() if k.startswith("counterfactual:")]
    assert cf_steps.size and cf_steps.max() < 30
    s, g, loss = healthy(n=1500, seed=2)
    g[700:730] *= 25.0
    loss[700:730] += 1.0
    normal = audit_run(run_series(s, g, loss, name="normal"))
    maker = RunFigure()
    assert maker.png_data_uri(blown) is not None
    (_, axes), = maker._layouts.values()
    assert axes[-1].get_yscale() == "log"
    assert maker.png_data_uri(normal) is not None
    assert axes[-1].get_yscale() == "linear"


def test_recovered_at_says_when_the_loss_never_left_its_band():
    # the engine reports recovery_step == onset where the smoothed loss stayed in the band: a
    # "recovered at" equal to the onset read as a recovery that never was
    stayed = episode(300, 4.0, severity="warning", excess=0.001)
    stayed.loss_impact.recovery_step = 300
    came_back = episode(600, 40.0)  # recovery_step 720
    blew_up = episode(900, 90.0, diverged=True)
    result = AuditResult(runs=[run("r", "explosion", [stayed, came_back, blew_up])],
                         errors=[], settings=Settings(), generated_at=FIXED_TIME)
    rows = [_table_cells(ln) for ln in markdown.render(result).splitlines()
            if ln.startswith(("| 300 ", "| 600 ", "| 900 "))]
    assert [r[-1].strip() for r in rows] == ["stayed in band", "720", "diverged"]
    page = render("html", result)
    cells = re.findall(r'<td class="num">([^<]*)</td><td>robust_z</td>', page)
    assert cells == ["stayed in band", "720", "diverged"]


def test_a_float64_divergence_is_drawn_and_a_figure_that_fails_costs_only_its_figure(
        monkeypatch):
    # a grad norm and loss that grow 1e8x a step to ~1e300 and then inf (a float64 divergence
    # as CSV, W&B or Megatron logs write it): matplotlib's limits overflowed, and the HTML
    # report of the whole scan was lost (found by a fuzzing review). Drawn now, clipped at
    # DRAW_MAX; and any other figure failure leaves a note in that run's section, not a crash
    import numpy as np
    from _synth import healthy, run_series

    from gradaudit.audit import audit_run
    from gradaudit.report import figures

    s, g, loss = healthy(n=300, seed=1)
    up = 10.0 ** np.minimum(np.arange(50) * 8.0, 300.0)
    g[250:], loss[250:] = up, 2 * up
    g[290:] = loss[290:] = np.inf
    blown = audit_run(run_series(s, g, loss, name="blown"))
    s, g, loss = healthy(n=1500, seed=2)
    g[700:730] *= 25.0
    loss[700:730] += 1.0
    normal = audit_run(run_series(s, g, loss, name="normal"))
    result = AuditResult(runs=[blown, normal], settings=Settings())
    page = render("html", result)
    assert page.count("<img") == 2 and "could not be drawn" not in page

    def broken(self, run, xlim=None):
        if run.run == "blown":
            raise OverflowError("cannot convert float infinity to integer")
        return original(self, run, xlim)

    original = figures.RunFigure.png_data_uri
    monkeypatch.setattr(figures.RunFigure, "png_data_uri", broken)
    page = render("html", result)
    assert page.count("could not be drawn (OverflowError: cannot convert") == 1
    assert page.count("<img") == 1 and page.rstrip().endswith("</html>")
