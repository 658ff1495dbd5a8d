"""Paired tests: two systems measured on the same cases (``splitwatch eval``).

An offline evaluation sends every test case to every arm, so arm B's answer to case i is paired with
arm A's answer to the same case. Paired tests use that: the difference between the arms is measured
case by case, and the cases' own difficulty cancels out. Unpaired intervals (per-arm means compared
as if the cases were different) are wider and can miss a real difference.

- :func:`mcnemar_exact`: a 0/1 outcome per case (correct, exact match, error); statsmodels' exact
  McNemar test on the discordant pairs.
- :func:`paired_bootstrap`: any statistic computed from per-case values or per-case sufficient
  statistics (a mean score, corpus BLEU from n-gram counts, macro-F1). The resampling follows
  sacrebleu's paired bootstrap (``sacrebleu/significance.py``, after Koehn 2004): the same cases
  resampled for both arms with ``default_rng(seed).choice``. The p-value is, by default, the
  two-sided test against the bootstrap distribution of the difference shifted to zero,
  ``(#{|d* - mean d*| >= |d|} + 1) / (B + 1)``. sacrebleu's own p-value (the centred *absolute*
  differences, ``p_method="sacrebleu"``) is reproduced exactly (tests/test_eval_stats.py), but it
  rejected 9.3% of seeded A/A comparisons of macro-F1 at 0.05, where the shifted test rejected 5.3%
  (300 seeds, 220 cases; bench/eval_calibration.py, docs/eval.md), so it is not the default.
- :func:`wilcoxon_signed_rank` and :func:`paired_t`: scipy's tests for per-case values, returned in
  the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from .errors import InvalidSpecification, InvalidStatistics

DEFAULT_BOOTSTRAP_SAMPLES = 1000
DEFAULT_SEED = 12345  # sacrebleu's default: its resamples, so a comparison can be reproduced with its own tool


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison of arm B against arm A on the same cases.

    ``estimate_a`` and ``estimate_b`` are the statistic on each arm over all cases, ``difference``
    is B - A, ``low`` and ``high`` its interval (None when the test gives none), ``p_value`` the
    two-sided p-value of no difference, ``method`` the test's name and ``n`` the number of pairs.
    """

    method: str
    n: int
    estimate_a: float
    estimate_b: float
    difference: float
    low: float | None
    high: float | None
    p_value: float


def _pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape[0] != b.shape[0]:
        raise InvalidStatistics(f"paired values need the same cases: {a.shape[0]} against {b.shape[0]}")
    if a.shape[0] < 2:
        raise InvalidStatistics(f"a paired test needs at least 2 cases, got {a.shape[0]}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InvalidStatistics("paired values must be finite")
    return a, b


def mcnemar_exact(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> PairedResult:
    """Return McNemar's exact test of two 0/1 outcomes on the same cases (B's rate minus A's).

    The p-value is statsmodels' exact (binomial) McNemar test on the discordant pairs; the interval
    of the difference in rates is the Wald interval for paired proportions (Agresti, Categorical
    Data Analysis, 10.1), clipped to [-1, 1].
    """
    from statsmodels.stats.contingency_tables import mcnemar

    x, y = _pairs(a, b)
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise InvalidStatistics("McNemar's test needs 0/1 outcomes")
    n = x.size
    only_a = int(np.sum((x == 1) & (y == 0)))
    only_b = int(np.sum((x == 0) & (y == 1)))
    both = int(np.sum((x == 1) & (y == 1)))
    table = [[both, only_a], [only_b, n - both - only_a - only_b]]
    p = 1.0 if only_a + only_b == 0 else float(mcnemar(table, exact=True).pvalue)
    diff = (only_b - only_a) / n
    var = ((only_a + only_b) / n - diff**2) / n
    z = float(sps.norm.ppf(1 - alpha / 2))
    half = z * float(np.sqrt(max(var, 0.0)))
    return PairedResult("mcnemar_exact", n, float(x.mean()), float(y.mean()), diff,
                        max(-1.0, diff - half), min(1.0, diff + half), min(1.0, p))


def bootstrap_indices(n: int, n_samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int | None = DEFAULT_SEED
                      ) -> np.ndarray:
    """Return a ``(n_samples, n)`` array of case indices drawn with replacement (sacrebleu's draw)."""
    if n_samples < 1:
        raise InvalidSpecification(f"n_samples must be >= 1, got {n_samples}")
    return np.random.default_rng(seed).choice(n, size=(n_samples, n), replace=True)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray], float] | None = None,
                     n_samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int | None = DEFAULT_SEED,
                     alpha: float = 0.05, method: str = "paired_bootstrap",
                     batch_statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                     p_method: str = "shifted") -> PairedResult:
    """Return the paired bootstrap comparison of ``statistic`` on arm B against arm A.

    ``a`` and ``b`` hold one row per case: a value (a score), or a row of sufficient statistics
    (sacrebleu's n-gram counts for corpus BLEU). ``statistic`` maps a set of rows to the arm's
    figure; the default is the mean. ``batch_statistic``, when given, maps a ``(samples, cases,
    ...)`` array to one figure per sample at once (the mean's is vectorised). The interval is the
    percentile interval of the resampled differences; ``p_method`` is ``shifted`` (the default) or
    ``sacrebleu`` (see the module).
    """
    if p_method not in ("shifted", "sacrebleu"):
        raise InvalidSpecification(f"p_method must be 'shifted' or 'sacrebleu', got {p_method!r}")
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise InvalidStatistics(f"paired values need the same cases: shapes {a_arr.shape} and {b_arr.shape}")
    n = a_arr.shape[0]
    if n < 2:
        raise InvalidStatistics(f"a paired test needs at least 2 cases, got {n}")
    if not (np.all(np.isfinite(a_arr)) and np.all(np.isfinite(b_arr))):
        raise InvalidStatistics("paired values must be finite")
    if statistic is None:
        def statistic(rows: np.ndarray) -> float:
            return float(rows.mean())

        def batch_statistic(samples: np.ndarray) -> np.ndarray:
            return samples.mean(axis=1)

    idx = bootstrap_indices(n, n_samples, seed)
    if batch_statistic is not None:
        sa, sb = batch_statistic(a_arr[idx]), batch_statistic(b_arr[idx])
    else:
        sa = np.array([statistic(a_arr[i]) for i in idx])
        sb = np.array([statistic(b_arr[i]) for i in idx])
    est_a, est_b = float(statistic(a_arr)), float(statistic(b_arr))
    diff = est_b - est_a
    deltas = sb - sa
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    if diff == 0:
        p = 1.0  # sacrebleu's formula gives 1 / (B + 1) here, calling two identical systems different
    elif p_method == "sacrebleu":
        absolute = np.abs(deltas)
        centred = absolute - absolute.mean()
        p = (int(np.sum(centred > abs(diff))) + 1) / (n_samples + 1)
    else:
        p = (int(np.sum(np.abs(deltas - deltas.mean()) >= abs(diff))) + 1) / (n_samples + 1)
    return PairedResult(method, n, est_a, est_b, diff, float(low), float(high), float(p))


def wilcoxon_signed_rank(a: np.ndarray, b: np.ndarray, alpha: float = 0.05,
                         n_samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int | None = DEFAULT_SEED
                         ) -> PairedResult:
    """Return scipy's Wilcoxon signed-rank test of B - A, with the bootstrap interval of the mean difference.

    For skewed per-case values (latency), where a t-test's normality is doubtful. Pairs with no
    difference are dropped (scipy's ``zero_method="wilcox"``); all-equal pairs give p = 1.
    """
    x, y = _pairs(a, b)
    boot = paired_bootstrap(x, y, n_samples=n_samples, seed=seed, alpha=alpha)
    d = y - x
    p = 1.0 if np.all(d == 0) else float(sps.wilcoxon(y, x, zero_method="wilcox").pvalue)
    return PairedResult("wilcoxon_signed_rank", x.size, float(x.mean()), float(y.mean()), float(d.mean()),
                        boot.low, boot.high, p)


def paired_t(a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> PairedResult:
    """Return scipy's paired t-test of B - A, with its t interval of the mean difference."""
    x, y = _pairs(a, b)
    d = y - x
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0:
        return PairedResult("paired_t", x.size, float(x.mean()), float(y.mean()), mean, mean, mean,
                            1.0 if mean == 0 else 0.0)
    res = sps.ttest_rel(y, x)
    half = float(sps.t.ppf(1 - alpha / 2, x.size - 1)) * sd / np.sqrt(x.size)
    return PairedResult("paired_t", x.size, float(x.mean()), float(y.mean()), mean, mean - half, mean + half,
                        float(res.pvalue))
