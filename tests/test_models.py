"""Pooling, losses, head initialisation and optimizer groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from texttune.config import TaskConfig
from texttune.errors import TexttuneError
from texttune.models import POOLINGS, TextModel, create_loss, load_backbone
from texttune.models.heads import ClsPooling, MeanPooling
from texttune.models.layer_groups import layer_groups
from texttune.models.registry import attention_implementation, attention_kernels
from texttune.policy import Rates
from texttune.task import TaskSpec

REGRESSION = TaskSpec(kind="regression", target_columns=("a", "b"))


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
    loss = create_loss(TaskConfig(loss="rmse"), REGRESSION)(predictions, targets)
    assert loss.item() == pytest.approx(((0.5) ** 0.5 + (4.5) ** 0.5) / 2, rel=1e-6)
    with pytest.raises(TexttuneError, match="does not fit a regression task"):
        create_loss(TaskConfig(loss="cross_entropy"), REGRESSION)


def test_ordinal_cross_entropy_prefers_near_misses() -> None:
    spec = TaskSpec(kind="classification", target_columns=("y",), labels=("0", "1", "2", "3", "4"))
    loss = create_loss(TaskConfig(loss="ordinal_cross_entropy", ordinal_scale=1.0), spec)
    soft = loss.soft_targets
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(5))
    assert soft[2, 2] > soft[2, 1] == soft[2, 3] > soft[2, 0]
    assert soft[2, 1] / soft[2, 2] == pytest.approx(float(torch.exp(torch.tensor(-1.0))), rel=1e-5)
    labels = torch.tensor([4])
    near, far = torch.tensor([[0.0, 0, 0, 5, 0]]), torch.tensor([[5.0, 0, 0, 0, 0]])
    assert loss(near, labels) < loss(far, labels)
    with pytest.raises(TexttuneError, match="needs numeric class labels"):
        create_loss(TaskConfig(loss="ordinal_cross_entropy"), TaskSpec("classification", ("y",), ("a", "b")))


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
    backbone, _ = load_backbone(str(tiny_backbone))
    model = TextModel(backbone, num_outputs=2, initial_bias=[3.0, 1.5])
    assert model.head.bias.tolist() == [3.0, 1.5]


def test_layer_groups_and_layerwise_learning_rates(tiny_backbone: Path) -> None:
    backbone, _ = load_backbone(str(tiny_backbone))
    model = TextModel(backbone, num_outputs=2)
    groups = layer_groups(model.backbone)
    assert len(groups) == 1 + backbone.config.num_hidden_layers + 1  # embeddings, layers, top
    assert all(name.startswith("embeddings.") for name in groups[0])
    assert all(name.startswith("encoder.layer.1.") for name in groups[2])
    named = Rates(1e-4, head_learning_rate=1e-3, layer_decay=0.5, weight_decay=0.01).param_groups(model)
    rates = {g["name"]: g["lr"] for g in named}
    # head, then the top group and the last layer at the base rate, halving per group below
    assert rates["head"] == 1e-3 and rates["level_1"] == 1e-4
    assert rates["level_2"] == pytest.approx(5e-5)  # layer 0
    assert rates["level_3"] == pytest.approx(2.5e-5)  # embeddings
    assert len(rates) == 8  # (head, top + last layer, layer 0, embeddings) x (decay, no decay)
    no_decay = {id(p) for g in named if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in no_decay) == (name.endswith("bias") or "LayerNorm" in name), name
    assert sum(len(g["params"]) for g in named) == len(list(model.parameters()))


def test_attention_kernels_follow_the_recipe(tiny_backbone: Path) -> None:
    assert attention_implementation("auto") is None  # the library's default: SDPA where the encoder has it
    assert load_backbone(str(tiny_backbone))[0].config._attn_implementation == "sdpa"
    for choice in ("eager", "sdpa"):
        backbone, _ = load_backbone(str(tiny_backbone), attention=choice)
        assert backbone.config._attn_implementation == choice
        with attention_kernels(backbone, "eager" if choice == "sdpa" else "sdpa"):  # switched for a block
            assert backbone.config._attn_implementation != choice
        assert backbone.config._attn_implementation == choice
