"""`TextPipeline`: how a row of a table becomes model inputs, the one place that knows it.

text columns -> join (the tokenizer's separator token) -> tokenize (truncated to `max_length`, no padding) ->
collate (pad each batch to its longest text, on the tokenizer's padding side). Training, `Predictor` and anything
that serves or exports a model use this object and nothing else to turn rows into tensors; it is written into the
bundle's `texttune.json` and rebuilt from there, so prediction never re-reads a recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Features = dict[str, list[int]]  # one tokenized text: input_ids, attention_mask (and token_type_ids)


@dataclass(frozen=True)
class PaddingCollator:
    """Pads a batch to its longest text (rounded up to a multiple of 8, never past `max_length`)."""

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int = 8
    max_length: int | None = None

    def width(self, longest: int) -> int:
        """The padded width of a batch whose longest text has `longest` tokens."""
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width if self.max_length is None else max(longest, min(width, self.max_length))

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        width = self.width(max(len(f["input_ids"]) for f in features))
        batch: dict[str, torch.Tensor] = {}
        for key, pad_value in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in features[0]:
                continue
            tensor = torch.full((len(features), width), pad_value, dtype=torch.long)  # (B, T)
            for row, feature in enumerate(features):
                values = torch.as_tensor(feature[key], dtype=torch.long)
                if self.padding_side == "left":
                    tensor[row, width - len(values) :] = values
                else:
                    tensor[row, : len(values)] = values
            batch[key] = tensor
        if "labels" in features[0]:
            batch["labels"] = torch.as_tensor([f["labels"] for f in features])
        return batch


@dataclass(frozen=True)
class TextPipeline:
    """Rows -> token ids -> padded batches, with the settings a bundle stores (`to_dict`).

    Args:
        tokenizer: the encoder's tokenizer; saved beside the JSON by `save_pretrained`.
        text_columns: the table columns read, in order; several are joined by `joiner`.
        max_length: tokens per text after truncation.
        joiner: between text columns: the tokenizer's separator token with spaces, else a newline.

    Example:
        >>> pipeline = TextPipeline.create(tokenizer, ("title", "body"), max_length=256)
        >>> batch = pipeline.collate(pipeline.encode(pipeline.join({"title": ["Hi"], "body": ["A text."]})))
    """

    tokenizer: Any = field(repr=False, compare=False)
    text_columns: tuple[str, ...]
    max_length: int
    joiner: str
    padding_side: str
    pad_token_id: int
    pad_to_multiple_of: int = 8

    @classmethod
    def create(cls, tokenizer: Any, text_columns: Sequence[str], max_length: int) -> TextPipeline:
        """The pipeline of a new model: the rest is read off the tokenizer."""
        sep = getattr(tokenizer, "sep_token", None)
        return cls(
            tokenizer,
            tuple(text_columns),
            max_length,
            joiner=f" {sep} " if sep else "\n",
            padding_side=tokenizer.padding_side,
            pad_token_id=tokenizer.pad_token_id,
        )

    def join(self, columns: Mapping[str, Sequence[str]]) -> list[str]:
        """One text per row from the text columns (validated strings, see `texttune.data.read_texts`)."""
        if len(self.text_columns) == 1:
            return [str(v) for v in columns[self.text_columns[0]]]
        return [self.joiner.join(map(str, values)) for values in zip(*(columns[c] for c in self.text_columns))]

    def encode(self, texts: Sequence[str]) -> list[Features]:
        """Tokenize once, truncated and unpadded: the collator pads each batch to its own longest text."""
        if not texts:  # the tokenizers fail on an empty list (a full-data run's validation set)
            return []
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]

    def batches(self, features: Sequence[Features], max_tokens: int, max_batch: int) -> list[np.ndarray]:
        """Indices of `features` in batches of similar lengths: sorted by length, then cut by `budget_batches`.

        A budget of tokens, not a count of texts, keeps the work per batch even: 200 short sentences cost what
        10 long essays do.
        """
        lengths = np.fromiter((len(f["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        order = np.argsort(lengths, kind="stable")
        return [order[batch] for batch in budget_batches(lengths[order], self.collate.width, max_tokens, max_batch)]

    @property
    def collate(self) -> PaddingCollator:
        """Features (with optional `labels`) -> a padded batch of tensors; the Trainer's data collator."""
        return PaddingCollator(self.pad_token_id, self.padding_side, self.pad_to_multiple_of, self.max_length)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_columns": list(self.text_columns),
            "max_length": self.max_length,
            "joiner": self.joiner,
            "padding_side": self.padding_side,
            "pad_token_id": self.pad_token_id,
            "pad_to_multiple_of": self.pad_to_multiple_of,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], tokenizer: Any) -> TextPipeline:
        return cls(tokenizer, **{**data, "text_columns": tuple(data["text_columns"])})


def budget_batches(
    lengths: Sequence[int], width: Callable[[int], int], max_tokens: int, max_batch: int
) -> list[np.ndarray]:
    """Positions 0..N-1 cut, in their order, into batches of at most `max_tokens` padded tokens (texts x `width` of
    the longest) and at most `max_batch` texts, and always at least one. Sorted lengths pad least; the order is kept
    so that outputs come back in the order of `lengths` (an evaluation's predictions, for instance)."""
    batches, start = [], 0
    while start < len(lengths):
        end, longest = start + 1, int(lengths[start])
        while end < len(lengths) and end - start < max_batch:
            widest = max(longest, int(lengths[end]))
            if (end + 1 - start) * width(widest) > max_tokens:
                break
            end, longest = end + 1, widest
        batches.append(np.arange(start, end))
        start = end
    return batches
