"""Each arm's per-case scores and per-arm figures, from the stored calls (``splitwatch eval``).

Per-case scores are aligned on the run's complete cases; a score that does not apply to a case (a
check the case does not have, a number the answer does not hold, a rating nobody gave) is ``nan``
and the paired tests use the cases where both arms have one. Corpus figures (BLEU, macro-F1,
AUC-ROC) keep per-case rows of sufficient statistics, which the paired bootstrap resamples.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from . import scoring
from .checks import KINDS as CHECK_KINDS
from .checks import check_answer
from .dataset import Dataset, EvalCase
from .logprobs import corpus_perplexity, log_perplexity, perplexity_key
from .numeric import parsed_numbers, regression_figures
from .probabilities import auc_roc, brier_per_case, expected_calibration_error, label_probabilities, per_class
from .store import CallResult

CODE_PREFIX = "code/"


def code_key(arm: str) -> str:
    """Return the store's arm field for the code-test runs of ``arm``'s answers."""
    return CODE_PREFIX + arm


@dataclass
class EvalInputs:
    """What every arm is scored from: the dataset, the complete cases, the stored calls and options."""

    dataset: Dataset
    ids: list[str]
    results: dict[tuple[str, str, int], CallResult]
    repeats: int
    labels: list[str]
    human: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # (case, arm) -> ratings

    def case(self, cid: str) -> EvalCase:
        """Return the case with id ``cid``."""
        return self._by_id[cid]

    def __post_init__(self) -> None:
        self._by_id = {c.id: c for c in self.dataset.cases}


@dataclass
class ArmScores:
    """One arm: per-case scores (``nan`` where a score does not apply), corpus rows, per-arm figures."""

    per_case: dict[str, np.ndarray]
    corpus: dict[str, np.ndarray]
    figures: dict[str, Any]
    answers: list[str]


def _calls(inp: EvalInputs, arm: str) -> list[list[CallResult]]:
    return [[inp.results[(cid, arm, r)] for r in range(inp.repeats)] for cid in inp.ids]


def _operational(calls: list[list[CallResult]], per_case: dict[str, np.ndarray], figures: dict[str, Any]) -> None:
    flat = [c for case in calls for c in case]
    ok_lat = np.array([c.latency_s for c in flat if c.error is None])
    latency, tokens = [], []
    for case in calls:
        ok = [c for c in case if c.error is None]
        latency.append(np.mean([c.latency_s for c in ok]) if ok else np.nan)
        toks = [c.completion_tokens for c in ok if c.completion_tokens is not None]
        tokens.append(np.mean(toks) if toks else np.nan)
    per_case["error_rate"] = np.array([float(case[0].error is not None) for case in calls])
    per_case["latency_s"] = np.array(latency)
    per_case["completion_tokens"] = np.array(tokens)
    prompt_toks = [c.prompt_tokens for c in flat if c.prompt_tokens is not None]
    figures.update({
        "calls": len(flat), "errors": sum(c.error is not None for c in flat),
        "latency_p50_s": float(np.percentile(ok_lat, 50)) if ok_lat.size else None,
        "latency_p95_s": float(np.percentile(ok_lat, 95)) if ok_lat.size else None,
        "completion_tokens_mean": float(np.nanmean(tokens)) if np.isfinite(tokens).any() else None,
        "prompt_tokens_mean": float(np.mean(prompt_toks)) if prompt_toks else None,
        "error_kinds": dict(Counter(c.error for c in flat if c.error is not None))})


def _text_scores(inp: EvalInputs, answers: list[str], per_case: dict[str, np.ndarray]) -> None:
    task = inp.dataset.task
    cases = [inp.case(cid) for cid in inp.ids]
    if task in ("classification", "generation", "regression"):
        expected = [(c.label if task != "generation" else c.reference) or "" for c in cases]
        per_case["exact_match"] = np.array([scoring.exact_match(a, e) for a, e in zip(answers, expected, strict=True)])
    if task == "classification":
        per_case["accuracy"] = np.array([float(scoring.predicted_label(a, inp.labels) == c.label)
                                         for a, c in zip(answers, cases, strict=True)])
    if task == "generation":
        refs = [c.reference or "" for c in cases]
        per_case["normalised_exact_match"] = np.array([scoring.normalised_exact_match(a, r)
                                                       for a, r in zip(answers, refs, strict=True)])
        per_case["chrf"] = np.array([scoring.chrf(a, r) for a, r in zip(answers, refs, strict=True)])
        per_case["rouge_l"] = np.array([scoring.rouge_l(a, r) for a, r in zip(answers, refs, strict=True)])
        from .meteor import MeteorUnavailable, meteor_scores

        with contextlib.suppress(MeteorUnavailable):  # said once in the report's notes (evaluate)
            per_case["meteor"] = np.array(meteor_scores(answers, refs))
    if any(c.checks for c in cases):
        passed: dict[str, list[float]] = {k: [] for k in ("checks_passed", *(f"check_{k}" for k in CHECK_KINDS))}
        for a, c in zip(answers, cases, strict=True):
            result = check_answer(c.checks, a) if c.checks else {}
            passed["checks_passed"].append(float(all(result.values())) if result else np.nan)
            for k in CHECK_KINDS:
                passed[f"check_{k}"].append(float(result[k]) if k in result else np.nan)
        for name, values in passed.items():
            if np.isfinite(values).any():
                per_case[name] = np.array(values)


def _regression(inp: EvalInputs, answers: list[str], per_case: dict[str, np.ndarray], figures: dict[str, Any]
                ) -> None:
    truth = np.array([inp.case(cid).target for cid in inp.ids], dtype=float)
    predicted = parsed_numbers(answers)
    per_case["unparseable_rate"] = (~np.isfinite(predicted)).astype(float)
    per_case["mse"] = (predicted - truth) ** 2  # nan where the answer holds no number
    per_case["mae"] = np.abs(predicted - truth)
    figures.update(regression_figures(truth, predicted))


def _classification(inp: EvalInputs, calls: list[list[CallResult]], answers: list[str], scores: ArmScores) -> None:
    truth = [inp.case(cid).label or "" for cid in inp.ids]
    predicted = [scoring.predicted_label(a, inp.labels) for a in answers]
    codes = label_codes(truth, inp.labels)
    classes = per_class(truth, predicted, inp.labels)
    scores.figures.update({"per_class": classes, "macro_f1": classes["macro"]["f1"], "micro_f1": classes["micro"]["f1"],
                           "confusion": scoring.confusion(truth, predicted, inp.labels)})
    scores.corpus["macro_f1"] = np.column_stack([codes, label_codes(predicted, inp.labels)])
    tops = [case[0].top_logprobs for case in calls]
    if not any(t is not None for t in tops):
        return
    k = len(inp.labels)
    probs, unmatched = [], 0
    for t in tops:
        p = label_probabilities(t, inp.labels)
        if p is None:
            unmatched += 1
            p = np.full(k, 1.0 / k)
        probs.append(p)
    matrix = np.array(probs)
    per_case_brier = brier_per_case(codes, matrix)
    scores.per_case["brier"] = per_case_brier
    scores.figures.update({"brier": float(per_case_brier.mean()), "ece": expected_calibration_error(codes, matrix),
                           "auc_roc": auc_roc(codes, matrix), "probability_unmatched": unmatched})
    if scores.figures["auc_roc"] is not None and min(Counter(codes.tolist()).values()) >= 10:
        scores.corpus["auc_roc"] = np.column_stack([codes, matrix])


def _perplexity(inp: EvalInputs, arm: str, scores: ArmScores) -> None:
    calls = [inp.results.get((cid, perplexity_key(arm), 0)) for cid in inp.ids]
    if not any(c is not None for c in calls):
        return
    values = [c.token_logprobs if c is not None and c.error is None and c.token_logprobs else None for c in calls]
    known = [v for v in values if v]
    scores.per_case["log_perplexity"] = np.array([log_perplexity(v) if v else np.nan for v in values])
    scores.figures["perplexity"] = corpus_perplexity(known)
    scores.figures["perplexity_tokens"] = sum(len(v) for v in known)
    missing = Counter(c.error for c in calls if c is not None and c.error is not None)
    scores.figures["perplexity_missing"] = dict(missing)
    if not known:
        scores.figures["perplexity_note"] = (
            f"{arm}: its upstream returned no log-probabilities ({dict(missing)}); perplexity needs the completions "
            "API with echo and logprobs (OpenAI-compatible, as vLLM serves it) or vLLM's prompt_logprobs")


def _code(inp: EvalInputs, arm: str, scores: ArmScores) -> None:
    runs = [inp.results.get((cid, code_key(arm), 0)) for cid in inp.ids]
    if not any(r is not None for r in runs):
        return
    outcomes, compiled = [], []
    for r in runs:
        info = orjson.loads(r.answer) if r is not None and r.answer else {"outcome": "not_run", "compiled": False}
        outcomes.append(info["outcome"])
        compiled.append(float(info["compiled"]))
    scores.per_case["compile_rate"] = np.array(compiled)
    scores.per_case["pass_rate"] = np.array([float(o == "pass") for o in outcomes])
    scores.figures["code_outcomes"] = dict(Counter(outcomes))


def _ratings(inp: EvalInputs, arm: str, scores: ArmScores) -> None:
    from .rubric import DIMENSIONS, parse_rubric, rubric_key

    rubric = [inp.results.get((cid, rubric_key(arm), 0)) for cid in inp.ids]
    if any(r is not None for r in rubric):
        parsed = [parse_rubric(r.answer) if r is not None and r.error is None else None for r in rubric]
        scores.figures["judge_rubric_invalid"] = sum(p is None for p in parsed)
        for d in DIMENSIONS:
            scores.per_case[f"judge_{d}"] = np.array([p[d] if p else np.nan for p in parsed], dtype=float)
    if inp.human:
        for d in DIMENSIONS:
            values = np.array([inp.human.get((cid, arm), {}).get(d, np.nan) for cid in inp.ids], dtype=float)
            if np.isfinite(values).any():
                scores.per_case[f"human_{d}"] = values


def arm_scores(inp: EvalInputs, arm: str) -> ArmScores:
    """Return the arm's per-case scores, corpus rows and figures (see the module)."""
    calls = _calls(inp, arm)
    answers = [case[0].answer or "" for case in calls]  # repeat 0; a failed call is the empty answer
    scores = ArmScores({}, {}, {}, answers)
    _text_scores(inp, answers, scores.per_case)
    if inp.repeats > 1:
        every = [[c.answer or "" for c in case] for case in calls]
        scores.per_case["agreement"] = np.array([scoring.pairwise_agreement(r) for r in every])
        scores.per_case["similarity"] = np.array([scoring.pairwise_similarity(r) for r in every])
    task = inp.dataset.task
    if task == "regression":
        _regression(inp, answers, scores.per_case, scores.figures)
    if task == "classification":
        _classification(inp, calls, answers, scores)
    if task == "generation":
        refs = [inp.case(cid).reference or "" for cid in inp.ids]
        scores.corpus["bleu"] = scoring.bleu_statistics(answers, refs)
        scores.figures["bleu"] = scoring.bleu_from_statistics(scores.corpus["bleu"])
        scores.figures["corpus_chrf"] = scoring.corpus_chrf(answers, refs)
    _perplexity(inp, arm, scores)
    _code(inp, arm, scores)
    _ratings(inp, arm, scores)
    _operational(calls, scores.per_case, scores.figures)  # last: the tables read quality first
    for name, values in scores.per_case.items():
        if name not in scores.figures and np.isfinite(values).any():
            scores.figures[name] = float(np.nanmean(values))
    return scores


def label_codes(values: list[str], labels: list[str]) -> np.ndarray:
    """Return each value's index in ``labels`` (``len(labels)`` for a value that is none of them)."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(v, len(labels)) for v in values], dtype=float)
