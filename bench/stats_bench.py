"""Time to analyse 1,000 metric-arm comparisons with stats.analyze (target: under 1 s on one core).

100 experiments x 10 metrics (binary, continuous, ratio, CUPED-adjusted continuous, quantile)
x 1 treatment arm = 1,000 comparisons, fixed-horizon and sequential, plus SRM per experiment.
Usage: python bench/stats_bench.py
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.stats import (
    AnalysisOptions,
    MetricDefinition,
    QuantileStats,
    RatioStats,
    RegressionStats,
    SampleStats,
    analyze,
)

KINDS = ["binary", "continuous", "ratio", "cuped", "quantile"]


def make_inputs(rng: np.random.Generator) -> tuple[list[MetricDefinition], dict]:
    """Return 10 metric definitions and per-arm statistics, as a warehouse query would (no raw data)."""
    metrics, arms = [], {"base": {}, "finetuned": {}}
    for i in range(10):
        kind = KINDS[i % len(KINDS)]
        name = f"m{i}_{kind}"
        metrics.append(MetricDefinition(name=name, kind="continuous" if kind == "cuped" else kind,
                                        direction="increase", role="guardrail" if i == 9 else "primary",
                                        margin=0.01 if i == 9 else None,
                                        quantile=0.95 if kind == "quantile" else None))
        for arm in arms:
            n = int(rng.integers(5_000, 50_000))
            if kind == "binary":
                arms[arm][name] = SampleStats.binary(n, int(n * rng.uniform(0.2, 0.4)))
            elif kind == "continuous":
                m, v = rng.uniform(3, 4), rng.uniform(0.5, 1.5)
                arms[arm][name] = SampleStats(n, m * n, (v + m * m) * n)
            elif kind == "ratio":
                d = n * 2.0
                arms[arm][name] = RatioStats(n, 0.8 * n, 1.5 * n, d, 5.0 * n, 2.5 * n)
            elif kind == "cuped":
                arms[arm][name] = RegressionStats(n, 3.5 * n, 13.0 * n, 3.4 * n, 12.5 * n, 12.2 * n)
            else:
                arms[arm][name] = QuantileStats(n, 0.95, 2.0, 1.95, 2.06)
    return metrics, arms


def main() -> None:
    rng = np.random.default_rng(0)
    experiments = [make_inputs(rng) for _ in range(100)]
    units = {"base": 10_000, "finetuned": 10_050}
    weights = {"base": 1, "finetuned": 1}
    for label, options in (("fixed horizon", AnalysisOptions()),
                           ("sequential + sequential SRM", AnalysisOptions(sequential=True, srm_sequential=True))):
        analyze(*experiments[0], control="base", weights=weights, units=units, options=options)  # warm-up
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            n = 0
            for metrics, arms in experiments:
                n += len(analyze(metrics, arms, control="base", weights=weights, units=units,
                                 options=options).results)
            best = min(best, time.perf_counter() - t0)
        print(f"{label}: {n} comparisons in {best * 1000:.0f} ms (best of 5), "
              f"{best / n * 1e6:.0f} us per comparison; target < 1000 ms: {'met' if best < 1 else 'MISSED'}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, one process")


if __name__ == "__main__":
    main()
