"""Cross-validation: OOF coverage, report, resume after a crash, refusing another recipe, fold ensembles."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import texttune
import texttune.cv
from texttune import Predictor, load_recipe
from texttune.cli.main import main
from texttune.cv import run_cv
from texttune.errors import TexttuneError


def _recipe(write_recipe, tmp_path: Path, run: str, *overrides: str):
    path = write_recipe("regression", rows=60, training={"epochs": 2}, cv={"folds": 3})
    return load_recipe(path, [f"output.dir={tmp_path / run}", *overrides])


def _metrics(report: dict) -> dict:
    return {"oof": report["oof"], "per_fold": report["per_fold"]}


def test_oof_covers_every_row_once_and_the_run_predicts_as_an_ensemble(write_recipe, tmp_path: Path, capsys) -> None:
    recipe = _recipe(write_recipe, tmp_path, "run")
    result = run_cv(recipe)
    run = result.run
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert oof["row"].tolist() == list(range(60))
    assert sorted(oof["fold"].unique().tolist()) == [0, 1, 2]
    assert {"id", "warmth", "gloom", "pred_warmth", "pred_gloom"} <= set(oof.columns)
    report = json.loads((run / "cv_report.json").read_text())
    assert report["rows"] == 60 and len(report["per_fold"]) == 3
    assert report["fold_mean"] == pytest.approx(np.mean([f["mcrmse"] for f in report["per_fold"]]))
    for fold in report["per_fold"]:  # each fold's OOF metrics are its bundle's kept validation metrics
        kept = json.loads((run / f"fold-{fold['fold']}" / "metrics.json").read_text())["valid"]
        assert fold["mcrmse"] == pytest.approx(kept["mcrmse"], abs=1e-5)
    assert (run / "oof_predicted_vs_true.png").read_bytes().startswith(b"\x89PNG")
    ensemble = Predictor.load(run)
    texts = ["good great film", "awful dull plot"]
    members = [Predictor.load(run / f"fold-{k}").predict_outputs(texts) for k in range(3)]
    np.testing.assert_allclose(ensemble.predict_outputs(texts), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
    assert (
        main(["-q", "predict", str(run), "--input", str(recipe.data.train), "--output", str(tmp_path / "s.csv")]) == 0
    )
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 61


def test_resume_after_a_crash_in_fold_2_gives_the_same_report(write_recipe, tmp_path: Path, monkeypatch) -> None:
    clean = run_cv(_recipe(write_recipe, tmp_path, "clean")).report
    recipe = _recipe(write_recipe, tmp_path, "crashed")
    original = texttune.cv.train

    def crash_in_fold_2(fold_recipe, tables, **kwargs):
        if fold_recipe.output.dir.name == "fold-2":
            raise KeyboardInterrupt  # killed while training fold 2
        return original(fold_recipe, tables, **kwargs)

    monkeypatch.setattr(texttune.cv, "train", crash_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        run_cv(recipe)
    assert not (recipe.output.dir / "fold-2").exists() and (recipe.output.dir / "fold-1" / "texttune.json").is_file()
    trained = []
    monkeypatch.setattr(
        texttune.cv, "train", lambda r, t, **k: trained.append(r.output.dir.name) or original(r, t, **k)
    )
    resumed = run_cv(recipe).report
    assert trained == ["fold-2"]  # complete folds are skipped
    assert _metrics(resumed) == _metrics(clean)


def test_another_recipe_is_refused_unless_forced(write_recipe, tmp_path: Path, capsys) -> None:
    run_cv(_recipe(write_recipe, tmp_path, "run"))
    changed = _recipe(write_recipe, tmp_path, "run", "training.learning_rate=0.001")
    with pytest.raises(TexttuneError, match=r"changed: training.learning_rate.*--force"):
        run_cv(changed)
    assert json.loads((changed.output.dir / "cv_run.json").read_text())["settings"]["training.learning_rate"] != 1e-3
    result = run_cv(changed, force=True)
    with pytest.raises(TexttuneError, match="is a file"):
        run_cv(_recipe(write_recipe, tmp_path, "run/cv_report.json"))
    assert json.loads((result.run / "cv_run.json").read_text())["settings"]["training.learning_rate"] == 1e-3


def test_an_ensemble_of_identical_folds_equals_one_fold(write_recipe, tmp_path: Path) -> None:
    for task in ("classification", "regression"):
        recipe = load_recipe(write_recipe(task, rows=40, training={"epochs": 1}), [f"output.dir={tmp_path / task}"])
        bundle = texttune.train(recipe).bundle
        run = tmp_path / f"{task}-run"
        for k in range(3):
            shutil.copytree(bundle, run / f"fold-{k}")
        manifest = {"format_version": 1, "members": ["fold-0", "fold-1", "fold-2"], "weights": [1, 2, 3]}
        (run / "texttune-ensemble.json").write_text(json.dumps(manifest))
        texts = ["good great film", "awful dull plot", "the movie was fine"]
        single, ensemble = Predictor.load(bundle).predict(texts), Predictor.load(run).predict(texts)
        np.testing.assert_allclose(ensemble.select_dtypes("number"), single.select_dtypes("number"), atol=1e-6)
        assert ensemble.drop(columns=ensemble.select_dtypes("number").columns).equals(
            single.drop(columns=single.select_dtypes("number").columns)
        )


def test_labels_and_ids_survive_the_oof_round_trip(write_recipe, tmp_path: Path) -> None:
    path = write_recipe("classification", rows=45, training={"epochs": 1}, cv={"folds": 3})
    table = Path(load_recipe(path).data.train)
    frame = pd.read_csv(table, dtype=str)
    frame["label"] = frame["label"].map({"pos": "007", "neg": "1.0", "mixed": "true"})
    frame["id"] = [f"00{i}" for i in range(len(frame))]
    frame.to_csv(table, index=False)
    result = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'run'}"]))
    oof = pd.read_csv(result.run / "oof.csv", dtype=str, keep_default_na=False)
    assert set(oof["label"]) == {"007", "1.0", "true"} and oof["id"].tolist() == frame["id"].tolist()
    assert sum(map(sum, result.report["confusion_matrix"]["counts"])) == 45


def test_force_keeps_a_matching_run_and_leftovers_are_swept(write_recipe, tmp_path: Path, monkeypatch) -> None:
    recipe = _recipe(write_recipe, tmp_path, "run")
    first = run_cv(recipe).report
    (recipe.output.dir / ".tmp-1234abcd-cv_run.json").write_text("{")  # a write killed half-way
    (recipe.output.dir / ".fold-1.tmp-5678abcd").mkdir()
    monkeypatch.setattr(texttune.cv, "train", lambda *a: pytest.fail("a complete fold was trained again"))
    assert _metrics(run_cv(recipe, force=True).report) == _metrics(first)
    assert not list(recipe.output.dir.glob(".*"))


def test_a_folder_that_is_not_a_run_is_refused_untouched(write_recipe, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "project"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".env").write_text("TOKEN=1\n")
    (folder / "notes.txt").write_text("mine\n")
    path = write_recipe("regression", rows=30, cv={"folds": 2})
    assert main(["-q", "cv", str(path), "--set", f"output.dir={folder}"]) == 2
    assert "is not a texttune cv run (it holds .env, .git, notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == [".env", ".git", "notes.txt"]
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_a_run_stopped_by_bad_data_does_not_hold_its_folder(write_recipe, tmp_path: Path) -> None:
    path = write_recipe("regression", rows=30, cv={"folds": 2})
    table = Path(load_recipe(path).data.train)
    good = table.read_text()
    frame = pd.read_csv(table, dtype=str).assign(fold="0")  # fold 1 has no rows
    frame.to_csv(table, index=False)
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'run'}", "training.epochs=1"])
    with pytest.raises(TexttuneError, match="has no rows for fold"):
        run_cv(recipe)
    assert not (tmp_path / "run").exists()
    table.write_text(good)
    # a run whose data changed before any fold finished starts over without --force
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cv_run.json").write_text(json.dumps({"settings": {}, "data_sha256": "old"}))
    assert run_cv(recipe).report["folds"] == 2


def _fold_jobs(recipe_path: Path, run: Path, *arguments: str) -> list[str]:
    return ["-q", "cv", str(recipe_path), "--set", f"output.dir={run}", *arguments]


def test_fold_jobs_then_collect_equal_a_sequential_run(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("regression", rows=40, training={"epochs": 2}, cv={"folds": 2})
    sequential = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'sequential'}"]))
    run = tmp_path / "jobs"
    assert main(_fold_jobs(path, run, "--fold", "1")) == 0  # in any order, as a job array runs them
    assert main(_fold_jobs(path, run, "--collect")) == 2
    assert "fold 0 of 2 not complete yet; train each with texttune cv RECIPE --fold K" in capsys.readouterr().err
    assert not (run / "cv_report.json").exists()
    assert main(_fold_jobs(path, run, "--fold", "0")) == 0
    assert main(_fold_jobs(path, run, "--fold", "2")) == 2
    assert "--fold 2: the recipe has cv.folds 2; choose 0..1" in capsys.readouterr().err
    assert main(_fold_jobs(path, run, "--collect")) == 0

    collected = json.loads((run / "cv_report.json").read_text())
    assert _metrics(collected) == _metrics(sequential.report)
    pd.testing.assert_frame_equal(pd.read_csv(run / "oof.csv"), pd.read_csv(sequential.run / "oof.csv"))
    texts = ["good great film", "awful dull plot", "fine"]
    np.testing.assert_array_equal(
        Predictor.load(run).predict_outputs(texts), Predictor.load(sequential.run).predict_outputs(texts)
    )
    assert not list(run.glob("*.claim")) and not list(run.glob(".*"))


def test_a_fold_another_job_holds_is_refused_and_a_race_leaves_it_intact(write_recipe, tmp_path: Path, capsys):
    path = write_recipe("regression", rows=40, training={"epochs": 1}, cv={"folds": 2})
    run = tmp_path / "run"
    from texttune._io import exclusive_claim

    with exclusive_claim(run / "fold-0", "fold 0"):  # a live job of this machine (this process) holds it
        assert main(_fold_jobs(path, run, "--fold", "0")) == 2
        holder = f"is being trained by {socket.gethostname()} pid {os.getpid()}"
        assert f"fold 0 of {run} {holder}" in capsys.readouterr().err
        assert main(_fold_jobs(path, run, "--collect")) == 2
        assert f"fold 0 {holder}" in capsys.readouterr().err
    assert not (run / "fold-0").exists()

    # a claim left by a killed job of this machine is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "earlier"}
    (run / "fold-1.claim").write_text(json.dumps(claim))
    assert main(_fold_jobs(path, run, "--fold", "1")) == 0
    # one of another machine cannot be checked from here: refused, with how to clear it
    (run / "fold-0.claim").write_text(json.dumps({**claim, "host": "elsewhere", "pid": 1}))
    assert main(_fold_jobs(path, run, "--fold", "0")) == 2
    assert "being trained by elsewhere pid 1 since earlier" in capsys.readouterr().err
    (run / "fold-0.claim").unlink()

    # two jobs racing on one fold: one trains it, the other says it is taken (or finds it complete)
    command = [sys.executable, "-m", "texttune", *_fold_jobs(path, run, "--fold", "0")]
    racers = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path) for _ in range(2)]
    outcomes = [(racer.wait(timeout=300), racer.stderr.read()) for racer in racers]
    assert 0 in [code for code, _ in outcomes]
    for code, err in outcomes:
        assert code == 0 or (code == 2 and "is being trained by" in err), err
    assert main(_fold_jobs(path, run, "--collect")) == 0
    reference = tmp_path / "reference"  # the same fold trained alone, by the same command
    alone = [sys.executable, "-m", "texttune", *_fold_jobs(path, reference, "--fold", "0")]
    assert subprocess.run(alone, capture_output=True, cwd=tmp_path, timeout=300).returncode == 0
    for name in ("valid_predictions.csv", "model.safetensors"):
        assert (run / "fold-0" / name).read_bytes() == (reference / "fold-0" / name).read_bytes(), name


def test_force_goes_with_neither_fold_nor_collect(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("regression", rows=30, cv={"folds": 2})
    for split in (["--fold", "0"], ["--collect"]):
        assert main(_fold_jobs(path, tmp_path / "run", *split, "--force")) == 2
        assert "--force discards a run; it goes with neither --fold nor --collect" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_post_processing_fitted_on_oof_is_reported_stored_and_applied_unless_raw(write_recipe, tmp_path: Path, capsys):
    from texttune.postprocess import PostProcessing, Temperature, softmax

    recipe = _recipe(write_recipe, tmp_path, "run")
    result = run_cv(recipe)
    fitted = result.report["postprocess"]
    assert set(fitted["before"]) == set(fitted["cross_fitted"]) == {"warmth", "gloom"}
    manifest = json.loads((result.run / "texttune-ensemble.json").read_text())
    assert manifest["postprocess"] == fitted["steps"]
    texts = ["good great film", "awful dull plot", "fine"]
    raw, fitted_predictor = Predictor.load(result.run, raw=True), Predictor.load(result.run)
    outputs = raw.predict_outputs(texts)
    steps = PostProcessing.from_list(fitted["steps"]).steps
    np.testing.assert_allclose(fitted_predictor.predict(texts), raw.info.postprocess.with_fitted(steps).apply(outputs))

    # a temperature goes before softmax, and `predict --raw` leaves it out
    classes = load_recipe(write_recipe("classification", rows=40, training={"epochs": 1}, cv={"folds": 2}))
    run = run_cv(classes.model_copy(update={"output": classes.output.model_copy(update={"dir": tmp_path / "c"})})).run
    manifest = json.loads((run / "texttune-ensemble.json").read_text())
    manifest["postprocess"] = PostProcessing((Temperature(2.0),)).to_list()
    (run / "texttune-ensemble.json").write_text(json.dumps(manifest))
    # each fold's logits are divided before the folds' probabilities are averaged, as the temperature was fitted
    members = np.stack([Predictor.load(run / f"fold-{k}").predict_outputs(texts) for k in range(2)])
    tempered, plain = softmax(members / 2.0).mean(axis=0), softmax(members).mean(axis=0)
    predictor = Predictor.load(run)
    assert predictor.card()["temperature"] == 2.0
    np.testing.assert_allclose(predictor.predict(texts).filter(like="prob_").to_numpy(), tempered, rtol=1e-5)
    for flags, expected in (([], tempered), (["--raw"], plain)):
        capsys.readouterr()
        assert main(["-q", "predict", str(run), "--text", texts[0], *flags]) == 0
        shown = json.loads(capsys.readouterr().out)["probabilities"]
        np.testing.assert_allclose(list(shown.values()), expected[0], rtol=1e-5)

    # --probabilities writes them into the submission; --class-prior moves them to a known test prior
    table = tmp_path / "test.csv"
    pd.DataFrame({"id": ["x", "y", "z"], "text": texts}).to_csv(table, index=False)
    labels = list(predictor.task.labels)
    counts = np.asarray(json.loads((run / "cv_report.json").read_text())["confusion_matrix"]["counts"]).sum(axis=1)
    prior = {label: 0.8 if index == 0 else 0.2 / (len(labels) - 1) for index, label in enumerate(labels)}
    shares = ",".join(f"{label}={share}" for label, share in prior.items())
    for flags, name in (([], "plain.csv"), (["--class-prior", shares], "moved.csv")):
        submission = ["--input", str(table), "--output", str(tmp_path / name), "--probabilities"]
        assert main(["-q", "predict", str(run), *submission, *flags]) == 0
    plain_table, moved_table = (pd.read_csv(tmp_path / name) for name in ("plain.csv", "moved.csv"))
    columns = [f"prob_{label}" for label in labels]
    assert list(plain_table.columns) == ["id", "label", *columns] and plain_table["id"].tolist() == ["x", "y", "z"]
    np.testing.assert_allclose(plain_table[columns].to_numpy(), tempered, rtol=1e-5)
    moved = tempered * np.array(list(prior.values())) / (counts / counts.sum())  # Bayes' rule for a label shift
    np.testing.assert_allclose(moved_table[columns].to_numpy(), moved / moved.sum(axis=1, keepdims=True), rtol=1e-5)
    assert Predictor.load(run, class_prior=prior).card()["class_prior"] == prior
    refused = {
        "unknown labels ['nope']": [str(run), "--class-prior", f"{shares},nope=0.1"],
        "needs the training rows' class counts": [str(run / "fold-0"), "--class-prior", shares],
        "every share must be positive": [str(run), "--class-prior", shares.replace("=0.8", "=0")],
    }
    for message, arguments in refused.items():
        assert main(["-q", "predict", *arguments, "--text", "fine"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):  # argparse's usage, then its one-line error
        main(["-q", "predict", str(run), "--class-prior", "half", "--text", "fine"])
    assert "--class-prior: expected LABEL=SHARE,... (e.g. neg=0.7,pos=0.3), got 'half'" in capsys.readouterr().err


def test_a_report_that_fails_leaves_a_complete_run(write_recipe, tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args):
        raise ValueError("empty vocabulary")

    monkeypatch.setattr(texttune.cv, "write_report", broken)
    recipe = load_recipe(write_recipe("regression", rows=30, training={"epochs": 1}, cv={"folds": 2}))
    run = run_cv(recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": tmp_path / "r"})})).run
    assert "report.html not written (ValueError: empty vocabulary); the run is complete" in caplog.text
    assert not (run / "report.html").exists() and len(Predictor.load(run).predict(["fine"])) == 1


def test_refit_trains_every_row_for_the_epochs_the_folds_chose(write_recipe, tmp_path: Path, capsys) -> None:
    stages = [{"unfreeze": 1, "epochs": 1, "lr": 3e-3}, {"unfreeze": "all", "epochs": 3}]
    path = write_recipe("regression", rows=45, training={"stages": stages, "evals_per_epoch": 2}, cv={"folds": 3})
    run = tmp_path / "run"
    assert main(["-q", "cv", str(path), "--set", f"output.dir={run}", "--refit"]) == 0
    assert f"full-data model in {run / 'full'}" in capsys.readouterr().out
    chosen = [json.loads((run / f"fold-{k}" / "metrics.json").read_text())["valid"]["epoch"] for k in range(3)]
    full = load_recipe(run / "full" / "recipe.yaml")
    assert full.data.valid_fraction == 0 and full.data.valid is None
    cut = load_recipe(path).training.cut_at(round(float(np.mean(chosen)), 3))  # the stages cut where folds chose
    assert full.training.stages == cut.stages  # (tests/test_config.py checks the cutting itself)
    report = json.loads((run / "full" / "metrics.json").read_text())
    assert report["train_rows"] == 45 and report["full_data"] is True
    assert len(Predictor.load(run).runners) == 3 and len(Predictor.load(run / "full").runners) == 1
    assert main(["-q", "cv", str(path), "--set", f"output.dir={run}"]) == 0  # the refit is part of the run
    assert main(["-q", "cv", str(path), "--set", f"output.dir={run}", "--fold", "0", "--refit"]) == 2
    assert "--refit follows a whole run of one seed" in capsys.readouterr().err
    mine = tmp_path / "mine"  # a folder named full that texttune did not write is never taken for a refit
    (mine / "full").mkdir(parents=True)
    (mine / "full" / "notes.txt").write_text("keep")
    assert main(["-q", "cv", str(path), "--set", f"output.dir={mine}", "--force"]) == 2
    assert "is not a texttune cv run (it holds full)" in capsys.readouterr().err
    assert (mine / "full" / "notes.txt").read_text() == "keep"
