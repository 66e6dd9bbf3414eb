"""Training losses by name. Inputs: logits (B, C) float32; labels (B, T) float32 or (B,) int64."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from texttune.config import TaskConfig
from texttune.errors import TexttuneError
from texttune.task import TaskSpec


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


class OrdinalCrossEntropy(nn.Module):
    """Cross-entropy against soft labels that put mass on neighbouring classes (SORD, Diaz & Marathe 2019).

    For ordered classes (ratings, sentiment grades), predicting 3 for a true 4 is a smaller error than predicting 0;
    plain cross-entropy cannot tell them apart.

    Args:
        positions: the numeric value of each class, in index order.
        scale: soft target of class j for true class i is proportional to exp(-scale * (v_i - v_j)^2).

    Inputs:
        logits (B, C) float32 and labels (B,) int64.

    Relations:
        cross_entropy for unordered classes; regression when the spacing of the values is meaningful too.

    Example:
        >>> OrdinalCrossEntropy([0, 1, 2, 3, 4])(torch.zeros(2, 5), torch.tensor([0, 4]))
    """

    def __init__(self, positions: Sequence[float], scale: float = 2.0) -> None:
        super().__init__()
        values = torch.as_tensor(positions, dtype=torch.float32)
        soft = torch.softmax(-scale * (values[:, None] - values[None, :]) ** 2, dim=1)  # (C, C), rows sum to 1
        self.register_buffer("soft_targets", soft)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -(self.soft_targets[labels] * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


REGRESSION_LOSSES: dict[str, Callable[[TaskConfig, TaskSpec], nn.Module]] = {
    "rmse": lambda config, spec: RMSELoss(),
    "mse": lambda config, spec: nn.MSELoss(),
    "smooth_l1": lambda config, spec: nn.SmoothL1Loss(),
}
CLASSIFICATION_LOSSES: dict[str, Callable[[TaskConfig, TaskSpec], nn.Module]] = {
    "cross_entropy": lambda config, spec: nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
    "ordinal_cross_entropy": lambda config, spec: OrdinalCrossEntropy(_ordered_values(spec), config.ordinal_scale),
}
LOSSES = {**REGRESSION_LOSSES, **CLASSIFICATION_LOSSES}


def _ordered_values(spec: TaskSpec) -> list[float]:
    try:
        return [float(label) for label in spec.labels]
    except ValueError:
        raise TexttuneError(
            f"task.loss ordinal_cross_entropy needs numeric class labels, got {', '.join(spec.labels)}; "
            "use cross_entropy"
        ) from None


def create_loss(config: TaskConfig, spec: TaskSpec) -> nn.Module:
    """The recipe's loss; `auto` is RMSE for regression and cross-entropy for classes."""
    table = REGRESSION_LOSSES if spec.is_regression else CLASSIFICATION_LOSSES
    name = config.loss if config.loss != "auto" else next(iter(table))
    if name not in table:
        raise TexttuneError(f"task.loss '{name}' does not fit a {spec.kind} task; choose one of {', '.join(table)}")
    return table[name](config, spec)
