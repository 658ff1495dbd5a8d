"""Output drift per arm: each arm's answers against that arm's own first answers.

From response events (successful ones, not forced): the answer's length in completion tokens,
its finish reason, and the shipper's answer features (``answer.refusal``, ``answer.empty``,
``answer.truncated``; docs/features.md). The reference of an arm is its first
``drift.output_reference_size`` answers of the phase (persisted, like the prompts' reference); a
sliding window of its latest answers is tested against it with the tests of drift/columns.py. So a
fine-tuned arm that starts answering shorter or refusing is flagged for that arm only, whatever
the other arm does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .columns import Column, ColumnReport, describe_categories, describe_median, describe_nonzero, test_columns

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "other")
"""The finish reasons told apart (a bounded label set); any other value is "other"."""
OUTPUT_FEATURES = ("answer_tokens", "finish_reason", "truncated", "refusal", "empty")
"""The output columns, in the order of a row."""
_FINISH_CODE = {r: i for i, r in enumerate(FINISH_REASONS)}
OutputRow = tuple[float, int, int, int, int]
"""One answer: tokens, finish-reason code, truncated, refusal, empty (OUTPUT_FEATURES order)."""


def output_row(event: Mapping[str, Any]) -> OutputRow | None:
    """Return the output row of a response event, or None when it is not a successful answer.

    ``answer_tokens`` is ``completion_tokens``, else the answer's characters / 4 when the shipper saw
    the whole answer, else 0.
    """
    status = event.get("status_code")
    if not isinstance(status, int) or status >= 400 or event.get("error") or event.get("forced"):
        return None
    answer = event.get("answer") if isinstance(event.get("answer"), dict) else {}
    tokens = event.get("completion_tokens")
    if not isinstance(tokens, int | float):
        chars = answer.get("chars")
        tokens = (float(chars) + 3) // 4 if isinstance(chars, int | float) else 0.0
    reason = event.get("finish_reason")
    code = _FINISH_CODE.get(reason if isinstance(reason, str) else "other", _FINISH_CODE["other"])
    return (float(tokens), code, 1 if code == _FINISH_CODE["length"] else 0,
            1 if answer.get("refusal") else 0, 1 if answer.get("empty") else 0)


def output_columns(min_psi: float, min_tvd: float) -> list[Column]:
    """Return the tested output columns."""
    return [
        Column("answer_tokens", "continuous", "answer length", min_psi, describe_median("answer length", "tokens")),
        Column("finish_reason", "categorical", "finish reasons", min_tvd,
               describe_categories("finish reasons", FINISH_REASONS, "of answers"), len(FINISH_REASONS)),
        Column("truncated", "categorical", "finish reasons", min_tvd,
               describe_nonzero("cut at the token limit", "of answers"), 2),
        Column("refusal", "categorical", "refusals", min_tvd, describe_nonzero("refusals", "of answers"), 2),
        Column("empty", "categorical", "empty answers", min_tvd, describe_nonzero("empty answers", "of answers"), 2),
    ]


def as_columns(rows: Sequence[OutputRow]) -> dict[str, np.ndarray]:
    """Return output rows as named columns."""
    arr = np.asarray(rows, dtype=float).reshape(-1, len(OUTPUT_FEATURES))
    return {name: arr[:, i] if i == 0 else arr[:, i].astype(np.int64) for i, name in enumerate(OUTPUT_FEATURES)}


@dataclass
class OutputReference:
    """An arm's first answers: the rows its later answers are compared with."""

    rows: list[OutputRow]
    source: str
    created_at: str

    def save(self, path: Path) -> None:
        """Write the reference to ``path`` (JSON, atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"features": list(OUTPUT_FEATURES), "source": self.source,
                                   "created_at": self.created_at, "rows": self.rows}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> OutputReference | None:
        """Return the reference saved at ``path``, or None when there is none (or it has other columns)."""
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        if data.get("features") != list(OUTPUT_FEATURES):
            return None
        return cls([tuple(r) for r in data["rows"]], data["source"], data["created_at"])  # type: ignore[misc]

    @classmethod
    def of(cls, rows: list[OutputRow], source: str) -> OutputReference:
        """Return a new reference of these rows."""
        return cls(rows, source, datetime.now(UTC).isoformat())


class OutputDetector:
    """Tests windows of an arm's answers against its reference."""

    def __init__(self, reference: OutputReference, min_psi: float = 0.1, min_tvd: float = 0.1,
                 test: str = "ks", p_val: float = 0.05, correction: str = "bh", drift_engine: str = "scipy") -> None:
        self.reference = reference
        self.columns = output_columns(min_psi, min_tvd)
        self._reference = as_columns(reference.rows)
        self.test_name, self.p_val, self.correction, self.engine = test, p_val, correction, drift_engine

    def test(self, window: Mapping[str, np.ndarray]) -> ColumnReport:
        """Return the verdict on a window of output rows, given as columns (:func:`as_columns`)."""
        return test_columns(self.columns, self._reference, window, self.test_name,  # type: ignore[arg-type]
                            self.p_val, self.correction, drift_engine=self.engine)
