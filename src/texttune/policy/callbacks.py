"""Stateful training policy as `TrainerCallback`s."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback


class WeightAveraging(TrainerCallback):
    """An exponential moving average of the weights, updated after every optimizer step (timm's ModelEma).

    The average is smoother than the last step's weights and often generalises better on small, noisy data.
    `TexttuneTrainer` evaluates and checkpoints the averaged weights, so the kept checkpoint is the best average.

    Args:
        decay: weight of the old average per step; the horizon is about 1 / (1 - decay) steps. Early on the decay
            is min(decay, (1 + t) / (10 + t)), so the first steps are not frozen into the average.
    """

    def __init__(self, decay: float = 0.995) -> None:
        self.decay = decay
        self.average: dict[str, torch.Tensor] = {}
        self.updates = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.updates = 0

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
