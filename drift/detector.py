"""Tests one window of exposures against the reference: per-feature univariate tests, a chi-square
test of the language mix, effect sizes, and optionally a domain classifier as a second opinion.

Multiple testing: the raw p-values of all univariate tests (each numeric feature and the
language mix) are adjusted together, Benjamini-Hochberg by default (``correction``). A feature
drifts when its adjusted p-value is below ``p_val`` *and* its effect is at least the configured
minimum (PSI for numeric features, total variation distance for the language mix): with
thousands of prompts per window every tiny difference is significant, and an alarm must mean
something.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from splitwatch.service.features import NUMERIC_FEATURES
from splitwatch.stats.multiple_testing import adjust_p_values

from . import alibi_adapter
from .effect import psi, total_variation
from .reference import Reference

OTHER = "other"
MIN_LANGUAGE_SHARE = 0.01


@dataclass(frozen=True)
class DriftSettings:
    """How windows are tested."""

    test: Literal["ks", "cvm"] = "ks"
    p_val: float = 0.05
    correction: Literal["bh", "holm", "bonferroni"] = "bh"
    min_psi: float = 0.1
    min_language_tvd: float = 0.1
    classifier: bool = False


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test in one window."""

    feature: str
    p_value: float
    p_adjusted: float
    statistic: float  # KS distance (or Cramér-von Mises statistic)
    effect: float  # PSI for numeric features, total variation distance for the language mix
    drifted: bool


@dataclass
class DriftReport:
    """The verdict on one window."""

    window_size: int
    features: list[FeatureDrift]
    detected: bool
    classifier_p: float | None = None
    classifier_distance: float | None = None
    language_shares: dict[str, float] = field(default_factory=dict)

    def feature(self, name: str) -> FeatureDrift:
        """Return the test of one feature (``language`` for the language mix)."""
        return next(f for f in self.features if f.feature == name)


class DriftDetector:
    """Holds a reference and tests windows against it."""

    def __init__(self, reference: Reference, settings: DriftSettings | None = None) -> None:
        if reference.size < 50:
            raise ValueError(f"a reference needs at least 50 rows, got {reference.size}")
        self.reference = reference
        self.settings = settings or DriftSettings()
        # Languages with at least 1% of the reference are categories; rarer ones (and the identifier's
        # guesses on very short prompts) are pooled as "other", so the chi-square test has counts.
        shares = {lang: reference.languages.count(lang) / reference.size for lang in set(reference.languages)}
        self.categories = [*sorted(lang for lang, share in shares.items() if share >= MIN_LANGUAGE_SHARE), OTHER]
        self._codes = {c: i for i, c in enumerate(self.categories)}
        self._ref_codes = self._encode(reference.languages)

    def _encode(self, languages: Sequence[str]) -> np.ndarray:
        other = self._codes[OTHER]
        return np.asarray([self._codes.get(lang, other) for lang in languages], dtype=np.int64)

    def test(self, numeric: np.ndarray, languages: Sequence[str]) -> DriftReport:
        """Return the drift verdict of a window of feature rows and their languages."""
        s = self.settings
        if numeric.shape[0] < 2 or numeric.shape[1] != len(NUMERIC_FEATURES):
            raise ValueError(f"a window needs >= 2 rows of {len(NUMERIC_FEATURES)} features")
        uni = alibi_adapter.univariate(self.reference.numeric, numeric, s.test, s.p_val, "bonferroni")
        codes = self._encode(languages)
        # only the categories seen in either sample: an empty column makes the chi-square undefined
        present = np.unique(np.concatenate([self._ref_codes, codes]))
        remap = np.full(len(self.categories), -1, dtype=np.int64)
        remap[present] = np.arange(present.size)
        lang_p = (alibi_adapter.categorical(remap[self._ref_codes], remap[codes], int(present.size), s.p_val)
                  if present.size > 1 else 1.0)
        raw = [*uni.p_values.tolist(), lang_p]
        adjusted = adjust_p_values(raw, s.correction)
        features = []
        for i, name in enumerate(NUMERIC_FEATURES):
            effect = psi(self.reference.numeric[:, i], numeric[:, i])
            features.append(FeatureDrift(name, raw[i], adjusted[i], float(uni.distances[i]), effect,
                                         adjusted[i] < s.p_val and effect >= s.min_psi))
        tvd = total_variation(self._ref_codes, codes, len(self.categories))
        features.append(FeatureDrift("language", lang_p, adjusted[-1], tvd, tvd,
                                     adjusted[-1] < s.p_val and tvd >= s.min_language_tvd))
        report = DriftReport(int(numeric.shape[0]), features, any(f.drifted for f in features))
        counts = np.bincount(codes, minlength=len(self.categories)) / len(codes)
        report.language_shares = {c: float(v) for c, v in zip(self.categories, counts, strict=True) if v > 0}
        if s.classifier:
            report.classifier_p, report.classifier_distance = alibi_adapter.classifier(self.reference.numeric,
                                                                                       numeric, s.p_val)
        return report
