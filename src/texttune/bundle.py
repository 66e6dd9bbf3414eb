"""The model bundle: everything prediction needs, in files that load without executing code.

model.safetensors   weights of encoder and head
texttune.json       task (labels, targets and their ranges), columns, pooling, max_length, encoder config
tokenizer files     as written by `save_pretrained`
metrics.json        validation metrics of the kept checkpoint, and the constant baseline's
recipe.yaml         the resolved recipe that produced it
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer

from texttune._io import atomic_directory
from texttune.errors import TexttuneError
from texttune.models.heads import TextModel
from texttune.models.registry import backbone_from_config
from texttune.task import TaskSpec

ENSEMBLE_FILE = "texttune-ensemble.json"  # a cv run directory: its fold bundles, averaged
VALID_PREDICTIONS = "valid_predictions.csv"  # validation rows with truth and predictions
BUNDLE_FILE = "texttune.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BundleInfo:
    """What `texttune.json` holds besides the weights."""

    task: TaskSpec
    text_columns: tuple[str, ...]
    backbone: str
    backbone_config: dict[str, Any]
    id_column: str | None = None
    pooling: str = "mean"
    head_dropout: float = 0.1
    max_length: int = 512
    precision: str = "fp32"
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {
            "format_version": FORMAT_VERSION,
            **data,
            "task": self.task.to_dict(),
            "text_columns": list(self.text_columns),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleInfo:
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise TexttuneError(f"bundle format version {version} is not supported (expected {FORMAT_VERSION})")
        return cls(**{**data, "task": TaskSpec.from_dict(data["task"]), "text_columns": tuple(data["text_columns"])})


def _versions() -> dict[str, str]:
    from texttune import __version__

    return {"texttune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def save_bundle(
    path: str | Path,
    model: TextModel,
    tokenizer: Any,
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
    with atomic_directory(path) as staging:
        save_model(model, str(staging / WEIGHTS_FILE))
        tokenizer.save_pretrained(staging)
        (staging / BUNDLE_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
        if recipe is not None:
            (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
    return path


def load_bundle(path: str | Path) -> tuple[TextModel, Any, BundleInfo]:
    """Rebuild model, tokenizer and info from a bundle, with no network and no code from the bundle.

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
        info = BundleInfo.from_dict(json.loads((path / BUNDLE_FILE).read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TexttuneError(f"{path / BUNDLE_FILE}: unreadable bundle description ({exc})") from None
    model = TextModel(
        backbone_from_config(info.backbone_config), info.pooling, info.task.num_outputs, info.head_dropout
    )
    load_model(model, str(path / WEIGHTS_FILE), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    return model.eval(), tokenizer, info


def load_ensemble(path: str | Path) -> tuple[list[TextModel], Any, BundleInfo, list[float] | None]:
    """A cv run directory: the fold bundles its manifest names, one tokenizer for all, and the manifest's weights.

    The members must read texts the same way (backbone, max_length, text columns) and predict the same outputs,
    so each text is tokenized once for all of them. Regression outputs are clipped to the union of the folds' ranges.

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
    loaded = [load_bundle(path / member) for member in members]
    infos = [info for _, _, info in loaded]

    def reads(info: BundleInfo) -> tuple:
        task = info.task
        return info.backbone, info.max_length, info.text_columns, task.kind, task.target_columns, task.labels

    for member, info in zip(members, infos):
        if reads(info) != reads(infos[0]):
            raise TexttuneError(
                f"{path}: {member} differs from {members[0]} in backbone, max_length, text columns or outputs; "
                "an ensemble needs folds of one recipe"
            )
    task = dataclasses.replace(
        infos[0].task,
        target_min=tuple(np.min([i.task.target_min for i in infos], axis=0).tolist())
        if infos[0].task.target_min
        else (),
        target_max=tuple(np.max([i.task.target_max for i in infos], axis=0).tolist())
        if infos[0].task.target_max
        else (),
    )
    models = [model for model, _, _ in loaded]
    return models, loaded[0][1], dataclasses.replace(infos[0], task=task), manifest.get("weights")
