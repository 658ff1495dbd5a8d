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


def test_the_report_tunes_to_the_plan_and_says_which_design_it_used(tmp_path) -> None:
    import json
    import subprocess
    from datetime import UTC, datetime, timedelta

    import yaml

    from splitwatch.service.local.processes import splitwatch_command
    from tests.test_report_cli import _config, _write_lake

    first = datetime.now(UTC).date() - timedelta(days=2)
    _write_lake(tmp_path, first, units=900, days=3)
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["experiments"][0]["plan"] = {"units_per_day": 300, "days": 10}

    def report(**analyzer: object) -> dict:
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump({**cfg, "analyzer": {**cfg["analyzer"], **analyzer}}))
        res = subprocess.run(splitwatch_command("report", "--config", str(path), "--experiment", "support-ft",
                                                "--from", str(first), "--format", "json"),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    mixture = report()
    assert mixture["sequential_design"] == {"design": "mixture", "n_star": 3000,
                                            "n_star_from": "the plan's units (units_per_day x days)"}
    assert all("n_star=3000" in r["method"] for r in mixture["results"] if r["role"] == "primary")
    group = report(sequential="group")
    d = group["sequential_design"]
    assert d["design"] == "group" and d["planned_units"] == 3000 and d["planned_looks"] == 10
    assert d["look"] == 3 and d["information_fraction"] == 0.3  # the report's three days are its looks
    primary = next(r for r in group["results"] if r["role"] == "primary")
    assert primary["method"].startswith("group_sequential(obrien_fleming, look 3 of 10")
    # this look's boundary, with the report's first two days as the earlier looks (300 units a day)
    assert d["boundary_z"] == pytest.approx(GroupDesign(3000, 10).bound(900, 0.025, earlier=[300, 600]), abs=1e-9)
    assert d["boundary_z"] > 3  # 30% of the way, O'Brien-Fleming-like spending asks for much more than 1.96
    lo, hi = primary["absolute_ci"]  # the repeated interval excludes 0 exactly when the repeated p is below alpha
    assert (lo > 0 or hi < 0) == (primary["p_value"] < 0.05)


def test_a_group_design_without_a_plan_is_refused_naming_the_field(tmp_path) -> None:
    from splitwatch.service.config import ConfigError, parse_config

    raw = {"analyzer": {"sequential": "group"}, "experiments": [{
        "key": "x", "model": "m", "arms": [{"name": "a", "weight": 1, "upstream": {"base_url": "http://a/v1",
                                                                                   "model": "a"}},
                                           {"name": "b", "weight": 1, "upstream": {"base_url": "http://b/v1",
                                                                                   "model": "b"}}]}]}
    with pytest.raises(ConfigError, match=r"experiments\.0\.plan \(x\)"):
        parse_config(raw, environ={})


def test_the_guard_keeps_the_always_valid_mixture_under_a_group_design() -> None:
    from splitwatch.service.analyzer.analysis import analysis_options
    from splitwatch.service.analyzer.guard import guard_analysis_config
    from splitwatch.service.config import parse_config

    cfg = parse_config({"analyzer": {"sequential": "group"}, "experiments": [{
        "key": "x", "model": "m", "plan": {"units_per_day": 600, "days": 14},
        "arms": [{"name": "a", "weight": 1, "upstream": {"base_url": "http://a/v1", "model": "a"}},
                 {"name": "b", "weight": 1, "upstream": {"base_url": "http://b/v1", "model": "b"}}]}]}, environ={})
    exp = cfg.experiments[0]
    assert analysis_options(cfg.analyzer, True, exp).group is not None  # the report's and the verdict's design
    guard = analysis_options(guard_analysis_config(cfg.analyzer, 0.01), True, exp)
    assert guard.group is None and guard.n_star == 8400 and guard.guardrail_alpha == 0.01  # tuned to the plan
