"""End to end on a tiny BERT: train, keep the best checkpoint, write the bundle, reload, predict in order."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import recompute_valid_metrics
from texttune import Predictor, load_recipe, train
from texttune.cli.main import main
from texttune.models import create_loss


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path):
    from texttune.testing import synthetic_table

    root = tmp_path_factory.mktemp("cls")
    synthetic_table(120, "classification").to_csv(root / "train.csv", index=False)
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"data: {{train: {root / 'train.csv'}, text_columns: text, target_columns: label, id_column: id}}\n"
        f"model: {{backbone: {tiny_backbone}, max_length: 32}}\n"
        "training: {epochs: 6, batch_size: 8, learning_rate: 3.0e-3, warmup_ratio: 0, precision: fp32,"
        " evals_per_epoch: 2}\n"
        f"output: {{dir: {root / 'bundle'}}}\n"
    )
    return root, train(load_recipe(recipe))


def test_bundle_files_and_best_checkpoint(classification_run) -> None:
    root, result = classification_run
    names = {p.name for p in result.bundle.iterdir()}
    assert {"model.safetensors", "texttune.json", "metrics.json", "recipe.yaml", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names), "no pickles in a bundle"
    info = json.loads((result.bundle / "texttune.json").read_text())
    assert info["task"]["labels"] == ["mixed", "neg", "pos"]
    assert info["backbone_config"]["model_type"] == "bert"
    # No checkpoint folders or staging directories are left next to the bundle.
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".") or "checkpoint" in p.name]
    assert leftovers == []
    metrics = json.loads((result.bundle / "metrics.json").read_text())
    # The kept checkpoint is the best evaluation of the run, and it is the one reported.
    history = metrics["history"]
    assert len(history) == 12  # 6 epochs x 2 evaluations
    assert result.metrics["accuracy"] == max(h["accuracy"] for h in history)
    assert metrics["valid"]["step"] == next(h["step"] for h in history if h["accuracy"] == result.metrics["accuracy"])
    assert set(result.metrics) >= {"accuracy", "error_rate", "f1_macro"}
    # The tiny model learns the synthetic rule better than the majority class.
    assert result.metrics["accuracy"] > result.baseline["accuracy"]


def test_reloaded_bundle_predicts_the_same_as_the_kept_checkpoint(classification_run) -> None:
    root, result = classification_run
    recipe = load_recipe(root / "recipe.yaml")
    recomputed, _, _ = recompute_valid_metrics(recipe, result.bundle)
    assert recomputed == pytest.approx({k: result.metrics[k] for k in ("accuracy", "error_rate", "f1_macro")})
    frame = pd.read_csv(root / "train.csv", dtype=str)
    first = Predictor.load(result.bundle).predict(frame["text"].tolist())
    second = Predictor.load(result.bundle).predict(frame["text"].tolist())
    pd.testing.assert_frame_equal(first, second)
    assert set(first["label"]) <= {"mixed", "neg", "pos"}
    probabilities = first.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_cli_predict_keeps_shuffled_order_and_equals_python(classification_run, capsys) -> None:
    root, result = classification_run
    frame = pd.read_csv(root / "train.csv", dtype=str).sample(frac=1.0, random_state=3)
    frame.to_csv(root / "shuffled.csv", index=False)
    output = root / "out" / "submission.csv"
    assert (
        main(["-q", "predict", str(result.bundle), "--input", str(root / "shuffled.csv"), "--output", str(output)])
        == 0
    )
    submission = pd.read_csv(output, dtype=str)
    assert list(submission.columns) == ["id", "label"]
    assert submission["id"].tolist() == frame["id"].tolist()
    # one text at a time: no sorting, so a broken order restoration cannot agree with it by construction
    one_by_one = Predictor.load(result.bundle, batch_size=1)
    expected = [one_by_one.predict([text])["label"][0] for text in frame["text"]]
    assert submission["label"].tolist() == expected
    assert Predictor.load(result.bundle).predict(frame["text"].tolist())["label"].tolist() == expected
    assert [p.name for p in output.parent.iterdir()] == ["submission.csv"]


def test_predict_one_text_prints_json(classification_run, capsys) -> None:
    _, result = classification_run
    assert main(["-q", "predict", str(result.bundle), "--text", "good great film"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["label"] in {"mixed", "neg", "pos"}
    assert answer["index"] == ["mixed", "neg", "pos"].index(answer["label"])
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0)


def test_regression_end_to_end(write_recipe, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe("regression", rows=120), ["training.epochs=6", "task.loss=mse"])
    result = train(recipe)
    assert set(result.metrics) >= {"mcrmse", "rmse_warmth", "rmse_gloom"}
    assert result.metrics["mcrmse"] < result.baseline["mcrmse"]
    assert result.metrics["mcrmse"] == pytest.approx(
        np.mean([result.metrics["rmse_warmth"], result.metrics["rmse_gloom"]])
    )
    info = json.loads((result.bundle / "texttune.json").read_text())
    assert info["task"]["kind"] == "regression" and info["task"]["target_columns"] == ["warmth", "gloom"]
    predictor = Predictor.load(result.bundle)
    scores = predictor.predict(["good great fine", "bad awful", "the film"])
    assert list(scores.columns) == ["warmth", "gloom"]
    low, high = np.array(info["task"]["target_min"]), np.array(info["task"]["target_max"])
    assert ((scores.to_numpy() >= low) & (scores.to_numpy() <= high)).all(), "outputs clipped to the training range"
    one = predictor.predict_text("good great fine")
    assert one["scores"] == pytest.approx(scores.iloc[0].to_dict())
    # A second run with the same seed reproduces the metrics.
    again = train(recipe)
    assert again.metrics["mcrmse"] == pytest.approx(result.metrics["mcrmse"], rel=1e-5)


def test_separate_validation_file_and_unseen_label(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("classification", rows=40)
    valid = tmp_path / "valid.csv"
    valid.write_text("id,text,label\nv1,good film,pos\nv2,bad film,terrible\n")
    assert main(["-q", "train", str(path), "--set", f"data.valid={valid}"]) == 2
    assert "row 2 has label 'terrible' in 'label', unseen in training; known labels: mixed, neg, pos" in (
        capsys.readouterr().err
    )


def test_bad_bundle_and_bad_batch_size(tmp_path: Path, capsys) -> None:
    assert main(["-q", "predict", str(tmp_path), "--text", "x"]) == 2
    assert "not a texttune model bundle (missing texttune.json, model.safetensors)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path), "--text", "x", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_compressed_submission(classification_run) -> None:
    root, result = classification_run
    output = root / "gz" / "submission.csv.gz"
    Predictor.load(result.bundle).predict_file(root / "train.csv", output)
    assert gzip.decompress(output.read_bytes()).startswith(b"id,label\n")


def test_max_length_beyond_the_position_table(write_recipe, capsys) -> None:
    assert main(["-q", "train", str(write_recipe()), "--set", "model.max_length=600"]) == 2
    assert "model.max_length 600 is longer than bert supports (512); set model.max_length to 512 or less" in (
        capsys.readouterr().err
    )


def test_a_separate_validation_file_keeps_the_statistics_as_read(write_recipe, tmp_path: Path) -> None:
    """With data.valid the whole table trains and its range and mean come from the values as written (float64),
    as format-1 releases computed them: 4.99 stays 4.99, not float32's 4.989999771."""
    path = write_recipe("regression", rows=40)
    recipe = load_recipe(path)
    table = pd.read_csv(recipe.data.train)
    table.loc[0, "warmth"] = 4.99
    table.to_csv(recipe.data.train, index=False)
    table.head(10).to_csv(tmp_path / "valid.csv", index=False)
    result = train(load_recipe(path, [f"data.valid={tmp_path / 'valid.csv'}", "training.epochs=1"]))
    info = json.loads((result.bundle / "texttune.json").read_text())
    assert info["task"]["target_max"][0] == 4.99 and info["postprocess"][0]["high"][0] == 4.99
    assert info["task"]["target_mean"] == pytest.approx(table[["warmth", "gloom"]].mean().tolist(), abs=1e-12)


def test_validation_predictions_are_the_kept_evaluations_own(write_recipe, monkeypatch) -> None:
    """The bundle's valid_predictions.csv comes from the kept evaluation itself, not from a second pass."""
    from texttune.metrics import regression_metrics

    recipe = load_recipe(write_recipe("regression", rows=100), ["training.evals_per_epoch=2"])

    def second_pass(*args, **kwargs):
        raise AssertionError("a second pass over the validation set")

    monkeypatch.setattr(Predictor, "outputs_of", second_pass)
    result = train(recipe)
    monkeypatch.undo()
    saved = pd.read_csv(result.bundle / "valid_predictions.csv")  # in the order of the validation rows
    targets = ["warmth", "gloom"]
    scored = regression_metrics(saved[[f"pred_{t}" for t in targets]].to_numpy(), saved[targets].to_numpy(), targets)
    assert scored["mcrmse"] == pytest.approx(result.metrics["mcrmse"], abs=1e-6)  # what was scored is what is saved
    assert len(json.loads((result.bundle / "metrics.json").read_text())["history"]) == 8  # 4 epochs x 2
    # the reported loss is the loss over the whole set, whatever the evaluation batches were
    whole = create_loss(recipe.task, Predictor.load(result.bundle).task)(
        torch.as_tensor(saved[[f"raw_{t}" for t in targets]].to_numpy(np.float32)),
        torch.as_tensor(saved[targets].to_numpy(np.float32)),
    )
    assert float(whole) == pytest.approx(result.metrics["loss"], abs=1e-5)
    _, outputs, _ = recompute_valid_metrics(recipe, result.bundle)  # and the bundle predicts it again
    np.testing.assert_allclose(saved[[f"raw_{t}" for t in targets]].to_numpy(), outputs, atol=1e-5)


def test_a_full_data_run_trains_on_every_row_without_evaluation(write_recipe, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    path = write_recipe("regression", rows=40, training={"epochs": 2})
    output = tmp_path / "full"
    assert main(["train", str(path), "--full", "--set", f"output.dir={output}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["valid"] == {} and printed["full_data"] is True and printed["baseline"] == {}
    assert "40 training rows, all of them (data.valid_fraction 0): no evaluation" in caplog.text
    report = json.loads((output / "metrics.json").read_text())
    assert report["train_rows"] == 40 and report["valid_rows"] == 0 and report["full_data"] is True
    assert report["history"] == [] and report["train_log"]  # trained, never evaluated
    assert not (output / "valid_predictions.csv").exists() and (output / "training_curves.png").is_file()
    scores = Predictor.load(output).predict(["good great film", "awful"])
    assert scores.shape == (2, 2) and np.isfinite(scores.to_numpy()).all()
    # every row trained: the same recipe with a 20% split trains on 32
    split = train(load_recipe(path, [f"output.dir={tmp_path / 'split'}"]))
    assert json.loads((split.bundle / "metrics.json").read_text())["train_rows"] == 32
    with_valid = ["--set", f"data.valid={path.parent / 'regression.csv'}", "--set", f"output.dir={tmp_path / 'x'}"]
    capsys.readouterr()
    assert main(["-q", "train", str(path), "--full", *with_valid]) == 2
    err = capsys.readouterr().err
    assert "valid_fraction 0 trains on every row of data.train" in err and len(err.strip().splitlines()) == 1


def test_training_seeds_are_averaged_like_folds_on_one_validation_split(write_recipe, tmp_path: Path, caplog) -> None:
    from texttune.postprocess import softmax

    caplog.set_level(logging.INFO)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = ["tracking.backend=mlflow", f"tracking.uri={uri}", "tracking.name=seeds", f"output.dir={tmp_path / 's'}"]
    recipe = load_recipe(write_recipe("classification", rows=50, training={"epochs": 1, "seeds": [1, 2]}), tracked)
    result = train(recipe)
    members = [result.bundle / "seed-1", result.bundle / "seed-2"]
    assert [load_recipe(m / "recipe.yaml").training.seed for m in members] == [1, 2]
    tables = [pd.read_csv(m / "valid_predictions.csv") for m in members]
    assert tables[0]["row"].tolist() == tables[1]["row"].tolist()  # one validation split for every seed
    raw = np.stack([t.filter(like="raw_").to_numpy() for t in tables])
    averaged = softmax(raw).mean(axis=0)
    manifest = json.loads((result.bundle / "texttune-ensemble.json").read_text())
    assert manifest["members"] == ["seed-1", "seed-2"] and result.metrics == manifest["valid"]
    predictor = Predictor.load(result.bundle)
    names = list(predictor.task.labels)
    expected = (averaged.argmax(axis=1) == tables[0]["label"].map(names.index).to_numpy()).mean()
    assert manifest["valid"]["accuracy"] == pytest.approx(expected)  # the averaged probabilities' accuracy
    texts = ["good great film", "awful dull plot"]
    singles = np.stack([Predictor.load(m).predict(texts).filter(like="prob_").to_numpy() for m in members])
    np.testing.assert_allclose(predictor.predict(texts).filter(like="prob_").to_numpy(), singles.mean(0), rtol=1e-5)
    assert predictor.card()["score"]["kind"] == "validation (seeds averaged)"
    registered = Predictor.load("models:/seeds@latest", tracking_uri=uri)  # the seeds' ensemble, fetched seed by seed
    assert len(registered.runners) == 2
    pd.testing.assert_frame_equal(registered.predict(texts), predictor.predict(texts))
    caplog.clear()
    again = train(recipe)  # run again: both seeds complete, kept, and the ensemble registered all the same
    assert again.metrics == result.metrics and caplog.text.count("complete already, kept") == 2
    assert again.model_version is not None and result.model_version is not None
