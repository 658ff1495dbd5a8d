"""The weekly report's KPI SQL on DuckDB and on Spark, full and from daily rollups, at growing lake sizes
(docs/benchmarks.md, "Engine scaling").

For each size, a seeded lake (service/local/synthetic_lake.py: every counting rule, about 14 events a
user) is written with the users' first exposures spread over ``--days`` days (two writer processes,
one Kafka partition each), then `splitwatch report --format json` of the last 7 days runs as a
separate process, measured for wall time and the peak resident memory of its whole process tree
(the JVM included, sampled every 0.1 s from /proc):

1. full, on DuckDB and on Spark (every event of the phase, the whole lake for CUPED);
2. ``--rollups`` the first time (the refresh rolls up every batch, then the report reads its days);
3. ``--rollups`` again, on DuckDB and on Spark (nothing new: the report reads its days);
4. ``--rollups`` after one more day of users is written (the refresh reads that day's batches).

Every report of the same lake must equal the full DuckDB one to 1e-9 (the run stops otherwise);
a run that fails (out of memory, say) is printed as such and the others go on. Prints a Markdown
table; each time also as a ratio of the full DuckDB report's in the same run.

    python bench/engine_scaling.py [--events 1000000 10000000] [--days 28] [--master local[2]] [--keep DIR]
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import yaml

from splitwatch.service.analyzer.lake import Lake
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


def run_report(config: Path, engine: str, day: str, to: str, master: str,
               rollups: bool = False) -> tuple[float, int, dict | None]:
    """Return (wall seconds, peak tree RSS in bytes, the JSON report or None if it failed) of one report."""
    cmd = splitwatch_command("report", "--config", str(config), "--experiment", EXPERIMENT, "--from", day, "--to", to,
                             "--format", "json", "--engine", engine, "--spark-master", master,
                             "--rollups" if rollups else "--no-rollups")
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
        print(f"<!-- {engine}{' rollups' if rollups else ''} failed: {err.decode()[-600:]!r} -->", flush=True)
        return seconds, peak, None
    return seconds, peak, json.loads(out)


def write_lake(lake: Path, first_day: date, users: int, days: int, seed: int = 11) -> int:
    """Write the lake with two processes (partitions 0 and 1, half the users each); return its events."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        parts = [pool.submit(write_synthetic_lake, lake, first_day, users // 2, seed + p, days * 24.0, p, f"u{p}")
                 for p in (0, 1)]
        return sum(f.result() for f in parts)


def show(results: dict[tuple[str, str], tuple[float, int, dict | None]], key: tuple[str, str],
         size: tuple[int, int, float]) -> None:
    """Print one run's row as soon as it is measured (the large sizes take hours); stop if its report
    differs from the full DuckDB one."""
    label, engine = key
    seconds, peak, report = results[key]
    baseline = results.get(("full", "duckdb"))
    usable = baseline is not None and baseline[2] is not None
    if report is not None and usable and not label.startswith("rollups after"):
        differ = report_differences(baseline[2], report)  # type: ignore[index]
        if differ:
            raise SystemExit(f"{label} on {engine} differs from the full DuckDB report: {differ[:5]}")
    ratio = f"{seconds / baseline[0]:.2f}x" if usable else "-"  # type: ignore[index]
    events, users, written = size
    print(f"| {events:,} | {users:,} | {label} | {engine} | {seconds:.1f} s {'failed ' if report is None else ''}| "
          f"{peak / 2**20:,.0f} MiB | {ratio} |  (lake written in {written:.0f} s)", flush=True)


def main() -> None:
    """Write each lake, run the reports, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=float, nargs="+", default=[1e6])
    ap.add_argument("--days", type=int, default=28, help="days over which users are first exposed")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--keep", default=None, help="keep the lakes under this directory")
    ap.add_argument("--skip", nargs="*", default=[], choices=["spark-full", "spark-rollups", "new-day"],
                    help="leave out runs (the large sizes' Spark runs take long on two cores)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: use a lake already written there")
    ap.add_argument("--spark-driver-memory", default="4g",
                    help="spark.driver.memory (local mode: the driver is the executor; Spark's default, 1g, ran out "
                    "at 10M events)")
    args = ap.parse_args()
    print(f"| events | users | report | engine | wall time | peak memory (process tree) | time / full DuckDB's |  "
          f"(Spark {args.master}, {os.cpu_count()} cores, users over {args.days} days, report of the last 7)")
    print("|---|---|---|---|---|---|---|")
    for target in args.events:
        base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="engine-bench-"))
        lake = base / f"lake-{int(target)}"
        first_day = datetime.now(UTC).date() - timedelta(days=args.days + 1)
        users = int(target / EVENTS_PER_UNIT)
        t0 = time.perf_counter()
        if args.reuse and lake.exists():
            events = sum(m["events"] + m["invalid"] for m in Lake(lake).markers())  # (written on the same day)
        else:
            events = write_lake(lake, first_day, users, args.days)
        written = time.perf_counter() - t0
        config = base / f"cfg-{int(target)}.yaml"
        raw = synthetic_config(lake)
        raw["analyzer"]["spark"] = {"conf": {"spark.driver.memory": args.spark_driver_memory}}
        config.write_text(yaml.safe_dump(raw))
        last = first_day + timedelta(days=args.days - 1)
        week = ((last - timedelta(days=6)).isoformat(), last.isoformat())
        runs = [("full", "duckdb", False), ("full", "spark", False), ("rollups, first (builds them)", "duckdb", True),
                ("rollups", "duckdb", True), ("rollups", "spark", True)]
        runs = [r for r in runs if f"{r[1]}-{'rollups' if r[2] else 'full'}" not in args.skip]
        results: dict[tuple[str, str], tuple[float, int, dict | None]] = {}

        for label, engine, rollups in runs:
            results[(label, engine)] = run_report(config, engine, *week, args.master, rollups)
            show(results, (label, engine), (events, users, written))
        # one more day of users (a third partition), then the refresh reads only its batches
        t1 = time.perf_counter()
        if "new-day" not in args.skip:
            extra = write_synthetic_lake(lake, last + timedelta(days=1), users // args.days, 99, 24.0, 2, "v")
            label = f"rollups after a new day ({extra:,} events, written in {time.perf_counter() - t1:.0f} s)"
            results[(label, "duckdb")] = run_report(config, "duckdb", *week, args.master, True)
            show(results, (label, "duckdb"), (events, users, written))
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
