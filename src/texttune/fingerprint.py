"""What makes two runs the same: the recipe's settings that change results, and the bytes of the data they read.

A cv run directory and a training's checkpoints remember the fingerprint they were made with, so a resume with
another recipe or changed data is refused with the changed keys named instead of mixing two runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from texttune._io import sha256_of
from texttune.config import Recipe

# Settings that do not change what is learned: where it goes, what records it, how it is searched (tune), how often
# it is saved, how the evaluations are batched, where the folds run.
_IGNORED = {"output", "tracking", "tune"}
_IGNORED_KEYS = {
    "training.checkpoints",
    "training.checkpoint_minutes",
    "training.eval_batch_size",
    "training.eval_max_tokens",
    "cv.cpus_per_fold",
    "cv.gpus_per_fold",
    "cv.postprocess",  # fitted after the folds, from their predictions
    "cv.seeds",  # a multi-seed run's single-seed runs record [] (and their seed in training.seed)
    "training.seeds",
}


def _digest(path: Path) -> str:
    """The file's SHA-256; empty when it cannot be read (reading the table says why, in one line)."""
    try:
        return sha256_of(path)
    except OSError:
        return ""


def fingerprint(recipe: Recipe, cv: bool = False) -> dict[str, Any]:
    """The recipe's result-changing settings as `section.key` values, and the SHA-256 of every data file read.

    `cv` leaves out the validation settings: cross-validation validates on the training table's own folds.
    """
    settings = {
        f"{section}.{key}": value
        for section, values in recipe.to_dict().items()
        if section not in _IGNORED
        for key, value in values.items()
        if f"{section}.{key}" not in _IGNORED_KEYS
    }
    data = {"data.train": _digest(Path(recipe.data.train))}
    if cv:
        settings = {
            k: v for k, v in settings.items() if k not in ("data.valid", "data.valid_fraction", "data.split_seed")
        }
    elif recipe.data.valid is not None:
        data["data.valid"] = _digest(Path(recipe.data.valid))
    return {"settings": settings, "data_sha256": data}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints: the data files whose contents changed, then the settings."""
    old_data = old.get("data_sha256", {})
    if isinstance(old_data, str):  # cv runs before this module hashed data.train alone
        old_data = {"data.train": old_data}
    data = [f"the contents of {name}" for name in new["data_sha256"] if old_data.get(name) != new["data_sha256"][name]]
    old_settings, new_settings = old.get("settings", {}), new["settings"]
    settings = sorted(
        key
        for key in {*old_settings, *new_settings}
        if old_settings.get(key) != new_settings.get(key) and key not in _IGNORED_KEYS
    )
    return data + settings
