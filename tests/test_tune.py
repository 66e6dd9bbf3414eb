"""texttune tune: a study that prunes, survives a SIGKILL, resumes with the missing trials only, and whose best.yaml
trains to the score it reported."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from texttune import load_recipe
from texttune.cli.main import main
from texttune.errors import TexttuneError
from texttune.tune import tune

SPACE = {
    "training.learning_rate": [1.0e-9, 3.0e-3, 1.0e-2],  # 1e-9 learns nothing: a trial to prune
    "model.pooling": ["mean", "cls"],
    "model.head_dropout": {"low": 0.0, "high": 0.3},
}


def _tune_recipe(write_recipe, tmp_path: Path, **tune: object) -> Path:
    settings = {"space": SPACE, "startup_trials": 2, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", **tune}
    return write_recipe(
        "regression",
        rows=48,
        training={"epochs": 2, "evals_per_epoch": 2},
        tune=settings,
        output={"dir": str(tmp_path / "tune")},
    )


def _cli(recipe: Path, *arguments: str, crash: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TEXTTUNE_CRASH_AT": crash or "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "texttune", "-q", *arguments, str(recipe)],
        env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_killed_study_resumes_with_the_missing_trials_and_best_yaml_trains_to_its_score(write_recipe, tmp_path):
    recipe = _tune_recipe(write_recipe, tmp_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    killed = _cli(recipe, "tune", "--trials", "6", crash="trial:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    study = optuna.load_study(study_name="regression", storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and states[3] == "RUNNING" and all(s in ("COMPLETE", "PRUNED") for s in states[:3])
    killed_values = study.trials[3].params

    again = _cli(recipe, "tune", "--trials", "6")
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="regression", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[3] == "FAIL" and len(states) == 4 + 3  # the killed trial failed, then exactly 3 more ran
    assert study.trials[4].params == killed_values  # its values tried again first
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 6 and "PRUNED" in states
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert len(pruned.intermediate_values) < 4  # stopped before its last evaluation (2 epochs x 2)
    assert "best: trial" in again.stdout and "train it with: texttune train" in again.stdout

    best = tmp_path / "tune" / "best.yaml"
    text = best.read_text()
    assert text.startswith(f"# texttune tune: trial {study.best_trial.number} of the study 'regression'")
    resolved = yaml.safe_load(text)
    assert resolved["tune"]["space"] == {} and resolved["output"]["dir"] == str(tmp_path / "tune" / "best")
    assert resolved["data"]["split_seed"] == resolved["training"]["seed"]  # the trials' split, pinned
    for key, value in study.best_params.items():
        section, name = key.split(".")
        assert resolved[section][name] == value
    trained = _cli(best, "train")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads(trained.stdout)["valid"]["mcrmse"] == pytest.approx(study.best_value, rel=1e-6)
    for name in ("trials.csv", "optimization_history.png", "param_importances.png", "tune.json"):
        assert (tmp_path / "tune" / name).is_file(), name

    again = _cli(recipe, "tune", "--trials", "6")  # nothing missing: no trial runs
    assert again.returncode == 0 and len(optuna.load_study(study_name="regression", storage=storage).trials) == 7


def test_trials_are_tracked_runs_nested_in_the_study_run(write_recipe, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = load_recipe(
        _tune_recipe(write_recipe, tmp_path, pruner="none"),
        ["tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.name=tiny"],
    )
    result = tune(recipe, trials=2)
    assert len(result.trials) == 2 and result.best_recipe.is_file()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("texttune").experiment_id])
    (study_run,) = [run for run in runs if run.data.tags.get("texttune.kind") == "tune"]
    trials = [run for run in runs if run.data.tags.get("texttune.kind") == "trial"]
    assert len(trials) == 2 and all(run.data.tags["mlflow.parentRunId"] == study_run.info.run_id for run in trials)
    assert study_run.data.metrics["best_mcrmse"] == pytest.approx(result.best_value)
    assert {"best.yaml", "optimization_history.png"} <= {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert not client.search_registered_models()  # trials register no model versions


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "tune.space is empty"),
        ({"training.learning_rat": {"low": 1e-5, "high": 1e-3}}, "unknown key 'training.learning_rat'; did you mean"),
        ({"training.learning_rate": {"low": 1e-3, "high": 1e-5}}, "must be below high"),
        ({"output.dir": ["a", "b"]}, "search keys are section.key of data, task, model, training or cv"),
    ],
)
def test_a_bad_search_space_is_a_one_line_error(write_recipe, tmp_path: Path, capsys, space, message) -> None:
    recipe = _tune_recipe(write_recipe, tmp_path, space=space)
    assert main(["-q", "tune", str(recipe), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tune").exists()


def test_a_cv_objective_scores_trials_out_of_fold(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(_tune_recipe(write_recipe, tmp_path, pruner="none", folds=2))
    result = tune(recipe, trials=2, cv=True)
    study = optuna.load_study(study_name="regression", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)  # one report per fold
    assert "out of fold" in result.best_recipe.read_text().splitlines()[0]
    with pytest.raises(TexttuneError, match="made by another recipe, search space or objective"):
        tune(recipe, trials=3)  # the same study with a split objective: refused, never mixed


def test_only_trials_of_dead_processes_of_this_machine_are_failed_and_retried(tmp_path: Path) -> None:
    from texttune.tune import _recover

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid, host in ((os.getpid(), None), (int(dead.stdout), None), (int(dead.stdout), "another-machine")):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        worker = {"host": host or socket.gethostname(), "pid": pid}
        trial.set_user_attr("texttune.worker", worker)
    _recover(study, storage)
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["RUNNING", "FAIL", "RUNNING"]  # alive; dead here; another machine's (its heartbeat's job)
    queued = study.trials[3]  # the dead one's values, to be tried again first
    assert states[3] == "WAITING" and queued.system_attrs["fixed_params"] == study.trials[1].params


def test_a_staged_trial_is_pruned_only_in_its_last_stage() -> None:
    from texttune.tune import _Reporter

    class Trial:  # a pruner that always says prune
        def __init__(self) -> None:
            self.reports: list[tuple[int, float]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((step, value))

        def should_prune(self) -> bool:
            return True

    trial = Trial()
    reporter = _Reporter(trial, "accuracy", stages=2)
    reporter.on_train_begin(None, None, None)  # stage 1: the head alone
    reporter.on_evaluate(None, None, None, metrics={"eval_accuracy": 0.3})
    reporter.on_evaluate(None, None, None, metrics={"eval_loss": 1.0})  # no metric: nothing reported
    reporter.on_train_begin(None, None, None)  # stage 2: its evaluations can stop the trial
    with pytest.raises(optuna.TrialPruned):
        reporter.on_evaluate(None, None, None, metrics={"eval_accuracy": 0.4})
    assert trial.reports == [(0, 0.3), (1, 0.4)]
