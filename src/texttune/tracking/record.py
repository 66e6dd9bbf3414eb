"""What texttune records, whatever the store: the resolved recipe, a bundle, a cv run, an LR range test.

The local files stay the source of truth; these functions copy what a person compares across runs (parameters,
final metrics, plots, reports) and the models themselves into the run, reading them back from the files written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers

from texttune import __version__
from texttune._io import scratch_directory
from texttune.bundle import BLEND_FILE, ENSEMBLE_FILE
from texttune.config import Recipe
from texttune.history import Entry
from texttune.metrics import best_metric
from texttune.task import TaskSpec
from texttune.tracking.run import TrackedRun

# files of a bundle or a cv run worth seeing next to the run; the weights go in as a model version instead
BUNDLE_FILES = ("training_curves.png", "metrics.json", "recipe.yaml", "texttune.json", "valid_predictions.csv")
CV_FILES = (
    "cv_report.json",
    "report.html",
    "oof.csv",
    "folds.csv",
    "oof_confusion_matrix.png",
    "oof_predicted_vs_true.png",
)


def recipe_params(recipe: Recipe, spec: TaskSpec | None = None) -> dict[str, str]:
    """The recipe as flat `section.key` parameters, with `auto` task choices resolved, and the library versions."""
    params: dict[str, str] = {}
    for section, values in recipe.to_dict().items():
        for key, value in values.items():
            params[f"{section}.{key}"] = value if isinstance(value, str) else json.dumps(value)
    if spec is not None:
        params["task.type"] = spec.kind
    versions = {"texttune": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
    return {**params, **{f"version.{name}": value for name, value in versions.items()}}


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextmanager
def _selection(directory: Path, names: Sequence[str]) -> Iterator[Path]:
    """A temporary folder with copies of those of `names` that exist in `directory`."""
    with scratch_directory("tracking") as staging:
        for name in names:
            if (directory / name).is_file():
                shutil.copyfile(directory / name, Path(staging) / name)
        yield Path(staging)


def log_entry(run: TrackedRun) -> Callable[[Entry], None]:
    """A `History` listener that logs each training log and evaluation into `run` as it happens."""
    return lambda entry: run.log_metrics(entry.tracked(), step=entry.step)


def _replay(run: TrackedRun, report: Mapping[str, Any]) -> None:
    """Log a bundle's training and evaluation history, for a run that did not see its training live; in step order,
    as stores such as W&B drop steps that go back."""
    rows: dict[int, dict[str, float]] = {}
    entries = [Entry.from_dict("train", row) for row in report.get("train_log", [])]
    entries += [Entry.from_dict("eval", row) for row in report.get("history", [])]
    for entry in entries:
        rows.setdefault(entry.step, {}).update(entry.tracked())
    for step in sorted(rows):
        run.log_metrics(rows[step], step=step)


def record_bundle(run: TrackedRun, bundle: str | Path, spec: TaskSpec, replay: bool = False) -> str | None:
    """Record a bundle written by `train`: final metrics (`best_*`, `baseline_*`), its plot and reports, and the
    bundle as a new model version (role `model`, or `fold` in a cv run). Returns the version's reference.

    `replay` also logs the training history from its metrics.json (a fold trained before a cv run resumed).
    """
    return run.attempt(f"the bundle {bundle}", lambda: _record_bundle(run, Path(bundle), spec, replay))


def _record_bundle(run: TrackedRun, bundle: Path, spec: TaskSpec, replay: bool) -> str | None:
    report = json.loads((bundle / "metrics.json").read_text())
    if replay:
        _replay(run, report)
    summary = {**_prefixed("best_", report.get("valid", {})), **_prefixed("baseline_", report.get("baseline", {}))}
    run.log_metrics({**summary, "train_rows": report.get("train_rows"), "seconds": report.get("seconds")})
    with _selection(bundle, BUNDLE_FILES) as files:
        run.log_artifacts(files)
    metric = best_metric(spec)[0]
    score = report.get("valid", {}).get(metric)
    tags = {
        "texttune.role": "fold" if run.kind == "fold" else "model",
        "texttune.metric": metric,
        **({"texttune.score": repr(score)} if score is not None else {}),
        **run.tags,
    }
    return run.log_model(bundle, "bundle", tags)


def record_cv(
    run: TrackedRun,
    directory: str | Path,
    report: Mapping[str, Any],
    spec: TaskSpec,
    sources: Mapping[str, str | None],
) -> str | None:
    """Record a finished cv run: out-of-fold metrics (`oof_*`), the per-fold scores (`fold_<metric>` at step K),
    the report, OOF table and plot, and the ensemble manifest as a model version that points at the folds'
    versions (`sources`: member -> reference). The version becomes `best` when its OOF score beats the best one.
    """
    return run.attempt(f"the cv run {directory}", lambda: _record_cv(run, Path(directory), report, spec, sources))


def _record_cv(
    run: TrackedRun, directory: Path, report: Mapping[str, Any], spec: TaskSpec, sources: Mapping[str, str | None]
) -> str | None:
    metric, greater_is_better = best_metric(spec)
    for fold in report["per_fold"]:
        run.log_metrics({f"fold_{metric}": fold[metric]}, step=fold["fold"])
    run.log_metrics(
        {
            **_prefixed("oof_", report["oof"]),
            f"fold_mean_{metric}": report["fold_mean"],
            f"fold_std_{metric}": report["fold_std"],
        }
    )
    with _selection(directory, CV_FILES) as files:
        run.log_artifacts(files)
    tags = {"texttune.metric": metric, "texttune.folds": str(len(sources))}
    return _register(
        run, directory / ENSEMBLE_FILE, "ensemble", sources, tags, (report["oof"][metric], greater_is_better)
    )


def _register(
    run: TrackedRun,
    manifest_file: Path,
    role: str,
    sources: Mapping[str, str | None],
    tags: Mapping[str, str],
    best: tuple[float, bool] | None,
) -> str | None:
    """A manifest (an ensemble's or a blend's) as a model version that names the versions of its parts (`sources`:
    folder -> reference, in the manifest's order); None where a part is not registered (log_models off, or the
    store failed)."""
    if not all(sources.values()):
        return None
    manifest = json.loads(manifest_file.read_text())
    if role == "blend":  # a fetched blend holds its runs as the folders `sources` names, in the manifest's order
        manifest["runs"] = list(sources)
    with scratch_directory("tracking") as staging:
        (Path(staging) / manifest_file.name).write_text(json.dumps({**manifest, "sources": dict(sources)}, indent=2))
        return run.log_model(staging, role, {"texttune.role": role, **tags}, best=best)


def record_blend(
    run: TrackedRun,
    directory: str | Path,
    oof: Mapping[str, float],
    cross_fitted: Mapping[str, float],
    spec: TaskSpec,
    sources: Mapping[str, str | None],
) -> str | None:
    """Record a blend of cv runs (a multi-seed run): its out-of-fold metrics (`oof_*`, and the honest
    `oof_cross_fitted_*`), its report, and its manifest as a model version pointing at the runs' ensemble versions
    (`sources`: run folder -> reference). The version becomes `best` when its cross-fitted OOF score beats the best
    one: the score with weights fitted on all rows is slightly optimistic, and the runs compete with honest ones."""
    return run.attempt(
        f"the blend {directory}", lambda: _record_blend(run, Path(directory), oof, cross_fitted, spec, sources)
    )


def _record_blend(
    run: TrackedRun,
    directory: Path,
    oof: Mapping[str, float],
    cross_fitted: Mapping[str, float],
    spec: TaskSpec,
    sources: Mapping[str, str | None],
) -> str | None:
    metric, greater_is_better = best_metric(spec)
    run.log_metrics({**_prefixed("oof_", oof), **_prefixed("oof_cross_fitted_", cross_fitted)})
    with _selection(directory, ("seeds_report.json", "report.html", BLEND_FILE)) as files:
        run.log_artifacts(files)
    tags = {"texttune.metric": metric, "texttune.runs": str(len(sources))}
    return _register(run, directory / BLEND_FILE, "blend", sources, tags, (cross_fitted[metric], greater_is_better))


def record_seeds(
    run: TrackedRun,
    directory: str | Path,
    valid: Mapping[str, float],
    spec: TaskSpec,
    sources: Mapping[str, str | None],
) -> str | None:
    """Record the seeds of a `training.seeds` run: their averaged validation metrics (`best_*`) and the ensemble
    manifest as a model version pointing at each seed's version (a trained model's version, never `best`)."""
    return run.attempt(f"the seeds in {directory}", lambda: _record_seeds(run, Path(directory), valid, spec, sources))


def _record_seeds(
    run: TrackedRun, directory: Path, valid: Mapping[str, float], spec: TaskSpec, sources: Mapping[str, str | None]
) -> str | None:
    run.log_metrics(_prefixed("best_", valid))  # as a train run's kept evaluation
    tags = {"texttune.metric": best_metric(spec)[0], "texttune.seeds": str(len(sources))}
    return _register(run, directory / ENSEMBLE_FILE, "ensemble", sources, tags, None)


def record_lr_find(run: TrackedRun, result: Any, plot: str | Path | None) -> None:
    """Record an LR range test: the sweep per step, the suggestions, and its plot with the curve's data."""
    run.attempt("the LR range test", lambda: _record_lr_find(run, result, plot))


def _record_lr_find(run: TrackedRun, result: Any, plot: str | Path | None) -> None:
    for step, (rate, loss, smoothed) in enumerate(zip(result.rates, result.losses, result.smoothed)):
        run.log_metrics({"lr_find_rate": rate, "lr_find_loss": loss, "lr_find_smoothed_loss": smoothed}, step=step)
    run.log_metrics({**_prefixed("suggested_", result.suggestions), "fine_tuning_start": result.fine_tuning})
    if plot is not None:
        plot = Path(plot)
        with _selection(plot.parent, [plot.name, plot.with_suffix(".json").name]) as files:
            run.log_artifacts(files)
