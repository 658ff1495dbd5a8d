"""Sliding windows of the most recent rows, tested every ``step`` new rows."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

Row = TypeVar("Row")


class SlidingWindow(Generic[Row]):
    """The last ``size`` rows; :meth:`add` says when a test is due (every ``step`` rows once full)."""

    def __init__(self, size: int, step: int) -> None:
        if size < 2 or step < 1:
            raise ValueError("window size must be >= 2 and step >= 1")
        self.size, self.step = size, step
        self._rows: deque[Row] = deque(maxlen=size)
        self._since = 0
        self.tests = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> bool:
        """Add one row; return True when the window is full and a test is due."""
        self._rows.append(row)
        self._since += 1
        if len(self._rows) == self.size and self._since >= self.step:
            self._since = 0
            self.tests += 1
            return True
        return False

    def rows_until_first_test(self) -> int:
        """Return how many more rows the window needs before its first test (0 once tested)."""
        return 0 if self.tests else max(self.size - len(self._rows), 0)

    def contents(self) -> list[Row]:
        """Return the window's rows, oldest first."""
        return list(self._rows)
