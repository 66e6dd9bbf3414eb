"""TexttuneTrainer: `transformers.Trainer` with our loss and length-grouped batches, through its documented hooks."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from texttune.data import EncodedDataset, LengthGroupedBatchSampler
from texttune.policy.callbacks import WeightAveraging

logger = logging.getLogger(__name__)


class ProgressBar(ProgressCallback):
    """The Trainer's tqdm bar with the latest loss in its postfix; evaluations go to the log on stderr.

    The stock callback writes every log dict to stdout, which drowns a command's own output (JSON, tables).
    """

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or self.training_bar is None:
            return
        if "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4g}", refresh=False)
        scores = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        if scores:
            shown = ", ".join(
                f"{k} {float(v):.4g}" for k, v in scores.items() if not k.endswith(("runtime", "second"))
            )
            logger.info("step %d (epoch %.2f): %s", state.global_step, state.epoch or 0.0, shown)


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
        self.remove_callback(PrinterCallback)
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(ProgressBar)
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
