"""splitwatch's statistics engine: KPI significance from per-arm sufficient statistics.

Usable on its own, on aggregates from any warehouse::

    from splitwatch.stats import SampleStats, MetricDefinition, analyze

Names are imported lazily (PEP 562), so that ``splitwatch.stats.metric`` (used by the proxy's config) does
not pull in scipy and statsmodels.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BayesianSummary": "bayesian", "summarise": "bayesian",
    "Effect": "comparison", "compare": "comparison", "compare_proportions": "comparison",
    "wilson_interval": "comparison", "newcombe_interval": "comparison",
    "AnalysisOptions": "engine", "ArmValue": "engine", "ExperimentResult": "engine", "MetricResult": "engine",
    "analyze": "engine", "check_srm": "engine",
    "InvalidSpecification": "errors", "InvalidStatistics": "errors", "StatsError": "errors",
    "ArmEstimate": "estimates", "cuped_estimates": "estimates", "cuped_theta": "estimates",
    "GuardrailResult": "guardrails", "GuardrailSpec": "guardrails", "check_guardrail": "guardrails",
    "MetricDefinition": "metric", "ROLES": "metric",
    "adjust_p_values": "multiple_testing",
    "duration": "power", "mde_means": "power", "mde_proportions": "power", "power_means": "power",
    "sample_size_means": "power", "sample_size_proportions": "power", "units_to_reach": "power",
    "MomentStats": "regression", "regression_adjusted": "regression",
    "clustered_quantile_stats": "quantile", "quantile_design_effect": "quantile", "quantile_stats": "quantile",
    "compare_sequential": "sequential", "one_sided_halfwidth": "sequential",
    "SRMResult": "srm", "srm_arm_counts": "srm", "srm_checks": "srm", "srm_chi_square": "srm",
    "srm_sequential": "srm",
    "Reason": "verdict", "StateInForce": "verdict", "Verdict": "verdict", "decide": "verdict",
    "json_safe": "verdict", "with_state": "verdict", "SegmentFinding": "verdict_rules",
    "Heterogeneity": "segments", "heterogeneity": "segments", "agreeing_interval": "segments",
    "QuantileStats": "statistics", "RatioStats": "statistics", "RegressionStats": "statistics",
    "SampleStats": "statistics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
