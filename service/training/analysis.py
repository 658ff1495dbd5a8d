"""What a run's curves say, by stated rules (docs/training.md).

- **Convergence**: over the last :data:`TAIL_SHARE` of the training-loss points (at least
  :data:`MIN_TAIL` of them), the median of the tail's last quarter against the median of its first
  quarter. A fall of more than :data:`STILL_FALLING` (relative) means *still falling* (more steps would
  help); a rise of more than :data:`RISING` means *rising*; else *converged* (flat).
- **Over-fitting**: the validation loss bottoms out at step s*, and by the last evaluation it has
  risen more than :data:`OVERFIT_RISE` above that minimum while the training loss kept falling
  (by more than :data:`STILL_FALLING` from s* to the end). The report gives s*, the rise and the fall.
- **Generalisation gap**: validation loss minus training loss at the last evaluation step and at
  s* (the training loss nearest that step).
- **Instability**: the first step where a loss is NaN or infinite (*diverged*), and spikes: points
  more than :data:`SPIKE_MADS` median absolute deviations above the median of the
  :data:`SPIKE_WINDOW` points before them, and more than :data:`SPIKE_RATIO` times that median.
- **Best checkpoint against the last**: the validation loss at s* and at the last evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .sources import EVAL_LOSS, TRAIN_LOSS, Series, TrainingRun

TAIL_SHARE = 0.2
MIN_TAIL = 5
STILL_FALLING = 0.01
RISING = 0.05
OVERFIT_RISE = 0.02
SPIKE_WINDOW = 10
SPIKE_MADS = 6.0
SPIKE_RATIO = 1.5


@dataclass
class RunFindings:
    """What one run's curves say (see the module for each rule)."""

    name: str
    source: str
    params: dict[str, str]
    steps: int | None  # the last step logged
    final_train_loss: float | None
    convergence: str  # converged | still falling | rising | diverged | unknown
    tail_change: float | None  # relative change of the training loss over the tail
    diverged_at: int | None
    spikes: list[int] = field(default_factory=list)
    best_step: int | None = None
    best_eval_loss: float | None = None
    last_eval_step: int | None = None
    last_eval_loss: float | None = None
    overfitting_from: int | None = None
    eval_rise: float | None = None  # relative rise of the validation loss after its minimum
    train_fall_after_best: float | None = None
    gap_at_best: float | None = None
    gap_at_last: float | None = None
    recorded_best_checkpoint: str | None = None
    verdict: str = ""
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # other eval metrics: last, best

    def as_dict(self) -> dict[str, Any]:
        """Return the findings as plain values."""
        return asdict(self)


def _relative(new: float, old: float) -> float:
    return (new - old) / abs(old) if old else 0.0


def first_non_finite(series: Series | None) -> int | None:
    """Return the first step whose value is NaN or infinite, or None."""
    if series is None:
        return None
    bad = ~np.isfinite(series.values)
    return int(series.steps[np.argmax(bad)]) if bad.any() else None


def spikes(series: Series | None) -> list[int]:
    """Return the steps of loss spikes (see the module), before any divergence."""
    if series is None:
        return []
    v, out = series.values, []
    for i in range(SPIKE_WINDOW, v.size):
        window = v[i - SPIKE_WINDOW:i]
        if not np.all(np.isfinite(window)) or not np.isfinite(v[i]):
            break
        med = float(np.median(window))
        mad = float(np.median(np.abs(window - med))) or 1e-12
        if v[i] > med + SPIKE_MADS * mad and v[i] > SPIKE_RATIO * med:
            out.append(int(series.steps[i]))
    return out


def convergence(train: Series | None) -> tuple[str, float | None]:
    """Return the convergence finding of the training loss and its tail's relative change."""
    if train is None:
        return "unknown", None
    ok = np.isfinite(train.values)
    values = train.values[: np.argmin(ok)] if not ok.all() else train.values
    n = values.size
    tail = values[-max(MIN_TAIL, int(np.ceil(n * TAIL_SHARE))):]
    if tail.size < MIN_TAIL:
        return "unknown", None
    q = max(1, tail.size // 4)
    change = _relative(float(np.median(tail[-q:])), float(np.median(tail[:q])))
    if change < -STILL_FALLING:
        return "still falling", change
    if change > RISING:
        return "rising", change
    return "converged", change


def _nearest(series: Series, step: float) -> float | None:
    if series.steps.size == 0:
        return None
    i = int(np.argmin(np.abs(series.steps - step)))
    return float(series.values[i])


def analyse(run: TrainingRun) -> RunFindings:
    """Return the findings of one run's curves."""
    train, val = run.series.get(TRAIN_LOSS), run.series.get(EVAL_LOSS)
    last_step = max((int(s.steps[-1]) for s in run.series.values() if s.steps.size), default=None)
    diverged = min((x for x in (first_non_finite(train), first_non_finite(val)) if x is not None), default=None)
    conv, change = convergence(train)
    f = RunFindings(run.name, run.source, run.params, last_step,
                    float(train.values[np.isfinite(train.values)][-1]) if train is not None
                    and np.isfinite(train.values).any() else None,
                    "diverged" if diverged is not None else conv, change, diverged, spikes(train),
                    recorded_best_checkpoint=run.best_checkpoint)
    if val is not None and np.isfinite(val.values).any():
        ok = np.isfinite(val.values)
        steps, values = val.steps[ok], val.values[ok]
        i = int(np.argmin(values))
        f.best_step, f.best_eval_loss = int(steps[i]), float(values[i])
        f.last_eval_step, f.last_eval_loss = int(steps[-1]), float(values[-1])
        f.eval_rise = _relative(f.last_eval_loss, f.best_eval_loss)
        if train is not None:
            t_best, t_last = _nearest(train, steps[i]), _nearest(train, steps[-1])
            if t_best is not None and t_last is not None and np.isfinite(t_best) and np.isfinite(t_last):
                f.train_fall_after_best = -_relative(t_last, t_best)
                f.gap_at_best = f.best_eval_loss - t_best
                f.gap_at_last = f.last_eval_loss - t_last
        if (i < values.size - 1 and f.eval_rise > OVERFIT_RISE and f.train_fall_after_best is not None
                and f.train_fall_after_best > STILL_FALLING):
            f.overfitting_from = f.best_step
    for name, s in run.series.items():
        if name.startswith("eval_") and name != EVAL_LOSS and np.isfinite(s.values).any():
            ok = np.isfinite(s.values)
            f.metrics[name] = {"last": float(s.values[ok][-1]), "max": float(s.values[ok].max()),
                               "min": float(s.values[ok].min())}
    f.verdict = verdict(f)
    return f


def verdict(f: RunFindings) -> str:
    """Return one sentence saying what the run's curves show."""
    if f.diverged_at is not None:
        return f"diverged: the loss is NaN or infinite from step {f.diverged_at}"
    parts = []
    tail = f"over the last {TAIL_SHARE:.0%} of steps"
    if f.overfitting_from is not None:
        parts.append(f"over-fits from step {f.overfitting_from}: validation loss rose {f.eval_rise:.1%} above its "
                     f"minimum while training loss fell {f.train_fall_after_best:.1%}; the best checkpoint is step "
                     f"{f.best_step}, not the last ({f.last_eval_step})")
    if f.convergence == "converged":
        parts.append(f"training loss converged (flat {tail}"
                     + (f", {f.tail_change:+.1%})" if f.tail_change is not None else ")"))
    elif f.convergence == "still falling":
        parts.append(f"training loss still falling at the end ({f.tail_change:+.1%} {tail}): "
                     "more steps may help")
    elif f.convergence == "rising":
        parts.append(f"training loss rising at the end ({f.tail_change:+.1%} {tail})")
    if f.spikes:
        parts.append(f"{len(f.spikes)} loss spike{'s' if len(f.spikes) > 1 else ''} (first at step {f.spikes[0]})")
    if f.best_step is None:
        parts.append("no validation loss logged: over-fitting cannot be judged")
    return "; ".join(parts) or "too few points to judge"
