"""A report over a long period, this checkout against an earlier commit, in one invocation
(docs/benchmarks.md, "A report over 28 days").

The report used to analyse the lake once per day of its period (the daily series: 28 analyses for 28
days); it now analyses it once and sums per-day statistics for the series. A seeded lake
(service/local/synthetic_lake.py, every counting rule) is written with users first exposed over
``--days`` days, then ``splitwatch report --format json`` for the whole period runs as a separate
process, alternately from this checkout and from ``--baseline`` (checked out in a temporary git
worktree and imported through a shim directory ahead of the installed package), ``--repeats`` times
each. Prints each run, the median times and their ratio, and checks that the two reports agree on
everything but the daily series (to 1e-9), and by how much the series differ (the period's cap on
every day, see service/analyzer/daily_series.py).

    python bench/report_period.py [--users 20000] [--days 28] [--baseline COMMIT] [--engine duckdb]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from splitwatch.service.local.synthetic_lake import (
    EXPERIMENT,
    report_differences,
    synthetic_config,
    write_synthetic_lake,
)

ROOT = Path(__file__).resolve().parents[1]
FIRST_DAY = date(2026, 10, 5)


def shim_for(rev: str, workdir: Path) -> Path:
    """Return a directory that imports ``splitwatch`` from commit ``rev`` (a worktree plus symlinks)."""
    tree = workdir / "baseline-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), rev], check=True,
                   capture_output=True)
    shim = workdir / "baseline-shim"
    (shim / "splitwatch").mkdir(parents=True)
    for folder in ("service", "stats", "drift"):
        (shim / "splitwatch" / folder).symlink_to(tree / folder)
    return shim


def run(config: Path, days: int, engine: str, shim: Path | None) -> tuple[float, dict[str, Any]]:
    """Return (wall seconds, the JSON report) of one report of the whole period."""
    to = FIRST_DAY + timedelta(days=days - 1)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    if shim is not None:
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "splitwatch.service.cli", "report", "--config", str(config), "--experiment",
           EXPERIMENT, "--from", FIRST_DAY.isoformat(), "--to", to.isoformat(), "--format", "json", "--engine",
           engine]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=config.parent)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"report failed ({'baseline' if shim else 'this checkout'}): {res.stderr[-800:]}")
    return seconds, json.loads(res.stdout)


def _without_series(report: dict[str, Any]) -> dict[str, Any]:
    return {**report, "results": [{k: v for k, v in r.items() if k != "series"} for r in report["results"]]}


def _series_gap(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, float]:
    """Return the number of series points and the largest difference of a relative effect between them."""
    points, gap = 0, 0.0
    for ra, rb in zip(a["results"], b["results"], strict=True):
        for pa, pb in zip(ra["series"], rb["series"], strict=False):
            points += 1
            if pa["relative"] is not None and pb["relative"] is not None:
                gap = max(gap, abs(pa["relative"] - pb["relative"]))
    return points, gap


def main() -> None:
    """Write the lake, time both versions' reports, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--baseline", default="2a0bf48", help="the commit to compare with (default: before the "
                    "report's one-analysis change)")
    ap.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="splitwatch-report-period-") as tmp:
        work = Path(tmp)
        lake = work / "lake"
        events = sum(write_synthetic_lake(lake, FIRST_DAY, args.users // 2, 11 + p, args.days * 24.0, p, f"u{p}")
                     for p in (0, 1))
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(synthetic_config(lake)))
        shim = shim_for(args.baseline, work)
        try:
            times: dict[str, list[float]] = {"this checkout": [], f"baseline {args.baseline}": []}
            reports: dict[str, dict[str, Any]] = {}
            print(f"{events:,} events, {args.users:,} users over {args.days} days; report of the whole period "
                  f"on {args.engine}, {platform_line()}", flush=True)
            for i in range(args.repeats):
                for label, s in ((f"baseline {args.baseline}", shim), ("this checkout", None)):
                    seconds, reports[label] = run(config, args.days, args.engine, s)
                    times[label].append(seconds)
                    print(f"run {i + 1}: {label}: {seconds:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "baseline-tree")],
                           check=False, capture_output=True)
    new, old = (statistics.median(times[k]) for k in times)
    a, b = reports["this checkout"], reports[f"baseline {args.baseline}"]
    differ = report_differences(_without_series(b), _without_series(a))
    points, gap = _series_gap(a, b)
    print(f"\nmedian: this checkout {new:.1f} s, baseline {old:.1f} s: {new / old:.2f}x the baseline's time")
    print(f"reports equal but for the series (1e-9): {not differ} {differ[:3] if differ else ''}")
    print(f"series: {points} points; largest difference of a relative effect {gap:.2e}")


def platform_line() -> str:
    """Return the machine in one line."""
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
