"""Tiny random encoders with tokenizers trained on the fly, and small synthetic tables: for our tests and yours.

Everything is offline and takes seconds. Sizes follow the transformers testers (hidden 32, 2 layers, 4 heads).
Each family gets the kind of vocabulary its real checkpoints use (WordPiece, byte-level BPE, unigram, XLM's
suffix BPE), trained with `tokenizers` on a 25-word corpus, and its real special-token layout.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AlbertConfig,
    AlbertTokenizerFast,
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DebertaConfig,
    DebertaTokenizerFast,
    DebertaV2Config,
    DebertaV2TokenizerFast,
    DistilBertConfig,
    DistilBertTokenizerFast,
    ElectraConfig,
    ElectraTokenizerFast,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaTokenizerFast,
    XLMConfig,
    XLMRobertaConfig,
    XLMRobertaTokenizerFast,
    XLNetConfig,
    XLNetTokenizerFast,
)

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


def _trained(
    model: models.Model,
    trainer: trainers.Trainer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    decoder: decoders.Decoder,
    normalizer: normalizers.Normalizer | None = None,
) -> Tokenizer:
    tokenizer = Tokenizer(model)
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    tokenizer.train_from_iterator(corpus() + WORDS, trainer=trainer)
    return tokenizer


# Vocabularies: (special tokens in id order, unknown token) -> a trained tokenizer without post-processor.
def _wordpiece(specials: list[str], unk: str) -> Tokenizer:
    """BERT, DistilBERT, ELECTRA: lower-cased WordPiece with ## continuations."""
    return _trained(
        models.WordPiece(unk_token=unk),
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials, show_progress=False),
        pre_tokenizers.BertPreTokenizer(),
        decoders.WordPiece(),
        normalizers.BertNormalizer(lowercase=True),
    )


def _byte_level_bpe(specials: list[str], unk: str) -> Tokenizer:
    """RoBERTa, DeBERTa: GPT-2's byte-level BPE; every byte is a symbol, so the vocabulary exceeds 256 + specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    return _trained(
        models.BPE(),
        trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet, show_progress=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )


def _unigram(specials: list[str], unk: str) -> Tokenizer:
    """XLM-R, ALBERT, XLNet, DeBERTa-v3: SentencePiece's unigram model with ▁ word starts, trained here.

    The trainer seeds only pieces shared by several distinct words, so on 25 words it stops near 45 pieces and
    words split into a few pieces each: fine for tests, and it exercises multi-piece words.
    """
    return _trained(
        models.Unigram(),
        trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token=unk, show_progress=False),
        pre_tokenizers.Metaspace(),
        decoders.Metaspace(),
    )


def _suffix_bpe(specials: list[str], unk: str) -> Tokenizer:
    """XLM: lower-cased BPE that marks word ends with </w>."""
    return _trained(
        models.BPE(unk_token=unk, end_of_word_suffix="</w>"),
        trainers.BpeTrainer(vocab_size=200, special_tokens=specials, end_of_word_suffix="</w>", show_progress=False),
        pre_tokenizers.Whitespace(),
        decoders.BPEDecoder(suffix="</w>"),
        normalizers.Lowercase(),
    )


@dataclass(frozen=True)
class _TokenizerRecipe:
    """Builds a family's tokenizer: its kind of vocabulary, its special tokens and where they go.

    Args:
        vocabulary: (special tokens, unknown token) -> a trained `tokenizers.Tokenizer`.
        wrapper: the family's transformers tokenizer class, so that `AutoTokenizer` reloads the same class.
        tokens: special token attributes; the trainer gives them the first ids, in this order.
        layout: (single, pair) `TemplateProcessing` templates.
        padding_side: "left" for XLNet.
    """

    vocabulary: Callable[[list[str], str], Tokenizer]
    wrapper: type[PreTrainedTokenizerFast]
    tokens: dict[str, str]
    layout: tuple[str, str]
    padding_side: str = "right"

    def __call__(self) -> PreTrainedTokenizerFast:
        tokenizer = self.vocabulary(list(dict.fromkeys(self.tokens.values())), self.tokens["unk_token"])
        single, pair = self.layout
        # the special tokens the templates place, with their ids
        placed = sorted({piece.split(":")[0] for piece in f"{single} {pair}".split() if not piece.startswith("$")})
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(token, tokenizer.token_to_id(token)) for token in placed]
        )
        return self.wrapper(
            tokenizer_object=tokenizer, padding_side=self.padding_side, model_max_length=512, **self.tokens
        )


def _config(config_class: type[PretrainedConfig], **sizes: Any) -> Callable[..., PretrainedConfig]:
    """A config builder: vocabulary size and special token ids from the tokenizer, then the family's `sizes`."""
    accepted = inspect.signature(config_class).parameters

    def build(tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
        ids: dict[str, int] = {}
        for name in ("pad", "bos", "eos", "unk", "mask"):
            token_id = getattr(tokenizer, f"{name}_token_id")
            for key in (f"{name}_token_id", f"{name}_index"):  # XLM calls some of them <name>_index
                if key in accepted and token_id is not None:
                    ids[key] = token_id
        return config_class(vocab_size=len(tokenizer), **ids, **sizes)

    return build


# Special tokens per family, in the order of their vocabulary ids.
_BERT_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_ALBERT_TOKENS = {
    **_BERT_TOKENS,
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
}
_DEBERTA_TOKENS = {**_BERT_TOKENS, "bos_token": "[CLS]", "eos_token": "[SEP]"}
_ROBERTA_TOKENS = {  # <s> 0, <pad> 1, </s> 2, <unk> 3, as in roberta-base
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}
_XLM_TOKENS = {  # <s> 0, </s> 1, <pad> 2, <unk> 3, as in xlm-mlm-en-2048, whose mask is <special1>
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<special1>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}
_XLNET_TOKENS = {**_ROBERTA_TOKENS, "cls_token": "<cls>", "sep_token": "<sep>"}

# (single, pair) templates; `:n` is the token type id.
_BERT_LAYOUT = ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1")
_ROBERTA_LAYOUT = ("<s> $A </s>", "<s> $A </s> </s> $B </s>")
_XLM_LAYOUT = ("<s> $A </s>", "<s> $A </s> $B:1 </s>:1")
_XLNET_LAYOUT = ("$A <sep> <cls>:2", "$A <sep> $B:1 <sep>:1 <cls>:2")  # the summary token comes last

# The transformers testers' sizes (BertModelTester.get_config); DistilBERT, XLNet and XLM name them differently.
_BERT_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 512,  # RoBERTa-likes need max_length + pad id + 1
}
_DEBERTA_SIZES = {**_BERT_SIZES, "relative_attention": True, "position_biased_input": False}
_DEBERTA_V3 = {  # microsoft/deberta-v3-base's layout: shared keys, bucketed and normalised relative positions
    **_DEBERTA_SIZES,
    "pos_att_type": ["p2c", "c2p"],
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "position_buckets": 256,
}

# family -> (tokenizer builder, config builder); tests parametrize over this registry.
TINY_FAMILIES: dict[str, tuple[Callable[[], PreTrainedTokenizerFast], Callable[..., PretrainedConfig]]] = {
    "bert": (
        _TokenizerRecipe(_wordpiece, BertTokenizerFast, _BERT_TOKENS, _BERT_LAYOUT),
        _config(BertConfig, **_BERT_SIZES),
    ),
    "roberta": (
        _TokenizerRecipe(_byte_level_bpe, RobertaTokenizerFast, _ROBERTA_TOKENS, _ROBERTA_LAYOUT),
        _config(RobertaConfig, **_BERT_SIZES),
    ),
    "xlm-roberta": (
        _TokenizerRecipe(_unigram, XLMRobertaTokenizerFast, _ROBERTA_TOKENS, _ROBERTA_LAYOUT),
        _config(XLMRobertaConfig, **_BERT_SIZES),
    ),
    "distilbert": (
        _TokenizerRecipe(_wordpiece, DistilBertTokenizerFast, _BERT_TOKENS, _BERT_LAYOUT),
        _config(DistilBertConfig, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=512),
    ),
    "albert": (
        _TokenizerRecipe(_unigram, AlbertTokenizerFast, _ALBERT_TOKENS, _BERT_LAYOUT),
        _config(AlbertConfig, **_BERT_SIZES, embedding_size=16),
    ),
    "electra": (
        _TokenizerRecipe(_wordpiece, ElectraTokenizerFast, _BERT_TOKENS, _BERT_LAYOUT),
        _config(ElectraConfig, **_BERT_SIZES, embedding_size=16),
    ),
    "xlnet": (
        _TokenizerRecipe(_unigram, XLNetTokenizerFast, _XLNET_TOKENS, _XLNET_LAYOUT, padding_side="left"),
        _config(XLNetConfig, d_model=32, n_layer=2, n_head=4, d_inner=37),
    ),
    "xlm": (  # XLM has no fast tokenizer class
        _TokenizerRecipe(_suffix_bpe, PreTrainedTokenizerFast, _XLM_TOKENS, _XLM_LAYOUT),
        _config(XLMConfig, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=512),
    ),
    "deberta": (  # transformers 5's DebertaTokenizer replaces the pair template by [CLS] A [SEP] [SEP] B [SEP]
        _TokenizerRecipe(_byte_level_bpe, DebertaTokenizerFast, _DEBERTA_TOKENS, _BERT_LAYOUT),
        _config(DebertaConfig, **_DEBERTA_SIZES, pos_att_type=["c2p", "p2c"]),
    ),
    "deberta-v2": (
        _TokenizerRecipe(_unigram, DebertaV2TokenizerFast, _DEBERTA_TOKENS, _BERT_LAYOUT),
        _config(DebertaV2Config, **_DEBERTA_V3),
    ),
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
