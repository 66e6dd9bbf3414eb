"""Task inference, target encoding and the validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from texttune.config import DataConfig, TaskConfig
from texttune.errors import TexttuneError
from texttune.task import encode_targets, infer_task, parse_examples, split_examples


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


def _examples(frame: pd.DataFrame, targets: list[str], **task: str):
    return parse_examples(frame, DataConfig(train="t.csv", target_columns=targets), TaskConfig(**task))


def test_regression_statistics_and_encoding() -> None:
    frame = _frame(a=["1", "3.1"], b=["2", "6"])
    examples = _examples(frame, ["a", "b"])
    assert examples.targets.dtype == np.float64 and examples.targets.tolist() == [[1.0, 2.0], [3.1, 6.0]]
    assert examples.labels.dtype == np.float32  # what the model trains on
    spec = examples.task.with_statistics(examples.labels)
    assert spec.target_mean == pytest.approx((2.05, 4.0)) and spec.target_max == (np.float32(3.1), 6.0)
    assert encode_targets(frame, spec).tolist() == [[1.0, 2.0], [3.1, 6.0]]


def test_examples_keep_rows_ids_and_truth_through_subsets() -> None:
    frame = _frame(y=["pos", "neg", "pos", "neg"]).assign(text=["a", "b", "c", "d"], id=["007", "8", "9", "10"])
    examples = parse_examples(frame, DataConfig(train="t.csv", target_columns="y", id_column="id"), TaskConfig())
    part = examples.subset(np.array([3, 0]))
    assert (
        part.rows.tolist() == [3, 0]
        and part.ids.tolist() == ["10", "007"]
        and part.texts["text"].tolist() == ["d", "a"]
    )
    assert part.truth["y"].tolist() == ["neg", "pos"]
    assert part.labels.tolist() == [0, 1]  # classes sorted: neg, pos


def test_small_split_with_many_classes_does_not_crash() -> None:
    examples = _examples(_frame(y=[f"c{i % 20}" for i in range(60)]), ["y"])
    train, valid = split_examples(examples, 0.2, seed=0)
    assert len(train) == 48 and len(valid) == 12
    assert sorted([*train.rows, *valid.rows]) == list(range(60))
    with pytest.raises(TexttuneError, match="1 rows cannot be split"):
        split_examples(examples.subset(np.array([0])), 0.2, seed=0)


def test_stratified_split_keeps_class_shares_and_is_seeded() -> None:
    examples = _examples(_frame(y=["a"] * 80 + ["b"] * 20), ["y"])
    train, valid = split_examples(examples, 0.2, seed=1)
    assert (valid.truth["y"] == "b").sum() == 4
    again, _ = split_examples(examples, 0.2, seed=1)
    assert train.rows.tolist() == again.rows.tolist()
