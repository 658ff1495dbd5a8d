"""`splitwatch drift` end to end: proxy -> real broker -> drift process -> gauges and drift events."""

from __future__ import annotations

import random
import re
import signal
import time

import httpx

from splitwatch.service.local.processes import ManagedProcess, free_port, splitwatch_command, wait_for_port
from tests.harness import read_events
from tests.test_drift import corpus


def _gauge(text: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def _halves() -> tuple[list[str], list[str]]:
    english = corpus("english")
    random.Random(0).shuffle(english)
    return english[: len(english) // 2], english[len(english) // 2:]


class _Rig:
    """A proxy and a drift process on it; ``send`` waits until the detector has consumed the prompts
    (Kafka orders messages per partition only, so phases of traffic must not overlap)."""

    def __init__(self, proxy, tmp_path) -> None:
        self.proxy, self.port, self.sent = proxy, free_port(), 0
        cfg = proxy.config
        # a consumer group of its own: tests share the session's broker, and a group another test's
        # detector left behind must not delay this one's join (Tansu joins after the rebalance timeout)
        cfg["drift"] = {"state_dir": str(tmp_path / "drift"), "reference_size": 200, "window_size": 200,
                        "window_step": 100, "max_poll_interval_ms": 3000, "port": self.port,
                        "group_id": f"splitwatch-drift-{tmp_path.name}"}
        proxy.write_config(cfg)  # the proxy ignores the drift section; the drift process reads it
        self.drift = ManagedProcess(splitwatch_command("drift", "--config",
                                     str(proxy.config_path)), tmp_path / "drift.log")
        self.drift.start()
        wait_for_port(self.port, proc=self.drift.proc)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def send(self, prompts: list[str]) -> None:
        with httpx.Client(timeout=10) as c:
            for i, text in enumerate(prompts):
                c.post(self.proxy.url + "/v1/chat/completions", json={
                    "model": "support-bot", "user": f"drift-{self.sent + i}",
                    "messages": [{"role": "user", "content": text}]})
        self.sent += len(prompts)
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = _gauge(httpx.get(self.url).text, "splitwatch_drift_exposures_total", 'experiment="support-ft"')
            if seen is not None and seen >= self.sent:
                return
            time.sleep(0.2)
        raise AssertionError(f"drift detector consumed {seen} of {self.sent}\n{self.drift.log()[-2000:]}")


def test_language_mix_shift_end_to_end(start_proxy, broker, topic, tmp_path) -> None:
    a, b = _halves()
    rig = _Rig(start_proxy(), tmp_path)
    rng = random.Random(2)
    try:
        rig.send(rng.sample(a, 200))
        foreign = corpus("spanish") + corpus("german")
        mixed = rng.sample(b, 180) + rng.sample(foreign, 120)
        rng.shuffle(mixed)
        rig.send(mixed)  # 40% Spanish and German
        text = httpx.get(rig.url).text
        assert _gauge(text, "splitwatch_drift_detected", 'arm="all",detector="univariate",experiment="support-ft"') == 1
        events = [e for e in read_events(broker.bootstrap, topic, idle=3.0) if e["type"] == "drift"]
        assert any(e["detected"] and "language" in e["drifted_features"] for e in events)
    finally:
        rig.drift.stop()


def test_drift_detected_end_to_end_and_reference_survives_a_restart(start_proxy, broker, topic, tmp_path) -> None:
    a, b = _halves()
    proxy = start_proxy()
    rig = _Rig(proxy, tmp_path)
    drift, url, send = rig.drift, rig.url, rig.send
    rng = random.Random(1)
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
        # the analyzer takes the drift event into the lake, and the report says when drift began
        import subprocess
        from datetime import UTC, datetime

        assert subprocess.run(splitwatch_command("analyzer", "--config", str(proxy.config_path),
                               "--once"), capture_output=True, timeout=120).returncode == 0
        today = datetime.now(UTC).date().isoformat()
        md = subprocess.run(splitwatch_command("report", "--config", str(proxy.config_path),
                             "--experiment", "support-ft", "--from", today, "--to", today),
                            capture_output=True, text=True, timeout=120).stdout
        assert "## Drift timeline" in md and re.search(r"\| all \| univariate \| drift detected \| [^|]*chars", md), md
        # restart: the persisted reference is used, not re-learned from the drifted traffic
        assert drift.stop(signal.SIGTERM) is not None
        drift.start()
        wait_for_port(rig.port, proc=drift.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "loaded the persisted reference" not in drift.log():
            time.sleep(0.2)
        assert "loaded the persisted reference (200 rows, first 200 exposures)" in drift.log()
        assert _gauge(httpx.get(url).text, "splitwatch_drift_reference_size", 'experiment="support-ft"') == 200
    finally:
        drift.stop()
