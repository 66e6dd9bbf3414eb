"""`train(recipe)`, the story of a run: prepare (examples, pipeline, model) -> fit (stage by stage, keeping the
best evaluation) -> write the bundle.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from texttune import plots
from texttune._hardware import use_bf16
from texttune._io import check_writable, recover_directory, scratch_directory
from texttune._malloc import retain_freed_memory
from texttune.bundle import BUNDLE_FILE, VALID_PREDICTIONS, BundleInfo, save_bundle
from texttune.checkpoints import CHECKPOINTS, Checkpoints, foreign_checkpoints, open_checkpoints
from texttune.config import Recipe, Stage
from texttune.distributed import barrier, check_shared, from_main, main_first, processes, start
from texttune.errors import TexttuneError
from texttune.fingerprint import fingerprint
from texttune.history import Entry, History
from texttune.metrics import Scorer, best_metric
from texttune.models import create_loss
from texttune.policy import OneCycle, Rates
from texttune.policy.callbacks import KeepBest, WeightAveraging, WeightsInSync
from texttune.predictor import Predictor
from texttune.prepare import Prepared, prepare
from texttune.runners import TorchRunner, runs_in_bf16
from texttune.task import Examples
from texttune.tracking import TrackedRun, log_entry, recipe_params, record_bundle, start_run
from texttune.trainer import TexttuneTrainer, training_arguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the bundle went, how the kept checkpoint scored on validation, and its registered model version."""

    bundle: Path
    metrics: dict[str, float]
    baseline: dict[str, float]
    seconds: float
    model_version: str | None = None  # e.g. models:/demo/3; None without tracking


def stage_trainer(
    prepared: Prepared,
    stage: Stage,
    index: int,
    scratch: str,
    callbacks: Sequence[TrainerCallback],
    checkpoints: Checkpoints | None = None,
    scorer: Scorer | None = None,
) -> TexttuneTrainer:
    """A Trainer for one stage: its levels unfrozen, a fresh optimizer over them at the stage's rates, and a
    schedule of its own. `scorer` computes its evaluations' metrics (and keeps their outputs for `KeepBest`)."""
    training, model = prepared.recipe.training, prepared.model
    job = processes()
    # steps are counted in global batches: each process takes `batch_size` texts of one (LengthGroupedBatchSampler)
    global_batch = training.batch_size * job.count * training.gradient_accumulation_steps
    per_epoch = math.ceil(
        math.ceil(len(prepared.train_set) / (training.batch_size * job.count)) / training.gradient_accumulation_steps
    )
    max_steps = max(1, math.ceil(round(per_epoch * stage.epochs, 6)))  # 50 * 1.1 is 55.00000000000001
    if job.distributed and job.main:
        logger.info(
            "stage %d: global batch %d (%d per process x %d processes x %d accumulation): %d steps per epoch, "
            "%d in all",
            index + 1, global_batch, training.batch_size, job.count, training.gradient_accumulation_steps,
            per_epoch, max_steps,
        )  # fmt: skip
    eval_steps = max(1, math.ceil(per_epoch / training.evals_per_epoch))
    evaluates = len(prepared.valid_set) > 0  # not in a full-data refit (data.valid_fraction 0)
    model.freeze_to(None if stage.unfreeze == "all" else stage.unfreeze)
    rates = Rates.of(training, stage.learning_rate)
    args = training_arguments(
        training,
        max_steps,
        scratch,
        learning_rate=rates.top(model),
        seed=training.seed + index,  # each stage draws its own batch order
        eval_strategy="steps" if evaluates else "no",
        eval_steps=eval_steps,
        logging_steps=max(1, min(50, eval_steps // 4)),
    )
    return TexttuneTrainer(
        model=model,
        args=args,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.valid_set if evaluates else None,
        data_collator=prepared.pipeline.collate,
        compute_metrics=scorer or scorer_of(prepared),
        loss=create_loss(prepared.recipe.task, prepared.spec),
        rates=rates,
        schedule=OneCycle(training.warmup_ratio, training.momentums) if training.scheduler == "one_cycle" else None,
        group_by_length=training.group_by_length,
        eval_max_tokens=training.eval_max_tokens,
        weight_averaging=WeightAveraging(training.ema_decay) if training.ema_decay else None,
        checkpoints=checkpoints,
        # the checkpoints also evaluate after the last step
        callbacks=[*callbacks, *([checkpoints] if checkpoints else []), WeightsInSync(model, index)],
    )


def scorer_of(prepared: Prepared) -> Scorer:
    """The evaluations' metrics, and their loss over the whole validation set."""
    return Scorer(prepared.spec, prepared.postprocess, create_loss(prepared.recipe.task, prepared.spec))


@dataclass(frozen=True)
class Fit:
    """What training produced besides the weights: the kept evaluation, its head outputs on the validation set (in
    the set's order; None where a checkpoint of an older texttune did not keep them) and the run's log."""

    metrics: dict[str, float]
    history: History
    valid_outputs: np.ndarray | None


def fit(
    prepared: Prepared,
    callbacks: Sequence[TrainerCallback] = (),
    listeners: Sequence[Callable[[Entry], None]] = (),
    restart: bool = False,
    key: dict | None = None,
) -> Fit:
    """Train the prepared model stage by stage (one stage without `training.stages`) and load the best weights seen
    in any stage's evaluations (without a validation set, the last weights, or their moving average). `callbacks`
    join every stage's Trainer; `listeners` get each log entry (tracking).

    With `training.checkpoints`, a run killed in `output.dir` resumes from its newest checkpoint (see
    `texttune.checkpoints`) and ends as the uninterrupted run would have; `restart` discards them instead. `key`:
    the run's fingerprint (default: the recipe's, `texttune.fingerprint`).
    """
    retain_freed_memory()  # see texttune._malloc: reuse large buffers instead of page-faulting them in every step
    recipe, model = prepared.recipe, prepared.model
    stages = recipe.training.stage_plan()
    metric, greater_is_better = best_metric(prepared.spec)
    scorer = scorer_of(prepared)
    keep_best = KeepBest(metric, greater_is_better, scorer)
    history = History(listeners, [stage.epochs for stage in stages])
    checkpoints, resumed = None, None
    if recipe.training.checkpoints:
        output, minutes = Path(recipe.output.dir), recipe.training.checkpoint_minutes
        with main_first() as main:  # the main process discards what is stale; then every process reads the same
            checkpoints, candidates = open_checkpoints(
                output, key or fingerprint(recipe), history, keep_best, minutes, restart and main
            )
        candidates = from_main(candidates)  # every process resumes from the same step
        resumed = checkpoints.resume(candidates, model, len(stages), use_bf16(recipe.training.precision))
    run = resumed[1] if resumed else None
    first = 0 if run is None else run["stage"] + (0 if run["mid_stage"] else 1)
    with scratch_directory("scratch") as scratch:
        for index in range(first, len(stages)):
            trainer = stage_trainer(
                prepared, stages[index], index, scratch, [keep_best, history, *callbacks], checkpoints, scorer
            )
            mid_stage = run is not None and run["mid_stage"] and index == first
            if mid_stage and trainer.weight_averaging is not None:
                trainer.weight_averaging.resume(run["ema"], run["ema_updates"])
            trainer.train(resume_from_checkpoint=str(resumed[0]) if mid_stage else None)
            last, averaged = index == len(stages) - 1, trainer.weight_averaging is not None
            if last and averaged and not len(prepared.valid_set):  # no evaluation chose: the average is the model
                model.load_state_dict(trainer.weight_averaging.average, strict=False)
            if checkpoints is not None and processes().main:
                checkpoints.save(model)  # the stage is done: the next one starts from these weights
    model.freeze_to(None)
    if not len(prepared.valid_set):  # a full-data refit: nothing to choose from, the last weights (or average)
        return Fit({}, history, None)
    keep_best.restore(model)
    kept = next(entry for entry in history.of_kind("eval") if entry.values.get(metric) == keep_best.best)
    return Fit(kept.to_dict(), history, keep_best.outputs)


def train(
    recipe: Recipe,
    examples: tuple[Examples, Examples] | None = None,
    run: TrackedRun | None = None,
    restart: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune the recipe's encoder (`prepare`, then `fit`) and write the best weights as a bundle in `output.dir`,
    with `training_curves.png` and the validation predictions inside (`data.valid_fraction` 0: every row trains
    and the last weights are written; `training.seeds`: one bundle per seed and their ensemble, `texttune.seeds`).

    The run is recorded in the recipe's tracking store (`tracking`), or in `run` (a cv fold's); tracking failures
    only warn. A run killed earlier in the same `output.dir` resumes from its checkpoints; `restart` discards them.
    `callbacks` join every stage's Trainer (e.g. a tuning study's reporter).

    Raises:
        TexttuneError: bad data or configuration, or checkpoints of another recipe, before any training starts.

    Example:
        >>> result = train(load_recipe("examples/demo.yaml"))
        >>> result.metrics["accuracy"]
    """
    if recipe.training.seeds:  # one model per seed, averaged (texttune.seeds)
        from texttune.seeds import train_seeds

        if examples is not None or run is not None or callbacks:
            raise TexttuneError("training.seeds trains its own seeds: give examples, run or callbacks to one seed's")
        return train_seeds(recipe, restart)
    started = time.perf_counter()
    output = Path(recipe.output.dir)
    job = start()  # one process, or this one's place in a torchrun / accelerate job: only the main one writes
    if job.main:
        _check_output(output)
    check_shared(output.parent)  # a job on several machines: the others read what the main process writes here
    if recipe.training.stages and "epochs" in recipe.training.model_fields_set:
        logger.info(
            "training.stages replace training.epochs: %g epochs in all", sum(s.epochs for s in recipe.training.stages)
        )
    key = fingerprint(recipe, cv=examples is not None) if recipe.training.checkpoints else None  # folds skip valid
    if key is not None and not restart and job.main:
        foreign_checkpoints(output, key)  # refused before any work
    prepared = prepare(recipe, examples)
    if job.main:
        check_writable(output, "output.dir")  # now, not after the training
    with contextlib.nullcontext(run) if run is not None else start_run(recipe, "train") as tracked:
        tracked.log_params(recipe_params(recipe, prepared.spec))
        listeners = [log_entry(tracked)] if tracked.active else []
        result = fit(prepared, callbacks, listeners=listeners, restart=restart, key=key)
        seconds = time.perf_counter() - started
        version = None
        if job.main:
            _write_bundle(prepared, result, seconds)
            version = record_bundle(tracked, output, prepared.spec)
            logger.info("bundle written to %s", output)
        barrier()  # the others return once the bundle is there
    return TrainResult(output, result.metrics, prepared.baseline, seconds, version)


def _check_output(output: Path) -> None:
    """Refuse an `output.dir` that is not ours before any work; a bundle write killed half-way is finished or rolled
    back first."""
    recover_directory(output)
    resumable = Checkpoints(output, {}).owned() and {p.name for p in output.iterdir()} == {CHECKPOINTS}
    if output.exists() and not (output / BUNDLE_FILE).is_file() and not resumable:
        raise TexttuneError(
            f"output.dir {output} exists and is not a texttune bundle; it would be replaced, so choose another "
            "output.dir or remove it"
        )


def _write_bundle(prepared: Prepared, result: Fit, seconds: float) -> None:
    """The bundle in `output.dir`, with its report, curves and validation predictions."""
    recipe, spec, history = prepared.recipe, prepared.spec, result.history
    evaluations = [entry.to_dict() for entry in history.of_kind("eval")]
    train_log = [entry.to_dict() for entry in history.of_kind("train")]
    info = BundleInfo(
        task=spec,
        backbone=recipe.model.backbone,
        backbone_config=prepared.model.backbone.config.to_dict(),
        postprocess=prepared.postprocess,
        id_column=recipe.data.id_column,
        pooling=recipe.model.pooling,
        head_dropout=recipe.model.head_dropout,
        precision="bf16" if use_bf16(recipe.training.precision) else "fp32",
    )
    report = {
        "valid": result.metrics,
        "baseline": prepared.baseline,
        "train_rows": len(prepared.train_set),
        "valid_rows": len(prepared.valid_set),
        "seconds": round(seconds, 1),
        "history": evaluations,
        "train_log": train_log,
        **({"full_data": True} if recipe.data.full else {}),
    }
    curves = plots.training_curves(train_log, evaluations, best_metric(spec)[0], history.stage_starts)
    extra_files = {"training_curves.png": curves}
    if len(prepared.valid):
        predictor = Predictor([TorchRunner(prepared.model, runs_in_bf16(info.precision))], prepared.pipeline, info)
        scored = result.valid_outputs
        if scored is None:  # resumed from a checkpoint without them: one more pass over the validation set
            scored = predictor.outputs_of(prepared.valid_set.features)
        outputs = np.empty_like(scored)
        outputs[prepared.valid_order] = scored  # back to the order of the validation rows
        table = predictor.prediction_table(prepared.valid, outputs)
        extra_files[VALID_PREDICTIONS] = table.to_csv(index=False).encode()
    save_bundle(recipe.output.dir, prepared.model, prepared.pipeline, info, report, recipe.to_dict(), extra_files)
