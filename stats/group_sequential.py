"""Group-sequential boundaries with alpha spending: planned looks, each spending a share of alpha.

The statistic at look k is Z_k = S_k / sqrt(I_k), with I_k the information (1 / the variance of the
estimate) and S_k the score, whose increments are independent normals: S_k - S_(k-1) ~ N(theta dI,
dI) (the canonical joint distribution; Jennison and Turnbull 2000, ch. 3). An alpha-spending function
f(t), t = I_k / I_max the information fraction, says how much of the one-sided alpha may have been
spent by look k (Lan and DeMets 1983). The boundary c_k is the value with

    P(Z_1 < c_1, ..., Z_(k-1) < c_(k-1), Z_k >= c_k; theta = 0) = f(t_k) - f(t_(k-1)),

found by the recursive numerical integration of Armitage, McPherson and Rowe (1969), as gsDesign and
rpact compute it (Jennison and Turnbull, ch. 19): the density of S on the continuation region is
carried from look to look on a grid and integrated by Simpson's rule. The boundaries therefore hold at
the looks taken: a look earlier or later than planned spends f at its own fraction (the spending
approach's correction), and a look beyond the planned maximum spends what is left.

Spending functions (gsDesign's names):

- ``obrien_fleming`` (sfLDOF): f(t) = 2 - 2 Phi(Phi^-1(1 - alpha/2) / sqrt(t)), close to O'Brien and
  Fleming's boundary: almost nothing early, nearly the full alpha at the end;
- ``pocock`` (sfLDPocock): f(t) = alpha log(1 + (e - 1) t);
- ``hwang_shih_decani`` (sfHSD): f(t) = alpha (1 - exp(-gamma t)) / (1 - exp(-gamma)), gamma -4 by
  default (gsDesign's default design).

Checked in tests/test_group_sequential.py against published boundaries: rpact's three equally spaced
looks with O'Brien-Fleming-type spending at one-sided 0.025 (3.710, 2.511, 1.993) and gsDesign's
five looks with Hwang-Shih-DeCani(-4) spending (3.2527, 2.9860, 2.6917, 2.3737, 2.0253).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.optimize import brentq
from scipy.special import ndtr
from scipy.stats import norm

from .comparison import Effect, _check_alpha, relative_scale
from .errors import InvalidSpecification, InvalidStatistics
from .estimates import ArmEstimate

SPENDING_FUNCTIONS = ("obrien_fleming", "pocock", "hwang_shih_decani")
_GRID = 201  # Simpson points per look: boundaries within 2e-6 of a grid four times finer, 17 ms for 14 looks
_LOWER = 8.0  # the continuation region is cut at -8 standard deviations (mass below: ~1e-15)
_SQRT_2PI = math.sqrt(2 * math.pi)


def spending(name: str, alpha: float, gamma: float = -4.0) -> Callable[[float], float]:
    """Return the alpha-spending function f(t) (cumulative one-sided alpha spent at information fraction t)."""
    if not 0 < alpha < 1:
        raise InvalidSpecification(f"alpha must be in (0, 1), got {alpha}")
    if name == "obrien_fleming":
        z = float(norm.ppf(1 - alpha / 2))
        return lambda t: 0.0 if t <= 0 else (alpha if t >= 1 else float(2 * norm.sf(z / math.sqrt(t))))
    if name == "pocock":
        return lambda t: 0.0 if t <= 0 else alpha * math.log(1 + (math.e - 1) * min(t, 1.0))
    if name == "hwang_shih_decani":
        if gamma == 0:
            return lambda t: alpha * min(max(t, 0.0), 1.0)
        return lambda t: alpha * (1 - math.exp(-gamma * min(max(t, 0.0), 1.0))) / (1 - math.exp(-gamma))
    raise InvalidSpecification(f"unknown spending function {name!r}; choose one of {', '.join(SPENDING_FUNCTIONS)}")


@dataclass(frozen=True)
class Boundaries:
    """Upper z boundaries at the looks' information fractions, and the one-sided alpha spent by each look."""

    fractions: tuple[float, ...]
    z: tuple[float, ...]
    spent: tuple[float, ...]  # cumulative alpha spent after each look

    def nominal_p(self) -> tuple[float, ...]:
        """Return each look's nominal one-sided p-value threshold, 1 - Phi(c_k)."""
        return tuple(float(norm.sf(c)) for c in self.z)


def _simpson_weights(n: int, h: float) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w * h / 3.0


def _carry(grid: np.ndarray, density: np.ndarray, weights: np.ndarray, new_grid: np.ndarray,
           increment: float, drift: float) -> np.ndarray:
    """Return the density of S_k on ``new_grid`` from that of S_(k-1) on ``grid`` (restricted to the
    continuation region), through an independent N(drift, increment) step."""
    sd = math.sqrt(increment)
    x = (new_grid[:, None] - grid[None, :] - drift) / sd
    kernel = np.exp(-0.5 * x * x) / (_SQRT_2PI * sd)
    return kernel @ (density * weights)


def _cross(grid: np.ndarray, density: np.ndarray, weights: np.ndarray, bound_s: float, increment: float,
           drift: float) -> float:
    """Return P(continue to look k-1, then S_k >= bound_s) for the step N(drift, increment)."""
    sd = math.sqrt(increment)
    return float(np.sum(density * weights * ndtr((grid + drift - bound_s) / sd)))  # ndtr(-x): the upper tail


def _grid(upper: float, info: float, points: int = _GRID, center: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return an odd number of Simpson points from 8 standard deviations below ``center`` up to ``upper``."""
    points += 1 - points % 2
    lo = center - _LOWER * math.sqrt(info)
    g = np.linspace(lo, max(upper, lo + 1e-9), points)
    return g, _simpson_weights(points, (g[-1] - lo) / (points - 1))


def boundaries(fractions: Sequence[float], alpha: float = 0.025, spending_function: str = "obrien_fleming",
               gamma: float = -4.0, points: int = _GRID) -> Boundaries:
    """Return the one-sided upper boundaries at the looks' information fractions (increasing, the last
    usually 1; a fraction above 1 is a look beyond the planned maximum, which spends what is left)."""
    ts = [float(t) for t in fractions]
    if not ts or any(t <= 0 for t in ts) or any(b <= a for a, b in pairwise(ts)):
        raise InvalidSpecification(f"information fractions must be positive and increasing, got {ts}")
    f = spending(spending_function, alpha, gamma)
    info = ts  # the scale of information is arbitrary: fractions serve as I_k
    z: list[float] = []
    spent: list[float] = []
    grid = density = weights = None
    previous = 0.0
    for k, t in enumerate(info):
        target = max(f(t) - previous, 0.0)
        if k == 0:
            c = float(norm.isf(target)) if target > 0 else math.inf
        else:
            assert grid is not None and density is not None and weights is not None
            inc = t - info[k - 1]

            def excess(c: float, g=grid, d=density, w=weights, inc=inc, t=t, target=target) -> float:
                return _cross(g, d, w, c * math.sqrt(t), inc, 0.0) - target

            c = math.inf if target <= 0 else float(brentq(excess, -10.0, 40.0, xtol=1e-10))
        z.append(c)
        previous += target
        spent.append(previous)
        # the density of S_k on its continuation region (-inf, c_k sqrt(I_k)), for the next look
        upper = c * math.sqrt(t) if math.isfinite(c) else _LOWER * math.sqrt(t)
        new_grid, new_weights = _grid(upper, t, points)
        if k == 0:
            density = norm.pdf(new_grid / math.sqrt(t)) / math.sqrt(t)
        else:
            assert grid is not None and density is not None and weights is not None
            density = _carry(grid, density, weights, new_grid, t - info[k - 1], 0.0)
        grid, weights = new_grid, new_weights
    return Boundaries(tuple(ts), tuple(z), tuple(spent))


def crossing_probabilities(bounds: Boundaries, drift: float) -> tuple[float, ...]:
    """Return P(first crossing at look k) when the z statistic's mean at full information is ``drift``
    (theta sqrt(I_max)); the sum is the design's power at that effect (its alpha at drift 0)."""
    out: list[float] = []
    grid = density = weights = None
    ts = bounds.fractions
    for k, (t, c) in enumerate(zip(ts, bounds.z, strict=True)):
        mean_step = drift * (t - (ts[k - 1] if k else 0.0))  # theta dI, with I_max = 1 on this scale
        if k == 0:
            out.append(float(norm.sf(c - drift * math.sqrt(t))) if math.isfinite(c) else 0.0)
        else:
            assert grid is not None and density is not None and weights is not None
            inc = t - ts[k - 1]
            out.append(_cross(grid, density, weights, c * math.sqrt(t), inc, mean_step)
                       if math.isfinite(c) else 0.0)
        upper = c * math.sqrt(t) if math.isfinite(c) else _LOWER * math.sqrt(t) + drift * t
        new_grid, new_weights = _grid(upper, t, center=drift * t)
        if k == 0:
            density = norm.pdf((new_grid - drift * t) / math.sqrt(t)) / math.sqrt(t)
        else:
            assert grid is not None and density is not None and weights is not None
            density = _carry(grid, density, weights, new_grid, t - ts[k - 1], mean_step)
        grid, weights = new_grid, new_weights
    return tuple(out)


@dataclass(frozen=True)
class GroupDesign:
    """A planned group-sequential design: ``looks`` equally spaced in information up to ``planned_units``
    (all arms together), alpha spent by ``spending`` (one of :data:`SPENDING_FUNCTIONS`)."""

    planned_units: int
    looks: int
    spending: str = "obrien_fleming"

    def __post_init__(self) -> None:
        if self.planned_units < 2 or self.looks < 1:
            raise InvalidSpecification("a group design needs planned_units >= 2 and looks >= 1")
        spending(self.spending, 0.05)  # refuses an unknown name now, not at the first look

    def fractions(self, units: int, earlier: Sequence[int] = ()) -> tuple[float, ...]:
        """Return the information fractions of the looks so far, this one (``units``) last, to 0.001.

        ``earlier`` gives the units at the looks already taken (the report's earlier days); without
        it, the looks before this one are taken to have come at their planned fractions. Rounding a
        fraction to 0.001 moves a boundary by under 1e-4 (tests/test_group_sequential.py), and lets
        the looks of an experiment share their computed boundaries.
        """
        t = round(units / self.planned_units, 3)
        if earlier:
            before = sorted({f for f in (round(u / self.planned_units, 3) for u in earlier if 0 < u < units)
                             if f < t - 0.0005})
        else:
            # a look within 0.001 of a planned one is that planned look
            before = [f for f in (round(j / self.looks, 3) for j in range(1, self.looks)) if f < t - 0.0005]
        return (*before, t)

    def bound(self, units: int, alpha: float, earlier: Sequence[int] = ()) -> float:
        """Return this look's one-sided z boundary at level ``alpha``."""
        return _bounds(_key(self.fractions(units, earlier)), alpha, self.spending)[-1]

    def final_bound(self, alpha: float) -> float:
        """Return the boundary of the last planned look, every earlier look taken as planned."""
        return _bounds(_key(tuple(j / self.looks for j in range(1, self.looks + 1))), alpha, self.spending)[-1]

    def p_value(self, z: float, units: int, earlier: Sequence[int] = (), sides: int = 1) -> float:
        """Return the repeated p-value of ``z`` at this look: the smallest level (one-sided, or two-sided
        with ``sides`` 2) at which this look's boundary is crossed (Jennison and Turnbull 2000, 9.2)."""
        fr = _key(self.fractions(units, earlier))
        levels, zs = _level_curve(fr, self.spending)
        z = abs(z) if sides == 2 else z
        if z >= zs[0]:
            return float(levels[0] * sides)
        if z <= zs[-1]:
            return 1.0
        # the boundary falls as the level rises: log(level) is a smooth, monotone function of z
        log_level = float(PchipInterpolator(zs[::-1], np.log(levels)[::-1])(z))
        return min(1.0, math.exp(log_level) * sides)


def _key(fractions: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(f, 9) for f in fractions)


_LEVELS = np.exp(np.linspace(math.log(1e-7), math.log(0.5), 24))
_CURVE_GRID = 101  # the repeated p-value's boundaries: a coarser grid (their error stays under 1e-4)


@lru_cache(maxsize=512)
def _bounds(fractions: tuple[float, ...], alpha: float, spending_function: str) -> tuple[float, ...]:
    return boundaries(fractions, alpha, spending_function).z


@lru_cache(maxsize=128)
def _level_curve(fractions: tuple[float, ...], spending_function: str) -> tuple[np.ndarray, np.ndarray]:
    """Return levels (ascending) and this look's boundary at each (descending), for repeated p-values."""
    zs = np.array([boundaries(fractions, float(a), spending_function, points=_CURVE_GRID).z[-1] for a in _LEVELS])
    return _LEVELS, zs


def compare_group(control: ArmEstimate, treatment: ArmEstimate, design: GroupDesign, units: int,
                  alpha: float = 0.05, earlier: Sequence[int] = ()) -> Effect:
    """Return the effect with repeated p-values and repeated confidence intervals at this look of a
    group-sequential design (two-sided: alpha/2 spent on each side), on both scales.

    Each interval is the estimate +- c_k se with c_k this look's boundary at alpha/2, so it excludes 0
    exactly when the look's repeated p-value is below alpha (to the interpolation's 1e-5).
    """
    _check_alpha(alpha)
    diff = treatment.mean - control.mean
    variance = control.variance + treatment.variance
    if variance <= 0:
        raise InvalidStatistics("the difference has zero variance: no test is possible")
    se = math.sqrt(variance)
    c = design.bound(units, alpha / 2, earlier)
    p = design.p_value(diff / se, units, earlier, sides=2)
    rel, rel_ci, rel_se, rel_p = relative_scale(control, treatment, lambda estimate, v: (
        c * math.sqrt(v), design.p_value(estimate / math.sqrt(v), units, earlier, sides=2)))
    look = len(design.fractions(units, earlier))
    return Effect(diff, (diff - c * se, diff + c * se), rel, rel_ci, p, se, diff / se, None,
                  f"group_sequential({design.spending}, look {look} of {design.looks}, "
                  f"t={units / design.planned_units:.3g})", rel_se, rel_p)
