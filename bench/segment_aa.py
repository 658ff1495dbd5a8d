"""False segment findings in seeded A/A experiments, per correction scope (the table in docs/stats.md).

Each experiment: 3,000 users per arm with no effect, two dimensions over the same users (20 countries,
4 plans), a binary primary and a continuous guardrail, through the report's own segment code
(``service/local/segment_simulation.py``). Prints, per scope and method, the share of the scope's
families with at least one false finding and the share of experiments with one anywhere, with their
Monte Carlo standard errors.

Usage: python bench/segment_aa.py [--experiments 4000] [--units 3000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.local.segment_simulation import simulate_aa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=4000)
    ap.add_argument("--units", type=int, default=3000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rates = simulate_aa(args.experiments, args.units)
    print(f"{args.experiments:,} A/A experiments, {args.units:,} users per arm, alpha 0.05, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| scope | method | families per experiment | families with a false finding | experiments with one |")
    print("|---|---|---|---|---|")
    for r in rates:
        def se(p: float, n: int) -> float:
            return math.sqrt(p * (1 - p) / n)
        n_fam = r.families * args.experiments
        print(f"| {r.scope} | {r.method} | {r.families} | {r.family_rate:.4f} (± {se(r.family_rate, n_fam):.4f}) "
              f"| {r.report_rate:.4f} (± {se(r.report_rate, args.experiments):.4f}) |")


if __name__ == "__main__":
    main()
