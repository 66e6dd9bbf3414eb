"""`train(recipe)`: read and validate the table, fine-tune with TexttuneTrainer, keep the best checkpoint, write
the bundle.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import TrainingArguments, set_seed

from texttune._hardware import use_bf16
from texttune.bundle import BUNDLE_FILE, BundleInfo, save_bundle
from texttune.config import Recipe
from texttune.data import (
    EncodedDataset,
    PaddingCollator,
    check_texts,
    encode_texts,
    read_table,
    read_texts,
    require_columns,
    text_joiner,
)
from texttune.errors import TexttuneError
from texttune.metrics import baseline_metrics, best_metric, make_compute_metrics
from texttune.models import TextModel, create_loss, load_backbone
from texttune.models.registry import check_max_length
from texttune.policy import param_groups
from texttune.policy.callbacks import WeightAveraging
from texttune.task import TaskSpec, encode_targets, infer_task, split_train_valid
from texttune.trainer import TexttuneTrainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the bundle went and how the kept checkpoint scored on validation."""

    bundle: Path
    metrics: dict[str, float]
    baseline: dict[str, float]
    seconds: float


def load_tables(recipe: Recipe) -> tuple[pd.DataFrame, pd.DataFrame, TaskSpec]:
    """Read, validate and split the data; regression statistics come from the training part only."""
    data = recipe.data
    frame = read_table(data.train, data.sep)
    check_texts(frame, data.text_columns)
    if data.id_column:
        require_columns(frame, [data.id_column], "id")
    spec = infer_task(frame, data.target_columns, recipe.task)
    if data.valid is not None:
        train, valid = frame, read_table(data.valid, data.sep)
        check_texts(valid, data.text_columns)
    else:
        train, valid = split_train_valid(frame, spec, data.valid_fraction, recipe.training.seed)
        if spec.is_regression:
            spec = infer_task(train, data.target_columns, recipe.task.model_copy(update={"type": "regression"}))
    logger.info("%d training rows, %d validation rows", len(train), len(valid))
    return train, valid, spec


def _dataset(
    tokenizer: Any, frame: pd.DataFrame, recipe: Recipe, targets: np.ndarray, by_length: bool = False
) -> EncodedDataset:
    texts = read_texts(frame, recipe.data.text_columns, text_joiner(tokenizer))
    features = encode_texts(tokenizer, texts, recipe.model.max_length)
    if by_length:  # metrics do not depend on order, and sorted batches pad least
        order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        features, targets = [features[i] for i in order], targets[order]
    return EncodedDataset(features, targets.tolist())


def _training_arguments(recipe: Recipe, spec: TaskSpec, train_rows: int, scratch: str) -> TrainingArguments:
    training = recipe.training
    steps_per_epoch = math.ceil(math.ceil(train_rows / training.batch_size) / training.gradient_accumulation_steps)
    total_steps = math.ceil(steps_per_epoch * training.epochs)
    eval_steps = max(1, math.ceil(steps_per_epoch / training.evals_per_epoch))
    metric, greater_is_better = best_metric(spec)
    return TrainingArguments(
        output_dir=scratch,
        num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        max_grad_norm=training.max_grad_norm,
        lr_scheduler_type=training.scheduler,
        warmup_steps=int(training.warmup_ratio * total_steps),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=greater_is_better,
        logging_steps=max(1, min(50, eval_steps // 4)),
        bf16=use_bf16(training.precision),
        use_cpu=not torch.cuda.is_available(),
        seed=training.seed,
        data_seed=training.seed,
        label_names=["labels"],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
    )


def _eval_history(trainer: TexttuneTrainer) -> list[dict[str, float]]:
    """Every evaluation of the run, with its step and epoch, without the `eval_` prefix and timing keys."""
    return [
        {k.removeprefix("eval_"): v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
        for e in trainer.state.log_history
        if "eval_loss" in e
    ]


def _best_eval(history: list[dict[str, float]], metric: str, best: float | None) -> dict[str, float]:
    """Metrics of the kept checkpoint, read from the history instead of evaluating once more."""
    kept = next((h for h in history if h.get(metric) == best), None)
    if kept is None:
        raise TexttuneError(
            f"no finite validation {metric} was reached (the loss diverged, or no evaluation ran); "
            "lower training.learning_rate or train longer"
        )
    return kept


def train(recipe: Recipe) -> TrainResult:
    """Fine-tune the recipe's encoder and write the best checkpoint as a bundle in `recipe.output.dir`.

    Raises:
        TexttuneError: bad data or configuration, before any training starts.

    Example:
        >>> result = train(load_recipe("examples/demo.yaml"))
        >>> result.metrics["accuracy"]
    """
    started = time.perf_counter()
    output = Path(recipe.output.dir)
    if output.exists() and not (output / BUNDLE_FILE).is_file():
        raise TexttuneError(
            f"output.dir {output} exists and is not a texttune bundle; it would be replaced, so choose another "
            "output.dir or remove it"
        )
    set_seed(recipe.training.seed)
    train_frame, valid_frame, spec = load_tables(recipe)
    train_targets, valid_targets = encode_targets(train_frame, spec), encode_targets(valid_frame, spec)
    backbone, tokenizer = load_backbone(recipe.model.backbone, recipe.model.backbone_dropout)
    check_max_length(backbone, recipe.model.max_length)
    train_set = _dataset(tokenizer, train_frame, recipe, train_targets)
    valid_set = _dataset(tokenizer, valid_frame, recipe, valid_targets, by_length=True)

    set_seed(recipe.training.seed)
    model = TextModel(
        backbone,
        recipe.model.pooling,
        spec.num_outputs,
        recipe.model.head_dropout,
        initial_bias=spec.target_mean if spec.is_regression else None,
    )
    training = recipe.training
    groups = param_groups(
        model, training.learning_rate, training.head_learning_rate, training.weight_decay, training.layer_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=training.learning_rate, eps=1e-6)  # handed to the Trainer as is
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".texttune-checkpoints-", dir=output.parent) as scratch:
        args = _training_arguments(recipe, spec, len(train_set), scratch)
        trainer = TexttuneTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=valid_set,
            data_collator=PaddingCollator(
                tokenizer.pad_token_id, tokenizer.padding_side, max_length=recipe.model.max_length
            ),
            compute_metrics=make_compute_metrics(spec),
            optimizers=(optimizer, None),
            loss=create_loss(recipe.task, spec),
            group_by_length=training.group_by_length,
            weight_averaging=WeightAveraging(training.ema_decay) if training.ema_decay else None,
        )
        trainer.train()
        history = _eval_history(trainer)
        metrics = _best_eval(history, best_metric(spec)[0], trainer.state.best_metric)
    baseline = baseline_metrics(train_targets, valid_targets, spec)
    seconds = time.perf_counter() - started
    info = BundleInfo(
        task=spec,
        text_columns=tuple(recipe.data.text_columns),
        id_column=recipe.data.id_column,
        backbone=recipe.model.backbone,
        backbone_config=backbone.config.to_dict(),
        pooling=recipe.model.pooling,
        head_dropout=recipe.model.head_dropout,
        max_length=recipe.model.max_length,
        precision="bf16" if args.bf16 else "fp32",
    )
    report = {
        "valid": metrics,
        "baseline": baseline,
        "train_rows": len(train_set),
        "valid_rows": len(valid_set),
        "seconds": round(seconds, 1),
        "history": history,
    }
    save_bundle(output, trainer.model, tokenizer, info, report, recipe.to_dict())
    logger.info("bundle written to %s", output)
    return TrainResult(bundle=output, metrics=metrics, baseline=baseline, seconds=seconds)
