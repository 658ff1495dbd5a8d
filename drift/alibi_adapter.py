"""The ``alibi`` drift engine (:mod:`.engines`): the only module that talks to alibi-detect.

alibi-detect 0.12+ is under the Business Source License 1.1: production use needs a licence from
Seldon (see README). Only its numpy/scipy/sklearn detectors are used (no torch, no TensorFlow).
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np

from .engines import UnivariateResult

# alibi-detect imports transformers, whose import prints "None of PyTorch, TensorFlow >= 2.0, or Flax have
# been found": an advisory that is true and beside the point (only numpy/scipy/sklearn detectors run here),
# and that alarms a user at the demo's start. A user who set the variable keeps their value.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def univariate(reference: np.ndarray, window: np.ndarray, test: str = "ks", p_val: float = 0.05) -> UnivariateResult:
    """Return the per-feature Kolmogorov-Smirnov ("ks") or Cramér-von Mises ("cvm") tests of a window
    (uncorrected p-values: the caller corrects across every column)."""
    from alibi_detect.cd import CVMDrift, KSDrift

    cls = {"ks": KSDrift, "cvm": CVMDrift}[test]
    detector = cls(reference.astype(np.float32), p_val=p_val)
    out = detector.predict(window.astype(np.float32), drift_type="feature", return_p_val=True,
                           return_distance=True)["data"]
    return UnivariateResult(np.asarray(out["p_val"], dtype=float), np.asarray(out["distance"], dtype=float))


def categorical_many(reference: np.ndarray, window: np.ndarray, categories: list[int],
                     p_val: float = 0.05) -> np.ndarray:
    """Return the chi-square p-value of each column of categorical codes (column j coded 0..categories[j]-1).

    One detector for all columns: alibi's per-detector overhead is paid once. Every category of a
    column must occur in the reference or the window (remap codes to the categories seen first).
    """
    from alibi_detect.cd import ChiSquareDrift

    detector = ChiSquareDrift(reference, p_val=p_val, categories_per_feature=dict(enumerate(categories)))
    out = detector.predict(window, drift_type="feature", return_p_val=True)["data"]
    return np.asarray(out["p_val"], dtype=float).ravel()


def classifier(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Return (p-value, distance) of a domain classifier telling reference rows from window rows.

    sklearn backend, one seeded 75/25 train/test split; the p-value is alibi's Kolmogorov-Smirnov test
    of the held-out scores, the distance its statistic. A held-out split, not alibi's ``n_folds``
    cross-fitting: the KS test of cross-fitted scores ignores that every row trains the other folds'
    models, and rejected 12.5% of 200 same-distribution splits of the test corpus at p < 0.05, against
    4.3% of 300 for the held-out split (docs/drift.md). alibi draws that split from numpy's global
    random state, so the call seeds it and puts the caller's state back: the same window always gets
    the same answer.
    """
    from alibi_detect.cd import ClassifierDrift
    from sklearn.ensemble import HistGradientBoostingClassifier

    _quiet_warm_start_warning()
    model = HistGradientBoostingClassifier(max_iter=50, random_state=seed)
    detector = ClassifierDrift(reference.astype(np.float32), model=model, backend="sklearn", p_val=p_val,
                               preds_type="probs", binarize_preds=False, train_size=0.75)
    caller_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            # scipy's ks_2samp says on every call that it fell back from the exact to the asymptotic
            # distribution: expected at these sample sizes
            warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
            out = detector.predict(window.astype(np.float32))["data"]
    finally:
        np.random.set_state(caller_state)
    return float(out["p_val"]), float(out["distance"])


class _DropWarmStartNotice(logging.Filter):
    """Drop alibi's warning, repeated on every fit, that retraining from scratch turns warm_start off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sets automatically the parameter `warm_start=False`" not in record.getMessage()


def _quiet_warm_start_warning() -> None:
    log = logging.getLogger("alibi_detect.cd.sklearn.classifier")
    if not any(isinstance(f, _DropWarmStartNotice) for f in log.filters):
        log.addFilter(_DropWarmStartNotice())
