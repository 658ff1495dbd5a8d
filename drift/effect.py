"""Effect sizes next to p-values: with large windows every test is significant, so a drift must
also be large enough to matter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def psi(reference: np.ndarray, window: np.ndarray, bins: int = 10) -> float:
    """Return the population stability index of a window against the reference (quantile bins).

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:  # a constant reference: one bin for its value, one for the rest
        ref_share = np.array([1.0, 0.0])
        win_share = np.array([np.mean(window == reference[0]), np.mean(window != reference[0])])
    else:
        edges[0], edges[-1] = -np.inf, np.inf
        ref_share = np.histogram(reference, edges)[0] / reference.size
        win_share = np.histogram(window, edges)[0] / window.size
    eps = 1e-4
    ref_share, win_share = np.clip(ref_share, eps, None), np.clip(win_share, eps, None)
    return float(np.sum((win_share - ref_share) * np.log(win_share / ref_share)))


def total_variation(reference: Sequence[int], window: Sequence[int], n_categories: int) -> float:
    """Return the total variation distance (0..1) between two categorical distributions."""
    r = np.bincount(np.asarray(reference), minlength=n_categories) / max(len(reference), 1)
    w = np.bincount(np.asarray(window), minlength=n_categories) / max(len(window), 1)
    return float(0.5 * np.abs(r - w).sum())
