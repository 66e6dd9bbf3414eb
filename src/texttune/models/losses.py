"""Training losses by name. Inputs: logits (B, C) float32; labels (B, T) float32 or (B,) int64."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from texttune.config import TaskConfig
from texttune.errors import TexttuneError


class RMSELoss(nn.Module):
    """Mean over targets of each target's RMSE: the MCRMSE metric itself, made differentiable.

    Args:
        eps: added under the square root so the gradient stays finite at zero error.

    Inputs:
        predictions and targets, both (B, T) float32.

    Relations:
        MSE weights large errors more and is smoother early on; smooth-L1 resists outliers in noisy labels.

    Example:
        >>> RMSELoss()(torch.zeros(4, 2), torch.ones(4, 2))
        tensor(1.0000)
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_target = ((predictions - targets) ** 2).mean(dim=0)  # (T,)
        return torch.sqrt(per_target + self.eps).mean()


LOSSES: dict[str, Callable[[TaskConfig], nn.Module]] = {
    "rmse": lambda config: RMSELoss(),
    "mse": lambda config: nn.MSELoss(),
    "smooth_l1": lambda config: nn.SmoothL1Loss(),
    "cross_entropy": lambda config: nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
}


def create_loss(config: TaskConfig, regression: bool) -> nn.Module:
    """The recipe's loss; `auto` is RMSE for regression and cross-entropy for classes."""
    name = config.loss if config.loss != "auto" else ("rmse" if regression else "cross_entropy")
    if (name == "cross_entropy") == regression:
        task = "regression" if regression else "classification"
        raise TexttuneError(f"task.loss '{name}' does not fit a {task} task")
    return LOSSES[name](config)
