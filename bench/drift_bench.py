"""Time per drift window: 1,000 prompts against a 5,000-prompt reference, per detector.

Real text (chatterbot-corpus English); features computed once, outside the timing, as the
proxy computes them per request. Target: under 50 ms for the univariate tests.
Usage: python bench/drift_bench.py
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.drift import alibi_adapter
from splitwatch.drift.detector import DriftDetector, DriftSettings
from splitwatch.drift.reference import Reference, feature_row, features_of_text
from tests.test_drift import corpus


def best_ms(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Return the best wall time of ``fn()`` over ``repeat`` runs, in ms (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def main() -> None:
    texts = corpus("english")
    rng = random.Random(0)
    reference = Reference.from_texts(rng.choices(texts, k=5000), "bench")
    rows, langs = zip(*(feature_row(features_of_text(t)) for t in rng.choices(texts, k=1000)), strict=True)
    window, languages = np.asarray(rows), list(langs)
    det = DriftDetector(reference)
    codes = det._encode(languages)
    results = {
        "KS, 10 numeric features (alibi-detect)": best_ms(lambda: alibi_adapter.univariate(reference.numeric, window)),
        "Cramér-von Mises, 10 numeric features": best_ms(
            lambda: alibi_adapter.univariate(reference.numeric, window, test="cvm")),
        "chi-square, language mix": best_ms(
            lambda: alibi_adapter.categorical(det._ref_codes, codes, len(det.categories))),
        "whole window verdict (KS + chi-square + PSI/TVD + correction)": best_ms(lambda: det.test(window, languages)),
        "domain classifier (sklearn, second opinion)": best_ms(
            lambda: DriftDetector(reference, DriftSettings(classifier=True)).test(window, languages), repeat=2),
    }
    print("| detector (1,000 prompts vs 5,000 reference) | ms per window |\n|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
