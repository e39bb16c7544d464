"""The HTML report of a small real scan, rendered by headless Chromium.

Checks that the page's script ran (it marks the document and the runs table), that the
Content-Security-Policy let it run, that the page logged nothing to the console (no uncaught
errors, no CSP refusals), and that hostile run names stayed text. Skips when Chromium is not
installed, except in CI (env CI set), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import scan, write_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE_DIR = '"><img src=x onerror=alert(1)>'
SCRIPT_DIR = "<script>alert(1)<!--"


def chromium(tmp_path: Path, *args: str) -> tuple[str, str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must install it: see .ci/run)")
        pytest.skip("chromium is not installed")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    return proc.stdout, proc.stderr


def console_problems(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln or "Uncaught" in ln or "Content Security Policy" in ln]


def test_report_renders_in_chromium(tmp_path):
    runs = tmp_path / "runs"
    write_table(runs / HOSTILE_DIR, "explosion")
    write_table(runs / SCRIPT_DIR, "clean")
    write_table(runs / "plain", "clean")
    report = tmp_path / "report.html"
    assert scan(str(runs), "--out", str(report)) == 1

    dom, stderr = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert console_problems(stderr) == []
    assert 'data-gradaudit-ready="1"' in dom  # the script ran under the CSP
    assert re.search(r'<table id="runs-table" class="sortable" data-ready="1">', dom)
    assert "3 of 3 runs shown" in dom  # the filter code counted the rows
    assert len(re.findall(r'<tr data-run="', dom)) == 3
    # Hostile names are text: no injected elements, the names shown escaped.
    assert "<img src=\"x\"" not in dom and "onerror=\"alert" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "&lt;script&gt;alert(1)&lt;!--" in dom
    assert dom.count("<script") == 1
    # The figure of the exploded run is an embedded PNG.
    assert dom.count('src="data:image/png;base64,') == 1


def test_constructed_report_renders_in_chromium(tmp_path):
    """No scan needed: the formatter's own output (every section) renders cleanly."""
    from reportkit import fixed_result

    from gradaudit.gate import evaluate_gate

    result = fixed_result()
    evaluate_gate(result)
    report = tmp_path / "fixed.html"
    result.write(str(report))
    shot = tmp_path / "shot.png"
    _, stderr = chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}",
                         report.as_uri())
    assert console_problems(stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_runs_filter_keeps_the_runs_too_short_to_judge(tmp_path):
    # the status filter's "too short to judge" shows the runs whose ok rests on no healthy
    # level (data-short), whatever their status
    runs = tmp_path / "runs"
    write_table(runs / "long", "clean")
    for name in ("short-a", "short-b"):
        (runs / name).mkdir(parents=True)
        rows = "".join(f"{i},{2.0 - 0.01 * i},{1.0 + 0.01 * (i % 3)}\n" for i in range(12))
        (runs / name / "metrics.csv").write_text("step,loss,grad_norm\n" + rows)
    report = tmp_path / "report.html"
    assert scan(str(runs), "--out", str(report)) == 0
    page = report.read_text()
    assert page.count(' data-short="1">') == 2
    # preselect the filter: the script applies it when the page loads
    report.write_text(page.replace('<option value="too_short">',
                                   '<option value="too_short" selected>'))
    dom, stderr = chromium(tmp_path, "--dump-dom", report.as_uri())
    assert console_problems(stderr) == []
    assert "2 of 3 runs shown" in dom
    assert re.search(r'<tr data-run="[^"]*long[^"]*" data-status="ok" hidden', dom)
