"""Every tiny family of `texttune.testing.TINY_FAMILIES` through the parts of texttune that depend on the encoder.

Each family is built once per session. Its tests check the reloaded tokenizer's layout, token type ids, layer
groups, padding invariance on both padding sides, and a two-step training run with layer-wise learning rates.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from transformers import AlbertConfig, AutoModel

from texttune import Predictor, load_recipe, train
from texttune.config import Stage
from texttune.errors import TexttuneError
from texttune.export import export_bundle
from texttune.models import TextModel, load_backbone
from texttune.models.heads import CLS_LAST
from texttune.models.layer_groups import layer_groups
from texttune.pipeline import PaddingCollator, TextPipeline
from texttune.policy import Rates
from texttune.policy.callbacks import KeepBest
from texttune.prepare import prepare
from texttune.testing import TINY_FAMILIES, build_tiny_backbone, synthetic_table
from texttune.training import stage_trainer

SHORT = "a good film"
LONG = "the film was good but the music was dull and the plot was very boring and the actor was quite awful"


class Tiny(NamedTuple):
    family: str
    directory: Path


@pytest.fixture(scope="session", params=list(TINY_FAMILIES))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    family = request.param
    return Tiny(family, build_tiny_backbone(tmp_path_factory.mktemp(family), family))


def test_reload_keeps_the_family_and_its_special_token_layout(tiny: Tiny) -> None:
    backbone, tokenizer = load_backbone(str(tiny.directory))
    built = TINY_FAMILIES[tiny.family][0]()
    assert backbone.config.model_type == tiny.family
    assert type(tokenizer) is type(built)
    assert tokenizer.special_tokens_map == built.special_tokens_map
    assert backbone.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id is not None
    assert backbone.config.pad_token_id == tokenizer.pad_token_id
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(SHORT)["input_ids"])
    if tiny.family in CLS_LAST:  # XLNet: text <sep> <cls>, padded on the left
        assert tokens[-2:] == [tokenizer.sep_token, tokenizer.cls_token]
        assert tokenizer.padding_side == "left"
    else:
        assert (tokens[0], tokens[-1]) == (tokenizer.cls_token, tokenizer.sep_token)
        assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token not in tokens


def test_token_type_ids_only_reach_models_that_take_them(tiny: Tiny) -> None:
    backbone, tokenizer = load_backbone(str(tiny.directory))
    model = TextModel(backbone, "mean", num_outputs=3).eval()
    pipeline = TextPipeline.create(tokenizer, ["text"], max_length=32)
    features = pipeline.encode([SHORT, LONG])
    if "token_type_ids" in features[0]:
        assert model.accepts_token_type_ids
    batch = pipeline.collate(features)
    pair = tokenizer([SHORT], [LONG], return_tensors="pt")  # second-segment ids (1) where the tokenizer sets them
    with torch.no_grad():
        for inputs in (batch, pair):
            logits = model(**inputs)["logits"]
            assert logits.shape == (len(inputs["input_ids"]), 3) and torch.isfinite(logits).all()


def test_layer_groups_cover_every_parameter_once(tiny: Tiny) -> None:
    backbone, _ = load_backbone(str(tiny.directory))
    groups = layer_groups(backbone)
    names = [name for group in groups for name in group]
    assert sorted(names) == sorted(name for name, _ in backbone.named_parameters())
    assert len(names) == len(set(names))
    config = backbone.config
    # ALBERT's layers reuse its num_hidden_groups layer groups: one group per distinct set of parameters.
    assert len(groups) == 2 + getattr(config, "num_hidden_groups", config.num_hidden_layers)
    assert all(groups[:-1]), "embeddings and every layer have parameters; the top may have none"
    # Layer-wise decay reaches the embeddings: top and last layer at the base rate, x0.8 per group below.
    rates = [group["lr"] for group in Rates(1e-3, layer_decay=0.8).param_groups(TextModel(backbone, num_outputs=3))]
    assert min(rates) == pytest.approx(1e-3 * 0.8 ** (len(groups) - 2))


def test_albert_gets_one_group_per_layer_group() -> None:
    config = AlbertConfig(vocab_size=40, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
                          num_attention_heads=4, intermediate_size=37)  # fmt: skip
    groups = layer_groups(AutoModel.from_config(config))
    assert len(groups) == 4  # embeddings, layer groups 0 and 1 (each used by two layers), pooler
    for index in (0, 1):
        assert all(name.startswith(f"encoder.albert_layer_groups.{index}.") for name in groups[1 + index])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_a_text_in_a_batch_does_not_change_its_logits(tiny: Tiny, pooling: str) -> None:
    backbone, tokenizer = load_backbone(str(tiny.directory))
    model = TextModel(backbone, pooling, num_outputs=3).eval()
    pipeline = TextPipeline.create(tokenizer, ["text"], max_length=64)
    collate = PaddingCollator(tokenizer.pad_token_id, tokenizer.padding_side, pad_to_multiple_of=1)
    short, long = pipeline.encode([SHORT, LONG])
    assert len(long["input_ids"]) >= 2 * len(short["input_ids"])
    with torch.no_grad():
        alone = model(**collate([short]))["logits"]  # no padding at all
        batched = model(**collate([short, long]))["logits"][:1]
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_two_training_steps_then_prediction(tiny: Tiny, write_recipe) -> None:
    # 20 rows: 16 to train in 2 batches of 8 for one epoch, 4 to validate.
    recipe = write_recipe(rows=20, model={"backbone": str(tiny.directory)}, training={"epochs": 1, "layer_decay": 0.8})
    result = train(load_recipe(recipe))
    assert result.metrics["step"] == 2
    texts = synthetic_table(7, seed=1)["text"].tolist()
    predictions = Predictor.load(result.bundle).predict(texts)
    assert len(predictions) == len(texts)
    assert set(predictions["label"]) <= {"mixed", "neg", "pos"}


def test_frozen_levels_stay_bit_identical_and_rates_follow_the_decay(tiny: Tiny, write_recipe, tmp_path) -> None:
    recipe = load_recipe(write_recipe(rows=20, model={"backbone": str(tiny.directory)}, training={"layer_decay": 0.8}))
    prepared = prepare(recipe)
    model, config = prepared.model, prepared.model.backbone.config
    levels = model.levels()
    assert len(levels) == 1 + getattr(config, "num_hidden_groups", config.num_hidden_layers) + 1  # head, layers, emb.
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    keep_best = KeepBest("accuracy", greater_is_better=True)
    trainer = stage_trainer(prepared, Stage(unfreeze=2, epochs=1), 0, str(tmp_path), [keep_best])
    trainer.train()
    assert trainer.state.global_step == 2
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), initial[name])}
    assert moved and moved <= set(levels[0]) | set(levels[1])  # only the head and the last layer learned
    assert set(levels[0]) & moved and set(levels[1]) & moved
    trainer = stage_trainer(prepared, Stage(unfreeze="all", epochs=1), 1, str(tmp_path), [keep_best])
    rates = {group["name"].removesuffix("_no_decay"): group["lr"] for group in trainer.create_optimizer().param_groups}
    assert rates == pytest.approx(
        {"head": 3e-3, **{f"level_{d}": 3e-3 * 0.8 ** (d - 1) for d in range(1, len(levels))}}
    )
    trainer.train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), initial[name])}
    assert set(levels[-1]) & moved  # the embeddings learn once unfrozen


def test_onnx_export_passes_its_fp32_gate_or_is_refused_clearly(tiny: Tiny, write_recipe) -> None:
    recipe = write_recipe(rows=40, model={"backbone": str(tiny.directory)}, training={"epochs": 1})
    bundle = train(load_recipe(recipe)).bundle
    try:
        (export,) = export_bundle(bundle)[str(bundle)]
    except TexttuneError as exc:  # an exporter that cannot: refused with the family and both exporters' reasons
        assert tiny.family in str(exc) and "dynamo" in str(exc) and "legacy" in str(exc)
        assert not (bundle / "model.onnx").exists()
        pytest.skip(f"{tiny.family}: {exc}")
    assert export.passed and export.figures["max_abs_difference"] <= 1e-4, export.figures
    texts = synthetic_table(9, seed=2)["text"].tolist() + [LONG * 3]  # other batch sizes and lengths than the gate's
    exported = Predictor.load(bundle, engine="onnx").predict_outputs(texts)
    reference = Predictor.load(bundle, engine="torch").predict_outputs(texts)
    np.testing.assert_allclose(exported, reference, rtol=0, atol=1e-4)
