"""Tests one window of exposures against the reference: every prompt feature by the test of its
kind (drift/columns.py), the language mix, the topic mix (drift/topics.py), and optionally a
domain classifier as a second opinion.

Multiple testing: the raw p-values of all columns are adjusted together, Benjamini-Hochberg by
default (``correction``). A column drifts when its adjusted p-value is below ``p_val`` *and* its
effect reaches the minimum of its kind (PSI ``min_psi`` for continuous features, total variation
``min_tvd`` for binary features and counts, ``min_language_tvd`` for the language mix,
``min_topic_excess`` for the topic: word weight moved beyond chance, drift/topics.py): with
thousands of prompts per window every tiny difference is significant, and an alarm must mean
something.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from splitwatch.service.features.prompt import PROMPT_FEATURES, FeatureSpec

from .columns import (
    Column,
    ColumnReport,
    ExternalTest,
    describe_mean,
    describe_mean_share,
    describe_median,
    describe_nonzero,
    describe_shares,
    test_columns,
)
from .engines import engine
from .reference import Reference
from .topics import reference_mass, topic_test, word_mass

OTHER = "other"
MIN_LANGUAGE_SHARE = 0.01


@dataclass(frozen=True)
class DriftSettings:
    """How windows are tested."""

    test: Literal["ks", "cvm"] = "ks"
    p_val: float = 0.05
    correction: Literal["bh", "holm", "bonferroni"] = "bh"
    min_psi: float = 0.1
    min_tvd: float = 0.1
    min_language_tvd: float = 0.1
    min_topic_excess: float = 0.04
    classifier: bool = False
    engine: Literal["scipy", "alibi"] = "scipy"  # which library computes the tests (drift.engines)


@dataclass
class DriftReport(ColumnReport):
    """The verdict on one window of prompts."""

    classifier_p: float | None = None
    classifier_distance: float | None = None
    language_shares: dict[str, float] = field(default_factory=dict)  # every language seen, unpooled


def _describer(spec: FeatureSpec):  # type: ignore[no-untyped-def]
    if spec.kind == "binary" or (spec.kind == "count" and spec.label.startswith("prompts with")):
        return describe_nonzero(spec.label, spec.unit if spec.kind == "binary" else "of prompts")
    if spec.kind == "count":
        return describe_mean(spec.label, spec.unit)
    if spec.unit.startswith("of "):
        return describe_mean_share(spec.label, spec.unit)
    return describe_median(spec.label, spec.unit)


def _column_values(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
    """Return a feature's column: values (continuous), 0/1 codes (binary), counts capped (count)."""
    if spec.kind == "binary":
        return (values > 0).astype(np.int64)
    if spec.kind == "count":
        return np.clip(values, 0, spec.cap).astype(np.int64)
    return values


class DriftDetector:
    """Holds a reference and tests windows against it."""

    def __init__(self, reference: Reference, settings: DriftSettings | None = None) -> None:
        if reference.size < 50:
            raise ValueError(f"a reference needs at least 50 rows, got {reference.size}")
        self.reference = reference
        s = self.settings = settings or DriftSettings()
        # Languages with at least 1% of the reference are the test's categories; rarer ones (and the
        # identifier's guesses on very short prompts) are pooled as "other" so that the chi-square has
        # counts. The description and the shares use every language, unpooled.
        shares = {lang: n / reference.size for lang, n in Counter(reference.languages).items()}
        self._reference_language_shares = shares
        self.categories = [*sorted(lang for lang, share in shares.items() if share >= MIN_LANGUAGE_SHARE), OTHER]
        self._codes = {c: i for i, c in enumerate(self.categories)}
        self._topic_reference = reference_mass(reference.topics)
        self.columns: list[Column] = []
        for spec in PROMPT_FEATURES:
            if spec.kind == "continuous":
                self.columns.append(Column(spec.name, "continuous", spec.group, s.min_psi, _describer(spec)))
            else:
                self.columns.append(Column(spec.name, "categorical", spec.group, s.min_tvd, _describer(spec),
                                           2 if spec.kind == "binary" else spec.cap + 1))
        self.columns.append(Column("language", "categorical", "language", s.min_language_tvd,
                                   self._describe_language, len(self.categories)))
        self.columns.append(Column("topic", "external", "topic", s.min_topic_excess, lambda r, w: ""))
        self._reference_columns = self._columns(reference.numeric, reference.languages)
        self._window_language_shares: dict[str, float] = {}  # of the window being tested (unpooled)

    def _encode(self, languages: Sequence[str]) -> np.ndarray:
        other = self._codes[OTHER]
        return np.asarray([self._codes.get(lang, other) for lang in languages], dtype=np.int64)

    def _columns(self, numeric: np.ndarray, languages: Sequence[str]) -> dict[str, np.ndarray]:
        cols = {spec.name: _column_values(spec, numeric[:, i]) for i, spec in enumerate(PROMPT_FEATURES)}
        cols["language"] = self._encode(languages)
        return cols

    def _describe_language(self, _ref: np.ndarray, _win: np.ndarray) -> str:
        # unpooled: a language under 1% of the reference (pooled as "other" for the test) is named
        ref, win = self._reference_language_shares, self._window_language_shares
        names = sorted(set(ref) | set(win))
        return describe_shares("language", names, np.asarray([ref.get(n, 0.0) for n in names]),
                               np.asarray([win.get(n, 0.0) for n in names]), "of prompts")

    def test(self, numeric: np.ndarray, languages: Sequence[str], topics: np.ndarray | None = None) -> DriftReport:
        """Return the drift verdict of a window: feature rows, their languages and topic sketches."""
        s = self.settings
        if numeric.ndim != 2 or numeric.shape[0] < 2 or numeric.shape[1] != len(PROMPT_FEATURES):
            raise ValueError(f"a window needs >= 2 rows of {len(PROMPT_FEATURES)} features")
        self._window_language_shares = {lang: n / len(languages) for lang, n in sorted(Counter(languages).items())}
        window = self._columns(numeric, languages)
        external = {}
        topic = topic_test(self._topic_reference, word_mass(topics)) if topics is not None else None
        if topic is not None:
            external["topic"] = ExternalTest("permutation", topic.p_value, topic.tvd, topic.excess, topic.describe())
        base = test_columns(self.columns, self._reference_columns, window, s.test, s.p_val, s.correction, external,
                            s.engine)
        report = DriftReport(base.window_size, base.features, base.groups,
                             language_shares=self._window_language_shares)
        if s.classifier:
            report.classifier_p, report.classifier_distance = engine(s.engine).classifier(self.reference.numeric,
                                                                                          numeric, s.p_val)
        return report
