"""Safe rollout end to end: a broker, two proxy replicas of two workers each, the analyzer, stub models.

The control topic carries every state change to every worker of every replica; the analyzer's guard
ramps a healthy candidate and rolls back a failing or harmful one (docs/rollout.md).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
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
    try:
        text = httpx.get(url + "/metrics", timeout=30).text
    except httpx.HTTPError:  # a loaded machine: the caller polls again
        return None
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def _ask(proxy: Proxy, unit: str) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json={**CHAT, "user": unit}, timeout=30)


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


def test_a_candidate_failing_30_percent_is_rolled_back_on_every_worker_within_seconds(
        broker, stubs, failing_stub, tmp_path) -> None:
    topic = new_topic()
    make = _config_factory(broker, topic, stubs[0], failing_stub, tmp_path / "lake",
                           rollout={"auto_rollback": True})
    replicas = Replicas(tmp_path, make).start()
    analyzer, port = _start_analyzer(replicas.proxies[0].config_path, tmp_path)
    users = Users(replicas)
    try:
        time.sleep(2)  # the analyzer has read the (empty) control topic
        users.start()  # the failure begins with the first request
        _wait(replicas.all_paused, 60, "every worker of every replica to apply the rollback")
        took = time.monotonic() - users.started_at
        users.stop()
        print(f"\nrollback applied by every worker {took:.1f} s after the failure began "
              f"({sum(users.arms.values())} requests sent by then)")
        assert took < 30
        for p in replicas.proxies:
            assert _workers_that_logged(p, "control: support-ft phase 1 paused .* by guard") == {0, 1}
            assert all(_ask(p, u).headers["x-splitwatch-excluded"] == "paused" for u in _candidate_units(5))
        log = analyzer.log()
        assert "guard: ROLLBACK of support-ft phase 1 (failures)" in log, log[-3000:]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'splitwatch_rollbacks_total{experiment="support-ft",reason="failures"} 1.0' in metrics
        assert 'splitwatch_experiment_paused{experiment="support-ft"} 1.0' in metrics
        control = [e for e in read_events(broker.bootstrap, topic, idle=2.0) if e["type"] == "control"]
        assert len(control) == 1 and control[0]["actor"] == "guard" and control[0]["action"] == "pause"
        ev = control[0]["evidence"]
        assert ev["test"] == "failures" and ev["lower"] > ev["margin"] == 0.05
        assert 0.15 < ev["treatment"]["rate"] < 0.45 and ev["control"]["rate"] == 0

        # a replica restarted after the rollback (a new pod: no cache) serves control from its first request
        b = replicas.proxies[1]
        b.stop()
        (b.workdir / "state" / "control-state.json").unlink()
        b.start()
        first = _ask(b, _candidate_units(1, "fresh")[0])
        assert first.headers["x-splitwatch-arm"] == "base" and first.headers["x-splitwatch-excluded"] == "paused"
        assert "Traceback" not in analyzer.log(), analyzer.log()[-5000:]  # the guard never failed
        # the live verdict agrees with the state in force: roll_back (0), not keep running
        assert _wait(lambda: _gauge(f"http://127.0.0.1:{port}", "splitwatch_verdict",
                                    'experiment="support-ft"') == 0.0, 30, "the live verdict to read roll_back")
        _report_of_a_rolled_back_experiment(replicas.proxies[0].config_path, tmp_path, ev)
    finally:
        users.stop()
        analyzer.stop()
        replicas.stop()


def _report_of_a_rolled_back_experiment(config: Path, tmp_path: Path, ev: dict[str, Any]) -> None:
    """`splitwatch report` on the experiment the guard rolled back (issue 25, findings 1 and 2): every
    output opens with roll_back, done by the guard, with the fast path's evidence beside error_rate."""
    from tests.test_report_page import CHROMIUM, FLAGS

    today = time.strftime("%Y-%m-%d", time.gmtime())

    def report(fmt: str) -> str:
        out = tmp_path / f"report.{fmt}"
        res = subprocess.run(splitwatch_command("report", "--config", str(config), "--experiment", "support-ft",
                                                "--from", today, "--output", str(out)),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return out.read_text()

    # the guard's control event reaches the lake through the events topic, like every event
    verdict = _wait(lambda: (json.loads(report("json"))["verdict"] or {}).get("state") and
                    json.loads((tmp_path / "report.json").read_text())["verdict"], 60,
                    "the control event in the lake", step=1.0)
    assert verdict["decision"] == "roll_back" and verdict["units_to_power"] is None
    assert verdict["state"]["actor"] == "guard" and verdict["state"]["status"] == "paused"
    assert verdict["state"]["evidence"]["test"] == "failures"
    assert verdict["state"]["evidence"]["treatment"] == ev["treatment"]  # the guard's own counts
    codes = [r["code"] for r in verdict["reasons"]]
    assert codes[:2] == ["rolled_back_by_guard", "acted_on"]
    t = ev["treatment"]
    acted = verdict["reasons"][1]["message"]
    assert f"failed {t['failures']} of {t['requests']} requests" in acted and f"margin {ev['margin']:.3g}" in acted
    md = report("md")
    first_line = md.splitlines()[0]
    assert "Roll back: done by the rollout guard at" in first_line and "more units" not in md
    # the fast path's evidence stands beside the unit-level error_rate, in the same section
    section = md.split("## Diagnostics")[1].split("\n## ")[0]
    assert "| error_rate |" in section and "The guard's fast path acted, on requests" in section
    page = tmp_path / "report.html"
    report("html")
    dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    h1 = re.search(r"<h1>(.*?)</h1>", dom, re.S)
    assert h1 and "Roll back: done by the rollout guard at" in h1.group(1), dom[:2000]
    assert 'data-decision="roll_back"' in dom
    shot = tmp_path / "rolled-back-report.png"
    subprocess.run([CHROMIUM, *FLAGS, "--window-size=1400,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the rolled-back experiment's report: {shot}")


def _guardrail_experiment(**rollout: Any) -> dict[str, Any]:
    return {"metrics": [{"name": "escalated", "kind": "binary", "direction": "decrease", "role": "guardrail",
                         "margin": 0.1}],
            "rollout": {"auto_rollback": True, "min_units_to_act": 50, **rollout}}


def test_a_candidate_worse_on_a_guardrail_outcome_is_rolled_back(broker, stubs, tmp_path) -> None:
    """Escalations 5% -> 25%: twice the margin of 0.1. The guard's sequential test pauses the experiment."""
    topic = new_topic()
    make = _config_factory(broker, topic, *stubs, tmp_path / "lake", **_guardrail_experiment())

    def config(workdir: Path) -> dict[str, Any]:
        cfg = make(workdir)
        cfg["analyzer"]["sequential_n_star"] = 1000  # the mixture tuned to this test's size
        return cfg

    replicas = Replicas(tmp_path, config).start()
    analyzer, port = _start_analyzer(replicas.proxies[0].config_path, tmp_path)
    users = Users(replicas, escalation={"base": 0.05, "finetuned": 0.25}, threads=6)
    try:
        time.sleep(2)
        users.start()
        _wait(replicas.all_paused, 240, "the guard to roll the experiment back")
        users.stop()
        control = [e for e in read_events(broker.bootstrap, topic, idle=2.0) if e["type"] == "control"]
        assert [(e["action"], e["actor"]) for e in control] == [("pause", "guard")]
        ev = control[0]["evidence"]
        assert ev["test"] == "guardrail" and ev["metric"] == "escalated" and ev["arm"] == "finetuned"
        assert ev["lower"] > ev["margin"] == 0.1 and ev["confirmations"] == 2
        print(f"\nguardrail rollback after {sum(ev['units'].values())} units ({ev['units']}); harm "
              f"{ev['harm']:+.3f}, lower bound {ev['lower']:+.3f} at alpha {ev['alpha']}")
        assert "guard: ROLLBACK of support-ft phase 1 (guardrail)" in analyzer.log()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'splitwatch_rollbacks_total{experiment="support-ft",reason="guardrail"} 1.0' in metrics
        for p in replicas.proxies:
            assert _workers_that_logged(p, "control: support-ft phase 1 paused .* by guard") == {0, 1}

        # a person resumes: every worker serves the candidate again, and the guard does not overrule
        # the resume on the evidence that paused it (it judges units exposed since the resume)
        r = httpx.put(replicas.proxies[1].url + "/admin/experiments/support-ft", headers=AUTH,
                      json={"status": "running", "reason": "fixed the prompt template", "by": "bob"})
        assert r.status_code == 200 and r.json()["status"] == "running"
        units = _candidate_units(5, "after")
        _wait(lambda: all(_ask(p, u).headers["x-splitwatch-arm"] == "finetuned"
                          for p in replicas.proxies for u in units), 10, "the resume on every replica")
        time.sleep(4)  # several analyses
        assert not any(_gauge(p.url, "splitwatch_experiment_paused", 'experiment="support-ft"')
                       for p in replicas.proxies)
        assert analyzer.log().count("guard: ROLLBACK") == 1

        # the report's timeline: who paused, who resumed, and why
        today = time.strftime("%Y-%m-%d", time.gmtime())

        def timeline() -> list[dict[str, Any]]:
            out = subprocess.run(splitwatch_command("report", "--config", str(replicas.proxies[0].config_path),
                                                    "--experiment", "support-ft", "--from", today, "--to", today,
                                                    "--format", "json"), capture_output=True, text=True)
            return json.loads(out.stdout)["timeline"] if out.returncode == 0 else []

        events = _wait(lambda: len(timeline()) == 2 and timeline(), 30, "both changes in the report", step=1)
        assert [(e["action"], e["actor"], e["by"]) for e in events] == [("pause", "guard", None),
                                                                       ("resume", "admin", "bob")]
        assert events[0]["evidence"]["metric"] == "escalated" and events[1]["reason"] == "fixed the prompt template"
        assert "Traceback" not in analyzer.log(), analyzer.log()[-5000:]  # the guard never failed
    finally:
        users.stop()
        analyzer.stop()
        replicas.stop()


def test_a_healthy_candidate_is_ramped_through_every_step_without_rollback(broker, stubs, tmp_path) -> None:
    topic = new_topic()
    steps = [0.2, 0.5, 1.0]
    make = _config_factory(broker, topic, *stubs, tmp_path / "lake", **_guardrail_experiment(
        steps=steps, min_units_per_step=40, min_minutes_per_step=0.05))
    replicas = Replicas(tmp_path, make).start()
    analyzer, port = _start_analyzer(replicas.proxies[0].config_path, tmp_path)
    users = Users(replicas, escalation={"base": 0.1, "finetuned": 0.1}, threads=4)
    try:
        users.start()
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _gauge(url, "splitwatch_rollout_step", 'experiment="support-ft"') == 3.0, 180,
              "the guard to reach the last step")
        users.stop()
        for p in replicas.proxies:
            _wait(lambda p=p: _workers_that_logged(p, r"control: support-ft phase 1 running \(coverage 1, coverage\)")
                  == {0, 1}, 10, "every worker to apply full coverage")
            assert _gauge(p.url, "splitwatch_experiment_coverage", 'experiment="support-ft"') == 1.0
        control = sorted((e for e in read_events(broker.bootstrap, topic, idle=2.0) if e["type"] == "control"),
                         key=lambda e: e["revision"])
        assert [(e["action"], e["actor"], e["coverage"]) for e in control] == [
            ("coverage", "guard", 0.2), ("coverage", "guard", 0.5), ("coverage", "guard", 1.0)]
        for e in control[1:]:
            assert e["evidence"]["step_units"] >= 40 and e["evidence"]["minutes"] >= 0.05
        assert "ROLLBACK" not in analyzer.log()
        # the share of users in the experiment followed the ramp: fewer at 20% than at the end
        assert users.arms.get("finetuned", 0) > 0
        assert "Traceback" not in analyzer.log(), analyzer.log()[-5000:]  # the guard never failed
    finally:
        users.stop()
        analyzer.stop()
        replicas.stop()


def test_the_proxy_survives_a_control_topic_outage_and_replicas_converge(stubs, tmp_path) -> None:
    broker = Broker(tmp_path)  # a broker of its own: this test kills it
    broker.start()
    topic = new_topic()
    make = _config_factory(broker, topic, *stubs, tmp_path / "lake")
    replicas = Replicas(tmp_path, make).start()
    a, b = replicas.proxies
    units = _candidate_units(6)
    try:
        # a replica that misses a message (stopped while it was written) converges when it runs again
        os.killpg(b.proc.pid, signal.SIGSTOP)
        try:
            r = httpx.put(a.url + "/admin/experiments/support-ft", headers=AUTH, json={"coverage": 0.0})
            assert r.status_code == 200
        finally:
            os.killpg(b.proc.pid, signal.SIGCONT)
        _wait(lambda: all(_ask(b, u).headers.get("x-splitwatch-excluded") == "not_covered" for u in units), 10,
              "the stopped replica to catch up")

        # Kafka goes away: both replicas keep serving with the state in force, and say so
        broker.stop()
        for p in (a, b):
            assert all(_ask(p, u).status_code == 200 for u in units)
            _wait(lambda p=p: httpx.get(p.url + "/readyz").json()["control"]["connected"] is False, 20,
                  "readyz to report the control topic unreachable")
            assert httpx.get(p.url + "/readyz").status_code == 200
        r = httpx.put(a.url + "/admin/experiments/support-ft", headers=AUTH, json={"coverage": 1.0}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "control_unavailable"
        assert all(_ask(p, u).headers.get("x-splitwatch-excluded") == "not_covered" for p in (a, b) for u in units)
        # a replica restarted while Kafka is away serves its cached state, and says so
        b.stop()
        b.start(timeout=60)
        ready = httpx.get(b.url + "/readyz").json()
        assert ready["control"]["source"] == "cache" and ready["control"]["connected"] is False
        assert all(_ask(b, u).headers.get("x-splitwatch-excluded") == "not_covered" for u in units)

        # Kafka returns (Tansu keeps nothing: the topic is gone too); a change made now reaches both
        broker.start()
        _wait(lambda: httpx.put(a.url + "/admin/experiments/support-ft", headers=AUTH,
                                json={"coverage": 1.0}, timeout=30).status_code == 200, 60,
              "the admin API to write to the control topic again", step=1.0)
        _wait(lambda: all(_ask(p, u).headers["x-splitwatch-arm"] == "finetuned" for p in (a, b) for u in units),
              30, "both replicas to apply the change made after the outage")
    finally:
        replicas.stop()
        broker.stop()
