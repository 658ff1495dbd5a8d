"""The default drift engine: the detectors' statistics computed with scipy (and scikit-learn for the domain
classifier), under scipy's and scikit-learn's BSD licences.

The same computations as alibi-detect's detectors (:mod:`.alibi_adapter`), step for step, so that the two
engines give the same p-values on the same windows (tests/test_drift_engines.py):

- Kolmogorov-Smirnov: ``ks_2samp`` per feature, two-sided, asymptotic distribution (alibi's ``KSDrift``);
- Cramér-von Mises: ``cramervonmises_2samp`` per feature (alibi's ``CVMDrift``);
- chi-square: ``chi2_contingency`` of the reference's and the window's counts of each category, Yates'
  correction for one degree of freedom as scipy applies it by default (alibi's ``ChiSquareDrift``);
- domain classifier: a seeded shuffle of reference and window rows, 75% to train a histogram gradient
  boosting classifier, and a one-sided KS test of its probabilities on the other 25% (alibi's
  ``ClassifierDrift`` with the sklearn backend; see :func:`classifier`).

Features are tested as float32, and the per-feature p-values kept at float32 precision (7 significant
digits), as alibi returns them: the engines then agree exactly, alarms included; 7 digits are far finer
than any threshold the detector applies.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2_contingency, cramervonmises_2samp, ks_2samp

from .engines import UnivariateResult

TRAIN_SHARE = 0.75


def univariate(reference: np.ndarray, window: np.ndarray, test: str = "ks", p_val: float = 0.05) -> UnivariateResult:
    """Return the per-feature Kolmogorov-Smirnov ("ks") or Cramér-von Mises ("cvm") tests of a window
    (columns are features; ``p_val`` is kept for the engines' common signature: the caller corrects)."""
    if test not in ("ks", "cvm"):
        raise ValueError(f"unknown test {test!r}: ks or cvm")
    ref, win = reference.astype(np.float32), window.astype(np.float32)
    p_values = np.zeros(ref.shape[1], dtype=np.float32)
    distances = np.zeros_like(p_values)
    for f in range(ref.shape[1]):
        if test == "ks":
            distances[f], p_values[f] = ks_2samp(ref[:, f], win[:, f], alternative="two-sided", method="asymp")
        else:
            result = cramervonmises_2samp(ref[:, f], win[:, f], method="auto")
            p_values[f], distances[f] = result.pvalue, result.statistic
    return UnivariateResult(p_values.astype(float), distances.astype(float))


def categorical_many(reference: np.ndarray, window: np.ndarray, categories: list[int],
                     p_val: float = 0.05) -> np.ndarray:
    """Return the chi-square p-value of each column of categorical codes (column j coded 0..categories[j]-1;
    every category occurs in the reference or the window)."""
    ref, win = reference.reshape(len(reference), -1), window.reshape(len(window), -1)
    out = np.zeros(ref.shape[1], dtype=np.float32)
    for j, n in enumerate(categories):
        table = np.vstack([np.bincount(ref[:, j].astype(np.int64), minlength=n)[:n],
                           np.bincount(win[:, j].astype(np.int64), minlength=n)[:n]])
        seen = table.sum(axis=0) > 0  # the categories of either sample, as alibi counts them
        out[j] = chi2_contingency(table[:, seen])[1]
    return out.astype(float)


def classifier(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Return (p-value, distance) of a domain classifier telling reference rows from window rows.

    Reference and window rows are stacked (labels 0 and 1) and shuffled by a generator seeded with
    ``seed`` (numpy's legacy one, as alibi draws from it: the same split); the first 75% train the
    classifier, the rest are scored, and the p-value is the one-sided KS test that the window's held-out
    probabilities are higher than the reference's (the distance its statistic). One held-out split,
    not cross-fitting: docs/drift.md says why. The same window always gets the same answer.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.concatenate([reference, window]).astype(np.float32)
    y = np.concatenate([np.zeros(len(reference)), np.ones(len(window))]).astype(np.int64)
    order = np.random.RandomState(seed).choice(np.arange(len(x)), size=len(x), replace=False)
    n_train = int(len(x) * TRAIN_SHARE)
    train, held_out = order[:n_train], order[n_train:]
    model = HistGradientBoostingClassifier(max_iter=50, random_state=seed).fit(x[train], y[train])
    probs = model.predict_proba(x[held_out])[:, 1]
    labels = y[held_out]
    distance, p_value = ks_2samp(probs[labels == 0], probs[labels == 1], alternative="greater")
    return float(p_value), float(distance)
