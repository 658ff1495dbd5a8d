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

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...stats.multiple_testing import adjust_p_values
from ...stats.paired import DEFAULT_BOOTSTRAP_SAMPLES, paired_bootstrap
from ..config import ExperimentConfig
from .case_scores import ArmScores, EvalInputs, arm_scores, label_codes
from .dataset import Dataset
from .judge import judge_key, judge_scores
from .pairs import Comparison, PlannedTest, batch_macro_f1, plan_pair
from .ranking import RankRow, rank_arms
from .rubric import DIMENSIONS, MAX_ORDER_INCONSISTENT, Agreement, agreement
from .slices import Generalisation, SliceComparison, generalisation, plan_slice_tests, primary_metric
from .store import CallResult

__all__ = ["METRICS", "BootstrapTooSmall", "Comparison", "EvalResult", "batch_macro_f1", "bootstrap_floor",
           "choose_bootstrap", "evaluate", "label_codes"]

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
    MetricSpec("auc_roc", HIGHER, "share", "AUC-ROC of the label probabilities (one-vs-rest macro; scikit-learn)"),
    MetricSpec("brier", LOWER, "score", "multi-class Brier score of the label probabilities (0 is perfect)"),
    MetricSpec("exact_match", HIGHER, "share", "answers equal to the expected text"),
    MetricSpec("normalised_exact_match", HIGHER, "share",
               "answers equal to the expected text, ignoring case, punctuation and articles"),
    MetricSpec("mse", LOWER, "score", "mean squared error of the answer's number (scikit-learn)"),
    MetricSpec("mae", LOWER, "score", "mean absolute error of the answer's number (scikit-learn)"),
    MetricSpec("unparseable_rate", LOWER, "share", "answers holding no number"),
    MetricSpec("bleu", HIGHER, "score", "corpus BLEU, 0-100 (sacrebleu)"),
    MetricSpec("chrf", HIGHER, "score", "mean sentence chrF, 0-100 (sacrebleu)"),
    MetricSpec("rouge_l", HIGHER, "share", "mean ROUGE-L F-measure (rouge-score)"),
    MetricSpec("meteor", HIGHER, "share", "mean METEOR (nltk, WordNet 3.0)"),
    MetricSpec("log_perplexity", LOWER, "score", "per case, -mean log-probability of the reference's tokens"),
    MetricSpec("checks_passed", HIGHER, "share", "answers passing every check of their case"),
    MetricSpec("check_must_contain", HIGHER, "share", "answers holding every required term"),
    MetricSpec("check_must_not_contain", HIGHER, "share", "answers holding no forbidden term"),
    MetricSpec("check_regex", HIGHER, "share", "answers matching every pattern"),
    MetricSpec("check_json_schema", HIGHER, "share", "answers that are JSON valid against the schema"),
    MetricSpec("compile_rate", HIGHER, "share", "answers whose code compiles"),
    MetricSpec("pass_rate", HIGHER, "share", "answers whose code passes the case's tests"),
    MetricSpec("agreement", HIGHER, "share", "pairs of repeats with identical answers"),
    MetricSpec("similarity", HIGHER, "score", "mean chrF between repeats, 0-100"),
    MetricSpec("error_rate", LOWER, "share", "calls that failed (timeout, refused, HTTP error)"),
    MetricSpec("latency_s", LOWER, "seconds", "seconds per call, mean over a case's repeats"),
    MetricSpec("completion_tokens", NEUTRAL, "tokens", "completion tokens per answer"),
    MetricSpec("judge_win_rate", HIGHER, "share",
               "the judge's preference for the arm over the control, both orders (50%: even)"),
    *(MetricSpec(f"{who}_{d}", HIGHER, "rating", f"{label} rating of {d.replace('_', ' ')}, 1-5")
      for who, label in (("judge", "the judge's"), ("human", "people's")) for d in DIMENSIONS),
)}


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
    primary_metric: str | None = None
    ranking: list[RankRow] = field(default_factory=list)
    slices: list[SliceComparison] = field(default_factory=list)
    slice_correction: str = "bh"
    slice_n_bootstrap: int | None = None
    small_slices: list[tuple[str, str, int]] = field(default_factory=list)
    generalisation: Generalisation | None = None
    agreement: list[Agreement] = field(default_factory=list)
    judge_pairwise_trusted: dict[str, bool] = field(default_factory=dict)
    human_bad_lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON-able values."""
        out = asdict(self)
        out["comparisons"] = [c.as_dict() for c in self.comparisons]
        out["slices"] = [c.as_dict() for c in self.slices]
        return out

    def verdict_lines(self) -> list[str]:
        """Return one sentence per pair compared: where the arm is better, worse, or not distinguishable."""
        lines = []
        pairs = dict.fromkeys((c.arm, c.against) for c in self.comparisons)
        for arm, against in pairs:
            groups: dict[str, list[str]] = {}
            for c in self.comparisons:
                if (c.arm, c.against) == (arm, against):
                    groups.setdefault(c.verdict, []).append(c.metric)
            order = ("better", "worse", "higher", "lower", "not distinguishable")  # what changed first
            parts = [f"{v} on {', '.join(groups[v])}" for v in order if v in groups]
            lines.append(f"{arm} against {against}: " + ("; ".join(parts) or "no metric compared"))
        return lines


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
             seed: int = 12345, human: dict[tuple[str, str], dict[str, int]] | None = None,
             generalisation_key: str = "split") -> EvalResult:
    """Return the run's per-arm figures and paired comparisons (see the module).

    ``n_bootstrap`` None chooses the resamples from the family's size (:func:`choose_bootstrap`); a number
    too small to ever reach significance in the family raises BootstrapTooSmall. ``human`` holds people's
    ratings by (case, arm)."""
    arms = [a.name for a in exp.arms]
    complete = [c.id for c in dataset.cases
                if all((c.id, a, r) in results for a in arms for r in range(repeats))]
    labels = dataset.labels() if dataset.task == "classification" else []
    res = EvalResult(exp.key, arms[0], arms, dataset.task, len(complete), len(dataset.cases) - len(complete),
                     repeats, alpha, correction, labels=labels)
    if not complete:
        return res
    inp = EvalInputs(dataset, complete, results, repeats, labels, human or {})
    scores = {a: arm_scores(inp, a) for a in arms}
    for a in arms:
        res.per_arm[a] = scores[a].figures
        if "perplexity_note" in scores[a].figures:
            res.notes.append(scores[a].figures["perplexity_note"])
    if dataset.task == "generation" and "meteor" not in scores[arms[0]].per_case:
        from .meteor import MeteorUnavailable, wordnet

        try:
            wordnet()
        except MeteorUnavailable as exc:
            res.notes.append(f"meteor not computed: {exc}")
    control = arms[0]
    boot: dict[str, Any] = {"seed": seed, "alpha": alpha}  # n_samples once the family's size is known
    planned: list[tuple[str, str, PlannedTest]] = []
    pairs = [(control, arm) for arm in arms[1:]] + list(itertools.combinations(arms[1:], 2))
    for a, b in pairs:
        planned.extend((b, a, t) for t in plan_pair(scores[a], scores[b], alpha, n_labels=len(labels)))
        if a == control:
            planned.extend((b, a, t) for t in _judge_pairwise(results, complete, b, res))
    boot["n_samples"] = choose_bootstrap(len(planned), alpha, correction, n_bootstrap)
    res.n_bootstrap = boot["n_samples"]
    for arm, against, test in planned:
        res.comparisons.append(Comparison(arm, test.metric, METRICS[test.metric].direction, test.run(boot),
                                          against=against))
    _correct(res.comparisons, correction, alpha)
    res.primary_metric = primary_metric(dataset.task, scores[control])
    if res.primary_metric is not None and len(arms) > 2:
        higher = METRICS[res.primary_metric].direction == HIGHER
        res.ranking = rank_arms({a: scores[a].per_case[res.primary_metric] for a in arms}, higher,
                                n_samples=boot["n_samples"], seed=seed)
    _slices(inp, scores, res, boot, generalisation_key)
    _agreement(inp, scores, res, seed)
    return res


def _correct(comparisons: Sequence[Comparison], correction: str, alpha: float) -> None:
    adjusted = adjust_p_values([c.result.p_value for c in comparisons], correction)
    for c, p in zip(comparisons, adjusted, strict=True):
        c.p_adjusted = p
        c.verdict = _verdict(c, alpha)


def _judge_pairwise(results: dict[tuple[str, str, int], CallResult], complete: list[str], arm: str,
                    res: EvalResult) -> list[PlannedTest]:
    if not any(key[1] == judge_key(arm) for key in results):
        return []
    judged = judge_scores(results, complete, arm)
    res.per_arm[arm].update({"judge_win_rate": float(judged.scores.mean()) if judged.judged_cases else None,
                             "judge_cases": judged.judged_cases, "judge_invalid": judged.invalid,
                             "judge_order_inconsistent": judged.inconsistent_share})
    share = judged.inconsistent_share
    res.judge_pairwise_trusted[arm] = share is not None and share <= MAX_ORDER_INCONSISTENT
    if judged.judged_cases < 2:
        return []
    return [PlannedTest("judge_win_rate", lambda boot, s=judged.scores: paired_bootstrap(
        np.full(s.size, 0.5), s, method="bootstrap_against_even", **boot))]


def _slices(inp: EvalInputs, scores: dict[str, ArmScores], res: EvalResult, boot: dict[str, Any], key: str) -> None:
    planned, res.small_slices = plan_slice_tests(inp, scores, res.control, res.alpha)
    if not planned:
        return
    res.slice_n_bootstrap = choose_bootstrap(len(planned), res.alpha, res.slice_correction, None)
    slice_boot = {**boot, "n_samples": res.slice_n_bootstrap}
    for k, value, n, arm, test in planned:
        res.slices.append(SliceComparison(arm, test.metric, METRICS[test.metric].direction, test.run(slice_boot),
                                          against=res.control, key=k, value=value, cases=n))
    _correct(res.slices, res.slice_correction, res.alpha)
    if res.primary_metric is not None:
        res.generalisation = generalisation(inp, scores, res.control, res.slices, key,
                                            METRICS[res.primary_metric].direction == HIGHER, res.primary_metric,
                                            boot["n_samples"], boot["seed"],
                                            share=METRICS[res.primary_metric].unit == "share")


def _agreement(inp: EvalInputs, scores: dict[str, ArmScores], res: EvalResult, seed: int) -> None:
    for d in DIMENSIONS:
        judge = [scores[a].per_case.get(f"judge_{d}") for a in res.arms]
        human = [scores[a].per_case.get(f"human_{d}") for a in res.arms]
        if any(j is None for j in judge) or all(h is None for h in human):
            continue
        j = np.concatenate(judge)
        h = np.concatenate([x if x is not None else np.full(len(inp.ids), np.nan) for x in human])
        res.agreement.append(agreement(d, j, h, seed=seed))


def _verdict(c: Comparison, alpha: float) -> str:
    if c.p_adjusted >= alpha or c.result.difference == 0:
        return "not distinguishable"
    up = c.result.difference > 0
    if c.direction == NEUTRAL:
        return "higher" if up else "lower"
    return "better" if up == (c.direction == HIGHER) else "worse"
