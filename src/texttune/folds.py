"""`make_folds`: a fold id per row, stratified so that every fold looks like the whole table.

Several regression targets: `MultilabelStratifiedKFold` (iterative-stratification, as in the FB3 recipes) over
quantile bins of every target; one target or classes: `StratifiedKFold`; with a group column
`StratifiedGroupKFold`, so a group never straddles folds. An existing fold column is used as is.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from texttune.config import CVConfig
from texttune.data import is_missing, require_columns, source_of
from texttune.errors import TexttuneError
from texttune.task import TaskSpec, encode_targets

logger = logging.getLogger(__name__)


def _given_folds(frame: pd.DataFrame, config: CVConfig) -> np.ndarray:
    column = config.fold_column
    values = frame[column].tolist()
    for row, value in enumerate(values, start=1):
        if is_missing(value) or not str(value).strip().isdigit() or int(value) >= config.folds:
            raise TexttuneError(
                f"{source_of(frame)}: row {row} of fold column '{column}' is {value!r}; use integers 0 to "
                f"{config.folds - 1} (cv.folds), or set cv.fold_column to a column that does not exist to make folds"
            )
    folds = np.array([int(v) for v in values])
    missing = sorted(set(range(config.folds)) - set(folds.tolist()))
    if missing:
        raise TexttuneError(f"{source_of(frame)}: fold column '{column}' has no rows for fold(s) {missing}")
    return folds


def _strata(targets: np.ndarray, spec: TaskSpec, bins: int) -> np.ndarray:
    """Class indices (N,), or for regression the one-hot quantile bins of every target (N, sum of bins)."""
    if not spec.is_regression:
        return targets
    binned = [pd.qcut(column, q=bins, labels=False, duplicates="drop") for column in targets.T]
    if len(binned) == 1:
        return np.asarray(binned[0])
    return np.concatenate([np.eye(int(b.max()) + 1)[b] for b in binned], axis=1)


def make_folds(frame: pd.DataFrame, spec: TaskSpec, config: CVConfig, seed: int) -> np.ndarray:
    """Fold id (0 .. K-1) of every row, reproducible for a seed.

    Raises:
        TexttuneError: fewer rows (or groups) than folds, or a bad fold column.
    """
    if config.fold_column in frame.columns:
        logger.info("folds taken from column '%s'", config.fold_column)
        return _given_folds(frame, config)
    if len(frame) < config.folds:
        raise TexttuneError(f"{source_of(frame)}: {len(frame)} rows cannot make {config.folds} folds; lower cv.folds")
    strata = _strata(encode_targets(frame, spec), spec, config.bins)
    folds = np.full(len(frame), -1)
    if config.group_column:
        require_columns(frame, [config.group_column], "group")
        groups = frame[config.group_column].to_numpy()
        if len(set(groups.tolist())) < config.folds:
            raise TexttuneError(
                f"{source_of(frame)}: column '{config.group_column}' has fewer groups than cv.folds ({config.folds})"
            )
        single = strata if strata.ndim == 1 else strata.argmax(axis=1)  # first target's bin
        splitter = StratifiedGroupKFold(config.folds, shuffle=True, random_state=seed)
        splits = splitter.split(frame, single, groups)
    elif strata.ndim == 2:
        splits = MultilabelStratifiedKFold(config.folds, shuffle=True, random_state=seed).split(frame, strata)
    else:
        splits = StratifiedKFold(config.folds, shuffle=True, random_state=seed).split(frame, strata)
    for fold, (_, held_out) in enumerate(splits):
        folds[held_out] = fold
    return folds
