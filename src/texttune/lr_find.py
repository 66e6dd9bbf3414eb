"""`lr_find(recipe)`: the LR range test on the recipe's data and model, through the same Trainer as `train`.

The sweep scales every parameter group together, so discriminative rates keep their ratios and the rates shown
are the recipe's `training.learning_rate` (the encoder's top level). Nothing is trained for good: the weights are
restored and no bundle is written. The sweep, suggestions and plot are recorded as an `lr-find` run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from texttune import plots
from texttune._io import atomic_file, scratch_directory
from texttune.config import Recipe
from texttune.distributed import processes
from texttune.errors import TexttuneError
from texttune.models import create_loss
from texttune.policy import ExponentialSweep, Rates
from texttune.policy.lr_finder import SUGGESTIONS, LRFinder, fine_tuning_start
from texttune.prepare import prepare
from texttune.tracking import recipe_params, record_lr_find, start_run
from texttune.trainer import TexttuneTrainer, training_arguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LRFindResult:
    """The sweep (rate per step, raw and smoothed loss), the classic suggestions, and where to start fine-tuning a
    pretrained encoder (`policy.lr_finder.fine_tuning_start`)."""

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)
    fine_tuning: float = 0.0


def lr_find(
    recipe: Recipe, start: float = 1e-7, end: float = 1.0, steps: int = 100, plot: str | Path | None = None
) -> LRFindResult:
    """Run the LR range test: `steps` batches with the rate growing from `start` to `end`, stopping at divergence.

    Args:
        recipe: data, model and training settings (batch size, precision, discriminative rates) to test.
        plot: where to write the PNG of the curve with the suggestions marked, and beside it a JSON file of the
            curve; None writes neither.

    Raises:
        TexttuneError: bad data or configuration, or too few steps before divergence to suggest anything.

    Example:
        >>> result = lr_find(load_recipe("examples/sst5.yaml"), plot="lr_find.png")
        >>> result.suggestions["valley"], result.fine_tuning
    """
    if not 0 < start < end:
        raise TexttuneError(f"lr-find: need 0 < start < end (got start={start}, end={end})")
    if processes().distributed:  # each process would stop the sweep on its own loss, and wait for the others forever
        raise TexttuneError("lr-find runs in one process: run it without torchrun or accelerate launch")
    prepared = prepare(recipe)
    training = recipe.training
    rates = Rates.of(training)
    top = rates.top(prepared.model)  # the swept rate is the encoder's top level; the others keep their ratio to it
    finder = LRFinder((start * (end / start) ** (np.arange(steps) / max(1, steps - 1))).tolist())
    with scratch_directory("lr-find") as scratch:
        trainer = TexttuneTrainer(
            model=prepared.model,
            args=training_arguments(
                training,
                steps,
                scratch,
                top,
                training.seed,
                logging_steps=1,
                eval_strategy="no",
                logging_nan_inf_filter=False,
            ),  # fmt: skip
            train_dataset=prepared.train_set,
            data_collator=prepared.pipeline.collate,
            loss=create_loss(recipe.task, prepared.spec),
            rates=rates,
            schedule=ExponentialSweep(start, end, steps, reference=top),
            group_by_length=training.group_by_length,
            callbacks=[finder],
        )
        trainer.train()
    if len(finder.smoothed) < 5:
        raise TexttuneError(
            f"lr-find: the loss diverged after {len(finder.smoothed)} steps; lower --start (now {start:g})"
        )
    suggestions = {name: suggest(finder.rates, finder.smoothed) for name, suggest in SUGGESTIONS.items()}
    start_at = fine_tuning_start(finder.rates, finder.losses, finder.smoothed)
    result = LRFindResult(finder.rates, finder.losses, finder.smoothed, suggestions, start_at)
    if plot is not None:
        with atomic_file(plot) as staging:
            staging.write_bytes(
                plots.lr_find(result.rates, result.losses, result.smoothed, suggestions, result.fine_tuning)
            )
        with atomic_file(Path(plot).with_suffix(".json")) as staging:  # the data behind the plot
            staging.write_text(json.dumps(dataclasses.asdict(result)) + "\n")
        logger.info("lr-find plot written to %s (its data in %s)", plot, Path(plot).with_suffix(".json"))
    with start_run(recipe, "lr-find") as run:
        run.log_params({**recipe_params(recipe, prepared.spec), "lr_find.start": start, "lr_find.end": end})
        record_lr_find(run, result, plot)
    return result
