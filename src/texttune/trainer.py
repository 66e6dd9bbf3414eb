"""TexttuneTrainer: `transformers.Trainer` with our loss and length-grouped batches, through its documented hooks."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from texttune.data import EncodedDataset, LengthGroupedBatchSampler
from texttune.policy.callbacks import WeightAveraging


class TexttuneTrainer(Trainer):
    """A Trainer whose loss is a module of its own and whose training batches group similar lengths.

    Args:
        loss: maps (logits, labels) to a scalar; see `texttune.models.losses`.
        group_by_length: batch texts of similar length (shuffled batches), else plain random batches.
        *args, **kwargs: passed to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        loss: nn.Module,
        group_by_length: bool = True,
        weight_averaging: WeightAveraging | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss = loss
        self.group_by_length = group_by_length
        self.weight_averaging = weight_averaging
        if weight_averaging is not None:
            self.add_callback(weight_averaging)

    def _averaged(self) -> contextlib.AbstractContextManager:
        return self.weight_averaging.applied(self.model) if self.weight_averaging else contextlib.nullcontext()

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Evaluate the averaged weights when weight averaging is on."""
        with self._averaged():
            return super().evaluate(*args, **kwargs)

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        """Checkpoint the averaged weights, so the best checkpoint loaded at the end is an average."""
        with self._averaged():
            super().save_model(*args, **kwargs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss(outputs["logits"], labels)
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        if not (self.group_by_length and isinstance(dataset, EncodedDataset)):
            return super().get_train_dataloader()
        sampler = LengthGroupedBatchSampler(dataset.lengths, self._train_batch_size, seed=self.args.seed)
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers
        )
        return self.accelerator.prepare(loader)
