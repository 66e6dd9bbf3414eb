"""Tiny random encoders with tokenizers trained on the fly, and small synthetic tables: for our tests and yours.

Everything is offline and takes seconds. Sizes follow the transformers testers (hidden 32, 2 layers, 4 heads).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModel, BertConfig, BertTokenizerFast, PreTrainedTokenizerFast

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring"]
NEUTRAL = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actor",
    "story",
    "was",
    "is",
    "very",
    "quite",
    "and",
    "but",
    "scene",
    "music",
]
WORDS = POSITIVE + NEGATIVE + NEUTRAL


def corpus(rows: int = 300, seed: int = 0) -> list[str]:
    """Seeded sentences of 3 to 12 words from WORDS."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rows)]


def _wordpiece() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(corpus() + WORDS, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def _bert(tokenizer: PreTrainedTokenizerFast) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )


# family -> (tokenizer builder, config builder); tests parametrize over this registry.
TINY_FAMILIES: dict[str, tuple[Callable[[], PreTrainedTokenizerFast], Callable[..., object]]] = {
    "bert": (_wordpiece, _bert),
}


def build_tiny_backbone(directory: str | Path, family: str = "bert", seed: int = 0) -> Path:
    """Save a tiny random encoder and its tokenizer to `directory`, loadable as `model.backbone`."""
    directory = Path(directory)
    make_tokenizer, make_config = TINY_FAMILIES[family]
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModel.from_config(make_config(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_table(rows: int = 80, task: str = "classification", seed: int = 0) -> pd.DataFrame:
    """A learnable table: sentiment words decide the label (classification) or two scores (regression)."""
    texts = corpus(rows, seed)
    frame = pd.DataFrame({"id": [f"r{i:04d}" for i in range(rows)], "text": texts})
    positive = [sum(w in POSITIVE for w in t.split()) for t in texts]
    negative = [sum(w in NEGATIVE for w in t.split()) for t in texts]
    if task == "classification":
        frame["label"] = ["pos" if p > n else "neg" if n > p else "mixed" for p, n in zip(positive, negative)]
    else:
        frame["warmth"] = [round(min(5.0, 1.0 + 0.75 * p), 2) for p in positive]
        frame["gloom"] = [round(min(5.0, 1.0 + 0.5 * n + 0.25 * p), 2) for p, n in zip(positive, negative)]
    return frame
