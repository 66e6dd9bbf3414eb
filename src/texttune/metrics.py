"""Validation metrics, as plain functions of numpy arrays and as `compute_metrics` for the Trainer.

Regression: RMSE per target and MCRMSE (mean of the column-wise RMSEs, the FB3 metric; lower is better).
Classification: accuracy, error rate and macro-F1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from transformers import EvalPrediction

from texttune.postprocess import PostProcessing
from texttune.task import TaskSpec


def regression_metrics(predictions: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per-target RMSE (`rmse_<name>`) and their mean, `mcrmse`. Both arrays are (N, T)."""
    rmse = np.sqrt(np.mean((np.asarray(predictions) - np.asarray(targets)) ** 2, axis=0))  # (T,)
    metrics = {f"rmse_{name}": float(value) for name, value in zip(names, rmse)}
    metrics["mcrmse"] = float(rmse.mean())
    return metrics


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, error rate and macro-F1 of the arg-max class. `probabilities` (N, C), `labels` (N,)."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    accuracy = float(np.mean(predicted == labels))
    return {
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "f1_macro": float(f1_score(labels, predicted, average="macro", labels=np.arange(probabilities.shape[1]))),
    }


def task_metrics(
    outputs: np.ndarray, targets: np.ndarray, spec: TaskSpec, postprocess: PostProcessing
) -> dict[str, float]:
    """Metrics of raw head outputs, after the post-processing the predictor applies."""
    scores = postprocess.apply(outputs)
    if spec.is_regression:
        return regression_metrics(scores, targets, spec.target_columns)
    return classification_metrics(scores, targets)


def baseline_metrics(train_targets: np.ndarray, valid_targets: np.ndarray, spec: TaskSpec) -> dict[str, float]:
    """The score of a constant guess: training means for regression, the majority class for classification."""
    if spec.is_regression:
        constant = np.broadcast_to(train_targets.mean(axis=0), valid_targets.shape)
        return regression_metrics(constant, valid_targets, spec.target_columns)
    majority = np.bincount(train_targets, minlength=spec.num_outputs).argmax()
    return classification_metrics(np.eye(spec.num_outputs)[np.full(len(valid_targets), majority)], valid_targets)


def best_metric(spec: TaskSpec) -> tuple[str, bool]:
    """The metric that picks the best checkpoint, and whether greater is better."""
    return ("mcrmse", False) if spec.is_regression else ("accuracy", True)


class Scorer:
    """The Trainer's `compute_metrics`: metrics of an evaluation's head outputs, which it keeps (`outputs`, in the
    evaluation set's order) so that the kept evaluation's validation predictions need no second pass.

    With `loss` (the training loss module) it also reports that loss over the whole set at once: the Trainer's own
    `eval_loss` weighs every batch as if it held `eval_batch_size` texts, and token-budget batches do not.
    """

    def __init__(self, spec: TaskSpec, postprocess: PostProcessing, loss: nn.Module | None = None) -> None:
        self.spec = spec
        self.postprocess = postprocess
        self.loss = loss
        self.outputs: np.ndarray | None = None

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        outputs = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        self.outputs = np.asarray(outputs)
        metrics = task_metrics(self.outputs, prediction.label_ids, self.spec, self.postprocess)
        if self.loss is not None:
            with torch.no_grad():
                labels = torch.as_tensor(prediction.label_ids)
                metrics["loss"] = float(self.loss(torch.as_tensor(self.outputs), labels))  # replaces eval_loss
        return metrics
