"""Seeded simulations of the interaction warning between two concurrent experiments (docs/holdout.md,
"Interactions"; ``tests/test_interactions.py`` runs them small, ``bench/interaction_aa.py`` large).

Each simulated pair: ``units`` users, each assigned to both experiments independently (50/50, as two
salts do), two binary primaries (30% and 60% base rates) with main effects of both experiments, and an
``interaction`` added to the first metric for users on both treatments. Cells go through
:func:`splitwatch.stats.interaction.interaction_test` and the report's Holm correction over the
primaries; the warning rate is the share of pairs the report would warn about.
"""

from __future__ import annotations

import numpy as np

from splitwatch.stats import SampleStats, adjust_p_values
from splitwatch.stats.interaction import interaction_test

ARMS = ["control", "treatment"]


def warning_rate(experiments: int, units: int = 4000, interaction: float = 0.0, alpha: float = 0.05,
                 seed: int = 20261207) -> float:
    """Return the share of simulated pairs whose report would warn of an interaction."""
    rng = np.random.default_rng(seed)
    warned = 0
    for _ in range(experiments):
        a, b = rng.integers(0, 2, units), rng.integers(0, 2, units)
        p_values = []
        for base, effect_a, effect_b, inter in ((0.3, 0.03, 0.02, interaction), (0.6, -0.02, 0.04, 0.0)):
            y = (rng.random(units) < base + effect_a * a + effect_b * b + inter * a * b).astype(float)
            cells = {}
            for i, arm in enumerate(ARMS):
                for j, other in enumerate(ARMS):
                    v = y[(a == i) & (b == j)]
                    cells[(arm, other)] = SampleStats(len(v), float(v.sum()), float((v * v).sum()))
            test = interaction_test(cells, ARMS, ARMS)
            if test is not None:
                p_values.append(test.p_value)
        warned += any(p < alpha for p in adjust_p_values(p_values, "holm"))
    return warned / experiments
