"""The trade-off of each sequential design, in numbers (docs/stats.md, "Sequential designs compared").

For each design (mixture at n_star 10,000, mixture tuned to the plan, group-sequential, fixed
horizon) and true effect on the 30% primary (0 = A/A, +2 and +4 points), seeded simulations of the
whole decision (service/local/design_simulation.py): 300 units per arm a day, 14 days, a 10% binary
guardrail with margin 0.02, the verdict read at every look. Prints a Markdown table: false ship and
false rollback (A/A), ship by day 7 and by day 14, and the mean day of a decision.

    python bench/sequential_designs.py [--runs 200] [--hourly-runs 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import time

from splitwatch.service.local.design_simulation import DESIGNS, Scenario, simulate, summary

EFFECTS = (0.0, 0.02, 0.04)


def _row(design: str, label: str, scenario: Scenario, runs: int, seed: int) -> str:
    t0 = time.monotonic()
    s = summary(simulate(design, scenario, runs, seed), scenario.days)
    day = "-" if s["mean_day"] is None else f"{s['mean_day']:.1f}"
    return (f"| {design} | {label} | {runs} | {s['ship']:.1%} | {s['ship_by_day_7']:.1%} | {s['roll_back']:.1%} | "
            f"{s['invalid']:.1%} | {day} | {time.monotonic() - t0:.0f} s |")


def main() -> None:
    """Run every design and effect, daily looks, and the A/A with hourly looks; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="runs per design and effect, daily looks")
    ap.add_argument("--hourly-runs", type=int, default=100, help="A/A runs per design with hourly looks (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print("| design | true effect, looks | runs | ship by day 14 | ship by day 7 | roll back | invalid "
          "| mean day of a decision | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for effect in EFFECTS:
        scenario = Scenario(primary=(0.30, 0.30 + effect))
        label = ("A/A" if effect == 0 else f"+{effect * 100:.0f} pp") + ", daily"
        for design in DESIGNS:
            print(_row(design, label, scenario, args.runs, args.seed), flush=True)
    if args.hourly_runs:
        hourly = Scenario(looks_per_day=24)
        # the group design is left out: planned hourly looks (336) make each look's boundaries slow to
        # compute, and daily boundaries read hourly are not valid (tests/test_group_sequential.py)
        for design in ("mixture", "mixture_tuned"):
            print(_row(design, "A/A, hourly", hourly, args.hourly_runs, args.seed), flush=True)


if __name__ == "__main__":
    main()
