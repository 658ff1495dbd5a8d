"""An eval run's figures: per-arm metrics, and each arm against the control on the same cases.

Quality and the paired tests use the first repeat of each case (repeat 0), the answer a user would
have had; latency and tokens use the mean over a case's successful repeats; stability uses every
repeat. Only cases that every arm answered (or failed) count, so an interrupted run's partial last
case does not unbalance the pairs.

Tests per metric (``splitwatch.stats.paired``): McNemar's exact test for 0/1 outcomes (exact match,
accuracy, errors); the paired bootstrap for per-case scores (chrF, ROUGE-L, stability) and for
corpus figures (BLEU from n-gram counts, macro-F1); Wilcoxon's signed-rank test for latency (skewed;
with the bootstrap interval of the mean difference). The p-values of every metric and arm are
corrected together (Holm), and a metric's verdict is better, worse (by its direction) or not
distinguishable at ``alpha``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...stats.multiple_testing import adjust_p_values
from ...stats.paired import (
    DEFAULT_BOOTSTRAP_SAMPLES,
    PairedResult,
    mcnemar_exact,
    paired_bootstrap,
    wilcoxon_signed_rank,
)
from ..config import ExperimentConfig
from . import scoring
from .dataset import Dataset
from .judge import judge_key, judge_scores
from .store import CallResult

HIGHER, LOWER, NEUTRAL = "higher", "lower", "neutral"


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the eval: its name, which way is better, its unit, and how it is described."""

    name: str
    direction: str
    unit: str
    description: str


METRICS = {m.name: m for m in (
    MetricSpec("accuracy", HIGHER, "share", "answers naming the right label (normalised)"),
    MetricSpec("macro_f1", HIGHER, "share", "F1 averaged over the labels (scikit-learn)"),
    MetricSpec("exact_match", HIGHER, "share", "answers equal to the expected text"),
    MetricSpec("normalised_exact_match", HIGHER, "share",
               "answers equal to the expected text, ignoring case, punctuation and articles"),
    MetricSpec("bleu", HIGHER, "score", "corpus BLEU, 0-100 (sacrebleu)"),
    MetricSpec("chrf", HIGHER, "score", "mean sentence chrF, 0-100 (sacrebleu)"),
    MetricSpec("rouge_l", HIGHER, "share", "mean ROUGE-L F-measure (rouge-score)"),
    MetricSpec("agreement", HIGHER, "share", "pairs of repeats with identical answers"),
    MetricSpec("similarity", HIGHER, "score", "mean chrF between repeats, 0-100"),
    MetricSpec("error_rate", LOWER, "share", "calls that failed (timeout, refused, HTTP error)"),
    MetricSpec("latency_s", LOWER, "seconds", "seconds per call, mean over a case's repeats"),
    MetricSpec("completion_tokens", NEUTRAL, "tokens", "completion tokens per answer"),
    MetricSpec("judge_win_rate", HIGHER, "share",
               "the judge's preference for the arm over the control, both orders (50%: even)"),
)}


@dataclass
class Comparison:
    """One metric of one arm against the control: the paired result, its corrected p-value, the verdict."""

    arm: str
    metric: str
    direction: str
    result: PairedResult
    p_adjusted: float = 1.0
    verdict: str = "not distinguishable"

    def as_dict(self) -> dict[str, Any]:
        """Return the comparison as plain JSON-able values."""
        return {"arm": self.arm, "metric": self.metric, "direction": self.direction, **asdict(self.result),
                "p_adjusted": self.p_adjusted, "verdict": self.verdict}


@dataclass
class EvalResult:
    """Everything the report shows."""

    experiment: str
    control: str
    arms: list[str]
    task: str
    cases: int
    incomplete_cases: int
    repeats: int
    alpha: float
    correction: str
    per_arm: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    n_bootstrap: int | None = None  # the resamples used (chosen from the family's size unless requested)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON-able values."""
        out = asdict(self)
        out["comparisons"] = [c.as_dict() for c in self.comparisons]
        return out

    def verdict_lines(self) -> list[str]:
        """Return one sentence per candidate arm: where it is better, worse, or not distinguishable."""
        lines = []
        for arm in self.arms[1:]:
            mine = [c for c in self.comparisons if c.arm == arm]
            groups: dict[str, list[str]] = {}
            for c in mine:
                groups.setdefault(c.verdict, []).append(c.metric)
            parts = [f"{v} on {', '.join(ms)}" for v, ms in groups.items()]
            lines.append(f"{arm} against {self.control}: " + ("; ".join(parts) or "no metric compared"))
        return lines


@dataclass
class _ArmCases:
    """An arm's per-case values, aligned on the run's complete cases."""

    answers: list[str]  # repeat 0; "" when the call failed
    failed: np.ndarray
    latency: np.ndarray  # mean over successful repeats; nan when none succeeded
    tokens: np.ndarray  # completion tokens, mean over successful repeats; nan when unknown
    repeats: list[list[str]]  # every repeat's answer ("" when failed)


def _arm_cases(results: dict[tuple[str, str, int], CallResult], case_ids: list[str], arm: str,
               repeats: int) -> _ArmCases:
    answers, failed, latency, tokens, every = [], [], [], [], []
    for cid in case_ids:
        calls = [results[(cid, arm, r)] for r in range(repeats)]
        first = calls[0]
        answers.append(first.answer or "")
        failed.append(first.error is not None)
        ok = [c for c in calls if c.error is None]
        latency.append(np.mean([c.latency_s for c in ok]) if ok else np.nan)
        toks = [c.completion_tokens for c in ok if c.completion_tokens is not None]
        tokens.append(np.mean(toks) if toks else np.nan)
        every.append([c.answer or "" for c in calls])
    return _ArmCases(answers, np.array(failed, dtype=float), np.array(latency), np.array(tokens), every)


def _both_finite(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _per_case_scores(dataset: Dataset, cases: _ArmCases, ids: list[str], labels: list[str]
                     ) -> dict[str, np.ndarray]:
    by_id = {c.id: c for c in dataset.cases}
    out: dict[str, list[float]] = {}
    for cid, answer in zip(ids, cases.answers, strict=True):
        case = by_id[cid]
        expected = case.label if dataset.task == "classification" else case.reference
        if expected is not None:
            out.setdefault("exact_match", []).append(scoring.exact_match(answer, expected))
        if dataset.task == "generation" and case.reference is not None:  # for labels, accuracy is the normalised match
            out.setdefault("normalised_exact_match", []).append(scoring.normalised_exact_match(answer, case.reference))
        if dataset.task == "classification" and case.label is not None:
            out.setdefault("accuracy", []).append(float(scoring.predicted_label(answer, labels) == case.label))
        if dataset.task == "generation" and case.reference is not None:
            out.setdefault("chrf", []).append(scoring.chrf(answer, case.reference))
            out.setdefault("rouge_l", []).append(scoring.rouge_l(answer, case.reference))
    if any(len(r) > 1 for r in cases.repeats):
        out["agreement"] = [scoring.pairwise_agreement(r) for r in cases.repeats]
        out["similarity"] = [scoring.pairwise_similarity(r) for r in cases.repeats]
    return {k: np.array(v) for k, v in out.items()}


class BootstrapTooSmall(ValueError):
    """The requested bootstrap cannot reach significance in its family: the message gives the numbers."""


def bootstrap_floor(family: int, n_bootstrap: int, correction: str) -> float:
    """Return the smallest corrected p-value a bootstrap test with ``n_bootstrap`` resamples can reach in a
    family of ``family`` comparisons: its smallest p is 1/(B+1), and Holm's (or Bonferroni's, or BH's)
    first step multiplies it by the family's size."""
    return min(1.0, (1 if correction == "none" else family) / (n_bootstrap + 1))


def choose_bootstrap(family: int, alpha: float, correction: str, requested: int | None) -> int:
    """Return the resamples to use: the requested number when its floor is below ``alpha`` (else raise
    BootstrapTooSmall with the numbers), or, unrequested, enough that the floor is a tenth of alpha
    (at least DEFAULT_BOOTSTRAP_SAMPLES)."""
    m = 1 if correction == "none" else family
    if requested is None:
        return max(DEFAULT_BOOTSTRAP_SAMPLES, math.ceil(10 * m / alpha) - 1)
    floor = bootstrap_floor(family, requested, correction)
    if floor >= alpha:
        need = math.floor(m / alpha)  # the smallest B with m / (B + 1) < alpha
        raise BootstrapTooSmall(
            f"--bootstrap {requested}: with {family} comparisons corrected together ({correction}) at alpha "
            f"{alpha:g}, the smallest p-value {requested} resamples can give, 1/{requested + 1}, corrects to at "
            f"least {floor:.3g}, so no bootstrap-tested metric could ever read better or worse. Use --bootstrap "
            f"{need} or more (10x that for power), or leave it out and splitwatch chooses; the calls are kept, "
            "so the same command with another --bootstrap only recomputes the statistics")
    return requested


def evaluate(exp: ExperimentConfig, dataset: Dataset, results: dict[tuple[str, str, int], CallResult],
             repeats: int, alpha: float = 0.05, correction: str = "holm", n_bootstrap: int | None = None,
             seed: int = 12345) -> EvalResult:
    """Return the run's per-arm figures and paired comparisons (see the module).

    ``n_bootstrap`` None chooses the resamples from the family's size (:func:`choose_bootstrap`); a number
    too small to ever reach significance in the family raises BootstrapTooSmall."""
    arms = [a.name for a in exp.arms]
    complete = [c.id for c in dataset.cases
                if all((c.id, a, r) in results for a in arms for r in range(repeats))]
    labels = dataset.labels() if dataset.task == "classification" else []
    res = EvalResult(exp.key, arms[0], arms, dataset.task, len(complete), len(dataset.cases) - len(complete),
                     repeats, alpha, correction, labels=labels)
    if not complete:
        return res
    by_id = {c.id: c for c in dataset.cases}
    cases = {a: _arm_cases(results, complete, a, repeats) for a in arms}
    scores = {a: _per_case_scores(dataset, cases[a], complete, labels) for a in arms}
    refs = [by_id[c].reference or "" for c in complete]
    truth = [by_id[c].label or "" for c in complete]
    bleu_rows: dict[str, np.ndarray] = {}
    predicted: dict[str, list[str]] = {}
    complete_set = set(complete)
    for a in arms:
        ac = cases[a]
        calls = [r for (cid, arm, _), r in results.items() if arm == a and cid in complete_set]  # not the judge's
        ok_lat = np.array([r.latency_s for r in calls if r.error is None])
        summary: dict[str, Any] = {
            "calls": len(calls), "errors": sum(r.error is not None for r in calls),
            "error_rate": float(ac.failed.mean()),
            "latency_p50_s": float(np.percentile(ok_lat, 50)) if ok_lat.size else None,
            "latency_p95_s": float(np.percentile(ok_lat, 95)) if ok_lat.size else None,
            "completion_tokens_mean": float(np.nanmean(ac.tokens)) if np.isfinite(ac.tokens).any() else None,
            "prompt_tokens_mean": _mean_or_none([r.prompt_tokens for r in calls if r.prompt_tokens is not None]),
            "error_kinds": dict(Counter(r.error for r in calls if r.error is not None)),
        }
        for name, values in scores[a].items():
            summary[name] = float(values.mean())
        if dataset.task == "classification":
            predicted[a] = [scoring.predicted_label(x, labels) for x in ac.answers]
            summary["macro_f1"] = scoring.macro_f1(truth, predicted[a], labels)
            summary["confusion"] = scoring.confusion(truth, predicted[a], labels)
        if dataset.task == "generation":
            bleu_rows[a] = scoring.bleu_statistics(ac.answers, refs)
            summary["bleu"] = scoring.bleu_from_statistics(bleu_rows[a])
            summary["corpus_chrf"] = scoring.corpus_chrf(ac.answers, refs)
        res.per_arm[a] = summary
    control = arms[0]
    boot: dict[str, Any] = {"seed": seed, "alpha": alpha}  # n_samples once the family's size is known
    planned: list[tuple[str, str, Callable[[], PairedResult]]] = []
    for arm in arms[1:]:
        pairs: list[tuple[str, Callable[[], PairedResult]]] = []
        for name in scores[control]:
            x, y = scores[control][name], scores[arm][name]
            if name in ("exact_match", "normalised_exact_match", "accuracy"):
                pairs.append((name, lambda x=x, y=y: mcnemar_exact(x, y, alpha)))
            else:
                pairs.append((name, lambda x=x, y=y: paired_bootstrap(x, y, **boot)))
        if dataset.task == "classification":
            ia, ib = label_codes(predicted[control], labels), label_codes(predicted[arm], labels)
            codes = label_codes(truth, labels)
            pairs.append(("macro_f1", lambda ia=ia, ib=ib, codes=codes: _macro_f1_bootstrap(
                codes, ia, ib, labels, boot)))
        if dataset.task == "generation":
            pairs.append(("bleu", lambda arm=arm: paired_bootstrap(
                bleu_rows[control], bleu_rows[arm], scoring.bleu_from_statistics, method="paired_bootstrap_corpus",
                **boot)))
        pairs.append(("error_rate", lambda arm=arm: mcnemar_exact(cases[control].failed, cases[arm].failed, alpha)))
        lat_a, lat_b = _both_finite(cases[control].latency, cases[arm].latency)
        if lat_a.size >= 2:
            pairs.append(("latency_s", lambda a=lat_a, b=lat_b: wilcoxon_signed_rank(
                a, b, alpha, boot["n_samples"], seed)))
        tok_a, tok_b = _both_finite(cases[control].tokens, cases[arm].tokens)
        if tok_a.size >= 2:
            pairs.append(("completion_tokens", lambda a=tok_a, b=tok_b: paired_bootstrap(a, b, **boot)))
        if any(key[1] == judge_key(arm) for key in results):
            judged = judge_scores(results, complete, arm)
            res.per_arm[arm].update({"judge_win_rate": float(judged.scores.mean()) if judged.judged_cases else None,
                                     "judge_cases": judged.judged_cases, "judge_invalid": judged.invalid,
                                     "judge_order_inconsistent": judged.inconsistent_share})
            if judged.judged_cases >= 2:
                pairs.append(("judge_win_rate", lambda s=judged.scores: paired_bootstrap(
                    np.full(s.size, 0.5), s, method="bootstrap_against_even", **boot)))
        planned.extend((arm, name, run) for name, run in pairs)
    boot["n_samples"] = choose_bootstrap(len(planned), alpha, correction, n_bootstrap)
    res.n_bootstrap = boot["n_samples"]
    for arm, name, run in planned:
        res.comparisons.append(Comparison(arm, name, METRICS[name].direction, run()))
    adjusted = adjust_p_values([c.result.p_value for c in res.comparisons], correction)
    for c, p in zip(res.comparisons, adjusted, strict=True):
        c.p_adjusted = p
        c.verdict = _verdict(c, alpha)
    return res


def _verdict(c: Comparison, alpha: float) -> str:
    if c.p_adjusted >= alpha or c.result.difference == 0:
        return "not distinguishable"
    up = c.result.difference > 0
    if c.direction == NEUTRAL:
        return "higher" if up else "lower"
    return "better" if up == (c.direction == HIGHER) else "worse"


def label_codes(values: list[str], labels: list[str]) -> np.ndarray:
    """Return each value's index in ``labels`` (``len(labels)`` for a value that is none of them)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, len(labels)) for v in values], dtype=float)


def _macro_f1_bootstrap(truth: np.ndarray, pa: np.ndarray, pb: np.ndarray, labels: list[str],
                        boot: dict[str, Any]) -> PairedResult:
    """Paired bootstrap of macro-F1: each row carries the case's true and predicted label codes.

    The whole-sample figure is scikit-learn's; the resamples use the same formula vectorised
    (F1 = 2TP / (2TP + FP + FN) per label, 0 when a label is neither true nor predicted, as
    scikit-learn's ``zero_division=0``), checked equal in tests/test_eval_stats.py.
    """
    from sklearn.metrics import f1_score

    wanted = list(range(len(labels)))

    def f1(rows: np.ndarray) -> float:
        return float(f1_score(rows[:, 0], rows[:, 1], labels=wanted, average="macro", zero_division=0))

    return paired_bootstrap(np.column_stack([truth, pa]), np.column_stack([truth, pb]), f1,
                            method="paired_bootstrap_corpus", batch_statistic=lambda s: batch_macro_f1(s, len(labels)),
                            **boot)


def batch_macro_f1(samples: np.ndarray, n_labels: int) -> np.ndarray:
    """Return macro-F1 of each resample: ``samples`` is ``(B, n, 2)``, true and predicted label codes
    (code ``n_labels`` is an answer naming no label)."""
    t, p = samples[..., 0], samples[..., 1]
    scores = np.zeros(samples.shape[0])
    for label in range(n_labels):
        tp = np.sum((t == label) & (p == label), axis=1)
        fp = np.sum((t != label) & (p == label), axis=1)
        fn = np.sum((t == label) & (p != label), axis=1)
        denom = 2 * tp + fp + fn
        scores += np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    return scores / n_labels


def _mean_or_none(values: list[int]) -> float | None:
    return float(np.mean(values)) if values else None
