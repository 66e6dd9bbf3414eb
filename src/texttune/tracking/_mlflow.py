"""The MLflow backend: an embedded SQLite store by default, or any tracking server.

The embedded store is `texttune-runs/mlflow.db` with the artifacts in `texttune-runs/mlartifacts/`, created on
first use: nothing to start, and `mlflow ui --backend-store-uri sqlite:///texttune-runs/mlflow.db` browses it.
Runs are written through `MlflowClient` with explicit run ids, not the fluent API's global active run, so a cv
parent and its fold runs can be open together and nothing leaks into a user's own MLflow runs.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from texttune._io import process_alive
from texttune.config import TrackingConfig
from texttune.errors import TexttuneError

logger = logging.getLogger(__name__)

EMBEDDED_URI = "sqlite:///texttune-runs/mlflow.db"
ROLE_TAG = "texttune.role"  # model (a train bundle), fold (a cv fold), ensemble (a cv run's manifest) or blend
SCORE_TAG = "texttune.score"
DIGEST_TAG = "texttune.digest"
HOST_TAG, PID_TAG = "texttune.host", "texttune.pid"  # which process owns a RUNNING run


def tracking_uri(uri: str | None = None) -> str:
    """The store to use: `uri`, else $MLFLOW_TRACKING_URI, else the embedded SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or EMBEDDED_URI


def absolute_uri(uri: str | None = None) -> str:
    """The store `tracking_uri` chooses, with a relative SQLite file made absolute (it is read from elsewhere)."""
    chosen = tracking_uri(uri)
    database = sqlite_path(chosen)
    return f"sqlite:///{database.resolve()}" if database is not None else chosen


def without_password(uri: str) -> str:
    """The URI with any user and password left out (for files a run writes beside its outputs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the current directory unless absolute), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_errors() -> tuple[type[BaseException], ...]:
    """What an unreadable store raises: MLflow's errors (a dead server), the database's (not SQLite, an old
    schema) and the file system's."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, OSError


def first_line(exc: BaseException) -> str:
    return ((getattr(exc, "message", None) or str(exc)).splitlines() or [type(exc).__name__])[0]


def client(uri: str) -> Any:
    """An `MlflowClient` on `uri` for runs and the model registry, quiet and quick to give up on a dead server."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # the default retries a dead server for minutes
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we log the run's address once
    from mlflow import MlflowClient

    for noisy in ("mlflow", "alembic"):  # after the import, which sets mlflow's own level
        logging.getLogger(noisy).setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def open_store(tracking: str | None, context: str) -> tuple[Any, str]:
    """A client on an existing store for reading, and the store's URI; `context` starts the one-line errors.

    Reading never creates a store: a missing SQLite file is an error, not an empty store.
    """
    store = tracking_uri(tracking)
    database = sqlite_path(store)
    if database is not None and not database.is_file():
        raise TexttuneError(
            f"{context}: there is no texttune store at {database}; train or cross-validate first, or pass "
            "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store that holds the runs"
        )
    try:
        return client(store), store
    except store_errors() as exc:
        raise TexttuneError(f"{context}: the tracking store {store} is not readable ({first_line(exc)})") from None


def _experiment_id(mlflow: Any, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    database = sqlite_path(uri)
    location = None  # a server chooses where its artifacts go
    if database is not None:  # beside the database, not in ./mlruns of whatever directory we run in
        location = (database.parent.resolve() / "mlartifacts" / quote(name, safe="")).as_uri()
    # MLflow 3's UI opens an experiment as a GenAI one unless told it is model training
    kind = {"mlflow.experimentKind": "custom_model_development"}
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags=kind)
    except MlflowException as exc:  # another process created it first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow.get_experiment_by_name(name).experiment_id


def digest(directory: Path) -> str:
    """A content hash of a folder's files, so that registering the same weights twice reuses their version."""
    total = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        total.update(f"{file.relative_to(directory)}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 - used at once
                total.update(chunk)
    return total.hexdigest()


def start(config: TrackingConfig, name: str, tags: Mapping[str, str]) -> MlflowRun:
    """Open a top-level run named `name` in the experiment `config.experiment`, creating store and experiment."""
    uri = tracking_uri(config.uri)
    database = sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow = client(uri)
    experiment = _experiment_id(mlflow, uri, config.experiment)
    _mark_killed(mlflow, experiment)
    run_tags = {**{tag: "" for tag in config.tags}, **tags}
    if config.group:
        run_tags["group"] = config.group
    run = MlflowRun(mlflow, uri, experiment, name, run_tags)
    logger.info("tracking: %s run '%s' (%s) in %s", tags.get("texttune.kind"), name, run.run_id, run.where)
    return run


def _mark_killed(mlflow: Any, experiment: str) -> None:
    """Runs of this machine still RUNNING although their process is gone (killed, the machine slept and rebooted)
    end as KILLED, so the store does not show them running forever."""
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    for run in mlflow.search_runs([experiment], filter_string=query, max_results=200):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not process_alive(int(pid)):
            mlflow.set_terminated(run.info.run_id, "KILLED")
            logger.info("tracking: run %s of a process that is gone marked KILLED", run.info.run_id)


class MlflowRun:
    """One MLflow run; `child` runs carry `mlflow.parentRunId`, so the UI nests them under this one."""

    def __init__(self, mlflow: Any, uri: str, experiment: str, name: str, tags: Mapping[str, str]) -> None:
        self.mlflow, self.uri, self.experiment, self.tags = mlflow, uri, experiment, dict(tags)
        self.where = str(sqlite_path(uri) or uri)
        user = {
            "mlflow.user": getpass.getuser(),
            "mlflow.source.name": "texttune",
            HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid()),
        }
        run = mlflow.create_run(experiment, run_name=name, tags={**user, **self.tags})
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # the store takes 100 parameters per call
            self.mlflow.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.mlflow.log_batch(self.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in metrics.items()])

    def log_artifacts(self, directory: Path, path: str | None) -> None:
        self.mlflow.log_artifacts(self.run_id, str(directory), path)

    def log_model(
        self, directory: Path, path: str, name: str, tags: Mapping[str, str], best: tuple[float, bool] | None
    ) -> str:
        """Register `directory` as a new version, unless a version of `name` already holds the same files (a cv
        run resumed or run again): then that version is reused and nothing is uploaded twice."""
        from mlflow.exceptions import MlflowException

        content = digest(directory)
        try:
            self.mlflow.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        same = [v for v in self.mlflow.search_model_versions(f"name = '{name}'") if v.tags.get(DIGEST_TAG) == content]
        if same:
            version = max(same, key=lambda v: int(v.version)).version
            logger.info("tracking: %s is already registered as models:/%s/%s", path, name, version)
        else:
            self.log_artifacts(directory, path)
            tags = {**tags, DIGEST_TAG: content, **({SCORE_TAG: repr(best[0])} if best else {})}
            source = f"{self.artifact_uri}/{path}"
            version = self.mlflow.create_model_version(name, source=source, run_id=self.run_id, tags=tags).version
            logger.info("tracking: registered %s as models:/%s/%s", path, name, version)
        if best is not None and self._beats_best(name, best[0], best[1], tags.get("texttune.metric")):
            self.mlflow.set_registered_model_alias(name, "best", str(version))
        return f"models:/{name}/{version}"

    def _beats_best(self, name: str, score: float, greater_is_better: bool, metric: str | None) -> bool:
        from mlflow.exceptions import MlflowException

        if not math.isfinite(score):
            return False
        try:
            holder = self.mlflow.get_model_version_by_alias(name, "best")
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no best yet
                return True
            raise
        try:
            previous = float(holder.tags.get(SCORE_TAG, "nan"))
        except ValueError:  # a hand-edited tag
            previous = math.nan
        if holder.tags.get("texttune.metric") != metric or not math.isfinite(previous):
            return True  # the name now means another task, or the holder has no usable score
        return score > previous if greater_is_better else score < previous

    def child(self, name: str, tags: Mapping[str, str]) -> MlflowRun:
        return MlflowRun(
            self.mlflow, self.uri, self.experiment, name, {**self.tags, **tags, "mlflow.parentRunId": self.run_id}
        )

    def finish(self, status: str) -> None:
        self.mlflow.set_terminated(self.run_id, status)
