"""Blends: weights fitted on out-of-fold predictions, refused across fold plans, and the blend as a predictor."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from texttune import Predictor, load_recipe
from texttune.blend import BlendPredictor, fit_weights
from texttune.cli.main import main
from texttune.cv import run_cv
from texttune.postprocess import PostProcessing

from .conftest import serving


def test_weights_favour_the_better_run_and_stay_on_the_simplex() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1, (400, 2))
    good, noisy = truth + rng.normal(0, 0.1, truth.shape), truth + rng.normal(0, 1.0, truth.shape)
    weights = fit_weights(np.stack([noisy, good]), truth, regression=True)  # (runs, targets)
    assert weights.shape == (2, 2) and np.allclose(weights.sum(axis=0), 1) and (weights >= 0).all()
    assert (weights[1] > 0.9).all()
    probabilities = np.full((2, 300, 3), 1 / 3)
    labels = rng.integers(0, 3, 300)
    probabilities[1, np.arange(300), labels] = 0.8  # a run that knows the answers
    probabilities[1] /= probabilities[1].sum(axis=1, keepdims=True)
    weights = fit_weights(probabilities, labels, regression=False)
    assert weights.shape == (2,) and weights[1] > 0.95 and np.isclose(weights.sum(), 1)


def test_a_blend_of_two_runs_predicts_and_other_fold_plans_are_refused(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("regression", rows=60, training={"epochs": 2}, cv={"folds": 3})
    runs = []
    for name, rate in (("a", "0.003"), ("b", "0.01")):
        recipe = load_recipe(path, [f"output.dir={tmp_path / name}", f"training.learning_rate={rate}"])
        runs.append(run_cv(recipe).run)
    assert main(["-q", "blend", *map(str, runs), "--output", str(tmp_path / "blend")]) == 0
    printed = capsys.readouterr().out
    assert "the blend's out-of-fold mcrmse" in printed and "predict with: texttune predict" in printed
    manifest = json.loads((tmp_path / "blend" / "texttune-blend.json").read_text())
    assert manifest["runs"] == ["../a", "../b"]  # relative: the tree moves as a whole
    weights = np.array(manifest["weights"])  # (runs, targets)
    assert weights.shape == (2, 2) and np.allclose(weights.sum(axis=0), 1)
    best_single = min(run["mcrmse"] for run in manifest["oof_runs"].values())
    assert manifest["oof"]["mcrmse"] <= best_single + 1e-9  # the weights could have picked either run alone
    assert set(manifest["oof_cross_fitted"]) == set(manifest["oof"])  # the honest figure, beside it

    texts = ["good great film", "awful dull plot", "fine"]
    blended = Predictor.load(tmp_path / "blend")
    assert isinstance(blended, BlendPredictor)
    members = [Predictor.load(run, raw=True) for run in runs]
    scores = np.stack([m.info.postprocess.apply(m.predict_outputs(texts)) for m in members])  # (runs, N, T)
    mixed = np.einsum("rt,rnt->nt", weights, scores)
    steps = PostProcessing.from_list(manifest["postprocess"])
    np.testing.assert_allclose(blended.predict(texts).to_numpy(), steps.apply(mixed), rtol=1e-6)
    table = tmp_path / "test.csv"
    pd.DataFrame({"id": ["x", "y", "z"], "text": texts}).to_csv(table, index=False)
    out = tmp_path / "submission.csv"
    assert main(["-q", "predict", str(tmp_path / "blend"), "--input", str(table), "--output", str(out)]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["x", "y", "z"]
    with pytest.raises(SystemExit):
        main(
            ["-q", "predict", str(tmp_path / "blend"), "--input", str(table), "--output", str(out), "--probabilities"]
        )
    assert "--probabilities is for classification models" in capsys.readouterr().err

    with serving(blended) as url:  # every run tokenizes each request; the runs' mixed scores come back
        served = httpx.post(f"{url}/predict", json={"texts": texts}).json()["predictions"]
        card = httpx.get(f"{url}/info").json()
    scores = np.array([[p["scores"][t] for t in blended.task.target_columns] for p in served])
    np.testing.assert_allclose(scores, blended.predict(texts).to_numpy(), rtol=0, atol=1e-6)
    assert card["runs"] == 2 and card["members"] == 6 and card["score"]["kind"] == "blend (out of fold)"
    assert main(["-q", "blend", str(runs[0]), str(runs[0]), "--output", str(tmp_path / "twice")]) == 2
    assert "a run is named twice" in capsys.readouterr().err
    other = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'c'}", "training.seed=7"])).run
    assert main(["-q", "blend", str(runs[0]), str(other), "--output", str(tmp_path / "bad")]) == 2
    assert "have different fold plans (folds.csv)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["-q", "blend", *map(str, runs), "--output", str(tmp_path / "mine")]) == 2
    assert "exists and is not a texttune blend" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_blend_of_tracked_runs_is_registered_and_served_from_the_store(write_recipe, tmp_path: Path, capsys) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_recipe("classification", rows=40, training={"epochs": 1}, cv={"folds": 2})
    runs = []
    for name, rate in (("a", "0.003"), ("b", "0.01")):
        tracked = [
            "tracking.backend=mlflow",
            f"tracking.uri={store}",
            "tracking.name=mix",
            f"output.dir={tmp_path / name}",
        ]
        runs.append(run_cv(load_recipe(path, [*tracked, f"training.learning_rate={rate}"])).run)
    untracked = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'c'}", "training.learning_rate=0.02"])).run
    assert main(["-q", "blend", str(runs[0]), str(untracked), "--output", str(tmp_path / "no"), "--register"]) == 2
    assert "c: no registered version (registered.json" in capsys.readouterr().err
    assert main(["-q", "blend", *map(str, runs), "--output", str(tmp_path / "blend"), "--register"]) == 0
    assert "registered as models:/mix/" in capsys.readouterr().out
    texts = ["good great film", "awful dull plot"]
    fetched = Predictor.load("models:/mix@latest", tracking_uri=store)  # run-0, run-1: each ensemble, folds and all
    assert isinstance(fetched, BlendPredictor) and fetched.card()["runs"] == 2
    pd.testing.assert_frame_equal(fetched.predict(texts), Predictor.load(tmp_path / "blend").predict(texts))


@pytest.mark.parametrize("arguments", [["only-one"], ["a", "b"]])
def test_bad_blend_inputs_are_one_line_errors(tmp_path: Path, capsys, arguments: list[str]) -> None:
    runs = [str(tmp_path / name) for name in arguments]
    assert main(["-q", "blend", *runs, "--output", str(tmp_path / "blend")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("texttune: error:") and len(err.strip().splitlines()) == 1


def test_cv_seeds_is_one_command_for_a_blend_of_seeds(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("classification", rows=45, training={"epochs": 1}, cv={"folds": 3, "seeds": [1, 2]})
    run, store = tmp_path / "seeds", f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = ["tracking.backend=mlflow", f"tracking.uri={store}", "tracking.name=seeds", f"output.dir={run}"]
    assert main(["-q", "cv", str(path), *(x for o in tracked for x in ("--set", o))]) == 0
    printed = capsys.readouterr().out
    assert "blend of 2 seeds accuracy" in printed and "  mean " in printed and "(seeds " in printed
    summary = json.loads((run / "seeds_report.json").read_text())
    assert summary["seeds"] == [1, 2] and len(summary["oof"]) == 2 and "accuracy" in summary["blend"]
    assert (run / "seed-1" / "folds.csv").read_text() == (run / "seed-2" / "folds.csv").read_text()  # one plan
    seeds = [load_recipe(run / f"seed-{s}" / "fold-0" / "recipe.yaml").training.seed for s in (1, 2)]
    assert seeds == [1, 2]
    manifest = json.loads((run / "texttune-blend.json").read_text())
    assert manifest["runs"] == ["seed-1", "seed-2"]
    predictor = Predictor.load(run)
    assert isinstance(predictor, BlendPredictor) and len(predictor.predict(["good film", "bad plot"])) == 2
    # registered: the blend's version names each seed's ensemble version, fetched folds and all
    registered = Predictor.load("models:/seeds@latest", tracking_uri=store)
    assert isinstance(registered, BlendPredictor) and registered.card()["members"] == 6
    texts = ["good film", "bad plot", "fine"]
    pd.testing.assert_frame_equal(registered.predict(texts), predictor.predict(texts))
    labels = list(registered.task.labels)  # a known test prior works on a registered blend too
    prior = {label: 1.0 + index for index, label in enumerate(labels)}
    moved = Predictor.load("models:/seeds@latest", tracking_uri=store, class_prior=prior).predict(texts)
    assert not np.allclose(moved.filter(like="prob_").to_numpy(), registered.predict(texts).filter(like="prob_"))
    best = Predictor.load("models:/seeds@best", tracking_uri=store)  # the blend, where its honest OOF beats them
    honest = manifest["oof_cross_fitted"]["accuracy"]
    assert isinstance(best, BlendPredictor) == (honest > max(summary["oof"]))
    assert main(["-q", "cv", str(path), "--set", f"output.dir={run}"]) == 0  # again: both runs resume, complete


def test_training_seeds_under_cv_are_cv_seeds_and_two_lists_must_agree(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("regression", rows=30, training={"epochs": 1, "seeds": [3, 4]}, cv={"folds": 2})
    result = run_cv(load_recipe(path, [f"output.dir={tmp_path / 'run'}"]))
    assert result.report["seeds"]["seeds"] == [3, 4] and isinstance(Predictor.load(result.run), BlendPredictor)
    assert main(["-q", "cv", str(path), "--set", "cv.seeds=[3, 5]"]) == 2
    assert "cv.seeds and training.seeds name different seeds" in capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[42], [42, 42]])
def test_cv_seeds_needs_two_distinct_seeds(write_recipe, seeds: list[int], capsys) -> None:
    path = write_recipe("classification", rows=30)
    assert main(["-q", "cv", str(path), "--set", f"cv.seeds={seeds}"]) == 2
    assert "cv.seeds: Value error, give two distinct seeds or more" in capsys.readouterr().err
