"""Sliding windows of the most recent exposures, tested every ``step`` new rows."""

from __future__ import annotations

from collections import deque

import numpy as np


class SlidingWindow:
    """The last ``size`` rows; :meth:`add` says when a test is due (every ``step`` rows once full)."""

    def __init__(self, size: int, step: int) -> None:
        if size < 2 or step < 1:
            raise ValueError("window size must be >= 2 and step >= 1")
        self.size, self.step = size, step
        self._rows: deque[list[float]] = deque(maxlen=size)
        self._langs: deque[str] = deque(maxlen=size)
        self._since = 0
        self.tests = 0

    def add(self, row: list[float], language: str) -> bool:
        """Add one exposure's features; return True when the window is full and a test is due."""
        self._rows.append(row)
        self._langs.append(language)
        self._since += 1
        if len(self._rows) == self.size and self._since >= self.step:
            self._since = 0
            self.tests += 1
            return True
        return False

    def contents(self) -> tuple[np.ndarray, list[str]]:
        """Return the window's rows and languages."""
        return np.asarray(self._rows, dtype=float), list(self._langs)
