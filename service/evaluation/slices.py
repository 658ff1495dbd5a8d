"""Every metric per slice of the test set, and whether the fine-tune's gain holds out of domain.

A slice is the cases sharing one value of a ``metadata`` key (``domain: billing``, ``split:
out_of_domain``). A key is sliced when it has 2 to :data:`MAX_SLICE_VALUES` values; a value with
fewer than :data:`MIN_SLICE_CASES` complete cases is listed but not tested. In each slice, each
candidate is compared with the control on every per-case metric (the corpus figures and the
operational ones, latency and tokens, are left to the whole set), with the same paired tests as
the whole set, and the p-values of every slice test are corrected together with Benjamini-Hochberg
(a false-discovery rate: slices are many and exploratory).

**Generalisation**: when a key (``split`` unless told) has the values ``in_domain`` and
``out_of_domain``, the report adds, on the task's primary metric, each arm's in-domain minus
out-of-domain gap (a bootstrap within each group), each candidate's gain over the control in and
out of domain (the slices' paired tests), and the difference of the two gains with its bootstrap
interval: does the fine-tune's gain hold out of domain?
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .case_scores import ArmScores, EvalInputs
from .pairs import Comparison, PlannedTest, plan_pair

MIN_SLICE_CASES = 10
MAX_SLICE_VALUES = 20
NOT_SLICED = {"latency_s", "completion_tokens"}
IN_DOMAIN, OUT_OF_DOMAIN = "in_domain", "out_of_domain"
PRIMARY = {"classification": "accuracy", "regression": "mae", "generation": "chrf", "code": "pass_rate"}


def primary_metric(task: str, scores: ArmScores) -> str | None:
    """Return the task's primary per-case metric (checks or a rating for open tasks), or None."""
    if task in PRIMARY:
        return PRIMARY[task]
    for name in ("checks_passed", "judge_relevance", "human_relevance"):
        if name in scores.per_case:
            return name
    return None


@dataclass(kw_only=True)
class SliceComparison(Comparison):
    """One metric of one candidate against the control within one slice (``key`` = ``value``, ``cases``)."""

    key: str
    value: str
    cases: int

    def as_dict(self) -> dict[str, Any]:
        """Return the comparison as plain values: the slice, then the comparison's."""
        return {"key": self.key, "value": self.value, "cases": self.cases, **super().as_dict()}


def slices_of(inp: EvalInputs) -> list[tuple[str, str, np.ndarray]]:
    """Return (key, value, mask over the complete cases) for every slice (see the module)."""
    out = []
    meta = [dict(inp.case(cid).metadata) for cid in inp.ids]
    for key in inp.dataset.metadata_keys():
        values = Counter(m[key] for m in meta if key in m)
        if not 2 <= len(values) <= MAX_SLICE_VALUES:
            continue
        for value in sorted(values):
            out.append((key, value, np.array([m.get(key) == value for m in meta])))
    return out


def plan_slice_tests(inp: EvalInputs, scores: dict[str, ArmScores], control: str, alpha: float
                     ) -> tuple[list[tuple[str, str, int, str, PlannedTest]], list[tuple[str, str, int]]]:
    """Return the planned slice tests (key, value, cases, arm, test) and the slices too small to test."""
    planned, small = [], []
    for key, value, mask in slices_of(inp):
        n = int(mask.sum())
        if n < MIN_SLICE_CASES:
            small.append((key, value, n))
            continue
        metrics = set(scores[control].per_case) - NOT_SLICED
        for arm in scores:
            if arm == control:
                continue
            for t in plan_pair(scores[control], scores[arm], alpha, mask=mask, metrics=metrics, corpus=False):
                planned.append((key, value, n, arm, t))
    return planned, small


@dataclass
class Generalisation:
    """The in-domain against out-of-domain comparison on the primary metric (see the module)."""

    key: str
    metric: str
    higher_is_better: bool
    arms: dict[str, dict[str, float]]  # arm -> in, out, gap, gap_low, gap_high
    candidates: dict[str, dict[str, Any]]  # arm -> gain_in, gain_out, their verdicts, interaction and interval
    sentences: list[str]

    def as_dict(self) -> dict[str, Any]:
        """Return the comparison as plain values."""
        return asdict(self)


def _two_group_bootstrap(x_in: np.ndarray, x_out: np.ndarray, n_samples: int, seed: int
                         ) -> tuple[float, float, float, float]:
    """Return mean(x_in) - mean(x_out), its percentile interval and the shifted two-sided p-value,
    resampling within each group."""
    rng = np.random.default_rng(seed)
    a = x_in[rng.choice(x_in.size, size=(n_samples, x_in.size))].mean(axis=1)
    b = x_out[rng.choice(x_out.size, size=(n_samples, x_out.size))].mean(axis=1)
    d = a - b
    est = float(x_in.mean() - x_out.mean())
    low, high = np.quantile(d, [0.025, 0.975])
    p = 1.0 if est == 0 else (int(np.sum(np.abs(d - d.mean()) >= abs(est))) + 1) / (n_samples + 1)
    return est, float(low), float(high), float(p)


def generalisation(inp: EvalInputs, scores: dict[str, ArmScores], control: str, slices: list[SliceComparison],
                   key: str, higher_is_better: bool, metric: str, n_samples: int, seed: int, share: bool = False
                   ) -> Generalisation | None:
    """Return the generalisation row when ``key`` has in-domain and out-of-domain cases, else None."""
    meta = [dict(inp.case(cid).metadata).get(key) for cid in inp.ids]
    in_mask = np.array([m == IN_DOMAIN for m in meta])
    out_mask = np.array([m == OUT_OF_DOMAIN for m in meta])
    if in_mask.sum() < MIN_SLICE_CASES or out_mask.sum() < MIN_SLICE_CASES:
        return None
    arms: dict[str, dict[str, float]] = {}
    for arm, s in scores.items():
        v = s.per_case.get(metric)
        if v is None:
            continue
        x_in, x_out = v[in_mask & np.isfinite(v)], v[out_mask & np.isfinite(v)]
        if x_in.size < 2 or x_out.size < 2:
            continue
        gap, low, high, _ = _two_group_bootstrap(x_in, x_out, n_samples, seed)
        arms[arm] = {"in": float(x_in.mean()), "out": float(x_out.mean()), "gap": gap, "gap_low": low,
                     "gap_high": high}
    found = {(c.arm, c.value): c for c in slices if c.key == key and c.metric == metric}
    candidates: dict[str, dict[str, Any]] = {}
    sentences = []
    for arm in scores:
        if arm == control or (arm, IN_DOMAIN) not in found or (arm, OUT_OF_DOMAIN) not in found:
            continue
        c_in, c_out = found[(arm, IN_DOMAIN)], found[(arm, OUT_OF_DOMAIN)]
        d = scores[arm].per_case[metric] - scores[control].per_case[metric]
        d_in, d_out = d[in_mask & np.isfinite(d)], d[out_mask & np.isfinite(d)]
        inter, low, high, p = _two_group_bootstrap(d_in, d_out, n_samples, seed)
        holds = {"better": "holds out of domain", "worse": "turns into a loss out of domain"}.get(
            c_out.verdict, "is not shown out of domain")
        if c_in.verdict != "better":
            holds = f"is {c_in.verdict} in domain, and out of domain {c_out.verdict}"
        candidates[arm] = {"gain_in": c_in.result.difference, "verdict_in": c_in.verdict,
                           "gain_out": c_out.result.difference, "verdict_out": c_out.verdict,
                           "gain_difference": inter, "gain_difference_low": low, "gain_difference_high": high,
                           "gain_difference_p": p}
        def fmt(x: float) -> str:
            return f"{x * 100:+.1f} points" if share else f"{x:+.3g}"

        sentences.append(
            f"{arm} against {control} on {metric}: {fmt(c_in.result.difference)} in domain ({c_in.verdict}), "
            f"{fmt(c_out.result.difference)} out of domain ({c_out.verdict}); the gain {holds} (in minus out "
            f"{fmt(inter)} [{fmt(low)}, {fmt(high)}])")
    return Generalisation(key, metric, higher_is_better, arms, candidates, sentences)
