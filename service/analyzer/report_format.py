"""Numbers as the report prints them: p-values never as 0, an effect and its interval at one precision.

Shared by the Markdown and HTML renderers (the JSON report keeps full precision).
"""

from __future__ import annotations

import math

P_FLOOR = 0.001


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def fmt_p(p: float | None) -> str:
    """Return a p-value as people read it: ``<0.001`` below 0.001, else 3 decimals (2 from 0.1 up)."""
    if not _finite(p):
        return "n/a"
    assert p is not None
    if p < P_FLOOR:
        return "<0.001"
    return f"{p:.2f}" if p >= 0.1 else f"{p:.3f}"


def decimals_for(values: list[float | None], significant: int = 3) -> int:
    """Return the decimals that give the spread of ``values`` (an interval's width) ``significant`` digits.

    An effect of +0.09053 with the interval [+0.0402, +0.1409] prints as +0.091 [+0.040, +0.141]:
    digits beyond the interval's own precision are noise.
    """
    finite = [v for v in values if _finite(v)]
    if not finite:
        return 2
    width = max(finite) - min(finite) if len(finite) > 1 else abs(finite[0])
    if width <= 0:
        width = max(abs(v) for v in finite) or 1.0
    return max(0, min(8, significant - 1 - math.floor(math.log10(width))))


def fmt_num(x: float | None, significant: int = 3) -> str:
    """Return a value with ``significant`` digits, in plain notation unless it is huge or tiny."""
    if not _finite(x):
        return "n/a"
    assert x is not None
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= 6 or magnitude < -4:
        return f"{x:.{significant}g}"
    decimals = max(0, significant - 1 - magnitude)
    return f"{x:,.{decimals}f}" if magnitude >= 3 else f"{x:.{decimals}f}"


def fmt_interval(estimate: float | None, low: float | None, high: float | None, percent: bool = False,
                 signed: bool = True) -> str:
    """Return ``estimate [low, high]`` at one precision, set by the interval's width (three digits)."""
    scale = 100.0 if percent else 1.0
    vals = [None if not _finite(v) else v * scale for v in (estimate, low, high)]  # type: ignore[operator]
    d = decimals_for([vals[1], vals[2]] if _finite(vals[1]) and _finite(vals[2]) else [vals[0]])
    unit = "%" if percent else ""

    def one(v: float | None, infinite: float | None = None) -> str:
        if v is None:
            if infinite is not None and math.isinf(infinite):
                return "+inf" if infinite > 0 else "-inf"
            return "n/a"
        return f"{v:{'+' if signed else ''}.{d}f}{unit}"

    return f"{one(vals[0])} [{one(vals[1], low)}, {one(vals[2], high)}]"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Return a Markdown table's lines: the header, its rule, and the rows (a ``|`` in a cell escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return out


def fmt_count(n: int | float | None) -> str:
    """Return a count as an integer with thousands separators (never ``1e+03``)."""
    return "n/a" if not _finite(n) else f"{round(n):,}"  # type: ignore[arg-type]


def fmt_chance(p: float | None) -> str:
    """Return a chance as a percentage that never claims certainty: ``>99.9%``, ``<0.1%``, else whole percents."""
    if not _finite(p):
        return "n/a"
    assert p is not None
    if p > 0.999:
        return ">99.9%"
    if p < 0.001:
        return "<0.1%"
    return f"{p:.1%}" if p > 0.99 or p < 0.01 else f"{p:.0%}"


def fmt_margin(margin: float, relative: bool) -> str:
    """Return a guardrail's margin, one way everywhere (``0.03``, ``20%``): the verdict, the tables, the page."""
    return f"{margin * 100:.3g}%" if relative else f"{margin:.3g}"


def fmt_n(control: int, treatment: int) -> str:
    """Return the units a metric's test counted in each arm, ``control / treatment``."""
    return f"{control:,} / {treatment:,}"
