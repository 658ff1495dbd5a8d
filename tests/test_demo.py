"""`splitwatch demo` (the README's first command): the tour runs end to end and accounts for every event."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from splitwatch.service.local.processes import splitwatch_command


def test_the_demo_tours_the_product_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = subprocess.run(splitwatch_command("demo", "--units", "400", "--workdir", str(out)),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    m = re.search(r"(\d+) events of support-ft read back from Kafka \((\d+) requests, (\d+) outcomes", text)
    assert m, text
    events, requests, outcomes = map(int, m.groups())
    assert requests >= 400 and outcomes == 3 * requests  # resolved, escalated, csat per conversation
    assert events == 2 * requests + outcomes  # one exposure and one response per request
    rows = re.findall(r"^\| (base|finetuned) \| (\d+) \| (\d+) \|", text, re.M)  # counts as integers
    assert {r[0] for r in rows} == {"base", "finetuned"}
    assert sum(int(r[1]) for r in rows) == 400 and sum(int(r[2]) for r in rows) == requests
    assert "e+0" not in text  # never 1e+03
    # the truth is printed on the report's definitions
    truth = dict(re.findall(r"^\| (base|finetuned) \| (0\.\d+) \| 0\.3", text, re.M))
    # per user, at least once in 1-3 conversations at 0.30 (0.36) each: 1 - mean(0.7^k) = 0.489
    assert truth == {"base": "0.489", "finetuned": "0.563"}, truth
    for section in ("## Primary metrics", "## Secondary metrics", "## Guardrails", "## Diagnostics",
                    "## Drift timeline", "## Metric definitions"):
        assert section in text
    assert re.search(r"^\*\*Verdict: (ship|keep running|roll back|invalid)\.\*\*", text, re.M)

    # drift: noticed after the prompt mix shifted, never before
    d = re.search(r"shifted at exposure (\d+) of (\d+); .* noticed at exposure (\d+): (.+); "
                  r"(\d+) alarms before the shift", text)
    assert d, text
    shift, total, noticed, features, alarms = d.groups()
    assert int(shift) <= int(noticed) < int(total) and int(alarms) == 0
    assert re.search(r"language: .*\bes 0% → \d+%", features), features  # named in words: which language came
    # rollback: the guard paused the failing candidate's experiment by itself
    r = re.search(r"the guard paused the experiment after (\d+) requests, (\d+) s after", text)
    assert r, text
    print(f"\ndrift noticed {int(noticed) - int(shift)} exposures after the shift; rollback after {r.group(1)} "
          f"requests, {r.group(2)} s")

    # the offline eval before users: the fine-tuned stub (88% right) found better than the base (72%)
    ev = json.loads((out / "eval" / "report.json").read_text())
    verdicts = {c["metric"]: c["verdict"] for c in ev["comparisons"]}
    assert ev["cases"] == 220 and verdicts["accuracy"] == "better", verdicts
    assert re.search(r"Offline eval before users \(220 support messages.*base accuracy \d", text), text
    assert "finetuned against base: better on" in text

    # the kept output directory: the reports, the config, the lake, the logs
    report = json.loads((out / "report.json").read_text())
    assert report["experiment"] == "support-ft" and report["drift"] and report["verdict"]["decision"]
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "report.md").read_text().startswith("# splitwatch report: support-ft")
    assert (out / "splitwatch.yaml").exists() and any((out / "lake").rglob("*.parquet"))
    assert f"splitwatch report --config {os.path.relpath(out)}/splitwatch.yaml" in text.replace("\n", " ") or \
        "splitwatch report --config" in text
    # no child process survives the demo
    for name, pid in json.loads((out / "logs" / "processes.json").read_text()).items():
        status = Path(f"/proc/{pid}/status")
        alive = status.exists() and "\nState:\tZ" not in status.read_text()
        assert not alive, f"{name} (pid {pid}) still runs"
