"""Recipes: one validated, frozen object per run, read from YAML with `--set section.key=value` on top.

Unknown keys are errors with the nearest valid key suggested, so a typo never silently falls back to a default.
Relative paths in a recipe are read from the current directory (run texttune from the project root).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from texttune.errors import TexttuneError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _distinct_seeds(seeds: list[int]) -> list[int]:
    if seeds and (len(seeds) < 2 or len(set(seeds)) < len(seeds)):
        raise ValueError("give two distinct seeds or more, or none (one run with training.seed)")
    return seeds


class DataConfig(_Section):
    """Which table to learn from and which of its columns matter."""

    train: Path = Field(description="Training table: CSV, TSV, Parquet or JSONL, optionally .zip or .gz.")
    valid: Path | None = Field(None, description="Separate validation table; without it valid_fraction of train.")
    valid_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of train held out for validation; 0 trains on every row with no evaluation (a full-data "
        "refit: the last weights are kept, so choose the epochs from a run that validated, e.g. cv --refit).",
    )
    text_columns: list[str] = Field(["text"], min_length=1, description="Text column(s); several are joined.")
    target_columns: list[str] = Field(["label"], min_length=1, description="One label column or score columns.")
    id_column: str | None = Field(None, description="Row id, written first in submissions.")
    split_seed: int | None = Field(
        None, description="Seed of the valid_fraction split; None: training.seed (training.seeds share one split)."
    )
    sep: str | None = Field(None, description="Field separator; default ',' for .csv and tab for .tsv.")

    _lists = field_validator("text_columns", "target_columns", mode="before")(_as_list)

    @model_validator(mode="after")
    def _full_without_valid(self) -> DataConfig:
        if self.full and self.valid is not None:
            raise ValueError(
                "valid_fraction 0 trains on every row of data.train with no evaluation, so data.valid would be "
                "unused; leave it out (--set data.valid=null) or keep valid_fraction above 0"
            )
        return self

    @property
    def full(self) -> bool:
        """Every row of data.train trains; nothing is held out or evaluated."""
        return self.valid_fraction == 0


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
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto",
        description="Attention kernels. auto: the library's default, SDPA where the encoder has it (faster than "
        "eager on CPU in training and evaluation, bench/train_throughput.py).",
    )


# A learning rate, or fastai's slice(lo, hi): rates spread geometrically from the embeddings (lo) to the head (hi).
LearningRate = float | tuple[float, float]


def _check_learning_rate(value: LearningRate | None) -> LearningRate | None:
    low, high = value if isinstance(value, tuple) else (value, value)
    if low is not None and not 0 < low <= high:
        raise ValueError("a learning rate is a positive number, or [low, high] with 0 < low <= high")
    return value


class Stage(_Section):
    """One stage of gradual unfreezing, trained with a schedule of its own (e.g. one cycle)."""

    unfreeze: int | Literal["all"] = Field(
        "all", description="How many levels from the top train: 1 is the head alone, 2 adds the last layer, ..."
    )
    epochs: float = Field(1, gt=0)
    learning_rate: LearningRate | None = Field(
        None,
        validation_alias=AliasChoices("learning_rate", "lr"),
        description="This stage's training.learning_rate (alias lr); None keeps training.learning_rate.",
    )

    _rates = field_validator("learning_rate")(_check_learning_rate)

    @field_validator("unfreeze")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("unfreeze is a number of levels from the top (1: the head alone) or 'all'")
        return value


class TrainingConfig(_Section):
    """Optimisation: AdamW, warmup then decay, evaluation and best-checkpoint selection."""

    epochs: float = Field(3, gt=0)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(128, ge=1, description="At most this many texts per evaluation batch.")
    eval_max_tokens: int = Field(
        4096,
        ge=1,
        description="Padded tokens per evaluation batch (texts x longest): long essays come in small batches, "
        "short sentences in large ones.",
    )
    learning_rate: LearningRate = Field(
        5e-5,
        description="Rate of the encoder's top layer; [low, high] is fastai's slice: high for the head, low for "
        "the embeddings, geometric in between.",
    )
    head_learning_rate: float | None = Field(None, gt=0, description="Head learning rate; None: learning_rate.")
    layer_decay: float = Field(
        1.0, gt=0, le=1, description="Layer-wise LR decay: each encoder layer gets this times the one above."
    )
    weight_decay: float = Field(0.01, ge=0, description="Not applied to biases and LayerNorm weights.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Warmup share of the steps; one_cycle's pct_start.")
    scheduler: Literal["linear", "cosine", "constant_with_warmup", "one_cycle"] = Field(
        "linear",
        description="one_cycle: torch's OneCycleLR (cosine up to the rate, then down to 1/25e5 of it) with Adam's "
        "beta1 cycled against it between momentums.",
    )
    momentums: tuple[float, float] = Field(
        (0.95, 0.85), description="one_cycle: beta1 at the start and end, and at the peak of the learning rate."
    )
    stages: list[Stage] | None = Field(
        None,
        description="Gradual unfreezing, e.g. [{unfreeze: 1, epochs: 1, lr: 2e-3}, {unfreeze: all, epochs: 2}]; "
        "each stage gets a fresh optimizer over its trainable levels and its own schedule. Replaces epochs.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    evals_per_epoch: int = Field(1, ge=1, description="Validation passes per epoch; the best one is kept.")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Evaluate and keep an exponential moving average of the weights (e.g. 0.995)."
    )
    group_by_length: bool = Field(True, description="Batch texts of similar length to pad less.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it.")
    seed: int = 42
    seeds: list[int] = Field(
        [],
        description="Train one model per seed (in seed-<s>/ of output.dir, all on the validation split of "
        "training.seed) and predict with their average, as a cv run averages its folds; under cv, each fold per "
        "seed (as cv.seeds).",
    )
    checkpoints: bool = Field(
        True,
        description="Write a checkpoint into output.dir/.checkpoints at each evaluation (and see checkpoint_minutes), "
        "so a killed run resumes where it stopped; the finished bundle replaces them.",
    )
    checkpoint_minutes: float = Field(10.0, gt=0, description="Checkpoint at least this often during training.")

    _rates = field_validator("learning_rate")(_check_learning_rate)
    _seeds = field_validator("seeds")(_distinct_seeds)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        rates = [self.learning_rate, *(stage.learning_rate for stage in self.stages or [])]
        if self.layer_decay != 1 and any(isinstance(rate, tuple) for rate in rates):
            raise ValueError("a learning rate [low, high] already spreads the rates; leave layer_decay at 1")
        if self.stages is not None and not self.stages:
            raise ValueError("training.stages needs at least one stage, or leave it out")
        return self

    def cut_at(self, epochs: float) -> TrainingConfig:
        """These settings trained for `epochs` in all: `epochs` replaced, or the stages kept up to that point (the
        last one kept shortened), e.g. for a refit for the epochs an evaluated run chose."""
        if not self.stages:
            return self.model_copy(update={"epochs": epochs})
        stages, left = [], epochs
        for stage in self.stages:
            if left > 1e-9:
                stages.append(stage.model_copy(update={"epochs": min(stage.epochs, left)}))
            left -= stage.epochs
        return self.model_copy(update={"stages": stages})

    def stage_plan(self) -> list[Stage]:
        """The stages to run; without `stages`, one stage that trains everything for `epochs`."""
        return list(self.stages) if self.stages else [Stage(unfreeze="all", epochs=self.epochs)]


class CVConfig(_Section):
    """K-fold cross-validation (`texttune cv`): how rows are assigned to folds."""

    folds: int = Field(5, ge=2, description="Number of folds.")
    fold_column: str = Field(
        "fold", description="A column of this name in the data assigns folds as is (0..K-1), to reproduce a split."
    )
    group_column: str | None = Field(
        None, description="Rows sharing a value stay in one fold (GroupKFold / StratifiedGroupKFold)."
    )
    bins: int = Field(5, ge=2, description="Regression: quantile bins per target for stratification.")
    seed: int | None = Field(None, description="Seed of the fold plan; None: training.seed.")
    seeds: list[int] = Field(
        [],
        description="Train the folds once per training seed (a cv run each, in seed-<s>/ of output.dir, all on the "
        "fold plan of cv.seed), then blend them in output.dir (texttune blend): one command for a multi-seed run.",
    )

    _seeds = field_validator("seeds")(_distinct_seeds)

    cpus_per_fold: int = Field(
        1, ge=1, description="--executor ray: the CPUs each fold's task asks for (and the threads it trains with)."
    )
    gpus_per_fold: float = Field(0, ge=0, description="--executor ray: the GPUs each fold's task asks for.")
    postprocess: bool = Field(
        True,
        description="Fit post-processing on the out-of-fold predictions (a temperature for classes; snapping to "
        "the targets' grid for scores), each step kept only where it helps rows it was not fitted on.",
    )


class SearchRange(_Section):
    """A numeric hyperparameter's range: integers where low, high (and step) are, floats otherwise."""

    low: int | float
    high: int | float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")
    step: int | float | None = Field(None, gt=0, description="A grid: low, low + step, ... (not with log).")

    @model_validator(mode="after")
    def _ordered(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    @property
    def integers(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step if self.step else 1))


class TuneConfig(_Section):
    """`texttune tune`: the search space over recipe keys, and how the search runs (Optuna)."""

    space: dict[str, SearchRange | list[Any]] = Field(
        {},
        description="Recipe keys to search, e.g. training.learning_rate: {low: 1e-5, high: 3e-4, log: true}, "
        "model.pooling: [mean, cls]: a range, or a list of choices.",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description="tpe: Optuna's TPESampler; random: uniform.")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stop trials whose intermediate evaluations trail the others' (at the same point)."
    )
    startup_trials: int = Field(
        5, ge=0, description="Trials before pruning and TPE start (random ones), so both have something to compare."
    )
    folds: int | None = Field(None, ge=2, description="tune --cv: folds of each trial's cv; None: cv.folds.")
    storage: str | None = Field(
        None,
        description="Optuna storage URL; None: optuna.db beside the embedded tracking store "
        "(sqlite:///texttune-runs/optuna.db), so a killed study resumes.",
    )
    study: str | None = Field(None, description="Study name; None: tracking.name.")

    @field_validator("space")
    @classmethod
    def _keys(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, choices in space.items():
            section, _, name = key.partition(".")
            if section in ("tune", "output", "tracking") or not name or "." in name:
                raise ValueError(f"{key!r}: search keys are section.key of data, task, model, training or cv")
            if isinstance(choices, list) and len(choices) < 2:
                raise ValueError(f"{key!r}: give two choices or more")
            if isinstance(choices, list) and not all(isinstance(c, str | int | float | bool) for c in choices):
                raise ValueError(f"{key!r}: choices are plain values (numbers, strings, booleans)")
        return space


class TrackingConfig(_Section):
    """Where runs, metrics, plots and model versions are recorded (`texttune.tracking`); never needed to train."""

    backend: Literal["mlflow", "wandb", "none"] = Field(
        "mlflow", description="mlflow: an embedded store, or a server; wandb: Weights & Biases; none: no tracking."
    )
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else the embedded store "
        "sqlite:///texttune-runs/mlflow.db with its artifacts beside it.",
    )
    experiment: str = Field("texttune", description="MLflow experiment, or W&B project.")
    name: str | None = Field(
        None,
        description="Run name and registered model name; None: the recipe file's name (ellipse for ellipse.yaml), "
        "or for a recipe built in Python the output directory's name.",
    )
    group: str | None = Field(None, description="Group of related runs (W&B group; an MLflow tag).")
    job_type: str | None = Field(None, description="W&B job type; an MLflow tag. None: train, cv, fold or lr-find.")
    tags: list[str] = Field([], description="Labels for the runs (W&B tags; MLflow tags with an empty value).")
    log_models: bool = Field(True, description="Log each bundle and register it as a new version of the model `name`.")

    _lists = field_validator("tags", mode="before")(_as_list)


class OutputConfig(_Section):
    """Where the model bundle goes."""

    dir: Path = Field(Path("texttune-runs/model"), description="Bundle directory, replaced atomically.")


class Recipe(_Section):
    """A whole run: data, task, model, training and output."""

    data: DataConfig
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    cv: CVConfig = CVConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _one_list_of_seeds(self) -> Recipe:
        if self.cv.seeds and self.training.seeds and self.cv.seeds != self.training.seeds:
            raise ValueError("cv.seeds and training.seeds name different seeds; give one of them")
        return self

    @property
    def seeds(self) -> list[int]:
        """The seeds a multi-seed cv run trains (cv.seeds, else training.seeds); empty for one seed."""
        return self.cv.seeds or self.training.seeds

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
        try:
            raw[section][name] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise TexttuneError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. --set 'data.sep=\";\"'"
            ) from None
    return raw


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid keys: {', '.join(choices)}"


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class inside an annotation such as `Stage`, `list[Stage] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_section_type, typing.get_args(annotation))), None)


def _fields_at(location: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = Recipe
    for part in location:
        if isinstance(part, int):  # an index into a list of sections
            continue
        field = model.model_fields.get(str(part))  # None: a key of a mapping, such as tune.space's
        model = None if field is None else _section_type(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    location = tuple(error["loc"])
    path = ".".join(str(part) for part in location)
    if error["type"] == "extra_forbidden":
        return f"unknown key '{path}'; {_suggest(str(location[-1]), _fields_at(location[:-1]))}"
    if error["type"] == "missing":
        return f"missing required key '{path}'"
    while location and not isinstance(location[-1], int) and location[-1] not in _fields_at(location[:-1]):
        location = location[:-1]  # pydantic names the member of a union it tried, e.g. '.float'
    path = ".".join(str(part) for part in location) or path
    return f"{path}: {error['msg']} (got {error.get('input')!r})"


def check_recipe_key(key: str, where: str) -> None:
    """Raise a one-line error (with the nearest valid key) unless `key` is a `section.key` of a recipe."""
    section, _, name = key.partition(".")
    if section not in Recipe.model_fields:
        raise TexttuneError(f"{where}: unknown section in {key!r}; {_suggest(section, list(Recipe.model_fields))}")
    if name not in _fields_at((section,)):
        raise TexttuneError(f"{where}: unknown key {key!r}; {_suggest(name, _fields_at((section,)))}")


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
        raise TexttuneError(
            f"{path}: a recipe is a mapping of sections (data, task, model, training, cv, tune, tracking, output)"
        )
    raw = apply_overrides(raw, overrides or [])
    tracking = raw.setdefault("tracking", {})
    if isinstance(tracking, dict) and tracking.get("name") is None:
        tracking["name"] = path.stem  # runs and model versions are named after the recipe
    return build_recipe(raw, source=str(path))
