"""An eval run's results on disk, so that an interrupted run continues where it stopped.

``<output>/run.json`` names the run (experiment, arms and their upstreams, the dataset's SHA-256,
repeats, request parameters); ``<output>/results.jsonl`` gets one line per finished call (case, arm,
repeat), written whole and flushed as soon as the call ends. A run started again on the same output
reads both: the calls already there are not sent again, and a different run (another dataset,
other arms) is refused with what differs, so results of two runs are never mixed. A line cut short
by a kill is dropped (and the file truncated before it) when the run resumes.

The file holds the arms' answers: the scores (chrF, BLEU, stability) are computed from them, also
on a resumed run. It is created readable by its owner only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
FSYNC_EVERY = 50


@dataclass(frozen=True)
class CallResult:
    """One finished call: which case, arm and repeat; its HTTP status (None when no answer came), the
    error kind (None on success), latency, tokens, finish reason and the answer's text; with
    ``--logprobs``, the log-probabilities the call returned."""

    case: str
    arm: str
    repeat: int
    status: int | None
    error: str | None
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    answer: str | None
    token_logprobs: list[float] | None = None  # perplexity calls: the log-probabilities of the reference's tokens
    top_logprobs: dict[str, float] | None = None  # with --logprobs: the first answer token's top alternatives

    @property
    def key(self) -> tuple[str, str, int]:
        """Return (case, arm, repeat), the call's identity in a run."""
        return self.case, self.arm, self.repeat


class RunMismatch(ValueError):
    """The output directory holds results of a different run."""


class ResultStore:
    """The output directory of one run: the run's description and its finished calls."""

    def __init__(self, directory: str | Path, run: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.run = run
        self.results: dict[tuple[str, str, int], CallResult] = {}
        self._file: Any = None
        self._unsynced = 0

    def open(self, retry_failed: bool = False) -> int:
        """Create or reopen the output directory; return how many finished calls it already holds.

        With ``retry_failed``, calls that ended in an error are not counted as finished (they are
        sent again, and their new result replaces the old). Raises :class:`RunMismatch` when the
        directory belongs to another run.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        run_path = self.dir / RUN_FILE
        if run_path.exists():
            before = orjson.loads(run_path.read_bytes())
            diff = sorted(k for k in set(before) | set(self.run) if before.get(k) != self.run.get(k))
            if diff:
                raise RunMismatch(f"{self.dir} holds another run (it differs in: {', '.join(diff)}); "
                                  "use another --output, or delete it to start again")
        else:
            tmp = run_path.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(self.run, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            tmp.replace(run_path)
        path = self.dir / RESULTS_FILE
        good_bytes = 0
        if path.exists():
            data = path.read_bytes()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # cut short by a kill
                try:
                    rec = CallResult(**orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError):
                    break
                good_bytes += len(line)
                self.results[rec.key] = rec
            if good_bytes < len(data):
                with path.open("r+b") as f:
                    f.truncate(good_bytes)
        if retry_failed:
            self.results = {k: r for k, r in self.results.items() if r.error is None}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab")
        return len(self.results)

    def add(self, result: CallResult) -> None:
        """Record a finished call: one whole line, flushed at once (fsynced every few calls)."""
        self.results[result.key] = result
        self._file.write(orjson.dumps(asdict(result)) + b"\n")
        self._file.flush()
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def done(self, key: tuple[str, str, int]) -> bool:
        """Return True when the call (case, arm, repeat) has finished in this run."""
        return key in self.results

    def close(self) -> None:
        """Flush, fsync and close the results file."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
