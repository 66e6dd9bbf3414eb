"""The model bundle: everything prediction needs, in files that load without executing code.

model.safetensors   weights of encoder and head
texttune.json       the model as a pipeline of parts: `pipeline` (text columns, joiner, max_length, padding), the
                    encoder config, pooling, the head's task (labels or targets), and `postprocess` (its steps)
tokenizer files     as written by `save_pretrained`
metrics.json        validation metrics of the kept checkpoint, and the constant baseline's
recipe.yaml         the resolved recipe that produced it

`texttune.json` also lists the SHA-256 of every other file (`files`): loading checks them first and refuses a
bundle with a modified, truncated, missing or extra file, a symlink, a pickle, or tokenizer settings that name
files outside it (`verify_bundle`). Format 1 (before the text pipeline) kept text_columns and max_length at the top
and the clipping in the task; it still loads, read into the same objects, with a warning that it is unverified.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer

from texttune._io import atomic_directory, recover_directory, sha256_of, write_failure
from texttune.errors import TexttuneError, first_line
from texttune.models.heads import TextModel
from texttune.models.registry import backbone_from_config, max_positions, stored_config
from texttune.pipeline import TextPipeline
from texttune.postprocess import Clip, PostProcessing, Softmax
from texttune.task import TaskSpec

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "texttune-ensemble.json"  # a cv run directory: its fold bundles, averaged
BLEND_FILE = "texttune-blend.json"  # a blend directory: cv runs elsewhere, mixed (texttune.blend)
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
    """A loaded bundle: the text pipeline, its description, its exported engines, and the model (its weights read
    on first use, so a bundle served by ONNX Runtime never builds the PyTorch model)."""

    path: Path
    pipeline: TextPipeline
    info: BundleInfo
    exports: dict[str, Any] = field(default_factory=dict)  # engine name -> file and fidelity figures (export.py)

    @functools.cached_property
    def model(self) -> TextModel:
        info, weights = self.info, self.path / WEIGHTS_FILE
        try:
            with torch.device("meta"):  # shapes only: a description promising a huge model allocates nothing
                skeleton = TextModel(
                    backbone_from_config(info.backbone_config), info.pooling, info.task.num_outputs, info.head_dropout
                )
        except (KeyError, TypeError, ValueError, TexttuneError) as exc:
            raise TexttuneError(
                f"{self.path / BUNDLE_FILE}: unreadable bundle description ({first_line(exc)})"
            ) from None
        _check_shapes(weights, skeleton)
        model = TextModel(
            backbone_from_config(info.backbone_config), info.pooling, info.task.num_outputs, info.head_dropout
        )
        try:
            load_model(model, str(weights), strict=True)
        except Exception as exc:  # safetensors and torch raise several types for damaged or mismatched weights
            raise TexttuneError(
                f"{weights}: the weights do not load into the model texttune.json describes "
                f"({first_line(exc)}); the bundle is damaged or its files do not belong together"
            ) from None
        return model.eval()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_TOKENIZER_SETTINGS = ("tokenizer_config.json", "special_tokens_map.json")
CHECKPOINTS = ".checkpoints"  # a training going on (or killed) into the bundle's folder keeps these beside it


def _entries(folder: Path) -> list[Path]:
    """The bundle's own entries: all but its description and the checkpoints of a training into its folder."""
    return [p for p in sorted(folder.iterdir()) if p.name not in (BUNDLE_FILE, CHECKPOINTS)]


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a bundle folder but its description."""
    return {p.name: sha256_of(p) for p in _entries(folder)}


# Tokenizer settings that name files: any string there is read as a path (a bare name from the working folder).
_FILE_KEYS = ("vocab", "merges")


def _names_a_file(key: str, value: object) -> bool:
    """Whether one tokenizer setting names a file (or remote code)."""
    text = isinstance(value, str) or (isinstance(value, list) and any(isinstance(v, str) for v in value))
    return key == "auto_map" or ((key.endswith(("_file", "_files")) or key in _FILE_KEYS) and text)


def _names_files(value: object) -> bool:
    """Whether tokenizer settings name files (`fast_tokenizer_files: ["../../x"]`, `vocab: "/etc/words"`) or remote
    code (`auto_map`), at any depth: a bundle's tokenizer is its tokenizer.json and nothing else."""
    if isinstance(value, dict):
        return any(_names_a_file(k, v) or _names_files(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_names_files(v) for v in value)
    return False


def _clean_tokenizer_settings(folder: Path) -> None:
    """Drop what `save_pretrained` copies from an encoder's settings that would name files or remote code, so a
    new bundle always passes `verify_bundle`."""
    for name in _TOKENIZER_SETTINGS:
        settings = folder / name
        if settings.is_file():
            data = json.loads(settings.read_text())
            kept = {k: v for k, v in data.items() if not _names_a_file(k, v)}
            if kept != data:
                settings.write_text(json.dumps(kept, indent=2) + "\n")


def verify_bundle(path: str | Path) -> list[str]:
    """Check a bundle folder before anything in it is read: only plain files, no pickles, tokenizer settings that
    name no outside file or remote code, and (from format 2) every file with the SHA-256 its description lists.
    Returns what was checked, one line each; a bundle written before hashes were kept checks with a warning.

    Raises:
        TexttuneError: the first problem found, naming the file.
    """
    path = Path(path)
    for entry in _entries(path):
        if entry.is_symlink():
            raise TexttuneError(f"{entry}: a symlink inside a bundle; bundles hold plain files only, copy the file in")
        if not entry.is_file():
            raise TexttuneError(f"{entry}: a folder inside a bundle; bundles hold plain files only")
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise TexttuneError(f"{entry}: a pickle-capable file in a bundle; texttune never loads one, remove it")
    for name in _TOKENIZER_SETTINGS:
        settings = path / name
        if settings.is_file():
            try:
                if _names_files(json.loads(settings.read_text())):
                    raise TexttuneError(f"{settings}: names files by path or remote code (auto_map); refused")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise TexttuneError(f"{settings}: not valid JSON; the bundle's tokenizer files are damaged") from None
    try:
        listed = json.loads((path / BUNDLE_FILE).read_text()).get("files")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise TexttuneError(f"{path / BUNDLE_FILE}: unreadable bundle description ({exc})") from None
    if listed is not None and not (isinstance(listed, dict) and all(isinstance(v, str) for v in listed.values())):
        raise TexttuneError(f"{path / BUNDLE_FILE}: 'files' is not a table of file names and SHA-256 digests")
    if listed is None:
        logger.warning("%s: written before texttune kept file hashes, so its files are unverified", path)
        return [f"{path}: unverified (no file hashes); no symlinks, pickles or outside files"]
    found = file_hashes(path)
    extra, missing = sorted(set(found) - set(listed)), sorted(set(listed) - set(found))
    if extra or missing:
        problem = f"holds {extra[0]}, which it did not write" if extra else f"lacks {missing[0]}"
        # the hashes show damage and edits; they cannot prove who wrote a bundle (its author writes them too)
        raise TexttuneError(f"{path}: the bundle {problem}; restore the bundle as it was written")
    for name, digest in listed.items():
        if found[name] != digest:
            raise TexttuneError(
                f"{path / name}: modified or damaged (its SHA-256 differs from the one the bundle recorded); "
                "restore the bundle as it was written"
            )
    return [f"{path / name}: sha256 {digest[:16]}... ok" for name, digest in listed.items()]


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
    try:
        _write_bundle_files(path, model, pipeline, description, metrics, recipe, extra_files)
    except (OSError, SafetensorError) as exc:  # a full disk, a size limit: the previous bundle stays in place
        raise TexttuneError(
            f"{path}: could not write the bundle ({write_failure(exc)}); free some disk space and run again "
            "(a killed or failed training resumes from its checkpoints); any previous bundle there is untouched"
        ) from None
    return path


def _write_bundle_files(
    path: Path,
    model: TextModel,
    pipeline: TextPipeline,
    description: dict[str, Any],
    metrics: dict[str, Any] | None,
    recipe: dict[str, Any] | None,
    extra_files: dict[str, bytes] | None,
) -> None:
    with atomic_directory(path) as staging:
        save_model(model, str(staging / WEIGHTS_FILE))
        pipeline.tokenizer.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
        if recipe is not None:
            (staging / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
        _clean_tokenizer_settings(staging)
        description["files"] = file_hashes(staging)
        (staging / BUNDLE_FILE).write_text(json.dumps(description, indent=2) + "\n")
        verify_bundle(staging)  # never replace a bundle by one that would be refused


def load_bundle(path: str | Path, model: bool = True) -> Bundle:
    """Rebuild model, pipeline and description from a bundle, with no network and no code from the bundle.

    Args:
        model: build the model and read the weights now (False: on first use of `Bundle.model`, as an ONNX engine
            never does).

    Raises:
        TexttuneError: the directory is not a complete texttune bundle.
    """
    path = Path(path)
    recover_directory(path, sweep=False)  # a write killed between its renames is finished first
    missing = [name for name in (BUNDLE_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise TexttuneError(
            f"{path}: not a texttune model bundle (missing {', '.join(missing)}); "
            "pass the output.dir of a `texttune train` run, or of a `texttune cv` run that has finished"
        )
    verify_bundle(path)
    data = json.loads((path / BUNDLE_FILE).read_text())
    version = data.pop("format_version", None)
    if version not in (1, FORMAT_VERSION):
        raise TexttuneError(f"bundle format version {version} is not supported (expected {FORMAT_VERSION})")
    data.pop("files", None)
    exports = _checked_exports(path, data.pop("exports", {}))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # the tokenizer libraries raise many types for damaged files
        raise TexttuneError(f"{path}: the tokenizer files are unreadable ({first_line(exc)})") from None
    try:
        data = _upgrade_format_1(data, tokenizer) if version == 1 else data
        pipeline = TextPipeline.from_dict(data.pop("pipeline"), tokenizer)
        info = BundleInfo.from_dict(data)
        limit = max_positions(stored_config(info.backbone_config))
    except (KeyError, TypeError, ValueError, TexttuneError) as exc:
        raise TexttuneError(f"{path / BUNDLE_FILE}: unreadable bundle description ({first_line(exc)})") from None
    if limit is not None and pipeline.max_length > limit:
        raise TexttuneError(
            f"{path / BUNDLE_FILE}: max_length {pipeline.max_length} is longer than the encoder's {limit} positions; "
            "the description does not match the model"
        )
    bundle = Bundle(path, pipeline, info, exports)
    if model:
        bundle.model  # noqa: B018 (read now: a damaged file fails here, not at the first prediction)
    return bundle


def _checked_exports(path: Path, exports: object) -> dict[str, Any]:
    """The `exports` records, each naming a file of the bundle itself."""
    if not isinstance(exports, dict) or not all(isinstance(r, dict) for r in exports.values()):
        raise TexttuneError(f"{path / BUNDLE_FILE}: 'exports' is not a table of export records")
    for engine, record in exports.items():
        name = record.get("file")
        if not isinstance(name, str) or Path(name).name != name or not (path / name).is_file():
            raise TexttuneError(f"{path / BUNDLE_FILE}: export {engine} names {name!r}, not a file of the bundle")
    return exports


def _check_shapes(weights: Path, skeleton: TextModel) -> None:
    """The stored tensors have the shapes the description's model has, read from the file's header alone."""
    described = {name: tuple(value.shape) for name, value in skeleton.state_dict().items()}
    try:
        with safe_open(str(weights), "pt") as stored:
            shapes = {name: tuple(stored.get_slice(name).get_shape()) for name in stored.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise TexttuneError(
            f"{weights}: the weights are unreadable ({first_line(exc)}); the bundle is damaged"
        ) from None
    wrong = next((name for name, shape in shapes.items() if described.get(name) != shape), None)
    if wrong is not None:
        raise TexttuneError(
            f"{weights}: the weights do not load into the model texttune.json describes ({wrong}: stored "
            f"{list(shapes[wrong])}, described {list(described[wrong]) if wrong in described else 'none'}); "
            "the bundle is damaged or its files do not belong together"
        )


def add_exports(
    path: str | Path,
    files: dict[str, Path],
    exports: dict[str, dict[str, Any]],
    dropped: Sequence[str] = (),
    expected_description: str | None = None,
) -> None:
    """Add exported files (name -> where they are now) to a bundle with their `exports` records, and remove the
    records and files of the engines in `dropped` (an export that was tried again and not kept), atomically: a
    copy of the bundle (hard links where the disk allows) is changed, its manifest extended by the new files'
    hashes and verified, then it replaces the bundle. The new files are moved in. `expected_description`: the
    texttune.json the exports were made from; a bundle replaced since is refused.

    Raises:
        TexttuneError: the bundle cannot be written, or changed while the export ran (then it is left as it is).
    """
    path = Path(path)
    text = (path / BUNDLE_FILE).read_text()
    if expected_description is not None and text != expected_description:
        raise TexttuneError(f"{path}: the bundle was replaced while it was exported; export it again")
    description = json.loads(text)
    records = dict(description.get("exports", {}))
    gone = {records.pop(engine)["file"] for engine in dropped if engine in records}
    gone = {name for name in gone if name.endswith(".onnx")}  # never the weights, whatever a record says
    records.update(exports)
    if not files and records == description.get("exports", {}):
        return  # nothing to change: the bundle is not rewritten
    try:
        with atomic_directory(path) as staging:
            for entry in _entries(path):
                if entry.name in files or entry.name in gone:
                    continue
                try:
                    os.link(entry, staging / entry.name)
                except OSError:
                    shutil.copy2(entry, staging / entry.name)
            for name, source in files.items():
                shutil.move(source, staging / name)
            description["exports"] = records
            if "files" in description:  # only the new files are hashed: the others must still match the old hashes
                kept = {k: v for k, v in description["files"].items() if k not in gone}
                description["files"] = {**kept, **{name: sha256_of(staging / name) for name in files}}
            (staging / BUNDLE_FILE).write_text(json.dumps(description, indent=2) + "\n")
            verify_bundle(staging)
    except OSError as exc:
        raise TexttuneError(
            f"{path}: could not add the export ({write_failure(exc)}); the bundle is untouched"
        ) from None


def normalized_weights(weights: object, members: int) -> list[float]:
    """An ensemble's weights, summing to 1: one finite, non-negative number per member (None: equal weights).

    Raises:
        TexttuneError: the wrong count, a string, NaN or inf, a negative weight, or all zero.
    """
    if weights is None:
        return [1.0 / members] * members
    try:
        values = [float(w) for w in weights] if not isinstance(weights, str | bytes) else []
    except (TypeError, ValueError):
        values = []
    if len(values) != members or not all(math.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise TexttuneError(
            f"weights {values} do not fit {members} member(s): give each a finite weight, 0 or more, not all 0"
        )
    return [w / sum(values) for w in values]


def ensemble_members(path: Path) -> list[str]:
    """The member folders a cv run's manifest names, each a folder inside it.

    Raises:
        TexttuneError: an unreadable manifest, no members, or a member that is a path out of the run or a symlink.
    """
    try:
        manifest = json.loads((path / ENSEMBLE_FILE).read_text())
        members = list(manifest["members"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TexttuneError(f"{path / ENSEMBLE_FILE}: unreadable ensemble manifest ({exc})") from None
    for member in members:  # folders inside the run directory, never a path out of it
        if not isinstance(member, str) or Path(member).name != member or member in ("", ".", ".."):
            raise TexttuneError(f"{path / ENSEMBLE_FILE}: member {member!r} is not a folder name inside {path}")
        if (path / member).is_symlink():
            raise TexttuneError(f"{path / member}: a symlink; an ensemble's members are folders inside its run")
    if not members:
        raise TexttuneError(f"{path / ENSEMBLE_FILE}: the manifest names no members; re-run the cv to rewrite it")
    return members


def load_ensemble(
    path: str | Path, model: bool = True, raw: bool = False
) -> tuple[list[Bundle], BundleInfo, list[float] | None]:
    """A cv run directory: the fold bundles its manifest names, their merged description, and the manifest's
    weights.

    The members must read texts the same way (backbone and text pipeline) and predict the same outputs, so each
    text is tokenized once for all of them. Their post-processing is merged (regression outputs are clipped to the
    union of the folds' ranges), then the steps the cv fitted on out-of-fold outputs are added, unless `raw`.

    Raises:
        TexttuneError: a member is missing or incomplete, or the members disagree.
    """
    path = Path(path)
    members = ensemble_members(path)
    bundles = [load_bundle(path / member, model) for member in members]

    def reads(bundle: Bundle) -> tuple:
        task = bundle.info.task
        return bundle.info.backbone, bundle.pipeline.to_dict(), task.kind, task.target_columns, task.labels

    for member, bundle in zip(members, bundles):
        if reads(bundle) != reads(bundles[0]):
            raise TexttuneError(
                f"{path}: {member} differs from {members[0]} in backbone, text pipeline or outputs; "
                "an ensemble needs folds of one recipe"
            )
    manifest = json.loads((path / ENSEMBLE_FILE).read_text())
    postprocess = PostProcessing.ensemble([bundle.info.postprocess for bundle in bundles])
    if not raw:
        postprocess = postprocess.with_fitted(PostProcessing.from_list(manifest.get("postprocess") or []).steps)
    weights = manifest.get("weights")
    normalized_weights(weights, len(bundles))  # refused here, not at the first prediction
    return bundles, dataclasses.replace(bundles[0].info, postprocess=postprocess), weights
