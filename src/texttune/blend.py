"""`blend(runs, output)`: cv runs that share a fold plan, mixed with weights fitted on their out-of-fold predictions.

The weights are non-negative and sum to 1: per target for scores (constrained least squares), one set for classes
(log-loss of the mixed probabilities). Because every run predicted each row from a model that did not see it, the
blend's OOF metric is honest up to the few weights it fits; its own post-processing is then fitted on the blended
OOF predictions as a cv run's is (cross-fitted selection, `postprocess.fit_on_oof`). The output directory holds
`texttune-blend.json`, with the runs' paths relative to it, and is a predictor: `Predictor.load(BLEND)`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from texttune._io import atomic_file
from texttune.bundle import BLEND_FILE, ENSEMBLE_FILE
from texttune.data import read_table
from texttune.errors import TexttuneError
from texttune.metrics import task_metrics
from texttune.postprocess import PostProcessing, Softmax, fit_on_oof
from texttune.predictor import Predictor
from texttune.report import save_report, write_blend_report
from texttune.task import TaskSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlendResult:
    """Where the blend went, its weights (runs x targets, or runs) and the OOF metrics of each run and of the blend:
    with the weights fitted on all rows (`blend`, slightly optimistic), and cross-fitted (`cross_fitted`: each fold's
    rows mixed by weights fitted on the other folds)."""

    output: Path
    weights: np.ndarray
    runs: dict[str, dict[str, float]]
    blend: dict[str, float]
    cross_fitted: dict[str, float]
    postprocess: list[dict[str, Any]]


def _simplex_minimum(loss: Any, count: int) -> np.ndarray:
    """The non-negative weights summing to 1 that minimise `loss(weights)`, from equal weights."""
    from scipy.optimize import minimize

    found = minimize(
        loss, np.full(count, 1 / count), method="SLSQP", bounds=[(0.0, 1.0)] * count,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},),
    )  # fmt: skip
    weights = np.clip(found.x, 0, None)
    return weights / weights.sum()


def fit_weights(predictions: np.ndarray, targets: np.ndarray, regression: bool) -> np.ndarray:
    """Blend weights from out-of-fold `predictions` (runs, N, T or C): (runs, T) least-squares weights per target
    for scores, (runs,) log-loss weights for class probabilities."""
    runs = predictions.shape[0]
    if regression:

        def squared_error(weights: np.ndarray, target: int) -> float:
            return float(np.mean((weights @ predictions[:, :, target] - targets[:, target]) ** 2))

        columns = [_simplex_minimum(lambda w, t=t: squared_error(w, t), runs) for t in range(predictions.shape[2])]
        return np.stack(columns, axis=1)
    chosen = predictions[:, np.arange(predictions.shape[1]), targets]  # (runs, N): each run's p(true class)
    return _simplex_minimum(lambda w: -np.mean(np.log(np.clip(w @ chosen, 1e-12, None))), runs)


def _mixed(predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(runs, N, K) predictions mixed by (runs, K) or (runs,) weights -> (N, K)."""
    if weights.ndim == 1:
        return np.tensordot(weights, predictions, axes=1)
    return np.einsum("rk,rnk->nk", weights, predictions)


def _read_run(run: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    if not (run / ENSEMBLE_FILE).is_file() or not (run / "oof.csv").is_file():
        raise TexttuneError(f"{run}: not a finished cv run (no {ENSEMBLE_FILE} or oof.csv); run texttune cv first")
    try:
        report = json.loads((run / "cv_report.json").read_text())
        return read_table(run / "oof.csv"), read_table(run / "folds.csv"), report
    except (OSError, ValueError) as exc:
        raise TexttuneError(f"{run}: an unreadable cv run ({exc}); run texttune cv again to finish it") from None


def blend(runs: Sequence[str | Path], output: str | Path, inside: bool = False) -> BlendResult:
    """Fit blend weights over cv `runs` and write the blend predictor to `output` (`inside`: the runs are folders
    of `output`, a multi-seed cv run, which checked the folder).

    Raises:
        TexttuneError: fewer than two runs, a run that is not a finished cv run, runs of different fold plans or
            outputs, or an `output` that is a file or a folder of something else.
    """
    paths, output = [Path(run) for run in runs], Path(output)
    if len(paths) < 2:
        raise TexttuneError("a blend needs two cv runs at least")
    if len({path.resolve() for path in paths}) < len(paths):
        raise TexttuneError("a run is named twice; a blend mixes different runs")
    if output.exists() and not (output / BLEND_FILE).is_file() and not inside:
        raise TexttuneError(f"--output {output} exists and is not a texttune blend; choose another folder")
    tables = [_read_run(path) for path in paths]
    first_oof, first_folds, report = tables[0]
    kind = report["task"]
    regression = kind == "regression"
    columns = [c for c in first_oof.columns if c.startswith("pred_" if regression else "prob_")]
    truth = ["row", *(c.removeprefix("pred_") for c in first_oof.columns if c.startswith("pred_"))]
    for path, (oof, folds, other) in zip(paths[1:], tables[1:]):
        mine = [c for c in oof.columns if c.startswith("pred_" if regression else "prob_")]
        if other["task"] != kind or mine != columns:
            raise TexttuneError(f"{path} predicts other outputs than {paths[0]}; a blend needs runs of one task")
        if not set(truth) <= set(oof.columns) or not oof[truth].equals(first_oof[truth]):
            raise TexttuneError(
                f"{path} and {paths[0]} were not run on the same rows and targets; a blend needs runs of one table"
            )
        if not folds[["row", "fold"]].equals(first_folds[["row", "fold"]]):
            raise TexttuneError(
                f"{path} and {paths[0]} have different fold plans (folds.csv): their out-of-fold predictions are not "
                "comparable; blend runs of the same data, cv settings and training.seed"
            )
    predictions = np.stack([oof[columns].to_numpy(dtype=float) for oof, _, _ in tables])  # (runs, N, K)
    if regression:
        names = [c.removeprefix("pred_") for c in columns]
        targets = first_oof[names].to_numpy(dtype=float)
        spec = TaskSpec("regression", tuple(names))
    else:
        label = next(c for c in first_oof.columns if f"pred_{c}" in first_oof.columns)
        labels = [c.removeprefix("prob_") for c in columns]
        lookup = {name: index for index, name in enumerate(labels)}
        targets = first_oof[label].map(lookup).to_numpy(dtype=int)
        spec = TaskSpec("classification", (label,), labels=tuple(labels))
    weights = fit_weights(predictions, targets, regression)
    mixed = _mixed(predictions, weights)
    folds = first_oof["fold"].to_numpy(dtype=int)
    crossed = np.empty_like(mixed)  # each fold's rows mixed by weights fitted on the other folds: the honest score
    for fold in np.unique(folds):
        held_out = folds == fold
        fold_weights = fit_weights(predictions[:, ~held_out], targets[~held_out], regression)
        crossed[held_out] = _mixed(predictions[:, held_out], fold_weights)

    def score(predictions: np.ndarray) -> dict[str, float]:  # scores, or class probabilities
        return task_metrics(predictions, targets, spec, PostProcessing())

    # Scores only: a temperature fitted on mixed single-fold probabilities would be applied to mixed fold
    # ensembles, which averaging has already softened (each run's own temperature is fitted per fold model).
    steps: list[dict[str, Any]] = []
    evidence: dict[str, Any] = {}
    if regression:
        fitted = fit_on_oof(mixed, targets, folds, spec, PostProcessing())
        steps = PostProcessing(fitted.steps).to_list()
        evidence = {"before": fitted.before, "after": fitted.cross_fitted, "kept": fitted.kept}
    per_run = {str(path): score(p) for path, p in zip(paths, predictions)}
    manifest = {
        "format_version": 1,
        "runs": [os.path.relpath(path.resolve(), output.resolve()) for path in paths],
        "weights": weights.tolist(),
        "postprocess": steps,
        "oof": score(mixed),
        "oof_cross_fitted": score(crossed),
        "oof_runs": per_run,
        "cross_fitted": evidence,
        **(
            {}
            if regression
            else {"class_counts": dict(zip(labels, np.bincount(targets, minlength=len(labels)).tolist()))}
        ),
    }
    if output.is_file():
        raise TexttuneError(f"--output {output} is a file; give the blend's folder")
    with atomic_file(output / BLEND_FILE) as staging:  # the folder may hold the runs themselves (cv.seeds)
        staging.write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("blend written to %s", output)
    if regression:
        shown = PostProcessing.from_list(steps).apply(mixed)
        truth = first_oof[["row", *spec.target_columns]]
    else:
        shown, truth = mixed, first_oof[["row"]]
    save_report(
        output, lambda: write_blend_report(output, manifest, spec, truth, shown, None if regression else targets)
    )
    return BlendResult(output, weights, per_run, manifest["oof"], manifest["oof_cross_fitted"], steps)


def registered_versions(runs: Sequence[str | Path]) -> tuple[str, str, list[str]]:
    """The store, model name and ensemble versions that tracking registered for cv `runs` (their
    `registered.json`), checked before a blend of them is registered.

    Raises:
        TexttuneError: a run not registered, or runs registered in different stores or under different names.
    """
    from texttune.cv import REGISTERED_FILE

    records = []
    for run in map(Path, runs):
        try:
            record = json.loads((run / REGISTERED_FILE).read_text())
            records.append((str(record["tracking_uri"]), str(record["model_version"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TexttuneError(
                f"{run}: no registered version ({REGISTERED_FILE}: {exc.__class__.__name__}); run its cv with "
                "tracking.backend mlflow, or blend without --register"
            ) from None
    stores = {store for store, _ in records}
    names = {version.removeprefix("models:/").rsplit("/", 1)[0] for _, version in records}
    if len(stores) > 1 or len(names) > 1:
        raise TexttuneError(
            f"the runs are registered in different stores or under different names ({sorted(stores)}, "
            f"{sorted(names)}); a registered blend names versions of one model in one store"
        )
    return stores.pop(), names.pop(), [version for _, version in records]


def register_blend(output: str | Path, tracking_uri: str | None = None) -> str | None:
    """Register the blend in `output` as a model version (role `blend`) pointing at its runs' ensemble versions, in
    the store they were registered in (or `tracking_uri`, e.g. with the password their record leaves out). Returns
    its reference, or None where the store could not record it (a warning says why).

    Raises:
        TexttuneError: see `registered_versions`.
    """
    from texttune.bundle import load_bundle
    from texttune.config import load_recipe
    from texttune.tracking import record_blend, start_run

    output = Path(output)
    manifest = json.loads((output / BLEND_FILE).read_text())
    runs = [output / run for run in manifest["runs"]]
    store, name, versions = registered_versions(runs)
    first = load_recipe(runs[0] / "fold-0" / "recipe.yaml")
    tracking = {"backend": "mlflow", "uri": tracking_uri or store, "name": name, "log_models": True}
    recipe = first.model_copy(
        update={
            "tracking": first.tracking.model_copy(update=tracking),
            "output": first.output.model_copy(update={"dir": output}),
        }
    )
    spec = load_bundle(runs[0] / "fold-0", model=False).info.task
    sources = {f"run-{index}": version for index, version in enumerate(versions)}
    with start_run(recipe, "blend") as tracked:
        return record_blend(tracked, output, manifest["oof"], manifest["oof_cross_fitted"], spec, sources)


class BlendPredictor(Predictor):
    """The runs of a blend predicting together: each run's predictions (scores, or class probabilities) mixed by the
    blend's weights, then the blend's own post-processing. The same API as `Predictor` (predict, predict_text,
    predict_table, predict_file)."""

    def __init__(self, members: Sequence[Predictor], weights: np.ndarray, postprocess: PostProcessing) -> None:
        first = members[0]
        for member in members[1:]:
            if (
                member.task != first.task
                or member.pipeline.text_columns != first.pipeline.text_columns
                or (len(first.pipeline.text_columns) > 1 and member.pipeline.joiner != first.pipeline.joiner)
            ):
                raise TexttuneError("the runs of a blend must predict the same outputs from the same text columns")
        # a Predictor without runners of its own: its members run, and its methods above the outputs are shared
        self.runners, self.weights, self.temperature = [], np.ones(0), 1.0
        self.pipeline, self.info = first.pipeline, replace(first.info, postprocess=postprocess)
        self.batch_size, self.max_tokens, self.progress = first.batch_size, first.max_tokens, first.progress
        self.engine, self.about = first.engine, {}
        self.members, self.blend_weights = list(members), np.asarray(weights)

    def card(self) -> dict[str, Any]:
        return {**super().card(), "members": sum(len(m.runners) for m in self.members), "runs": len(self.members)}

    def encode(self, texts: Sequence[str]) -> list[tuple[Any, ...]]:
        """Each text tokenized by every run (their tokenizers may differ): one tuple per text."""
        return list(zip(*(member.encode(texts) for member in self.members)))

    def tokens(self, encoded: tuple[Any, ...]) -> int:
        return sum(member.tokens(part) for member, part in zip(self.members, encoded))

    def outputs_of(self, features: Sequence[tuple[Any, ...]]) -> np.ndarray:
        """The runs' predictions (each post-processed its own way) mixed: scores, or log class probabilities."""
        predictions = []
        for index, member in enumerate(self.members):
            outputs = member.outputs_of([encoded[index] for encoded in features])
            predictions.append(member.info.postprocess.apply(outputs))  # (N, K)
        mixed = _mixed(np.stack(predictions), self.blend_weights)
        return mixed if self.task.is_regression else np.log(np.clip(mixed, 1e-12, None))


def load_blend(path: str | Path, raw: bool = False, **kwargs: Any) -> BlendPredictor:
    """A blend directory as a predictor; `raw` leaves out the blend's fitted post-processing (and its runs')."""
    path = Path(path)
    try:
        manifest = json.loads((path / BLEND_FILE).read_text())
        runs, weights = [path / run for run in manifest["runs"]], np.asarray(manifest["weights"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TexttuneError(f"{path / BLEND_FILE}: unreadable blend manifest ({exc})") from None
    members = [Predictor.load(run, raw=True, **kwargs) for run in runs]
    base = PostProcessing() if members[0].task.is_regression else PostProcessing((Softmax(),))
    fitted = PostProcessing.from_list(manifest.get("postprocess") or []).steps
    predictor = BlendPredictor(members, weights, base if raw else base.with_fitted(fitted))
    predictor.about = {"source": str(path), "score": {"kind": "blend (out of fold)", **manifest.get("oof", {})}}
    return predictor
