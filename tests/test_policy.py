"""Training policy: weight averaging (EMA)."""

from __future__ import annotations

import torch
from torch import nn

from texttune import Predictor, load_recipe, train
from texttune.metrics import task_metrics
from texttune.policy.callbacks import WeightAveraging
from texttune.task import encode_targets
from texttune.training import load_tables


def test_average_follows_the_decay_and_swaps_back() -> None:
    model = nn.Linear(2, 1)
    averaging = WeightAveraging(decay=0.5)
    averaging.on_train_begin(None, None, None, model=model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    averaging.on_step_end(None, None, None, model=model)
    # first update: decay = min(0.5, 2/11) = 2/11, so the average moves 9/11 of the way to the new weights
    torch.testing.assert_close(averaging.average["weight"], start + 9 / 11)
    trained = model.weight.detach().clone()
    with averaging.applied(model):
        torch.testing.assert_close(model.weight.detach(), start + 9 / 11)
    torch.testing.assert_close(model.weight.detach(), trained)


def test_kept_checkpoint_is_the_evaluated_average(write_recipe) -> None:
    recipe = load_recipe(write_recipe("classification", rows=120), ["training.ema_decay=0.9", "training.epochs=3"])
    result = train(recipe)
    _, valid, spec = load_tables(recipe)
    predictor = Predictor.load(result.bundle)
    outputs = predictor.predict_outputs(predictor.texts_of(valid))
    recomputed = task_metrics(outputs, encode_targets(valid, spec), spec)
    assert recomputed["accuracy"] == result.metrics["accuracy"]
    assert recomputed["f1_macro"] == result.metrics["f1_macro"]
    labels = torch.as_tensor(encode_targets(valid, spec))
    loss = nn.functional.cross_entropy(torch.as_tensor(outputs), labels).item()
    assert abs(loss - result.metrics["loss"]) < 1e-4
