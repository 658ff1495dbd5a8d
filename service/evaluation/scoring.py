"""Per-case scores and corpus statistics of an arm's answers, with the well-kept libraries:
sacrebleu (BLEU, chrF), rouge-score (ROUGE-L), scikit-learn (the confusion matrix; per-class figures in
:mod:`.probabilities`).

A call that failed has no answer: it scores as the empty answer (wrong, 0 similarity), so an arm
that fails more is not flattered by scoring only its successes; errors are also counted apart.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from ..features.answer_comparison import chrf, chrf_metric

OTHER_LABEL = "(other)"
"""The predicted class of an answer that is none of the dataset's labels."""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Return ``text`` lower-cased, without punctuation, articles or repeated whitespace (the SQuAD
    normalisation), for normalised exact match and label matching."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(answer: str, expected: str) -> float:
    """Return 1.0 when the answer equals the expected text after stripping surrounding whitespace."""
    return float(answer.strip() == expected.strip())


def normalised_exact_match(answer: str, expected: str) -> float:
    """Return 1.0 when the answer equals the expected text after :func:`normalise`."""
    return float(normalise(answer) == normalise(expected))


def predicted_label(answer: str, labels: Sequence[str]) -> str:
    """Return the label the answer names (compared after :func:`normalise`), or :data:`OTHER_LABEL`."""
    by_norm = _label_index(tuple(labels))
    return by_norm.get(normalise(answer), OTHER_LABEL)


@cache
def _label_index(labels: tuple[str, ...]) -> dict[str, str]:
    return {normalise(label): label for label in labels}


@cache
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU()


@cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answer: str, reference: str) -> float:
    """Return rouge-score's ROUGE-L F-measure (0-1, Porter stemming) of the answer against the reference."""
    return float(_rouge().score(reference, answer)["rougeL"].fmeasure)


def bleu_statistics(answers: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Return sacrebleu's BLEU sufficient statistics, one row per case (lengths and n-gram counts).

    sacrebleu has no public per-segment statistics: ``_extract_corpus_statistics`` is what its own
    significance module (``sacrebleu.significance``) resamples, hence sacrebleu is pinned below 3.
    """
    return np.asarray(_bleu()._extract_corpus_statistics(list(answers), [list(references)]), dtype=float)


def bleu_from_statistics(rows: np.ndarray) -> float:
    """Return corpus BLEU (0-100) from summed per-case statistics (``rows`` summed over its first axis)."""
    return float(_bleu()._compute_score_from_stats(rows.sum(axis=0).tolist()).score)


def corpus_bleu(answers: Sequence[str], references: Sequence[str]) -> float:
    """Return sacrebleu's corpus BLEU (0-100)."""
    return float(_bleu().corpus_score(list(answers), [list(references)]).score)


def corpus_chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """Return sacrebleu's corpus chrF (0-100)."""
    return float(chrf_metric().corpus_score(list(answers), [list(references)]).score)


def confusion(expected: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Return scikit-learn's confusion matrix: rows the expected labels, columns the predicted ones
    (the labels, then :data:`OTHER_LABEL`)."""
    from sklearn.metrics import confusion_matrix

    cols = [*labels, OTHER_LABEL]
    matrix = confusion_matrix(list(expected), list(predicted), labels=cols)
    return matrix[: len(labels)].tolist()


def pairwise_agreement(answers: Sequence[str]) -> float:
    """Return the share of pairs of repeats whose answers are identical (1.0 for one answer)."""
    n = len(answers)
    if n < 2:
        return 1.0
    same = sum(answers[i] == answers[j] for i in range(n) for j in range(i + 1, n))
    return same / (n * (n - 1) / 2)


def pairwise_similarity(answers: Sequence[str]) -> float:
    """Return the mean chrF (0-100) over the pairs of repeats, each pair scored both ways (chrF is
    not symmetric)."""
    n = len(answers)
    if n < 2:
        return 100.0
    scores = [chrf(answers[i], answers[j]) for i in range(n) for j in range(n) if i != j]
    return float(np.mean(scores))
