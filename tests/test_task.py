"""Task inference, target encoding and the validation split."""

from __future__ import annotations

import pandas as pd
import pytest

from texttune.config import TaskConfig
from texttune.errors import TexttuneError
from texttune.task import encode_targets, infer_task, split_train_valid


def _frame(**columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": ["t"] * len(next(iter(columns.values()))), **columns})


def test_inference_rules() -> None:
    assert infer_task(_frame(y=["1.5", "2.0", "3.5"]), ["y"], TaskConfig()).kind == "regression"
    assert infer_task(_frame(a=["1", "2"], b=["3", "4"]), ["a", "b"], TaskConfig()).kind == "regression"
    spec = infer_task(_frame(y=["10", "9", "2", "10"]), ["y"], TaskConfig())
    assert spec.kind == "classification" and spec.labels == ("2", "9", "10")  # numeric labels sort numerically
    spec = infer_task(_frame(y=["007", "pos", "007"]), ["y"], TaskConfig())
    assert spec.labels == ("007", "pos")
    assert infer_task(_frame(y=["1", "2", "1"]), ["y"], TaskConfig(type="regression")).kind == "regression"


def test_regression_statistics_and_encoding() -> None:
    frame = _frame(a=["1", "3"], b=["2", "6"])
    spec = infer_task(frame, ["a", "b"], TaskConfig())
    assert spec.target_mean == (2.0, 4.0) and spec.target_min == (1.0, 2.0) and spec.target_max == (3.0, 6.0)
    assert encode_targets(frame, spec).tolist() == [[1.0, 2.0], [3.0, 6.0]]


def test_small_split_with_many_classes_does_not_crash() -> None:
    frame = _frame(y=[f"c{i % 20}" for i in range(60)])
    spec = infer_task(frame, ["y"], TaskConfig())
    train, valid = split_train_valid(frame, spec, 0.2, seed=0)
    assert len(train) == 48 and len(valid) == 12
    with pytest.raises(TexttuneError, match="1 rows cannot be split"):
        split_train_valid(frame.head(1), spec, 0.2, seed=0)


def test_stratified_split_keeps_class_shares_and_is_seeded() -> None:
    frame = _frame(y=["a"] * 80 + ["b"] * 20)
    spec = infer_task(frame, ["y"], TaskConfig())
    train, valid = split_train_valid(frame, spec, 0.2, seed=1)
    assert (valid["y"] == "b").sum() == 4
    again, _ = split_train_valid(frame, spec, 0.2, seed=1)
    assert train.index.tolist() == again.index.tolist()
