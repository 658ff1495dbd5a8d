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

    def __init__(self, proxy, tmp_path, **drift) -> None:
        self.proxy, self.port, self.sent = proxy, free_port(), 0
        cfg = proxy.config
        cfg["drift"] = {"state_dir": str(tmp_path / "drift"), "reference_size": 200, "window_size": 200,
                        "window_step": 100, "port": self.port, **drift}
        proxy.write_config(cfg)  # the proxy ignores the drift section; the drift process reads it
        self.drift = ManagedProcess(splitwatch_command("drift", "--config",
                                     str(proxy.config_path)), tmp_path / "drift.log")
        self.drift.start()
        wait_for_port(self.port, proc=self.drift.proc)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def send(self, prompts: list[str], stream_every: int = 0) -> None:
        """Send the prompts (every ``stream_every``-th streamed) and wait until the detector consumed
        their exposures and answers."""
        with httpx.Client(timeout=10) as c:
            for i, text in enumerate(prompts):
                stream = bool(stream_every) and i % stream_every == 0
                r = c.post(self.proxy.url + "/v1/chat/completions", json={
                    "model": "support-bot", "user": f"drift-{self.sent + i}", "stream": stream,
                    "messages": [{"role": "user", "content": text}]})
                assert r.status_code == 200, r.text
        self.sent += len(prompts)
        seen = answers = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = httpx.get(self.url).text
            seen = _gauge(text, "splitwatch_drift_exposures_total", 'experiment="support-ft"')
            answers = sum(float(v) for v in re.findall(
                r'^splitwatch_output_responses_total\{[^}]*experiment="support-ft"[^}]*\} (\S+)$', text, re.M))
            if seen is not None and seen >= self.sent and answers >= self.sent:
                return
            time.sleep(0.2)
        raise AssertionError(f"drift detector consumed {seen} exposures and {answers} answers of {self.sent}\n"
                             f"{self.drift.log()[-2000:]}")


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
        # which languages arrived: one gauge per configured language (and "other"), not just a distance
        shares = {lang: _gauge(text, "splitwatch_drift_language_share",
                               f'arm="all",experiment="support-ft",language="{lang}"') for lang in ("en", "es", "de")}
        assert shares["en"] < 0.8 and shares["es"] + shares["de"] > 0.25, shares
        language = 'arm="all",experiment="support-ft",feature="language"'
        assert _gauge(text, "splitwatch_drift_feature_drifted", language) == 1
        assert _gauge(text, "splitwatch_drift_effect_threshold", 'experiment="support-ft",feature="language"') == 0.1
        assert _gauge(text, "splitwatch_drift_p_value_threshold", 'experiment="support-ft"') == 0.05
        assert _gauge(text, "splitwatch_drift_stage", 'experiment="support-ft"') == 2
        ready = httpx.get(f"http://127.0.0.1:{rig.port}/readyz").json()
        assert ready["experiments"]["support-ft"]["stage"] == "judging"
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
        assert "## Drift timeline" in md
        assert re.search(r"\| all \| univariate \| drift detected \| [^|]*length: median \d+ → \d+", md), md
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


def test_output_drift_flags_the_arm_whose_answers_change(start_proxy, broker, topic, tmp_path) -> None:
    from splitwatch.service.local.processes import StubModel
    from tests.harness import experiment_config

    base, ft = StubModel(tmp_path, "base"), StubModel(tmp_path, "ft")  # this test's own: it changes one
    base.start()
    ft.start()
    proxy = start_proxy(experiment=experiment_config(base, ft))
    rig = _Rig(proxy, tmp_path, output_reference_size=100, output_window_size=100, output_window_step=50)
    a, _ = _halves()
    rng = random.Random(3)
    try:
        rig.send(rng.choices(a, k=300), stream_every=2)  # references: prompts, and each arm's first answers
        rig.send(rng.choices(a, k=200), stream_every=2)  # more of the same: no output drift
        text = httpx.get(rig.url).text
        for arm in ("base", "finetuned"):
            assert _gauge(text, "splitwatch_output_drift_detected", f'arm="{arm}",experiment="support-ft"') == 0
        # the fine-tuned arm starts answering in 2 tokens, and refusing half of the time
        httpx.post(f"http://127.0.0.1:{ft.port}/settings", json={"completion_tokens": 2, "refusal_rate": 0.5})
        rig.send(rng.choices(a, k=300), stream_every=2)
        text = httpx.get(rig.url).text
        ft_labels, base_labels = 'arm="finetuned",experiment="support-ft"', 'arm="base",experiment="support-ft"'
        assert _gauge(text, "splitwatch_output_drift_detected", ft_labels) == 1
        assert _gauge(text, "splitwatch_output_drift_detected", base_labels) == 0  # that arm only
        for feature in ("answer_tokens", "refusal"):
            assert _gauge(text, "splitwatch_output_drift_feature_drifted",
                          f'arm="finetuned",experiment="support-ft",feature="{feature}"') == 1
        assert (_gauge(text, "splitwatch_output_share", f'{ft_labels},kind="refusal"') or 0) > 0.25
        assert _gauge(text, "splitwatch_output_share", f'{base_labels},kind="refusal"') == 0
        assert _gauge(text, "splitwatch_output_completion_tokens_median", ft_labels) == 2
        events = [e for e in read_events(broker.bootstrap, topic, idle=3.0)
                  if e["type"] == "drift" and e["detector"] == "output"]
        assert [e["arm"] for e in events if e["detected"]] == ["finetuned"]
        assert any(c.startswith("refusals: 0% → ") for c in events[0]["changes"]), events[0]["changes"]
        # the answers' features travel on the response events, never the answer's text
        responses = [e for e in read_events(broker.bootstrap, topic, idle=1.0) if e["type"] == "response"]
        assert all(e["answer"] is not None and e["finish_reason"] == "stop" for e in responses)
        assert not any("help with that" in str(e) for e in responses)
        # the report shows each arm's answers per day
        import subprocess
        from datetime import UTC, datetime

        assert subprocess.run(splitwatch_command("analyzer", "--config", str(proxy.config_path), "--once"),
                              capture_output=True, timeout=120).returncode == 0
        today = datetime.now(UTC).date().isoformat()
        md = subprocess.run(splitwatch_command("report", "--config", str(proxy.config_path), "--experiment",
                                               "support-ft", "--from", today, "--to", today),
                            capture_output=True, text=True, timeout=120).stdout
        assert "## Answers per arm" in md
        row = re.search(rf"\| finetuned \| {today} \| [\d,]+ \| [\d.]+ \| ([\d.]+)% \|", md)
        assert row and 10 < float(row.group(1)) < 40, md  # about 150 of ~400 answers refused
        assert re.search(rf"\| base \| {today} \| [\d,]+ \| 8 \| 0\.0% \|", md), md
        assert re.search(r"\| finetuned \| output \| drift detected \| [^|]*refusals: 0% → ", md), md
    finally:
        rig.drift.stop()
        base.stop()
        ft.stop()
