"""Three fine-tuning runs with known behaviour, written as the tools write them (for the demo and the
tests): a LoRA run that converges, a full fine-tune that over-fits from step 600, and a run whose
learning rate is too high and whose loss turns NaN at step 700.

Each is written as a Hugging Face Trainer output directory (``checkpoint-N/trainer_state.json``,
the LoRA one with its ``adapter_config.json``; NaN written as Trainer's ``json.dumps`` writes it) and
as TensorBoard event files (tensorboardX, tags ``train/loss``, ``eval/loss``, ``eval/accuracy``).
Training loss is logged every 10 steps, the evaluation every 100, for 2,000 steps.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

STEPS, LOG_EVERY, EVAL_EVERY = 2000, 10, 100
OVERFIT_FROM, DIVERGES_AT = 600, 700


def _converges(step: int) -> tuple[float, float]:
    return 2.0 * math.exp(-step / 250) + 0.5, 2.0 * math.exp(-step / 250) + 0.58


def _overfits(step: int) -> tuple[float, float]:
    train = 2.0 * math.exp(-step / 400) + 0.3 - 0.00004 * step
    val = 2.0 * math.exp(-min(step, OVERFIT_FROM) / 400) + 0.6 + 0.0004 * max(0, step - OVERFIT_FROM)
    return train, val


def _diverges(step: int) -> tuple[float, float]:
    if step >= DIVERGES_AT:
        return math.nan, math.nan
    return 2.0 * math.exp(-step / 300) + 0.5, 2.0 * math.exp(-step / 300) + 0.56


RUNS: dict[str, tuple[Callable[[int], tuple[float, float]], bool]] = {
    "lora-r16": (_converges, True), "full-ft": (_overfits, False), "full-ft-lr3e-4": (_diverges, False)}


def history_of(curve: Callable[[int], tuple[float, float]], seed: int) -> list[dict]:
    """Return a run's Trainer ``log_history``: the loss every 10 steps, the evaluation every 100 (seeded noise)."""
    rng = random.Random(seed)
    history = []
    for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        train, val = curve(step)
        noisy = train * (1 + rng.uniform(-0.004, 0.004))
        history.append({"loss": noisy, "learning_rate": 2e-4 * (1 - step / STEPS), "grad_norm": 1.0,
                        "epoch": step / 500, "step": step})
        if step % EVAL_EVERY == 0:
            history.append({"eval_loss": val * (1 + rng.uniform(-0.002, 0.002)),
                            "eval_accuracy": None if math.isnan(val) else max(0.0, 1.0 - val / 3), "epoch":
                            step / 500, "step": step})
    return history


def write_trainer_runs(directory: Path) -> dict[str, Path]:
    """Write each run as a Trainer output directory under ``directory``; return the directories by run name."""
    out = {}
    for seed, (name, (curve, lora)) in enumerate(RUNS.items()):
        run = directory / name
        ckpt = run / f"checkpoint-{STEPS}"
        ckpt.mkdir(parents=True, exist_ok=True)
        history = history_of(curve, seed)
        evals = [h for h in history if "eval_loss" in h and not math.isnan(h["eval_loss"])]
        best = min(evals, key=lambda h: h["eval_loss"])
        state = {"best_metric": best["eval_loss"], "best_model_checkpoint": str(run / f"checkpoint-{best['step']}"),
                 "epoch": STEPS / 500, "global_step": STEPS, "max_steps": STEPS, "logging_steps": LOG_EVERY,
                 "eval_steps": EVAL_EVERY, "train_batch_size": 16, "num_train_epochs": 4,
                 "log_history": [*history, {"train_runtime": 812.5, "train_loss": 0.9, "step": STEPS}]}
        (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=2))  # NaN as Trainer writes it
        if lora:
            (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                                                                 "lora_dropout": 0.05}))
        out[name] = run
    return out


def write_tensorboard_runs(directory: Path) -> dict[str, Path]:
    """Write each run's scalars as TensorBoard event files under ``directory``; return the log directories."""
    from tensorboardX import SummaryWriter

    out = {}
    # tensorboardX warns once per NaN it is given: the diverging run is meant to hold them
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    for seed, (name, (curve, _)) in enumerate(RUNS.items()):
        logdir = directory / name
        writer = SummaryWriter(logdir=str(logdir))
        _write_scalars(writer, history_of(curve, seed))
        writer.close()
        out[name] = logdir
    return out


def _write_scalars(writer: object, history: list[dict]) -> None:
    for h in history:
        if "loss" in h:
            writer.add_scalar("train/loss", h["loss"], h["step"])  # type: ignore[attr-defined]
        if "eval_loss" in h:
            writer.add_scalar("eval/loss", h["eval_loss"], h["step"])  # type: ignore[attr-defined]
            if h["eval_accuracy"] is not None:
                writer.add_scalar("eval/accuracy", h["eval_accuracy"], h["step"])  # type: ignore[attr-defined]
