"""What the model learns: the task inferred from the target columns, and a table parsed once into `Examples`.

A `TaskSpec` is fixed at training time and stored in the bundle, so prediction needs no training data. `Examples`
are the edge where strings become typed arrays: training, cv, folds and baselines consume them and never look at the
table's strings again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from texttune.config import CVConfig, DataConfig, TaskConfig
from texttune.data import is_missing, read_table, read_texts, require_columns, source_of
from texttune.errors import TexttuneError

logger = logging.getLogger(__name__)

TaskKind = Literal["regression", "classification"]


@dataclass(frozen=True)
class TaskSpec:
    """The outputs of a model: score columns, or class names in index order; for scores, the range and mean of the
    training rows' targets (the head's initial bias)."""

    kind: TaskKind
    target_columns: tuple[str, ...]
    labels: tuple[str, ...] = ()
    target_min: tuple[float, ...] = ()
    target_max: tuple[float, ...] = ()
    target_mean: tuple[float, ...] = ()

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.kind == "classification" else len(self.target_columns)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    def with_statistics(self, targets: np.ndarray) -> TaskSpec:
        """The spec with the range and mean of these (training) targets, (N, T), so validation rows never leak into
        the model; classes are returned as they are."""
        if not self.is_regression:
            return self
        return replace(
            self,
            target_min=tuple(targets.min(axis=0).tolist()),
            target_max=tuple(targets.max(axis=0).tolist()),
            target_mean=tuple(targets.mean(axis=0).tolist()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        data = {k: v for k, v in data.items() if k != "clip"}  # format 1 kept the clipping switch here
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


def _kind_of_one_column(frame: pd.DataFrame, column: str) -> TaskKind:
    """Decimal numbers are scores, anything else classes; decimals with a few cells that are not numbers (`3,5`
    for 3.5) are refused rather than read as a many-class label."""
    values = [v for v in frame[column].tolist() if not _is_missing_target(v)]
    parsed = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    numbers = parsed[np.isfinite(parsed)]
    decimals = len(numbers) > 0 and not np.all(np.mod(numbers, 1) == 0)
    if decimals and len(numbers) < len(values):
        bad = next(v for v, x in zip(values, parsed) if not np.isfinite(x))
        row = frame[column].tolist().index(bad) + 1
        raise TexttuneError(
            f"{source_of(frame)}: column '{column}' holds decimal numbers, but row {row} is {bad!r}; fix that cell "
            "(a decimal point, not a comma), or set task.type: classification if these are class names"
        )
    if decimals:
        _numeric(frame, column)  # names a missing value
        return "regression"
    return "classification"


def _refuse_one_number_written_twice(frame: pd.DataFrame, column: str, labels: list[str]) -> None:
    """'1' and '01' (or '1.0') would become two classes of the same number."""
    by_value: dict[float, list[str]] = {}
    for label in labels:
        number = pd.to_numeric(label, errors="coerce")
        if pd.notna(number):
            by_value.setdefault(float(number), []).append(label)
    clash = next((sorted(group) for group in by_value.values() if len(group) > 1), None)
    if clash:
        raise TexttuneError(
            f"{source_of(frame)}: labels {' and '.join(map(repr, clash))} of column '{column}' are the same number "
            "written differently; write each class one way"
        )


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
        kind = "regression" if len(target_columns) > 1 else _kind_of_one_column(frame, target_columns[0])
        logger.info("task inferred from %s: %s", target_columns, kind)
    if kind == "regression":
        return TaskSpec(kind="regression", target_columns=tuple(target_columns))
    if len(target_columns) != 1:
        raise TexttuneError(f"classification takes one label column, got {target_columns}; set data.target_columns")
    column = target_columns[0]
    counts = Counter(_label_strings(frame, column))
    if len(counts) < 2:
        raise TexttuneError(
            f"{source_of(frame)}: column '{column}' has a single class {next(iter(counts))!r}; "
            "classification needs at least two (or set task.type: regression)"
        )
    if config.type == "auto":  # named classes ('1.1' and '1.10' as codes) are the user's to give
        _refuse_one_number_written_twice(frame, column, list(counts))
    spellings: dict[str, list[str]] = {}
    for label in counts:
        spellings.setdefault(label.strip().lower(), []).append(label)
    for similar in (sorted(group) for group in spellings.values() if len(group) > 1):
        logger.warning(
            "%s: labels %s of '%s' differ only in case or spaces and are %d classes; clean them if they are one",
            source_of(frame), ", ".join(map(repr, similar)), column, len(similar),
        )  # fmt: skip
    logger.info("%d classes in '%s': %s", len(counts), column, dict(sorted(counts.items())))
    return TaskSpec(kind="classification", target_columns=(column,), labels=_sorted_labels(set(counts)))


def encode_targets(frame: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Targets as float64 (N, T) scores, or int64 (N,) class indices; unknown classes are errors."""
    require_columns(frame, spec.target_columns, "target")
    if spec.is_regression:
        return np.stack([_numeric(frame, c) for c in spec.target_columns], axis=1)
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


def _given_folds(frame: pd.DataFrame, config: CVConfig) -> np.ndarray:
    column = config.fold_column
    values = frame[column].tolist()
    for row, value in enumerate(values, start=1):
        if is_missing(value) or not str(value).strip().isdigit() or int(value) >= config.folds:
            raise TexttuneError(
                f"{source_of(frame)}: row {row} of fold column '{column}' is {value!r}; use integers 0 to "
                f"{config.folds - 1} (cv.folds), or set cv.fold_column to a column that does not exist to make folds"
            )
    return np.array([int(v) for v in values])


@dataclass(frozen=True)
class Examples:
    """A table parsed and validated once: what training, cv, folds and baselines read instead of strings.

    Args:
        source: the file, for messages.
        task: what the targets mean (inferred from this table, or the training table's for validation rows).
        rows: (N,) position of each example in the source table, 0-based (messages say row + 1).
        texts: text column -> (N,) non-empty strings, in the order the model joins them.
        targets: (N, T) float64 scores, exactly as written, or (N,) int64 class indices.
        ids: (N,) the id column's strings, when the recipe names one.
        groups: (N,) `cv.group_column` values; folds: (N,) ints from `cv.fold_column` when the table has it.
    """

    source: str
    task: TaskSpec
    rows: np.ndarray
    texts: Mapping[str, np.ndarray]
    targets: np.ndarray
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None
    folds: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """The targets as the model trains on them: float32 scores or int64 class indices."""
        return self.targets.astype(np.float32) if self.task.is_regression else self.targets

    @property
    def truth(self) -> dict[str, np.ndarray]:
        """Target column -> values as a person reads them: scores, or class names."""
        if self.task.is_regression:
            return {c: self.targets[:, i] for i, c in enumerate(self.task.target_columns)}
        return {self.task.target_columns[0]: np.asarray(self.task.labels, dtype=object)[self.targets]}

    def subset(self, index: np.ndarray) -> Examples:
        """The examples at `index` (a boolean mask or positions), in that order."""

        def take(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        texts = {column: values[index] for column, values in self.texts.items()}
        return replace(
            self,
            rows=self.rows[index],
            texts=texts,
            targets=self.targets[index],
            ids=take(self.ids),
            groups=take(self.groups),
            folds=take(self.folds),
        )


def read_examples(
    path: str | Path, data: DataConfig, task: TaskConfig | TaskSpec, cv: CVConfig | None = None
) -> Examples:
    """Read a table (`data.sep`) and parse it into `Examples` (see `parse_examples`)."""
    return parse_examples(read_table(path, data.sep), data, task, cv)


def parse_examples(
    frame: pd.DataFrame, data: DataConfig, task: TaskConfig | TaskSpec, cv: CVConfig | None = None
) -> Examples:
    """A table of strings (`texttune.data.read_table`) as `Examples`: its texts, ids and targets, and for cv its
    groups and folds.

    Args:
        task: a TaskConfig infers the task from this table; a TaskSpec (the training table's) encodes against it,
            so unseen classes are errors.

    Raises:
        TexttuneError: a missing column, an empty text, a missing or non-numeric target, an unseen class.
    """
    texts = read_texts(frame, data.text_columns)
    ids = None
    if data.id_column:
        require_columns(frame, [data.id_column], "id")
        ids = frame[data.id_column].to_numpy(dtype=object)
        first: dict[str, int] = {}
        for row, value in enumerate(ids.tolist(), start=1):
            if value in first:
                raise TexttuneError(
                    f"{source_of(frame)}: id {value!r} of column '{data.id_column}' is in rows {first[value]} and "
                    f"{row}; ids name rows in predictions and folds, so they must be unique (or unset data.id_column)"
                )
            first[value] = row
    spec = task if isinstance(task, TaskSpec) else infer_task(frame, data.target_columns, task)
    groups = folds = None
    if cv is not None and cv.fold_column in frame.columns:
        folds = _given_folds(frame, cv)
    elif cv is not None and cv.group_column:  # groups only matter when the folds are made here
        require_columns(frame, [cv.group_column], "group")
        groups = frame[cv.group_column].to_numpy(dtype=object)
    rows = np.arange(len(frame))
    return Examples(source_of(frame), spec, rows, texts, encode_targets(frame, spec), ids, groups, folds)


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Hold out `fraction` of the examples, stratified by class when every class has two examples or more."""
    from sklearn.model_selection import train_test_split  # only training splits: prediction never loads it

    held_out = math.ceil(fraction * len(examples))
    if held_out >= len(examples) or held_out < 1:
        raise TexttuneError(
            f"{examples.source}: {len(examples)} rows cannot be split with data.valid_fraction {fraction}; "
            "add rows or give a separate data.valid file"
        )
    stratify = None
    if not examples.task.is_regression:
        names = np.asarray(examples.task.labels, dtype=object)[examples.targets].astype(str)
        _, counts = np.unique(names, return_counts=True)
        # sklearn needs two rows per class, and at least one held-out row per class
        if counts.min() >= 2 and min(held_out, len(examples) - held_out) >= len(counts):
            stratify = names
        elif counts.min() < 2:
            logger.warning(
                "%s: some classes have a single row (%s); each is either trained on or validated, never both",
                examples.source, ", ".join(repr(c) for c, n in zip(np.unique(names), counts) if n < 2)[:200],
            )  # fmt: skip
    train, valid = train_test_split(np.arange(len(examples)), test_size=held_out, random_state=seed, stratify=stratify)
    return examples.subset(train), examples.subset(valid)
