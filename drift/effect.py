"""Effect sizes next to p-values: with large windows every test is significant, so a drift must
also be large enough to matter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def psi(reference: np.ndarray, window: np.ndarray, bins: int = 10) -> float:
    """Return the population stability index of a window against the reference (quantile bins).

    The bins are cut at the reference's interior deciles, each bin closed on the right: a value that
    many reference rows share (0 digits, a constant column) is one bin's edge and so has that bin to
    itself instead of merging with everything else. Values below the reference's minimum and above
    its maximum get a bin each, so a window that leaves the reference's range (answers of 2 tokens
    against a reference of 8) always counts. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift,
    > 0.25 large shift.
    """
    interior = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    lo, hi = float(np.min(reference)), float(np.max(reference))
    k = interior.size + 3  # the interior bins, then "below the minimum", then "above the maximum"

    def shares(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(interior, x, side="left")
        idx[x < lo], idx[x > hi] = k - 2, k - 1
        return np.bincount(idx, minlength=k) / x.size

    eps = 1e-4
    ref_share, win_share = np.clip(shares(reference), eps, None), np.clip(shares(window), eps, None)
    return float(np.sum((win_share - ref_share) * np.log(win_share / ref_share)))


def total_variation(reference: Sequence[int], window: Sequence[int], n_categories: int) -> float:
    """Return the total variation distance (0..1) between two categorical distributions."""
    r = np.bincount(np.asarray(reference), minlength=n_categories) / max(len(reference), 1)
    w = np.bincount(np.asarray(window), minlength=n_categories) / max(len(window), 1)
    return float(0.5 * np.abs(r - w).sum())
