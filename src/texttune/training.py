"""`train(recipe)`: read and validate the table, fine-tune with TexttuneTrainer, keep the best checkpoint, write
the bundle.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from texttune import plots
from texttune._hardware import use_bf16
from texttune._malloc import retain_freed_memory
from texttune.bundle import BUNDLE_FILE, VALID_PREDICTIONS, BundleInfo, save_bundle
from texttune.config import LearningRate, Recipe, Stage, TrainingConfig
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
from texttune.policy.callbacks import KeepBest, WeightAveraging
from texttune.policy.schedules import one_cycle
from texttune.predictor import Predictor
from texttune.task import TaskSpec, encode_targets, fit_to_training_rows, infer_task, split_train_valid
from texttune.tracking import TrackedRun, TrackingCallback, recipe_params, record_bundle, start_run
from texttune.trainer import TexttuneTrainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the bundle went, how the kept checkpoint scored on validation, and its registered model version."""

    bundle: Path
    metrics: dict[str, float]
    baseline: dict[str, float]
    seconds: float
    model_version: str | None = None  # e.g. models:/demo/3; None without tracking


def read_training_table(recipe: Recipe) -> tuple[pd.DataFrame, TaskSpec]:
    """Read and validate `data.train` (texts, id column, targets) and infer what is learned from it."""
    data = recipe.data
    frame = read_table(data.train, data.sep)
    check_texts(frame, data.text_columns)
    if data.id_column:
        require_columns(frame, [data.id_column], "id")
    return frame, infer_task(frame, data.target_columns, recipe.task)


def load_tables(recipe: Recipe) -> tuple[pd.DataFrame, pd.DataFrame, TaskSpec]:
    """Read, validate and split the data; regression statistics come from the training part only."""
    data = recipe.data
    frame, spec = read_training_table(recipe)
    if data.valid is not None:
        train, valid = frame, read_table(data.valid, data.sep)
        check_texts(valid, data.text_columns)
    else:
        train, valid = split_train_valid(frame, spec, data.valid_fraction, recipe.training.seed)
        spec = fit_to_training_rows(spec, train)
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


@dataclass
class Prepared:
    """Everything a run needs before its first step: validated data, tokenized once, and the untrained model."""

    recipe: Recipe
    spec: TaskSpec
    tokenizer: Any
    model: TextModel
    train_set: EncodedDataset
    valid_set: EncodedDataset
    valid_frame: pd.DataFrame
    baseline: dict[str, float]

    def collator(self) -> PaddingCollator:
        tokenizer = self.tokenizer
        return PaddingCollator(tokenizer.pad_token_id, tokenizer.padding_side, max_length=self.recipe.model.max_length)


Tables = tuple[pd.DataFrame, pd.DataFrame, TaskSpec]  # training rows, validation rows, and what is learned


def prepare(recipe: Recipe, tables: Tables | None = None) -> Prepared:
    """Read and validate the data (or take `tables`, e.g. a cross-validation fold), load the encoder, tokenize,
    and build the model with its seeded head.

    Raises:
        TexttuneError: bad data or configuration, before any training starts.
    """
    set_seed(recipe.training.seed)
    train_frame, valid_frame, spec = tables or load_tables(recipe)
    train_targets, valid_targets = encode_targets(train_frame, spec), encode_targets(valid_frame, spec)
    backbone, tokenizer = load_backbone(recipe.model.backbone, recipe.model.backbone_dropout, recipe.model.attention)
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
    baseline = baseline_metrics(train_targets, valid_targets, spec)
    return Prepared(recipe, spec, tokenizer, model, train_set, valid_set, valid_frame, baseline)


def steps_per_epoch(recipe: Recipe, train_rows: int) -> int:
    training = recipe.training
    return math.ceil(math.ceil(train_rows / training.batch_size) / training.gradient_accumulation_steps)


def training_arguments(recipe: Recipe, max_steps: int, scratch: str, seed: int, **overrides: Any) -> TrainingArguments:
    """The Trainer's arguments for `max_steps` optimizer steps; evaluation and checkpoints are set by the caller."""
    training = recipe.training
    arguments: dict[str, Any] = {
        "output_dir": scratch,
        "max_steps": max_steps,
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


def adamw(model: TextModel, training: TrainingConfig, learning_rate: LearningRate | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with the recipe's discriminative rates (`learning_rate` overrides)."""
    groups = param_groups(
        model,
        learning_rate or training.learning_rate,
        training.head_learning_rate,
        training.weight_decay,
        training.layer_decay,
    )
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], eps=1e-6)


def stage_trainer(
    prepared: Prepared, stage: Stage, index: int, scratch: str, callbacks: list[TrainerCallback]
) -> TexttuneTrainer:
    """A Trainer for one stage: its levels unfrozen, a fresh AdamW over them, and the stage's own schedule."""
    recipe, training, model = prepared.recipe, prepared.recipe.training, prepared.model
    per_epoch = steps_per_epoch(recipe, len(prepared.train_set))
    max_steps = max(1, math.ceil(round(per_epoch * stage.epochs, 6)))  # 50 * 1.1 is 55.00000000000001
    eval_steps = max(1, math.ceil(per_epoch / training.evals_per_epoch))
    model.freeze_to(None if stage.unfreeze == "all" else stage.unfreeze)
    optimizer = adamw(model, training, stage.learning_rate)
    scheduler = None  # the Trainer builds lr_scheduler_type over our optimizer
    if training.scheduler == "one_cycle":
        scheduler = one_cycle(optimizer, max_steps, training.warmup_ratio, training.momentums)
    args = training_arguments(
        recipe,
        max_steps,
        scratch,
        seed=training.seed + index,  # each stage draws its own batch order
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=max(1, min(50, eval_steps // 4)),
    )
    return TexttuneTrainer(
        model=model,
        args=args,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.valid_set,
        data_collator=prepared.collator(),
        compute_metrics=make_compute_metrics(prepared.spec),
        optimizers=(optimizer, scheduler),
        loss=create_loss(recipe.task, prepared.spec),
        group_by_length=training.group_by_length,
        weight_averaging=WeightAveraging(training.ema_decay) if training.ema_decay else None,
        callbacks=callbacks,  # the Trainer also evaluates after the last step
    )


def _stage_logs(trainer: TexttuneTrainer, stage: int, step: int, epoch: float) -> tuple[list[dict], list[dict]]:
    """The stage's training log and evaluations, on the whole run's step and epoch axes, without timing keys."""
    train_log, evaluations = [], []
    for entry in trainer.state.log_history:
        where = {"stage": stage, "step": entry["step"] + step, "epoch": round(entry.get("epoch", 0.0) + epoch, 4)}
        if "eval_loss" in entry:
            scores = {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_")}
            evaluations.append({**where, **{k: v for k, v in scores.items() if not k.endswith(("runtime", "second"))}})
        elif "loss" in entry:
            train_log.append({**where, **{k: entry[k] for k in ("loss", "learning_rate", "grad_norm") if k in entry}})
    return train_log, evaluations


@dataclass(frozen=True)
class Fit:
    """What training produced besides the weights: the kept evaluation, and the logs for curves and reports."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    train_log: list[dict[str, float]]
    stage_starts: list[int]


def fit(prepared: Prepared, callbacks: Sequence[TrainerCallback] = ()) -> Fit:
    """Train the prepared model stage by stage (one stage without `training.stages`) and load the best weights seen
    in any stage's evaluations. `callbacks` join every stage's Trainer (timing, tracking)."""
    retain_freed_memory()  # see texttune._malloc: reuse large buffers instead of page-faulting them in every step
    metric, greater_is_better = best_metric(prepared.spec)
    keep_best = KeepBest(metric, greater_is_better)
    train_log: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    step, epoch, stage_starts = 0, 0.0, []
    with tempfile.TemporaryDirectory(prefix=".texttune-scratch-") as scratch:
        for index, stage in enumerate(prepared.recipe.training.stage_plan()):
            stage_starts.append(step)
            trainer = stage_trainer(prepared, stage, index, scratch, callbacks=[keep_best, *callbacks])
            trainer.train()
            stage_train_log, evaluations = _stage_logs(trainer, index, step, epoch)
            train_log, history = train_log + stage_train_log, history + evaluations
            step, epoch = step + trainer.state.global_step, epoch + stage.epochs
    keep_best.restore(prepared.model)
    prepared.model.freeze_to(None)
    metrics = next(entry for entry in history if entry.get(metric) == keep_best.best)
    return Fit(metrics, history, train_log, stage_starts[1:])


def validation_predictions(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """The validation rows' truth next to the model's predictions: `row` (position in the source table), the id,
    the targets, then `pred_<target>` (and `prob_<class>` for classes). Cross-validation gathers these as OOF."""
    spec = predictor.task
    table = pd.DataFrame({"row": np.asarray(frame.index)})  # read_table numbers rows 0..N-1
    if predictor.info.id_column:
        table[predictor.info.id_column] = frame[predictor.info.id_column].to_numpy()
    for column in spec.target_columns:
        table[column] = frame[column].to_numpy()
    predicted = predictor.predict(predictor.texts_of(frame))  # target columns, or label + prob_<class>
    names = ["label"] if not spec.is_regression else list(spec.target_columns)
    predicted = predicted.rename(columns={name: f"pred_{column}" for name, column in zip(names, spec.target_columns)})
    return pd.concat([table, predicted], axis=1)


def train(recipe: Recipe, tables: Tables | None = None, run: TrackedRun | None = None) -> TrainResult:
    """Fine-tune the recipe's encoder (`prepare`, then `fit`) and write the best weights as a bundle in `output.dir`,
    with `training_curves.png` inside.

    The run is recorded in the recipe's tracking store (`tracking`), or in `run` (a cv fold's); tracking failures
    only warn.

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
    if recipe.training.stages and "epochs" in recipe.training.model_fields_set:
        logger.info(
            "training.stages replace training.epochs: %g epochs in all", sum(s.epochs for s in recipe.training.stages)
        )
    prepared = prepare(recipe, tables)
    with contextlib.nullcontext(run) if run is not None else start_run(recipe, "train") as tracked:
        tracked.log_params(recipe_params(recipe, prepared.spec))
        result = fit(prepared, callbacks=[TrackingCallback(tracked)] if tracked.active else [])
        seconds = time.perf_counter() - started
        _write_bundle(recipe, prepared, result, seconds)
        version = record_bundle(tracked, output, prepared.spec)
    logger.info("bundle written to %s", output)
    return TrainResult(output, result.metrics, prepared.baseline, seconds, version)


def _write_bundle(recipe: Recipe, prepared: Prepared, result: Fit, seconds: float) -> None:
    """The bundle in `output.dir`, with its report, curves and validation predictions."""
    info = BundleInfo(
        task=prepared.spec,
        text_columns=tuple(recipe.data.text_columns),
        id_column=recipe.data.id_column,
        backbone=recipe.model.backbone,
        backbone_config=prepared.model.backbone.config.to_dict(),
        pooling=recipe.model.pooling,
        head_dropout=recipe.model.head_dropout,
        max_length=recipe.model.max_length,
        precision="bf16" if use_bf16(recipe.training.precision) else "fp32",
    )
    report = {
        "valid": result.metrics,
        "baseline": prepared.baseline,
        "train_rows": len(prepared.train_set),
        "valid_rows": len(prepared.valid_set),
        "seconds": round(seconds, 1),
        "history": result.history,
        "train_log": result.train_log,
    }
    metric = best_metric(prepared.spec)[0]
    predictions = validation_predictions(Predictor(prepared.model, prepared.tokenizer, info), prepared.valid_frame)
    extra_files = {
        "training_curves.png": plots.training_curves(result.train_log, result.history, metric, result.stage_starts),
        VALID_PREDICTIONS: predictions.to_csv(index=False).encode(),
    }
    save_bundle(recipe.output.dir, prepared.model, prepared.tokenizer, info, report, recipe.to_dict(), extra_files)
