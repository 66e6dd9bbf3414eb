"""Stateful training policy as `TrainerCallback`s."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback

from texttune.distributed import processes, same_on_every_process
from texttune.errors import TexttuneError

if TYPE_CHECKING:
    from texttune.metrics import Scorer

logger = logging.getLogger(__name__)


class WeightAveraging(TrainerCallback):
    """An exponential moving average of the weights, updated after every optimizer step (timm's ModelEma).

    The average is smoother than the last step's weights and often generalises better on small, noisy data.
    `TexttuneTrainer` evaluates the averaged weights, so the weights kept as best are the best average.

    Args:
        decay: weight of the old average per step; the horizon is about 1 / (1 - decay) steps. Early on the decay
            is min(decay, (1 + t) / (10 + t)), so the first steps are not frozen into the average.
    """

    def __init__(self, decay: float = 0.995) -> None:
        self.decay = decay
        self.average: dict[str, torch.Tensor] = {}
        self.updates = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        if self.average:  # resumed from a checkpoint: the average goes on
            return
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.updates = 0

    def resume(self, average: dict[str, torch.Tensor], updates: int) -> None:
        """Go on from a checkpoint's average after `updates` steps (instead of starting from the weights)."""
        self.average, self.updates = average, updates

    @torch.no_grad()
    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, average in self.average.items():
            average.lerp_(current[name].detach(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Swap the averaged weights into `model` for the block, then restore the training weights."""
        if not self.average:
            yield
            return
        state = model.state_dict()
        backup = {name: state[name].detach().clone() for name in self.average}
        model.load_state_dict(self.average, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(backup, strict=False)


class KeepBest(TrainerCallback):
    """Keeps a copy of the weights at the best evaluation so far, across Trainers (fastai's SaveModelCallback).

    The copy lives in host memory (checkpoints save it with the rest, see `texttune.checkpoints`); one instance
    passed to every stage of gradual unfreezing keeps the best over all of them. Runs inside `evaluate`, so with
    weight averaging on it copies the evaluated average. Ties keep the earlier weights.

    Args:
        metric: key of the metric, without the `eval_` prefix.
        greater_is_better: direction of the metric.
        scorer: the evaluation's `compute_metrics` (`texttune.metrics.Scorer`); its outputs at the best evaluation
            are kept too (`outputs`), so the bundle's validation predictions are the ones that were scored.
    """

    def __init__(self, metric: str, greater_is_better: bool, scorer: Scorer | None = None) -> None:
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.scorer = scorer
        self.best: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.outputs: np.ndarray | None = None

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.greater_is_better else value < self.best

    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: nn.Module | None = None, metrics: dict | None = None, **kw
    ):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is not None and self._improves(float(value)):
            self.best = float(value)
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.outputs = None if self.scorer is None else self.scorer.outputs

    def restore(self, model: nn.Module) -> None:
        """Load the best weights into `model`; raises if no evaluation produced a finite metric."""
        if self.weights is None:
            raise TexttuneError(
                f"no finite validation {self.metric} was reached (the loss diverged, or no evaluation ran); "
                "lower training.learning_rate or train longer"
            )
        model.load_state_dict(self.weights)


class WeightsInSync(TrainerCallback):
    """At the end of each stage, check that every process holds the same weights. DDP keeps them so as long as
    every process trains the same parameters; a stage that froze differently in one process would drift silently."""

    def __init__(self, model: torch.nn.Module, stage: int) -> None:
        self.model, self.stage = model, stage

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not processes().distributed:
            return
        with torch.no_grad():  # one parameter at a time: an fp64 copy of a large model at once would not fit
            sums = [p.detach().double().sum() for p in self.model.parameters()]
            squares = [p.detach().double().pow(2).sum() for p in self.model.parameters()]
            checksum = torch.stack(sums + squares)  # on the model's device, where the backend gathers
        if not same_on_every_process(checksum):
            raise TexttuneError(
                f"data-parallel: the processes' weights differ after stage {self.stage + 1}; this is a texttune bug, "
                "please report it with the recipe"
            )
        if processes().main:
            logger.info("stage %d: weights identical in all %d processes", self.stage + 1, processes().count)
