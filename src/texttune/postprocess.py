"""Post-processing: raw head outputs -> predictions, as steps chosen by name from a registry (like losses).

A step follows scikit-learn's estimator contract: `fit(outputs, targets)` learns only from what it is given,
`apply(outputs)` transforms, and its parameters are plain data (`to_dict` / `from_dict`), so a bundle lists the
steps it applies in `texttune.json`. Today's steps: `softmax` (class probabilities) and `clip` (scores kept inside
the training targets' range). Steps fitted on out-of-fold predictions register here the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from texttune.errors import TexttuneError
from texttune.task import TaskSpec


def softmax(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=np.float64)
    shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Softmax:
    """Class logits (N, C) -> probabilities (N, C)."""

    name: ClassVar[str] = "softmax"

    def fit(self, outputs: np.ndarray, targets: np.ndarray) -> Softmax:
        return self

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        return softmax(outputs)

    @classmethod
    def ensemble(cls, steps: Sequence[Softmax]) -> Softmax:
        return cls()


@dataclass(frozen=True)
class Clip:
    """Scores (N, T) clipped to [low, high] per target: a model should not predict a 5.3 on a 1-to-5 scale.

    `fit` takes the range from the targets it is given (the training rows'); an ensemble clips to the union of
    its members' ranges.
    """

    name: ClassVar[str] = "clip"
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def fit(self, outputs: np.ndarray | None, targets: np.ndarray) -> Clip:
        return Clip(tuple(targets.min(axis=0).tolist()), tuple(targets.max(axis=0).tolist()))

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(outputs, dtype=np.float64), self.low, self.high)

    @classmethod
    def ensemble(cls, steps: Sequence[Clip]) -> Clip:
        return cls(
            tuple(np.min([s.low for s in steps], axis=0).tolist()),
            tuple(np.max([s.high for s in steps], axis=0).tolist()),
        )


Step = Softmax | Clip
STEPS: dict[str, type] = {step.name: step for step in (Softmax, Clip)}


@dataclass(frozen=True)
class PostProcessing:
    """The steps a model's outputs go through, in order; empty for raw regression scores."""

    steps: tuple[Step, ...] = ()

    @classmethod
    def for_task(cls, task: TaskSpec, clip: bool = True) -> PostProcessing:
        """A new model's steps: softmax for classes; for scores, clipping to the task's (training) range if `clip`."""
        if not task.is_regression:
            return cls((Softmax(),))
        return cls((Clip(task.target_min, task.target_max),) if clip else ())

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        result = np.asarray(outputs, dtype=np.float64)
        for step in self.steps:
            result = step.apply(result)
        return result

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": step.name, **asdict(step)} for step in self.steps]

    @classmethod
    def from_list(cls, data: Sequence[dict[str, Any]]) -> PostProcessing:
        steps = []
        for entry in data:
            entry = dict(entry)
            name = entry.pop("name", None)
            if name not in STEPS:
                raise TexttuneError(f"unknown post-processing step {name!r}; known steps: {', '.join(STEPS)}")
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
            steps.append(STEPS[name](**fields))
        return cls(tuple(steps))

    @classmethod
    def ensemble(cls, members: Sequence[PostProcessing]) -> PostProcessing:
        """The members' steps merged step by step (each kind says how, e.g. the union of clip ranges)."""
        kinds = {tuple(step.name for step in member.steps) for member in members}
        if len(kinds) != 1:
            raise TexttuneError(f"ensemble members post-process differently: {sorted(kinds)}")
        return cls(tuple(type(steps[0]).ensemble(steps) for steps in zip(*(m.steps for m in members))))
