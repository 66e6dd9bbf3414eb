"""Pooling, losses, head initialisation and optimizer groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from texttune.config import TaskConfig
from texttune.models import POOLINGS, TextModel, create_loss, load_backbone
from texttune.models.heads import ClsPooling, MeanPooling
from texttune.policy import param_groups


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert MeanPooling()(hidden, mask).tolist() == [[2.0, 3.0]]


def test_cls_pooling_reads_the_last_position_for_left_padding() -> None:
    hidden = torch.arange(12.0).reshape(1, 3, 4)
    assert ClsPooling(last=True)(hidden, torch.ones(1, 3)).tolist() == [hidden[0, -1].tolist()]
    assert ClsPooling()(hidden, torch.ones(1, 3)).tolist() == [hidden[0, 0].tolist()]


def test_rmse_loss_matches_its_definition() -> None:
    predictions, targets = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[2.0, 2.0], [3.0, 1.0]])
    loss = create_loss(TaskConfig(loss="rmse"), regression=True)(predictions, targets)
    assert loss.item() == pytest.approx(((0.5) ** 0.5 + (4.5) ** 0.5) / 2, rel=1e-6)
    with pytest.raises(Exception, match="does not fit a regression task"):
        create_loss(TaskConfig(loss="cross_entropy"), regression=True)


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_padding_does_not_change_outputs(tiny_backbone: Path, pooling: str) -> None:
    backbone, tokenizer = load_backbone(str(tiny_backbone))
    model = TextModel(backbone, pooling, num_outputs=3, dropout=0.0).eval()
    short = tokenizer(["good film"], return_tensors="pt")
    padded = tokenizer(["good film"], padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        a = model(short["input_ids"], short["attention_mask"])["logits"]
        b = model(padded["input_ids"], padded["attention_mask"])["logits"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_regression_head_starts_at_the_target_means(tiny_backbone: Path) -> None:
    backbone, tokenizer = load_backbone(str(tiny_backbone))
    model = TextModel(backbone, num_outputs=2, initial_bias=[3.0, 1.5])
    assert model.head.bias.tolist() == [3.0, 1.5]
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 1e-3, 0.01)}
    assert groups["head"]["lr"] == 1e-3 and groups["body"]["lr"] == 1e-4
    assert groups["body_no_decay"]["weight_decay"] == 0.0 and groups["head_no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["body_no_decay"]["params"]}
    for name, parameter in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            assert id(parameter) in no_decay or name.startswith("head."), name
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
