"""Safe rollout end to end: a broker, two proxy replicas of two workers each, the analyzer, stub models.

The control topic carries every state change to every worker of every replica; the analyzer's guard
ramps a healthy candidate and rolls back a failing or harmful one (docs/rollout.md).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitwatch.service.delivery.topic_reader import read_events
from splitwatch.service.local.processes import ManagedProcess, splitwatch_command, wait_for_port
from splitwatch.service.proxy.assignment import bucket_of
from tests.harness import Broker, Proxy, StubModel, base_config, experiment_config, free_port, new_topic

TOKEN = "rollout-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "support-bot", "messages": [{"role": "user", "content": "my order is late"}]}


def _wait(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _workers_that_logged(proxy: Proxy, pattern: str) -> set[int]:
    """Return the worker indices whose log has a line matching ``pattern``."""
    return {int(m.group(1)) for m in re.finditer(rf"worker-(\d+) .*{pattern}", proxy.log())}


def _gauge(url: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", httpx.get(url + "/metrics").text, re.M)
    return float(m.group(1)) if m else None


def _ask(proxy: Proxy, unit: str) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": unit}, timeout=10)


def _candidate_units(n: int, prefix: str = "cand") -> list[str]:
    return [u for u in (f"{prefix}-{i}" for i in range(20 * n)) if bucket_of("support-ft", u) >= 5000][:n]


class Replicas:
    """Two proxy replicas (two workers each) of one config, each with its own state and spool."""

    def __init__(self, root: Path, config: Callable[[Path], dict[str, Any]], count: int = 2, workers: int = 2):
        self.proxies = [Proxy(root / f"replica-{i}", config(root / f"replica-{i}"), workers=workers,
                              env={"SPLITWATCH_ADMIN_TOKEN": TOKEN}) for i in range(count)]

    def start(self) -> Replicas:
        for p in self.proxies:
            p.start()
        return self

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()

    def all_paused(self) -> bool:
        """True when every live worker of every replica applies the pause (the gauge's min over workers)."""
        return all(_gauge(p.url, "splitwatch_experiment_paused", 'experiment="support-ft"') == 1.0
                   for p in self.proxies)


class Users:
    """Simulated users on both replicas: each new unit asks once, then posts its outcomes by arm."""

    def __init__(self, replicas: Replicas, escalation: dict[str, float] | None = None, seed: int = 1,
                 threads: int = 3, prefix: str = "u") -> None:
        self.replicas = replicas
        self.escalation = escalation
        self.rng = random.Random(seed)
        self.threads = threads
        self.prefix = prefix
        self.stop_event = threading.Event()
        self.counter = 0
        self.lock = threading.Lock()
        self.arms: dict[str, int] = {}
        self.started_at = 0.0
        self._threads: list[threading.Thread] = []

    def _next(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop_event.is_set():
                i = self._next()
                unit = f"{self.prefix}-{i}"
                proxy = self.replicas.proxies[i % len(self.replicas.proxies)]
                try:
                    r = client.post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": unit})
                except httpx.HTTPError:
                    continue
                arm = r.headers.get("x-splitwatch-arm", "?")
                with self.lock:
                    self.arms[arm] = self.arms.get(arm, 0) + 1
                if self.escalation is not None and "x-splitwatch-excluded" not in r.headers:
                    with self.lock:
                        escalated = self.rng.random() < self.escalation[arm]
                    client.post(proxy.url + "/v1/outcomes", json={
                        "experiment": "support-ft", "unit_id": unit, "metric": "escalated",
                        "value": 1 if escalated else 0, "request_id": r.headers["x-splitwatch-request-id"]})

    def start(self) -> Users:
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(15)


def _start_analyzer(config_path: Path, log_dir: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    proc = ManagedProcess(splitwatch_command("analyzer", "--config", str(config_path), "--port", str(port)),
                          log_dir / f"analyzer-{port}.log")
    proc.start()
    wait_for_port(port, proc=proc.proc)
    return proc, port


def _config_factory(broker: Broker, topic: str, base: StubModel, candidate: StubModel,
                    lake: Path, **experiment: Any) -> Callable[[Path], dict[str, Any]]:
    def make(workdir: Path) -> dict[str, Any]:
        cfg = base_config(broker.bootstrap, topic, workdir, [experiment_config(base, candidate, **experiment)])
        cfg["analyzer"]["lake_dir"] = str(lake)
        return cfg
    return make


@pytest.fixture
def failing_stub(workdir: Path):
    stub = StubModel(workdir, "failing", "--fail-rate", "0.3")
    stub.start()
    yield stub
    stub.stop()


def test_admin_changes_reach_every_worker_of_every_replica_and_survive_restarts(broker, stubs, tmp_path) -> None:
    topic = new_topic()
    make = _config_factory(broker, topic, *stubs, tmp_path / "lake")
    replicas = Replicas(tmp_path, make).start()
    a, b = replicas.proxies
    units = _candidate_units(10)
    try:
        assert all(_ask(p, u).headers["x-splitwatch-arm"] == "finetuned" for p in (a, b) for u in units)
        r = httpx.put(a.url + "/admin/experiments/support-ft", headers=AUTH,
                      json={"status": "paused", "reason": "on-call: answers look wrong", "by": "alice"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "paused" and body["last_change"]["by"] == "alice"
        assert body["last_change"]["reason"] == "on-call: answers look wrong"
        # every worker of both replicas logs that it applied the pause, and serves the control arm
        for p in (a, b):
            _wait(lambda p=p: _workers_that_logged(p, "control: support-ft phase 1 paused") == {0, 1}, 10,
                  "every worker to apply the pause")
        assert _wait(replicas.all_paused, 5, "the paused gauge of every worker")
        assert all(_ask(p, u).headers["x-splitwatch-excluded"] == "paused" for p in (a, b) for u in units)

        # a replica restarted with no cache (a new pod) reads the pause from the topic before serving
        b.stop()
        for f in (b.workdir / "state").glob("control-state.json"):
            f.unlink()
        b.start()
        assert _ask(b, units[0]).headers["x-splitwatch-excluded"] == "paused"
        ready = httpx.get(b.url + "/readyz").json()
        assert ready["control"]["source"] == "topic" and ready["control"]["connected"]

        # a resume through the other replica undoes the pause everywhere
        r = httpx.put(b.url + "/admin/experiments/support-ft", headers=AUTH, json={"status": "running"})
        assert r.status_code == 200 and r.json()["last_change"]["action"] == "resume"
        _wait(lambda: all(_ask(p, u).headers["x-splitwatch-arm"] == "finetuned" for p in (a, b) for u in units),
              10, "every replica to serve the candidate again")
        for p in (a, b):
            _wait(lambda p=p: _workers_that_logged(p, "control: support-ft phase 1 running .*resume") == {0, 1}, 10,
                  "every worker to apply the resume")
        # the control events of both changes reached the events topic
        control = [e for e in read_events(broker.bootstrap, topic, idle=2.0) if e["type"] == "control"]
        assert [(e["action"], e["actor"]) for e in sorted(control, key=lambda e: e["revision"])] == [
            ("pause", "admin"), ("resume", "admin")]
    finally:
        replicas.stop()
