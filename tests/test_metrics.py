"""Metric formulas against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from texttune.metrics import baseline_metrics, classification_metrics, regression_metrics, task_metrics
from texttune.postprocess import Clip, PostProcessing
from texttune.task import TaskSpec


def test_mcrmse_is_the_mean_of_columnwise_rmse() -> None:
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    prediction = np.array([[2.0, 2.0], [3.0, 1.0]])
    metrics = regression_metrics(prediction, truth, ["a", "b"])
    # column a: errors (1, 0) -> sqrt(1/2); column b: errors (0, 3) -> sqrt(9/2)
    assert metrics["rmse_a"] == pytest.approx(np.sqrt(0.5))
    assert metrics["rmse_b"] == pytest.approx(np.sqrt(4.5))
    assert metrics["mcrmse"] == pytest.approx((np.sqrt(0.5) + np.sqrt(4.5)) / 2)


def test_accuracy_error_rate_and_macro_f1() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])  # predicted 0, 1, 0, 2
    metrics = classification_metrics(probabilities, labels)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["error_rate"] == pytest.approx(0.25)
    # class 0: P=1/2 R=1 F1=2/3; class 1: P=1 R=1/2 F1=2/3; class 2: F1=1
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_constant_baselines() -> None:
    spec = TaskSpec(kind="regression", target_columns=("a",), target_min=(0.0,), target_max=(9.0,))
    train, valid = np.array([[1.0], [3.0]]), np.array([[2.0], [4.0]])
    assert baseline_metrics(train, valid, spec)["mcrmse"] == pytest.approx(np.sqrt((0 + 4) / 2))
    spec = TaskSpec(kind="classification", target_columns=("y",), labels=("a", "b", "c"))
    assert baseline_metrics(np.array([2, 2, 0]), np.array([2, 1]), spec)["accuracy"] == pytest.approx(0.5)


def test_task_metrics_apply_the_post_processing() -> None:
    spec = TaskSpec(kind="regression", target_columns=("a",))
    outputs, targets = np.array([[0.2], [5.7]]), np.array([[1.0], [5.0]])
    assert task_metrics(outputs, targets, spec, PostProcessing())["mcrmse"] == pytest.approx(
        np.sqrt((0.64 + 0.49) / 2)
    )
    assert task_metrics(outputs, targets, spec, PostProcessing((Clip((1.0,), (5.0,)),)))["mcrmse"] == 0.0
