"""A report as a tracker sees it, and the dispatch to each tracker."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]+")  # the characters MLflow allows in a key


def clean_key(key: str) -> str:
    """Return ``key`` with the characters trackers refuse replaced by ``_``."""
    return _KEY.sub("_", key).strip("/") or "_"


@dataclass
class TrackerRecord:
    """One report for the trackers: what it is (experiment, phase, run name), its parameters, its metrics
    (single values, and curves as (step, value) lists), its files, and extra tags."""

    experiment: str
    phase: str  # offline_eval | online_report | training | data
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def add_metric(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` when it is a finite number (a missing figure is not a zero)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.metrics[clean_key(key)] = float(value)

    def all_tags(self) -> dict[str, str]:
        """Return the tags every tracker gets: the experiment and the phase, then the record's own."""
        return {"splitwatch.experiment": self.experiment, "splitwatch.phase": self.phase, **self.tags}


@dataclass
class TrackerOptions:
    """Where to send reports: an MLflow tracking URI, a TensorBoard log directory, a W&B project."""

    mlflow_uri: str | None = None
    tensorboard_dir: Path | None = None
    wandb_project: str | None = None

    def any(self) -> bool:
        """Return True when some tracker is asked for."""
        return bool(self.mlflow_uri or self.tensorboard_dir or self.wandb_project)


def publish(record: TrackerRecord, opts: TrackerOptions) -> list[str]:
    """Send the record to every tracker in ``opts``; return one line per tracker saying where it went."""
    done = []
    if opts.mlflow_uri:
        from .mlflow_tracker import log_to_mlflow

        done.append(log_to_mlflow(record, opts.mlflow_uri))
    if opts.tensorboard_dir:
        from .tensorboard_tracker import log_to_tensorboard

        done.append(log_to_tensorboard(record, opts.tensorboard_dir))
    if opts.wandb_project:
        from .wandb_tracker import log_to_wandb

        done.append(log_to_wandb(record, opts.wandb_project))
    return done
