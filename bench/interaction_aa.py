"""The interaction warning between two concurrent experiments: how often it fires when they are independent,
and how often it catches a planted interaction (the table in docs/holdout.md).

Usage: python bench/interaction_aa.py [--experiments 20000] [--units 4000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.service.local.interaction_simulation import warning_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=20000)
    ap.add_argument("--units", type=int, default=4000)
    args = ap.parse_args()
    print("| planted interaction (first primary) | pairs warned about | Monte Carlo s.e. |")
    print("|---|---|---|")
    t0 = time.perf_counter()
    for interaction in (0.0, 0.04, 0.08):
        r = warning_rate(args.experiments, args.units, interaction)
        print(f"| {interaction:+.2f} | {r:.4f} | {math.sqrt(r * (1 - r) / args.experiments):.4f} |")
    print(f"\n{args.experiments:,} pairs each, {args.units:,} users in both, Holm over two primaries, alpha 0.05, "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
