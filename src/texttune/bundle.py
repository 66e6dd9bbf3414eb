"""The model bundle: everything prediction needs, in files that load without executing code.

model.safetensors   weights of encoder and head
texttune.json       the model as a pipeline of parts: `pipeline` (text columns, joiner, max_length, padding), the
                    encoder config, pooling, the head's task (labels or targets), and `postprocess` (its steps)
tokenizer files     as written by `save_pretrained`
metrics.json        validation metrics of the kept checkpoint, and the constant baseline's
recipe.yaml         the resolved recipe that produced it

Format 1 (before the text pipeline) kept text_columns and max_length at the top and the clipping in the task; it
still loads, read into the same objects.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer

from texttune._io import atomic_directory
from texttune.errors import TexttuneError
from texttune.models.heads import TextModel
from texttune.models.registry import backbone_from_config
from texttune.pipeline import TextPipeline
from texttune.postprocess import Clip, PostProcessing, Softmax
from texttune.task import TaskSpec

ENSEMBLE_FILE = "texttune-ensemble.json"  # a cv run directory: its fold bundles, averaged
VALID_PREDICTIONS = "valid_predictions.csv"  # validation rows with truth and predictions
BUNDLE_FILE = "texttune.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_URI_PREFIX = "models:/"  # a registered version in the tracking store, not a directory
FORMAT_VERSION = 2


@dataclass(frozen=True)
class BundleInfo:
    """What `texttune.json` holds besides the text pipeline and the weights."""

    task: TaskSpec
    backbone: str
    backbone_config: dict[str, Any]
    postprocess: PostProcessing = PostProcessing()
    id_column: str | None = None
    pooling: str = "mean"
    head_dropout: float = 0.1
    precision: str = "fp32"
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**data, "task": self.task.to_dict(), "postprocess": self.postprocess.to_list()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleInfo:
        return cls(
            **{
                **data,
                "task": TaskSpec.from_dict(data["task"]),
                "postprocess": PostProcessing.from_list(data["postprocess"]),
            }
        )


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model, the pipeline that feeds it, and its description."""

    model: TextModel
    pipeline: TextPipeline
    info: BundleInfo


def _upgrade_format_1(data: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A format-1 description in format 2's terms: the pipeline from its columns, max_length and tokenizer (as
    format 1 read them), the post-processing from its task (softmax, or clipping to the training range)."""
    data = dict(data)
    pipeline = TextPipeline.create(tokenizer, data.pop("text_columns"), data.pop("max_length", 512))
    task = data["task"]
    if task["kind"] == "classification":
        steps = [Softmax()]
    else:
        steps = [Clip(tuple(task["target_min"]), tuple(task["target_max"]))] if task.get("clip", True) else []
    return {**data, "pipeline": pipeline.to_dict(), "postprocess": PostProcessing(tuple(steps)).to_list()}


def _versions() -> dict[str, str]:
    from texttune import __version__

    return {"texttune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def save_bundle(
    path: str | Path,
    model: TextModel,
    pipeline: TextPipeline,
    info: BundleInfo,
    metrics: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a bundle atomically: a reader sees the old bundle or the whole new one, never a mix.

    `extra_files` (name -> content, such as plots) are written inside it; loading ignores them.
    """
    path = Path(path)
    info = dataclasses.replace(info, versions=_versions())
    description = {"format_version": FORMAT_VERSION, "pipeline": pipeline.to_dict(), **info.to_dict()}
    with atomic_directory(path) as staging:
        save_model(model, str(staging / WEIGHTS_FILE))
        pipeline.tokenizer.save_pretrained(staging)
        (staging / BUNDLE_FILE).write_text(json.dumps(description, indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
        if recipe is not None:
            (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Rebuild model, pipeline and description from a bundle, with no network and no code from the bundle.

    Raises:
        TexttuneError: the directory is not a complete texttune bundle.
    """
    path = Path(path)
    missing = [name for name in (BUNDLE_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise TexttuneError(
            f"{path}: not a texttune model bundle (missing {', '.join(missing)}); "
            "pass the output.dir of a `texttune train` run, or of a `texttune cv` run that has finished"
        )
    try:
        data = json.loads((path / BUNDLE_FILE).read_text())
        version = data.pop("format_version", None)
    except (json.JSONDecodeError, AttributeError) as exc:
        raise TexttuneError(f"{path / BUNDLE_FILE}: unreadable bundle description ({exc})") from None
    if version not in (1, FORMAT_VERSION):
        raise TexttuneError(f"bundle format version {version} is not supported (expected {FORMAT_VERSION})")
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    try:
        data = _upgrade_format_1(data, tokenizer) if version == 1 else data
        pipeline = TextPipeline.from_dict(data.pop("pipeline"), tokenizer)
        info = BundleInfo.from_dict(data)
    except (KeyError, TypeError, TexttuneError) as exc:
        raise TexttuneError(f"{path / BUNDLE_FILE}: unreadable bundle description ({exc})") from None
    model = TextModel(
        backbone_from_config(info.backbone_config), info.pooling, info.task.num_outputs, info.head_dropout
    )
    load_model(model, str(path / WEIGHTS_FILE), strict=True)
    return Bundle(model.eval(), pipeline, info)


def load_ensemble(path: str | Path) -> tuple[list[Bundle], BundleInfo, list[float] | None]:
    """A cv run directory: the fold bundles its manifest names, their merged description, and the manifest's
    weights.

    The members must read texts the same way (backbone and text pipeline) and predict the same outputs, so each
    text is tokenized once for all of them. Their post-processing is merged (regression outputs are clipped to the
    union of the folds' ranges).

    Raises:
        TexttuneError: a member is missing or incomplete, or the members disagree.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / ENSEMBLE_FILE).read_text())
        members = list(manifest["members"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TexttuneError(f"{path / ENSEMBLE_FILE}: unreadable ensemble manifest ({exc})") from None
    for member in members:  # folders inside the run directory, never a path out of it
        if not isinstance(member, str) or Path(member).name != member or member in ("", ".", ".."):
            raise TexttuneError(f"{path / ENSEMBLE_FILE}: member {member!r} is not a folder name inside {path}")
    if not members:
        raise TexttuneError(f"{path / ENSEMBLE_FILE}: the manifest names no members; re-run the cv to rewrite it")
    bundles = [load_bundle(path / member) for member in members]

    def reads(bundle: Bundle) -> tuple:
        task = bundle.info.task
        return bundle.info.backbone, bundle.pipeline.to_dict(), task.kind, task.target_columns, task.labels

    for member, bundle in zip(members, bundles):
        if reads(bundle) != reads(bundles[0]):
            raise TexttuneError(
                f"{path}: {member} differs from {members[0]} in backbone, text pipeline or outputs; "
                "an ensemble needs folds of one recipe"
            )
    postprocess = PostProcessing.ensemble([bundle.info.postprocess for bundle in bundles])
    return bundles, dataclasses.replace(bundles[0].info, postprocess=postprocess), manifest.get("weights")
