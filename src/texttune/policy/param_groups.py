"""Optimizer parameter groups: discriminative learning rates by depth, and no weight decay on biases and norms.

`Rates` is the policy, `Rates.param_groups` the groups `TexttuneTrainer.create_optimizer` builds its optimizer
over. Only trainable parameters are grouped: a frozen stage's optimizer holds (and steps) nothing below the unfrozen
levels. Unfreezing therefore means building a new optimizer, which is what each stage of gradual unfreezing does
(a new Trainer); never freeze after building the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from texttune.config import LearningRate, TrainingConfig
from texttune.models.heads import TextModel


def level_rates(
    learning_rate: LearningRate, levels: int, head_learning_rate: float | None = None, layer_decay: float = 1.0
) -> list[float]:
    """Learning rate of each level, from the head down to the embeddings.

    A float is the rate of the encoder's top level; each level below gets `layer_decay` times the one above, and the
    head gets `head_learning_rate` (default: the float). A pair (low, high) is fastai's slice: the head gets high,
    the embeddings low, and the levels between a geometric spread. `head_learning_rate` overrides the head either way.

    Example:
        >>> level_rates(1e-4, 4, layer_decay=0.5)
        [0.0001, 0.0001, 5e-05, 2.5e-05]
        >>> level_rates((1e-5, 1e-3), 3)
        [0.001, 0.0001, 1e-05]
    """
    if isinstance(learning_rate, tuple | list):
        low, high = learning_rate
        rates = [high * (low / high) ** (depth / max(1, levels - 1)) for depth in range(levels)]
    else:
        rates = [learning_rate] + [learning_rate * layer_decay**depth for depth in range(levels - 1)]
    return [head_learning_rate or rates[0], *rates[1:]]


@dataclass(frozen=True)
class Rates:
    """Learning rates by depth and weight decay: a recipe's `learning_rate`, `head_learning_rate`, `layer_decay`
    and `weight_decay` (or a stage's rate), turned into optimizer parameter groups for a model.

    Example:
        >>> Rates(1e-4, head_learning_rate=1e-3, layer_decay=0.9).param_groups(model)[0]["lr"]
        0.0001
    """

    learning_rate: LearningRate
    head_learning_rate: float | None = None
    layer_decay: float = 1.0
    weight_decay: float = 0.01

    @classmethod
    def of(cls, training: TrainingConfig, learning_rate: LearningRate | None = None) -> Rates:
        """The recipe's rates; `learning_rate` (a stage's) replaces `training.learning_rate`."""
        return cls(
            learning_rate or training.learning_rate, training.head_learning_rate, training.layer_decay,
            training.weight_decay,
        )  # fmt: skip

    def of_levels(self, levels: int) -> list[float]:
        return level_rates(self.learning_rate, levels, self.head_learning_rate, self.layer_decay)

    def top(self, model: TextModel) -> float:
        """The rate of the encoder's top level: the Trainer's `learning_rate`, and what the LR finder sweeps."""
        return self.of_levels(len(model.levels()))[1]

    def param_groups(self, model: TextModel) -> list[dict[str, Any]]:
        """One group per (level, decay or not) over the trainable parameters, with the level's rate.

        Matrices get `weight_decay`; vectors (biases, LayerNorm weights) none. Encoder groups come first, top level
        first, because the Trainer logs the learning rate of group 0.
        """
        levels = model.levels()
        rates = self.of_levels(len(levels))
        parameters = dict(model.named_parameters())
        groups = []
        for depth in [*range(1, len(levels)), 0]:
            for decays in (True, False):
                params = [
                    parameters[n]
                    for n in levels[depth]
                    if parameters[n].requires_grad and (parameters[n].ndim >= 2) == decays
                ]
                if params:
                    groups.append(
                        {
                            "params": params,
                            "lr": rates[depth],
                            "weight_decay": self.weight_decay if decays else 0.0,
                            "name": f"{'head' if depth == 0 else f'level_{depth}'}{'' if decays else '_no_decay'}",
                        }
                    )
        return groups
