"""A seeded A/A simulation of results by segment: how often a correction scope lets a false segment
finding through (docs/stats.md, "Segments"; ``tests/test_segments.py`` runs it small,
``bench/segment_aa.py`` large).

Each simulated experiment has ``units_per_arm`` users per arm and no effect at all. Every user has a
country (one of 20, uniform) and a plan (one of 4): two dimensions over the same users, as in a report.
Two metrics: a binary primary (30% base rate) and a continuous guardrail (N(10, 3), margin 0.3). The
segments go through the report's own code: the statistics engine per segment, then
:func:`splitwatch.service.analyzer.segments.correct` under each scope. A false finding is what the report
would name: a segment whose primary is better or worse after the correction, or whose guardrail is
breached.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from splitwatch.stats import AnalysisOptions, MetricDefinition, SampleStats
from splitwatch.stats.segments import family_key

from ..analyzer.segments import SegmentAnalysis, correct, segment_results

DIMENSIONS = {"country": 20, "plan": 4}
METRICS = [MetricDefinition(name="converted", kind="binary", role="primary"),
           MetricDefinition(name="handle_time", kind="continuous", direction="decrease", role="guardrail",
                            margin=0.3)]
ARMS = ["control", "treatment"]


@dataclass(frozen=True)
class ScopeRate:
    """False findings under one scope (and correction method): the share of its families with at least one,
    and the share of experiments with at least one anywhere."""

    scope: str
    method: str
    families: int  # per experiment
    family_rate: float
    report_rate: float


def _segments(rng: np.random.Generator, units_per_arm: int, options: AnalysisOptions) -> SegmentAnalysis:
    """Return one A/A experiment's uncorrected segment results."""
    out = SegmentAnalysis(list(DIMENSIONS), "global", "none", options.alpha, options.guardrail_alpha,
                          options.decision_scale, False)
    data = {arm: (rng.random(units_per_arm) < 0.3, rng.normal(10, 3, units_per_arm),
                  {d: rng.integers(0, k, units_per_arm) for d, k in DIMENSIONS.items()}) for arm in ARMS}
    for dim, k in DIMENSIONS.items():
        stats: dict[str, dict[tuple[str, str], SampleStats]] = {m.name: {} for m in METRICS}
        counts: dict[str, dict[str, int]] = {}
        for arm, (conv, time, segs) in data.items():
            seg = segs[dim]
            n = np.bincount(seg, minlength=k)
            for name, y in (("converted", conv.astype(float)), ("handle_time", time)):
                s, ss = np.bincount(seg, y, minlength=k), np.bincount(seg, y * y, minlength=k)
                for v in range(k):
                    stats[name][(arm, str(v))] = SampleStats(int(n[v]), float(s[v]), float(ss[v]))
            for v in range(k):
                counts.setdefault(str(v), {})[arm] = int(n[v])
        for value, per_arm in counts.items():
            out.results += segment_results(dim, value, per_arm, METRICS, stats, ARMS, "control", options, 30)
    return out


def _families(out: SegmentAnalysis) -> dict[object, bool]:
    """Return, per family of the corrected analysis's scope, whether it has a false finding."""
    found: dict[object, bool] = {}
    for r in out.results:
        key = family_key(out.scope, r.dimension, r.metric)  # type: ignore[arg-type]
        hit = r.breached or r.decision in ("better", "worse")
        found[key] = found.get(key, False) or hit
    return found


def simulate_aa(experiments: int, units_per_arm: int = 3000, seed: int = 20261206,
                settings: tuple[tuple[str, str], ...] = (("per_dimension", "holm"), ("per_metric", "holm"),
                                                         ("global", "holm"), ("global", "none"))
                ) -> list[ScopeRate]:
    """Return the false-finding rates of each (scope, method) over ``experiments`` seeded A/A experiments."""
    rng = np.random.default_rng(seed)
    options = AnalysisOptions(alpha=0.05, correction="none", sequential=False)
    hits = {s: [0, 0, 0] for s in settings}  # families with a finding, families, experiments with one
    for _ in range(experiments):
        raw = _segments(rng, units_per_arm, options)
        for scope, method in settings:
            out = replace(raw, scope=scope, method=method, results=list(raw.results))
            correct(out)
            fam = _families(out)
            h = hits[(scope, method)]
            h[0] += sum(fam.values())
            h[1] += len(fam)
            h[2] += any(fam.values())
    return [ScopeRate(scope, method, h[1] // experiments, h[0] / h[1], h[2] / experiments)
            for (scope, method), h in hits.items()]
