"""The sequential designs of the whole decision (engine + verdict), by seeded simulation (issue 33).

The issue's example: a true +4 points on a 30% primary, 300 units per arm a day, 14 daily looks, a
binary guardrail (10%) with margin 0.02. The large versions (more runs, hourly looks, every design)
are bench/sequential_designs.py, recorded in docs/stats.md. Tolerances: with R runs a rate near p has
a standard error of sqrt(p (1 - p) / R); the A/A bounds are the design's alpha, and the measured rates
sit well inside them (printed on failure).
"""

from __future__ import annotations

import pytest

from splitwatch.service.local.design_simulation import Scenario, simulate, summary
from splitwatch.stats.group_sequential import GroupDesign, boundaries, crossing_probabilities

EXAMPLE = Scenario(per_day=300, days=14, primary=(0.30, 0.34), guardrail=(0.10, 0.10), margin=0.02)


def test_the_group_design_ships_a_true_13_percent_lift_in_at_least_80_percent_of_runs() -> None:
    result = summary(simulate("group", EXAMPLE, runs=100, seed=1), EXAMPLE.days)
    print(f"\ngroup design, +4 pp on 30%: {result}")
    assert result["ship"] >= 0.80, result
    assert result["roll_back"] == 0 and result["invalid"] <= 0.02, result


def test_the_group_design_keeps_an_aa_at_alpha_at_its_planned_looks() -> None:
    aa = Scenario(per_day=300, days=14)
    result = summary(simulate("group", aa, runs=200, seed=2), aa.days)
    print(f"\ngroup design, A/A, 14 daily looks: {result}")
    assert result["ship"] <= 0.05, result  # a ship needs the primary better: two-sided 0.05, 0.025 a side
    assert result["roll_back"] <= 0.05, result


def test_a_design_says_where_its_looks_are() -> None:
    design = GroupDesign(planned_units=8400, looks=14)
    # halfway, the looks so far are the planned ones: 1/14 ... 7/14
    assert design.fractions(4200) == tuple(round(j / 14, 3) for j in range(1, 8))
    # a late look at 52%: the planned looks before it, then this one at its own fraction
    assert design.fractions(4368)[-2:] == (0.5, 0.52)
    # the report's own days: the looks at the units each earlier day ended with
    assert design.fractions(3000, earlier=[500, 1400, 2100]) == (0.06, 0.167, 0.25, 0.357)
    # past the plan, the last look spends what is left: the whole design spends exactly alpha
    late = boundaries(design.fractions(9000), alpha=0.025)
    assert late.fractions[-1] > 1 and sum(crossing_probabilities(late, 0.0)) == pytest.approx(0.025, abs=1e-6)
