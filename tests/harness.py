"""Test helpers on top of service.local_processes: configs, a produce gate, steady traffic."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from splitwatch.service.delivery.topic_reader import read_events, unique_by_event_id
from splitwatch.service.local.processes import (
    LOOPBACK,
    Broker,
    ManagedProcess,
    Proxy,
    StubModel,
    free_port,
    splitwatch_command,
    wait_delivered,
    wait_for_port,
)

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"


def start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[ManagedProcess, str]:
    """Start a real Prometheus scraping ``targets`` every second, with the shipped alert rules loaded;
    return it and its URL."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DASHBOARDS / "alerts.yaml")],
        "scrape_configs": [{"job_name": "splitwatch", "static_configs": [{"targets": targets}]}],
    }))
    prom = ManagedProcess(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                           f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                           "--log.level=warn"], tmp_path / "prometheus.log")
    prom.start()
    wait_for_port(port, proc=prom.proc)
    return prom, f"http://127.0.0.1:{port}"


__all__ = ["Broker", "Proxy", "StubModel", "free_port", "read_events", "unique_by_event_id", "wait_delivered"]

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
        "metrics": [{"name": "resolved", "kind": "binary", "direction": "increase", "role": "primary"},
                    {"name": "escalated", "kind": "binary", "direction": "decrease", "role": "guardrail",
                     "margin": 0.01},
                    {"name": "csat", "kind": "continuous", "direction": "increase"}],
    }
    exp.update(overrides)
    return exp


def base_config(broker_bootstrap: str, topic: str, workdir: Path, experiments: list[dict[str, Any]],
                **proxy: Any) -> dict[str, Any]:
    """Return a full config dict with the spool and state under ``workdir``."""
    return {
        "kafka": {"bootstrap_servers": broker_bootstrap, "topic": topic, "control_topic": f"{topic}.control",
                  "linger_ms": 5,
                  "request_timeout_ms": 3000, "reconnect_backoff_ms": 200,
                  "reconnect_backoff_max_ms": 1000,
                  "spool": {"dir": str(workdir / "spool")}},
        "proxy": {"state_dir": str(workdir / "state"), "graceful_shutdown_s": 10, **proxy},
        "analyzer": {"lake_dir": str(workdir / "lake"), "max_poll_interval_ms": 3000, "batch_max_seconds": 0.5,
                     "interval_s": 1, "port": 0},
        "experiments": experiments,
    }


def new_topic() -> str:
    """Return a topic name no other test uses."""
    return f"splitwatch.events.test-{uuid.uuid4().hex[:10]}"


class ProduceGate:
    """A TCP forwarder in front of the broker that can hold Kafka Produce requests (api_key 0).

    The broker advertises the gate's port, so every client goes through it. While the gate is
    frozen, produce requests wait in the gate (never reaching the broker, so never acknowledged),
    while fetches and metadata flow: a test can read *everything* a broker holds and then kill it,
    with no acknowledged-but-unread event lost with the in-memory broker.
    """

    def __init__(self, broker_port: int, port: int | None = None) -> None:
        import asyncio

        self.port = port or free_port()
        self.broker_port = broker_port
        self._loop = asyncio.new_event_loop()
        self._open: asyncio.Event | None = None
        self._writers: set[Any] = set()
        self._thread: Any = None

    def start(self) -> None:
        """Start forwarding (open, not frozen)."""
        import asyncio
        import threading

        ready = threading.Event()

        async def main() -> None:
            self._open = asyncio.Event()
            self._open.set()
            server = await asyncio.start_server(self._handle, LOOPBACK, self.port)
            ready.set()
            async with server:
                await server.serve_forever()

        self._thread = threading.Thread(target=lambda: self._loop.run_until_complete(main()), daemon=True)
        self._thread.start()
        ready.wait(5)

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.broker_port)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})

        async def client_to_broker() -> None:
            assert self._open is not None
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "big"))
                if int.from_bytes(body[:2], "big") == 0:  # Produce
                    await self._open.wait()
                up_writer.write(head + body)
                await up_writer.drain()

        async def broker_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(client_to_broker()), asyncio.ensure_future(broker_to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    def freeze(self) -> None:
        """Hold every produce request from now on."""
        assert self._open is not None
        self._loop.call_soon_threadsafe(self._open.clear)

    def thaw(self) -> None:
        """Let produce requests through again."""
        assert self._open is not None
        self._loop.call_soon_threadsafe(self._open.set)


class Traffic:
    """Steady chat traffic from a few client threads; remembers every answered request id."""

    def __init__(self, url: str, threads: int = 4, prefix: str = "t", pause_s: float = 0.005) -> None:
        import threading

        self.url = url + "/v1/chat/completions"
        self.threads = threads
        self.prefix = prefix
        self.pause_s = pause_s
        self.answered: dict[str, str] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[Any] = []

    def _run(self, index: int) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                unit = f"{self.prefix}-{index}-{i % 50}"
                i += 1
                try:
                    r = client.post(self.url, json={"model": "support-bot", "user": unit,
                                                    "messages": [{"role": "user", "content": "hello"}]})
                except httpx.HTTPError:
                    with self._lock:
                        self.failed += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.answered[r.headers["x-splitwatch-request-id"]] = unit
                    else:
                        self.failed += 1
                time.sleep(self.pause_s)

    def start(self) -> Traffic:
        """Start the client threads."""
        import threading

        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> None:
        """Stop and join the client threads."""
        self._stop.set()
        for w in self._workers:
            w.join(15)


def ingest_once(proxy: Proxy) -> None:
    """Run ``splitwatch analyzer --once`` on the proxy's config (the topic into the lake), and check it succeeded."""
    res = subprocess.run(splitwatch_command("analyzer", "--config", str(proxy.config_path), "--once"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def todays_report(proxy: Proxy, experiment: str = "support-ft", fmt: str = "json") -> Any:
    """Return ``splitwatch report`` of today for the proxy's config: parsed JSON, or the text of another format."""
    today = datetime.now(UTC).date().isoformat()
    res = subprocess.run(splitwatch_command("report", "--config", str(proxy.config_path), "--experiment", experiment,
                                            "--from", today, "--to", today, "--format", fmt),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout) if fmt == "json" else res.stdout
