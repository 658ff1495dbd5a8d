"""Send a report's figures where the team already looks: MLflow, TensorBoard, Weights & Biases.

Every report (``eval``, ``report``, ``training``, ``data``) becomes one :class:`TrackerRecord`:
parameters, metrics (a value, or a curve of steps), the report files as artifacts, and tags naming
the experiment and the phase. :func:`publish` sends it to each tracker asked for; one MLflow run
(one W&B run, one TensorBoard run directory) per report.
"""

from __future__ import annotations

from .record import TrackerOptions, TrackerRecord, publish

__all__ = ["TrackerOptions", "TrackerRecord", "publish"]
