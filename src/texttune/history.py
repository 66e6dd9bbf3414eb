"""The one reader of the Trainer's logs: each log dict parsed once into an `Entry` on the whole run's step axis.

Gradual unfreezing trains one Trainer per stage, each counting steps from zero; `History` adds the steps and epochs
of the stages before, once, so metrics.json, the curves and the tracking store read the same entries (the progress
bar shares `parse_log`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from transformers import TrainerCallback

TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second")
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm")


def parse_log(logs: Mapping[str, Any]) -> tuple[Literal["train", "eval"], dict[str, float]] | None:
    """A Trainer log dict -> ("eval", loss and metrics without the `eval_` prefix and timings) or ("train", loss,
    learning rate, gradient norm); None for anything else (the end-of-training summary)."""
    if "eval_loss" in logs:
        scores = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        return "eval", {k: v for k, v in scores.items() if not k.endswith(TIMING_KEYS)}
    if "loss" in logs:
        return "train", {k: logs[k] for k in TRAIN_KEYS if k in logs}
    return None


@dataclass(frozen=True)
class Entry:
    """One training log or evaluation, on the whole run's axes."""

    kind: Literal["train", "eval"]
    stage: int
    step: int
    epoch: float
    values: dict[str, float]

    def to_dict(self) -> dict[str, float]:
        """The row of metrics.json's `train_log` or `history`."""
        return {"stage": self.stage, "step": self.step, "epoch": self.epoch, **self.values}

    @classmethod
    def from_dict(cls, kind: Literal["train", "eval"], row: Mapping[str, Any]) -> Entry:
        values = {k: v for k, v in row.items() if k not in ("stage", "step", "epoch")}
        return cls(kind, int(row.get("stage", 0)), int(row["step"]), float(row.get("epoch", 0.0)), values)

    def tracked(self) -> dict[str, float]:
        """The metrics a tracking store gets: `train_loss`, `train_grad_norm`, `learning_rate`, `valid_<metric>`."""
        if self.kind == "eval":
            names = {k: f"valid_{k}" for k in self.values}
        else:
            names = {k: k if k == "learning_rate" else f"train_{k}" for k in self.values}
        return {names[k]: v for k, v in self.values.items()} | {"epoch": self.epoch}


class History(TrainerCallback):
    """Collects every stage's log entries on one axis and passes each to `listeners` as it arrives.

    One instance joins every stage's Trainer. `stage_starts` holds the step at which each stage after the first
    began (the dashed lines of the training curves). A stage's epochs on the run's axis are its planned ones
    (`stage_epochs`, e.g. 0.5 for a stage of 63 of 125 steps), else those the Trainer counted.
    """

    def __init__(
        self, listeners: Sequence[Callable[[Entry], None]] = (), stage_epochs: Sequence[float] | None = None
    ) -> None:
        self.listeners = list(listeners)
        self.stage_epochs = stage_epochs
        self.entries: list[Entry] = []
        self.stage = -1
        self.steps_before = 0
        self.epochs_before = 0.0
        self.stage_starts: list[int] = []
        self.resuming_stage = False

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the log after a restart, as JSON-ready data."""
        return {
            "entries": [{"kind": entry.kind, **entry.to_dict()} for entry in self.entries],
            "stage": self.stage,
            "steps_before": self.steps_before,
            "epochs_before": self.epochs_before,
            "stage_starts": self.stage_starts,
        }

    def restore(self, state: Mapping[str, Any], mid_stage: bool) -> None:
        """Continue from `state`; `mid_stage`: the next Trainer resumes the current stage instead of the next. The
        listeners get the entries so far first, so a tracked run of a resumed training holds the whole curve."""
        self.entries = [
            Entry.from_dict(row["kind"], {k: v for k, v in row.items() if k != "kind"}) for row in state["entries"]
        ]
        for entry in self.entries:
            for listener in self.listeners:
                listener(entry)
        self.stage, self.steps_before = state["stage"], state["steps_before"]
        self.epochs_before, self.stage_starts = state["epochs_before"], list(state["stage_starts"])
        self.resuming_stage = mid_stage

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.resuming_stage:  # the Trainer goes on with the stage it was in
            self.resuming_stage = False
            return
        self.stage += 1
        if self.stage > 0:
            self.stage_starts.append(self.steps_before)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        parsed = parse_log(logs or {})
        if parsed is None:
            return
        kind, values = parsed
        epoch = round(self.epochs_before + (state.epoch or 0.0), 4)
        entry = Entry(kind, self.stage, self.steps_before + state.global_step, epoch, values)
        self.entries.append(entry)
        for listener in self.listeners:
            listener(entry)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps_before += state.global_step
        self.epochs_before += self.stage_epochs[self.stage] if self.stage_epochs else state.epoch or 0.0

    def of_kind(self, kind: Literal["train", "eval"]) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind == kind]
