"""Ranking the arms on one metric, with the uncertainty of each rank.

The cases are resampled (the same cases for every arm, as the paired bootstrap does), the arms
ranked in each resample by the metric's mean (1 is best, by the metric's direction; ties share the
mean rank), and each arm's mean rank, its 95% rank interval and the share of resamples in which it
ranked first are reported (arms tied for first share it). Two arms whose rank intervals overlap are
not told apart by the data; the pairwise tests (Holm-corrected with the rest) say which differences
are significant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class RankRow:
    """One arm in the ranking: its figure, mean rank, rank interval and the share of resamples it won."""

    arm: str
    estimate: float
    mean_rank: float
    rank_low: float
    rank_high: float
    p_best: float

    def as_dict(self) -> dict[str, Any]:
        """Return the row as plain values."""
        return asdict(self)


def rank_arms(values: dict[str, np.ndarray], higher_is_better: bool, n_samples: int = 2000, seed: int = 12345
              ) -> list[RankRow]:
    """Return the arms ranked on the mean of their per-case ``values`` (aligned; cases with a nan in any
    arm left out), best first."""
    arms = list(values)
    matrix = np.column_stack([values[a] for a in arms])
    matrix = matrix[np.all(np.isfinite(matrix), axis=1)]
    if matrix.shape[0] < 2:
        return []
    sign = -1.0 if higher_is_better else 1.0
    idx = np.random.default_rng(seed).choice(matrix.shape[0], size=(n_samples, matrix.shape[0]), replace=True)
    means = matrix[idx].mean(axis=1)  # (samples, arms)
    ranks = rankdata(sign * means, axis=1)
    estimate = matrix.mean(axis=0)
    best = ranks == ranks.min(axis=1, keepdims=True)
    credit = best / best.sum(axis=1, keepdims=True)  # arms tied for first share the resample
    rows = [RankRow(a, float(estimate[i]), float(ranks[:, i].mean()), float(np.quantile(ranks[:, i], 0.025)),
                    float(np.quantile(ranks[:, i], 0.975)), float(credit[:, i].mean()))
            for i, a in enumerate(arms)]
    return sorted(rows, key=lambda r: (r.mean_rank, sign * r.estimate))
