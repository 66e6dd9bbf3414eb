"""`texttune cv RECIPE --executor ray`: each fold a Ray task, on a local Ray or the cluster in RAY_ADDRESS.

A task is `train_fold` itself, run in the driver's working directory: it claims its fold in the run directory and
writes its bundle there, so the run directory must be on a filesystem every node mounts at the same path (checked
on each node before it trains). Tasks record nothing
in the tracking store; the driver's `collect_cv` records every fold from its bundle, so the store (the embedded
SQLite one included) is only ever opened on the machine that started the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from texttune.config import Recipe
from texttune.errors import TexttuneError

logger = logging.getLogger(__name__)


def _fold_task(recipe: Recipe, fold: int, folder: str) -> str:
    """One fold, on whichever node Ray chose, in the driver's working `folder` (the recipe's relative paths, and
    so its fingerprint, stay as they are); returns where it ran."""
    import socket

    import torch
    import transformers

    from texttune.cv import RUN_FILE, train_fold

    logging.basicConfig(level=logging.INFO, format=f"[fold {fold}] %(message)s")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(recipe.cv.cpus_per_fold)
    run = Path(folder) / recipe.output.dir
    if not (run / RUN_FILE).is_file():
        raise TexttuneError(
            f"output.dir {run} is not visible on the Ray node {socket.gethostname()}: put it on a filesystem that "
            "every node of the cluster mounts, at the same path"
        )
    os.chdir(folder)
    train_fold(recipe, fold)
    return socket.gethostname()


def train_folds(recipe: Recipe, folds: list[int]) -> None:
    """Train `folds` of the run planned in `recipe.output.dir` as concurrent Ray tasks, each asking for
    `cv.cpus_per_fold` CPUs and `cv.gpus_per_fold` GPUs; joins a running Ray (RAY_ADDRESS, or one this process
    started) or starts a local one for the length of the call.

    Raises:
        TexttuneError: Ray not installed, or a fold that failed (its own message, one line per fold).
    """
    try:
        import ray
    except ImportError:
        raise TexttuneError("--executor ray needs Ray: pip install 'texttune[ray]'") from None
    if not folds:
        return
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS") or None
        logger.info("ray: %s", f"joining the cluster at {address}" if address else "a local Ray")
        environment = {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": environment},
        )
    try:
        task = ray.remote(num_cpus=recipe.cv.cpus_per_fold, num_gpus=recipe.cv.gpus_per_fold, max_retries=0)(
            _fold_task
        )
        pending = {fold: task.remote(recipe, fold, os.getcwd()) for fold in folds}
        logger.info(
            "ray: %d folds submitted (%d CPU, %g GPU each)",
            len(folds),
            recipe.cv.cpus_per_fold,
            recipe.cv.gpus_per_fold,
        )
        failures = []
        for fold, reference in pending.items():
            try:
                logger.info("fold %d: trained on %s", fold, ray.get(reference))
            except ray.exceptions.RayError as exc:  # a task's error, or its worker or node lost (memory, a crash)
                cause = exc.cause if isinstance(getattr(exc, "cause", None), TexttuneError) else None
                failures.append(f"fold {fold}: {cause or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]}")
        if failures:
            raise TexttuneError("; ".join(failures))
    finally:
        if started_here:
            ray.shutdown()
