"""The paired tests of one arm against another on the same cases (``splitwatch.stats.paired``).

McNemar's exact test for 0/1 outcomes, the paired bootstrap for per-case scores and for corpus
figures (BLEU from n-gram counts, macro-F1 and AUC-ROC from per-case labels and probabilities),
Wilcoxon's signed-rank test for skewed or ordinal values (latency, 1-5 ratings). Each test uses
the cases where both arms have a value. The tests are planned first and run once the family's size
(and so the bootstrap's resamples) is known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...stats.paired import PairedResult, mcnemar_exact, paired_bootstrap, wilcoxon_signed_rank
from . import scoring
from .case_scores import ArmScores

BINARY = {"exact_match", "normalised_exact_match", "accuracy", "error_rate", "unparseable_rate", "checks_passed",
          "check_must_contain", "check_must_not_contain", "check_regex", "check_json_schema", "compile_rate",
          "pass_rate"}
RANKED = {"latency_s"}  # and every judge_* / human_* rating


@dataclass
class Comparison:
    """One metric of one arm against another (the control, or another candidate): the paired result, its
    corrected p-value, the verdict."""

    arm: str
    metric: str
    direction: str
    result: PairedResult
    p_adjusted: float = 1.0
    verdict: str = "not distinguishable"
    against: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the comparison as plain JSON-able values."""
        return {"arm": self.arm, "against": self.against, "metric": self.metric, "direction": self.direction,
                **asdict(self.result), "p_adjusted": self.p_adjusted, "verdict": self.verdict}


@dataclass(frozen=True)
class PlannedTest:
    """A test to run: the metric, and the function running it given the bootstrap's settings."""

    metric: str
    run: Callable[[dict[str, Any]], PairedResult]


def _both_finite(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def test_kind(metric: str) -> str:
    """Return how a per-case metric is tested: ``mcnemar``, ``wilcoxon`` or ``bootstrap``."""
    if metric in BINARY:
        return "mcnemar"
    if metric in RANKED or metric.startswith(("judge_", "human_")):
        return "wilcoxon"
    return "bootstrap"


def plan_pair(a: ArmScores, b: ArmScores, alpha: float, n_labels: int = 0, mask: np.ndarray | None = None,
              metrics: set[str] | None = None, corpus: bool = True) -> list[PlannedTest]:
    """Return the tests of ``b`` against ``a`` on every per-case metric both have (and the corpus figures
    when ``corpus``), on the cases in ``mask`` (all when None), restricted to ``metrics`` when given."""
    planned: list[PlannedTest] = []
    for name, values in a.per_case.items():
        if name not in b.per_case or (metrics is not None and name not in metrics):
            continue
        x, y = values, b.per_case[name]
        if mask is not None:
            x, y = x[mask], y[mask]
        x, y = _both_finite(x, y)
        if x.size < 2:
            continue
        kind = test_kind(name)
        if kind == "mcnemar":
            planned.append(PlannedTest(name, lambda boot, x=x, y=y: mcnemar_exact(x, y, alpha)))
        elif kind == "wilcoxon":
            planned.append(PlannedTest(name, lambda boot, x=x, y=y: wilcoxon_signed_rank(
                x, y, alpha, boot["n_samples"], boot["seed"])))
        else:
            planned.append(PlannedTest(name, lambda boot, x=x, y=y: paired_bootstrap(x, y, **boot)))
    if not corpus:
        return planned
    if "bleu" in a.corpus and "bleu" in b.corpus:
        planned.append(PlannedTest("bleu", lambda boot: paired_bootstrap(
            a.corpus["bleu"], b.corpus["bleu"], scoring.bleu_from_statistics, method="paired_bootstrap_corpus",
            **boot)))
    if "macro_f1" in a.corpus and "macro_f1" in b.corpus:
        planned.append(PlannedTest("macro_f1", lambda boot: macro_f1_bootstrap(
            a.corpus["macro_f1"], b.corpus["macro_f1"], n_labels, boot)))
    if "auc_roc" in a.corpus and "auc_roc" in b.corpus:
        planned.append(PlannedTest("auc_roc", lambda boot: paired_bootstrap(
            a.corpus["auc_roc"], b.corpus["auc_roc"], _auc_of_rows, method="paired_bootstrap_corpus", **boot)))
    return planned


def _auc_of_rows(rows: np.ndarray) -> float:
    from .probabilities import auc_roc

    value = auc_roc(rows[:, 0].astype(int), rows[:, 1:])
    return 0.5 if value is None else value  # a resample missing a label (rare: every label has 10+ cases)


def macro_f1_bootstrap(rows_a: np.ndarray, rows_b: np.ndarray, n_labels: int, boot: dict[str, Any]
                       ) -> PairedResult:
    """Paired bootstrap of macro-F1: each row holds the case's true and predicted label codes.

    The whole-sample figure is scikit-learn's; the resamples use the same formula vectorised
    (F1 = 2TP / (2TP + FP + FN) per label, 0 when a label is neither true nor predicted, as
    scikit-learn's ``zero_division=0``), checked equal in tests/test_eval_stats.py.
    """
    from sklearn.metrics import f1_score

    wanted = list(range(n_labels))

    def f1(rows: np.ndarray) -> float:
        return float(f1_score(rows[:, 0], rows[:, 1], labels=wanted, average="macro", zero_division=0))

    return paired_bootstrap(rows_a, rows_b, f1, method="paired_bootstrap_corpus",
                            batch_statistic=lambda s: batch_macro_f1(s, n_labels), **boot)


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
