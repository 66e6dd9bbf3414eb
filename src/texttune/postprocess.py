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


def grid_step(values: np.ndarray, places: int = 6) -> float | None:
    """The step of the grid that `values` lie on (0.5 for scores of 1.0, 1.5, ..., 5.0), or None when they do not
    lie on one: fewer than 3 distinct values, or any value off the grid of the smallest gap."""
    distinct = np.unique(np.round(np.asarray(values, dtype=np.float64), places))
    if len(distinct) < 3:
        return None
    step = float(np.diff(distinct).min())
    positions = (distinct - distinct[0]) / step
    return step if np.allclose(positions, np.round(positions), atol=1e-6) else None


_WEIGHTS = np.linspace(0, 1, 11)  # the partial-snapping weights tried: 0 (as predicted) ... 1 (rounded to the grid)


@dataclass(frozen=True)
class Snap:
    """Scores (N, T) pulled toward the nearest point of their target's grid: (1 - w) x + w round(x), per target.

    ELLIPSE's scores step by 0.5; a prediction of 3.4 is nearer the truth as 3.5 only when the model is confident
    enough, so `fit` chooses w per target (0, 0.1, ..., 1) by RMSE on the rows it is given; targets that are not on a
    grid get w 0 (left as predicted).
    """

    name: ClassVar[str] = "snap"
    origin: tuple[float, ...] = ()
    step: tuple[float, ...] = ()  # 0: no grid
    weight: tuple[float, ...] = ()

    def fit(self, outputs: np.ndarray, targets: np.ndarray) -> Snap:
        origin, steps, weights = [], [], []
        for column in range(targets.shape[1]):
            truth, predicted = targets[:, column], np.asarray(outputs, dtype=np.float64)[:, column]
            step = grid_step(truth) or 0.0
            origin.append(float(truth.min()))
            steps.append(step)
            if not step:
                weights.append(0.0)
                continue
            snapped = _snapped(predicted, origin[-1], step)
            errors = [np.mean(((1 - w) * predicted + w * snapped - truth) ** 2) for w in _WEIGHTS]
            weights.append(float(_WEIGHTS[int(np.argmin(errors))]))
        return Snap(tuple(origin), tuple(steps), tuple(weights))

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        result = np.asarray(outputs, dtype=np.float64).copy()
        for column, (origin, step, weight) in enumerate(zip(self.origin, self.step, self.weight)):
            if step and weight:
                result[:, column] = (1 - weight) * result[:, column] + weight * _snapped(
                    result[:, column], origin, step
                )
        return result

    def keep(self, columns: Sequence[bool]) -> Snap:
        """The same step, snapping only the targets marked True."""
        return Snap(self.origin, self.step, tuple(w if kept else 0.0 for w, kept in zip(self.weight, columns)))


def _snapped(values: np.ndarray, origin: float, step: float) -> np.ndarray:
    return origin + np.round((values - origin) / step) * step


@dataclass(frozen=True)
class Temperature:
    """Class logits (N, C) divided by a temperature fitted on log-loss (Guo et al. 2017), before softmax.

    Fine-tuned transformers are usually over-confident (T > 1 softens); accuracy is unchanged, since the order of
    the logits is. `fit` minimises the log-loss of the rows it is given over T in [0.05, 20].
    """

    name: ClassVar[str] = "temperature"
    value: float = 1.0

    def fit(self, outputs: np.ndarray, targets: np.ndarray) -> Temperature:
        from scipy.optimize import minimize_scalar

        logits, labels = np.asarray(outputs, dtype=np.float64), np.asarray(targets, dtype=int)
        found = minimize_scalar(
            lambda log_t: log_loss_of(logits / np.exp(log_t), labels), bounds=(np.log(0.05), np.log(20.0)),
            method="bounded",
        )  # fmt: skip
        return Temperature(float(np.exp(found.x)))

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, dtype=np.float64) / self.value


@dataclass(frozen=True)
class ClassPrior:
    """Class log-probabilities (N, C) moved to a known test prior before softmax: + log(test share / training
    share) per class, Bayes' rule for a label shift (Saerens et al. 2002), where the test rows' class shares are
    known and differ from the training rows'. Not fitted on OOF: `between` takes both priors."""

    name: ClassVar[str] = "class_prior"
    shift: tuple[float, ...] = ()

    @classmethod
    def between(cls, training: Sequence[float], test: Sequence[float]) -> ClassPrior:
        training, test = np.asarray(training, dtype=np.float64), np.asarray(test, dtype=np.float64)
        return cls(tuple(np.log((test / test.sum()) / (training / training.sum())).tolist()))

    def fit(self, outputs: np.ndarray, targets: np.ndarray) -> ClassPrior:
        return self

    def apply(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, dtype=np.float64) + np.asarray(self.shift)


def log_loss_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """How far confidence is from accuracy: rows binned by their top probability (equal-width bins), the gap
    between each bin's mean confidence and its accuracy, weighted by the bin's share of rows (Guo et al. 2017)."""
    probabilities = softmax(logits)
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    correct = (predicted == labels).astype(float)
    return float(
        sum(
            abs(confidence[which == b].mean() - correct[which == b].mean()) * np.mean(which == b)
            for b in np.unique(which)
        )
    )


# ClassPrior is not here: it is given at load time (`Predictor.moved_to`), never stored in a bundle or manifest
Step = Softmax | Clip | Snap | Temperature | ClassPrior
STEPS: dict[str, type] = {step.name: step for step in (Softmax, Clip, Snap, Temperature)}


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

    def with_fitted(self, fitted: Sequence[Step]) -> PostProcessing:
        """These steps and ones fitted on out-of-fold outputs: a temperature before softmax, the others last."""
        first = tuple(step for step in fitted if isinstance(step, Temperature))
        return PostProcessing(first + self.steps + tuple(step for step in fitted if not isinstance(step, Temperature)))

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
            try:
                steps.append(STEPS[name](**fields))
            except TypeError:
                raise TexttuneError(
                    f"post-processing step {name!r}: unexpected fields {sorted(fields)}; written by another texttune?"
                ) from None
        return cls(tuple(steps))

    @classmethod
    def ensemble(cls, members: Sequence[PostProcessing]) -> PostProcessing:
        """The members' steps merged step by step (each kind says how, e.g. the union of clip ranges)."""
        kinds = {tuple(step.name for step in member.steps) for member in members}
        if len(kinds) != 1:
            raise TexttuneError(f"ensemble members post-process differently: {sorted(kinds)}")
        return cls(tuple(type(steps[0]).ensemble(steps) for steps in zip(*(m.steps for m in members))))


MIN_GAIN = 0.001  # a step must lower the cross-fitted metric by 0.1% at least: smaller gains are refitting noise


@dataclass(frozen=True)
class OOFFit:
    """Steps fitted on out-of-fold outputs, and the evidence for each: the OOF metric (RMSE per target, or log-loss
    and expected calibration error) of the outputs as they are, and cross-fitted (each fold's rows post-processed by
    a step fitted on the other folds' rows only), which decided whether the step (per target, for snapping) was
    kept."""

    steps: tuple[Step, ...]
    before: dict[str, float]
    cross_fitted: dict[str, float]  # what the step would give, kept or not (kept says which parts ship)
    kept: dict[str, bool]  # per target (snapping), or for the step (temperature)


def fit_on_oof(
    outputs: np.ndarray, targets: np.ndarray, folds: np.ndarray, task: TaskSpec, base: PostProcessing
) -> OOFFit:
    """Fit the task's steps (snapping for scores, temperature for classes) on out-of-fold head outputs, after the
    steps of `base` (clipping) for scores and before softmax for classes.

    A step is kept only where it lowers the metric of cross-fitted predictions (by MIN_GAIN at least), with the
    cv's own folds as the nested split: no row's post-processed prediction comes from a step that saw that row, so
    the choice (including each target's snapping weight) is judged on rows it was not fitted on. The kept step is
    then fitted on all rows.
    """
    outputs, folds = np.asarray(outputs, dtype=np.float64), np.asarray(folds)
    if task.is_regression:
        inputs = base.apply(outputs)
        step: Any = Snap()
    else:
        inputs, step = outputs, Temperature()
    crossed = np.empty_like(inputs)
    for fold in np.unique(folds):
        held_out = folds == fold
        crossed[held_out] = step.fit(inputs[~held_out], targets[~held_out]).apply(inputs[held_out])
    fitted = step.fit(inputs, targets)
    if task.is_regression:
        before = _rmse(inputs, targets, task.target_columns)
        after = _rmse(crossed, targets, task.target_columns)
        kept = {
            c: bool(after[c] < (1 - MIN_GAIN) * before[c] and w > 0)
            for c, w in zip(task.target_columns, fitted.weight)
        }
        fitted = fitted.keep(list(kept.values()))
        return OOFFit((fitted,) if any(fitted.weight) else (), before, after, kept)
    before = {"log_loss": log_loss_of(inputs, targets), "ece": expected_calibration_error(inputs, targets)}
    after = {"log_loss": log_loss_of(crossed, targets), "ece": expected_calibration_error(crossed, targets)}
    kept = bool(after["log_loss"] < (1 - MIN_GAIN) * before["log_loss"])
    return OOFFit((fitted,) if kept else (), before, after, {"temperature": kept})


def _rmse(predictions: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {name: float(np.sqrt(np.mean((predictions[:, i] - targets[:, i]) ** 2))) for i, name in enumerate(names)}
