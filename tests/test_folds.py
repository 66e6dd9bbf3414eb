"""Fold assignment: stratified, reproducible, grouped, or taken from the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from texttune.config import CVConfig, DataConfig, TaskConfig
from texttune.errors import TexttuneError
from texttune.folds import make_folds
from texttune.task import Examples, parse_examples
from texttune.testing import synthetic_table


def _examples(frame: pd.DataFrame, targets: list[str], cv: CVConfig) -> Examples:
    return parse_examples(frame, DataConfig(train="t.csv", target_columns=targets), TaskConfig(), cv)


def _regression(rows: int = 200) -> pd.DataFrame:
    return synthetic_table(rows, "regression")


def test_multitarget_folds_are_stratified_and_reproducible() -> None:
    frame = _regression()
    examples = _examples(frame, ["warmth", "gloom"], CVConfig(folds=5))
    folds = make_folds(examples, CVConfig(folds=5), seed=3)
    assert sorted(np.bincount(folds).tolist()) == [40] * 5
    targets = frame[["warmth", "gloom"]].astype(float)
    spread = targets.groupby(folds).mean() - targets.mean()
    # stratified folds stay much closer to the global means than random ones usually do
    random_spread = targets.groupby(np.random.default_rng(0).permutation(folds)).mean() - targets.mean()
    assert spread.abs().max().max() < 0.1
    assert spread.abs().to_numpy().mean() < random_spread.abs().to_numpy().mean()
    assert np.array_equal(folds, make_folds(examples, CVConfig(folds=5), seed=3))
    assert not np.array_equal(folds, make_folds(examples, CVConfig(folds=5), seed=4))


def test_class_folds_keep_the_class_shares() -> None:
    frame = synthetic_table(150)
    folds = make_folds(_examples(frame, ["label"], CVConfig(folds=3)), CVConfig(folds=3), seed=0)
    shares = pd.crosstab(folds, frame["label"], normalize="index")
    overall = frame["label"].value_counts(normalize=True)
    assert (shares - overall).abs().max().max() < 0.03


def test_groups_never_straddle_folds() -> None:
    frame = _regression(120)
    frame["writer"] = [f"w{i // 4}" for i in range(len(frame))]
    config = CVConfig(folds=4, group_column="writer")
    folds = make_folds(_examples(frame, ["warmth", "gloom"], config), config, seed=0)
    assert (frame.groupby("writer").apply(lambda g: folds[g.index].tolist()).map(lambda f: len(set(f))) == 1).all()
    assert set(folds.tolist()) == {0, 1, 2, 3}


def test_a_fold_column_is_used_as_is_and_checked() -> None:
    frame, targets, config = _regression(20), ["warmth", "gloom"], CVConfig(folds=2)
    frame["fold"] = [str(i % 2) for i in range(20)]
    assert make_folds(_examples(frame, targets, config), config, seed=0).tolist() == [i % 2 for i in range(20)]
    with pytest.raises(TexttuneError, match="has no rows for fold"):
        make_folds(_examples(frame.assign(fold="0"), targets, config), config, seed=0)
    frame.loc[3, "fold"] = "7"
    with pytest.raises(TexttuneError, match="row 4 of fold column 'fold' is '7'"):
        _examples(frame, targets, config)
    grouped = CVConfig(folds=2, group_column="g", fold_column="none")
    with pytest.raises(TexttuneError, match="fewer groups"):
        make_folds(_examples(frame.assign(g="one"), targets, grouped), grouped, seed=0)
