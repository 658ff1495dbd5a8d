"""Shadow traffic through a real proxy: the client's answer is the control's, byte for byte and on
time, whatever the candidate does; the pairs reach Kafka as `shadow` events with their scores."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitwatch.service.local.processes import splitwatch_command
from tests.harness import (
    Broker,
    Proxy,
    StubModel,
    base_config,
    experiment_config,
    free_port,
    new_topic,
    read_events,
    wait_delivered,
)

_VOLATILE = re.compile(rb'"(id|created)":("[^"]*"|\d+)|x-splitwatch-request-id')


@pytest.fixture
def make(broker: Broker, tmp_path: Path) -> Iterator[Any]:
    started: list[Any] = []

    def stub(name: str, *extra: str) -> StubModel:
        s = StubModel(tmp_path, name, *extra)
        s.start()
        started.append(s)
        return s

    def proxy(control: StubModel, candidate_url: str, shadow: dict[str, Any] | None, topic: str,
              timeout_s: float = 5, env: dict[str, str] | None = None) -> Proxy:
        exp = experiment_config(control, control)
        exp["arms"][0]["weight"] = 1_000_000  # every unit to the control, whose requests are mirrored
        exp["arms"][1]["weight"] = 1
        exp["arms"][1]["upstream"] = {"base_url": candidate_url, "model": "llama-ft", "timeout_s": timeout_s}
        if shadow is not None:
            exp["shadow"] = shadow
        wd = tmp_path / f"proxy-{len(started)}"
        p = Proxy(wd, base_config(broker.bootstrap, topic, wd, [exp]), env=env)
        p.start()
        started.append(p)
        return p

    yield stub, proxy
    for p in reversed(started):
        p.stop()


def _ask(proxy: Proxy, user: str, stream: bool) -> tuple[int, bytes, float, str]:
    body = {"model": "support-bot", "user": user, "stream": stream,
            "messages": [{"role": "user", "content": f"where is my order {user}?"}]}
    t0 = time.perf_counter()
    with httpx.Client(timeout=30) as c:
        r = c.post(proxy.url + "/v1/chat/completions", json=body)
    return r.status_code, r.content, time.perf_counter() - t0, r.headers["x-splitwatch-arm"]


def test_client_bytes_are_the_same_with_and_without_shadow(make: Any) -> None:
    stub, proxy = make
    control_a, control_b = stub("base-a", "--name", "base"), stub("base-b", "--name", "base")
    candidate = stub("cand", "--completion-tokens", "30")
    plain = proxy(control_a, candidate.base_url, None, new_topic())
    shadowed = proxy(control_b, candidate.base_url, {"arm": "finetuned", "share": 1.0}, new_topic())
    for stream in (False, True):
        for i in range(5):
            a, b = _ask(plain, f"u{i}", stream), _ask(shadowed, f"u{i}", stream)
            assert a[0] == b[0] == 200 and a[3] == b[3] == "base"
            # the same bytes but for the answer's id and creation time, which the stub numbers itself
            assert _VOLATILE.sub(b"", a[1]) == _VOLATILE.sub(b"", b[1]), stream
            assert b"cand" not in b[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and candidate.stats()["requests"] < 10:
        time.sleep(0.05)
    assert candidate.stats()["requests"] == 10 and candidate.stats()["models"] == {"llama-ft": 10}


@pytest.mark.parametrize("failure", ["fails", "hangs", "down"])
def test_a_failing_candidate_never_reaches_the_client(make: Any, failure: str) -> None:
    stub, proxy = make
    control = stub("base", "--latency-ms", "20")
    if failure == "fails":
        url, expected = stub("cand", "--status", "500").base_url, "upstream_5xx"
    elif failure == "hangs":
        url, expected = stub("cand", "--latency-ms", "8000").base_url, "timeout"
    else:
        url, expected = f"http://127.0.0.1:{free_port()}/v1", "connect_error"
    topic = new_topic()
    p = proxy(control, url, {"arm": "finetuned", "share": 1.0, "max_concurrency": 64}, topic, timeout_s=3)
    for stream in (False, True):  # the worker's first requests build its connection pools
        assert _ask(p, "warm-up", stream)[0] == 200
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _ask(p, f"u{i}", i % 2 == 0), range(24)))
    assert all(status == 200 for status, *_ in answers)
    assert max(seconds for _, _, seconds, _ in answers) < 1.5  # never the candidate's 3 s timeout
    time.sleep(3.5)  # the shadow calls end (the hanging ones at their 3 s timeout)
    wait_delivered(p.url)
    shadow = [e for e in read_events(p.config["kafka"]["bootstrap_servers"], topic, idle=1.0)
              if e["type"] == "shadow"]
    assert len(shadow) == 26
    assert {e["shadow"]["error"] for e in shadow} == {expected}
    assert all(e["control"]["status_code"] == 200 and e["scores"] is None for e in shadow)
    metrics = httpx.get(p.url + "/metrics").text
    assert re.search(r'splitwatch_shadow_calls_total\{candidate="finetuned",experiment="support-ft",'
                     r'result="error"\} 26', metrics), metrics


def test_shadow_events_pair_both_calls_with_scores_and_no_text(make: Any) -> None:
    stub, proxy = make
    control = stub("base", "--completion-tokens", "20")
    candidate = stub("cand", "--completion-tokens", "10", "--token-delay-ms", "3")
    topic = new_topic()
    p = proxy(control, candidate.base_url, {"arm": "finetuned", "share": 1.0}, topic)
    for i in range(12):
        assert _ask(p, f"u{i}", i % 3 == 0)[0] == 200
    time.sleep(0.5)
    wait_delivered(p.url)
    events = read_events(p.config["kafka"]["bootstrap_servers"], topic, idle=1.0)
    shadow = [e for e in events if e["type"] == "shadow"]
    responses = {e["request_id"]: e for e in events if e["type"] == "response"}
    assert len(shadow) == 12
    for e in shadow:
        assert e["arm"] == "base" and e["candidate"] == "finetuned"
        assert e["control"]["latency_ms"] == responses[e["request_id"]]["latency_ms"]  # the served call itself
        assert e["shadow"]["status_code"] == 200 and e["shadow"]["completion_tokens"] == 10
        assert e["control"]["completion_tokens"] == 20
        scores = e["scores"]
        assert scores is not None, e
        assert 0.4 < scores["length_ratio"] < 0.6  # 10 words of the candidate's against 20 of the control's
        assert 0 <= scores["similarity"] < 60 and scores["same_finish"] == 1.0
        assert "text" not in e and "shadow_text" not in e
        if e["stream"]:
            assert e["shadow"]["ttft_ms"] is not None and e["control"]["ttft_ms"] is not None


def test_the_budget_caps_shadow_calls_and_counts_what_it_skips(make: Any) -> None:
    stub, proxy = make
    control = stub("base")
    candidate = stub("cand", "--latency-ms", "400")
    p = proxy(control, candidate.base_url, {"arm": "finetuned", "share": 1.0, "max_concurrency": 2}, new_topic())
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _ask(p, f"u{i}", False), range(16)))
    metrics = httpx.get(p.url + "/metrics").text
    skipped = re.search(r'splitwatch_shadow_skipped_total\{experiment="support-ft",reason="concurrency"\} (\d+)',
                        metrics)
    assert skipped and int(skipped.group(1)) >= 8, metrics
    time.sleep(1.0)
    assert candidate.stats()["requests"] == 16 - int(skipped.group(1))


def test_a_candidate_that_answers_one_kind_of_prompt_differently_is_found(make: Any) -> None:
    stub, proxy = make
    # both answer every prompt with the same words, but the candidate answers Spanish orders with 4 others
    control = stub("base", "--words", "same")
    candidate = stub("cand", "--words", "same", "--diverge-on", "pedido")
    topic = new_topic()
    p = proxy(control, candidate.base_url, {"arm": "finetuned", "share": 1.0}, topic)
    english = ["Where is my order? It has been a week since I paid for it.",
               "I was charged twice this month, can you refund one of the payments?",
               "How do I reset my password? The reset email never arrives."]
    spanish = ["¿Dónde está mi pedido? Lo pagué hace una semana y todavía no llega.",
               "Quiero cancelar mi pedido antes de que lo envíen, por favor."]
    with httpx.Client(timeout=30) as c:
        for i in range(60):
            text = (spanish[i % 2] if i % 3 == 0 else english[i % 3]) + f" ({i})"
            body = {"model": "support-bot", "user": f"u{i}", "stream": i % 4 == 0,
                    "messages": [{"role": "user", "content": text}]}
            assert c.post(p.url + "/v1/chat/completions", json=body).status_code == 200
    time.sleep(0.5)
    wait_delivered(p.url)
    cfg = str(p.config_path)
    ingest = subprocess.run(splitwatch_command("analyzer", "--config", cfg, "--once"), capture_output=True,
                            text=True, timeout=120)
    assert ingest.returncode == 0, ingest.stderr
    assert "shadow statistics" not in ingest.stderr  # the analysis' shadow gauges ran without failing
    today = datetime.now(UTC).date().isoformat()
    rep = subprocess.run(splitwatch_command("report", "--config", cfg, "--experiment", "support-ft", "--from",
                                            today, "--to", today, "--format", "json"),
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    (shadow,) = json.loads(rep.stdout)["shadow"]
    assert shadow["pairs"] == 60 and shadow["similarity"]["p90"] == 100.0
    by_language = {c["category"]: c for c in shadow["categories"]}
    assert by_language["es"]["differs"] is True and by_language["en"]["differs"] is False
    assert by_language["es"]["similarity_median"] < 30 and by_language["en"]["similarity_median"] == 100.0
    assert by_language["es"]["length_ratio_median"] < 0.8 and by_language["en"]["length_ratio_median"] == 1.0
    md = subprocess.run(splitwatch_command("report", "--config", cfg, "--experiment", "support-ft", "--from",
                                           today, "--to", today), capture_output=True, text=True, timeout=120)
    assert "## Shadow traffic" in md.stdout and "| finetuned | es | 20 |" in md.stdout


def test_the_admin_api_switches_shadow_traffic_off_and_on(make: Any) -> None:
    stub, proxy = make
    control, candidate = stub("base"), stub("cand")
    topic = new_topic()
    env = {"SPLITWATCH_ADMIN_TOKEN": "s3cret"}
    p = proxy(control, candidate.base_url, {"arm": "finetuned", "share": 1.0}, topic, env=env)
    plain = proxy(control, candidate.base_url, None, new_topic(), env=env)
    auth = {"authorization": "Bearer s3cret"}

    def served_by_candidate(n: int, start: int) -> int:
        before = candidate.stats()["requests"]
        for i in range(start, start + n):
            assert _ask(p, f"u{i}", False)[0] == 200
        time.sleep(0.3)
        return candidate.stats()["requests"] - before

    assert served_by_candidate(5, 0) == 5
    off = httpx.put(p.url + "/admin/experiments/support-ft", headers=auth,
                    json={"shadow": False, "reason": "candidate endpoint under maintenance", "by": "oncall"})
    assert off.status_code == 200, off.text
    assert off.json()["shadow"]["enabled"] is False and off.json()["status"] == "running"
    assert served_by_candidate(5, 5) == 0
    on = httpx.put(p.url + "/admin/experiments/support-ft", headers=auth, json={"shadow": True})
    assert on.status_code == 200 and on.json()["shadow"]["enabled"] is True
    assert served_by_candidate(5, 10) == 5
    refused = httpx.put(plain.url + "/admin/experiments/support-ft", headers=auth, json={"shadow": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "shadow"
    wait_delivered(p.url)
    actions = [e["action"] for e in read_events(p.config["kafka"]["bootstrap_servers"], topic, idle=1.0)
               if e["type"] == "control"]
    assert actions == ["shadow", "shadow"]  # each switch recorded, with who and why, for the report's timeline
