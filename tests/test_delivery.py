"""Event delivery against a real broker process: outage at start, broker killed mid-stream,
proxy stopped with SIGTERM under load, and a full spool that drops and counts."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.harness import (
    Broker,
    ProduceGate,
    Proxy,
    Traffic,
    base_config,
    experiment_config,
    free_port,
    new_topic,
    read_events,
    unique_by_event_id,
    wait_delivered,
)


def _assert_all_logged(events: dict[str, dict], answered: set[str]) -> None:
    """Every answered request has exactly one exposure and one response (after dedup by event_id)."""
    per_request = Counter((e["request_id"], e["type"]) for e in events.values())
    missing = [(rid, t) for rid in answered for t in ("exposure", "response") if per_request[(rid, t)] != 1]
    assert not missing, f"{len(missing)} events missing or doubled, e.g. {missing[:5]}"


def test_broker_down_at_start_then_up(stubs, tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # not started yet
    topic = new_topic()
    proxy = Proxy(tmp_path, base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)]))
    proxy.start()
    try:
        body = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}

        def ask(i: int) -> tuple[int, str]:
            with httpx.Client(timeout=10) as c:
                r = c.post(proxy.url + "/v1/chat/completions", json={**body, "user": f"down-{i}"})
                return r.status_code, r.headers.get("x-splitwatch-request-id", "")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(2000)))
        assert Counter(s for s, _ in results) == {200: 2000}
        state = httpx.get(proxy.url + "/readyz").json()["kafka"]
        assert state["connected"] is False and state["spooled"] + state["queued"] == 4000
        assert state["dropped"] == 0

        broker.start()
        wait_delivered(proxy.url, timeout=60)
        events = unique_by_event_id(read_events(broker.bootstrap, topic, expect=4000, timeout=60))
        assert len(events) == 4000
        _assert_all_logged(events, {rid for _, rid in results})
    finally:
        proxy.stop()
        broker.stop()


def test_broker_killed_mid_stream_and_restarted(stubs, tmp_path: Path) -> None:
    gate_port = free_port()
    broker = Broker(tmp_path, advertised_port=gate_port)
    broker.start()
    gate = ProduceGate(broker.port, gate_port)
    gate.start()
    topic = new_topic()
    proxy = Proxy(tmp_path, base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)]))
    proxy.start()
    traffic = Traffic(proxy.url, prefix="kill").start()
    try:
        time.sleep(1.5)
        # Hold produce requests, then read everything this broker incarnation acknowledged:
        # it dies with its memory, so what a consumer has not read by then would be gone.
        gate.freeze()
        time.sleep(0.5)
        before = read_events(broker.bootstrap, topic, idle=2.0)
        assert before, "events were delivered before the kill"
        broker.stop(signal.SIGKILL)
        time.sleep(1.5)  # the proxy keeps serving while the broker is gone
        broker.start()  # an empty broker: no topics, no producer ids
        gate.thaw()
        time.sleep(1.5)
        traffic.stop()
        wait_delivered(proxy.url, timeout=60)
        after = read_events(broker.bootstrap, topic, idle=2.0)
        events = unique_by_event_id(before + after)
        answered = set(traffic.answered)
        assert len(answered) > 200 and traffic.failed == 0
        _assert_all_logged(events, answered)
        assert len(events) == 2 * len(answered)
        # the stream went on during the outage: some requests were logged only after the restart
        assert {e["request_id"] for e in after} - {e["request_id"] for e in before}
    finally:
        traffic.stop()
        proxy.stop()
        broker.stop()


def test_sigterm_under_load_loses_nothing_acknowledged(broker, stubs, tmp_path: Path) -> None:
    topic = new_topic()
    proxy = Proxy(tmp_path, base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)]))
    proxy.start()
    traffic = Traffic(proxy.url, prefix="term", threads=6, pause_s=0.0).start()

    def until_answered(n: int) -> None:  # by count, not by time: the machine's speed varies
        deadline = time.monotonic() + 60
        while len(traffic.answered) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        until_answered(150)
        # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done
        assert proxy.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proxy.log() and "Traceback" not in proxy.log()
        proxy.start()
        until_answered(len(traffic.answered) + 60)
        traffic.stop()
        wait_delivered(proxy.url, timeout=60)
        events = unique_by_event_id(read_events(broker.bootstrap, topic, idle=2.0))
        answered = set(traffic.answered)
        assert len(answered) > 200
        _assert_all_logged(events, answered)
    finally:
        traffic.stop()
        proxy.stop()


def test_full_spool_drops_and_counts(stubs, tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # down while the spool fills
    topic = new_topic()
    cfg = base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)])
    cfg["kafka"]["spool"].update({"max_bytes": 65536, "segment_bytes": 8192, "full_policy": "drop_newest"})
    proxy = Proxy(tmp_path, cfg)
    proxy.start()
    try:
        with httpx.Client(timeout=10) as c:
            ids = [c.post(proxy.url + "/v1/chat/completions", json={
                "model": "support-bot", "user": f"full-{i}",
                "messages": [{"role": "user", "content": "hi"}]}).headers["x-splitwatch-request-id"]
                for i in range(400)]
        time.sleep(0.5)  # let the sender move the queue to the spool
        metrics = httpx.get(proxy.url + "/metrics").text
        m = re.search(r'^splitwatch_events_dropped_total\{reason="spool_full"\} ([0-9.]+)$', metrics, re.M)
        assert m, "drops are counted"
        dropped = int(float(m.group(1)))
        assert 0 < dropped < 800
        assert httpx.get(proxy.url + "/readyz").json()["kafka"]["dropped"] == dropped
        broker.start()
        wait_delivered(proxy.url, timeout=60)
        events = unique_by_event_id(read_events(broker.bootstrap, topic, expect=800 - dropped, idle=3.0))
        assert len(events) + dropped == 800  # every missing event is counted, no more, no less
        # drop_newest keeps the oldest: the first request's events arrived
        assert {(e["request_id"], e["type"]) for e in events.values()} >= {(ids[0], "exposure"), (ids[0], "response")}
    finally:
        proxy.stop()
        broker.stop()


def test_orphaned_spools_of_removed_workers_are_delivered(broker, stubs, tmp_path: Path) -> None:
    # A previous run had more workers and left events in worker-3's spool; this run has one worker.
    from splitwatch.service.delivery.shipper_process import META_FILE
    from splitwatch.service.delivery.spool import Spool
    from splitwatch.service.events import OutcomeEvent

    topic = new_topic()
    cfg = base_config(broker.bootstrap, topic, tmp_path, [experiment_config(*stubs)])
    spool_base = tmp_path / "spool"
    left = [OutcomeEvent(experiment="support-ft", phase=1, arm="base", unit_id=f"orphan-{i}", metric="resolved",
                         value=1.0) for i in range(50)]
    for name, dest_topic in (("worker-3", topic), ("worker-4", "some.other.topic")):
        s = Spool(spool_base / name, max_bytes=1 << 24, segment_bytes=1 << 20)
        s.append([(e.key(), e.to_json()) for e in left])
        s.close()
        (spool_base / name / META_FILE).write_text(
            json.dumps({"bootstrap_servers": broker.bootstrap, "topic": dest_topic}))
    proxy = Proxy(tmp_path, cfg)
    proxy.start()
    try:
        events = unique_by_event_id(read_events(broker.bootstrap, topic, expect=50, timeout=30))
        assert {e.event_id for e in left} <= set(events)
        # worker-4's spool was written for another topic: left alone, on disk, not sent here
        deadline = time.monotonic() + 15
        while "not this proxy's Kafka" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "not this proxy's Kafka" in proxy.log()
        other = Spool(spool_base / "worker-4", max_bytes=1 << 24, segment_bytes=1 << 20)
        assert other.pending_events == 50
        other.close()
    finally:
        proxy.stop()
