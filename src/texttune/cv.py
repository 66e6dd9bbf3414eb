"""`run_cv(recipe)`: K folds trained by `train` itself, out-of-fold predictions, a CV report, and the run directory
as one ensemble predictor. Composes Trainers and subclasses nothing (as setfit's Trainer wraps an inner one).

A run directory (`output.dir`) holds `cv_run.json` (the recipe and data fingerprint it belongs to), `folds.csv`,
one bundle per fold in `fold-<k>/` (with its validation predictions inside), and at the end `oof.csv`,
`cv_report.json`, a PNG and `texttune-ensemble.json`. Folds are complete once their bundle is, since bundles are
written atomically, so running the same command again resumes where an interrupted run stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from texttune import plots
from texttune._io import atomic_file, claim_holder, exclusive_claim, is_staging, recover_directory
from texttune.bundle import BLEND_FILE, BUNDLE_FILE, ENSEMBLE_FILE, VALID_PREDICTIONS, WEIGHTS_FILE, load_bundle
from texttune.checkpoints import CHECKPOINTS
from texttune.config import Recipe
from texttune.data import read_table
from texttune.distributed import check_shared, from_main, main_first, processes, start
from texttune.errors import TexttuneError
from texttune.fingerprint import changes, fingerprint
from texttune.folds import make_folds
from texttune.metrics import best_metric, classification_metrics, regression_metrics
from texttune.postprocess import PostProcessing, fit_on_oof
from texttune.report import REPORT_FILE, save_report, write_report
from texttune.seeds import seed_recipe
from texttune.task import Examples, TaskSpec, encode_targets, read_examples
from texttune.tracking import TrackedRun, recipe_params, record_blend, record_bundle, record_cv, start_run
from texttune.training import TrainResult, train

logger = logging.getLogger(__name__)

RUN_FILE = "cv_run.json"
SEEDS_FILE = "seeds_report.json"  # a multi-seed run: each seed's OOF metric, their spread and the blend's
EXECUTORS = ("sequential", "ray")
REFIT_DIR = "full"  # `refit`: the full-data model of a cv run, inside it (ours where it holds one: _is_refit); a
# discard keeps it (it may hold more than texttune wrote), and the next refit replaces it
REGISTERED_FILE = "registered.json"  # the ensemble's model version and store, where tracking registered it
_OUTPUTS = (
    "folds.csv", "oof.csv", "cv_report.json", REPORT_FILE, "oof_*.png", ENSEMBLE_FILE, "fold-*", REGISTERED_FILE
)  # fmt: skip


@dataclass(frozen=True)
class CVResult:
    """The run directory, its report (per-fold and out-of-fold metrics) and the ensemble's registered version."""

    run: Path
    report: dict[str, Any]
    seconds: float
    model_version: str | None = None  # e.g. models:/ellipse/6; None without tracking


def _changes(run: Path, fingerprint: dict[str, Any]) -> list[str]:
    """What differs between the run recorded in `run` and this recipe and data; empty when resuming is safe."""
    marker = run / RUN_FILE
    if not marker.is_file():  # only our outputs, but no marker: a discard that was interrupted
        return ["an interrupted discard"]
    return changes(json.loads(marker.read_text()), fingerprint)


def _claim(run: Path, fingerprint: dict[str, Any], force: bool, sweep: bool = True) -> None:
    """Start a run in `run`, or resume the one there if it was made by the same recipe and data.

    Only texttune's own files are ever removed: a folder holding anything else is refused untouched. A run whose
    recipe or data changed is discarded with --force, or without it when none of its folds was complete (a run
    that stopped on bad data costs nothing to start over). `sweep` removes staging that killed writes left; a fold
    job does not, since other jobs may be writing theirs.
    """
    if run.exists() and not run.is_dir():
        raise TexttuneError(f"output.dir {run} is a file; a cv run needs a directory: choose another output.dir")
    entries = list(run.iterdir()) if run.exists() else []
    kept = [entry for entry in entries if not is_staging(entry)]
    foreign = [
        e.name for e in kept if not (any(e.match(pattern) for pattern in (*_OUTPUTS, RUN_FILE)) or _is_refit(e))
    ]
    if foreign:
        raise TexttuneError(
            f"output.dir {run} exists and is not a texttune cv run (it holds {', '.join(sorted(foreign)[:3])}); "
            "choose another output.dir"
        )
    claims = [claim for claim in run.glob("fold-*.claim") if not is_staging(claim)]
    busy = {claim.name.removesuffix(".claim"): claim_holder(claim.with_suffix("")) for claim in claims}
    busy = {fold: holder for fold, holder in busy.items() if holder}  # folds other jobs are training now
    if sweep and not busy:  # staging of writes that were killed (while a job trains, some may be its own)
        recover_directory(run / REFIT_DIR)  # a refit killed between its two renames: finished, not swept away
        entries = list(run.iterdir()) if run.exists() else []
        for leftover in filter(is_staging, entries):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    if any(not entry.name.endswith(".claim") for entry in kept):  # a run is there (claims alone are not one)
        changed = _changes(run, fingerprint)
        if changed and busy:
            fold, holder = next(iter(busy.items()))
            raise TexttuneError(
                f"{run} holds a cv run of another recipe or data, and {fold} is being trained by {holder}; "
                "use another output.dir"
            )
        # a run of ours (it has its marker) that stopped before finishing a fold costs nothing to start over
        cheap = (run / RUN_FILE).is_file() and not any(_is_complete(fold) for fold in run.glob("fold-*"))
        if changed and not cheap and not force:
            raise TexttuneError(
                f"{run} holds a cv run of another recipe or data (changed: {', '.join(changed[:5])}); use another "
                f"output.dir{', or a plain texttune cv RECIPE --force to discard it and start over' if sweep else ''}"
            )
        if changed:
            logger.info("discarding the cv run in %s", run)
            (run / RUN_FILE).unlink(missing_ok=True)  # first: a killed discard must not look resumable
            for pattern in _OUTPUTS:
                for path in run.glob(pattern):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            if (run / REFIT_DIR).exists():
                logger.warning(
                    "%s is kept: the discarded run's refit, until texttune cv --refit replaces it", run / REFIT_DIR
                )
    if not (run / RUN_FILE).is_file():
        with atomic_file(run / RUN_FILE) as staging:
            staging.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _is_refit(entry: Path) -> bool:
    """`full/` as `refit` leaves it: a bundle, or the checkpoints of a refit that was killed."""
    return (
        entry.name == REFIT_DIR
        and entry.is_dir()
        and ((entry / BUNDLE_FILE).is_file() or {p.name for p in entry.iterdir()} <= {CHECKPOINTS})
    )


def fold_claim(fold_dir: Path) -> contextlib.AbstractContextManager:
    """This job's hold on one fold while it trains it: two jobs training the same fold would write over each other."""
    return exclusive_claim(fold_dir, f"fold {fold_dir.name.removeprefix('fold-')} of {fold_dir.parent}")


def _is_complete(fold_dir: Path) -> bool:
    return all((fold_dir / name).is_file() for name in (BUNDLE_FILE, WEIGHTS_FILE, VALID_PREDICTIONS))


def _fold_predictions(run: Path, folds: int, spec: TaskSpec, id_column: str | None) -> pd.DataFrame:
    """Every fold's validation predictions, read back from its bundle: the OOF table, in source row order."""
    frames = []
    for fold in range(folds):
        frame = read_table(run / f"fold-{fold}" / VALID_PREDICTIONS)  # strings: ids and labels such as "007" survive
        frame.insert(1, "fold", fold)
        frames.append(frame)
    oof = pd.concat(frames)
    raw = [c for c in oof.columns if c.startswith("raw_")]
    if oof[raw].isna().any().any():  # folds written before raw outputs were kept (a resumed older run)
        logger.info("some folds have no raw_ columns; the OOF table leaves them out")
        oof = oof.drop(columns=raw)
    numbers = ["row"] + [c for c in oof.columns if c.startswith(("prob_", "raw_"))]
    if spec.is_regression:
        numbers += [*spec.target_columns, *(f"pred_{c}" for c in spec.target_columns)]
    oof[numbers] = oof[numbers].apply(pd.to_numeric)
    return oof.sort_values("row").reset_index(drop=True)


def _metrics(oof: pd.DataFrame, spec: TaskSpec) -> dict[str, float]:
    if spec.is_regression:
        predictions = oof[[f"pred_{c}" for c in spec.target_columns]].to_numpy(dtype=float)
        return regression_metrics(
            predictions, oof[list(spec.target_columns)].to_numpy(dtype=float), spec.target_columns
        )
    probabilities = oof[[f"prob_{label}" for label in spec.labels]].to_numpy(dtype=float)
    return classification_metrics(probabilities, encode_targets(oof, spec))


def cv_report(oof: pd.DataFrame, spec: TaskSpec) -> dict[str, Any]:
    """Per-fold metrics, their mean and spread, the out-of-fold metrics, and for classes the confusion matrix."""
    metric, _ = best_metric(spec)
    per_fold = [{"fold": int(k), "rows": len(part), **_metrics(part, spec)} for k, part in oof.groupby("fold")]
    scores = np.array([fold[metric] for fold in per_fold])
    report: dict[str, Any] = {
        "task": spec.kind,
        "metric": metric,
        "folds": len(per_fold),
        "rows": len(oof),
        "oof": _metrics(oof, spec),
        "fold_mean": float(scores.mean()),
        "fold_std": float(scores.std()),
        "per_fold": per_fold,
    }
    if not spec.is_regression:
        label = spec.target_columns[0]
        matrix = confusion_matrix(oof[label], oof[f"pred_{label}"], labels=list(spec.labels))
        report["confusion_matrix"] = {"labels": list(spec.labels), "counts": matrix.tolist()}
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a table: one row per fold, then the out-of-fold row; for a multi-seed run, a row per seed and
    the blend's."""
    if "seeds" in report:
        seeds, metric = report["seeds"], report["metric"]
        lines = [f"{'seed':>6} {'OOF ' + metric:>14}"]
        lines += [f"{seed:>6} {value:>14.4f}" for seed, value in zip(seeds["seeds"], seeds["oof"])]
        lines.append(f"{'mean':>6} {seeds['mean']:>14.4f} +- {seeds['std']:.4f}")
        lines.append(f"{'blend':>6} {seeds['blend'][metric]:>14.4f}")
        return "\n".join(lines)
    names = [k for k in report["oof"] if k != "error_rate"]
    lines = [f"{'fold':>6} {'rows':>6} " + " ".join(f"{n:>12}" for n in names)]
    for fold in report["per_fold"]:
        lines.append(f"{fold['fold']:>6} {fold['rows']:>6} " + " ".join(f"{fold[n]:>12.4f}" for n in names))
    lines.append(f"{'OOF':>6} {report['rows']:>6} " + " ".join(f"{report['oof'][n]:>12.4f}" for n in names))
    fitted = report.get("postprocess")
    if fitted:
        kept = ", ".join(step["name"] for step in fitted["steps"]) or "nothing kept"
        changes = "; ".join(f"{n} {fitted['before'][n]:.4f} -> {v:.4f}" for n, v in fitted["cross_fitted"].items())
        lines.append(f"post-processing fitted on OOF: {kept} (cross-fitted {changes})")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Plan:
    """The examples and their folds, as saved in the run directory's folds.csv."""

    examples: Examples
    folds: np.ndarray

    def fold_examples(self, fold: int) -> tuple[Examples, Examples]:
        held_out = self.folds == fold
        return self.examples.subset(~held_out), self.examples.subset(held_out)


def _plan(recipe: Recipe, force: bool = False, claim: bool = True, sweep: bool = True) -> _Plan:
    """Read the data and assign folds; `claim` the run directory (or resume the run there) and save the plan.

    Without `claim` the directory must already hold this recipe's run (`--collect`). A saved plan that differs from
    the one computed now (another texttune, another machine's library versions) is refused, not overwritten: the
    folds already trained followed it.
    """
    data, run = recipe.data, Path(recipe.output.dir)
    check_shared(run)  # a torchrun job on several machines: every process reads the folds the main one writes
    examples = read_examples(data.train, data, recipe.task, recipe.cv)
    if data.valid is not None:
        logger.warning("cv validates every row of data.train once; data.valid (%s) is not used", data.valid)
    seed = recipe.training.seed if recipe.cv.seed is None else recipe.cv.seed
    folds = make_folds(examples, recipe.cv, seed)  # bad data stops before the folder is claimed
    assignment = pd.DataFrame({"row": examples.rows, "fold": folds})
    if data.id_column:
        assignment.insert(1, data.id_column, examples.ids)
    with main_first() as main:
        if not main:
            return _Plan(examples, folds)
        if claim:
            _claim(run, fingerprint(recipe, cv=True), force, sweep)
        elif not (run / RUN_FILE).is_file():
            raise TexttuneError(
                f"{run} holds no cv run; train its folds first (texttune cv RECIPE, or texttune cv RECIPE --fold K "
                "for each fold)"
            )
        elif changed := _changes(run, fingerprint(recipe, cv=True)):
            raise TexttuneError(
                f"{run} holds a cv run of another recipe or data (changed: {', '.join(changed[:5])}); collect it with "
                "the recipe and --set options its folds were trained with"
            )
        saved = run / "folds.csv"
        if saved.is_file():
            if not read_table(saved)["fold"].astype(int).tolist() == folds.tolist():
                raise TexttuneError(
                    f"{saved}: the saved fold plan differs from the one this texttune computes for the same recipe "
                    "and data; finish the run with the texttune that started it, or start over in another output.dir"
                )
        else:
            with atomic_file(saved) as staging:
                assignment.to_csv(staging, index=False)
    return _Plan(examples, folds)


def _missing(run: Path, folds: int) -> list[int]:
    return [fold for fold in range(folds) if not _is_complete(run / f"fold-{fold}")]


def _fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    fold_dir = Path(recipe.output.dir) / f"fold-{fold}"
    return recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": fold_dir})})


def run_cv(recipe: Recipe, force: bool = False, executor: str = "sequential") -> CVResult:
    """Train `cv.folds` folds of `data.train` into `output.dir`, resuming a run interrupted there.

    `executor` sequential trains the folds one after the other in this process (each fold's tracking run is live);
    ray runs them as tasks on a local Ray or the cluster in RAY_ADDRESS (`texttune.ray_executor`), then collects.

    Raises:
        TexttuneError: bad data or configuration, or `output.dir` holding a run of another recipe (unless force).

    Example:
        >>> result = run_cv(load_recipe("examples/ellipse.yaml", ["cv.folds=5"]))
        >>> print(format_report(result.report))
    """
    if executor not in EXECUTORS:
        raise TexttuneError(f"executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor != "sequential" and processes().distributed:
        raise TexttuneError(f"--executor {executor} schedules the folds itself: run it without torchrun")
    if recipe.seeds:
        return _run_seeds(recipe, force, executor)
    started = time.perf_counter()
    start()
    plan = _plan(recipe, force)
    if executor == "ray":
        from texttune.ray_executor import train_folds

        train_folds(recipe, _missing(Path(recipe.output.dir), recipe.cv.folds))
    return _record(recipe, plan, started, train_missing=executor == "sequential")


def _run_seeds(recipe: Recipe, force: bool, executor: str) -> CVResult:
    """`cv.seeds` (or `training.seeds`): one cv run per training seed in `seed-<s>/`, every one on the same fold
    plan, then their blend in `output.dir` (which a predictor loads). The report lists each seed's and the blend's
    out-of-fold metrics."""
    from texttune.blend import blend

    started, run = time.perf_counter(), Path(recipe.output.dir)
    if run.exists() and not run.is_dir():
        raise TexttuneError(f"output.dir {run} is a file; a cv run needs a directory: choose another output.dir")
    ours = ("seed-*", BLEND_FILE, SEEDS_FILE, REPORT_FILE)
    if run.exists() and any(not (any(e.match(p) for p in ours) or is_staging(e)) for e in run.iterdir()):
        raise TexttuneError(f"output.dir {run} holds more than a multi-seed cv run; choose another output.dir")
    plan_seed = recipe.training.seed if recipe.cv.seed is None else recipe.cv.seed
    results, version = [], None
    for seed in recipe.seeds:
        logger.info("seed %d (%d of %d)", seed, len(results) + 1, len(recipe.seeds))
        single = seed_recipe(recipe, seed)  # on the first seed's fold plan
        single = single.model_copy(update={"cv": recipe.cv.model_copy(update={"seeds": [], "seed": plan_seed})})
        results.append(run_cv(single, force, executor))
    metric = results[0].report["metric"]
    report = dict(results[0].report)
    if processes().main:
        mixed = blend([result.run for result in results], run, inside=True)
        per_seed = [result.report["oof"][metric] for result in results]
        report["seeds"] = {
            "seeds": list(recipe.seeds),
            "oof": per_seed,
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "blend": mixed.blend,
            "weights": mixed.weights.tolist(),
        }
        report["oof"] = mixed.blend
        with atomic_file(run / SEEDS_FILE) as staging:
            staging.write_text(json.dumps(report["seeds"], indent=2) + "\n")
        spec = load_bundle(results[0].run / "fold-0", model=False).info.task
        with start_run(recipe, "blend") as tracked:
            tracked.log_params(recipe_params(recipe, spec))
            sources = {result.run.name: result.model_version for result in results}
            version = record_blend(tracked, run, mixed.blend, mixed.cross_fitted, spec, sources)
    return CVResult(run, from_main(report), time.perf_counter() - started, from_main(version))


def refit(recipe: Recipe) -> TrainResult:
    """The full-data model of the finished cv run in `output.dir`: every row of data.train, no evaluation, for the
    epochs the folds chose (the mean epoch of their kept evaluations; a staged recipe's stages cut there), written
    as a bundle to `output.dir/full`. Its score is the cv run's: nothing is held out to measure it on.

    Raises:
        TexttuneError: a multi-seed recipe, folds not complete yet, or a run of another recipe or data.
    """
    _single_seed(recipe, "--refit")
    run = Path(recipe.output.dir)
    missing = _missing(run, recipe.cv.folds)
    if missing:
        raise TexttuneError(
            f"{run}: --refit needs every fold complete; fold {missing[0]} is not: run texttune cv first"
        )
    changed = _changes(run, fingerprint(recipe, cv=True))
    if changed:
        raise TexttuneError(f"{run} holds a cv run of another recipe or data (changed: {', '.join(changed[:5])})")
    try:
        chosen = [
            float(json.loads((run / f"fold-{k}" / "metrics.json").read_text())["valid"]["epoch"])
            for k in range(recipe.cv.folds)
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TexttuneError(
            f"{run}: a fold's metrics.json does not say its kept epoch ({exc}); run cv again"
        ) from None
    epochs = round(float(np.mean(chosen)), 3)
    logger.info(
        "refit on every row for %g epochs, the mean of the folds' kept evaluations (%s)",
        epochs, ", ".join(f"{e:g}" for e in chosen),
    )  # fmt: skip
    full = recipe.model_copy(
        update={
            "data": recipe.data.model_copy(update={"valid_fraction": 0.0, "valid": None}),
            "training": recipe.training.cut_at(epochs),
            "output": recipe.output.model_copy(update={"dir": run / REFIT_DIR}),
        }
    )
    return train(full)


def train_fold(recipe: Recipe, fold: int) -> Path:
    """Train one fold of the run in `output.dir` (for a job array: one job per fold, then `collect_cv`), planning
    the run first if no job has yet. Nothing is recorded in the tracking store here: `collect_cv` records every fold,
    so workers on other machines never need to reach it. Returns the fold's bundle.

    Raises:
        TexttuneError: a fold outside 0..K-1, another job training the same fold, or a run of another recipe.
    """
    _single_seed(recipe, "--fold")
    if not 0 <= fold < recipe.cv.folds:
        raise TexttuneError(
            f"--fold {fold}: the recipe has cv.folds {recipe.cv.folds}; choose 0..{recipe.cv.folds - 1}"
        )
    start()
    plan = _plan(recipe, sweep=False)
    fold_recipe = _fold_recipe(recipe, fold)
    with fold_claim(fold_recipe.output.dir) if processes().main else contextlib.nullcontext():
        if from_main(_is_complete(fold_recipe.output.dir)):
            logger.info("fold %d: complete already", fold)
        else:
            quiet = TrackedRun(None, "fold", "", recipe.tracking)
            train(fold_recipe, plan.fold_examples(fold), run=quiet)
    return fold_recipe.output.dir


def collect_cv(recipe: Recipe) -> CVResult:
    """The report, OOF table, plots and ensemble of a run whose folds were trained by separate jobs (`train_fold`),
    and its tracking records: one cv run with every fold nested in it, as a sequential run records.

    Raises:
        TexttuneError: no run of this recipe in `output.dir`, or folds still missing (named, with how to train them).
    """
    _single_seed(recipe, "--collect")
    started = time.perf_counter()
    start()
    return _record(recipe, _plan(recipe, claim=False), started, train_missing=False)


def _single_seed(recipe: Recipe, option: str) -> None:
    if recipe.seeds:
        seed = recipe.seeds[0]
        raise TexttuneError(
            f"{option} works on one seed's run: add --set cv.seeds=[] --set training.seeds=[] "
            f"--set training.seed={seed} "
            f"--set cv.seed={recipe.training.seed if recipe.cv.seed is None else recipe.cv.seed} "
            f"--set output.dir={Path(recipe.output.dir) / f'seed-{seed}'} (and so on for each seed)"
        )


def _record(recipe: Recipe, plan: _Plan, started: float, train_missing: bool) -> CVResult:
    """Train the missing folds (if `train_missing`), record every fold and the run, and write its outputs."""
    run, spec = Path(recipe.output.dir), plan.examples.task
    missing = from_main(_missing(run, recipe.cv.folds))  # the main process's view, in every process
    if missing and not train_missing:
        busy = [f"fold {k} is being trained by {who}" for k in missing if (who := claim_holder(run / f"fold-{k}"))]
        raise TexttuneError(
            f"{run}: fold{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {recipe.cv.folds} "
            f"not complete yet{' (' + '; '.join(busy) + ')' if busy else ''}; train each with "
            "texttune cv RECIPE --fold K, then --collect again"
        )
    if processes().main:  # this collect's registration replaces any earlier one, or there is none
        (run / REGISTERED_FILE).unlink(missing_ok=True)
    with start_run(recipe, "cv") as tracked:
        tracked.log_params(recipe_params(recipe, spec))
        sources: dict[str, str | None] = {}  # fold -> its registered model version
        for fold in range(recipe.cv.folds):
            fold_recipe = _fold_recipe(recipe, fold)
            fold_dir = fold_recipe.output.dir
            with tracked.child(fold_dir.name, "fold", {"texttune.fold": str(fold)}) as fold_run:
                trained = None
                if fold in missing:
                    logger.info("fold %d of %d", fold + 1, recipe.cv.folds)
                    with fold_claim(fold_dir) if processes().main else contextlib.nullcontext():
                        if not from_main(_is_complete(fold_dir)):  # a fold job may have finished it meanwhile
                            trained = train(fold_recipe, plan.fold_examples(fold), run=fold_run)
                if trained is None:
                    logger.info("fold %d: complete, recorded from its bundle", fold)
                    fold_run.log_params(recipe_params(fold_recipe, spec))
                    sources[fold_dir.name] = record_bundle(fold_run, fold_dir, spec, replay=True)
                else:
                    sources[fold_dir.name] = trained.model_version
        report, version = None, None
        if processes().main:  # only it reads the folds' predictions: the others may be on machines without them
            oof = _fold_predictions(run, recipe.cv.folds, spec, recipe.data.id_column)
            report = cv_report(oof, spec)
            fitted = _fit_postprocess(run, recipe, spec, oof) if recipe.cv.postprocess else None
            if fitted is not None:
                report["postprocess"] = fitted
            _finish(run, recipe, plan, oof, report)
            version = record_cv(tracked, run, report, spec, sources)
            if version is not None and recipe.tracking.backend == "mlflow":  # for `texttune blend --register`
                from texttune.tracking._mlflow import absolute_uri, without_password

                with atomic_file(run / REGISTERED_FILE) as staging:
                    store = without_password(absolute_uri(recipe.tracking.uri))
                    staging.write_text(json.dumps({"model_version": version, "tracking_uri": store}) + "\n")
        report = from_main(report)
    return CVResult(run, report, time.perf_counter() - started, version)


def _fit_postprocess(run: Path, recipe: Recipe, spec: TaskSpec, oof: pd.DataFrame) -> dict[str, Any] | None:
    """Post-processing fitted on the out-of-fold head outputs (`postprocess.fit_on_oof`), for the ensemble's
    manifest and the report: the steps kept, and the OOF metric before and cross-fitted after, per target or
    log-loss. None where the OOF table has no raw outputs (folds of an older texttune)."""
    names = spec.target_columns if spec.is_regression else spec.labels
    raw = [f"raw_{name}" for name in names]
    if not set(raw) <= set(oof.columns):
        return None
    targets = oof[list(spec.target_columns)].to_numpy(dtype=float) if spec.is_regression else encode_targets(oof, spec)
    base = PostProcessing.ensemble(
        [load_bundle(run / f"fold-{k}", model=False).info.postprocess for k in range(recipe.cv.folds)]
    )
    fitted = fit_on_oof(oof[raw].to_numpy(dtype=float), targets, oof["fold"].to_numpy(), spec, base)
    steps = PostProcessing(fitted.steps)
    logger.info(
        "post-processing fitted on the OOF predictions: %s (before %s; cross-fitted %s)",
        ", ".join(step.name for step in fitted.steps) or "nothing kept",
        _figures(fitted.before), _figures(fitted.cross_fitted),
    )  # fmt: skip
    return {
        "steps": steps.to_list(),
        "before": fitted.before,
        "cross_fitted": fitted.cross_fitted,
        "kept": fitted.kept,
    }


def _figures(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def _finish(run: Path, recipe: Recipe, plan: _Plan, oof: pd.DataFrame, report: dict[str, Any]) -> None:
    """The outputs of a run whose folds are all complete: OOF table, report (JSON, and the HTML page), plot and
    ensemble manifest."""
    spec = plan.examples.task
    with atomic_file(run / "oof.csv") as staging:
        oof.to_csv(staging, index=False)
    with atomic_file(run / "cv_report.json") as staging:
        staging.write_text(json.dumps(report, indent=2) + "\n")
    figure = plots.confusion(report["confusion_matrix"]) if "confusion_matrix" in report else None
    name = "oof_confusion_matrix.png" if figure else "oof_predicted_vs_true.png"
    with atomic_file(run / name) as staging:
        staging.write_bytes(figure or plots.predicted_vs_true(oof, spec.target_columns))
    members = [f"fold-{fold}" for fold in range(recipe.cv.folds)]
    with atomic_file(run / ENSEMBLE_FILE) as staging:
        manifest = {"format_version": 1, "members": members, "weights": None, "oof": report["oof"]}
        manifest["postprocess"] = report.get("postprocess", {}).get("steps", [])
        if "confusion_matrix" in report:  # the training rows' classes, for a known test prior (Predictor.moved_to)
            matrix = report["confusion_matrix"]
            manifest["class_counts"] = dict(zip(matrix["labels"], np.sum(matrix["counts"], axis=1).tolist()))
        staging.write_text(json.dumps(manifest, indent=2) + "\n")
    save_report(run, lambda: write_report(run, recipe, plan.examples, plan.folds, oof, report))  # last
