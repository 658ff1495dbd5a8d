"""Issue 27: training runs read from what the tools write (Trainer state files, TensorBoard event files),
and what their curves say: a run that converges, one that over-fits from step 600, one that diverges (NaN)
at step 700, each found at the right step, from either source."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from splitwatch.service.local.planted_runs import (
    DIVERGES_AT,
    OVERFIT_FROM,
    write_tensorboard_runs,
    write_trainer_runs,
)
from splitwatch.service.local.processes import splitwatch_command
from splitwatch.service.training.analysis import analyse, convergence, spikes
from splitwatch.service.training.sources import EVAL_LOSS, TRAIN_LOSS, Series, load_run


@pytest.mark.parametrize("source", ["trainer", "tensorboard"])
def test_three_planted_runs_are_each_found_at_the_right_step(tmp_path: Path, source: str) -> None:
    runs = (write_trainer_runs if source == "trainer" else write_tensorboard_runs)(tmp_path / "runs")
    out = tmp_path / "report"
    res = subprocess.run(splitwatch_command("training", *map(str, runs.values()), "--output", str(out)),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = {r["name"]: r for r in json.loads((out / "report.json").read_text())["runs"]}
    lora, full, diverged = report["lora-r16"], report["full-ft"], report["full-ft-lr3e-4"]
    assert lora["convergence"] == "converged" and lora["overfitting_from"] is None and lora["diverged_at"] is None
    # flat at the end: its noisy minimum may be any late step, but the rise after it is noise, under 2%
    assert lora["best_step"] >= 1500 and lora["eval_rise"] < 0.02 and lora["last_eval_step"] == 2000
    assert lora["gap_at_last"] == pytest.approx(0.08, abs=0.01)
    assert full["overfitting_from"] == OVERFIT_FROM == full["best_step"] and full["last_eval_step"] == 2000
    assert full["eval_rise"] > 0.5 and full["train_fall_after_best"] > 0.5 and full["diverged_at"] is None
    assert full["convergence"] == "still falling"
    assert diverged["diverged_at"] == DIVERGES_AT and diverged["convergence"] == "diverged"
    assert diverged["overfitting_from"] is None
    if source == "trainer":
        assert lora["params"]["method"] == "lora" and lora["params"]["r"] == "16"
        assert full["recorded_best_checkpoint"].endswith(f"checkpoint-{OVERFIT_FROM}")
    # the curves are in the JSON, with the NaN as null; the page has one plot per curve, a line per run
    assert len(full["curves"][EVAL_LOSS]) == 20 and len(full["curves"][TRAIN_LOSS]) == 200
    assert diverged["curves"][TRAIN_LOSS][69] == [700.0, None]
    page = (out / "report.html").read_text()
    assert page.count("<img") == 3  # training loss, validation loss, eval_accuracy
    assert "over-fits from step 600" in res.stdout
    assert "diverged: the loss is NaN or infinite from step 700" in res.stdout
    assert "| full-ft |" in (out / "report.md").read_text()


def test_run_sources_and_their_errors(tmp_path: Path) -> None:
    runs = write_trainer_runs(tmp_path / "runs")
    named = load_run(f"mine={runs['full-ft']}")
    assert named.name == "mine" and named.source.endswith("checkpoint-2000/trainer_state.json")
    assert set(named.series) >= {TRAIN_LOSS, EVAL_LOSS, "eval_accuracy", "learning_rate", "grad_norm"}
    assert 2000 not in named.series[TRAIN_LOSS].steps[:-1]  # the closing summary's train_loss is not a point
    for bad, message in ((tmp_path / "nope", "no such file or directory"),
                         (tmp_path, "neither a trainer_state.json")):
        with pytest.raises(ValueError, match=message):
            load_run(str(bad))
    res = subprocess.run(splitwatch_command("training", str(tmp_path / "nope")), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "no such file or directory" in res.stderr and "Traceback" not in res.stderr


def test_the_rules_on_small_curves() -> None:
    steps = np.arange(10, 210, 10, dtype=float)
    flat = Series(steps, np.full(20, 1.0))
    falling = Series(steps, np.linspace(2.0, 1.0, 20))
    assert convergence(flat)[0] == "converged" and convergence(falling)[0] == "still falling"
    spiky = np.full(40, 1.0) + np.sin(np.arange(40)) * 0.01
    spiky[25] = 3.0
    assert spikes(Series(np.arange(40, dtype=float), spiky)) == [25]
    from splitwatch.service.training.sources import TrainingRun

    val = Series(steps[::5], np.array([2.0, 1.5, 1.6, 1.8]))
    run = TrainingRun("x", "here", {TRAIN_LOSS: falling, EVAL_LOSS: val})
    f = analyse(run)
    assert f.best_step == 60 and f.overfitting_from == 60 and f.eval_rise == pytest.approx(0.2)


def test_a_run_read_from_mlflow_metric_histories(tmp_path: Path) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from splitwatch.service.local.planted_runs import RUNS, history_of

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("tuning"), run_name="full-ft")
    history = history_of(RUNS["full-ft"][0], 1)
    metrics = [Metric("train/loss", h["loss"], 0, h["step"]) for h in history if "loss" in h]
    metrics += [Metric("eval/loss", h["eval_loss"], 0, h["step"]) for h in history if "eval_loss" in h]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param("method", "full"), Param("lr", "2e-5")])
    out = tmp_path / "report"
    res = subprocess.run(splitwatch_command("training", f"mlflow:{run.info.run_id}", "--mlflow-source", uri,
                                            "--output", str(out)), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (found,) = json.loads((out / "report.json").read_text())["runs"]
    assert found["name"] == "full-ft" and found["params"] == {"method": "full", "lr": "2e-5"}
    assert found["overfitting_from"] == OVERFIT_FROM and len(found["curves"][EVAL_LOSS]) == 20
    missing = subprocess.run(splitwatch_command("training", "mlflow:0123456789abcdef", "--mlflow-source", uri),
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "mlflow:0123456789abcdef" in missing.stderr
