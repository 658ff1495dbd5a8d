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
from itertools import pairwise

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from .errors import InvalidSpecification

SPENDING_FUNCTIONS = ("obrien_fleming", "pocock", "hwang_shih_decani")
_GRID = 801  # Simpson points per look: boundaries to ~1e-6 against a 4x finer grid
_LOWER = 8.0  # the continuation region is cut at -8 standard deviations (mass below: ~1e-15)


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
    kernel = norm.pdf((new_grid[:, None] - grid[None, :] - drift) / sd) / sd
    return kernel @ (density * weights)


def _cross(grid: np.ndarray, density: np.ndarray, weights: np.ndarray, bound_s: float, increment: float,
           drift: float) -> float:
    """Return P(continue to look k-1, then S_k >= bound_s) for the step N(drift, increment)."""
    sd = math.sqrt(increment)
    return float(np.sum(density * weights * norm.sf((bound_s - grid - drift) / sd)))


def _grid(upper: float, info: float) -> tuple[np.ndarray, np.ndarray]:
    lo = -_LOWER * math.sqrt(info)
    g = np.linspace(lo, upper, _GRID)
    return g, _simpson_weights(_GRID, (upper - lo) / (_GRID - 1))


def boundaries(fractions: Sequence[float], alpha: float = 0.025, spending_function: str = "obrien_fleming",
               gamma: float = -4.0) -> Boundaries:
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
        new_grid, new_weights = _grid(upper, t)
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
        new_grid, new_weights = _grid(upper, t)
        if k == 0:
            density = norm.pdf((new_grid - drift * t) / math.sqrt(t)) / math.sqrt(t)
        else:
            assert grid is not None and density is not None and weights is not None
            density = _carry(grid, density, weights, new_grid, t - ts[k - 1], mean_step)
        grid, weights = new_grid, new_weights
    return tuple(out)
