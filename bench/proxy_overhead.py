"""Added latency and throughput of the splitwatch proxy over calling the model endpoint directly.

Starts, on loopback: a Tansu broker, a stub model server (no artificial latency), and two
single-worker proxies, one with Kafka logging on and one with it off. Then measures, in one run:

1. concurrency 1: p50/p99 latency, stub directly vs through the proxy (logging on);
2. open loop at a fixed rate (requests start on schedule whatever the previous ones do, latency
   counted from the scheduled start, so queueing is not hidden);
3. the highest rate one proxy worker sustains (wrk, closed loop, 32 connections): stub directly,
   proxy with logging off, proxy with logging on, in interleaved rounds (off, on, off, on, ...) so
   that drift of the machine hits both alike; medians and ranges are reported, and the ratio of
   the medians on/off is the cost of logging;
4. that every event of the logging-on run reached the broker's spool/Kafka with none dropped.

With --tracing, instead: three single-worker proxies, tracing off, tracing at 1%
(``tracing.sample_ratio: 0.01``) and at 100%, exporting to an OTLP/HTTP sink on loopback that reads and
discards; concurrency-1 p50 and p99 added over the stub, and wrk's req/s in rounds whose order rotates,
each against tracing off. Kafka logging is off in all three: a logging proxy's shipper goes on sending
its events after its run, into the next proxy's (the first version of this bench measured that).

With --overload, instead: single-worker proxies (Kafka logging on) with ``proxy.max_concurrent_requests``
off and at several limits, under 8, 64 and 256 closed-loop connections (bench/load_client.py, which keeps
the served answers' latency apart from the refused ones'): served and refused req/s, client timeouts,
served p50 and p99, refused p99.

With --workers or --soak SECONDS, instead: 1 and 2 workers, or one worker's memory over time at
saturation (bench/workers_and_soak.py).

With --side-by-side, instead: this checkout against an earlier commit's tree (--baseline-src) and LiteLLM
(--litellm), every gateway one worker in front of the same stub: bench/side_by_side.py says what is measured.

Usage: python bench/proxy_overhead.py [--quick] [--pin] [--rate R] [--tracing | --overload [--limits 0,32,64]
       | --side-by-side [--baseline-src DIR] [--litellm PATH] | --workers | --soak SECONDS]

To compare two versions of the code in one session, run this script with each version's interpreter
(an editable install of each), interleaved; docs/benchmarks.md shows how.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.harness import Broker, Proxy, StubModel, base_config, experiment_config, new_topic

BODY = {"model": "support-bot", "messages": [{"role": "user", "content": "Where is my parcel? Order 1234."}]}


def closed_loop_latencies(url: str, n: int) -> np.ndarray:
    """Return n sequential request latencies (seconds) over one keep-alive connection."""
    out = np.empty(n)
    with httpx.Client(timeout=10) as c:
        for i in range(50):  # warm-up
            c.post(url, json={**BODY, "user": f"warm-{i}"})
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post(url, json={**BODY, "user": f"c1-{i}"})
            out[i] = time.perf_counter() - t0
            assert r.status_code == 200, r.text
    return out


async def open_loop(url: str, rate: float, seconds: float, body: Callable[[int], dict] | None = None,
                    connections: int = 256, timeout: float = 10,
                    check: Callable[[httpx.Response], bool] | None = None) -> np.ndarray:
    """Return the latencies (from each request's scheduled start) of ``rate x seconds`` requests started on
    schedule; ``body(i)`` is request i's JSON (default: BODY for user ol-i). Every answer must be a 200
    (and pass ``check``)."""
    n = int(rate * seconds)
    lat = np.full(n, np.nan)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            r = await c.post(url, json=body(i) if body else {**BODY, "user": f"ol-{i}"})
            lat[i] = time.perf_counter() - scheduled
            assert r.status_code == 200 and (check is None or check(r)), r.text

        await asyncio.gather(*(one(i) for i in range(n)))
    return lat


def open_loop_latencies(url: str, rate: float, seconds: float) -> np.ndarray:
    """Return latencies (from each request's scheduled start) at a fixed arrival rate."""
    return asyncio.run(open_loop(url, rate, seconds))


def wrk_script(name_failures: bool = True) -> Path:
    """Return a wrk Lua script that POSTs BODY with a unique user per request; with ``name_failures``, each
    non-2xx answer's status and body start go to wrk's output (a Lua call per answer: the side-by-side
    bench, which counts refusals, goes without)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        f"  local body = '{json.dumps(BODY)[:-1]}, \"user\": \"wrk-' .. counter .. '\"}}'\n"
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
        + ("response = function(status, headers, body)\n"
           "  if status > 299 then io.write('NON2XX ' .. status .. ' ' .. string.sub(body, 1, 300) .. '\\n') end\n"
           "end\n" if name_failures else ""))
    return script


def wrk_rate(url: str, seconds: int, connections: int = 32) -> float:
    """Return the requests/s wrk sustains against url (POST chat completions, unique users)."""
    script = wrk_script()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    script.unlink()
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))


def _stubs_and_broker() -> tuple[Path, Broker, StubModel, StubModel, str, dict]:
    """Return a work dir, a broker, two stub models, a topic and the test experiment on them (not started)."""
    work = Path(tempfile.mkdtemp(prefix="splitwatch-bench-"))
    stub, stub2 = StubModel(work, "base"), StubModel(work, "ft")
    return work, Broker(work), stub, stub2, new_topic(), experiment_config(stub, stub2)


class OtlpSink:
    """An OTLP/HTTP endpoint on loopback that counts the spans' export requests and bytes, then discards them
    (decoding is the collector's cost, not the proxy's)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.exports = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", "0"))
                sink.bytes += len(self.rfile.read(n))
                sink.exports += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()


def tracing_bench(args: argparse.Namespace) -> None:
    """Measure the proxy with tracing off, at 1% and at 100% (see the module docstring); print the table."""
    n1, wrk_s, rounds = (300, 3, 1) if args.quick else (3000, 10, 6)
    work, broker, stub, stub2, topic, exp = _stubs_and_broker()
    sink = OtlpSink()
    modes = {"off": None, "1%": 0.01, "100%": 1.0}
    proxies = {}
    for mode, ratio in modes.items():
        cfg = base_config(broker.bootstrap, topic, work / mode.rstrip("%"), [exp])
        cfg["kafka"]["enabled"] = False
        if ratio is not None:
            cfg["tracing"] = {"endpoint": sink.url, "sample_ratio": ratio}
        proxies[mode] = Proxy(work / mode.rstrip("%"), cfg)
        if args.pin:
            proxies[mode].args = ["taskset", "-c", "0", *proxies[mode].args]
    procs = [broker, stub, stub2, *proxies.values()]
    r: dict[str, dict] = {"c1": {}, "rps_runs": {m: [] for m in modes}}
    try:
        for p in procs:
            p.start()
        direct = stub.base_url + "/chat/completions"
        d1 = closed_loop_latencies(direct, n1)
        r["c1"]["direct"] = (pct(d1, 50), pct(d1, 99))
        for mode, p in proxies.items():
            lat = closed_loop_latencies(p.url + "/v1/chat/completions", n1)
            r["c1"][mode] = (pct(lat, 50), pct(lat, 99))
        order = list(proxies)
        for i in range(rounds):
            for mode in order[i % 3:] + order[:i % 3]:  # each mode first, second and third in turn
                r["rps_runs"][mode].append(wrk_rate(proxies[mode].url + "/v1/chat/completions", wrk_s))
        time.sleep(6)  # the batch processors' schedule (5 s): what is buffered goes out
        traced = {m: httpx.get(p.url + "/metrics").text for m, p in proxies.items()}
        r["requests"] = {m: sum(float(v) for v in re.findall(r'^splitwatch_requests_total\{[^}]*\} ([0-9.e+]+)$',
                                                             text, re.M)) for m, text in traced.items()}
        r["sink"] = {"exports": sink.exports, "bytes": sink.bytes}
    finally:
        for p in reversed(procs):
            p.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    rps = {m: float(np.median(v)) for m, v in r["rps_runs"].items()}
    direct50, direct99 = r["c1"]["direct"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          + (", pinned" if args.pin else ", not pinned"))
    print(f"\n| tracing | req/s (wrk, 32 connections, Kafka logging off, median of {rounds}) | range | ratio to off "
          "| added p50, concurrency 1 (ms) | added p99 (ms) |\n|---|---|---|---|---|---|")
    for mode in modes:
        runs = r["rps_runs"][mode]
        p50, p99 = r["c1"][mode]
        print(f"| {mode} | {rps[mode]:.0f} | {min(runs):.0f}-{max(runs):.0f} | {rps[mode] / rps['off']:.2f} | "
              f"{p50 - direct50:.3f} | {p99 - direct99:.3f} |")
    print(f"\nrequests served per proxy: {r['requests']}; the sink received {r['sink']['exports']} exports "
          f"({r['sink']['bytes'] / 1e6:.1f} MB)")
    print("\nJSON:", json.dumps(r))


def load(url: str, connections: int, seconds: float, honour_retry_after: bool = False) -> dict:
    """Return bench/load_client.py's counts and latencies against ``url`` (a separate process)."""
    host, port = url.removeprefix("http://").split(":")
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("load_client.py")), host, port,
                          "/v1/chat/completions", str(connections), str(seconds), "10",
                          "1" if honour_retry_after else "0"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def overload_bench(args: argparse.Namespace) -> None:
    """Measure served and refused answers past saturation for each ``proxy.max_concurrent_requests``."""
    seconds = 3 if args.quick else 10
    limits = [int(x) for x in args.limits.split(",")]
    work, broker, stub, stub2, topic, exp = _stubs_and_broker()
    rows = []
    try:
        for p in (broker, stub, stub2):
            p.start()
        for limit in limits:
            cfg = base_config(broker.bootstrap, topic, work / f"limit{limit}", [exp], max_concurrent_requests=limit)
            proxy = Proxy(work / f"limit{limit}", cfg)
            if args.pin:
                proxy.args = ["taskset", "-c", "0", *proxy.args]
            proxy.start()
            try:
                load(proxy.url, 32, 2)  # warm-up
                for connections in (8, 64, 256):
                    rows.append((limit, connections, "asks again at once", load(proxy.url, connections, seconds)))
                rows.append((limit, 256, "waits Retry-After", load(proxy.url, 256, seconds, True)))
            finally:
                proxy.stop()
    finally:
        for p in (stub2, stub, broker):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          + (", pinned" if args.pin else ", not pinned") + f"; {seconds} s per line")
    print("\n| max_concurrent_requests | connections | a refused client | served req/s | refused req/s | timeouts "
          "| served p50 (ms) | served p99 (ms) | refused p99 (ms) |\n|---|---|---|---|---|---|---|---|---|")
    for limit, connections, client, r in rows:
        served, refused = r["status"].get("200", 0), r["status"].get("503", 0)
        lat = r["latency_ms"]
        refused_p99 = f"{lat['503'][1]:.1f}" if "503" in lat else ""
        print(f"| {limit or 'off'} | {connections} | {client} | {served / r['seconds']:.0f} | "
              f"{refused / r['seconds']:.0f} | {r['timeouts']} | {lat.get('200', [0, 0])[0]:.1f} | "
              f"{lat.get('200', [0, 0])[1]:.1f} | {refused_p99} |")
    print("\nJSON:", json.dumps(rows))


def side_by_side_bench(args: argparse.Namespace) -> None:
    """Run bench/side_by_side.py's comparison on a broker and stub of this script's."""
    import side_by_side

    work, broker, stub, stub2, topic, exp = _stubs_and_broker()
    try:
        for p in (broker, stub, stub2):
            p.start()
        side_by_side.run(args, broker, stub, topic, exp, work)
    finally:
        for p in (stub2, stub, broker):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def workers_or_soak_bench(args: argparse.Namespace) -> None:
    """Run bench/workers_and_soak.py's --workers or --soak on a broker and stubs of this script's."""
    import workers_and_soak

    work, broker, stub, stub2, topic, exp = _stubs_and_broker()
    try:
        for p in (broker, stub, stub2):
            p.start()
        bench = workers_and_soak.soak_bench if args.soak else workers_and_soak.workers_bench
        bench(args, broker, (stub, stub2), topic, exp, work)
    finally:
        for p in (stub2, stub, broker):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def pct(a: np.ndarray, q: float) -> float:
    """Return the q-th percentile in milliseconds."""
    return float(np.nanpercentile(a, q) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (smoke test of the benchmark)")
    ap.add_argument("--pin", action="store_true",
                    help="proxy worker alone on CPU 0; its shipper, the broker, the stub and the load "
                         "generators on CPU 1: isolates the request path's own cost")
    ap.add_argument("--rate", type=float, default=300.0,
                    help="open-loop rate in requests/s (default 300; lower it on a slow machine, where 300/s "
                         "would measure queueing only)")
    ap.add_argument("--tracing", action="store_true", help="tracing off, at 1%% and at 100%% (issue 31)")
    ap.add_argument("--overload", action="store_true", help="served and refused past saturation (issue 32)")
    ap.add_argument("--limits", default="0,32,64,128", help="--overload's proxy.max_concurrent_requests values")
    ap.add_argument("--workers", action="store_true", help="1 and 2 workers (bench/workers_and_soak.py; issue 32)")
    ap.add_argument("--soak", type=float, metavar="SECONDS",
                    help="RSS of one logging worker at saturation for SECONDS (bench/workers_and_soak.py)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="this checkout against --baseline-src and --litellm (bench/side_by_side.py; issue 32)")
    ap.add_argument("--baseline-src", help="earlier commits' trees, comma-separated (git worktree add --detach)")
    ap.add_argument("--litellm", help="the litellm command of a virtualenv where LiteLLM is installed")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {1})  # this process and what it starts (broker, stubs, wrk) on CPU 1
        os.environ["SPLITWATCH_SHIPPER_CPUS"] = "1"
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the throughput part: apt-get install wrk")
    if args.tracing:
        tracing_bench(args)
        return
    if args.overload:
        overload_bench(args)
        return
    if args.side_by_side:
        side_by_side_bench(args)
        return
    if args.workers or args.soak:
        workers_or_soak_bench(args)
        return
    n1, rate, ol_s, wrk_s, rounds = (300, min(args.rate, 100), 3, 3, 1) if args.quick else (3000, args.rate, 15, 10, 5)
    work, broker, stub, stub2, topic, exp = _stubs_and_broker()
    on_cfg = base_config(broker.bootstrap, topic, work / "on", [exp])
    off_cfg = base_config(broker.bootstrap, topic, work / "off", [exp])
    off_cfg["kafka"]["enabled"] = False
    for cfg in (on_cfg, off_cfg):
        cfg["kafka"]["linger_ms"] = 20
    proxy_on = Proxy(work / "on", on_cfg)
    proxy_off = Proxy(work / "off", off_cfg)
    if args.pin:
        for p in (proxy_on, proxy_off):
            p.args = ["taskset", "-c", "0", *p.args]
    procs = [broker, stub, stub2, proxy_on, proxy_off]
    try:
        for p in procs:
            p.start()
        direct = stub.base_url + "/chat/completions"
        via_on = proxy_on.url + "/v1/chat/completions"
        via_off = proxy_off.url + "/v1/chat/completions"
        # Route the proxies' traffic to one stub only, so "direct" and "proxied" hit the same server.
        r = {}
        d1, p1 = closed_loop_latencies(direct, n1), closed_loop_latencies(via_on, n1)
        r["c1"] = {"direct_p50": pct(d1, 50), "direct_p99": pct(d1, 99), "proxy_p50": pct(p1, 50),
                   "proxy_p99": pct(p1, 99)}
        d2, p2 = open_loop_latencies(direct, rate, ol_s), open_loop_latencies(via_on, rate, ol_s)
        r["open"] = {"rate": rate, "direct_p50": pct(d2, 50), "direct_p99": pct(d2, 99),
                     "proxy_p50": pct(p2, 50), "proxy_p99": pct(p2, 99)}
        runs: dict[str, list[float]] = {"direct": [wrk_rate(direct, wrk_s)], "proxy_logging_off": [],
                                        "proxy_logging_on": []}
        for _ in range(rounds):
            runs["proxy_logging_off"].append(wrk_rate(via_off, wrk_s))
            runs["proxy_logging_on"].append(wrk_rate(via_on, wrk_s))
        r["rps_runs"] = runs
        r["rps"] = {k: float(np.median(v)) for k, v in runs.items()}
        deadline = time.monotonic() + 120
        state = {}
        while time.monotonic() < deadline:
            state = httpx.get(proxy_on.url + "/readyz").json()["kafka"]
            if state["queued"] == 0 and state["spooled"] == 0:
                break
            time.sleep(0.5)
        r["kafka_after_run"] = state
        proxy_metrics = httpx.get(proxy_on.url + "/metrics").text
        overhead = re.search(r"^splitwatch_proxy_overhead_seconds_sum ([0-9.e+-]+)$", proxy_metrics, re.M)
        count = re.search(r"^splitwatch_proxy_overhead_seconds_count ([0-9.e+-]+)$", proxy_metrics, re.M)
        r["in_process_overhead_mean_ms"] = float(overhead.group(1)) / float(count.group(1)) * 1000
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    c1, ol, rps, runs = r["c1"], r["open"], r["rps"], r["rps_runs"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
          + (", pinned: proxy worker on CPU 0, everything else on CPU 1" if args.pin else ", not pinned"))
    print("\n| measure | direct | via proxy | added |\n|---|---|---|---|")
    print(f"| concurrency 1, p50 (ms) | {c1['direct_p50']:.3f} | {c1['proxy_p50']:.3f} | "
          f"{c1['proxy_p50'] - c1['direct_p50']:.3f} |")
    print(f"| concurrency 1, p99 (ms) | {c1['direct_p99']:.3f} | {c1['proxy_p99']:.3f} | "
          f"{c1['proxy_p99'] - c1['direct_p99']:.3f} |")
    print(f"| open loop {ol['rate']} req/s, p50 (ms) | {ol['direct_p50']:.3f} | {ol['proxy_p50']:.3f} | "
          f"{ol['proxy_p50'] - ol['direct_p50']:.3f} |")
    print(f"| open loop {ol['rate']} req/s, p99 (ms) | {ol['direct_p99']:.3f} | {ol['proxy_p99']:.3f} | "
          f"{ol['proxy_p99'] - ol['direct_p99']:.3f} |")
    print(f"\nin-process overhead (splitwatch_proxy_overhead_seconds mean): {r['in_process_overhead_mean_ms']:.3f} ms")
    print(f"\n| throughput (wrk, 32 connections, one worker; median of {len(runs['proxy_logging_on'])} "
          "interleaved runs) | req/s | range | ratio to baseline |\n|---|---|---|---|")
    print(f"| stub directly | {rps['direct']:.0f} | | |")
    labels = (("proxy_logging_off", "proxy, Kafka logging off"), ("proxy_logging_on", "proxy, Kafka logging on"))
    for key, label in labels:
        ratio = rps[key] / rps["proxy_logging_off"]
        print(f"| {label} | {rps[key]:.0f} | {min(runs[key]):.0f}-{max(runs[key]):.0f} | "
              f"{ratio:.2f}{' (baseline)' if key == 'proxy_logging_off' else ''} |")
    print(f"\nKafka after the run: {r['kafka_after_run']}")
    print("\nJSON:", json.dumps(r))


if __name__ == "__main__":
    main()
