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
