"""Runtime overrides set through the admin API (pause, resume, coverage), shared by all workers.

They live in ``<proxy.state_dir>/overrides.json`` so that every worker process
sees them (each polls the file) and so that a pause survives a restart. An
override belongs to an experiment's phase: a new phase in the config starts
clean.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ExperimentOverride:
    """What the admin API changed on one experiment phase."""

    phase: int
    status: Literal["running", "paused"] | None = None
    coverage: float | None = None
    updated_at: str | None = None


class OverrideStore:
    """Reads and writes the overrides file atomically; reloads it when another worker changed it."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "overrides.json"
        self._mtime: float | None = None
        self.overrides: dict[str, ExperimentOverride] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the file if it changed on disk; return True when it did."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            changed = bool(self.overrides)
            self.overrides, self._mtime = {}, None
            return changed
        if mtime == self._mtime:
            return False
        raw = json.loads(self.path.read_text())
        self.overrides = {k: ExperimentOverride(**v) for k, v in raw.items()}
        self._mtime = mtime
        return True

    def get(self, key: str, phase: int) -> ExperimentOverride | None:
        """Return the override of this experiment phase, or None."""
        o = self.overrides.get(key)
        return o if o is not None and o.phase == phase else None

    def set(self, key: str, phase: int, status: str | None, coverage: float | None) -> ExperimentOverride:
        """Merge a change into the experiment's override, write the file atomically, return the result."""
        self.refresh()
        old = self.get(key, phase)
        new = ExperimentOverride(
            phase=phase,
            status=status if status is not None else (old.status if old else None),  # type: ignore[arg-type]
            coverage=coverage if coverage is not None else (old.coverage if old else None),
            updated_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        data = {k: asdict(v) for k, v in self.overrides.items()}
        data[key] = asdict(new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)
        self.refresh()
        return new
