"""The rollout guard's operating characteristics, at sizes too large for CI (table in docs/rollout.md).

Slow path: one binary guardrail (escalations 10% in the control, margin 0.01, one-sided alpha 0.05,
sequential, n_star 10,000), 1,440 units a day split 50/50, 14 days, two consecutive confirmations,
100 units per arm before acting; daily looks (the full engine) and per-minute looks (the live
analyzer's default interval). Fast path: request failure rates, a look every 25 requests per arm.
Usage: python bench/rollout_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.local.rollout_simulation import (
    FastScenario,
    Scenario,
    simulate,
    simulate_fast,
    summarise,
)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    """Print the slow-path and fast-path tables in Markdown."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a tenth of the repetitions")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    print("| true harm (margin 0.01) | looks | experiments | rolled back | 95% upper bound | median days to rollback"
          " | p90 days | median units at rollback | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    cells = [(0.0, 1, 4000), (0.0, 1440, 300), (0.01, 1, 4000), (0.01, 1440, 300)]
    cells += [(h, lpd, n) for h in (0.02, 0.03, 0.05, 0.10) for lpd, n in ((1, 1000), (1440, 100))]
    for harm, looks, reps in cells:
        reps = max(10, int(reps * scale))
        t0 = time.perf_counter()
        s = summarise(simulate(Scenario(harm=harm, looks_per_day=looks), reps, seed=1000 + int(harm * 1000) + looks,
                               engine=looks == 1))
        print(f"| {harm:+.2f} | {'daily' if looks == 1 else 'every minute'} | {reps} | {s['rate']:.2%} | "
              f"{s['rate_upper95']:.2%} | {_fmt(s['median_days'])} | {_fmt(s['p90_days'])} | "
              f"{_fmt(s['median_units'], 0)} | {time.perf_counter() - t0:.0f} |", flush=True)
    print()
    print("| control failures | candidate failures | alpha | windows | rolled back | 95% upper bound "
          "| median requests per arm at rollback |")
    print("|---|---|---|---|---|---|---|")
    fast = [FastScenario(0.02, 0.02, 20_000), FastScenario(0.10, 0.10, 20_000),
            FastScenario(0.02, 0.07, 20_000, alpha=0.05), FastScenario(0.0, 0.05, 20_000, alpha=0.05),
            FastScenario(0.01, 0.07, 20_000), FastScenario(0.01, 0.10, 20_000), FastScenario(0.01, 0.30, 20_000),
            FastScenario(0.01, 1.0, 20_000)]
    for sc in fast:
        reps = max(20, int(400 * scale))
        s = summarise(simulate_fast(sc, reps, seed=7))
        print(f"| {sc.p_control:.0%} | {sc.p_candidate:.0%} | {sc.alpha} | {reps} | {s['rate']:.2%} | "
              f"{s['rate_upper95']:.2%} | {_fmt(s['median_units'], 0)} |", flush=True)


if __name__ == "__main__":
    main()
