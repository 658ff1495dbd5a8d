"""The HTML report as a results page, rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from matplotlib import image

from splitwatch.service.local.processes import splitwatch_command
from tests.test_report_cli import _config, _write_lake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage"]
KEEP_RUNNING_BG = (0xFE, 0xF7, 0xE0)  # the verdict box's background for "keep running"


def _render(tmp_path: Path, units: int = 3000, days: int = 7) -> Path:
    """Return the results page of a lake of ``units`` over the last ``days`` days, rendered by the CLI."""
    config = _config(tmp_path)
    first = datetime.now(UTC).date() - timedelta(days=days - 1)
    _write_lake(tmp_path, first, units=units, days=days)
    out = tmp_path / "report.html"
    res = subprocess.run(splitwatch_command("report", "--config", str(config), "--experiment", "support-ft",
                                            "--from", str(first), "--output", str(out)),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def test_the_results_page_renders_every_interval_bar_and_the_verdict(tmp_path: Path) -> None:
    page = _render(tmp_path)
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.split("<body>")[1]  # self-contained, offline
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'id="verdict" data-decision="keep_running"' in dom
    rows = re.findall(r'<svg class="interval-bar" data-metric="([^"]+)" data-arm="finetuned"', dom)
    # every tested metric: resolved, csat, escalated, latency_p95_ms, and the built-in diagnostics
    assert {"resolved", "csat", "escalated", "latency_p95_ms", "latency_p50_ms"} <= set(rows)
    # one bar per row of the results tables (7 metrics x 1 treatment arm), on every row
    result_rows = sum(t.count("<tr>") - 1 for t in re.findall(r'<table class="results".*?</table>', dom, re.S))
    assert len(rows) == result_rows == 7
    assert dom.count('class="margin-line"') == 2  # one per guardrail
    assert not re.search(r"p = 0(?![.\d])", dom) and "e-0" not in dom  # a p-value is never 0 or 1e-06
    assert "&lt;0.001" in dom  # the primary's p-value
    shot = tmp_path / "page.png"
    subprocess.run([CHROMIUM, *FLAGS, "--window-size=1300,2600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = (image.imread(shot)[..., :3] * 255).round().astype(int)
    verdict_box = np.all(np.abs(pixels - np.array(KEEP_RUNNING_BG)) <= 2, axis=-1).sum()
    assert verdict_box > 20_000, verdict_box  # the colour-coded verdict is drawn, large, at the top
    top = np.argwhere(np.all(np.abs(pixels - np.array(KEEP_RUNNING_BG)) <= 2, axis=-1))[:, 0].min()
    assert top < 200


def test_the_results_page_says_what_each_number_is_and_fits_1400_px(tmp_path: Path) -> None:
    # issue 25, finding 10
    from tests.screenshots import page_width, screenshot

    page = _render(tmp_path)
    assert page_width(page, 1400) <= 1400  # nothing runs off the page
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    verdict = dom.split('id="verdict"')[1].split('<ul class="summary"')[0]
    # the power line names the metric that needs the units
    assert re.search(r"more units each metric needs: (resolved|escalated|latency_p95_ms) [\d,]+", verdict), verdict
    assert "<th>absolute effect [CI]</th>" in dom and "<th>n (control / treatment)</th>" in dom
    assert "&gt;99.9%" in dom and ">100%<" not in dom  # never "chance to win 100%"
    assert "harm ÷ margin (0: none; 1: the margin, red)" in dom and "margins<" not in dom
    assert "vs 0.05<" in dom and "0.0500" not in dom  # one way to print a margin, as the verdict does
    report = json.loads(subprocess.run(
        splitwatch_command("report", "--config", str(tmp_path / "cfg.yaml"), "--experiment", "support-ft",
                           "--from", str(datetime.now(UTC).date() - timedelta(days=6)), "--format", "json"),
        capture_output=True, text=True, timeout=300).stdout)
    csat = next(r for r in report["results"] if r["metric"] == "csat")
    assert f"{csat['control_n']:,} / {csat['treatment_n']:,}" in dom  # each metric's own n
    print(f"\nscreenshot at 1400 px: {screenshot(page, tmp_path / 'report-1400.png')}")


def test_a_one_day_period_draws_each_interval(tmp_path: Path) -> None:
    # issue 25, finding 10: one day was a dot with no band; the interval is drawn as a bar
    out = _render(tmp_path, units=600, days=1)
    plots = re.findall(r'src="data:image/png;base64,([^"]+)"', out.read_text())
    assert plots
    band = np.array([0xC6, 0xDC, 0xF9])  # the interval's fill, #1a73e8 at 25% on white
    for b64 in plots:
        pixels = (image.imread(io.BytesIO(base64.b64decode(b64)), format="png")[..., :3] * 255).round().astype(int)
        assert np.all(np.abs(pixels - band) <= 12, axis=-1).sum() > 300
