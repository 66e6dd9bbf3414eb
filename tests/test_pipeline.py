"""TextPipeline: rows -> token ids -> padded batches, saved in the bundle and rebuilt from it; each text of a run
tokenized once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from texttune import load_recipe, train
from texttune.pipeline import TextPipeline, budget_batches


def test_columns_are_joined_by_the_separator_and_texts_truncated(tiny_backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone))
    pipeline = TextPipeline.create(tokenizer, ["title", "body"], max_length=8)
    texts = pipeline.join({"title": ["good film"], "body": ["bad plot " * 10]})
    assert texts == ["good film [SEP] " + "bad plot " * 10]
    (features,) = pipeline.encode(texts)
    assert len(features["input_ids"]) == 8 and features["input_ids"][-1] == tokenizer.sep_token_id
    batch = pipeline.collate([features, pipeline.encode(["good"])[0]])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * 5
    rebuilt = TextPipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())), tokenizer)
    assert rebuilt == pipeline and rebuilt.encode(texts) == [features]


def test_every_text_of_a_run_is_tokenized_once(write_recipe, monkeypatch) -> None:
    calls: list[str] = []
    original = TextPipeline.encode

    def counting(pipeline, texts):
        calls.extend(texts)
        return original(pipeline, texts)

    monkeypatch.setattr(TextPipeline, "encode", counting)
    recipe = load_recipe(write_recipe("classification", rows=50), ["training.epochs=2", "training.evals_per_epoch=2"])
    result = train(recipe)
    metrics = json.loads((result.bundle / "metrics.json").read_text())
    assert len(metrics["history"]) == 4  # four evaluations and the validation predictions, one tokenization
    assert len(calls) == metrics["train_rows"] + metrics["valid_rows"] == 50


def test_a_bundle_describes_its_pipeline_and_post_processing(write_recipe) -> None:
    result = train(load_recipe(write_recipe("regression", rows=40), ["training.epochs=1"]))
    info = json.loads((result.bundle / "texttune.json").read_text())
    assert info["format_version"] == 2
    assert info["pipeline"] == {"text_columns": ["text"], "max_length": 32, "joiner": " [SEP] ",
                                "padding_side": "right", "pad_token_id": 0, "pad_to_multiple_of": 8}  # fmt: skip
    (step,) = info["postprocess"]
    assert step["name"] == "clip" and step["low"] == info["task"]["target_min"]
    assert "max_length" not in info and "text_columns" not in info  # one place: the pipeline


def test_scoring_a_local_bundle_imports_no_tracking_code(write_recipe) -> None:
    result = train(load_recipe(write_recipe("classification", rows=30), ["training.epochs=1"]))
    code = (
        "import sys; from texttune import Predictor; "
        f"Predictor.load({str(result.bundle)!r}).predict(['good film']); "
        "print(sorted(m for m in sys.modules if m.startswith(('mlflow', 'wandb', 'texttune.tracking'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_batches_fill_a_token_budget_in_length_order(tiny_backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone))
    pipeline = TextPipeline.create(tokenizer, ["text"], max_length=64)
    rng = np.random.default_rng(0)
    features = [{"input_ids": [1] * int(n)} for n in rng.integers(1, 65, size=300)]
    batches = pipeline.batches(features, max_tokens=512, max_batch=40)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))  # every text once
    lengths = [len(features[i]["input_ids"]) for batch in batches for i in batch]
    assert lengths == sorted(lengths)
    for batch in batches:
        width = pipeline.collate([features[i] for i in batch])["input_ids"].shape[1]
        assert len(batch) <= 40 and (len(batch) == 1 or len(batch) * width <= 512)
    short = sum(len(b) for b in batches if len(features[b[0]]["input_ids"]) <= 8) / sum(
        1 for b in batches if len(features[b[0]]["input_ids"]) <= 8
    )
    assert short == 40  # short texts fill the count, long ones the budget
    assert [len(b) for b in pipeline.batches(features[:1] + [{"input_ids": [1] * 64}], 16, 8)] == [1, 1]


def test_budget_batches_keep_the_order_and_count_the_widest_text() -> None:
    lengths = [3, 9, 2, 2, 8, 1, 1, 1]  # unsorted: a batch's width is its longest text, wherever it sits

    def width(n: int) -> int:
        return -(-n // 4) * 4  # multiples of 4

    batches = budget_batches(lengths, width, max_tokens=24, max_batch=3)
    assert np.concatenate(batches).tolist() == list(range(8))  # in order, each position once
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * width(max(lengths[i] for i in batch)) <= 24)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [b.tolist() for b in budget_batches([40, 1], width, max_tokens=8, max_batch=4)] == [[0], [1]]
