"""The only module that talks to alibi-detect: swap this file to change the drift engine.

alibi-detect 0.12+ is under the Business Source License 1.1: production use needs a licence from
Seldon (see README). Only its numpy/scipy/sklearn detectors are used (no torch, no TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnivariateResult:
    """Per-feature p-values and test distances, and which features drift after the correction."""

    p_values: np.ndarray
    distances: np.ndarray
    drifted: np.ndarray
    threshold: float


def univariate(reference: np.ndarray, window: np.ndarray, test: str = "ks", p_val: float = 0.05,
               correction: str = "fdr") -> UnivariateResult:
    """Return the per-feature Kolmogorov-Smirnov ("ks") or Cramér-von Mises ("cvm") tests of a window.

    ``correction`` across features: "bonferroni" (family-wise) or "fdr" (Benjamini-Hochberg).
    """
    from alibi_detect.cd import CVMDrift, KSDrift

    cls = {"ks": KSDrift, "cvm": CVMDrift}[test]
    detector = cls(reference.astype(np.float32), p_val=p_val, correction=correction)
    out = detector.predict(window.astype(np.float32), drift_type="feature", return_p_val=True,
                           return_distance=True)["data"]
    return UnivariateResult(np.asarray(out["p_val"], dtype=float), np.asarray(out["distance"], dtype=float),
                            np.asarray(out["is_drift"], dtype=bool), float(out["threshold"]))


def categorical(reference: np.ndarray, window: np.ndarray, n_categories: int, p_val: float = 0.05) -> float:
    """Return the chi-square test's p-value for a categorical feature coded 0..n_categories-1."""
    from alibi_detect.cd import ChiSquareDrift

    detector = ChiSquareDrift(reference.reshape(-1, 1), p_val=p_val, categories_per_feature={0: n_categories})
    out = detector.predict(window.reshape(-1, 1), drift_type="feature", return_p_val=True)["data"]
    return float(np.asarray(out["p_val"]).ravel()[0])


def classifier(reference: np.ndarray, window: np.ndarray, p_val: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Return (p-value, distance) of a domain classifier telling reference rows from window rows.

    sklearn backend; the distance is how far the held-out AUC-like score is above chance.
    """
    from alibi_detect.cd import ClassifierDrift
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=50, random_state=seed)
    detector = ClassifierDrift(reference.astype(np.float32), model=model, backend="sklearn", p_val=p_val,
                               preds_type="probs", binarize_preds=False, train_size=0.75, seed=seed)
    out = detector.predict(window.astype(np.float32))["data"]
    return float(out["p_val"]), float(out["distance"])
