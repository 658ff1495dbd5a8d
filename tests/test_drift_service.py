"""`splitwatch drift` end to end: proxy -> real broker -> drift process -> gauges and drift events."""

from __future__ import annotations

import random
import re
import signal
import sys
import time

import httpx

from service.local_processes import ManagedProcess, free_port, wait_for_port
from tests.harness import read_events
from tests.test_drift import corpus


def _gauge(text: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_drift_detected_end_to_end_and_reference_survives_a_restart(start_proxy, broker, topic, tmp_path) -> None:
    english = corpus("english")
    random.Random(0).shuffle(english)
    a, b = english[: len(english) // 2], english[len(english) // 2:]
    proxy = start_proxy()
    cfg = proxy.config
    port = free_port()
    cfg["drift"] = {"state_dir": str(tmp_path / "drift"), "reference_size": 200, "window_size": 200,
                    "window_step": 100, "max_poll_interval_ms": 3000, "port": port}
    proxy.write_config(cfg)  # the proxy ignores the drift section; the drift process reads it
    drift = ManagedProcess([sys.executable, "-m", "service.cli", "drift", "--config", str(proxy.config_path)],
                           tmp_path / "drift.log")
    drift.start()
    wait_for_port(port, proc=drift.proc)
    url = f"http://127.0.0.1:{port}/metrics"
    rng = random.Random(1)
    sent = 0

    def send(prompts: list[str]) -> None:
        nonlocal sent
        with httpx.Client(timeout=10) as c:
            for i, text in enumerate(prompts):
                c.post(proxy.url + "/v1/chat/completions", json={
                    "model": "support-bot", "user": f"drift-{sent + i}",
                    "messages": [{"role": "user", "content": text}]})
        sent += len(prompts)
        deadline = time.monotonic() + 60  # wait until the detector has consumed them all
        while time.monotonic() < deadline:
            seen = _gauge(httpx.get(url).text, "splitwatch_drift_exposures_total", 'experiment="support-ft"')
            if seen is not None and seen >= sent:
                return
            time.sleep(0.2)
        raise AssertionError(f"drift detector consumed {seen} of {sent}\n{drift.log()[-2000:]}")

    try:
        send(rng.sample(a, 200))  # the reference: the first 200 exposures
        send(rng.sample(b, 300))  # more of the same
        text = httpx.get(url).text
        assert _gauge(text, "splitwatch_drift_reference_size", 'experiment="support-ft"') == 200
        assert _gauge(text, "splitwatch_drift_detected", 'arm="all",detector="ks",experiment="support-ft"') is None
        assert _gauge(text, "splitwatch_drift_detected", 'arm="all",detector="univariate",experiment="support-ft"') == 0
        send([" ".join(rng.sample(b, 3)) for _ in range(300)])  # long multi-sentence prompts
        text = httpx.get(url).text
        assert _gauge(text, "splitwatch_drift_detected", 'arm="all",detector="univariate",experiment="support-ft"') == 1
        chars = 'arm="all",detector="ks",experiment="support-ft",feature="chars"'
        assert (_gauge(text, "splitwatch_drift_score", chars) or 0) > 0.25
        drift_events = [e for e in read_events(broker.bootstrap, topic, idle=3.0) if e["type"] == "drift"]
        assert any(e["detected"] and "chars" in e["drifted_features"] and e["arm"] is None for e in drift_events)
        # restart: the persisted reference is used, not re-learned from the drifted traffic
        assert drift.stop(signal.SIGTERM) is not None
        drift.start()
        wait_for_port(port, proc=drift.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "loaded the persisted reference" not in drift.log():
            time.sleep(0.2)
        assert "loaded the persisted reference (200 rows, first 200 exposures)" in drift.log()
        assert _gauge(httpx.get(url).text, "splitwatch_drift_reference_size", 'experiment="support-ft"') == 200
    finally:
        drift.stop()
