"""`fetch_model("models:/NAME@best")`: a registered model version, downloaded once into a local cache.

URIs are MLflow's: `models:/NAME/VERSION` or `models:/NAME@ALIAS`. MLflow reserves the alias `latest`, so texttune
reads `@latest` (and `/latest`) itself: the newest version that predicts on its own, a trained model or a cv
ensemble, not a single fold. A version is immutable, so the cache (`$TEXTTUNE_CACHE`, else
`~/.cache/texttune`) keeps it by store, name, version and run, and an alias is resolved anew each time. An ensemble
version holds only its manifest; its folds are fetched from the versions it names, into the same folder, which
then reads like the cv run directory it came from. A blend version (a multi-seed cv run) names its runs' ensemble
versions the same way, and each is fetched, folds and all, into its run's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from texttune.bundle import BLEND_FILE, BUNDLE_FILE, ENSEMBLE_FILE
from texttune.errors import TexttuneError
from texttune.tracking._mlflow import ROLE_TAG, first_line, open_store, sqlite_path, store_errors

_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w.-]+))/?")
_MEMBER = re.compile(r"(?:fold|seed)-\d+")  # a cv run's folds, or a training.seeds run's seeds
_RUN = re.compile(r"(?:seed|run)-\d+")  # a registered blend's runs: a multi-seed run's seeds, or texttune blend's


def cache_root() -> Path:
    return Path(os.environ.get("TEXTTUNE_CACHE") or Path.home() / ".cache" / "texttune")


def _resolve(mlflow: Any, uri: str, name: str, version: str | None, alias: str | None) -> Any:
    """The model version a URI names, or a one-line error that says what exists."""
    try:
        versions = mlflow.search_model_versions(f"name = '{name}'")
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
        aliases = mlflow.get_registered_model(name).aliases  # search results leave a version's aliases out
        if alias not in aliases:
            known = ", ".join(sorted({*aliases, "latest"}))
            raise TexttuneError(f"{uri}: '{name}' has no alias '{alias}' (aliases: {known})")
        return mlflow.get_model_version(name, aliases[alias])
    except store_errors() as exc:
        raise TexttuneError(f"{uri}: the model registry is not readable ({first_line(exc)})") from None


def _download(mlflow: Any, store: str, name: str, version: str, destination: Path) -> None:
    """The files of a version, from wherever its run's artifacts live (a folder, or the server's proxy)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    source = mlflow.get_model_version_download_uri(name, version)
    destination.mkdir(parents=True, exist_ok=True)
    get_artifact_repository(source, tracking_uri=store).download_artifacts("", dst_path=str(destination))


def _parts(uri: str, name: str, staging: Path) -> dict[str, str]:
    """The folders a version's manifest points at, and the versions they come from: an ensemble's folds (or seeds),
    or a blend's runs (each a cv ensemble). A manifest is data from the store, so its folders must be `fold-K` or
    `seed-S` names and its sources numbered versions of the same model."""
    if (staging / ENSEMBLE_FILE).is_file():
        file, key, kind, part, pattern = ENSEMBLE_FILE, "members", "ensemble", "member", _MEMBER
    elif (staging / BLEND_FILE).is_file():
        file, key, kind, part, pattern = BLEND_FILE, "runs", "blend", "run", _RUN
    else:
        return {}
    try:
        manifest = json.loads((staging / file).read_text())
        sources, members = dict(manifest.get("sources", {})), list(manifest.get(key, []))
    except (ValueError, TypeError, AttributeError) as exc:
        raise TexttuneError(f"{uri}: the {kind}'s manifest is unreadable ({first_line(exc)})") from None
    versions = {}
    for member in members:
        match = _URI.fullmatch(str(sources.get(member, "")))
        if not pattern.fullmatch(str(member)) or match is None or match["name"] != name:
            what = "fold or seed" if kind == "ensemble" else "cv run"
            raise TexttuneError(f"{uri}: the {kind}'s {part} {member!r} is not a registered {what} of '{name}'")
        if not (match["version"] or "").isdigit():
            raise TexttuneError(f"{uri}: the {kind}'s {part} {member!r} names no version number")
        versions[member] = match["version"]
    if set(sources) != set(members) or not members:
        raise TexttuneError(f"{uri}: the {kind}'s sources do not match its {key}")
    return versions


def _fetch_into(mlflow: Any, store: str, uri: str, name: str, version: str, folder: Path, depth: int = 0) -> None:
    """A version's files, and those of the versions its manifest points at (a blend's runs, then their folds)."""
    _download(mlflow, store, name, version, folder)
    kinds = [file for file in (BUNDLE_FILE, ENSEMBLE_FILE, BLEND_FILE) if (folder / file).exists()]
    if len(kinds) > 1:  # a loader would read one manifest while the other was checked
        raise TexttuneError(f"{uri}: version {version} holds {' and '.join(kinds)}; a version is one of them")
    parts = _parts(uri, name, folder)
    if parts and depth == 2:
        raise TexttuneError(f"{uri}: version {version} nests manifests deeper than a blend of cv runs")
    blend = (folder / BLEND_FILE).is_file()
    for part, source in parts.items():
        _fetch_into(mlflow, store, uri, name, source, folder / part, depth + 1)
        expected = ENSEMBLE_FILE if blend else BUNDLE_FILE  # a blend of ensembles, an ensemble of bundles
        if not (folder / part / expected).is_file() or (not blend and (folder / part / ENSEMBLE_FILE).is_file()):
            what = "a cv ensemble" if blend else "a trained bundle"
            raise TexttuneError(f"{uri}: {part!r} (version {source}) is not {what}")


def _complete(folder: Path) -> bool:
    return any((folder / file).is_file() for file in (BUNDLE_FILE, ENSEMBLE_FILE, BLEND_FILE))


def fetch_model(uri: str, tracking: str | None = None) -> Path:
    """Download the model version `uri` names (once) and return its local folder, a bundle or a cv run.

    Args:
        uri: `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME@latest`.
        tracking: the MLflow store; None: $MLFLOW_TRACKING_URI, else the embedded `texttune-runs/mlflow.db`.

    Raises:
        TexttuneError: a malformed URI, no such store, model, version or alias, or files that cannot be fetched.

    Example:
        >>> Predictor.load(fetch_model("models:/ellipse@best"))  # what Predictor.load("models:/...") does
    """
    match = _URI.fullmatch(uri)
    if match is None:
        raise TexttuneError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS, e.g. models:/ellipse@best")
    mlflow, store = open_store(tracking, uri)
    name = match["name"]
    found = _resolve(mlflow, uri, name, match["version"], match["alias"])
    database = sqlite_path(store)
    store_key = hashlib.sha256(str(database.resolve() if database else store).encode()).hexdigest()[:12]
    # a version number is reused when a store is wiped and filled again; its run id is not
    folder = cache_root() / "models" / store_key / name / f"{found.version}-{found.run_id}"
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"  # made with the umask, unlike mkdtemp
    try:
        _fetch_into(mlflow, store, uri, name, str(found.version), staging)
        if not _complete(staging):
            raise TexttuneError(f"{uri}: version {found.version} holds no texttune bundle, ensemble or blend")
        try:
            staging.rename(folder)
        except OSError:  # another process fetched it first: keep theirs, which readers may already use
            if not _complete(folder):
                raise
    except store_errors() as exc:
        raise TexttuneError(f"{uri}: could not fetch version {found.version} ({first_line(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
