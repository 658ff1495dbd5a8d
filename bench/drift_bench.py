"""Time per drift window, and the event shipper's cost per prompt and per answer.

1. One window of 1,000 prompts against a 5,000-prompt reference (chatterbot-corpus English), per
   test and for the whole verdict, on a quiet window (more of the same) and a drifting one (40%
   Spanish and German). Features are computed once, outside the timing, as the proxy and its
   shipper compute them per request. Target: the whole verdict under 50 ms.
2. The shipper's features per prompt (language, topic sketch, code, questions, counts) on short and
   long prompts, next to the request path's features measured in the same run (the baseline).
3. The shipper's answer features per answer (JSON text and the head of an SSE stream).

Usage: python bench/drift_bench.py
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitwatch.drift import alibi_adapter
from splitwatch.drift.columns import _chi_square
from splitwatch.drift.detector import DriftDetector, DriftSettings
from splitwatch.drift.reference import Reference, feature_row, features_of_text
from splitwatch.drift.topics import reference_mass, topic_test, word_mass
from splitwatch.service.features.answer import answer_features
from splitwatch.service.features.prompt import PROMPT_FEATURES, prompt_features, shipper_features
from tests.test_drift import corpus


def best_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    """Return the best wall time of ``fn()`` over ``repeat`` runs, in ms (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000


def per_item_us(fn: Callable[[str], object], items: list[str]) -> float:
    """Return the mean time of ``fn(item)`` over the items, in µs (best of 3 passes)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t0) / len(items))
    return best * 1e6


def window_of(texts: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    rows = [feature_row(features_of_text(t)) for t in texts]
    return (np.asarray([r[0] for r in rows]), [r[1] for r in rows], np.asarray([r[2] for r in rows], np.float32))


def main() -> None:
    texts = corpus("english")
    rng = random.Random(0)
    reference = Reference.from_texts(rng.choices(texts, k=5000), "bench")
    quiet = window_of(rng.choices(texts, k=1000))
    drifting = window_of(rng.choices(texts, k=600) + rng.choices(corpus("spanish") + corpus("german"), k=400))
    det = DriftDetector(reference)
    numeric, languages, topics = quiet
    ref_mass, win_mass = reference_mass(reference.topics), word_mass(topics)
    quiet_topic, drift_topic = topic_test(ref_mass, win_mass), topic_test(ref_mass, word_mass(drifting[2]))
    assert quiet_topic is not None and drift_topic is not None
    cont = [i for i, spec in enumerate(PROMPT_FEATURES) if spec.kind == "continuous"]
    categorical = [c for c in det.columns if c.kind == "categorical"]
    window_columns = det._columns(numeric, languages)  # the bench times the parts the verdict is made of
    results = {
        f"KS, {len(cont)} continuous features (alibi-detect)": best_ms(
            lambda: alibi_adapter.univariate(reference.numeric[:, cont], numeric[:, cont])),
        f"chi-square, {len(categorical)} categorical columns with the language mix (one alibi call)": best_ms(
            lambda: _chi_square(categorical, det._reference_columns, window_columns, 0.05)),
        f"topic permutation test, quiet window ({quiet_topic.permutations} permutations)": best_ms(
            lambda: topic_test(ref_mass, win_mass)),
        f"topic permutation test, drifting window ({drift_topic.permutations} permutations)": best_ms(
            lambda: topic_test(ref_mass, word_mass(drifting[2]))),
        "**whole window verdict, quiet** (20 tests, correction, effects, words)": best_ms(lambda: det.test(*quiet)),
        "**whole window verdict, drifting**": best_ms(lambda: det.test(*drifting)),
        "domain classifier (sklearn, second opinion)": best_ms(
            lambda: DriftDetector(reference, DriftSettings(classifier=True)).test(*quiet), repeat=2),
    }
    print("| detector (1,000 prompts vs 5,000 reference) | ms per window |\n|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} |")

    short = rng.sample(texts, 1000)
    long = [" ".join(rng.choices(texts, k=40))[:2000] for _ in range(300)]
    print("\n| per prompt (µs) | short (chatterbot, median 30 chars) | long (2,000 chars) |\n|---|---|---|")
    for name, fn in (("request path: prompt_features (baseline)",
                      lambda t: prompt_features({"messages": [{"role": "user", "content": t}]})),
                     ("shipper: all its prompt features", shipper_features)):
        print(f"| {name} | {per_item_us(fn, short):.0f} | {per_item_us(fn, long):.0f} |")
    from splitwatch.service.features.text import text_features
    from splitwatch.service.features.topic_sketch import topic_sketch
    for name, fn in (("  of which text_features (code, traces, sentences, counts)", text_features),
                     ("  of which topic_sketch", topic_sketch)):
        print(f"| {name} | {per_item_us(fn, short):.0f} | {per_item_us(fn, long):.0f} |")

    answer = "Sure. " + " ".join(rng.choices(texts, k=20))
    sse = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"' + w.encode()
                   + b' "},"finish_reason":null}]}\n\n' for w in answer.replace('"', "").split()[:120])
    ok = {"status_code": 200, "stream": False, "finish_reason": "stop"}
    print("\n| per answer (µs) | |\n|---|---|")
    print(f"| answer_features, JSON answer ({len(answer)} chars) | "
          f"{per_item_us(lambda a: answer_features(ok, a), [answer] * 1000):.0f} |")
    print(f"| answer_features, SSE head ({len(sse)} bytes) | "
          f"{per_item_us(lambda s: answer_features({**ok, 'stream': True}, s.encode()), [sse.decode()] * 300):.0f} |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
