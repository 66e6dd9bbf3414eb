"""TexttuneTrainer's wiring: the batches really come from the length-grouped sampler, the optimizer really is the
policy's (every stage), and the schedule really moves the rates. Each test fails if a hook silently falls back to
the library default."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

import texttune.trainer
from texttune import load_recipe
from texttune.config import Stage
from texttune.data import LengthGroupedBatchSampler
from texttune.policy import Rates
from texttune.prepare import prepare
from texttune.training import fit, stage_trainer


class _Batches:
    """Records the batches the sampler yields and the batches the loss sees."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sampled: list[list[int]] = []
        self.seen: list[list[int]] = []
        original_iter = LengthGroupedBatchSampler.__iter__
        original_loss = texttune.trainer.TexttuneTrainer.compute_loss

        def recording_iter(sampler):
            for batch in original_iter(sampler):
                self.sampled.append(list(batch))
                yield batch

        def recording_loss(trainer, model, inputs, *args, **kwargs):
            if model.training:  # not the evaluations
                self.seen.append(inputs["attention_mask"].sum(dim=1).tolist())
            return original_loss(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(LengthGroupedBatchSampler, "__iter__", recording_iter)
        monkeypatch.setattr(texttune.trainer.TexttuneTrainer, "compute_loss", recording_loss)


def test_training_batches_come_from_the_length_grouped_sampler(write_recipe, tmp_path: Path, monkeypatch) -> None:
    recipe = load_recipe(write_recipe("regression", rows=120), ["training.epochs=2", "training.batch_size=4"])
    prepared = prepare(recipe)
    batches = _Batches(monkeypatch)
    trainer = stage_trainer(prepared, Stage(epochs=2), 0, str(tmp_path), [])
    assert isinstance(trainer.get_train_dataloader().batch_sampler, LengthGroupedBatchSampler)
    batches.sampled.clear()
    trainer.train()
    lengths = prepared.train_set.lengths
    expected = [[lengths[i] for i in batch] for batch in batches.sampled]
    assert len(batches.seen) == trainer.state.global_step == 2 * 24
    assert batches.seen == expected[: len(batches.seen)]  # every training batch, in the sampler's order
    # grouped batches pad far less than random ones would
    spread = sum(max(b) - min(b) for b in batches.seen) / len(batches.seen)
    assert spread < 0.5 * (max(lengths) - min(lengths))


def test_without_grouping_the_trainer_draws_plain_random_batches(write_recipe, tmp_path: Path, monkeypatch) -> None:
    recipe = load_recipe(write_recipe("regression", rows=40), ["training.group_by_length=false"])
    trainer = stage_trainer(prepare(recipe), Stage(epochs=1), 0, str(tmp_path), [])
    assert not isinstance(trainer.get_train_dataloader().batch_sampler, LengthGroupedBatchSampler)


class _OptimizerRecorder(TrainerCallback):
    """Per stage: the optimizer's groups (names, parameters, peak rates, decay) and the Trainer's learning_rate;
    per step: the rate of group 0."""

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self.rates: list[list[float]] = []

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        groups = [
            (g["name"], [id(p) for p in g["params"]], g.get("max_lr", g.get("initial_lr")), g["weight_decay"])
            for g in optimizer.param_groups
        ]
        self.stages.append({"groups": groups, "learning_rate": args.learning_rate, "eps": optimizer.defaults["eps"]})
        self.rates.append([])

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates[-1].append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("scheduler", ["one_cycle", "linear"])
def test_every_stage_optimizes_the_policys_groups_at_the_policys_rates(write_recipe, scheduler: str) -> None:
    stages = "[{unfreeze: 1, epochs: 1, lr: 0.01}, {unfreeze: 2, epochs: 1}, {unfreeze: all, epochs: 1, lr: 0.002}]"
    recipe = load_recipe(
        write_recipe("classification", rows=60),
        [f"training.stages={stages}", f"training.scheduler={scheduler}", "training.warmup_ratio=0.3",
         "training.layer_decay=0.5", "training.head_learning_rate=0.02", "training.weight_decay=0.05"],
    )  # fmt: skip
    prepared = prepare(recipe)
    recorder = _OptimizerRecorder()
    fit(prepared, callbacks=[recorder])
    assert len(recorder.stages) == 3
    model, training = prepared.model, recipe.training
    for stage, seen in zip(training.stage_plan(), recorder.stages):
        model.freeze_to(None if stage.unfreeze == "all" else stage.unfreeze)  # as the stage froze it
        rates = Rates(stage.learning_rate or training.learning_rate, 0.02, 0.5, 0.05)
        expected = [
            (g["name"], [id(p) for p in g["params"]], g["lr"], g["weight_decay"]) for g in rates.param_groups(model)
        ]
        assert seen["groups"] == [(n, p, pytest.approx(r), d) for n, p, r, d in expected]
        assert seen["learning_rate"] == pytest.approx(rates.top(model))  # args.learning_rate is the recipe's rate
        assert seen["eps"] == 1e-6
    model.freeze_to(None)
    assert [len(s["groups"]) for s in recorder.stages] == [2, 4, 8]  # head; + top level; everything (x decay)
    for rates in recorder.rates:  # the schedule moves the rate within every stage
        assert max(rates) > 2 * min(rates)
        if scheduler == "one_cycle":
            assert rates[0] == pytest.approx(max(rates) / 25) and rates.index(max(rates)) not in (0, len(rates) - 1)
        else:
            assert rates[0] < max(rates) and rates[-1] < max(rates)  # warmup, then decay


def test_the_lr_finder_sweeps_the_top_level_and_keeps_the_others_ratio(write_recipe, monkeypatch) -> None:
    from texttune.lr_find import lr_find

    seen: list[list[float]] = []
    original = texttune.trainer.TexttuneTrainer.training_step

    def recording_step(trainer, *args, **kwargs):
        seen.append([group["lr"] for group in trainer.optimizer.param_groups])
        return original(trainer, *args, **kwargs)

    monkeypatch.setattr(texttune.trainer.TexttuneTrainer, "training_step", recording_step)
    recipe = load_recipe(write_recipe("classification", rows=80), ["training.layer_decay=0.5"])
    result = lr_find(recipe, start=1e-5, end=1e-1, steps=8)
    assert [rates[0] for rates in seen[: len(result.rates)]] == pytest.approx(result.rates)
    assert seen[0][0] == pytest.approx(1e-5) and seen[-1][0] <= 1e-1 * 1.0001
    for rates in seen:  # level 2 runs at half of level 1 throughout (groups: level_1, level_1_no_decay, level_2 ...)
        assert rates[2] == pytest.approx(rates[0] / 2)


def test_evaluation_batches_fill_a_token_budget_in_the_sets_order(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe("regression", rows=120), ["training.eval_max_tokens=96"])
    prepared = prepare(recipe)
    trainer = stage_trainer(prepared, Stage(epochs=1), 0, str(tmp_path), [])
    batches = list(trainer.get_eval_dataloader())
    lengths = [n for batch in batches for n in batch["attention_mask"].sum(dim=1).tolist()]
    assert lengths == prepared.valid_set.lengths  # every row once, in the set's (sorted) order
    assert all(b["input_ids"].numel() <= 96 or len(b["input_ids"]) == 1 for b in batches)
    width, start = prepared.pipeline.collate.width, 0
    for batch in batches[:-1]:  # each one full: the next text would not fit
        start += len(batch["input_ids"])
        assert (len(batch["input_ids"]) + 1) * width(max(lengths[start - 1], lengths[start])) > 96
