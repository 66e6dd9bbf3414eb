"""TexttuneTrainer: `transformers.Trainer` with our loss, our optimizer and schedule, and length-grouped batches,
through its documented hooks (`compute_loss`, `create_optimizer`, `create_scheduler`, `get_train_dataloader`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from texttune._hardware import use_bf16
from texttune.checkpoints import Checkpoints, load_optimizer_and_scheduler, load_rng_state
from texttune.config import TrainingConfig
from texttune.data import EncodedDataset, LengthGroupedBatchSampler
from texttune.history import parse_log
from texttune.pipeline import PaddingCollator, budget_batches
from texttune.policy.callbacks import WeightAveraging
from texttune.policy.param_groups import Rates

Schedule = Callable[[Optimizer, int], LRScheduler]  # (optimizer, total steps) -> scheduler, e.g. policy.OneCycle

logger = logging.getLogger(__name__)


class ProgressBar(ProgressCallback):
    """The Trainer's tqdm bar with the latest loss in its postfix; evaluations go to the log on stderr.

    The stock callback writes every log dict to stdout, which drowns a command's own output (JSON, tables).
    """

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs or self.training_bar is None:
            return
        parsed = parse_log(logs)
        if parsed is None:
            return
        kind, values = parsed
        if kind == "train":
            self.training_bar.set_postfix(loss=f"{float(values['loss']):.4g}", refresh=False)
        else:
            shown = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items())
            logger.info("step %d (epoch %.2f): %s", state.global_step, state.epoch or 0.0, shown)


class TexttuneTrainer(Trainer):
    """A Trainer whose loss is a module of its own, whose optimizer follows the policy's discriminative rates, and
    whose training batches group similar lengths.

    Args:
        loss: maps (logits, labels) to a scalar; see `texttune.models.losses`.
        rates: learning rates by level and weight decay; `create_optimizer` builds the optimizer of `args.optim`
            (AdamW) over `rates.param_groups(model)`, the trainable parameters only, so freeze before training.
        schedule: builds the scheduler over that optimizer (one cycle, the LR finder's sweep); None uses
            `args.lr_scheduler_type`.
        group_by_length: batch texts of similar length (shuffled batches), else plain random batches.
        eval_max_tokens: padded tokens per evaluation batch (at most `args.eval_batch_size` texts); batches keep
            the evaluation set's order, so sort it by length to pad least.
        weight_averaging: evaluate a moving average of the weights.
        checkpoints: where `control.should_save` writes, and `train(resume_from_checkpoint=...)` reads (see
            `texttune.checkpoints`; the Trainer's own format pickles the optimizer and RNG states).
        *args, **kwargs: passed to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        loss: nn.Module,
        rates: Rates,
        schedule: Schedule | None = None,
        group_by_length: bool = True,
        eval_max_tokens: int = 4096,
        weight_averaging: WeightAveraging | None = None,
        checkpoints: Checkpoints | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(ProgressBar)
        self.loss = loss
        self.rates = rates
        self.schedule = schedule
        self.group_by_length = group_by_length
        self.eval_max_tokens = eval_max_tokens
        self.weight_averaging = weight_averaging
        self.checkpoints = checkpoints
        if weight_averaging is not None:
            self.add_callback(weight_averaging)

    def _averaged(self) -> contextlib.AbstractContextManager:
        return self.weight_averaging.applied(self.model) if self.weight_averaging else contextlib.nullcontext()

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Evaluate the averaged weights when weight averaging is on."""
        with self._averaged():
            return super().evaluate(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        """The optimizer of `args.optim` with `args`' betas and epsilon, over the policy's parameter groups."""
        if self.optimizer is None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
                self.args, model
            )
            self.optimizer = optimizer_cls(self.rates.param_groups(model), **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Optimizer | None = None) -> LRScheduler:
        if self.lr_scheduler is None and self.schedule is not None:
            self.lr_scheduler = self.schedule(optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True  # as the Trainer marks its own: a second train() builds a new one
        return super().create_scheduler(num_training_steps, optimizer)

    # Checkpoint I/O: the Trainer has no public hook for it, so its private writers and readers are replaced here,
    # with the same call sites (`_maybe_log_save_evaluate` saves, `train(resume_from_checkpoint=...)` loads).
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.checkpoints is not None and self.args.should_save:  # the main process writes for all
            self.checkpoints.save(self.model, self)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Nothing: `Checkpoints.restore` put the weights back before this Trainer was built."""

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            load_optimizer_and_scheduler(self, checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            load_rng_state(checkpoint)

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
        sampler = LengthGroupedBatchSampler(
            dataset.lengths,
            self._train_batch_size,
            seed=self.args.seed,
            rank=self.args.process_index,
            processes=self.args.world_size,
        )  # with several processes, already this process's share
        return self._batched_loader(dataset, sampler)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """Batches cut by a token budget: a count of 64 long essays builds attention matrices of gigabytes."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if not (isinstance(dataset, EncodedDataset) and isinstance(self.data_collator, PaddingCollator)):
            return super().get_eval_dataloader(eval_dataset)
        batches = budget_batches(
            dataset.lengths, self.data_collator.width, self.eval_max_tokens, self.args.eval_batch_size
        )
        return self._batched_loader(dataset, batches)

    def _batched_loader(self, dataset: EncodedDataset, batches: Any) -> DataLoader:
        """A loader of `batches` as they are: with several processes, training batches are already each process's
        share, and every process evaluates the whole validation set, so accelerate must not shard them again."""
        loader = _EpochLoader(
            dataset, batch_sampler=batches, collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers
        )
        return loader if self.args.world_size > 1 else self.accelerator.prepare(loader)

    def create_accelerator_and_postprocess(self) -> None:
        """With several processes, evaluation outputs are not gathered: each process evaluated the whole set (the
        metrics, the kept-best choice and the kept predictions need all of it, in its order), so a gather would
        repeat every row once per process. (The loop's `pad_across_processes` still talks to the other processes
        at every batch; it agrees, since they all evaluate the same batches.)"""
        super().create_accelerator_and_postprocess()
        if self.args.world_size > 1:
            self.accelerator.gather_for_metrics = self.gather_function = _already_whole  # the loop resets to it


class _EpochLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches its batch sampler, as accelerate's prepared loaders do: a resumed
    run must draw each epoch's own order, not the first epoch's again."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def _already_whole(tensors: Any, use_gather_object: bool = False) -> Any:
    return tensors


def training_arguments(
    training: TrainingConfig, max_steps: int, scratch: str, learning_rate: float, seed: int, **overrides: Any
) -> TrainingArguments:
    """The Trainer's arguments for `max_steps` optimizer steps at `learning_rate` (the encoder's top level; the
    other levels' rates come from the policy). Evaluation and logging cadence are set by the caller."""
    arguments: dict[str, Any] = {
        "output_dir": scratch,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "weight_decay": training.weight_decay,
        "optim": "adamw_torch_fused",  # one kernel for all parameters: 1.29x samples/s on sentences (AdamW's math)
        "adam_epsilon": 1e-6,
        "per_device_train_batch_size": training.batch_size,
        "per_device_eval_batch_size": training.eval_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "max_grad_norm": training.max_grad_norm,
        "lr_scheduler_type": "linear" if training.scheduler == "one_cycle" else training.scheduler,
        "warmup_steps": int(training.warmup_ratio * max_steps),
        "save_strategy": "no",
        "logging_steps": 50,
        "disable_tqdm": False,  # our ProgressBar; TQDM_DISABLE=1 (set by `texttune -q`) hides it
        "bf16": use_bf16(training.precision),
        "use_cpu": not torch.cuda.is_available(),
        "seed": seed,
        "data_seed": seed,
        "label_names": ["labels"],
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    return TrainingArguments(**{**arguments, **overrides})
