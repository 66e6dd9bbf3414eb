"""`TrackingCallback`: the Trainer's logs, live, into a tracked run, on the whole run's step axis.

Gradual unfreezing trains one Trainer per stage, each counting steps from zero; the callback adds the steps of the
stages before, so a run's curves read like one training.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from texttune.tracking.run import TrackedRun

_TIMING = ("runtime", "samples_per_second", "steps_per_second")


class TrackingCallback(TrainerCallback):
    """Logs training loss, learning rate and gradient norm as `train_*`, and each evaluation as `valid_*`."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run
        self.steps_before = 0  # optimizer steps of the finished stages
        self.epochs_before = 0.0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any):
        if not logs:
            return
        metrics: dict[str, float] = {}
        for key, value in logs.items():
            if key.startswith("eval_"):
                if not key.endswith(_TIMING):
                    metrics[f"valid_{key.removeprefix('eval_')}"] = value
            elif key in ("loss", "grad_norm"):
                metrics[f"train_{key}"] = value
            elif key == "learning_rate":
                metrics[key] = value
        if metrics:
            metrics["epoch"] = self.epochs_before + (state.epoch or 0.0)
            self.run.log_metrics(metrics, step=self.steps_before + state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self.steps_before += state.global_step
        self.epochs_before += state.epoch or 0.0
