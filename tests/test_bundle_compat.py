"""Bundles of the first format (tests/data/v1, written by commit 8350ab7 with tests/data/make_v1_bundles.py) load
and predict what they predicted then; today's training reproduces their metrics from the same recipe and seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from texttune import Predictor, load_recipe, train
from texttune.cv import run_cv

FIXTURES = Path(__file__).parent / "data"
V1 = FIXTURES / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())
sys.path.insert(0, str(FIXTURES))
from make_v1_bundles import recipe_for, write_inputs  # noqa: E402


@pytest.mark.parametrize("name", ["classify", "regress-cv"])
def test_format_1_bundles_predict_what_they_predicted(name: str) -> None:
    predictor = Predictor.load(V1 / name)
    texts = EXPECTED["texts"]
    np.testing.assert_allclose(predictor.predict_outputs(texts), EXPECTED[name]["outputs"], rtol=1e-5, atol=1e-6)
    stored = EXPECTED[name]["predict"]
    expected = pd.DataFrame(stored["data"], columns=stored["columns"])
    predicted = predictor.predict(texts)
    assert list(predicted.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(predicted, expected, check_dtype=False, rtol=1e-5, atol=1e-6)


def test_format_1_regression_ensemble_still_clips_to_the_union_of_its_folds() -> None:
    predictor = Predictor.load(V1 / "regress-cv")
    low = np.min([json.loads((V1 / f"regress-cv/fold-{k}/texttune.json").read_text())["task"]["target_min"]
                  for k in (0, 1)], axis=0)  # fmt: skip
    (step,) = predictor.info.postprocess.steps
    assert step.name == "clip" and step.low == pytest.approx(tuple(low))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v1-inputs")
    write_inputs(root, backbone=V1 / "tiny-bert")
    return root


def _recipe(name: str, root: Path, output: Path):
    path = root / f"{name}.yaml"
    raw = recipe_for(name, root)
    raw["output"]["dir"] = str(output)
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def assert_same_rows(new: list[dict], old: list[dict], *keys: str) -> None:
    assert len(new) == len(old)
    for new_row, old_row in zip(new, old):
        assert [new_row[k] for k in keys] == [old_row[k] for k in keys]
        scores = {k: v for k, v in old_row.items() if k not in ("stage", "step", "epoch")}
        assert {k: new_row[k] for k in scores} == pytest.approx(scores, rel=1e-5, abs=1e-6)


def test_training_reproduces_the_format_1_metrics(inputs: Path, tmp_path: Path) -> None:
    result = train(_recipe("classify", inputs, tmp_path / "classify"))
    old = json.loads((V1 / "classify" / "metrics.json").read_text())
    new = json.loads((result.bundle / "metrics.json").read_text())
    assert_same_rows(new["history"], old["history"], "step")
    assert_same_rows(new["train_log"], old["train_log"], "step")
    assert new["valid"]["step"] == old["valid"]["step"]
    assert new["baseline"] == pytest.approx(old["baseline"])
    old_predictions = pd.read_csv(V1 / "classify" / "valid_predictions.csv", dtype={"id": str})
    new_predictions = pd.read_csv(result.bundle / "valid_predictions.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(new_predictions[old_predictions.columns], old_predictions, rtol=1e-5, atol=1e-6)


def test_cross_validation_reproduces_the_format_1_report(inputs: Path, tmp_path: Path) -> None:
    result = run_cv(_recipe("regress-cv", inputs, tmp_path / "regress-cv"))
    old = json.loads((V1 / "regress-cv" / "cv_report.json").read_text())
    for new_fold, old_fold in zip(result.report["per_fold"], old["per_fold"], strict=True):
        assert new_fold == pytest.approx(old_fold, rel=1e-5)
    assert result.report["oof"] == pytest.approx(old["oof"], rel=1e-5)
    oof = pd.read_csv(result.run / "oof.csv")
    texts = pd.read_csv(inputs / "regress.csv")["text"]
    for fold, rows in oof.groupby("fold"):  # raw head outputs beside the clipped ones, each fold its own range
        raw = rows[["raw_warmth", "raw_gloom"]].to_numpy()
        member = Predictor.load(result.run / f"fold-{fold}")
        np.testing.assert_allclose(raw, member.predict_outputs(texts[rows["row"]].tolist()), rtol=1e-5, atol=1e-6)
        (clip,) = json.loads((result.run / f"fold-{fold}" / "texttune.json").read_text())["postprocess"]
        clipped = np.clip(raw, clip["low"], clip["high"])
        np.testing.assert_allclose(rows[["pred_warmth", "pred_gloom"]].to_numpy(), clipped, rtol=1e-6)
