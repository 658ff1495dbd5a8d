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
from .group_sequential import GroupDesign, compare_group
from .guardrails import DEFAULT_MIN_UNITS, GuardrailResult, GuardrailSpec, check_guardrail
from .metric import MetricDefinition
from .multiple_testing import adjust_p_values
from .regression import MomentStats, regression_adjusted
from .sequential import DEFAULT_N_STAR, compare_sequential
from .srm import DEFAULT_SRM_ALPHA, SRMResult, srm_checks
from .statistics import QuantileStats, RatioStats, RegressionStats, SampleStats

Stats = SampleStats | RatioStats | RegressionStats | QuantileStats | MomentStats
Decision = Literal["better", "worse", "inconclusive"]


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse: significance, correction, scale, sequential testing, guardrails, SRM, minimum sample."""

    alpha: float = 0.05
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    sequential: bool = False
    n_star: int = DEFAULT_N_STAR
    srm_alpha: float = DEFAULT_SRM_ALPHA
    srm_sequential: bool = False  # which SRM test is the headline ``srm`` (both are in ``srm_tests``)
    decision_scale: Literal["absolute", "relative"] = "absolute"  # which p-value decides
    guardrail_alpha: float = 0.05  # level of each one-sided guardrail bound (0.05: a 90% interval)
    min_units_per_arm: int = DEFAULT_MIN_UNITS  # below it, no guardrail is non-inferior and nothing ships
    # sequential with a group design: repeated p-values and intervals at planned looks (stats.group_sequential)
    # instead of the normal mixture; ``earlier_looks``: the units (all arms) at the looks already taken
    group: GroupDesign | None = None
    earlier_looks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("alpha", "guardrail_alpha", "srm_alpha"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise InvalidSpecification(f"{name} must be in (0, 1), got {v!r}")
        if self.min_units_per_arm < 2:
            raise InvalidSpecification("min_units_per_arm must be >= 2")


@dataclass(frozen=True)
class ArmValue:
    """One arm's estimate of a metric."""

    arm: str
    n: int
    estimate: float
    se: float


@dataclass(frozen=True)
class MetricResult:
    """One metric, one treatment arm against the control.

    ``p_value`` is the deciding scale's (``options.decision_scale``); ``p_value_adjusted`` is it
    after the correction of the metric's role family (primaries together, secondaries together;
    guardrails and diagnostics are not adjusted). ``decision`` reads the adjusted p-value.
    """

    metric: str
    kind: str
    role: str
    arm: str
    control: ArmValue
    treatment: ArmValue
    effect: Effect
    p_value: float
    p_value_adjusted: float
    bayesian: BayesianSummary
    guardrail: GuardrailResult | None
    decision: Decision
    # CUPED: 1 - var(adjusted effect) / var(unadjusted effect); None when not adjusted
    variance_reduction: float | None = None

    @property
    def method(self) -> str:
        """Return how the effect and p-value were computed."""
        return self.effect.method


@dataclass(frozen=True)
class ExperimentResult:
    """Every metric and arm, and the sample ratio checks."""

    results: list[MetricResult]
    srm: SRMResult | None  # the headline SRM test (sequential or chi-square, per the options)
    options: AnalysisOptions = field(default_factory=AnalysisOptions)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be tested
    srm_tests: tuple[SRMResult, ...] = ()  # chi-square, sequential, arm counts

    def get(self, metric: str, arm: str) -> MetricResult:
        """Return the result of ``metric`` for treatment ``arm``."""
        for r in self.results:
            if r.metric == metric and r.arm == arm:
                return r
        raise KeyError((metric, arm))

    @property
    def srm_mismatch(self) -> bool:
        """Return True when any SRM check failed."""
        return any(t.mismatch for t in self.srm_tests) or (self.srm is not None and self.srm.mismatch)


def _estimates(metric: MetricDefinition, per_arm: Mapping[str, Stats]
               ) -> tuple[dict[str, ArmEstimate], dict[str, ArmEstimate] | None]:
    """Return each arm's estimate, and the unadjusted estimates when a regression adjustment was made."""
    values = list(per_arm.values())
    if all(isinstance(s, MomentStats) for s in values):
        if metric.kind not in ("binary", "continuous", "ratio"):
            raise InvalidSpecification(f"metric {metric.name!r}: regression adjustment applies to binary, "
                                       "continuous and ratio metrics")
        if any(s.ratio != (metric.kind == "ratio") for s in values):  # type: ignore[union-attr]
            raise InvalidSpecification(f"metric {metric.name!r}: moment statistics of the wrong layout")
        adj = regression_adjusted(per_arm)  # type: ignore[arg-type]
        return adj.adjusted, adj.unadjusted
    return _plain_estimates(metric, per_arm), None


def _plain_estimates(metric: MetricDefinition, per_arm: Mapping[str, Stats]) -> dict[str, ArmEstimate]:
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
            options: AnalysisOptions, look_units: int) -> Effect:
    effect = _plain_effect(metric, c, t, sc, stt, options, look_units)
    if (isinstance(sc, QuantileStats) and isinstance(stt, QuantileStats)
            and max(sc.design_effect, stt.design_effect) >= 1.005):
        # say that the interval was widened for observations clustered in units, and by how much
        return replace(effect, method=f"{effect.method}; design_effect={sc.design_effect:.2f}/"
                                      f"{stt.design_effect:.2f}")
    return effect


def _binary_view(metric: MetricDefinition, sc: Stats, stt: Stats) -> tuple[SampleStats, SampleStats] | None:
    """Return the statistics as 0/1 counts when they are: a binary metric, or a ratio with no event at all.

    A ratio of events per request (``error_rate``) with no event in either arm has no delta-method
    variance, yet 0 errors in 10,000 requests is evidence: read as 0 successes out of the
    denominator's total, Newcombe's interval bounds the harm honestly (with no event there is no
    clustering to account for).
    """
    if metric.kind == "binary" and isinstance(sc, SampleStats) and isinstance(stt, SampleStats):
        return sc, stt
    if (metric.kind == "ratio" and isinstance(sc, RatioStats) and isinstance(stt, RatioStats)
            and sc.num_sum == 0 and stt.num_sum == 0 and sc.num_sum_squares == 0 and stt.num_sum_squares == 0
            and all(float(s.den_sum).is_integer() and s.den_sum >= 1 for s in (sc, stt))):
        return SampleStats.binary(int(sc.den_sum), 0), SampleStats.binary(int(stt.den_sum), 0)
    return None


def _plain_effect(metric: MetricDefinition, c: ArmEstimate, t: ArmEstimate, sc: Stats, stt: Stats,
                  options: AnalysisOptions, look_units: int) -> Effect:
    counts = _binary_view(metric, sc, stt)
    if counts is not None and c.variance + t.variance == 0:
        return compare_proportions(*counts, alpha=options.alpha)  # no test: p = 1, Newcombe's interval
    if options.sequential and options.group is not None:
        return compare_group(c, t, options.group, look_units, options.alpha, options.earlier_looks)
    if options.sequential:
        return compare_sequential(c, t, options.alpha, options.n_star)
    if counts is not None:
        return compare_proportions(*counts, alpha=options.alpha)
    if c.df is not None and t.df is not None and not isinstance(sc, RegressionStats):
        return compare(c, t, options.alpha, "welch")
    return compare(c, t, options.alpha, "z")


def _deciding_p(effect: Effect, scale: str) -> float:
    """Return the p-value on the deciding scale (absolute or relative)."""
    if scale == "absolute":
        return effect.p_value
    if effect.relative_p_value is None:
        raise InvalidStatistics("the control's value is 0: no relative effect to decide on")
    return effect.relative_p_value


def _decision(effect_good: float, p: float, alpha: float) -> Decision:
    if p < alpha:
        return "better" if effect_good > 0 else "worse"
    return "inconclusive"


def check_srm(units: Mapping[str, int], weights: Mapping[str, float], options: AnalysisOptions
              ) -> tuple[SRMResult | None, tuple[SRMResult, ...]]:
    """Return the headline SRM test and all three checks (chi-square, sequential, arm counts)."""
    tests = srm_checks(units, weights, options.srm_alpha)
    return (tests[1] if options.srm_sequential else tests[0]), tests


@dataclass(frozen=True)
class _Comparison:
    """One metric, one treatment arm: the estimates compared, the effect, and the arms' shown values."""

    metric: MetricDefinition
    arm: str
    control: ArmEstimate  # as compared (CUPED-adjusted where it applies)
    treatment: ArmEstimate
    effect: Effect
    p_value: float  # on the deciding scale, before correction
    variance_reduction: float | None
    control_shown: ArmEstimate  # the arms' own (unadjusted) values
    treatment_shown: ArmEstimate


def _compare_metric(metric: MetricDefinition, per_arm: Mapping[str, Stats], control: str,
                    treatments: Sequence[str], options: AnalysisOptions, look_units: int) -> list[_Comparison]:
    """Return one metric's comparison for every treatment arm (raises InvalidStatistics when untestable)."""
    est, plain = _estimates(metric, per_arm)
    shown = plain or est  # arms show their own (unadjusted) values; the effect is adjusted
    rows = []
    for arm in treatments:
        eff = _effect(metric, est[control], est[arm], per_arm[control], per_arm[arm], options,
                      look_units or est[control].n + est[arm].n)
        reduction = None
        if plain is not None:
            before = plain[control].variance + plain[arm].variance
            reduction = 1 - (est[control].variance + est[arm].variance) / before if before > 0 else None
        rows.append(_Comparison(metric, arm, est[control], est[arm], eff, _deciding_p(eff, options.decision_scale),
                                reduction, shown[control], shown[arm]))
    return rows


def _adjusted(pending: Sequence[_Comparison], correction: str) -> dict[int, float]:
    """Return the corrected p-values by position: primaries x arms together, secondaries x arms together."""
    adjusted: dict[int, float] = {}
    for role in ("primary", "secondary"):
        family = [i for i, row in enumerate(pending) if row.metric.role == role]
        adjusted.update(zip(family, adjust_p_values([pending[i].p_value for i in family], correction),
                            strict=True))
    return adjusted


def _guardrail(row: _Comparison, per_arm: Mapping[str, Stats], control: str, options: AnalysisOptions,
               look_units: int) -> GuardrailResult | None:
    """Return a guardrail metric's non-inferiority result (None for other roles)."""
    metric, c, t = row.metric, row.control, row.treatment
    if not metric.guardrail:
        return None
    group_z = (options.group.bound(look_units or c.n + t.n, options.guardrail_alpha, options.earlier_looks)
               if options.sequential and options.group is not None else None)
    spec = GuardrailSpec(metric.direction, metric.margin or 0.0, metric.relative_margin,
                         options.guardrail_alpha, options.sequential, options.n_star,
                         options.min_units_per_arm, group_z)
    counts = _binary_view(metric, per_arm[control], per_arm[row.arm])
    return check_guardrail(spec, row.effect, c, t, *(counts or (None, None)), binary=counts is not None)


def _result(row: _Comparison, p_adj: float, guard: GuardrailResult | None, control: str,
            options: AnalysisOptions) -> MetricResult:
    metric, eff = row.metric, row.effect
    point = eff.absolute if options.decision_scale == "absolute" else (eff.relative or 0.0)
    good = point if metric.direction == "increase" else -point
    return MetricResult(
        metric.name, metric.kind, metric.role, row.arm,
        ArmValue(control, row.control.n, row.control_shown.mean, row.control_shown.se),
        ArmValue(row.arm, row.treatment.n, row.treatment_shown.mean, row.treatment_shown.se), eff, row.p_value,
        p_adj, summarise(row.control, row.treatment, metric.direction, options.alpha),
        guard, _decision(good, p_adj, options.alpha), row.variance_reduction)


def analyze(metrics: Sequence[MetricDefinition], arm_stats: Mapping[str, Mapping[str, Stats]], control: str,
            weights: Mapping[str, float] | None = None, units: Mapping[str, int] | None = None,
            options: AnalysisOptions | None = None) -> ExperimentResult:
    """Return the result of every metric for every treatment arm against ``control``, and the SRM checks.

    A metric whose statistics allow no test (zero variance in both arms, too few units) is left
    out of ``results`` and listed in ``skipped`` with the reason.

    Correction families follow the roles: primaries x treatment arms are adjusted together
    (``options.correction``), secondaries x arms together; guardrails (judged by their own
    non-inferiority bounds, so that harm is not hidden) and diagnostics are not adjusted.
    """
    options = options or AnalysisOptions()
    if control not in arm_stats:
        raise InvalidSpecification(f"control arm {control!r} has no statistics; arms: {sorted(arm_stats)}")
    treatments = [a for a in arm_stats if a != control]
    if not treatments:
        raise InvalidSpecification("need at least one treatment arm besides the control")
    pending: list[_Comparison] = []
    skipped: dict[str, str] = {}
    # a group design's information fraction is the experiment's, shared by its metrics: units at this look
    look_units = sum(units.values()) if units else 0
    for metric in metrics:
        missing = [arm for arm in arm_stats if metric.name not in arm_stats[arm]]
        if missing:
            raise InvalidSpecification(f"arm {missing[0]!r} has no statistics for metric {metric.name!r}")
        per_arm = {arm: arm_stats[arm][metric.name] for arm in arm_stats}
        # Degenerate data (every value equal, too few units) makes one metric untestable: it is
        # reported with the reason, and the other metrics are still analysed.
        try:
            pending.extend(_compare_metric(metric, per_arm, control, treatments, options, look_units))
        except InvalidStatistics as exc:
            skipped[metric.name] = str(exc)
    adjusted = _adjusted(pending, options.correction)
    results = [_result(row, adjusted.get(i, row.p_value),
                       _guardrail(row, {a: arm_stats[a][row.metric.name] for a in arm_stats}, control, options,
                                  look_units), control, options)
               for i, row in enumerate(pending)]
    srm, srm_tests = (None, ())
    if units is not None and weights is not None:
        srm, srm_tests = check_srm(units, weights, options)
    return ExperimentResult(results, srm, options, skipped, srm_tests)
