"""The model texttune trains: encoder -> pooling -> dropout -> linear head.

Pooling turns token states (B, T, H) into one vector per text (B, H). XLNet pads on the left and puts its CLS
token last, so `cls` pooling reads the last position there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from texttune.errors import TexttuneError
from texttune.models.layer_groups import layer_groups

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

CLS_LAST = {"xlnet"}  # families whose summary token ends the sequence


class MeanPooling(nn.Module):
    """Average of the non-padding token states."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class MaxPooling(nn.Module):
    """Per-feature maximum over the non-padding token states."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(dim=1)


class ClsPooling(nn.Module):
    """The state of the summary token: first position, or last for XLNet-style left padding."""

    def __init__(self, last: bool = False) -> None:
        super().__init__()
        self.last = last

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, -1] if self.last else hidden[:, 0]


POOLINGS: dict[str, Callable[[PretrainedConfig], nn.Module]] = {
    "mean": lambda config: MeanPooling(),
    "max": lambda config: MaxPooling(),
    "cls": lambda config: ClsPooling(last=config.model_type in CLS_LAST),
}


def create_pooling(name: str, config: PretrainedConfig) -> nn.Module:
    if name not in POOLINGS:
        raise TexttuneError(f"model.pooling '{name}' is unknown; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[name](config)


class TextModel(nn.Module):
    """An encoder with a pooled linear head, for class logits (B, C) or regression scores (B, T).

    Args:
        backbone: a Hugging Face encoder (`AutoModel`).
        pooling: a name in POOLINGS.
        num_outputs: classes, or regression targets.
        dropout: applied to the pooled vector.
        initial_bias: regression heads start from the training targets' means, so early steps learn the text's
            effect instead of the offset.

    Example:
        >>> model = TextModel(backbone, "mean", num_outputs=6, initial_bias=[3.0] * 6)
        >>> model(input_ids, attention_mask)["logits"].shape
        torch.Size([8, 6])
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        pooling: str = "mean",
        num_outputs: int = 2,
        dropout: float = 0.1,
        initial_bias: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = create_pooling(pooling, backbone.config)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_outputs)
        nn.init.normal_(self.head.weight, std=getattr(backbone.config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)
        if initial_bias is not None:
            with torch.no_grad():
                self.head.bias.copy_(torch.as_tensor(initial_bias, dtype=torch.float32))
        self.accepts_token_type_ids = "token_type_ids" in inspect.signature(backbone.forward).parameters

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.accepts_token_type_ids:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state  # (B, T, H)
        pooled = self.pooling(hidden.float(), attention_mask)  # (B, H)
        # The head runs in fp32 even under bf16 autocast: bf16 would round scores to steps of about 0.016.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            logits = self.head(self.dropout(pooled))  # (B, C)
        return {"logits": logits}

    def levels(self) -> list[list[str]]:
        """Parameter names by depth from the top: [head, last layer, ..., first layer, embeddings].

        The unit of discriminative learning rates and of gradual unfreezing. The encoder's top group (pooler,
        final norm, relative position tables) joins its last layer: alone it may train nothing (BERT's pooler is
        unused here).
        """
        embeddings, *layers, top = layer_groups(self.backbone, prefix="backbone.")
        head = [name for name, _ in self.named_parameters() if not name.startswith("backbone.")]
        return [head, layers[-1] + top, *reversed(layers[:-1]), embeddings]

    def freeze_to(self, trainable: int | None) -> None:
        """Train only the top `trainable` levels (1: the head alone); None trains everything.

        Frozen parameters get `requires_grad=False`, so backward stops above them and frozen stages run faster.
        """
        levels = self.levels()
        keep = {name for level in levels[: len(levels) if trainable is None else trainable] for name in level}
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in keep)
