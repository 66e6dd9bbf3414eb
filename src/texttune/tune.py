"""`tune(recipe, trials)`: a hyperparameter search over the recipe's `tune.space` on Optuna, resumable after a kill.

Each trial is the recipe with the sampled values set, trained on the recipe's own split (the validation metric of
its kept evaluation is the objective) or, with `cv`, cross-validated (the OOF metric). Every evaluation, or with
`cv` every fold, is reported to Optuna, whose pruner stops trials that trail the others at the same point.

The study lives in an Optuna RDB storage (SQLite beside the tracking store unless `tune.storage` names one) under
the recipe's name. A killed study resumes: a trial left running by a dead process of this machine is marked failed
and its values are tried again first (a heartbeat does the same for other machines' trials), and only the trials
still missing run. Each trial is a tracked run nested in the study's. The best trial's recipe is written as
`best.yaml` in `output.dir` (resolved, its score in a comment), with Optuna's history and parameter-importance plots,
which also go into the tracking run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from transformers import TrainerCallback

from texttune._io import atomic_file, process_alive, scratch_directory
from texttune.checkpoints import crash_at
from texttune.config import Recipe, SearchRange, TuneConfig, build_recipe, check_recipe_key
from texttune.errors import TexttuneError
from texttune.fingerprint import changes, fingerprint
from texttune.metrics import best_metric
from texttune.task import read_examples
from texttune.tracking import TrackedRun, recipe_params, start_run

logger = logging.getLogger(__name__)

TUNE_FILE = "tune.json"  # marks a tune directory: the study and storage it belongs to
BEST_RECIPE = "best.yaml"
TRIALS_FILE = "trials.csv"
_WORKER = "texttune.worker"  # a trial's host and process, so a resumed study knows which running trials are dead
_DONE = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class TuneResult:
    """The tune directory, the study, and its trials (best first): number, state, value and the sampled values."""

    directory: Path
    study: str
    storage: str
    metric: str
    best_value: float
    best_params: dict[str, Any]
    best_recipe: Path
    trials: list[dict[str, Any]]


def storage_url(recipe: Recipe) -> str:
    """`tune.storage`, else `optuna.db` beside the embedded SQLite tracking store (or in texttune-runs/)."""
    if recipe.tune.storage:
        return recipe.tune.storage
    from texttune.tracking._mlflow import sqlite_path, tracking_uri

    database = sqlite_path(tracking_uri(recipe.tracking.uri))
    folder = database.parent if database is not None else Path("texttune-runs")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def trial_recipe(recipe: Recipe, values: Mapping[str, Any], output: Path) -> Recipe:
    """The recipe with `values` (section.key -> value) set, writing to `output`, validated as any recipe is."""
    raw = recipe.to_dict()
    for key, value in values.items():
        section, name = key.split(".")
        raw[section][name] = value
    raw["output"]["dir"] = str(output)
    return build_recipe(raw, source=f"tune.space values {dict(values)}")


def _split_seed(recipe: Recipe) -> int:
    """The seed of the validation split every trial (and best.yaml) uses: the recipe's, whatever seed is searched."""
    return recipe.training.seed if recipe.data.split_seed is None else recipe.data.split_seed


def _check_space(recipe: Recipe) -> None:
    if not recipe.tune.space:
        raise TexttuneError(
            "tune.space is empty: name the recipe keys to search, e.g. "
            "tune: {space: {training.learning_rate: {low: 1.0e-5, high: 3.0e-4, log: true}}}"
        )
    for key in recipe.tune.space:
        check_recipe_key(key, "tune.space")
    if recipe.training.stages and "training.epochs" in recipe.tune.space:
        raise TexttuneError("tune.space: training.epochs is unused where training.stages are set; search a stage's")
    if recipe.seeds:
        raise TexttuneError("tune searches one seed's recipe: leave cv.seeds and training.seeds out (--set ...=[])")
    if any(key.startswith("data.valid") or key == "data.split_seed" for key in recipe.tune.space):
        raise TexttuneError("tune.space: the validation rows are what trials are compared on; do not search them")


def _suggest_value(trial: Any, key: str, dimension: SearchRange | list[Any]) -> Any:
    if isinstance(dimension, list):
        return trial.suggest_categorical(key, dimension)
    if dimension.integers:
        return trial.suggest_int(key, dimension.low, dimension.high, step=dimension.step or 1, log=dimension.log)
    return trial.suggest_float(key, dimension.low, dimension.high, step=dimension.step, log=dimension.log)


class _Reporter(TrainerCallback):
    """Each evaluation's metric to the trial (the evaluation's index across stages is the step), and `TrialPruned`
    out of the Trainer when the pruner says so, but only in the last stage: earlier stages of gradual unfreezing
    (the head alone, at a rate of their own) score alike whatever the searched values will do later."""

    def __init__(self, trial: Any, metric: str, stages: int) -> None:
        self.trial, self.metric, self.stages = trial, metric, stages
        self.evaluations, self.stage = 0, -1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stage += 1  # one Trainer per stage

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        import optuna

        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None or not np.isfinite(value):
            return
        self.trial.report(float(value), self.evaluations)
        self.evaluations += 1
        if self.stage == self.stages - 1 and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at evaluation {self.evaluations}")


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _recover(study: Any, storage: Any) -> None:
    """Trials that a killed process of this machine left running: failed, and their values enqueued again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(_WORKER) or {}
        if worker.get("host") == socket.gethostname() and not process_alive(int(worker.get("pid", 0))):
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params)
            logger.info(
                "trial %d was killed (process %s): failed, its values tried again", trial.number, worker["pid"]
            )


def _sampler_and_pruner(recipe: Recipe, trials_so_far: int) -> tuple[Any, Any]:
    """The study's sampler and pruner; the sampler's seed moves on with the trials a resumed study holds, so that
    it does not draw the first trials' values again."""
    import optuna

    settings, seed = recipe.tune, recipe.training.seed + trials_so_far
    if settings.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(n_startup_trials=settings.startup_trials, seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }
    return sampler, pruners[settings.pruner]()


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # texttune logs each trial's outcome itself
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _check_directory(directory: Path, study: str, storage: str) -> None:
    """Refuse an `output.dir` that is not this study's tune directory."""
    marker = directory / TUNE_FILE
    if marker.is_file():
        try:
            known = dict(json.loads(marker.read_text()))
        except (ValueError, TypeError) as exc:
            raise TexttuneError(f"{marker}: unreadable ({exc}); choose another output.dir") from None
        if (known.get("study"), known.get("storage")) != (study, storage):
            raise TexttuneError(
                f"output.dir {directory} belongs to the study {known.get('study')!r} in {known.get('storage')}; "
                "choose another output.dir or tune.study"
            )
    elif directory.exists() and any(directory.iterdir()):
        raise TexttuneError(f"output.dir {directory} exists and is not a texttune tune directory; choose another")


def tune(recipe: Recipe, trials: int, timeout: float | None = None, cv: bool = False) -> TuneResult:
    """Run (or resume) the study of `recipe`: as many trials as it lacks of `trials` finished (complete or pruned)
    ones, failed trials included in that count, or fewer where `timeout` seconds pass first; then write
    `best.yaml`, `trials.csv` and the plots into `output.dir`.

    Raises:
        TexttuneError: an empty or unknown search space, a study of another recipe under the same name, or a
            `output.dir` of something else, before any training.
    """
    import optuna

    _check_space(recipe)
    if trials < 1:
        raise TexttuneError(f"--trials {trials}: give a positive number of trials")
    directory, name, url = Path(recipe.output.dir), recipe.tune.study or recipe.tracking.name, storage_url(recipe)
    name = name or directory.name
    _check_directory(directory, name, url)
    if recipe.data.full and not cv:
        raise TexttuneError("data.valid_fraction 0 leaves no validation rows to compare trials on; give it or --cv")
    spec = read_examples(recipe.data.train, recipe.data, recipe.task).task
    metric, greater_is_better = best_metric(spec)
    settings = fingerprint(recipe, cv=cv)
    settings["settings"] = {  # the searched keys' own values, and for a split the cv settings, change no trial
        k: v for k, v in settings["settings"].items() if k not in recipe.tune.space and (cv or not k.startswith("cv."))
    }
    key = {**settings, "objective": f"cv of {recipe.tune.folds or recipe.cv.folds} folds" if cv else "split"}
    key["space"] = recipe.to_dict()["tune"]["space"]
    with _no_experimental_warnings():  # a heartbeat fails other machines' dead trials, and the callback retries them
        storage = optuna.storages.RDBStorage(
            url, heartbeat_interval=60, grace_period=180,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(),
        )  # fmt: skip
    with _quiet_optuna():
        study = optuna.create_study(
            storage=storage, study_name=name, load_if_exists=True,
            direction="maximize" if greater_is_better else "minimize",
        )  # fmt: skip
    study.sampler, study.pruner = _sampler_and_pruner(recipe, len(study.trials))
    key = json.loads(json.dumps(key, default=str))
    made_by = study.user_attrs.get("texttune.recipe")
    if made_by is None:
        study.set_user_attr("texttune.recipe", key)
    elif changes(made_by, key) or (made_by.get("objective"), made_by.get("space")) != (key["objective"], key["space"]):
        raise TexttuneError(
            f"the study {name!r} in {url} was made by another recipe, search space or objective; choose another "
            "tune.study (or delete that study to start over)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / TUNE_FILE) as staging:
        staging.write_text(json.dumps({"study": name, "storage": url}, indent=2) + "\n")
    _recover(study, storage)
    done = len([t for t in study.trials if t.state.name in _DONE])
    missing = max(0, trials - done)
    logger.info("study %r in %s: %d of %d trials finished, %d to run", name, url, done, trials, missing)
    quiet = recipe.model_copy(update={"tracking": recipe.tracking.model_copy(update={"log_models": False})})
    with start_run(quiet, "tune") as tracked:  # trials register no model versions: best.yaml is the outcome
        tracked.log_params(recipe_params(recipe, spec))
        objective = _Objective(recipe, tracked, metric, cv)
        if missing:
            with _quiet_optuna():
                study.optimize(objective, n_trials=missing, timeout=timeout, catch=(TexttuneError,))
        return _finish(recipe, study, tracked, directory, name, url, metric, cv)


class _Objective:
    """One trial: the sampled recipe trained (or cross-validated) in a scratch folder, as a nested tracked run."""

    def __init__(self, recipe: Recipe, study_run: TrackedRun, metric: str, cv: bool) -> None:
        self.recipe, self.study_run, self.metric, self.cv = recipe, study_run, metric, cv

    def __call__(self, trial: Any) -> float:
        import optuna

        from texttune.training import train

        trial.set_user_attr(_WORKER, _worker())
        values = {key: _suggest_value(trial, key, dim) for key, dim in self.recipe.tune.space.items()}
        crash_at("trial", trial.number)
        pruned = None
        with scratch_directory("tune") as scratch:
            fixed = {  # one split for every trial; a killed trial is tried again from the start, so no checkpoints
                "data.split_seed": _split_seed(self.recipe),
                "training.checkpoints": False,
            }
            recipe = trial_recipe(self.recipe, {**values, **fixed}, Path(scratch) / "model")
            with self.study_run.child(f"trial-{trial.number}", "trial", {"texttune.trial": str(trial.number)}) as run:
                try:
                    if self.cv:
                        value = self._cross_validate(recipe, trial, run)
                    else:
                        reporter = _Reporter(trial, self.metric, len(recipe.training.stage_plan()))
                        value = train(recipe, run=run, callbacks=[reporter]).metrics[self.metric]
                except optuna.TrialPruned as exc:
                    run.log_metrics({"pruned": 1.0})
                    pruned = exc
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        if pruned is not None:
            logger.info("trial %d pruned (%s): %s", trial.number, pruned, shown)
            raise pruned
        logger.info("trial %d: %s %.4f with %s", trial.number, self.metric, value, shown)
        return float(value)

    def _cross_validate(self, recipe: Recipe, trial: Any, run: TrackedRun) -> float:
        """The trial's k-fold OOF metric; the running mean of its folds' scores is reported after each fold."""
        import optuna

        from texttune.cv import collect_cv, train_fold

        folds = recipe.tune.folds or recipe.cv.folds
        recipe = recipe.model_copy(
            update={
                "cv": recipe.cv.model_copy(update={"folds": folds, "seeds": []}),
                "tracking": recipe.tracking.model_copy(update={"backend": "none"}),
            }
        )
        scores = []
        for fold in range(folds):
            bundle = train_fold(recipe, fold)
            scores.append(json.loads((bundle / "metrics.json").read_text())["valid"][self.metric])
            trial.report(float(np.mean(scores)), fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"mean {self.metric} {np.mean(scores):.4f} after fold {fold}")
        report = collect_cv(recipe).report
        run.log_metrics({f"oof_{name}": value for name, value in report["oof"].items()})
        return report["oof"][self.metric]


def _finish(
    recipe: Recipe, study: Any, tracked: TrackedRun, directory: Path, name: str, url: str, metric: str, cv: bool
) -> TuneResult:
    """best.yaml, trials.csv and the plots of a study with at least one complete trial."""
    import pandas as pd

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise TexttuneError(f"the study {name!r} has no complete trial yet (all pruned or failed); run more --trials")
    ranked = sorted(complete, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
    others = [t for t in study.trials if t.state.name != "COMPLETE"]
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params} for t in ranked + others]
    with atomic_file(directory / TRIALS_FILE) as staging:
        pd.DataFrame(rows).to_csv(staging, index=False)
    best = ranked[0]
    values = {**best.params, "data.split_seed": _split_seed(recipe)}  # the trial's split, were training.seed searched
    chosen = trial_recipe(recipe, values, directory / "best").model_copy(update={"tune": TuneConfig()})
    comment = (
        f"# texttune tune: trial {best.number} of the study {name!r} ({url}): {metric} {best.value:.6g} "
        f"{'out of fold' if cv else 'on validation'}\n# values: {json.dumps(best.params)}\n"
    )
    with atomic_file(directory / BEST_RECIPE) as staging:
        staging.write_text(comment + yaml.safe_dump(chosen.to_dict(), sort_keys=False))
    _plots(study, directory)
    tracked.log_metrics({f"best_{metric}": float(best.value), "trials": float(len(study.trials))})
    tracked.log_artifacts(directory)
    return TuneResult(
        directory, name, url, metric, float(best.value), dict(best.params), directory / BEST_RECIPE, rows
    )


def _plots(study: Any, directory: Path) -> None:
    """Optuna's optimization history and parameter importances as PNGs; a plot Optuna cannot draw (too few
    complete trials for importances) is skipped with a warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as drawings

    for file, draw in (("optimization_history.png", drawings.plot_optimization_history),
                       ("param_importances.png", drawings.plot_param_importances)):  # fmt: skip
        try:
            with _quiet_optuna(), _no_experimental_warnings():
                axes = draw(study)
            figure = axes.figure
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            with atomic_file(directory / file) as staging:
                figure.savefig(staging, format="png", dpi=110)
            plt.close(figure)
        except (ValueError, RuntimeError) as exc:
            logger.warning("%s not drawn (%s)", file, exc)


@contextlib.contextmanager
def _no_experimental_warnings() -> Iterator[None]:
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield
