"""Interactions between concurrent experiments: does this experiment's effect depend on the arm its users
have in another one? (docs/holdout.md, "Interactions")

For every other experiment of the config with events in the lake, the units of this report's period
that the other experiment also took (its current phase, non-forced, one arm) are grouped by their arm
in each: each primary metric's statistics per (arm, other arm) come from the same statements as the
report's (``units`` with the other arm as its ``seg`` column; no CUPED), and
:func:`splitwatch.stats.interaction.interaction_test` tests the arm x other-arm interaction. The
p-values of all primaries and other experiments are corrected together (``analyzer.correction``): a
report warns about a pair at most at alpha when the experiments are independent. Each report tests its
own primaries, so both reports of a pair warn when both measure the metric the interaction is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitwatch.stats import AnalysisOptions, adjust_p_values
from splitwatch.stats.interaction import interaction_test

from ..config import Config, ExperimentConfig
from .kpi_queries import ExperimentData, units_regrouped
from .lake import Lake
from .metric_statements import metric_stats


@dataclass(frozen=True)
class InteractionResult:
    """The interaction of this experiment's arms with another experiment's, on one primary metric."""

    other: str
    metric: str
    units: int  # the period's units the other experiment also took
    statistic: float
    df: int
    p_value: float
    p_adjusted: float
    contrasts: dict[tuple[str, str], float] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """Return True when the interaction is significant after the correction."""
        return self.p_adjusted < self.alpha


def _other_arms(con: Any, lake: Lake, other: ExperimentConfig) -> None:
    """Build ``other_arm``: each unit's arm in the other experiment's current phase (one arm only)."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE other_arm AS
        SELECT unit_id, min(arm) AS arm FROM read_parquet(?, union_by_name = true)
        WHERE type = 'exposure' AND phase = ? AND NOT coalesce(forced, FALSE) AND unit_id IS NOT NULL
        GROUP BY unit_id HAVING count(DISTINCT arm) = 1""", [lake.glob(other.key), other.phase])


def interactions(con: Any, data: ExperimentData, exp: ExperimentConfig, cfg: Config, lake: Lake,
                 options: AnalysisOptions) -> list[InteractionResult]:
    """Return the interaction tests of ``exp``'s primary metrics with every other experiment that took some
    of the period's units (none without a primary or another experiment)."""
    primaries = [m for m in data.metrics if m.role == "primary" and m.kind != "quantile"]
    others = [o for o in cfg.experiments if o.key != exp.key and lake.has_files(o.key)]
    if not primaries or not others or not data.units:
        return []
    raw: list[tuple[str, str, int, Any]] = []
    with units_regrouped(con):
        for other in others:
            _other_arms(con, lake, other)
            con.execute("""
                CREATE OR REPLACE TEMP TABLE units AS
                SELECT u.unit_id, u.arm, u.first_ts, u.requests, u.day, o.arm AS seg
                FROM units_base u JOIN other_arm o ON o.unit_id = u.unit_id""")
            both = con.execute("SELECT count(*) FROM units").fetchone()[0]
            if both < 4:
                continue
            for m in primaries:
                cells = metric_stats(con, m, {}, by="seg")
                test = interaction_test(cells, exp.arm_names, other.arm_names)  # type: ignore[arg-type]
                if test is not None:
                    raw.append((other.key, m.name, int(both), test))
    adjusted = adjust_p_values([t.p_value for *_, t in raw], options.correction)
    return [InteractionResult(other, metric, both, t.statistic, t.df, t.p_value, p_adj, t.contrasts, options.alpha)
            for (other, metric, both, t), p_adj in zip(raw, adjusted, strict=True)]
