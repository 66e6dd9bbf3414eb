"""Tracking: cv runs in an embedded store and on a live `mlflow server`, registered versions predicted from
`models:/`, offline W&B runs, lr-find runs, and training that survives a broken store."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from texttune import Predictor, load_recipe, train
from texttune.cli.main import main
from texttune.cv import run_cv
from texttune.errors import TexttuneError
from texttune.lr_find import lr_find
from texttune.task import TaskSpec
from texttune.tracking import record_blend, record_cv, start_run
from texttune.tracking.models import cache_root

from .conftest import free_port
from .wandb_records import read_records


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        *(str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")),
        *("--workers", "1"),
    ]
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _cv_recipe(write_recipe, tmp_path: Path, tracking: dict, run: str = "run"):
    path = write_recipe("regression", rows=40, training={"epochs": 2}, cv={"folds": 2}, tracking=tracking)
    return load_recipe(path, [f"output.dir={tmp_path / run}"])


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_cv_records_a_parent_run_its_folds_and_versions_that_predict_like_the_run_directory(
    store: str, write_recipe, tmp_path: Path, request, capsys, monkeypatch
) -> None:
    name = f"tiny-{store}"
    if store == "server":  # chosen by the environment, for the recipe and the commands alike
        uri = request.getfixturevalue("mlflow_server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        recipe = _cv_recipe(write_recipe, tmp_path, {"backend": "mlflow", "name": name})
        choose: list[str] = []
    else:  # chosen by the recipe and --tracking-uri
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        recipe = _cv_recipe(write_recipe, tmp_path, {"backend": "mlflow", "uri": uri, "name": name})
        choose = ["--tracking-uri", uri]
    result = run_cv(recipe)
    assert result.model_version == f"models:/{name}/3"  # after the two folds

    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("texttune").experiment_id
    runs = client.search_runs([experiment], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    parent = runs[0]
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(child.info.run_name for child in children) == ["fold-0", "fold-1"]
    assert {run.info.status for run in [parent, *children]} == {"FINISHED"}
    assert parent.data.tags["texttune.kind"] == "cv" and {c.data.tags["job_type"] for c in children} == {"fold"}
    assert parent.data.params["training.epochs"] == "2.0" and parent.data.params["task.type"] == "regression"
    assert "version.transformers" in parent.data.params
    assert parent.data.metrics["oof_mcrmse"] == pytest.approx(result.report["oof"]["mcrmse"])
    fold_scores = client.get_metric_history(parent.info.run_id, "fold_mcrmse")
    assert [m.step for m in fold_scores] == [0, 1]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "valid_mcrmse")
        assert len(history) == 2 and history[0].step < history[1].step  # one evaluation per epoch
        kept = json.loads((result.run / child.info.run_name / "metrics.json").read_text())["valid"]["mcrmse"]
        assert child.data.metrics["best_mcrmse"] == pytest.approx(kept)
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"training_curves.png", "metrics.json", "bundle"} <= files
        assert "bundle/model.safetensors" in {a.path for a in client.list_artifacts(child.info.run_id, "bundle")}
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"cv_report.json", "oof.csv", "oof_predicted_vs_true.png", "ensemble"} <= parent_files

    versions = client.search_model_versions(f"name = '{name}'")
    folds = sorted((v for v in versions if v.tags["texttune.role"] == "fold"), key=lambda v: v.tags["texttune.fold"])
    ensembles = [v for v in versions if v.tags["texttune.role"] == "ensemble"]
    assert len(folds) == 2 and len(ensembles) == 1 and len(versions) == 3
    assert [v.run_id for v in folds] == [c.info.run_id for c in sorted(children, key=lambda c: c.info.run_name)]
    assert client.get_model_version_by_alias(name, "best").version == ensembles[0].version

    texts = recipe.data.train
    local, registered = tmp_path / "local.csv", tmp_path / "registered.csv"
    assert main(["-q", "predict", str(result.run), "--input", str(texts), "--output", str(local)]) == 0
    arguments = ["--input", str(texts), "--output", str(registered), *choose]
    for alias in ("latest", "best"):
        assert main(["-q", "predict", f"models:/{name}@{alias}", *arguments]) == 0
        assert pd.read_csv(registered).equals(pd.read_csv(local))  # row for row, every digit
    assert len(pd.read_csv(local)) == 40
    sample = ["good great film", "awful dull plot"]
    fold_0 = Predictor.load(f"models:/{name}/{folds[0].version}", tracking_uri=uri).predict(sample)
    assert fold_0.equals(Predictor.load(result.run / "fold-0").predict(sample))

    capsys.readouterr()
    assert main(["runs", *choose]) == 0
    listing = capsys.readouterr().out.splitlines()
    row = next(line for line in listing if f" {name} " in line)
    assert " cv " in row and "regression" in row and "oof_mcrmse" in row and "FINISHED" in row
    assert any("  fold-0" in line and "best_mcrmse" in line for line in listing)


def test_models_uris_that_name_nothing_are_one_line_errors(write_recipe, tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(
        write_recipe("classification", rows=30, training={"epochs": 1}),
        ["tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.name=tiny"],
    )
    result = train(recipe)
    assert result.model_version == "models:/tiny/1"
    texts = ["good great film"]
    assert (
        Predictor.load("models:/tiny@latest", tracking_uri=uri)
        .predict(texts)
        .equals(Predictor.load(result.bundle).predict(texts))
    )
    for target, message in [
        ("models:/tiny/7", "has no version 7 (versions 1..1)"),
        ("models:/tiny@champion", "has no alias 'champion'"),
        ("models:/other@best", "no registered model 'other'"),
        ("models:/tiny", "expected models:/NAME/VERSION or models:/NAME@ALIAS"),
    ]:
        with pytest.raises(TexttuneError, match=re.escape(message)):
            Predictor.load(target, tracking_uri=uri)
    missing = f"sqlite:///{tmp_path / 'nowhere.db'}"
    capsys.readouterr()
    assert main(["-q", "predict", "models:/tiny@best", "--text", "x", "--tracking-uri", missing]) == 2
    error = capsys.readouterr().err
    assert "there is no texttune store at" in error and "Traceback" not in error and len(error.splitlines()) == 1
    assert not (tmp_path / "nowhere.db").exists()  # reading never creates a store
    for arguments in (["--tracking-uri", missing], ["--tracking-uri", f"http://127.0.0.1:{free_port()}"]):
        assert main(["-q", "runs", *arguments]) == 2
        error = capsys.readouterr().err
        assert error.startswith("texttune: error:") and len(error.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["runs", "--limit", "0"])


def test_a_resumed_cv_records_the_folds_it_did_not_train(write_recipe, tmp_path: Path, monkeypatch) -> None:
    run_cv(_cv_recipe(write_recipe, tmp_path, {"backend": "none"}))  # trained without tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = _cv_recipe(write_recipe, tmp_path, {"backend": "mlflow", "uri": uri, "name": "resumed"})
    monkeypatch.setattr("texttune.cv.train", lambda *a, **k: pytest.fail("a complete fold was trained again"))
    result = run_cv(recipe)
    client = MlflowClient(uri, uri)
    children = client.search_runs(["1"], filter_string="tags.`texttune.kind` = 'fold'")
    assert len(children) == 2
    for child in children:
        history = client.get_metric_history(child.info.run_id, "valid_mcrmse")
        report = json.loads((result.run / child.info.run_name / "metrics.json").read_text())
        assert [m.value for m in history] == pytest.approx([e["mcrmse"] for e in report["history"]])
    roles = sorted(v.tags["texttune.role"] for v in client.search_model_versions("name = 'resumed'"))
    assert roles == ["ensemble", "fold", "fold"]
    run_cv(recipe)  # once more: the same weights and manifest are not uploaded again
    assert len(client.search_model_versions("name = 'resumed'")) == 3
    assert len(client.search_runs(["1"], filter_string="tags.`texttune.kind` = 'cv'")) == 2


def test_an_unreachable_or_unwritable_store_only_warns(write_recipe, tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for uri in (f"http://127.0.0.1:{free_port()}", f"sqlite:///{blocker / 'mlflow.db'}"):
        output = tmp_path / f"bundle-{len(caplog.records)}"
        recipe = load_recipe(
            write_recipe("classification", rows=30, training={"epochs": 1}),
            ["tracking.backend=mlflow", f"tracking.uri={uri}", f"output.dir={output}"],
        )
        with caplog.at_level(logging.WARNING):
            result = train(recipe)
        assert (output / "model.safetensors").is_file() and result.model_version is None
        assert any("could not open a train run" in r.getMessage() and uri in r.getMessage() for r in caplog.records)


def test_a_store_that_fails_mid_run_stops_recording_and_training_goes_on(
    write_recipe, tmp_path: Path, monkeypatch, caplog
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = _cv_recipe(write_recipe, tmp_path, {"backend": "mlflow", "uri": uri, "name": "broken"})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("texttune.tracking._mlflow.MlflowRun.log_artifacts", disk_full)
    with caplog.at_level(logging.WARNING):
        result = run_cv(recipe)
    assert (result.run / "cv_report.json").is_file() and (result.run / "fold-1" / "model.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not record the files" in w and "No space left on device" in w for w in warnings)
    client = MlflowClient(uri, uri)
    assert client.search_model_versions("name = 'broken'") == []  # no version points at missing files
    assert {r.info.status for r in client.search_runs(["1"])} == {"FAILED"}  # recording stopped at the failure


def test_lr_find_is_recorded_with_its_sweep_and_plot(write_recipe, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(write_recipe("classification", rows=80), ["tracking.backend=mlflow", f"tracking.uri={uri}"])
    result = lr_find(recipe, steps=30, plot=tmp_path / "sweep.png")
    client = MlflowClient(uri, uri)
    (run,) = client.search_runs(["1"])
    assert run.data.tags["texttune.kind"] == "lr-find" and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "lr_find_loss")) == len(result.rates)
    assert run.data.metrics["fine_tuning_start"] == pytest.approx(result.fine_tuning)
    assert {"sweep.png", "sweep.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_offline_wandb_writes_the_runs_their_group_and_fold_artifacts(
    write_recipe, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("wandb")
    for variable, folder in [("WANDB_DIR", "."), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                             ("WANDB_DATA_DIR", "data")]:  # fmt: skip
        monkeypatch.setenv(variable, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = {"backend": "wandb", "name": "tiny", "experiment": "texttune-test", "tags": ["smoke"]}
    result = run_cv(_cv_recipe(write_recipe, tmp_path, tracking))

    runs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3
    records = [read_records(path) for path in runs]
    starts = [next(r.run for r in recs if r.WhichOneof("record_type") == "run") for recs in records]
    assert sorted(s.job_type for s in starts) == ["cv", "fold", "fold"]
    assert len({s.run_group for s in starts}) == 1 and starts[0].run_group.startswith("tiny-")
    assert all("smoke" in s.tags for s in starts) and {s.project for s in starts} == {"texttune-test"}
    artifacts = {
        a.artifact.name: a.artifact for recs in records for a in recs if a.WhichOneof("record_type") == "artifact"
    }
    assert {"tiny", "tiny-fold-0", "tiny-fold-1"} <= set(artifacts)  # the ensemble manifest, and each fold
    assert "model.safetensors" in {entry.path for entry in artifacts["tiny-fold-0"].manifest.contents}
    assert {artifact.type for artifact in artifacts.values()} == {"model"}
    history = [
        item.key or ".".join(item.nested_key)
        for recs, start in zip(records, starts)
        if start.job_type == "fold"
        for r in recs
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    ]
    assert "valid_mcrmse" in history and "train_loss" in history
    configs = [
        item.key or ".".join(item.nested_key)
        for recs in records
        for r in recs
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    ]
    assert "training.learning_rate" in configs
    curves = list((tmp_path / "wandb").glob("offline-run-*/files/training_curves.png"))
    assert len(curves) == 2 and (result.run / "cv_report.json").is_file()
    shutil.rmtree(tmp_path / "wandb")


@pytest.mark.parametrize(("kind", "scores", "best_after"), [("regression", [0.5, 0.4, 0.45], 2),
                                                            ("classification", [0.5, 0.4, 0.6], 3),
                                                            ("regression", [float("nan"), 0.6, 0.7], 2)])  # fmt: skip
def test_best_is_the_ensemble_with_the_best_oof_score(kind, scores, best_after, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "model.yaml").write_text("data:\n  train: train.csv\n")  # a recipe named model; nothing is read
    recipe = load_recipe(tmp_path / "model.yaml", ["tracking.backend=mlflow", f"tracking.uri={uri}"])
    spec = TaskSpec(
        kind, ("score",) if kind == "regression" else ("label",), () if kind == "regression" else ("a", "b")
    )
    metric = "mcrmse" if kind == "regression" else "accuracy"
    for score in scores:
        manifest = {"format_version": 1, "members": ["fold-0"], "oof": {metric: score}}
        (tmp_path / "texttune-ensemble.json").write_text(json.dumps(manifest))
        report = {"per_fold": [{"fold": 0, metric: score}], "oof": {metric: score}, "fold_mean": score, "fold_std": 0}
        with start_run(recipe, "cv") as run:
            assert record_cv(run, tmp_path, report, spec, {"fold-0": "models:/x/1"}).startswith("models:/")
    assert str(MlflowClient(uri, uri).get_model_version_by_alias("model", "best").version) == str(best_after)


_FIRST_SESSION = """
import sys
from texttune import Predictor, load_recipe, train
bundle = train(load_recipe(sys.argv[1], sys.argv[3:])).bundle
Predictor.load("models:/tiny/1", tracking_uri=sys.argv[2]).predict(["a"])  # now in the cache
"""


def test_a_wiped_store_never_serves_a_cached_model_of_the_old_one(write_recipe, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    overrides = ["tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.name=tiny"]
    first = write_recipe("classification", rows=30, training={"epochs": 1, "seed": 1})
    # another process, as stores are wiped between sessions (MLflow keeps a store's tables in memory per process)
    subprocess.run([sys.executable, "-c", _FIRST_SESSION, str(first), uri, *overrides], check=True)
    old_bundle = tmp_path / "old-bundle"
    shutil.move(load_recipe(first).output.dir, old_bundle)
    shutil.rmtree(tmp_path / "store")
    second = load_recipe(write_recipe("classification", rows=30, training={"epochs": 1, "seed": 2}), overrides)
    bundle = train(second).bundle
    texts = ["good great film", "awful dull plot"]
    fetched = Predictor.load("models:/tiny/1", tracking_uri=uri).predict(texts)
    assert fetched.equals(Predictor.load(bundle).predict(texts))
    assert not fetched.equals(Predictor.load(old_bundle).predict(texts))


def test_a_manifest_from_the_store_cannot_reach_outside_its_folder(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "model.yaml").write_text("data:\n  train: train.csv\n")
    recipe = load_recipe(tmp_path / "model.yaml", ["tracking.backend=mlflow", f"tracking.uri={uri}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "texttune-ensemble.json").write_text(json.dumps({"format_version": 1, "members": ["../../evil"]}))
    report = {"per_fold": [{"fold": 0, "mcrmse": 0.5}], "oof": {"mcrmse": 0.5}, "fold_mean": 0.5, "fold_std": 0}
    with start_run(recipe, "cv") as run:
        record_cv(run, run_dir, report, TaskSpec("regression", ("score",)), {"../../evil": "models:/model/1"})
    with pytest.raises(TexttuneError, match="is not a registered fold or seed of 'model'"):
        Predictor.load("models:/model@best", tracking_uri=uri)
    cache = cache_root() / "models"
    assert not list(cache.glob("*/evil")) and not list(cache.glob("*/*/evil"))  # where ../../evil would land
    assert not list(cache.glob("*/model/.*"))  # no staging folder left behind
    with pytest.raises(TexttuneError, match="is not a folder name inside"):
        Predictor.load(run_dir)  # the same manifest in a local run directory
    (run_dir / "texttune-ensemble.json").write_text(json.dumps({"format_version": 1, "members": ["fold-0"]}))
    with start_run(recipe, "cv") as run:  # a member named by alias: it could move under the ensemble
        record_cv(run, run_dir, {**report, "oof": {"mcrmse": 0.4}}, TaskSpec("regression", ("score",)),
                  {"fold-0": "models:/model@champion"})  # fmt: skip
    with pytest.raises(TexttuneError, match="names no version number"):
        Predictor.load("models:/model@best", tracking_uri=uri)
    blend_dir = tmp_path / "blend"  # a blend's runs are plain folder names too
    blend_dir.mkdir()
    (blend_dir / "texttune-blend.json").write_text(json.dumps({"runs": ["../evil"], "weights": [1.0]}))
    with start_run(recipe, "blend") as run:
        spec, sources = TaskSpec("regression", ("score",)), {"../evil": "models:/model/1"}
        record_blend(run, blend_dir, {"mcrmse": 0.3}, {"mcrmse": 0.3}, spec, sources)
    with pytest.raises(TexttuneError, match="the blend's run '../evil' is not a registered cv run of 'model'"):
        Predictor.load("models:/model@best", tracking_uri=uri)
    assert not list(cache.glob("*/evil")) and not list(cache.glob("*/*/evil"))
    both = tmp_path / "both"  # a checked ensemble manifest beside an unchecked blend one, which a loader reads first
    both.mkdir()
    ensemble = {"members": ["fold-0"], "sources": {"fold-0": "models:/model/1"}}
    (both / "texttune-ensemble.json").write_text(json.dumps(ensemble))
    (both / "texttune-blend.json").write_text(json.dumps({"runs": [str(tmp_path / "run")], "weights": [1.0]}))
    with start_run(recipe, "cv") as run:
        run.log_model(both, "ensemble", {"texttune.role": "ensemble", "texttune.metric": "mcrmse"}, best=(0.01, False))
    with pytest.raises(TexttuneError, match="holds texttune-ensemble.json and texttune-blend.json"):
        Predictor.load("models:/model@best", tracking_uri=uri)


def test_a_store_uri_written_beside_a_run_carries_no_password() -> None:
    from texttune.tracking._mlflow import without_password

    assert without_password("postgresql://me:secret@db.example:5432/mlflow") == "postgresql://db.example:5432/mlflow"
    assert without_password("sqlite:////runs/mlflow.db") == "sqlite:////runs/mlflow.db"


class _Recorder:
    """A backend that keeps what it is given, and fails on demand."""

    where = "memory"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.status = None

    def log_metrics(self, metrics, step) -> None:
        self.metrics.update(metrics)

    def log_artifacts(self, directory, path) -> None:
        raise OSError(30, "Read-only file system")

    def finish(self, status: str) -> None:
        self.status = status


def test_metric_names_are_made_valid_and_a_failing_record_only_warns(tmp_path: Path, caplog) -> None:
    from texttune.config import TrackingConfig
    from texttune.tracking import TrackedRun, record_bundle

    backend = _Recorder()
    run = TrackedRun(backend, "train", "tiny", TrackingConfig())
    run.log_metrics({"rmse_score (0-5)": 0.5, "nan": float("nan")}, step=1)
    assert backend.metrics == {"rmse_score _0-5_": 0.5}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "metrics.json").write_text(json.dumps({"valid": {"mcrmse": 0.4}}))
    with caplog.at_level(logging.WARNING):
        assert record_bundle(run, bundle, TaskSpec("regression", ("score",))) is None
    assert "Read-only file system" in caplog.text and backend.status == "FAILED" and not run.active
    assert record_bundle(run, tmp_path / "missing", TaskSpec("regression", ("score",))) is None  # inactive: no-op

    caplog.clear()
    active = TrackedRun(_Recorder(), "train", "tiny", TrackingConfig())
    with caplog.at_level(logging.WARNING):  # the record's own work fails: no metrics.json to read
        assert record_bundle(active, tmp_path / "missing", TaskSpec("regression", ("score",))) is None
    assert "FileNotFoundError" in caplog.text and not active.active

    caplog.clear()
    failing = TrackedRun(_Recorder(), "train", "tiny", TrackingConfig())

    def store_then_body_fail() -> None:
        failing.log_artifacts(tmp_path)  # the store fails and says so ...
        raise OSError(28, "No space left on device")  # ... then the record's own work fails too

    with caplog.at_level(logging.WARNING):
        assert failing.attempt("the bundle", store_then_body_fail) is None
    assert caplog.text.count("could not record") == 1
