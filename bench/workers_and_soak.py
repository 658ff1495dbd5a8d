"""``bench/proxy_overhead.py --workers`` and ``--soak``: throughput by worker count, and memory over time.

``--workers``: ``splitwatch proxy --workers 1`` and ``--workers 2`` (Kafka logging on and off), wrk at 32
connections per worker (below ``proxy.max_concurrent_requests``' refusals) in rotating rounds, with the CPU
each process used during the runs (from ``/proc``): the workers, their event shippers (one per worker, a
process of its own, at ``nice 10``), the stubs and the broker. The shipper's placement is the default: no
CPU pinning, so on a small machine the workers, their shippers, the stubs and wrk share the cores.

``--soak SECONDS``: one worker, Kafka logging on, wrk at 32 connections (saturation) for SECONDS in
30-second runs; the resident memory (RSS) of the worker and of its shipper every 10 s. The first minute
is warm-up (allocators and caches fill: 85 -> 120 MB in the first 30 s); over the rest, a least-squares
line through the samples gives the start and end level, and RSS is flat when the end is within 10% of the
start. (The shipper's samples swing by +-15 MB with the batches it holds, so a single minute's mean is a
poor level: the minutes' means are printed too.)
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from side_by_side import wrk

from splitwatch.service.local.processes import wait_delivered
from tests.harness import Proxy, base_config

TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """Return ``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_s(pid: int) -> float:
    """Return the process's user + system CPU seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _role(pid: int) -> str:
    """Return what a process of a proxy's tree is: the supervisor, a worker or a shipper."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "resource_tracker" in cmd:
        return "other"
    if "--multiprocessing-fork" in cmd:
        return "worker or shipper"
    return "proxy"


def _rss_mb(pid: int) -> float:
    """Return the process's resident memory in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workers_bench(args, broker, stubs, topic: str, exp: dict, work: Path) -> None:
    """Measure 1 and 2 workers, logging on and off (see the module docstring); print the table."""
    seconds, rounds = (3, 1) if args.quick else (10, 3)
    proxies = {}
    for workers in (1, 2):
        for logging in (True, False):
            d = work / f"w{workers}-{'on' if logging else 'off'}"
            cfg = base_config(broker.bootstrap, topic, d, [exp])
            cfg["kafka"]["enabled"] = logging
            proxies[(workers, logging)] = Proxy(d, cfg, workers=workers)
    rps: dict[tuple[int, bool], list[float]] = {k: [] for k in proxies}
    refused = dict.fromkeys(proxies, 0)
    cpu: dict[tuple[int, bool], dict[str, float]] = {k: {} for k in proxies}
    others = {"stubs": [s.proc.pid for s in stubs], "broker": [broker.proc.pid]}
    try:
        for p in proxies.values():
            p.start()
        order = list(proxies)
        for i in range(rounds):
            for key in order[i % len(order):] + order[:i % len(order)]:
                p = proxies[key]
                tree = _tree(p.proc.pid)
                before = {pid: _cpu_s(pid) for pid in tree}
                watched = {name: [_cpu_s(pid) for pid in pids] for name, pids in others.items()}
                t0 = time.monotonic()
                r = wrk(p.port, seconds, 32 * key[0])
                rps[key].append(r["rps"])
                refused[key] += r["non2xx"]
                elapsed = time.monotonic() - t0
                used: dict[str, float] = {}
                for pid in tree:
                    used[_role(pid)] = used.get(_role(pid), 0.0) + (_cpu_s(pid) - before[pid]) / elapsed
                for name, pids in others.items():
                    used[name] = sum(_cpu_s(pid) - b for pid, b in zip(pids, watched[name], strict=True)) / elapsed
                for name, share in used.items():
                    cpu[key][name] = cpu[key].get(name, 0.0) + share / rounds
                if key[1]:
                    wait_delivered(p.url, 120)
    finally:
        for p in proxies.values():
            p.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; wrk at 32 "
          f"connections per worker, median of {rounds} rotating rounds of {seconds} s; "
          "CPU in cores (1.00 = one core)\n")
    print("| workers | Kafka logging | req/s | range | vs 1 worker | CPU: workers and shippers | stubs | broker "
          "| non-2xx |\n" + "|---" * 9 + "|")
    for (workers, logging), runs in rps.items():
        base = float(np.median(rps[(1, logging)]))
        c = cpu[(workers, logging)]
        print(f"| {workers} | {'on' if logging else 'off'} | {np.median(runs):,.0f} "
              f"| {min(runs):,.0f}-{max(runs):,.0f} "
              f"| {np.median(runs) / base:.2f} | {c.get('worker or shipper', 0) + c.get('proxy', 0):.2f} "
              f"| {c['stubs']:.2f} | {c['broker']:.2f} | {refused[(workers, logging)]} |")


def soak_bench(args, broker, stubs, topic: str, exp: dict, work: Path) -> None:
    """Run one logging worker at saturation for ``args.soak`` seconds; print its RSS over time."""
    cfg = base_config(broker.bootstrap, topic, work / "soak", [exp])
    proxy = Proxy(work / "soak", cfg)
    samples: list[tuple[float, float, float]] = []  # (t, worker MB, shipper MB)
    served = []
    stop = threading.Event()
    try:
        proxy.start()
        wrk(proxy.port, 5, 32)  # warm-up
        worker = proxy.proc.pid
        shipper = next(pid for pid in _tree(worker) if _role(pid) == "worker or shipper")
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - t0, _rss_mb(worker), _rss_mb(shipper)))
                stop.wait(10)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while time.monotonic() - t0 < args.soak:
            r = wrk(proxy.port, int(min(30, max(1, args.soak - (time.monotonic() - t0)))), 32)
            served.append(r["rps"])
            if r["timeouts"] or r["non2xx"]:
                print(f"run with {r['timeouts']} timeouts, {r['non2xx']} non-2xx answers")
        stop.set()
        sampler.join()
        state = wait_delivered(proxy.url, 300)
    finally:
        proxy.stop()
    t = np.array([s[0] for s in samples])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one worker, "
          f"Kafka logging on, wrk at 32 connections for {args.soak:.0f} s in 30 s runs: {np.mean(served):,.0f} "
          f"req/s on average ({min(served):,.0f}-{max(served):,.0f})\n")
    print("| process | fitted RSS after warm-up, start (MB) | fitted, end (MB) | end / start | second minute's mean "
          "| last minute's mean | max (MB) |\n" + "|---" * 7 + "|")
    after = t >= 60
    for i, name in ((1, "worker"), (2, "its event shipper")):
        v = np.array([s[i] for s in samples])
        slope, intercept = np.polyfit(t[after], v[after], 1)
        start, end = intercept + slope * 60, intercept + slope * t.max()
        second, last = v[after & (t < 120)].mean(), v[t >= t.max() - 60].mean()
        print(f"| {name} | {start:.1f} | {end:.1f} | {end / start:.3f} | {second:.1f} | {last:.1f} | {v.max():.1f} |")
    print(f"\nevents after the run: {state}")
    print("RSS every 10 s (s, worker MB, shipper MB):", [(round(a), round(b, 1), round(c, 1)) for a, b, c in samples])
