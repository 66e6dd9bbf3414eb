"""Post-processing steps: fitted from what they are given, applied in order, written and read as plain data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from texttune.errors import TexttuneError
from texttune.postprocess import (
    STEPS,
    ClassPrior,
    Clip,
    PostProcessing,
    Snap,
    Softmax,
    Temperature,
    fit_on_oof,
    grid_step,
    log_loss_of,
    softmax,
)
from texttune.task import TaskSpec


def test_clip_learns_the_targets_range_and_softmax_normalises() -> None:
    clip = Clip().fit(None, np.array([[1.0, 2.0], [4.0, 3.0]]))
    assert clip == Clip((1.0, 2.0), (4.0, 3.0))
    np.testing.assert_allclose(clip.apply(np.array([[0.2, 5.7]])), [[1.0, 3.0]])
    np.testing.assert_allclose(Softmax().apply(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_registered_step_round_trips_through_json(name: str) -> None:
    scores = np.array([[1.0, 2.0], [3.0, 5.0], [1.5, 2.5], [2.0, 3.0]])
    fitting = {"temperature": (np.array([[4.0, -1.0], [3.0, 0.0], [-2.0, 1.0]]), np.array([0, 1, 1]))}
    step = STEPS[name]().fit(*fitting.get(name, (scores + 0.1, scores)))
    chain = PostProcessing((step,))
    again = PostProcessing.from_list(json.loads(json.dumps(chain.to_list())))
    assert again == chain
    outputs = np.array([[0.3, 7.0], [2.0, -1.0]])
    np.testing.assert_array_equal(again.apply(outputs), chain.apply(outputs))


def test_ensembles_clip_to_the_union_and_unknown_steps_are_refused() -> None:
    members = [PostProcessing((Clip((1.0,), (4.0,)),)), PostProcessing((Clip((2.0,), (5.0,)),))]
    assert PostProcessing.ensemble(members) == PostProcessing((Clip((1.0,), (5.0,)),))
    with pytest.raises(TexttuneError, match="post-process differently"):
        PostProcessing.ensemble([members[0], PostProcessing((Softmax(),))])
    with pytest.raises(TexttuneError, match="unknown post-processing step 'isotonic'"):
        PostProcessing.from_list([{"name": "isotonic", "x": [1.0]}])
    with pytest.raises(TexttuneError, match=r"step 'temperature': unexpected fields \['t'\]"):
        PostProcessing.from_list([{"name": "temperature", "t": 2.0}])


def _regression(targets: int) -> TaskSpec:
    return TaskSpec("regression", tuple(f"t{i}" for i in range(targets)))


def test_snapping_is_kept_for_targets_on_a_grid_and_dropped_for_the_others() -> None:
    rng = np.random.default_rng(0)
    rows = 600
    on_grid = rng.integers(2, 11, rows) / 2  # 1.0, 1.5, ..., 5.0, as ELLIPSE's scores
    continuous = rng.uniform(1, 5, rows)  # no grid
    targets = np.stack([on_grid, continuous], axis=1)
    outputs = targets + rng.normal(0, 0.12, targets.shape)  # a good model: mostly within a quarter step
    folds = np.arange(rows) % 5
    assert grid_step(on_grid) == 0.5 and grid_step(continuous) is None
    fitted = fit_on_oof(outputs, targets, folds, _regression(2), PostProcessing())
    (snap,) = fitted.steps
    assert isinstance(snap, Snap) and snap.step == (0.5, 0.0) and snap.weight[0] >= 0.5 and snap.weight[1] == 0
    assert fitted.cross_fitted["t0"] < 0.8 * fitted.before["t0"]  # judged on rows the step did not see
    snapped = snap.apply(outputs)
    assert np.sqrt(np.mean((snapped[:, 0] - on_grid) ** 2)) < fitted.before["t0"]
    np.testing.assert_array_equal(snapped[:, 1], outputs[:, 1])  # untouched


def test_snapping_is_dropped_where_the_model_is_too_unsure_for_it_to_help() -> None:
    rng = np.random.default_rng(1)
    targets = (rng.integers(2, 11, (600, 1)) / 2).astype(float)
    outputs = targets + rng.normal(0, 0.6, targets.shape)  # errors of more than a step: rounding only adds error
    fitted = fit_on_oof(outputs, targets, np.arange(600) % 5, _regression(1), PostProcessing())
    assert fitted.steps == () and fitted.cross_fitted["t0"] >= fitted.before["t0"]


def test_temperature_softens_an_over_confident_model_and_is_dropped_for_a_calibrated_one() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1.5, (1500, 4))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in probabilities])  # logits calibrated by construction
    folds = np.arange(1500) % 5
    task = TaskSpec("classification", ("label",), labels=("a", "b", "c", "d"))
    over_confident = fit_on_oof(3 * logits, labels, folds, task, PostProcessing())
    (temperature,) = over_confident.steps
    assert isinstance(temperature, Temperature) and 2.5 < temperature.value < 3.5
    assert log_loss_of(temperature.apply(3 * logits), labels) < over_confident.before["log_loss"]
    assert over_confident.cross_fitted["log_loss"] < over_confident.before["log_loss"]
    assert over_confident.cross_fitted["ece"] < 0.03 < 0.1 < over_confident.before["ece"]
    calibrated = fit_on_oof(logits, labels, folds, task, PostProcessing())
    assert calibrated.steps == ()
    assert abs(Temperature().fit(logits, labels).value - 1) < 0.1
    accuracy = (temperature.apply(3 * logits).argmax(1) == (3 * logits).argmax(1)).all()
    assert accuracy  # the order of the logits, so the predicted class, is unchanged


def test_a_known_test_prior_lowers_the_log_loss_of_shifted_test_rows_and_an_equal_one_changes_nothing() -> None:
    rng = np.random.default_rng(3)

    def rows(prior: list[float], count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(3, size=count, p=prior)
        features = rng.normal(labels, 1.2)  # one noisy feature per row
        return features, labels

    def calibrated_logits(features: np.ndarray, prior: list[float]) -> np.ndarray:  # Bayes under `prior`
        return -0.5 * ((features[:, None] - np.arange(3)) / 1.2) ** 2 + np.log(prior)

    training_prior, test_prior = [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]
    features, labels = rows(test_prior, 4000)
    logits = calibrated_logits(features, training_prior)  # a model calibrated on balanced training rows
    moved = ClassPrior.between([300, 300, 300], test_prior).apply(logits)  # counts or shares alike
    assert log_loss_of(moved, labels) < log_loss_of(logits, labels) - 0.05
    exact = calibrated_logits(features, test_prior)  # the model had it been calibrated on the test prior
    np.testing.assert_allclose(softmax(moved), softmax(exact), atol=1e-9)
    unchanged = ClassPrior.between([2, 1, 1], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(unchanged.apply(logits), logits, atol=1e-12)
