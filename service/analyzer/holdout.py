"""The long-term holdout in a report: its users against everyone exposed, and whether it got its share
(docs/holdout.md).

The holdout's users are those the proxy kept on the control of every experiment (their exposures carry
``holdout: true``); "everyone exposed" is the experiment's own units, all arms together, as they were
served. Both are read through the same statements as the experiment's analysis, with ``units`` made of
the two groups (arms ``(holdout)`` and ``(exposed)``): every configured metric, no CUPED, the holdout as
the control. Its sample ratio check compares the two groups' units, among those first exposed while the
holdout held, with the configured share.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from splitwatch.stats import AnalysisOptions, ExperimentResult, SRMResult, analyze, srm_chi_square

from ..config import AnalyzerConfig, ExperimentConfig, HoldoutConfig
from .kpi_queries import HOLDOUT_ARM, ExperimentData, restrict_to_units, units_regrouped
from .metric_statements import metric_stats

EXPOSED_ARM = "(exposed)"


@dataclass
class HoldoutComparison:
    """The holdout's configuration, its units and everyone exposed's in the period, the SRM check, and the
    metrics compared (``result``: the holdout is the control)."""

    config: HoldoutConfig
    units: dict[str, int] = field(default_factory=dict)  # (holdout), (exposed)
    srm: SRMResult | None = None
    result: ExperimentResult | None = None
    why: str = ""  # why nothing was compared


def compare_holdout(con: Any, data: ExperimentData, exp: ExperimentConfig, cfg: AnalyzerConfig,
                    holdout: HoldoutConfig | None, options: AnalysisOptions, start: datetime,
                    end: datetime) -> HoldoutComparison | None:
    """Return the holdout's comparison for the period [start, end), or None without a holdout overlapping it."""
    if holdout is None or holdout.end <= start or holdout.start >= end:
        return None
    out = HoldoutComparison(holdout)
    out.units = {HOLDOUT_ARM: data.holdout_units, EXPOSED_ARM: sum(data.units.values())}
    # the share holds among the units first exposed while the holdout did (applied after coverage)
    exposed_in = con.execute("SELECT count(*) FROM units WHERE first_ts >= ? AND first_ts < ?",
                             [holdout.start, holdout.end]).fetchone()[0]
    held = data.holdout_units
    if held + exposed_in >= 2:
        out.srm = srm_chi_square({HOLDOUT_ARM: held, EXPOSED_ARM: int(exposed_in)},
                                 {HOLDOUT_ARM: holdout.share, EXPOSED_ARM: 1 - holdout.share}, options.srm_alpha)
    metrics = [m for m in data.metrics if m.name in {c.name for c in exp.metrics}]
    if held < 2 or not data.units or not metrics:
        out.why = "no holdout users in the period" if held < 2 else "no configured metric to compare"
        return out
    stats: dict[str, dict[str, Any]] = {HOLDOUT_ARM: {}, EXPOSED_ARM: {}}
    compared = []
    try:
        with units_regrouped(con):
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE units AS
                SELECT unit_id, '{EXPOSED_ARM}' AS arm, first_ts, requests, day FROM units_base
                UNION ALL SELECT unit_id, '{HOLDOUT_ARM}' AS arm, first_ts, requests, day FROM holdout_units""")
            restrict_to_units(con)
            for m in metrics:
                per_arm = metric_stats(con, m, {})
                if all(a in per_arm for a in stats):
                    compared.append(m)
                    for a in stats:
                        stats[a][m.name] = per_arm[a]
    finally:
        restrict_to_units(con)  # the period's outcomes and responses again
    if compared:
        out.result = analyze(compared, stats, HOLDOUT_ARM, options=replace(options, group=None, earlier_looks=()))
    else:
        out.why = "no metric has data in both groups"
    return out
