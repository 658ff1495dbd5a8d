"""The two drift engines on the same windows: scipy (the default) and alibi-detect give the same p-values
(to 1e-9) and the same alarms.

Marked ``alibi``: these run in the environment that has alibi-detect (``make test-alibi``, which
``make test`` runs second: alibi-detect holds numpy below 2, so it has its own virtualenv).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest

from splitwatch.drift.detector import DriftDetector, DriftSettings
from splitwatch.drift.engines import engine
from splitwatch.drift.reference import Reference

from .test_drift import corpus, window

pytestmark = pytest.mark.alibi
TOLERANCE = 1e-9  # absolute, on p-values (both engines keep the per-feature ones at float32 precision)


def _windows() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Return named (reference, window) pairs: no drift, shifts, ties, heavy tails, small samples."""
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, (800, 4))
    counts = rng.poisson(3, (600, 3)).astype(float)  # integer features: ties everywhere
    return [
        ("same distribution", ref, rng.normal(0, 1, (400, 4))),
        ("mean shift", ref, rng.normal(0.15, 1, (400, 4))),
        ("scale change", ref, rng.normal(0, 1.3, (400, 4))),
        ("counts with ties", counts, rng.poisson(3.4, (300, 3)).astype(float)),
        ("heavy tails", rng.standard_t(2, (500, 2)), rng.standard_t(2, (500, 2)) * 1.1),
        ("small window", ref[:, :2], rng.normal(0.3, 1, (60, 2))),
    ]


@pytest.mark.parametrize("test", ["ks", "cvm"])
def test_continuous_tests_give_the_same_p_values(test: str) -> None:
    for name, ref, win in _windows():
        a = engine("scipy").univariate(ref, win, test)
        b = engine("alibi").univariate(ref, win, test)
        assert np.max(np.abs(a.p_values - b.p_values)) <= TOLERANCE, name
        assert np.max(np.abs(a.distances - b.distances)) <= TOLERANCE, name
        assert ((a.p_values < 0.05) == (b.p_values < 0.05)).all(), name
    assert engine("scipy").univariate(*_windows()[1][1:], test).p_values.min() < 1e-3  # the shift is seen


def test_chi_square_gives_the_same_p_values_yates_included() -> None:
    rng = np.random.default_rng(5)
    for categories, shift in ((2, 0.0), (2, 0.08), (5, 0.0), (5, 0.1), (12, 0.05)):
        p_ref = rng.dirichlet(np.ones(categories))
        p_win = np.clip(p_ref + shift * rng.normal(size=categories), 0.01, None)
        ref = rng.choice(categories, size=(700, 3), p=p_ref)
        win = rng.choice(categories, size=(350, 3), p=p_win / p_win.sum())
        a = engine("scipy").categorical_many(ref, win, [categories] * 3)
        b = engine("alibi").categorical_many(ref, win, [categories] * 3)
        assert np.max(np.abs(a - b)) <= TOLERANCE, (categories, shift, a, b)


def test_the_domain_classifier_gives_the_same_p_value() -> None:
    for name, ref, win in _windows()[:4]:
        a = engine("scipy").classifier(ref, win, seed=2)
        b = engine("alibi").classifier(ref, win, seed=2)
        assert abs(a[0] - b[0]) <= TOLERANCE and abs(a[1] - b[1]) <= TOLERANCE, (name, a, b)


def test_the_detector_raises_the_same_alarms_on_real_text() -> None:
    english = corpus("english")
    random.Random(0).shuffle(english)
    half = len(english) // 2
    reference = Reference.from_texts(english[:half], "chatterbot english, half A")
    rng = random.Random(4)
    spanish = corpus("spanish")
    windows = [window(rng.sample(english[half:], 300)),  # no drift
               window(rng.sample(english[half:], 200) + rng.sample(spanish, 100)),  # a third Spanish
               window([t + "?" for t in rng.sample(english[half:], 300)])]  # every prompt a question
    detectors = {name: DriftDetector(reference, DriftSettings(classifier=True, engine=name))
                 for name in ("scipy", "alibi")}
    alarms = []
    for w in windows:
        a, b = (detectors[name].test(*w) for name in ("scipy", "alibi"))
        assert a.detected == b.detected
        assert [f.drifted for f in a.features] == [f.drifted for f in b.features]
        for fa, fb in zip(a.features, b.features, strict=True):
            assert abs(fa.p_value - fb.p_value) <= TOLERANCE, fa.feature
            assert abs(fa.p_adjusted - fb.p_adjusted) <= TOLERANCE, fa.feature
        assert abs(a.classifier_p - b.classifier_p) <= TOLERANCE  # type: ignore[operator]
        alarms.append(a.detected)
    assert alarms == [False, True, True]  # the comparison covers both outcomes


def test_the_alibi_engine_imports_without_the_transformers_advisory() -> None:
    # issue 25, finding 7: alibi-detect imports transformers, which printed "None of PyTorch, TensorFlow
    # >= 2.0, or Flax have been found" at the demo's start; a detector still runs
    code = ("import numpy as np\nfrom splitwatch.drift.alibi_adapter import univariate\n"
            "r = univariate(np.zeros((50, 1)), np.ones((50, 1)))\nprint(bool(r.p_values[0] < 0.05))")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"
    assert "PyTorch" not in res.stderr and "Flax" not in res.stderr, res.stderr
