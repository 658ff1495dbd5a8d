"""``bench/proxy_overhead.py --side-by-side``: this checkout's proxy against an earlier commit's and LiteLLM.

Every gateway runs as one worker in front of the same stub model, on the same machine, in one run:

- **this checkout**, Kafka logging on (the default config) and off;
- **earlier commits** (``--baseline-src DIR[,DIR...]``, ``git worktree``s of them), logging on and off, started
  with ``PYTHONPATH`` pointing at a shim of that tree (the printed module path says which code ran);
- **LiteLLM** (``--litellm PATH`` to its ``litellm`` command, installed in its own virtualenv), its
  proxy with one worker and no master key, no database and no callbacks (its lightest setting).

Measured for each, with the stub's own figures subtracted where the measure is "added":

- concurrency 1: p50 and p99 over one keep-alive connection, by a raw-socket client (pre-built
  requests, a blocking ``recv``: a few microseconds of client time, where httpx costs ~0.3 ms and
  its variance shows in sub-millisecond percentiles);
- requests/s at 32 connections (wrk, closed loop), in rounds that rotate the gateways' order,
  medians and ranges;
- p99 at 8, 64 and 256 connections (wrk ``--latency``, 10 s timeout; timeouts and non-2xx counted: past
  ``proxy.max_concurrent_requests`` splitwatch refuses with 503, and wrk's figures mix those in; the
  served and refused latencies apart are ``--overload``'s).

With ``--pin``, each gateway runs on CPU 0; the event shippers, the stubs, the broker and wrk on CPU 1.

After each run against a logging proxy, its events are delivered (``/readyz``) before the next run starts.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy_overhead import BODY, wrk_script

from splitwatch.service.local.processes import ManagedProcess, free_port, wait_delivered, wait_for_port
from tests.harness import Proxy, base_config

PATH = "/v1/chat/completions"


def _request(host: str, i: int) -> bytes:
    body = json.dumps({**BODY, "user": f"c1-{i}"}).encode()
    return (f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def _read_answer(sock: socket.socket, buf: bytes) -> bytes:
    """Read one Content-Length answer (a 200, or raise); return the bytes past it."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before an answer")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"not a 200: {head[:200]!r}")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m is None:
        raise RuntimeError(f"no content-length: {head[:300]!r}")
    length = int(m.group(1))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        rest += data
    return rest[length:]


def c1_latencies(port: int, n: int, max_s: float = 20.0) -> np.ndarray:
    """Return up to ``n`` sequential latencies (seconds) over one keep-alive connection (at most ``max_s``)."""
    host = f"127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        for i in range(100):  # warm-up
            sock.sendall(_request(host, -1 - i))
            buf = _read_answer(sock, buf)
        requests = [_request(host, i) for i in range(n)]
        out = []
        until = time.perf_counter() + max_s
        for req in requests:
            t0 = time.perf_counter()
            sock.sendall(req)
            buf = _read_answer(sock, buf)
            out.append(time.perf_counter() - t0)
            if t0 > until:
                break
    return np.array(out)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port: int, seconds: int, connections: int) -> dict:
    """Return wrk's req/s, p50/p99 (ms), timeouts and non-2xx answers at ``connections`` (closed loop)."""
    script = wrk_script(name_failures=False)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
                              "-s", str(script), f"http://127.0.0.1:{port}{PATH}"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        script.unlink()

    def pct(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    timeouts = re.search(r"timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), "p50": pct("50"), "p99": pct("99"),
            "timeouts": int(timeouts.group(1)) if timeouts else 0, "non2xx": int(non2xx.group(1)) if non2xx else 0}


class LiteLLM(ManagedProcess):
    """LiteLLM's proxy (``litellm --config``), one worker, routing ``support-bot`` to the stub."""

    def __init__(self, workdir: Path, litellm: str, stub_base_url: str) -> None:
        self.port = free_port()
        cfg = workdir / "litellm.yaml"
        cfg.write_text(
            "model_list:\n  - model_name: support-bot\n    litellm_params:\n      model: openai/llama-base\n"
            f"      api_base: {stub_base_url}\n      api_key: none\n"
            "general_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n")
        super().__init__([litellm, "--config", str(cfg), "--port", str(self.port), "--num_workers", "1"],
                         workdir / "litellm.log", {"LITELLM_LOCAL_MODEL_COST_MAP": "True"})

    def start(self) -> None:
        """Start LiteLLM and wait until it answers a completion."""
        super().start()
        wait_for_port(self.port, 120, proc=self.proc)
        c1_latencies(self.port, 1)

    def version(self) -> str:
        """Return the installed LiteLLM's version."""
        python = Path(self.args[0]).with_name("python")
        return subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                              capture_output=True, text=True).stdout.strip()


def _commit_of(tree: Path) -> str:
    """Return "commit <short hash>" of a git worktree (its label in the table)."""
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"commit {out.stdout.strip() or tree.name}"


def shim(src: Path, work: Path) -> Path:
    """Return a directory whose ``splitwatch`` package is ``src``'s tree (service, stats, drift)."""
    root = work / f"shim-{src.name}"
    (root / "splitwatch").mkdir(parents=True)
    for name in ("service", "stats", "drift"):
        (root / "splitwatch" / name).symlink_to(src / name)
    return root


@dataclass
class Gateway:
    """One gateway under test: its process, port and results."""

    name: str
    proc: ManagedProcess
    port: int
    c1: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    by_connections: dict[int, dict] = field(default_factory=dict)
    logs_events: bool = False

    def load(self, seconds: int, connections: int) -> dict:
        """Return wrk's figures at ``connections``; a logging proxy's events are then delivered before the next
        gateway's turn (its shipper would otherwise go on sending them, on the same cores, into that turn).

        The CPU its processes used over the run and the delivery after it is in ``cpu_us``: microseconds per
        served request, for the gateway's own process(es) and for its event shipper."""
        before = self._cpu()
        out = wrk(self.port, seconds, connections)
        if self.logs_events:
            wait_delivered(f"http://127.0.0.1:{self.port}", 120)
        after = self._cpu()
        served = out["rps"] * seconds
        out["cpu_us"] = {k: (after[k] - before.get(k, 0.0)) / served * 1e6 for k in after} if served else {}
        return out

    def _cpu(self) -> dict[str, float]:
        """Return the CPU seconds of the gateway's process tree: {"gateway": ..., "shipper": ...}."""
        from workers_and_soak import _cpu_s, _role, _tree  # it imports this module

        out = {"gateway": 0.0, "shipper": 0.0}
        if self.proc.proc is None:
            return out
        for pid in _tree(self.proc.proc.pid):
            role = _role(pid)
            if role == "worker or shipper":  # one worker: the server is the proxy process, this its shipper
                out["shipper"] += _cpu_s(pid)
            elif role != "other":
                out["gateway"] += _cpu_s(pid)
        return out


# Past the size limits on purpose (pyproject.toml: bench/ is exempt): one scenario, read top to bottom.
def run(args, broker, stub, topic: str, exp: dict, work: Path) -> None:
    """Measure every gateway (see the module docstring) and print the table and the JSON."""
    n1, wrk_s, rounds = (500, 3, 1) if args.quick else (5000, 10, 5)
    gateways: list[Gateway] = []
    where = {}
    baselines = [Path(src) for src in (args.baseline_src or "").split(",") if src]
    for label, src in [("this checkout", None), *((_commit_of(b), b) for b in baselines)]:
        env = None
        if src is not None:
            env = {"PYTHONPATH": str(shim(Path(src).resolve(), work))}
            where[label] = subprocess.run(
                [sys.executable, "-c", "import splitwatch.service as s; print(s.__file__)"],
                env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout.strip()
        for logging in (True, False):
            d = work / f"{label.replace(' ', '-')}-{'on' if logging else 'off'}"
            cfg = base_config(broker.bootstrap, topic, d, [exp])
            cfg["kafka"]["enabled"] = logging
            p = Proxy(d, cfg, env=env)
            gateways.append(Gateway(f"splitwatch {label}, Kafka logging {'on' if logging else 'off'}", p, p.port,
                                    logs_events=logging))
    if args.litellm:
        lite = LiteLLM(work, args.litellm, stub.base_url)
        gateways.append(Gateway(f"LiteLLM {lite.version()}", lite, lite.port))
    if args.pin:  # the gateways on CPU 0; this process, the stubs, the broker, wrk and the shippers on CPU 1
        for g in gateways:
            g.proc.args = ["taskset", "-c", "0", *g.proc.args]
    import splitwatch.service as here

    where["this checkout"] = here.__file__
    try:
        for g in gateways:
            g.proc.start()
        direct = c1_latencies(stub.port, n1)
        for g in gateways:
            g.c1 = list(c1_latencies(g.port, n1))
        for i in range(rounds):
            k = i % len(gateways)
            for g in gateways[k:] + gateways[:k]:  # each gateway first in turn
                g.rps.append(g.load(wrk_s, 32)["rps"])
        for connections in (8, 64, 256):
            for g in gateways:
                g.by_connections[connections] = g.load(wrk_s, connections)
        direct_wrk = {c: wrk(stub.port, wrk_s, c) for c in (8, 32)}
    finally:
        for g in reversed(gateways):
            g.proc.stop()
    d50, d99 = (float(np.percentile(direct, q) * 1000) for q in (50, 99))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"one worker each, {'pinned (gateways on CPU 0, the rest on CPU 1)' if args.pin else 'not pinned'}; "
          f"code: {where}")
    print(f"stub directly: c1 p50 {d50:.3f} ms, p99 {d99:.3f} ms; {direct_wrk[32]['rps']:.0f} req/s at 32 "
          f"connections; p99 at 8 connections {direct_wrk[8]['p99']:.2f} ms")
    ours = next(g for g in gateways if g.name == "splitwatch this checkout, Kafka logging on")
    print(f"\n| gateway | req/s at 32 connections (median of {rounds}) | range | ratio to this checkout, logging on "
          "| added p50, 1 connection (ms) | added p99, 1 connection (ms) | p99 at 8 (ms) | p99 at 64 (ms) "
          "| p99 at 256 (ms) | refused (non-2xx) at 256 | timeouts at 256 |\n" + "|---" * 11 + "|")
    ref = float(np.median(ours.rps))
    for g in gateways:
        rps = float(np.median(g.rps))
        c1 = np.array(g.c1) * 1000
        p = {c: g.by_connections[c] for c in (8, 64, 256)}
        print(f"| {g.name} | {rps:,.0f} | {min(g.rps):,.0f}-{max(g.rps):,.0f} | {rps / ref:.3f} | "
              f"{np.percentile(c1, 50) - d50:.3f} | {np.percentile(c1, 99) - d99:.3f} | {p[8]['p99']:.2f} | "
              f"{p[64]['p99']:.2f} | {p[256]['p99']:.2f} | {p[256]['non2xx'] / (p[256]['rps'] * wrk_s):.0%} | "
              f"{p[256]['timeouts']} |")
    print("\n| gateway | CPU per request at 8 connections: gateway process (us) | its event shipper (us) "
          "| total (us) |\n|---|---|---|---|")
    for g in gateways:
        cpu = g.by_connections[8].get("cpu_us", {})
        print(f"| {g.name} | {cpu.get('gateway', float('nan')):.0f} | {cpu.get('shipper', float('nan')):.0f} | "
              f"{sum(cpu.values()):.0f} |")
    print("\nJSON:", json.dumps({"direct": {"c1_p50": d50, "c1_p99": d99, "wrk": direct_wrk},
                                 "gateways": [{"name": g.name, "rps": g.rps, "c1_p50": float(np.percentile(g.c1, 50)),
                                               "c1_p99": float(np.percentile(g.c1, 99)), "c1_n": len(g.c1),
                                               "by_connections": g.by_connections} for g in gateways]}))
