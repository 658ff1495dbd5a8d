"""Argument types that check ranges while the command line is parsed: a bad value is refused by argparse
with the option's name (``argument --repeats: must be at least 1, got 0``), before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Return an argparse type: an integer from ``minimum`` (to ``maximum`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def number_in(low: float, high: float, *, high_inclusive: bool = False, unit: str = "") -> Callable[[str], float]:
    """Return an argparse type: a number above ``low`` and below ``high`` (or at it, ``high_inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low < value < high or (high_inclusive and value == high)):
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{unit}, got {value:g}")
        return value

    return parse


PORT = whole_number(1, 65535)
