"""Group-sequential boundaries (stats/group_sequential.py) against published tables, and by simulation.

References, each to its printed precision (tolerance 1e-3 or finer):
- rpact (getDesignGroupSequential, typeOfDesign "asOF", kMax 3, one-sided alpha 0.025, as printed in
  RPACT's "rpact for confirmatory adaptive group sequential designs", 2025): efficacy boundaries
  3.710, 2.511, 1.993; cumulative alpha spent 0.0001, 0.0060, 0.0250;
- gsDesign (gsDesign(k = 5, test.type = 1), its default Hwang-Shih-DeCani(-4) spending, in the
  package's own tests/testthat/_snaps/independent-test-gsBoundSummary.md): Z 3.2527, 2.9860, 2.6917,
  2.3737, 2.0253, and P(cross) at the alternative with 90% power, cumulative, 0.0370, 0.1883,
  0.4530, 0.7229, 0.9000.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from splitwatch.stats.errors import InvalidSpecification
from splitwatch.stats.group_sequential import boundaries, crossing_probabilities


def test_obrien_fleming_spending_matches_rpact() -> None:
    b = boundaries([1 / 3, 2 / 3, 1], alpha=0.025, spending_function="obrien_fleming")
    assert np.allclose(b.z, [3.710, 2.511, 1.993], atol=5e-4)  # rpact prints 3 decimals
    assert np.allclose(b.spent, [0.0001, 0.0060, 0.0250], atol=5e-5)


def test_hwang_shih_decani_spending_matches_gsdesign_bounds_and_power() -> None:
    b = boundaries([0.2, 0.4, 0.6, 0.8, 1.0], alpha=0.025, spending_function="hwang_shih_decani", gamma=-4)
    assert np.allclose(b.z, [3.2527, 2.9860, 2.6917, 2.3737, 2.0253], atol=5e-5)
    # the drift with 90% power, and the cumulative chance to have crossed by each look
    drift = brentq(lambda d: sum(crossing_probabilities(b, d)) - 0.9, 1, 6)
    assert np.allclose(np.cumsum(crossing_probabilities(b, drift)), [0.0370, 0.1883, 0.4530, 0.7229, 0.9000],
                       atol=5e-5)


@pytest.mark.parametrize("spending_function", ["obrien_fleming", "pocock", "hwang_shih_decani"])
def test_the_boundaries_spend_exactly_alpha_under_the_null(spending_function: str) -> None:
    b = boundaries([k / 14 for k in range(1, 15)], alpha=0.05, spending_function=spending_function)
    assert sum(crossing_probabilities(b, 0.0)) == pytest.approx(0.05, abs=1e-6)
    assert b.spent[-1] == pytest.approx(0.05, abs=1e-12)


def test_looks_early_or_late_spend_at_their_own_fractions() -> None:
    # planned thirds, taken at 25%, 55% and 100%: each look spends f(t) at its actual t, the total is alpha
    b = boundaries([0.25, 0.55, 1.0], alpha=0.025)
    planned = boundaries([1 / 3, 2 / 3, 1.0], alpha=0.025)
    assert b.z[0] > planned.z[0] and b.z[1] > planned.z[1]  # earlier: less information, a higher bar
    assert sum(crossing_probabilities(b, 0.0)) == pytest.approx(0.025, abs=1e-6)


def test_a_simulated_null_crosses_at_alpha_at_the_planned_looks_only() -> None:
    # 40,000 seeded Brownian paths, 14 daily looks: the false positive rate is alpha (3 standard errors);
    # looked at hourly with each day's boundary, the same paths cross more often: the design's promise
    # holds at its planned looks, not under continuous monitoring (docs/stats.md)
    rng = np.random.default_rng(33)
    hours = 14 * 24
    steps = rng.normal(0, np.sqrt(1 / hours), size=(40_000, hours))
    s = np.cumsum(steps, axis=1)
    t = np.arange(1, hours + 1) / hours
    z = s / np.sqrt(t)
    b = boundaries([k / 14 for k in range(1, 15)], alpha=0.05)
    daily = z[:, 23::24]
    rate = np.mean(np.any(daily >= np.array(b.z), axis=1))
    assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 40_000), rate
    hourly_bounds = np.repeat(np.array(b.z), 24)
    hourly = np.mean(np.any(z >= hourly_bounds, axis=1))
    assert hourly > 0.05 + 3 * np.sqrt(0.05 * 0.95 / 40_000), hourly


def test_bad_designs_are_refused() -> None:
    with pytest.raises(InvalidSpecification, match="increasing"):
        boundaries([0.5, 0.5, 1.0])
    with pytest.raises(InvalidSpecification, match="unknown spending function"):
        boundaries([1.0], spending_function="haybittle")
    with pytest.raises(InvalidSpecification, match="alpha"):
        boundaries([1.0], alpha=1.5)
