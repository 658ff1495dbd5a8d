"""`splitwatch demo` (the README's first command) runs end to end and accounts for every event."""

from __future__ import annotations

import re
import subprocess

from splitwatch.service.local.processes import splitwatch_command


def test_demo_runs_and_reads_back_every_event() -> None:
    res = subprocess.run(splitwatch_command("demo", "--units", "60"),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"(\d+) events read back from Kafka \((\d+) requests, (\d+) outcomes\)", res.stdout)
    assert m, res.stdout
    events, requests, outcomes = map(int, m.groups())
    assert requests >= 60 and outcomes == 3 * requests  # resolved, escalated, csat per conversation
    assert events == 2 * requests + outcomes  # one exposure and one response per request
    rows = re.findall(r"^\| (base|finetuned) \| (\d+) \| (\d+) \|", res.stdout, re.M)
    assert {r[0] for r in rows} == {"base", "finetuned"}
    assert sum(int(r[1]) for r in rows) == 60 and sum(int(r[2]) for r in rows) == requests
    # the truth is printed on the report's definitions, and the report has a section per role and a verdict
    assert "True values of the simulation, on the same definitions" in res.stdout
    truth = dict(re.findall(r"^\| (base|finetuned) \| (0\.\d+) \| 0\.3", res.stdout, re.M))
    # per user, at least once in 1-3 conversations at 0.30 (0.36) each: 1 - mean(0.7^k) = 0.489
    assert truth == {"base": "0.489", "finetuned": "0.563"}, truth
    for section in ("## Primary metrics", "## Secondary metrics", "## Guardrails", "## Diagnostics",
                    "## Metric definitions"):
        assert section in res.stdout
    assert re.search(r"^\*\*Verdict: (ship|keep running|roll back|invalid)\.\*\*", res.stdout, re.M)
