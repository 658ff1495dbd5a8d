"""Testing a window column by column: the right test and effect size for each kind of column, the
multiple-testing correction over all of them, and the words a person reads when one moved.

A column is *continuous* (Kolmogorov-Smirnov or Cramér-von Mises, effect: PSI) or *categorical*
(integer codes 0..k-1: chi-square, effect: total variation distance). Binary features and small
counts are categorical: a KS test or a quantile-binned PSI of a 0/1 column is meaningless (its
deciles take two values). A column drifts when its adjusted p-value is below ``p_val`` *and* its
effect reaches the column's minimum. Columns of one ``group`` (length in characters, words and
tokens) move together; a group is reported once, by its member that moved most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from splitwatch.stats.multiple_testing import adjust_p_values

from .effect import psi, total_variation
from .engines import engine

Describe = Callable[[np.ndarray, np.ndarray], str]


@dataclass(frozen=True)
class Column:
    """One tested column: how it is tested, what it means, how its move is put into words."""

    name: str
    kind: Literal["continuous", "categorical", "external"]  # external: tested by the caller
    group: str
    min_effect: float
    describe: Describe
    categories: int = 0  # categorical: codes 0..categories-1


@dataclass(frozen=True)
class FeatureDrift:
    """One column's test in one window."""

    feature: str
    group: str
    detector: str  # the test: "ks", "cvm" or "chi2"
    p_value: float
    p_adjusted: float
    statistic: float  # KS distance, Cramér-von Mises statistic, or total variation (categorical)
    effect: float  # PSI (continuous) or total variation distance (categorical)
    threshold: float  # the minimum effect in force
    drifted: bool
    description: str  # "questions: 27% → 96% of prompts"


@dataclass(frozen=True)
class GroupDrift:
    """Columns that move together, reported once: by the member that moved most."""

    group: str
    drifted: bool
    features: list[str]  # the members that drifted
    description: str


@dataclass
class ColumnReport:
    """The verdict on one window: each column, each group, and whether anything drifted."""

    window_size: int
    features: list[FeatureDrift]
    groups: list[GroupDrift] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        """Return True when at least one column drifted."""
        return any(f.drifted for f in self.features)

    def feature(self, name: str) -> FeatureDrift:
        """Return the test of one column."""
        return next(f for f in self.features if f.feature == name)

    def changes(self) -> list[str]:
        """Return one sentence per group that drifted, largest move first."""
        return [g.description for g in self.groups if g.drifted]


@dataclass(frozen=True)
class ExternalTest:
    """The result of a column the caller tests itself (the topic's permutation test)."""

    detector: str
    p_value: float
    statistic: float
    effect: float
    description: str


def test_columns(columns: Sequence[Column], reference: Mapping[str, np.ndarray], window: Mapping[str, np.ndarray],
                 test: Literal["ks", "cvm"] = "ks", p_val: float = 0.05, correction: str = "bh",
                 external: Mapping[str, ExternalTest] | None = None, drift_engine: str = "scipy") -> ColumnReport:
    """Return the report of a window against the reference, column by column (see the module docstring).

    ``external`` holds the results of the ``external`` columns; one without a result is left out.
    ``drift_engine`` computes the tests (:mod:`.engines`: scipy or alibi, the same p-values).
    """
    external = external or {}
    columns = [c for c in columns if c.kind != "external" or c.name in external]
    continuous = [c for c in columns if c.kind == "continuous"]
    raw: dict[str, float] = {}
    statistic: dict[str, float] = {}
    if continuous:
        uni = engine(drift_engine).univariate(np.column_stack([reference[c.name] for c in continuous]),
                                              np.column_stack([window[c.name] for c in continuous]), test, p_val)
        for i, c in enumerate(continuous):
            raw[c.name], statistic[c.name] = float(uni.p_values[i]), float(uni.distances[i])
    raw.update(_chi_square([c for c in columns if c.kind == "categorical"], reference, window, p_val, drift_engine))
    for c in columns:
        if c.kind == "categorical":
            statistic[c.name] = total_variation(reference[c.name], window[c.name], c.categories)
        elif c.kind == "external":
            raw[c.name], statistic[c.name] = external[c.name].p_value, external[c.name].statistic
    names = [c.name for c in columns]
    adjusted = dict(zip(names, adjust_p_values([raw[n] for n in names], correction), strict=True))
    features = []
    for c in columns:
        if c.kind == "external":
            ext = external[c.name]
            detector, effect, description = ext.detector, ext.effect, ext.description
        else:
            ref, win = reference[c.name], window[c.name]
            detector = test if c.kind == "continuous" else "chi2"
            effect = psi(ref, win) if c.kind == "continuous" else statistic[c.name]
            description = c.describe(ref, win)
        drifted = bool(adjusted[c.name] < p_val and effect >= c.min_effect)
        features.append(FeatureDrift(c.name, c.group, detector, raw[c.name], float(adjusted[c.name]),
                                     statistic[c.name], float(effect), c.min_effect, drifted, description))
    sizes = [len(v) for k, v in window.items() if k in {c.name for c in columns if c.kind != "external"}]
    return ColumnReport(max(sizes, default=0), features, _groups(features))


def _chi_square(columns: list[Column], reference: Mapping[str, np.ndarray], window: Mapping[str, np.ndarray],
                p_val: float, drift_engine: str) -> dict[str, float]:
    """Return the chi-square p-value of each categorical column, over the categories seen in either
    sample (an empty category makes the test undefined); 1 for a column with one category seen."""
    out: dict[str, float] = {}
    tested: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    for c in columns:
        ref, win = reference[c.name].astype(np.int64), window[c.name].astype(np.int64)
        present = np.unique(np.concatenate([ref, win]))
        if present.size < 2:
            out[c.name] = 1.0
            continue
        remap = np.full(int(present.max()) + 1, -1, dtype=np.int64)
        remap[present] = np.arange(present.size)
        tested.append((c.name, remap[ref], remap[win], int(present.size)))
    by_length: dict[tuple[int, int], list[tuple[str, np.ndarray, np.ndarray, int]]] = {}
    for t in tested:  # one call per shape: the reference of every column has the same rows in practice
        by_length.setdefault((len(t[1]), len(t[2])), []).append(t)
    for group in by_length.values():
        p = engine(drift_engine).categorical_many(np.column_stack([t[1] for t in group]),
                                                  np.column_stack([t[2] for t in group]), [t[3] for t in group], p_val)
        out.update({t[0]: float(v) for t, v in zip(group, p, strict=True)})
    return out


def _groups(features: list[FeatureDrift]) -> list[GroupDrift]:
    order: dict[str, list[FeatureDrift]] = {}
    for f in features:
        order.setdefault(f.group, []).append(f)
    groups = []
    for name, members in order.items():
        moved = [f for f in members if f.drifted]
        # the first member that moved speaks for the group (features are listed most readable first)
        lead = moved[0] if moved else max(members, key=lambda f: f.effect / f.threshold if f.threshold else f.effect)
        groups.append(GroupDrift(name, bool(moved), [f.feature for f in moved], lead.description))
    groups.sort(key=lambda g: (not g.drifted, g.group))
    return groups


# -- words ----------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def describe_median(label: str, unit: str) -> Describe:
    """Return a describer: "length: median 62 → 410 characters"."""
    return lambda r, w: f"{label}: median {_num(float(np.median(r)))} → {_num(float(np.median(w)))} {unit}"


def describe_mean(label: str, unit: str) -> Describe:
    """Return a describer: "messages per request: mean 1.2 → 3.4 messages"."""
    return lambda r, w: f"{label}: mean {_num(float(np.mean(r)))} → {_num(float(np.mean(w)))} {unit}"


def describe_mean_share(label: str, unit: str) -> Describe:
    """Return a describer of a share column: "digits: in 8% → 35% of prompts, mean 1.2% → 5.3% of characters"."""
    return lambda r, w: (f"{label}: in {_pct(float(np.mean(r > 0)))} → {_pct(float(np.mean(w > 0)))} of prompts, "
                         f"mean {_pct(float(np.mean(r)))} → {_pct(float(np.mean(w)))} {unit}")


def describe_nonzero(label: str, unit: str) -> Describe:
    """Return a describer of codes where 0 is "none": "questions: 27% → 96% of prompts"."""
    return lambda r, w: f"{label}: {_pct(float(np.mean(r > 0)))} → {_pct(float(np.mean(w > 0)))} {unit}"


def describe_categories(label: str, names: Sequence[str], unit: str = "", top: int = 2) -> Describe:
    """Return a describer of a categorical column: its categories that moved most, with their shares."""

    def describe(r: np.ndarray, w: np.ndarray) -> str:
        k = len(names)
        rs = np.bincount(r.astype(np.int64), minlength=k)[:k] / max(len(r), 1)
        ws = np.bincount(w.astype(np.int64), minlength=k)[:k] / max(len(w), 1)
        return describe_shares(label, names, rs, ws, unit, top)

    return describe


def describe_shares(label: str, names: Sequence[str], before: np.ndarray, after: np.ndarray, unit: str = "",
                    top: int = 2) -> str:
    """Return the categories whose shares moved most: "language: en 97% → 66%, pt 0.6% → 25% of prompts"."""
    moved = [i for i in np.argsort(-np.abs(after - before), kind="stable")[:top] if after[i] != before[i]]
    parts = [f"{names[i]} {_pct(float(before[i]))} → {_pct(float(after[i]))}" for i in moved]
    return f"{label}: " + (", ".join(parts) if parts else "unchanged") + (f" {unit}" if unit and parts else "")
