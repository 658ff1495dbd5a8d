"""How many concurrent streams one proxy worker carries: chunks/s, TTFT and inter-chunk gaps.

LLM traffic is mostly streams that stay open for seconds, so this, not requests per second, sizes a
deployment. On loopback:

- a paced SSE server (``bench/paced_sse_server.py``): 200 tokens per stream at 50 tokens/s, one SSE
  chunk per token, each written by a timer callback straight to the socket, so that it carries several
  times what one proxy worker can (``--stub model`` uses the project's stub model instead, as the first
  runs did: it saturates near 10,000 chunks/s on the second core, the proxy's own limit after the lean
  stream path); and an unpaced one for the last level;
- one proxy worker with Kafka logging on, it and its event shipper on CPU 0 (``--pin``); the stub,
  the broker and the load generator on CPU 1;
- a light load generator (raw asyncio sockets on uvloop, no HTTP library) that keeps N streams open: each
  stream that ends is replaced at once. The first 4 s (one stream's length) warm up, unmeasured;
  then ``--seconds`` are measured.

For each level, direct to the stub and through the proxy in one run: chunks/s received, TTFT
p50/p99 (request sent to first chunk), the inter-chunk gap p50/p99/p99.9 (against the stub's own
pacing of 20 ms), coalesced chunks (several in one read), streams still without a first chunk at
the window's end, refused streams (503), and the proxy's CPU (worker and shipper, from /proc).

Usage: python bench/stream_capacity.py [--pin] [--levels 50,200,500] [--seconds 10] [--limit N] [--stub light|model]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.local.processes import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.harness import Broker, Proxy, StubModel, base_config, experiment_config, new_topic

TOKENS = 200
DELAY_MS = 20.0


class PacedServer(ManagedProcess):
    """``bench/paced_sse_server.py`` on a free port (the light paced upstream)."""

    def __init__(self, workdir: Path, name: str, delay_ms: float) -> None:
        self.port = free_port()
        script = Path(__file__).with_name("paced_sse_server.py")
        super().__init__([sys.executable, str(script), "--port", str(self.port), "--tokens", str(TOKENS),
                          "--token-delay-ms", str(delay_ms)], workdir / f"paced-{name}-{self.port}.log")

    @property
    def base_url(self) -> str:
        """Return the OpenAI base URL of this server."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        super().start()
        wait_for_port(self.port, proc=self.proc)


@dataclass
class LevelResult:
    """What the load generator saw at one level of concurrent streams."""

    chunks: int = 0
    coalesced: int = 0
    refused: int = 0
    errors: int = 0
    waiting: int = 0  # streams without a first chunk when the window closed
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)


async def _one_stream(host: str, port: int, path: str, body: bytes, res: LevelResult, start_at: float,
                      stop_at: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body))
        sent = time.perf_counter()
        measured = start_at <= sent <= stop_at
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            if measured:
                res.refused += head.startswith(b"HTTP/1.1 503")
                res.errors += not head.startswith(b"HTTP/1.1 503")
            return
        last = None
        res.waiting += 1
        while True:
            data = await reader.read(65536)
            if not data:
                break
            now = time.perf_counter()
            n = data.count(b"data: {")
            if n == 0:
                if b"[DONE]" in data:
                    break
                continue
            window = start_at <= now <= stop_at
            if window:
                res.chunks += n
                res.coalesced += n - 1
            if last is None:
                res.waiting -= 1
                if measured and now <= stop_at:
                    res.ttft.append(now - sent)
            elif window:
                res.gaps.append(now - last)
                res.gaps.extend([0.0] * (n - 1))
            last = now
            if b"[DONE]" in data:
                break
        if last is None:
            res.waiting -= 1
    finally:
        writer.close()


async def _level(host: str, port: int, path: str, streams: int, seconds: float, warmup: float) -> LevelResult:
    """Keep ``streams`` open for ``warmup + seconds``; measure the last ``seconds`` only (every stream
    open by then, pools and connections warm)."""
    res = LevelResult()
    body = json.dumps({"model": "support-bot", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                       "metadata": {"stub_tokens": str(TOKENS)}}).encode()
    start = time.perf_counter()
    start_at = start + warmup
    stop_at = start_at + seconds
    counter = 0

    async def keep_open(i: int) -> None:
        nonlocal counter
        await asyncio.sleep(i * min(1.0, seconds / 4) / streams)  # ramp up over one second
        while time.perf_counter() < stop_at:
            counter += 1
            user = body.replace(b'"stream"', b'"user": "u%d", "stream"' % counter)
            try:
                await asyncio.wait_for(_one_stream(host, port, path, user, res, start_at, stop_at),
                                       timeout=max(stop_at - time.perf_counter() + 1, 0.1))
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                if time.perf_counter() < stop_at:
                    res.errors += 1
            if res.refused and time.perf_counter() < stop_at:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(keep_open(i) for i in range(streams)))
    return res


def _cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user + system) of a process and its live children (the shipper)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pin", action="store_true", help="proxy and shipper on CPU 0, everything else on CPU 1")
    ap.add_argument("--levels", default="50,200,500", help="concurrent streams, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per level")
    ap.add_argument("--limit", type=int, default=0, help="proxy.max_concurrent_streams (0: no limit)")
    ap.add_argument("--unpaced", type=int, default=50, help="streams of the unpaced level (0: skip it)")
    ap.add_argument("--no-logging", action="store_true", help="the proxy without Kafka (kafka.enabled: false)")
    ap.add_argument("--shipper-cpu", default="0", help="with --pin: the CPU of the event shipper (default 0, "
                    "with the worker)")
    ap.add_argument("--max-connections", type=int, default=4000,
                    help="the arms' upstream.max_connections (the default 200 would cap a level at 200 streams: "
                         "both arms share one upstream)")
    ap.add_argument("--stub", choices=["light", "model"], default="light",
                    help="the upstream: the light paced server (default) or the project's stub model")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {1})
        os.environ["SPLITWATCH_SHIPPER_CPUS"] = args.shipper_cpu
    work = Path(tempfile.mkdtemp(prefix="splitwatch-streams-"))
    broker = Broker(work)
    if args.stub == "model":
        paced = StubModel(work, "paced", "--token-delay-ms", str(DELAY_MS), "--completion-tokens", str(TOKENS))
        unpaced = StubModel(work, "unpaced", "--completion-tokens", str(TOKENS))
    else:
        paced, unpaced = PacedServer(work, "paced", DELAY_MS), PacedServer(work, "unpaced", 0)
    topic = new_topic()
    proxies = {}
    for name, stub in (("paced", paced), ("unpaced", unpaced)):
        exp = experiment_config(stub, stub)
        for arm in exp["arms"]:
            arm["upstream"]["max_connections"] = args.max_connections
        cfg = base_config(broker.bootstrap, topic, work / name, [exp],
                          max_concurrent_streams=args.limit, max_concurrency=4096)
        cfg["kafka"]["linger_ms"] = 20
        cfg["kafka"]["enabled"] = not args.no_logging
        proxies[name] = Proxy(work / name, cfg)
        if args.pin:
            proxies[name].args = ["taskset", "-c", "0", *proxies[name].args]
    procs = [broker, paced, unpaced, *proxies.values()]
    rows = []
    try:
        for p in procs:
            p.start()
        levels = [(int(n), True) for n in args.levels.split(",")]
        if args.unpaced:
            levels.append((args.unpaced, False))
        for streams, is_paced in levels:
            stub = paced if is_paced else unpaced
            proxy = proxies["paced" if is_paced else "unpaced"]
            warmup = TOKENS * DELAY_MS / 1000 if is_paced else 1.0  # one stream's length
            direct = uvloop.run(_level("127.0.0.1", stub.port, "/v1/chat/completions", streams, args.seconds,
                                        warmup))
            cpu0 = _cpu_seconds(proxy.proc.pid)
            t0 = time.perf_counter()
            via = uvloop.run(_level("127.0.0.1", proxy.port, "/v1/chat/completions", streams, args.seconds,
                                     warmup))
            cpu = (_cpu_seconds(proxy.proc.pid) - cpu0) / (time.perf_counter() - t0)  # over warm-up and window
            rows.append((streams, is_paced, direct, via, cpu))
            time.sleep(2)  # let the last streams end
    finally:
        for p in reversed(procs):
            p.stop()
    s = args.seconds
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          + (", pinned: proxy worker and shipper on CPU 0, stub, broker and load generator on CPU 1"
             if args.pin else ", not pinned") + f"; {TOKENS} tokens per stream, {s:g} s per level, "
          f"upstream: {args.stub}\n")
    print("| streams | path | chunks/s | ratio | TTFT p50 / p99 (ms) | gap p50 / p99 / p99.9 (ms) | coalesced "
          "| no first chunk | refused | proxy CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    out = []
    for streams, is_paced, direct, via, cpu in rows:
        label = f"{streams}" + ("" if is_paced else " unpaced")
        for name, r in (("direct", direct), ("proxy", via)):
            ratio = via.chunks / direct.chunks if direct.chunks and name == "proxy" else 1.0
            print(f"| {label} | {name} | {r.chunks / s:,.0f} | {ratio:.2f} | {_pct(r.ttft, 50):.1f} / "
                  f"{_pct(r.ttft, 99):.1f} | {_pct(r.gaps, 50):.1f} / {_pct(r.gaps, 99):.1f} / "
                  f"{_pct(r.gaps, 99.9):.1f} "
                  f"| {r.coalesced / max(r.chunks, 1):.0%} | {r.waiting} | {r.refused} | "
                  + (f"{cpu:.0%} |" if name == "proxy" else "- |"))
            out.append({"streams": streams, "paced": is_paced, "path": name, "chunks_per_s": r.chunks / s,
                        "ttft_p50_ms": _pct(r.ttft, 50), "ttft_p99_ms": _pct(r.ttft, 99),
                        "gap_p50_ms": _pct(r.gaps, 50), "gap_p99_ms": _pct(r.gaps, 99),
                        "gap_p999_ms": _pct(r.gaps, 99.9), "waiting": r.waiting, "refused": r.refused,
                        "errors": r.errors, "proxy_cpu": cpu if name == "proxy" else None})
    print("\nJSON:", json.dumps(out))


if __name__ == "__main__":
    main()
