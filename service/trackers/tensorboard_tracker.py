"""TensorBoard: the same scalars, written with tensorboardX under ``<dir>/<experiment>/<phase>/<run>``."""

from __future__ import annotations

from pathlib import Path

from .record import TrackerRecord, clean_key


def log_to_tensorboard(record: TrackerRecord, directory: Path) -> str:
    """Write the record's metrics (step 0), curves (their steps) and parameters (text); return where."""
    from tensorboardX import SummaryWriter

    logdir = Path(directory) / clean_key(record.experiment) / record.phase / clean_key(record.run_name)
    writer = SummaryWriter(logdir=str(logdir))
    try:
        for key, value in record.metrics.items():
            writer.add_scalar(key, value, 0)
        for key, points in record.curves.items():
            for step, value in points:
                writer.add_scalar(key, float(value), int(step))
        if record.params:
            table = "\n".join(f"| {k} | {v} |" for k, v in sorted(record.params.items()))
            writer.add_text("params", "| parameter | value |\n|---|---|\n" + table, 0)
        writer.add_text("tags", ", ".join(f"{k}={v}" for k, v in record.all_tags().items()), 0)
    finally:
        writer.close()
    return f"TensorBoard: {logdir}"
