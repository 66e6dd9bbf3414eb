"""Training policy: weight averaging (EMA), discriminative rates, gradual unfreezing with a cycle per stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from tests.conftest import recompute_valid_metrics
from texttune import load_recipe, train
from texttune.config import Stage
from texttune.policy.callbacks import KeepBest, WeightAveraging
from texttune.policy.param_groups import level_rates
from texttune.prepare import prepare
from texttune.training import stage_trainer


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
    recomputed, outputs, valid = recompute_valid_metrics(recipe, result.bundle)
    assert recomputed["accuracy"] == result.metrics["accuracy"]
    assert recomputed["f1_macro"] == result.metrics["f1_macro"]
    labels = torch.as_tensor(valid.labels)
    loss = nn.functional.cross_entropy(torch.as_tensor(outputs), labels).item()
    assert abs(loss - result.metrics["loss"]) < 1e-4


def test_level_rates_decay_or_spread_geometrically() -> None:
    assert level_rates(1e-4, 4, layer_decay=0.5) == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5])
    assert level_rates(1e-4, 3, head_learning_rate=1e-3) == pytest.approx([1e-3, 1e-4, 1e-4])
    assert level_rates((1e-5, 1e-3), 3) == pytest.approx([1e-3, 1e-4, 1e-5])  # fastai's slice(1e-5, 1e-3)
    assert level_rates((1e-5, 1e-3), 3, head_learning_rate=5e-3)[0] == 5e-3


class _Recorder(TrainerCallback):
    """Per step: the rate and beta1 of every optimizer group, and which parameters the optimizer holds."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []
        self.betas: list[float] = []
        self.optimized: set[int] = set()

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([group["lr"] for group in optimizer.param_groups])
        self.betas.append(optimizer.param_groups[0]["betas"][0])
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_gradual_unfreezing_with_one_cycle_per_stage(write_recipe, tmp_path: Path) -> None:
    stages = [{"unfreeze": 1, "epochs": 1, "lr": 1e-2}, {"unfreeze": 2, "epochs": 1}, {"unfreeze": "all", "epochs": 1}]
    recipe = load_recipe(
        write_recipe("classification", rows=80),
        ["training.scheduler=one_cycle", "training.warmup_ratio=0.25", "training.layer_decay=0.5"],
    )
    recipe = recipe.model_copy(
        update={"training": recipe.training.model_copy(update={"stages": [Stage(**s) for s in stages]})}
    )
    prepared = prepare(recipe)
    model = prepared.model
    levels = model.levels()
    assert len(levels) == 1 + prepared.model.backbone.config.num_hidden_layers + 1  # head, layers, embeddings
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    keep_best = KeepBest("accuracy", greater_is_better=True)
    for index, stage in enumerate(recipe.training.stage_plan()):
        recorder = _Recorder()
        trainer = stage_trainer(prepared, stage, index, str(tmp_path / "scratch"), [keep_best, recorder])
        trainer.train()
        trainable = {
            name for level in (levels if stage.unfreeze == "all" else levels[: stage.unfreeze]) for name in level
        }
        for name, parameter in model.named_parameters():
            changed = not torch.equal(parameter.detach(), initial[name])
            if name not in trainable:
                assert not changed, f"stage {index}: frozen {name} moved"
                assert id(parameter) not in recorder.optimized, f"stage {index}: frozen {name} in the optimizer"
        assert any(not torch.equal(p.detach(), initial[n]) for n, p in model.named_parameters() if n in levels[0])
        # this stage's own one cycle: starts at peak/25, peaks after warmup_ratio of its steps, ends near zero
        steps = len(recorder.rates)
        assert steps == trainer.state.max_steps == 8
        top = [rates[0] for rates in recorder.rates]
        peak_rate = stage.learning_rate or recipe.training.learning_rate
        assert top[0] == pytest.approx(peak_rate / 25)
        assert max(range(steps), key=top.__getitem__) == 1  # peak at pct_start: step 0.25 * 8 - 1
        assert max(top) == pytest.approx(peak_rate)
        assert top[-1] < top[0]
        assert recorder.betas[0] == pytest.approx(0.95) and min(recorder.betas) == pytest.approx(0.85)
        # groups are ordered encoder top level first; each level below runs at half the rate of the one above
        names = [group["name"] for group in trainer.optimizer.param_groups]
        assert names[-1].startswith("head")
        if stage.unfreeze == "all":
            by_level = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
            assert by_level["level_2"] == pytest.approx(by_level["level_1"] / 2)
            assert by_level["level_3"] == pytest.approx(by_level["level_1"] / 4)
    assert keep_best.best is not None


def test_best_weights_are_kept_across_stages(write_recipe) -> None:
    stages = "[{unfreeze: 1, epochs: 2, lr: 0.01}, {unfreeze: all, epochs: 2}]"
    recipe = load_recipe(write_recipe("classification", rows=96), [f"training.stages={stages}"])
    result = train(recipe)
    report = json.loads((result.bundle / "metrics.json").read_text())
    history = report["history"]
    assert {entry["stage"] for entry in history} == {0, 1}
    assert [entry["step"] for entry in history] == sorted(entry["step"] for entry in history)
    assert result.metrics["accuracy"] == max(entry["accuracy"] for entry in history)
    assert (result.bundle / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    recomputed, _, _ = recompute_valid_metrics(recipe, result.bundle)
    assert recomputed["accuracy"] == result.metrics["accuracy"]
