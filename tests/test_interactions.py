"""Interactions between concurrent experiments: the Wald test against statsmodels, the warning rate of
independent experiments (seeded simulation), and a planted interaction found in both reports.

Reference: statsmodels' OLS of y ~ a * b on the units' values with HC2 standard errors; in a saturated
model HC2 gives each cell's mean the variance s^2/n, so its Wald test of the interaction terms is the
same statistic (1e-9).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from splitwatch.service.analyzer.lake import Lake, Record
from splitwatch.service.analyzer.report import build_report
from splitwatch.service.analyzer.report_json import to_dict
from splitwatch.service.analyzer.report_markdown import to_markdown
from splitwatch.service.config import parse_config
from splitwatch.service.events import ExposureEvent, OutcomeEvent
from splitwatch.service.local.interaction_simulation import warning_rate
from splitwatch.service.proxy.assignment import CompiledExperiment
from splitwatch.stats import SampleStats
from splitwatch.stats.interaction import interaction_test


@pytest.mark.parametrize(("arms", "others", "seed"), [(["c", "t"], ["c", "t"], 1), (["c", "t1", "t2"], ["c", "t"], 2),
                                                      (["c", "t1", "t2"], ["c", "u1", "u2"], 3)])
def test_the_wald_test_is_the_hc2_ols_interaction_test(arms: list[str], others: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 4000
    a, b = rng.choice(arms, n), rng.choice(others, n)
    y = rng.normal(0, 1, n) + 0.2 * ((a == arms[1]) & (b == others[1])) + rng.normal(0, 0.5, n) * (a == arms[-1])
    df = pd.DataFrame({"a": a, "b": b, "y": y})
    cells = {(x, z): SampleStats(len(g), float(g.y.sum()), float((g.y ** 2).sum()))
             for (x, z), g in df.groupby(["a", "b"])}
    ours = interaction_test(cells, arms, others)
    fit = smf.ols(f"y ~ C(a, Treatment('{arms[0]}')) * C(b, Treatment('{others[0]}'))", df).fit(cov_type="HC2")
    terms = [p for p in fit.params.index if ":" in p]
    ref = fit.wald_test(", ".join(f"{t} = 0" for t in terms), scalar=True)
    assert ours is not None and ours.df == len(terms) == (len(arms) - 1) * (len(others) - 1)
    assert math.isclose(ours.statistic, float(ref.statistic), rel_tol=1e-9)
    assert math.isclose(ours.p_value, float(ref.pvalue), rel_tol=1e-7)
    assert np.allclose(sorted(ours.contrasts.values()), sorted(fit.params[terms]), rtol=1e-9)


def test_a_missing_or_constant_cell_gives_no_test() -> None:
    full = {(a, b): SampleStats(10, 5.0, 5.0) for a in "ct" for b in "ct"}
    assert interaction_test({k: v for k, v in full.items() if k != ("t", "t")}, ["c", "t"], ["c", "t"]) is None
    assert interaction_test({**full, ("t", "t"): SampleStats(10, 10.0, 10.0)}, ["c", "t"], ["c", "t"]) is None


def test_independent_experiments_are_warned_about_at_most_at_alpha() -> None:
    """600 seeded pairs of independent experiments, 4,000 users in both, two primaries corrected by Holm
    (docs/holdout.md has the 4,000-pair table): the warning rate is at most alpha plus three Monte Carlo
    standard errors (0.027); a planted interaction of 8 points is caught most of the time."""
    assert warning_rate(600) <= 0.05 + 0.027
    assert warning_rate(200, interaction=0.08) > 0.5


KEYS = ("support-ft", "tone-ft")


def _config(root: Path) -> object:
    def exp(key: str, model: str) -> dict:
        return {"key": key, "model": model, "arms": [
            {"name": "base", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": f"{key}-base"}},
            {"name": "ft", "weight": 50, "upstream": {"base_url": "http://x/v1", "model": f"{key}-ft"}}],
            "metrics": [{"name": "resolved", "kind": "binary", "role": "primary"}]}
    return parse_config({"analyzer": {"lake_dir": str(root), "cuped": {"enabled": False}},
                         "experiments": [exp(KEYS[0], "support-bot"), exp(KEYS[1], "tone-bot")]}, environ={})


def test_a_planted_interaction_is_warned_about_in_both_reports(tmp_path: Path) -> None:
    """Users in both experiments, arms by the proxy's own rule (independent salts). Resolution: 40%, +12
    points with support-ft's fine-tune alone, +0 with tone-ft's alone, but the two fine-tunes together
    cancel (40%): an interaction of -12 points. Outcomes are posted to both experiments."""
    cfg = _config(tmp_path / "lake")
    compiled = {e.key: CompiledExperiment(e) for e in cfg.experiments}  # type: ignore[attr-defined]
    rng = random.Random(4)
    t0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
    events = []
    for i in range(4000):
        unit, ts = f"u{i}", t0 + timedelta(seconds=i)
        arm = {k: compiled[k].bucketed_arm(unit)[1].name for k in KEYS}
        for k in KEYS:
            events.append(ExposureEvent(experiment=k, phase=1, arm=arm[k], unit_id=unit, request_id=f"{k}-{i}", ts=ts,
                                        requested_model="m", upstream_model="m").to_json())
        both = arm[KEYS[0]] == "ft" and arm[KEYS[1]] == "ft"
        p = 0.4 + (0.12 if arm[KEYS[0]] == "ft" else 0.0) - (0.12 if both else 0.0)
        value = float(rng.random() < p)
        for k in KEYS:
            events.append(OutcomeEvent(experiment=k, phase=1, arm=arm[k], unit_id=unit, metric="resolved",
                                       value=value, ts=ts + timedelta(minutes=5)).to_json())
    Lake(tmp_path / "lake").write_batch(0, [Record(0, i, v) for i, v in enumerate(events)])
    day = date(2026, 11, 20)
    for key, other in (KEYS, KEYS[::-1]):
        rep = build_report(cfg, key, day, day, progress=False)  # type: ignore[arg-type]
        data = to_dict(rep)
        (found,) = data["interactions"]
        assert found["other_experiment"] == other and found["units"] == 4000
        assert found["significant"] and found["p_value_adjusted"] < 0.001
        (contrast,) = found["contrasts"]
        assert contrast["contrast"] == pytest.approx(-0.12, abs=0.05)
        assert any(b["level"] == "warning" and f"experiment {other}" in b["text"] for b in data["banners"])
        assert "## Interactions with concurrent experiments" in to_markdown(rep)
