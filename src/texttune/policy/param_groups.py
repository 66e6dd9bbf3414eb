"""Optimizer parameter groups: body vs head learning rates, and no weight decay on biases and norms.

Groups are built over all parameters, frozen ones included: `Trainer.create_optimizer` skips parameters with
`requires_grad=False`, so a model frozen before that call could never be unfrozen into training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    learning_rate: float,
    head_learning_rate: float | None,
    weight_decay: float,
    head_prefix: str = "head.",
) -> list[dict[str, Any]]:
    """Four groups: (body, head) x (decay, no decay). Vectors (biases, LayerNorm weights) get no decay."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        key = (name.startswith(head_prefix), parameter.ndim >= 2)
        groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": (head_learning_rate or learning_rate) if is_head else learning_rate,
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{'head' if is_head else 'body'}{'' if decays else '_no_decay'}",
        }
        for (is_head, decays), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module, learning_rate: float, head_learning_rate: float | None = None, weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """AdamW over `param_groups`, handed to the Trainer through `optimizers=(optimizer, None)`."""
    groups = param_groups(model, learning_rate, head_learning_rate, weight_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-6)
