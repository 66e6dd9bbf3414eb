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
from texttune.errors import TexttuneError
from texttune.task import Examples, TaskSpec

logger = logging.getLogger(__name__)


def _strata(targets: np.ndarray, spec: TaskSpec, bins: int) -> np.ndarray:
    """Class indices (N,), or for regression the one-hot quantile bins of every target (N, sum of bins)."""
    if not spec.is_regression:
        return targets
    binned = [pd.qcut(column, q=bins, labels=False, duplicates="drop") for column in targets.T]
    if len(binned) == 1:
        return np.asarray(binned[0])
    return np.concatenate([np.eye(int(b.max()) + 1)[b] for b in binned], axis=1)


def make_folds(examples: Examples, config: CVConfig, seed: int) -> np.ndarray:
    """Fold id (0 .. K-1) of every example, reproducible for a seed.

    Raises:
        TexttuneError: fewer rows (or groups) than folds, or a fold column without rows for some fold.
    """
    if examples.folds is not None:
        logger.info("folds taken from column '%s'", config.fold_column)
        missing = sorted(set(range(config.folds)) - set(examples.folds.tolist()))
        if missing:
            raise TexttuneError(
                f"{examples.source}: fold column '{config.fold_column}' has no rows for fold(s) {missing}"
            )
        return examples.folds
    if len(examples) < config.folds:
        raise TexttuneError(
            f"{examples.source}: {len(examples)} rows cannot make {config.folds} folds; lower cv.folds"
        )
    if not examples.task.is_regression:
        counts = np.bincount(examples.labels, minlength=examples.task.num_outputs)
        lonely = [examples.task.labels[i] for i in np.flatnonzero(counts == 1)]
        if lonely:
            raise TexttuneError(
                f"{examples.source}: class {lonely[0]!r} of '{examples.task.target_columns[0]}' has a single row, "
                "which cannot be both trained on and validated; add rows of it, or merge or drop it"
            )
    strata = _strata(examples.labels, examples.task, config.bins)
    folds = np.full(len(examples), -1)
    rows = np.zeros((len(examples), 1))  # the splitters only count rows
    if examples.groups is not None:
        if len(set(examples.groups.tolist())) < config.folds:
            raise TexttuneError(
                f"{examples.source}: column '{config.group_column}' has fewer groups than cv.folds ({config.folds})"
            )
        single = strata if strata.ndim == 1 else strata.argmax(axis=1)  # first target's bin
        splitter = StratifiedGroupKFold(config.folds, shuffle=True, random_state=seed)
        splits = splitter.split(rows, single, examples.groups)
    elif strata.ndim == 2:
        splits = MultilabelStratifiedKFold(config.folds, shuffle=True, random_state=seed).split(rows, strata)
    else:
        splits = StratifiedKFold(config.folds, shuffle=True, random_state=seed).split(rows, strata)
    for fold, (_, held_out) in enumerate(splits):
        folds[held_out] = fold
    return folds
