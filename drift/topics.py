"""Topic drift without a model: a permutation test on the prompts' hashed word distributions.

Each exposure carries a sketch of its last user message: its words and word pairs hashed into
:data:`~splitwatch.service.features.topic_sketch.SKETCH_DIMS` signed buckets, L2-normalised
(:mod:`splitwatch.service.features.topic_sketch`). Squared, a sketch's components sum to 1: they are the
prompt's words spread over the buckets (its "word mass"). A sample's topic profile is the mean of
its prompts' word masses, and the statistic is the total variation distance between the window's
profile and the reference's: the share of word weight that moved to other buckets.

Its null distribution comes from permutations: under no drift, reference and window prompts are
exchangeable, so reassigning them at random gives the statistic's distribution, whatever the
dependence between a prompt's words (no independence of words is assumed, which a chi-square over
word counts would need). Permutations run in batches of 50 and stop early once the statistic is clearly
ordinary (Besag and Clifford's sequential p-value: stop at ``h`` exceedances), so a quiet window
costs one batch; a drifting one up to ``max_permutations``. The effect is the statistic minus its
mean under permutation (``excess``): total variation between samples is positive even without
drift, and its size depends on the samples' sizes; the excess does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_REFERENCE_ROWS = 1000  # a larger reference is subsampled (seeded): the cost is per row


@dataclass(frozen=True)
class TopicTest:
    """The permutation test of a window's topic profile against the reference's."""

    p_value: float
    tvd: float  # share of word weight that moved
    expected_tvd: float  # its mean under permutation (no drift)
    permutations: int

    @property
    def excess(self) -> float:
        """Return the moved word weight beyond chance (the effect the drift threshold applies to)."""
        return max(0.0, self.tvd - self.expected_tvd)

    def describe(self) -> str:
        """Return the move in words a person reads."""
        return (f"topic: {100 * self.tvd:.0f}% of the prompts' word weight moved to other words "
                f"({100 * self.expected_tvd:.0f}% expected by chance)")


def word_mass(sketches: np.ndarray) -> np.ndarray:
    """Return each prompt's word mass (squared sketch, rows summing to 1); prompts without words are dropped."""
    m = np.asarray(sketches, dtype=np.float64) ** 2
    total = m.sum(axis=1)
    keep = total > 0
    return m[keep] / total[keep, None]


def reference_mass(sketches: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return the reference's word masses, subsampled (seeded) to at most MAX_REFERENCE_ROWS."""
    m = word_mass(sketches)
    if len(m) > MAX_REFERENCE_ROWS:
        m = m[np.sort(np.random.default_rng(seed).choice(len(m), MAX_REFERENCE_ROWS, replace=False))]
    return m


def topic_test(reference: np.ndarray, window: np.ndarray, max_permutations: int = 499, batch: int = 50,
               stop_after: int = 10, seed: int = 0) -> TopicTest | None:
    """Return the permutation test of two samples of word masses (None when either has < 10 prompts with words).

    Seeded: one window always gets one answer.
    """
    if len(reference) < 10 or len(window) < 10:
        return None
    pooled = np.vstack([reference, window])
    n, nw = len(pooled), len(window)
    total = pooled.sum(axis=0)
    observed = 0.5 * float(np.abs(window.mean(axis=0) - reference.mean(axis=0)).sum())
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, n))
    mask[:, :nw] = 1.0
    exceed = done = 0
    null_sum = 0.0
    while done < max_permutations:
        size = min(batch, max_permutations - done)
        chosen = rng.permuted(mask[:size], axis=1)  # each row: a random set of nw "window" prompts
        sw = chosen @ pooled
        tvd = 0.5 * np.abs(sw / nw - (total - sw) / (n - nw)).sum(axis=1)
        exceed += int(np.sum(tvd >= observed))
        null_sum += float(tvd.sum())
        done += size
        if exceed >= stop_after:
            return TopicTest(exceed / done, observed, null_sum / done, done)
    return TopicTest((exceed + 1) / (done + 1), observed, null_sum / done, done)
