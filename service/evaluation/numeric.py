"""Regression tasks: a number in the answer against a numeric label.

The answer's number is the first decimal number in it (``"about 4.5 stars"`` reads 4.5; a
thousands separator ``1,200`` reads 1200). An answer with none is *unparseable*: counted per arm
and compared (McNemar), and left out of the error metrics of that arm, which say over how many
cases they were computed. MSE, MAE and R² come from scikit-learn; the paired tests compare the
per-case squared and absolute errors on the cases both arms answered with a number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def parse_number(answer: str) -> float | None:
    """Return the first number written in the answer, or None when it has none."""
    m = _NUMBER.search(answer or "")
    if m is None:
        return None
    value = float(m.group(0).replace(",", ""))
    return value if np.isfinite(value) else None


def parsed_numbers(answers: Sequence[str]) -> np.ndarray:
    """Return each answer's number (nan where there is none)."""
    return np.array([np.nan if (v := parse_number(a)) is None else v for a in answers], dtype=float)


def regression_figures(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """Return MSE, MAE and R² (scikit-learn) over the cases with a number, with their count and the
    unparseable share (None figures when fewer than two cases have a number)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    ok = np.isfinite(predicted)
    out: dict[str, float | int | None] = {"parsed_cases": int(ok.sum()),
                                          "unparseable_rate": float(1 - ok.mean()) if ok.size else None}
    if ok.sum() < 2:
        return {**out, "mse": None, "mae": None, "r2": None}
    t, p = truth[ok], predicted[ok]
    return {**out, "mse": float(mean_squared_error(t, p)), "mae": float(mean_absolute_error(t, p)),
            "r2": float(r2_score(t, p))}
