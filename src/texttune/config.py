"""Recipes: one validated, frozen object per run, read from YAML with `--set section.key=value` on top.

Unknown keys are errors with the nearest valid key suggested, so a typo never silently falls back to a default.
Relative paths in a recipe are read from the current directory (run texttune from the project root).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from texttune.errors import TexttuneError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class DataConfig(_Section):
    """Which table to learn from and which of its columns matter."""

    train: Path = Field(description="Training table: CSV, TSV, Parquet or JSONL, optionally .zip or .gz.")
    valid: Path | None = Field(None, description="Separate validation table; without it valid_fraction of train.")
    valid_fraction: float = Field(0.2, gt=0, lt=1, description="Share of train held out for validation.")
    text_columns: list[str] = Field(["text"], min_length=1, description="Text column(s); several are joined.")
    target_columns: list[str] = Field(["label"], min_length=1, description="One label column or score columns.")
    id_column: str | None = Field(None, description="Row id, written first in submissions.")
    sep: str | None = Field(None, description="Field separator; default ',' for .csv and tab for .tsv.")

    _lists = field_validator("text_columns", "target_columns", mode="before")(_as_list)


class TaskConfig(_Section):
    """What is learned: inferred from the targets unless given."""

    type: Literal["auto", "regression", "classification"] = "auto"
    loss: Literal["auto", "rmse", "mse", "smooth_l1", "cross_entropy", "ordinal_cross_entropy"] = Field(
        "auto",
        description="auto: rmse for regression, cross_entropy for classification; ordinal_cross_entropy for "
        "ordered numeric classes such as ratings.",
    )
    ordinal_scale: float = Field(
        2.0, gt=0, description="ordinal_cross_entropy: soft target of class j for true class i ~ exp(-scale*(i-j)^2)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    clip_predictions: bool = Field(True, description="Clip regression outputs to the training targets' range.")


class ModelConfig(_Section):
    """The encoder and the head on top of it."""

    backbone: str = Field("minilm", description="Alias (minilm), local directory or Hugging Face hub id.")
    pooling: str = Field("mean", description="How token states become one vector: mean, cls or max.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the linear head.")
    backbone_dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the encoder's dropouts (0 often helps regression); None keeps them."
    )
    max_length: int = Field(512, ge=8, description="Tokens per text after truncation.")


class TrainingConfig(_Section):
    """Optimisation: AdamW, warmup then decay, evaluation and best-checkpoint selection."""

    epochs: float = Field(3, gt=0)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(5e-5, gt=0, description="Encoder learning rate.")
    head_learning_rate: float | None = Field(None, gt=0, description="Head learning rate; None: learning_rate.")
    layer_decay: float = Field(
        1.0, gt=0, le=1, description="Layer-wise LR decay: each encoder layer gets this times the one above."
    )
    weight_decay: float = Field(0.01, ge=0, description="Not applied to biases and LayerNorm weights.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    evals_per_epoch: int = Field(1, ge=1, description="Validation passes per epoch; the best one is kept.")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Evaluate and keep an exponential moving average of the weights (e.g. 0.995)."
    )
    group_by_length: bool = Field(True, description="Batch texts of similar length to pad less.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it.")
    seed: int = 42


class OutputConfig(_Section):
    """Where the model bundle goes."""

    dir: Path = Field(Path("texttune-runs/model"), description="Bundle directory, replaced atomically.")


class Recipe(_Section):
    """A whole run: data, task, model, training and output."""

    data: DataConfig
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings; values are parsed as YAML, so numbers, booleans and lists work."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise TexttuneError(f"--set {item!r}: expected section.key=value, e.g. --set training.epochs=2")
        section, name = parts
        if not isinstance(raw.setdefault(section, {}), dict):
            raise TexttuneError(f"--set {item!r}: '{section}' is not a section of the recipe")
        raw[section][name] = yaml.safe_load(value) if value.strip() else None
    return raw


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid keys: {', '.join(choices)}"


def _fields_at(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in location:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    location = tuple(error["loc"])
    path = ".".join(str(part) for part in location)
    if error["type"] == "extra_forbidden":
        return f"unknown key '{path}'; {_suggest(str(location[-1]), _fields_at(location[:-1]))}"
    if error["type"] == "missing":
        return f"missing required key '{path}'"
    return f"{path}: {error['msg']} (got {error.get('input')!r})"


def build_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a plain dict into a Recipe, or raise a one-line TexttuneError."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise TexttuneError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set` overrides and validate.

    Args:
        path: the YAML file.
        overrides: strings like `training.learning_rate=3e-5`.

    Raises:
        TexttuneError: unreadable file, bad YAML, unknown key or wrong value.

    Example:
        >>> recipe = load_recipe("examples/demo.yaml", ["training.epochs=1"])
    """
    path = Path(path)
    if not path.is_file():
        raise TexttuneError(f"{path}: recipe not found; pass the path of a YAML file such as examples/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise TexttuneError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise TexttuneError(f"{path}: a recipe is a mapping of sections (data, task, model, training, output)")
    return build_recipe(apply_overrides(raw, overrides or []), source=str(path))
