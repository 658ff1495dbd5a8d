"""MLflow: one run per report, in the MLflow experiment ``splitwatch/<experiment>``."""

from __future__ import annotations

import contextlib
import sys
import time

from .record import TrackerRecord

BATCH = 900  # MLflow's log_batch takes at most 1000 metrics per call


def mlflow_experiment_name(experiment: str) -> str:
    """Return the MLflow experiment a splitwatch experiment's reports go to."""
    return f"splitwatch/{experiment}"


def log_to_mlflow(record: TrackerRecord, uri: str) -> str:
    """Log the record as one MLflow run at tracking URI ``uri``; return a line naming the run."""
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; stdout may be the report itself
        return _log(record, uri)


def _log(record: TrackerRecord, uri: str) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = mlflow_experiment_name(record.experiment)
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
    tags = {**record.all_tags(), "mlflow.runName": record.run_name}
    run = client.create_run(experiment_id, tags=tags, run_name=record.run_name)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in record.metrics.items()]
    for key, points in record.curves.items():
        metrics += [Metric(key, float(v), now, int(step)) for step, v in points]
    params = [Param(k, str(v)[:6000]) for k, v in record.params.items()]
    try:
        client.log_batch(run_id, params=params[:100], tags=[RunTag(k, v) for k, v in record.all_tags().items()])
        for i in range(100, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + BATCH])
        for path in record.artifacts:
            client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return f"MLflow: run {run_id} in experiment {name} at {uri}"
