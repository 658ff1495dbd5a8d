"""Drift detection on real text (the BSD-licensed chatterbot-corpus, shipped in its wheel)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from splitwatch.drift import alibi_adapter
from splitwatch.drift.detector import DriftDetector, DriftSettings
from splitwatch.drift.reference import Reference, feature_row, features_of_text
from splitwatch.drift.windows import SlidingWindow


def corpus(language: str) -> list[str]:
    """Return the unique utterances of one language of the chatterbot corpus."""
    import chatterbot_corpus

    base = Path(chatterbot_corpus.__file__).parent / "data" / language
    texts: list[str] = []
    for f in sorted(base.glob("*.yml")):
        for conv in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations", []):
            texts.extend(t for t in conv if isinstance(t, str) and t.strip())
    return sorted(set(texts))


@pytest.fixture(scope="module")
def english() -> tuple[list[str], list[str]]:
    texts = corpus("english")
    random.Random(0).shuffle(texts)
    half = len(texts) // 2
    return texts[:half], texts[half:]  # two disjoint samples of one distribution


@pytest.fixture(scope="module")
def detector(english) -> DriftDetector:
    ref_texts = random.Random(1).choices(english[0], k=3000)
    return DriftDetector(Reference.from_texts(ref_texts, "chatterbot english, half A"))


def window(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    rows, langs = zip(*(feature_row(features_of_text(t)) for t in texts), strict=True)
    return np.asarray(rows), list(langs)


def test_no_drift_on_more_of_the_same(detector, english) -> None:
    rng = random.Random(2)
    alarms = sum(detector.test(*window(rng.choices(english[1], k=500))).detected for _ in range(30))
    # measured: 0 false alarms in 30 windows of 500 prompts (effect thresholds: PSI 0.1, TVD 0.1)
    assert alarms <= 1


def test_length_and_topic_shift_is_detected_in_the_first_window(detector, english) -> None:
    rng = random.Random(3)
    # long multi-sentence prompts: three utterances run together
    shifted = [" ".join(rng.choices(english[1], k=3)) for _ in range(500)]
    report = detector.test(*window(shifted))
    assert report.detected
    assert report.feature("chars").drifted and report.feature("words").drifted
    assert report.feature("chars").effect > 0.25  # a large PSI
    assert not report.feature("language").drifted


def test_language_mix_shift_is_detected(detector, english) -> None:
    rng = random.Random(4)
    foreign = corpus("spanish") + corpus("german")
    mixed = rng.choices(english[1], k=300) + rng.choices(foreign, k=200)  # 40% not English
    report = detector.test(*window(mixed))
    assert report.feature("language").drifted and report.detected
    assert report.language_shares.get("en", 0) < 0.75


def test_a_persisted_reference_gives_the_same_decisions(detector, english, tmp_path: Path) -> None:
    detector.reference.save(tmp_path)
    reloaded = DriftDetector(Reference.load(tmp_path))
    rng = random.Random(5)
    for texts in (rng.choices(english[1], k=300), [" ".join(rng.choices(english[1], k=3)) for _ in range(300)]):
        a, b = detector.test(*window(texts)), reloaded.test(*window(texts))
        assert a.detected == b.detected
        assert [f.p_value for f in a.features] == pytest.approx([f.p_value for f in b.features], rel=1e-9)


def test_classifier_second_opinion_and_cvm(english) -> None:
    rng = random.Random(6)
    # without replacement: duplicated prompts would let the classifier tell the samples apart
    ref = Reference.from_texts(rng.sample(english[0], k=900), "A")
    det = DriftDetector(ref, DriftSettings(test="cvm", classifier=True))
    same_window = window(rng.sample(english[1], k=400))
    same = det.test(*same_window)
    long = det.test(*window([" ".join(rng.choices(english[1], k=3)) for _ in range(400)]))
    assert long.classifier_p is not None and long.classifier_p < 1e-6 and long.classifier_distance > 0.3
    assert long.detected and not same.detected
    # one window, one answer: the classifier's train/test split is seeded
    assert det.test(*same_window).classifier_p == same.classifier_p
    np.random.seed(1)
    assert det.test(*same_window).classifier_p == same.classifier_p


def test_classifier_false_alarm_rate_is_near_its_level(english) -> None:
    rows, _ = window(english[0] + english[1])
    rng = np.random.default_rng(7)
    p_values = []
    for _ in range(40):  # 40 random splits of one pool of prompts: no drift by construction
        order = rng.permutation(len(rows))
        p_values.append(alibi_adapter.classifier(rows[order[:900]], rows[order[900:1300]])[0])
    # measured: 13 alarms in 300 such splits (4.3%) at p < 0.05. Binomial(40, 0.05) gives 7 or more
    # alarms with probability < 1%. (Cross-fitted scores, alibi's n_folds, alarmed in 12.5% of 200.)
    assert sum(p < 0.05 for p in p_values) <= 6
    caller_state = np.random.get_state()
    alibi_adapter.classifier(rows[:900], rows[900:1300])
    after = np.random.get_state()  # the caller's global random state is left as it was
    assert np.array_equal(after[1], caller_state[1]) and after[2] == caller_state[2]


def test_sliding_window_schedule() -> None:
    w = SlidingWindow(size=4, step=2)
    due = [w.add([float(i)] * 10, "en") for i in range(10)]
    assert due == [False, False, False, True, False, True, False, True, False, True]
    rows, langs = w.contents()
    assert rows[:, 0].tolist() == [6.0, 7.0, 8.0, 9.0] and langs == ["en"] * 4
