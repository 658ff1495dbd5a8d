"""A classifier's probabilities: per-class precision, recall and F1, AUC-ROC and calibration.

The probability of each label comes from the answer's first token's ``top_logprobs`` (asked for
with ``--logprobs``): a top token gives its probability to the labels it begins (after
normalisation; shared equally when it begins several), and the label probabilities are then
renormalised to sum to one. A case whose top tokens begin no label gets uniform probabilities and
is counted (``probability_unmatched``). AUC-ROC is scikit-learn's one-vs-rest macro average
(binary: the second label's probability); calibration is the multi-class Brier score (per case,
so it is paired-tested) and the expected calibration error of the top label (10 equal-width bins).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .scoring import normalise

ECE_BINS = 10


def label_probabilities(top_logprobs: Mapping[str, float] | None, labels: Sequence[str]) -> np.ndarray | None:
    """Return the probability of each label from the first token's top log-probabilities (None when the
    top tokens begin no label, or there are none)."""
    if not top_logprobs:
        return None
    norm_labels = [normalise(label) for label in labels]
    mass = np.zeros(len(labels))
    for token, logprob in top_logprobs.items():
        t = normalise(token)
        if not t:
            continue
        begun = [i for i, lab in enumerate(norm_labels) if lab.startswith(t)]
        for i in begun:
            mass[i] += math.exp(logprob) / len(begun)
    total = mass.sum()
    # rounded to 1e-9: exp(log p) and the renormalisation leave ulp-sized noise, which would break the ties
    # AUC-ROC counts as ties (labels given the same probability) into arbitrary orders
    return np.round(mass / total, 9) if total > 0 else None


def per_class(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Return per-label precision, recall, F1 and support, and their micro and macro averages (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(list(truth), list(predicted), labels=list(labels),
                                                 zero_division=0)
    out: dict[str, Any] = {"labels": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                            "support": int(s[i])} for i, lab in enumerate(labels)}}
    for avg in ("micro", "macro"):
        pa, ra, fa, _ = precision_recall_fscore_support(list(truth), list(predicted), labels=list(labels),
                                                        average=avg, zero_division=0)
        out[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    return out


def brier_per_case(truth_codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Return each case's multi-class Brier score: the squared distance of its probabilities from the
    one-hot truth (0 is perfect, 2 the worst)."""
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(truth_codes)), truth_codes.astype(int)] = 1.0
    return ((probs - onehot) ** 2).sum(axis=1)


def expected_calibration_error(truth_codes: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Return the top label's expected calibration error: the case-weighted mean gap between confidence
    and accuracy over ``bins`` equal-width confidence bins."""
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == truth_codes).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(ece)


def auc_roc(truth_codes: np.ndarray, probs: np.ndarray) -> float | None:
    """Return scikit-learn's AUC-ROC (binary: of the second label; else one-vs-rest macro), or None when
    a label present in the truth has no case (AUC is undefined)."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    present = np.unique(truth_codes)
    if present.size < 2:
        return None
    if k == 2:
        return float(roc_auc_score(truth_codes, probs[:, 1]))
    if present.size < k:
        return None
    return float(roc_auc_score(truth_codes, probs, multi_class="ovr", average="macro", labels=list(range(k))))
