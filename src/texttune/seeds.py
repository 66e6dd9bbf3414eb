"""`train_seeds(recipe)`: one model per `training.seeds` entry, predicting as their average, as a cv run's folds do.

Every seed trains on the same rows and validates on the same held-out rows (split by `data.split_seed`, default
`training.seed`, or data.valid), so the seeds differ only in what a seed decides: the head's initial weights,
dropout and the batch order. Each is a bundle in `output.dir/seed-<s>/`, kept where a killed run had finished it,
and `output.dir` gets an ensemble manifest, so `Predictor.load(output.dir)` averages them. Its validation metrics
are those of the averaged predictions on the shared validation rows, next to each seed's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from texttune._io import atomic_file, is_staging
from texttune.bundle import BUNDLE_FILE, ENSEMBLE_FILE, VALID_PREDICTIONS, Bundle, load_bundle
from texttune.config import Recipe
from texttune.data import read_table
from texttune.distributed import processes
from texttune.errors import TexttuneError
from texttune.fingerprint import fingerprint
from texttune.metrics import task_metrics
from texttune.postprocess import PostProcessing, softmax
from texttune.task import encode_targets
from texttune.tracking import recipe_params, record_bundle, record_seeds, start_run
from texttune.training import TrainResult, train

logger = logging.getLogger(__name__)


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """One seed's recipe: its training seed, writing to `output.dir/seed-<s>`."""
    return recipe.model_copy(
        update={
            "training": recipe.training.model_copy(update={"seed": seed, "seeds": []}),
            "output": recipe.output.model_copy(update={"dir": Path(recipe.output.dir) / f"seed-{seed}"}),
        }
    )


def train_seeds(recipe: Recipe, restart: bool = False) -> TrainResult:
    """Train every seed of `training.seeds` into `output.dir/seed-<s>/` and write the ensemble manifest.

    Raises:
        TexttuneError: an `output.dir` holding something other than a seeds run, or bad data or configuration.
    """
    started, output, seeds = time.perf_counter(), Path(recipe.output.dir), recipe.training.seeds
    if processes().distributed:
        raise TexttuneError("training.seeds trains its seeds one after another in one process; run without torchrun")
    if output.exists() and (
        not output.is_dir()
        or any(not (e.match("seed-*") or e.name == ENSEMBLE_FILE or is_staging(e)) for e in output.iterdir())
    ):
        raise TexttuneError(f"output.dir {output} holds more than a training.seeds run; choose another output.dir")
    split_seed = recipe.training.seed if recipe.data.split_seed is None else recipe.data.split_seed
    members, sources, per_seed, baseline = [], {}, {}, {}
    with start_run(recipe, "train") as tracked:
        tracked.log_params(recipe_params(recipe))
        for seed in seeds:
            single = seed_recipe(recipe, seed)  # every seed validates on the rows of one split
            single = single.model_copy(update={"data": single.data.model_copy(update={"split_seed": split_seed})})
            member = Path(single.output.dir)
            with tracked.child(member.name, "seed", {"texttune.seed": str(seed)}) as run:
                if _complete(member, single) and not restart:
                    logger.info("seed %d: complete already, kept", seed)
                    metrics = json.loads((member / "metrics.json").read_text())
                    per_seed[seed], baseline = metrics["valid"], metrics["baseline"]
                    run.log_params(recipe_params(single))
                    version = record_bundle(run, member, load_bundle(member, model=False).info.task, replay=True)
                else:
                    logger.info("seed %d (%d of %d)", seed, len(members) + 1, len(seeds))
                    result = train(single, run=run, restart=restart)
                    per_seed[seed], baseline, version = result.metrics, result.baseline, result.model_version
            members.append(member.name)
            sources[member.name] = version
        bundles = [load_bundle(output / member, model=False) for member in members]
        valid = _averaged_metrics(output, bundles)
        with atomic_file(output / ENSEMBLE_FILE) as staging:
            manifest = {"format_version": 1, "members": members, "weights": None, "valid": valid, "seeds": per_seed}
            staging.write_text(json.dumps(manifest, indent=2) + "\n")
        version = record_seeds(tracked, output, valid, bundles[0].info.task, sources)
    if valid:
        metric = next(iter(valid))
        logger.info(
            "%d seeds averaged: validation %s %.4f (seeds %s)",
            len(seeds), metric, valid[metric], ", ".join(f"{m[metric]:.4f}" for m in per_seed.values()),
        )  # fmt: skip
    return TrainResult(output, valid, baseline, time.perf_counter() - started, version)


def _complete(member: Path, recipe: Recipe) -> bool:
    """A bundle of this very recipe and data (a killed seeds run is resumed seed by seed)."""
    if not (member / BUNDLE_FILE).is_file() or not (member / "recipe.yaml").is_file():
        return False
    from texttune.config import load_recipe

    return fingerprint(load_recipe(member / "recipe.yaml")) == fingerprint(recipe)


def _averaged_metrics(output: Path, bundles: list[Bundle]) -> dict[str, float]:
    """The validation metrics of the seeds' averaged predictions (scores, or class probabilities), from the raw
    outputs each seed's bundle saved for the shared validation rows; empty for full-data seeds."""
    if not all((bundle.path / VALID_PREDICTIONS).is_file() for bundle in bundles):
        return {}
    spec, postprocess = bundles[0].info.task, PostProcessing.ensemble([b.info.postprocess for b in bundles])
    tables = [read_table(bundle.path / VALID_PREDICTIONS) for bundle in bundles]
    if any(not table["row"].equals(tables[0]["row"]) for table in tables):
        raise TexttuneError(f"{output}: the seeds validated on different rows; run them again with --restart")
    names = spec.target_columns if spec.is_regression else spec.labels
    outputs = np.stack([table[[f"raw_{name}" for name in names]].to_numpy(dtype=float) for table in tables])
    if spec.is_regression:
        targets = tables[0][list(spec.target_columns)].to_numpy(dtype=float)
        return task_metrics(outputs.mean(axis=0), targets, spec, postprocess)
    return task_metrics(softmax(outputs).mean(axis=0), encode_targets(tables[0], spec), spec, PostProcessing())
