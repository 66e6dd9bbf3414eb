"""`start_run(recipe, kind)`: a run in the recipe's tracking store that can never cost the training.

The store is chosen by `tracking.backend` from `BACKENDS` (MLflow by default, W&B, or none). Whatever the store
does, a `TrackedRun` only warns: if it cannot be opened (server down, read-only disk) or fails half-way, one
warning says what was not recorded, later calls do nothing, and training and the local bundle go on as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from texttune.config import Recipe, TrackingConfig
from texttune.distributed import processes
from texttune.tracking._mlflow import tracking_uri

logger = logging.getLogger(__name__)

T = TypeVar("T")
_METRIC_NAME = re.compile(r"[^\w./ -]")  # what MLflow accepts in metric names


class BackendRun(Protocol):
    """One run in a store, as each backend implements it. Any method may raise; `TrackedRun` catches."""

    where: str  # the store, for messages: a path or a URL

    def log_params(self, params: Mapping[str, str]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None: ...

    def log_artifacts(self, directory: Path, path: str | None) -> None: ...

    def log_model(
        self, directory: Path, path: str, name: str, tags: Mapping[str, str], best: tuple[float, bool] | None
    ) -> str: ...

    def child(self, name: str, tags: Mapping[str, str]) -> BackendRun: ...

    def finish(self, status: str) -> None: ...


# backend name -> "module:function(config, name, tags) -> BackendRun", imported on use (mlflow and wandb are slow)
BACKENDS = {"mlflow": "texttune.tracking._mlflow:start", "wandb": "texttune.tracking._wandb:start"}


def _backend_factory(backend: str) -> Callable[..., BackendRun]:
    module, function = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), function)


class TrackedRun:
    """A run that turns every tracking failure into one warning and carries on without the store.

    `kind` is train, cv, fold or lr-find; `name` is the registered model's name; `tags` go on the model versions
    it logs (a fold's number). A run of backend `none`, or one whose store failed, records nothing.
    """

    def __init__(
        self,
        backend: BackendRun | None,
        kind: str,
        name: str,
        config: TrackingConfig,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.backend, self.kind, self.name, self.config = backend, kind, name, config
        self.tags = dict(tags or {})

    @property
    def active(self) -> bool:
        return self.backend is not None

    def _guard(self, what: str, call: Callable[[BackendRun], T]) -> T | None:
        backend = self.backend
        if backend is None:
            return None
        try:
            return call(backend)
        except Exception as exc:  # the store's problem is never the training's
            if self.backend is None:  # a call inside `call` failed first and has said so
                return None
            logger.warning(
                "tracking: could not record %s of %s run '%s' in %s (%s: %s); nothing more of this run is recorded "
                "there, training goes on and the local files are complete",
                what,
                self.kind,
                self.name,
                backend.where,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            self.backend = None
            if what != "the end of the run":
                with contextlib.suppress(Exception):  # a store that still answers shows the run as failed
                    backend.finish("FAILED")
            return None

    def attempt(self, what: str, call: Callable[[], T]) -> T | None:
        """`call()` under the same policy: skipped once the run records nothing, a warning if it raises (a full
        temporary disk while copying files for the store must not stop a training whose bundle is written)."""
        return self._guard(what, lambda _: call())

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._guard("the parameters", lambda run: run.log_params({k: str(v) for k, v in params.items()}))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {
            _METRIC_NAME.sub("_", k): float(v)  # a target column "score (0-5)" gives rmse_score _0-5_
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if finite:
            self._guard(f"metrics at step {step}", lambda run: run.log_metrics(finite, step))

    def log_artifacts(self, directory: str | Path, path: str | None = None) -> None:
        self._guard(f"the files of {directory}", lambda run: run.log_artifacts(Path(directory), path))

    def log_model(
        self, directory: str | Path, path: str, tags: Mapping[str, str], best: tuple[float, bool] | None = None
    ) -> str | None:
        """Log the folder `directory` as `path` and register it as a new version of the model `name`.

        Returns the version, or None when `tracking.log_models` is off or the store failed. `best` (score,
        greater_is_better) makes the version the model's `best` when it beats the one there.
        """
        if not self.config.log_models:
            return None
        return self._guard(
            f"the model in {directory}", lambda run: run.log_model(Path(directory), path, self.name, tags, best)
        )

    def child(self, name: str, kind: str, tags: Mapping[str, str] | None = None) -> TrackedRun:
        """A run nested in this one (a cv fold), named `name`, in this run's group; `tags` go on its models."""
        run_tags = {**(tags or {}), "texttune.kind": kind, "job_type": self.config.job_type or kind}
        backend = self._guard(f"the child run {name}", lambda run: run.child(name, run_tags))
        return TrackedRun(backend, kind, self.name, self.config, tags)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None):
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        self._guard("the end of the run", lambda run: run.finish(status))


def run_name(recipe: Recipe) -> str:
    """The run's and the registered model's name: `tracking.name` (which `load_recipe` sets to the recipe file's
    name), else the output directory's name."""
    return recipe.tracking.name or Path(recipe.output.dir).name


def start_run(recipe: Recipe, kind: str) -> TrackedRun:
    """Open a top-level run for `recipe` (kind train, cv or lr-find), or an inactive one if the store fails.

    Example:
        >>> with start_run(recipe, "train") as run:
        ...     run.log_metrics({"loss": 0.5}, step=1)
    """
    config, name = recipe.tracking, run_name(recipe)
    if config.backend == "none" or not processes().main:  # one run per data-parallel job: the main process's
        return TrackedRun(None, kind, name, config)
    tags = {"texttune.kind": kind, "job_type": config.job_type or kind}
    try:
        backend = _backend_factory(config.backend)(config, name, tags)
    except Exception as exc:
        logger.warning(
            "tracking: could not open a %s run in the %s store %s (%s: %s); this %s is not recorded, training goes "
            "on and writes its files as usual",
            kind,
            config.backend,
            tracking_uri(config.uri) if config.backend == "mlflow" else config.experiment,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            kind,
        )
        backend = None
    return TrackedRun(backend, kind, name, config)
