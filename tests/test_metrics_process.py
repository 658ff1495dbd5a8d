"""Prometheus values in multiprocess mode without a getpid() per update (service/metrics.py): a forked
process still writes its own file, and /metrics adds the processes up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, sys
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
    import splitwatch.service.metrics as m

    assert m.VALUES_WITHOUT_GETPID is True, "the cached process id is not in use"
    assert values.ValueClass._multiprocess
    m.EVENTS_SENT.inc(3)
    child = os.fork()
    if child == 0:  # a forked process: its own file, its own counts
        m.EVENTS_SENT.inc(4)
        m.REQUESTS.labels("e", "a", "200").inc()
        os._exit(0)
    os.waitpid(child, 0)
    m.EVENTS_SENT.inc(5)
    files = sorted(p for p in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    print("FILES", files, os.getpid(), child)
    assert {f"counter_{os.getpid()}.db", f"counter_{child}.db"} <= set(files), files
    assert {f.rsplit("_", 1)[1] for f in files} == {f"{os.getpid()}.db", f"{child}.db"}, files
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    assert "splitwatch_events_sent_total 12.0" in text, text
    assert 'splitwatch_requests_total{arm="a",experiment="e",status="200"} 1.0' in text, text
    print("OK")
""")


def _run(tmp_path: Path, script: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run([sys.executable, "-c", script], env={**env, **extra_env}, capture_output=True,
                          text=True, timeout=120)


def test_values_use_the_cached_pid_and_forks_keep_their_own_files(tmp_path: Path) -> None:
    run = _run(tmp_path, SCRIPT, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK" in run.stdout


def test_in_process_values_and_a_process_that_made_values_are_left_as_they_are(tmp_path: Path) -> None:
    single = _run(tmp_path, "import splitwatch.service.metrics as m; "
                  "from prometheus_client import values; assert m.VALUES_WITHOUT_GETPID is False; "
                  "assert not values.ValueClass._multiprocess; print('OK')", {})
    assert single.returncode == 0 and "OK" in single.stdout, single.stderr
    early = _run(tmp_path, "from prometheus_client import Counter; Counter('early_metric', 'made first').inc(); "
                 "import splitwatch.service.metrics as m; assert m.VALUES_WITHOUT_GETPID is False; "
                 "m.EVENTS_SENT.inc(); print('OK')", {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert early.returncode == 0 and "OK" in early.stdout, early.stderr
