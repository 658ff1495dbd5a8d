"""The HTML report as a results page, rendered by a real browser (headless Chromium)."""

from __future__ import annotations

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


def _render(tmp_path: Path) -> Path:
    config = _config(tmp_path)
    first = datetime.now(UTC).date() - timedelta(days=6)
    _write_lake(tmp_path, first, units=3000, days=7)
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
