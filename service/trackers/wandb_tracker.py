"""Weights & Biases: one run per report, in the given project. ``WANDB_MODE=offline`` keeps it on disk
(``wandb sync`` uploads it later); the content is the same either way."""

from __future__ import annotations

import os
from pathlib import Path

from .record import TrackerRecord


def log_to_wandb(record: TrackerRecord, project: str) -> str:
    """Log the record as one W&B run (config: the parameters; summary: the metrics; curves against their
    own step, their names' dots written "/"; the report files saved); return a line naming the run."""
    import wandb

    run = wandb.init(project=project, name=record.run_name, config=dict(record.params),
                     tags=[record.experiment, record.phase], group=record.experiment, job_type=record.phase,
                     dir=os.environ.get("WANDB_DIR"), reinit="create_new")
    try:
        for curve_key, points in record.curves.items():
            key = curve_key.replace(".", "/")  # define_metric reads a dot as nesting; "/" is W&B's section separator
            step_key = f"{key}/step"
            run.define_metric(step_key, hidden=True)
            run.define_metric(key, step_metric=step_key)
            for step, value in points:
                run.log({step_key: int(step), key: float(value)})
        run.summary.update(dict(record.metrics))
        run.summary.update({k.replace(".", "_"): v for k, v in record.all_tags().items()})
        for path in record.artifacts:
            run.save(str(Path(path).resolve()), base_path=str(Path(path).resolve().parent), policy="now")
        where = run.dir
    finally:
        run.finish()
    return f"W&B: run {record.run_name} in project {project} ({where})"
