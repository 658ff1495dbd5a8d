"""The one entry point: metric definitions and per-arm statistics in, a typed result per metric and arm out.

    result = analyze(metrics, {"base": {...}, "finetuned": {...}}, control="base",
                     weights={"base": 50, "finetuned": 50}, units={"base": 5012, "finetuned": 4988})

Statistics per metric kind: binary -> SampleStats (0/1 values) or RegressionStats (CUPED);
continuous -> SampleStats or RegressionStats; ratio -> RatioStats; quantile -> QuantileStats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from .bayesian import BayesianSummary, summarise
from .comparison import Effect, compare, compare_proportions
from .errors import InvalidSpecification, InvalidStatistics
from .estimates import (
    ArmEstimate,
    binary_estimate,
    cuped_estimates,
    mean_estimate,
    quantile_estimate,
    ratio_estimate,
)
from .guardrails import GuardrailResult, check_guardrail
from .metric import MetricDefinition
from .multiple_testing import adjust_p_values
from .sequential import DEFAULT_N_STAR, compare_sequential
from .srm import DEFAULT_SRM_ALPHA, SRMResult, srm_chi_square, srm_sequential
from .statistics import QuantileStats, RatioStats, RegressionStats, SampleStats

Stats = SampleStats | RatioStats | RegressionStats | QuantileStats
Decision = Literal["better", "worse", "inconclusive", "guardrail_breached"]


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse: significance level, multiple-testing correction, sequential testing, SRM."""

    alpha: float = 0.05
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    sequential: bool = False
    n_star: int = DEFAULT_N_STAR
    srm_alpha: float = DEFAULT_SRM_ALPHA
    srm_sequential: bool = False


@dataclass(frozen=True)
class ArmValue:
    """One arm's estimate of a metric."""

    arm: str
    n: int
    estimate: float
    se: float


@dataclass(frozen=True)
class MetricResult:
    """One metric, one treatment arm against the control."""

    metric: str
    kind: str
    arm: str
    control: ArmValue
    treatment: ArmValue
    effect: Effect
    p_value_adjusted: float
    bayesian: BayesianSummary
    guardrail: GuardrailResult | None
    decision: Decision

    @property
    def method(self) -> str:
        """Return how the effect and p-value were computed."""
        return self.effect.method


@dataclass(frozen=True)
class ExperimentResult:
    """Every metric and arm, and the sample ratio check."""

    results: list[MetricResult]
    srm: SRMResult | None
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be tested

    def get(self, metric: str, arm: str) -> MetricResult:
        """Return the result of ``metric`` for treatment ``arm``."""
        for r in self.results:
            if r.metric == metric and r.arm == arm:
                return r
        raise KeyError((metric, arm))


def _estimates(metric: MetricDefinition, per_arm: Mapping[str, Stats]) -> dict[str, ArmEstimate]:
    values = list(per_arm.values())
    if all(isinstance(s, RegressionStats) for s in values):
        if metric.kind not in ("binary", "continuous"):
            raise InvalidSpecification(f"metric {metric.name!r}: CUPED applies to binary and continuous metrics")
        return cuped_estimates(per_arm)  # type: ignore[arg-type]
    expected = {"binary": SampleStats, "continuous": SampleStats, "ratio": RatioStats,
                "quantile": QuantileStats}[metric.kind]
    for arm, s in per_arm.items():
        if not isinstance(s, expected):
            raise InvalidSpecification(f"metric {metric.name!r} ({metric.kind}), arm {arm!r}: expected "
                                       f"{expected.__name__}, got {type(s).__name__}")
    fn = {"binary": binary_estimate, "continuous": mean_estimate, "ratio": ratio_estimate,
          "quantile": quantile_estimate}[metric.kind]
    return {arm: fn(s) for arm, s in per_arm.items()}  # type: ignore[operator]


def _effect(metric: MetricDefinition, c: ArmEstimate, t: ArmEstimate, sc: Stats, stt: Stats,
            options: AnalysisOptions) -> Effect:
    effect = _plain_effect(metric, c, t, sc, stt, options)
    if (isinstance(sc, QuantileStats) and isinstance(stt, QuantileStats)
            and max(sc.design_effect, stt.design_effect) >= 1.005):
        # say that the interval was widened for observations clustered in units, and by how much
        return replace(effect, method=f"{effect.method}; design_effect={sc.design_effect:.2f}/"
                                      f"{stt.design_effect:.2f}")
    return effect


def _plain_effect(metric: MetricDefinition, c: ArmEstimate, t: ArmEstimate, sc: Stats, stt: Stats,
                  options: AnalysisOptions) -> Effect:
    if options.sequential:
        return compare_sequential(c, t, options.alpha, options.n_star)
    if metric.kind == "binary" and isinstance(sc, SampleStats) and isinstance(stt, SampleStats):
        return compare_proportions(sc, stt, options.alpha)
    if c.df is not None and t.df is not None and not isinstance(sc, RegressionStats):
        return compare(c, t, options.alpha, "welch")
    return compare(c, t, options.alpha, "z")


def _decision(effect_good: float, p: float, alpha: float, guardrail: GuardrailResult | None) -> Decision:
    if guardrail is not None and guardrail.status == "breached":
        return "guardrail_breached"
    if p < alpha:
        return "better" if effect_good > 0 else "worse"
    return "inconclusive"


def analyze(metrics: Sequence[MetricDefinition], arm_stats: Mapping[str, Mapping[str, Stats]], control: str,
            weights: Mapping[str, float] | None = None, units: Mapping[str, int] | None = None,
            options: AnalysisOptions | None = None) -> ExperimentResult:
    """Return the result of every metric for every treatment arm against ``control``, and the SRM check.

    A metric whose statistics allow no test (zero variance in both arms, too few units) is left
    out of ``results`` and listed in ``skipped`` with the reason.

    p-values of the non-guardrail comparisons are adjusted together (``options.correction``)
    across metrics and arms; guardrails are judged uncorrected, so that harm is not hidden.
    """
    options = options or AnalysisOptions()
    if control not in arm_stats:
        raise InvalidSpecification(f"control arm {control!r} has no statistics; arms: {sorted(arm_stats)}")
    treatments = [a for a in arm_stats if a != control]
    if not treatments:
        raise InvalidSpecification("need at least one treatment arm besides the control")
    pending = []
    skipped: dict[str, str] = {}
    for metric in metrics:
        per_arm = {}
        for arm in arm_stats:
            if metric.name not in arm_stats[arm]:
                raise InvalidSpecification(f"arm {arm!r} has no statistics for metric {metric.name!r}")
            per_arm[arm] = arm_stats[arm][metric.name]
        # Degenerate data (every value equal, too few units) makes one metric untestable: it is
        # reported with the reason, and the other metrics are still analysed.
        try:
            est = _estimates(metric, per_arm)
            effects = [(arm, _effect(metric, est[control], est[arm], per_arm[control], per_arm[arm], options))
                       for arm in treatments]
        except InvalidStatistics as exc:
            skipped[metric.name] = str(exc)
            continue
        pending.extend((metric, arm, est[control], est[arm], eff) for arm, eff in effects)
    primary = [i for i, (m, *_rest) in enumerate(pending) if not m.guardrail]
    adjusted = dict(zip(primary, adjust_p_values([pending[i][4].p_value for i in primary], options.correction),
                        strict=True))
    results = []
    for i, (metric, arm, c, t, eff) in enumerate(pending):
        guard = None
        if metric.guardrail:
            guard = check_guardrail(eff, metric.direction, metric.margin or 0.0, options.alpha,
                                    relative=metric.relative_margin)
        p_adj = adjusted.get(i, eff.p_value)
        good = eff.absolute if metric.direction == "increase" else -eff.absolute
        results.append(MetricResult(
            metric.name, metric.kind, arm, ArmValue(control, c.n, c.mean, c.se), ArmValue(arm, t.n, t.mean, t.se),
            eff, p_adj, summarise(c, t, metric.direction, options.alpha), guard,
            _decision(good, p_adj, options.alpha, guard)))
    srm = None
    if units is not None and weights is not None:
        test = srm_sequential if options.srm_sequential else srm_chi_square
        srm = test(units, weights, options.srm_alpha)
    return ExperimentResult(results, srm, options, skipped)
