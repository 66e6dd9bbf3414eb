"""Optimizer parameter groups: layer-wise learning rates, and no weight decay on biases and norms.

Groups are built over all parameters, frozen ones included: `Trainer.create_optimizer` skips parameters with
`requires_grad=False`, so a model frozen before that call could never be unfrozen into training.
"""

from __future__ import annotations

from typing import Any

from texttune.models.heads import TextModel
from texttune.models.layer_groups import layer_groups


def param_groups(
    model: TextModel,
    learning_rate: float,
    head_learning_rate: float | None = None,
    weight_decay: float = 0.01,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """One group per (layer group, decay or not), each with its learning rate.

    The head trains at `head_learning_rate` (default `learning_rate`); the encoder's top group and last layer at
    `learning_rate`, and each group below at `layer_decay` times the one above (layer-wise LR decay), so the
    embeddings get `learning_rate * layer_decay**L`. Vectors (biases, LayerNorm weights) get no weight decay.
    """
    parameters = dict(model.named_parameters())
    body = layer_groups(model.backbone, prefix="backbone.")
    depth = {name: max(0, len(body) - 2 - index) for index, names in enumerate(body) for name in names}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in parameters.items():
        level = depth.get(name, -1)  # -1: the head (pooling and linear layer)
        decays = parameter.ndim >= 2
        lr = (head_learning_rate or learning_rate) if level < 0 else learning_rate * layer_decay**level
        group = groups.setdefault(
            (level, decays),
            {
                "params": [],
                "lr": lr,
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{'head' if level < 0 else f'body_{level}'}{'' if decays else '_no_decay'}",
            },
        )
        group["params"].append(parameter)
    # Encoder groups first: the Trainer logs the learning rate of group 0.
    return [groups[key] for key in sorted(groups, key=lambda key: (key[0] < 0, key))]
