"""The weekly report's KPI SQL on DuckDB and on Spark, at growing lake sizes (docs/benchmarks.md,
"Engine scaling").

For each size, a seeded lake (service/local/synthetic_lake.py: every counting rule, about 14 events a
user) is written, then `splitwatch report --format json` runs on it once per engine, as a separate
process: its wall time, and the peak resident memory of its whole process tree (the JVM included),
sampled every 0.1 s from /proc. The two JSON reports must be equal to 1e-9 (the run stops otherwise). Prints
a Markdown table; Spark's time as a ratio of DuckDB's in the same run.

    python bench/engine_scaling.py [--events 1000000 10000000] [--master local[2]] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from splitwatch.service.local.processes import splitwatch_command
from splitwatch.service.local.synthetic_lake import (
    EXPERIMENT,
    report_differences,
    synthetic_config,
    write_synthetic_lake,
)

EVENTS_PER_UNIT = 13.8  # measured on the generator: exposures, responses, outcomes, history, duplicates


def _tree_rss(pid: int) -> int:
    """Return the resident memory (bytes) of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_report(config: Path, engine: str, day: str, to: str, master: str) -> tuple[float, int, dict]:
    """Return (wall seconds, peak tree RSS in bytes, the JSON report) of one `splitwatch report`."""
    cmd = splitwatch_command("report", "--config", str(config), "--experiment", EXPERIMENT, "--from", day, "--to", to,
                             "--format", "json", "--engine", engine, "--spark-master", master)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed: {err.decode()[-2000:]}")
    return seconds, peak, json.loads(out)


def main() -> None:
    """Write each lake, run both engines, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=float, nargs="+", default=[1e6])
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--keep", default=None, help="keep the lakes under this directory")
    args = ap.parse_args()
    print(f"| events | users | engine | report wall time | peak memory (process tree) | time / DuckDB's |  "
          f"(Spark {args.master}, {os.cpu_count()} cores)")
    print("|---|---|---|---|---|---|")
    for target in args.events:
        base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="engine-bench-"))
        lake = base / f"lake-{int(target)}"
        day = datetime.now(UTC).date() - timedelta(days=3)
        users = int(target / EVENTS_PER_UNIT)
        t0 = time.perf_counter()
        events = write_synthetic_lake(lake, day, units=users)
        written = time.perf_counter() - t0
        config = base / f"cfg-{int(target)}.yaml"
        config.write_text(yaml.safe_dump(synthetic_config(lake)))
        results = {}
        for engine in ("duckdb", "spark"):
            results[engine] = run_report(config, engine, day.isoformat(), (day + timedelta(days=1)).isoformat(),
                                         args.master)
        differ = report_differences(results["duckdb"][2], results["spark"][2])
        if differ:
            raise SystemExit(f"the engines' reports differ: {differ[:5]}")
        base_s = results["duckdb"][0]
        for engine, (seconds, peak, _) in results.items():
            print(f"| {events:,} | {users:,} | {engine} | {seconds:.1f} s | {peak / 2**20:,.0f} MiB | "
                  f"{seconds / base_s:.2f}x |  (lake written in {written:.0f} s)", flush=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
