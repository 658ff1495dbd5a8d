"""Read a training run's logged scalars from what the training tools write.

- **Hugging Face Trainer**: ``trainer_state.json`` (its ``log_history``: ``loss`` at logging steps,
  ``eval_loss`` and ``eval_*`` at evaluation steps, ``learning_rate``, ``grad_norm``); a directory
  holding one, or ``checkpoint-N/`` directories (the latest checkpoint's state is the longest). An
  ``adapter_config.json`` beside it (PEFT) names the tuning method and its rank.
- **TensorBoard**: event files (``events.out.tfevents.*``) in a directory, read with TensorBoard's own
  ``EventAccumulator`` (every scalar kept, no down-sampling).
- **MLflow**: ``mlflow:RUN_ID`` (the tracking URI from ``--mlflow`` or ``MLFLOW_TRACKING_URI``): the
  run's metric histories (``MlflowClient.get_metric_history``) and its parameters.

Series names are normalised: the training loss is ``train_loss`` and the validation loss
``eval_loss`` whatever the tool called them (``loss``, ``train/loss``, ``eval/loss``, ``val_loss``,
``validation/loss``...); other scalars keep their names with ``/`` written ``_``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

TRAIN_LOSS = "train_loss"
EVAL_LOSS = "eval_loss"
_TRAIN_NAMES = {"loss", "train_loss", "train/loss", "training_loss", "training/loss", "loss/train"}
_EVAL_NAMES = {"eval_loss", "eval/loss", "val_loss", "val/loss", "validation_loss", "validation/loss",
               "loss/eval", "loss/validation", "loss/val"}
_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
         "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


class RunSourceError(ValueError):
    """A run could not be read: the message names the path and what is wrong."""


@dataclass
class Series:
    """One logged scalar: its steps (increasing) and values (nan and inf kept: they are evidence)."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class TrainingRun:
    """A run's name, where it was read from, its series by normalised name, and what it says of itself."""

    name: str
    source: str
    series: dict[str, Series]
    params: dict[str, str] = field(default_factory=dict)
    best_checkpoint: str | None = None  # as the tool recorded it (Trainer's best_model_checkpoint)


def series_name(tag: str) -> str:
    """Return the normalised name of a logged scalar (see the module)."""
    low = tag.strip().lower()
    if low in _TRAIN_NAMES:
        return TRAIN_LOSS
    if low in _EVAL_NAMES:
        return EVAL_LOSS
    return re.sub(r"[^a-z0-9_.]+", "_", low).strip("_")


def _series(points: dict[str, list[tuple[int, float]]]) -> dict[str, Series]:
    out = {}
    for name, pts in points.items():
        by_step: dict[int, float] = {}
        for step, value in pts:
            by_step[int(step)] = float(value)  # a step logged twice: the last value
        steps = np.array(sorted(by_step), dtype=float)
        out[name] = Series(steps, np.array([by_step[int(s)] for s in steps], dtype=float))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value.strip().lower().replace("infinity", "inf"))
    return None


def read_trainer_state(path: Path, name: str | None = None) -> TrainingRun:
    """Return the run in a Hugging Face Trainer ``trainer_state.json``."""
    try:  # the json module: Trainer writes a diverged loss as NaN, which strict JSON parsers refuse
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunSourceError(f"{path}: not a readable trainer_state.json ({exc})") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise RunSourceError(f"{path}: no log_history (is it a Hugging Face Trainer state file?)")
    points: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            continue
        if "train_runtime" in entry:  # the closing summary: train_loss there is the run's mean, not a point
            continue
        for key, raw in entry.items():
            value = _number(raw)
            if key in _SKIP or value is None:
                continue
            points.setdefault(series_name(key), []).append((entry["step"], value))
    params = {k: str(state[k]) for k in ("train_batch_size", "num_train_epochs", "max_steps", "eval_steps",
                                         "logging_steps") if state.get(k) is not None}
    adapter = path.parent / "adapter_config.json"
    if not adapter.exists() and path.parent.name.startswith("checkpoint-"):
        adapter = path.parent.parent / "adapter_config.json"
    if adapter.exists():
        try:
            cfg = orjson.loads(adapter.read_bytes())
            params.update({"method": str(cfg.get("peft_type", "adapter")).lower(),
                           **{k: str(cfg[k]) for k in ("r", "lora_alpha", "lora_dropout") if k in cfg}})
        except orjson.JSONDecodeError:
            pass
    return TrainingRun(name or _default_name(path), str(path), _series(points), params,
                       state.get("best_model_checkpoint"))


def _default_name(path: Path) -> str:
    folder = path.parent if path.is_file() else path
    if folder.name.startswith("checkpoint-"):
        folder = folder.parent
    return folder.name or str(path)


def read_tensorboard(directory: Path, name: str | None = None) -> TrainingRun:
    """Return the run whose TensorBoard event files are in ``directory`` (every scalar, all steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ...": every file, every read
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if not tags:
        raise RunSourceError(f"{directory}: no TensorBoard scalars in its event files")
    points = {}
    for tag in tags:
        points.setdefault(series_name(tag), []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return TrainingRun(name or directory.name, str(directory), _series(points))


def read_mlflow(run_id: str, tracking_uri: str | None, name: str | None = None) -> TrainingRun:
    """Return an MLflow run's metric histories and parameters."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RunSourceError(f"mlflow:{run_id}: {exc.message}") from None
    points = {}
    for key in run.data.metrics:
        points.setdefault(series_name(key), []).extend(
            (m.step, m.value) for m in client.get_metric_history(run_id, key))
    return TrainingRun(name or run.info.run_name or run_id, f"mlflow:{run_id}", _series(points),
                       dict(run.data.params))


def load_run(spec: str, tracking_uri: str | None = None) -> TrainingRun:
    """Return the run named by ``spec``: ``[NAME=]PATH`` (a trainer_state.json, a Trainer output directory,
    a TensorBoard log directory) or ``[NAME=]mlflow:RUN_ID``."""
    name, _, target = spec.rpartition("=") if "=" in spec and not spec.startswith("mlflow:") else ("", "", spec)
    name = name or None
    if target.startswith("mlflow:"):
        return read_mlflow(target.removeprefix("mlflow:"), tracking_uri, name)
    path = Path(target)
    if not path.exists():
        raise RunSourceError(f"{target}: no such file or directory")
    if path.is_file():
        if path.name.startswith("events.out.tfevents"):
            return read_tensorboard(path.parent, name)
        return read_trainer_state(path, name)
    state = path / "trainer_state.json"
    if state.exists():
        return read_trainer_state(state, name)
    checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=_checkpoint_step)
    if checkpoints:
        return read_trainer_state(checkpoints[-1], name or path.name)
    if any(path.rglob("events.out.tfevents*")):
        return read_tensorboard(path, name)
    raise RunSourceError(f"{target}: neither a trainer_state.json, checkpoint-*/ directories nor TensorBoard "
                         "event files")


def _checkpoint_step(p: Path) -> int:
    m = re.search(r"checkpoint-(\d+)", str(p))
    return int(m.group(1)) if m else -1
