"""`fetch_model("models:/NAME@best")`: a registered model version, downloaded once into a local cache.

URIs are MLflow's: `models:/NAME/VERSION` or `models:/NAME@ALIAS`. MLflow reserves the alias `latest`, so texttune
reads `@latest` (and `/latest`) itself: the newest version that predicts on its own, a trained model or a cv
ensemble, not a single fold. A version is immutable, so the cache (`$TEXTTUNE_CACHE`, else
`~/.cache/texttune`) keeps it by store, name, version and run, and an alias is resolved anew each time. An ensemble
version holds only its manifest; its folds are fetched from the versions it names, into the same folder, which
then reads like the cv run directory it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from texttune._io import atomic_directory
from texttune.bundle import BUNDLE_FILE, ENSEMBLE_FILE
from texttune.errors import TexttuneError
from texttune.tracking._mlflow import ROLE_TAG, client, sqlite_path, tracking_uri

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w.-]+))/?$")


def is_model_uri(path: str | Path) -> bool:
    return str(path).startswith("models:/")


def cache_root() -> Path:
    return Path(os.environ.get("TEXTTUNE_CACHE") or Path.home() / ".cache" / "texttune")


def _resolve(mlflow: Any, uri: str, name: str, version: str | None, alias: str | None) -> Any:
    """The model version a URI names, or a one-line error that says what exists."""
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise TexttuneError(f"{uri}: the model registry is not readable ({exc.message.splitlines()[0]})") from None
    if not versions:
        raise TexttuneError(
            f"{uri}: no registered model '{name}' in this store; `texttune runs` lists what was recorded, "
            "and --tracking-uri (or MLFLOW_TRACKING_URI) chooses another store"
        )
    if alias is None and version != "latest":
        matches = [v for v in versions if str(v.version) == version]
        if not matches:
            numbers = sorted(int(v.version) for v in versions)
            raise TexttuneError(f"{uri}: '{name}' has no version {version} (versions {numbers[0]}..{numbers[-1]})")
        return matches[0]
    if alias is None or alias.lower() == "latest":
        whole = [v for v in versions if v.tags.get(ROLE_TAG) != "fold"] or versions
        return max(whole, key=lambda v: int(v.version))
    for candidate in versions:
        if alias in candidate.aliases:
            return candidate
    known = sorted({a for v in versions for a in v.aliases} | {"latest"})
    raise TexttuneError(f"{uri}: '{name}' has no alias '{alias}' (aliases: {', '.join(known)})")


def _download(mlflow: Any, store: str, name: str, version: str, destination: Path) -> None:
    """The files of a version, from wherever its run's artifacts live (a folder, or the server's proxy)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    source = mlflow.get_model_version_download_uri(name, version)
    destination.mkdir(parents=True, exist_ok=True)
    get_artifact_repository(source, tracking_uri=store).download_artifacts("", dst_path=str(destination))


def fetch_model(uri: str, tracking: str | None = None) -> Path:
    """Download the model version `uri` names (once) and return its local folder, a bundle or a cv run.

    Args:
        uri: `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME@latest`.
        tracking: the MLflow store; None: $MLFLOW_TRACKING_URI, else the embedded `texttune-runs/mlflow.db`.

    Raises:
        TexttuneError: a malformed URI, no such store, model, version or alias.

    Example:
        >>> Predictor.load(fetch_model("models:/ellipse@best"))  # what Predictor.load("models:/...") does
    """
    match = _URI.match(uri)
    if match is None:
        raise TexttuneError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS, e.g. models:/ellipse@best")
    store = tracking_uri(tracking)
    database = sqlite_path(store)
    if database is not None and not database.is_file():
        raise TexttuneError(
            f"{uri}: there is no texttune store at {database}; train or cross-validate first, or pass "
            "--tracking-uri (or set MLFLOW_TRACKING_URI) to the store that holds the model"
        )
    mlflow = client(store)
    name = match["name"]
    found = _resolve(mlflow, uri, name, match["version"], match["alias"])
    store_key = hashlib.sha256(str(database.resolve() if database else store).encode()).hexdigest()[:12]
    # a version number is reused when a store is wiped and filled again; its run id is not
    folder = cache_root() / "models" / store_key / name / f"{found.version}-{found.run_id}"
    if (folder / BUNDLE_FILE).is_file() or (folder / ENSEMBLE_FILE).is_file():
        return folder
    with atomic_directory(folder) as staging:
        _download(mlflow, store, name, found.version, staging)
        if (staging / ENSEMBLE_FILE).is_file():
            sources = json.loads((staging / ENSEMBLE_FILE).read_text()).get("sources", {})
            for member, source in sources.items():
                member_match = _URI.match(source)
                if member_match is None or member_match["name"] != name:
                    raise TexttuneError(f"{uri}: ensemble member {member} points at {source!r}, not a version")
                _download(mlflow, store, name, member_match["version"], staging / member)
    return folder
