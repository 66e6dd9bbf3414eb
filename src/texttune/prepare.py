"""`prepare(recipe)`: everything a run needs before its first step, done once: the examples read and split, each
text tokenized once by the run's `TextPipeline`, the post-processing fitted on the training rows, the constant
baseline, and the model with its seeded head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from transformers import set_seed

from texttune.config import Recipe
from texttune.data import EncodedDataset
from texttune.metrics import baseline_metrics
from texttune.models import TextModel, load_backbone
from texttune.models.registry import check_max_length
from texttune.pipeline import TextPipeline
from texttune.postprocess import PostProcessing
from texttune.task import Examples, TaskSpec, read_examples, split_examples

logger = logging.getLogger(__name__)


def read_training_examples(recipe: Recipe) -> tuple[Examples, Examples]:
    """`data.train` and `data.valid` parsed into examples, or `data.train` split by `data.valid_fraction`."""
    data = recipe.data
    examples = read_examples(data.train, data, recipe.task)
    if data.full:
        return examples, examples.subset(np.arange(0))
    if data.valid is None:
        split_seed = recipe.training.seed if data.split_seed is None else data.split_seed
        return split_examples(examples, data.valid_fraction, split_seed)
    # The whole table trains: its statistics from the values as read (float64), as format-1 releases did, so that
    # a recipe keeps giving the same model. After a split, `prepare` takes them from the float32 training labels.
    train = replace(examples, task=examples.task.with_statistics(examples.targets))
    return train, read_examples(data.valid, data, train.task)


def training_task(train: Examples) -> TaskSpec:
    """The task with the training rows' statistics: as read with `data.valid`, else from the float32 labels."""
    return train.task if train.task.target_mean else train.task.with_statistics(train.labels)


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs before its first step: the examples tokenized once, and the untrained model."""

    recipe: Recipe
    spec: TaskSpec  # with the training rows' statistics
    pipeline: TextPipeline
    postprocess: PostProcessing  # clipping to the training rows' range, or softmax
    model: TextModel
    train_set: EncodedDataset
    valid_set: EncodedDataset  # sorted by length: metrics do not depend on order, and sorted batches pad least
    valid: Examples
    valid_order: np.ndarray  # row k of valid_set is row valid_order[k] of `valid`
    baseline: dict[str, float]


def prepare(recipe: Recipe, examples: tuple[Examples, Examples] | None = None) -> Prepared:
    """Read the data (or take `examples`, training and validation, e.g. a cross-validation fold), load the
    encoder, tokenize each example once, and build the model with its seeded head.

    Raises:
        TexttuneError: bad data or configuration, before any training starts.
    """
    set_seed(recipe.training.seed)
    train, valid = examples or read_training_examples(recipe)
    if len(valid):
        logger.info("%d training rows, %d validation rows", len(train), len(valid))
    else:
        logger.info(
            "%d training rows, all of them (data.valid_fraction 0): no evaluation, the last weights kept", len(train)
        )
    spec = training_task(train)
    backbone, tokenizer = load_backbone(recipe.model.backbone, recipe.model.backbone_dropout, recipe.model.attention)
    check_max_length(backbone, recipe.model.max_length)
    pipeline = TextPipeline.create(tokenizer, recipe.data.text_columns, recipe.model.max_length)
    train_features, valid_features = (pipeline.encode(pipeline.join(part.texts)) for part in (train, valid))
    order = np.argsort([len(f["input_ids"]) for f in valid_features], kind="stable")
    valid_set = EncodedDataset([valid_features[i] for i in order], valid.labels[order].tolist())
    set_seed(recipe.training.seed)
    initial_bias = spec.target_mean if spec.is_regression else None
    model = TextModel(backbone, recipe.model.pooling, spec.num_outputs, recipe.model.head_dropout, initial_bias)
    postprocess = PostProcessing.for_task(spec, recipe.task.clip_predictions)
    baseline = baseline_metrics(train.labels, valid.labels, spec) if len(valid) else {}
    train_set = EncodedDataset(train_features, train.labels.tolist())
    return Prepared(recipe, spec, pipeline, postprocess, model, train_set, valid_set, valid, order, baseline)
