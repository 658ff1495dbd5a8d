"""What shadowing costs the client: latency through the proxy with shadow traffic off and at 100%.

Starts, on loopback: a Tansu broker, a control stub answering in 50 ms, a candidate stub answering in
500 ms (ten times slower, so any coupling would show), and two single-worker proxies with Kafka
logging on, identical but for ``shadow: {arm: finetuned, share: 1.0}`` on one. Every unit goes to
the control. Then, in interleaved rounds (off, on, off, on...), an open-loop load at a fixed rate
(requests start on schedule, latency counted from the scheduled start, so queueing is not hidden),
half of them streamed. Prints p50/p90/p99 per setting and the ratios on/off, and how many shadow
calls were made.

Usage: python bench/shadow_overhead.py [--quick] [--rate R] [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.proxy_overhead import BODY, open_loop
from tests.harness import Broker, Proxy, StubModel, base_config, experiment_config, new_topic


def _latencies(url: str, rate: float, seconds: float, tag: str) -> np.ndarray:
    """Return the open loop's latencies (bench/proxy_overhead.py): half streamed, every unit on the control."""
    return asyncio.run(open_loop(url, rate, seconds, lambda i: {**BODY, "user": f"{tag}-{i}", "stream": i % 2 == 1},
                                 connections=512, timeout=30, check=lambda r: r.headers["x-splitwatch-arm"] == "base"))


def shadow_calls(proxy: Proxy) -> int:
    """Return the shadow calls the proxy made, from its /metrics."""
    text = httpx.get(proxy.url + "/metrics").text
    return int(sum(float(v) for v in re.findall(r'^splitwatch_shadow_calls_total\{[^}]*\} ([0-9.e+]+)', text, re.M)))


def main() -> None:
    """Run the benchmark and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 10 s")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per round and setting (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 10.0, 1
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    broker = Broker(work)
    control = StubModel(work, "base", "--latency-ms", "50", "--completion-tokens", "40", "--token-delay-ms", "1")
    candidate = StubModel(work, "cand", "--latency-ms", "500", "--completion-tokens", "40", "--token-delay-ms", "1")
    procs: list = [broker, control, candidate]
    for p in procs:
        p.start()
    topic = new_topic()
    proxies = {}
    try:
        for name in ("off", "on"):
            exp = experiment_config(control, candidate)
            exp["arms"][0]["weight"], exp["arms"][1]["weight"] = 1_000_000, 1
            if name == "on":
                exp["shadow"] = {"arm": "finetuned", "share": 1.0, "max_concurrency": 1000}
            proxies[name] = Proxy(work / name, base_config(broker.bootstrap, topic, work / name, [exp],
                                                           max_concurrency=4096))
            proxies[name].start()
            procs.append(proxies[name])
        for p in proxies.values():  # warm-up: connection pools, first imports
            _latencies(p.url + "/v1/chat/completions", 20, 2, "warm")
        lat: dict[str, list[np.ndarray]] = {"off": [], "on": []}
        for r in range(args.rounds):
            for name in ("off", "on"):
                lat[name].append(_latencies(proxies[name].url + "/v1/chat/completions", args.rate, args.seconds,
                                            f"{name}{r}"))
        time.sleep(1.0)
        print(f"rate {args.rate:g}/s, {args.rounds} round(s) of {args.seconds:g} s per setting, half streamed; "
              f"control stub 50 ms, candidate 500 ms")
        print("| shadow | requests | p50 ms | p90 ms | p99 ms | max ms | shadow calls |")
        print("|---|---|---|---|---|---|---|")
        q = {}
        for name in ("off", "on"):
            a = np.concatenate(lat[name]) * 1000
            q[name] = np.percentile(a, [50, 90, 99])
            print(f"| {name} | {a.size} | {q[name][0]:.1f} | {q[name][1]:.1f} | {q[name][2]:.1f} | {a.max():.1f} | "
                  f"{shadow_calls(proxies[name])} |")
        ratio = q["on"] / q["off"]
        print(f"ratio on/off: p50 {ratio[0]:.3f}, p90 {ratio[1]:.3f}, p99 {ratio[2]:.3f}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
