"""What the model predicts: the task inferred from the target columns, their encoding and their output shape.

A `TaskSpec` is fixed at training time and stored in the bundle, so prediction needs no training data.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from texttune.config import TaskConfig
from texttune.data import is_missing, require_columns, source_of
from texttune.errors import TexttuneError

logger = logging.getLogger(__name__)

TaskKind = Literal["regression", "classification"]


@dataclass(frozen=True)
class TaskSpec:
    """The outputs of a model: score columns with their ranges, or class names in index order."""

    kind: TaskKind
    target_columns: tuple[str, ...]
    labels: tuple[str, ...] = ()
    target_min: tuple[float, ...] = ()
    target_max: tuple[float, ...] = ()
    target_mean: tuple[float, ...] = ()
    clip: bool = True

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.kind == "classification" else len(self.target_columns)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    def postprocess(self, outputs: np.ndarray) -> np.ndarray:
        """Raw head outputs -> scores clipped to the training range, or class probabilities."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.is_regression:
            return np.clip(outputs, self.target_min, self.target_max) if self.clip else outputs
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


NA_STRINGS = {"nan", "na", "n/a", "null", "none", "-", "?"}


def _is_missing_target(value: Any) -> bool:
    """Empty, or a conventional missing-value marker: in a target column these are never real values."""
    return is_missing(value) or str(value).strip().lower() in NA_STRINGS


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Parse a target column as floats, naming the first missing or non-numeric row."""
    values = frame[column].tolist()
    parsed = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    for row, (value, number) in enumerate(zip(values, parsed), start=1):
        if _is_missing_target(value):
            raise TexttuneError(
                f"{source_of(frame)}: row {row} has no value in target column '{column}'; fill it or drop the row"
            )
        if np.isnan(number) or np.isinf(number):
            raise TexttuneError(
                f"{source_of(frame)}: row {row} of target column '{column}' is {value!r}, not a number; "
                "regression targets must be numeric (or set task.type: classification)"
            )
    return parsed


def _label_strings(frame: pd.DataFrame, column: str) -> list[str]:
    values = frame[column].tolist()
    for row, value in enumerate(values, start=1):
        if is_missing(value):
            raise TexttuneError(f"{source_of(frame)}: row {row} has no label in column '{column}'; fill or drop it")
    return [str(v) for v in values]


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(labels, key=float))
    except ValueError:
        return tuple(sorted(labels))


def _all_numeric(values: list[Any]) -> bool:
    return bool(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").notna().all())


def infer_task(frame: pd.DataFrame, target_columns: list[str], config: TaskConfig) -> TaskSpec:
    """Decide regression or classification and record what the head needs.

    Several targets, or one numeric target with non-integer values, mean regression; one integer or string column
    means classification. `config.type` overrides.

    Raises:
        TexttuneError: missing column or values, non-numeric regression targets, a single class.
    """
    require_columns(frame, target_columns, "target")
    kind = config.type
    if kind == "auto":
        if len(target_columns) > 1:
            kind = "regression"
        else:
            values = frame[target_columns[0]].tolist()
            numeric = _all_numeric([v for v in values if not _is_missing_target(v)])
            kind = (
                "regression"
                if numeric and not np.all(np.mod(_numeric(frame, target_columns[0]), 1) == 0)
                else ("classification")
            )
        logger.info("task inferred from %s: %s", target_columns, kind)
    if kind == "regression":
        targets = np.stack([_numeric(frame, c) for c in target_columns], axis=1)
        return TaskSpec(
            kind="regression",
            target_columns=tuple(target_columns),
            target_min=tuple(targets.min(axis=0).tolist()),
            target_max=tuple(targets.max(axis=0).tolist()),
            target_mean=tuple(targets.mean(axis=0).tolist()),
            clip=config.clip_predictions,
        )
    if len(target_columns) != 1:
        raise TexttuneError(f"classification takes one label column, got {target_columns}; set data.target_columns")
    column = target_columns[0]
    counts = Counter(_label_strings(frame, column))
    if len(counts) < 2:
        raise TexttuneError(
            f"{source_of(frame)}: column '{column}' has a single class {next(iter(counts))!r}; "
            "classification needs at least two (or set task.type: regression)"
        )
    folded = Counter(label.strip().lower() for label in counts)
    if any(n > 1 for n in folded.values()):
        logger.warning(
            "labels of '%s' differ only in case or spaces: %s; clean them if they are one class",
            column,
            sorted(counts),
        )
    logger.info("%d classes in '%s': %s", len(counts), column, dict(sorted(counts.items())))
    return TaskSpec(kind="classification", target_columns=(column,), labels=_sorted_labels(set(counts)))


def encode_targets(frame: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Targets as float32 (N, T) scores, or int64 (N,) class indices; unknown classes are errors."""
    require_columns(frame, spec.target_columns, "target")
    if spec.is_regression:
        return np.stack([_numeric(frame, c) for c in spec.target_columns], axis=1).astype(np.float32)
    index = {label: i for i, label in enumerate(spec.labels)}
    column = spec.target_columns[0]
    labels = _label_strings(frame, column)
    for row, label in enumerate(labels, start=1):
        if label not in index:
            raise TexttuneError(
                f"{source_of(frame)}: row {row} has label {label!r} in '{column}', unseen in training; "
                f"known labels: {', '.join(spec.labels)}"
            )
    return np.array([index[label] for label in labels], dtype=np.int64)


def fit_to_training_rows(spec: TaskSpec, train: pd.DataFrame) -> TaskSpec:
    """The spec with regression statistics (range for clipping, means for the head's bias) from the training rows
    only, so validation rows never leak into the model; classes stay those of the whole table."""
    if not spec.is_regression:
        return spec
    targets = encode_targets(train, spec)
    return replace(
        spec,
        target_min=tuple(targets.min(axis=0).tolist()),
        target_max=tuple(targets.max(axis=0).tolist()),
        target_mean=tuple(targets.mean(axis=0).tolist()),
    )


def split_train_valid(frame: pd.DataFrame, spec: TaskSpec, fraction: float, seed: int) -> tuple[pd.DataFrame, ...]:
    """Hold out `fraction` of the rows, stratified by class when every class has two rows or more."""
    held_out = math.ceil(fraction * len(frame))
    if held_out >= len(frame) or held_out < 1:
        raise TexttuneError(
            f"{source_of(frame)}: {len(frame)} rows cannot be split with data.valid_fraction {fraction}; "
            "add rows or give a separate data.valid file"
        )
    stratify = None
    if not spec.is_regression:
        labels = frame[spec.target_columns[0]].astype(str)
        counts = labels.value_counts()
        # sklearn needs two rows per class, and at least one held-out row per class
        if counts.min() >= 2 and min(held_out, len(frame) - held_out) >= len(counts):
            stratify = labels
    train, valid = train_test_split(frame, test_size=held_out, random_state=seed, stratify=stratify)
    for part in (train, valid):
        part.attrs.update(frame.attrs)
    return train, valid
