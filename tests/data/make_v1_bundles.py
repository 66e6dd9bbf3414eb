"""Writes tests/data/v1/: bundles of the first bundle format and what they predicted when they were written.

Run once, with the code of commit 8350ab7 (the last one before the text pipeline), from the project root:

    git worktree add /tmp/v1 8350ab7 && PYTHONPATH=/tmp/v1/src python tests/data/make_v1_bundles.py

tests/test_bundle_compat.py loads these with today's code and checks that they predict the same outputs, and that
today's training reproduces their metrics from the same recipes, tables and tiny backbone (kept in v1/tiny-bert:
the tokenizer trainers number some pieces in hash order, so a backbone rebuilt in another process differs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from texttune import Predictor, load_recipe, train
from texttune.cv import run_cv
from texttune.testing import build_tiny_backbone, corpus, synthetic_table

HERE = Path(__file__).resolve().parent / "v1"
PLOTS = ("training_curves.png", "oof_predicted_vs_true.png", "oof_confusion_matrix.png")

# The recipe each bundle was trained with; {root} is where the table and the tiny backbone lie.
RECIPES = {
    "classify": {
        "data": {"train": "{root}/classify.csv", "text_columns": "text", "target_columns": "label", "id_column": "id"},
        "model": {"backbone": "{root}/tiny-bert", "max_length": 32},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0, "precision": "fp32",
                     "evals_per_epoch": 2},
        "tracking": {"backend": "none"},
        "output": {"dir": "{root}/classify"},
    },
    "regress-cv": {
        "data": {"train": "{root}/regress.csv", "text_columns": "text", "target_columns": ["warmth", "gloom"],
                 "id_column": "id"},
        "model": {"backbone": "{root}/tiny-bert", "max_length": 32},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0, "precision": "fp32",
                     "scheduler": "one_cycle", "layer_decay": 0.8},
        "cv": {"folds": 2},
        "tracking": {"backend": "none"},
        "output": {"dir": "{root}/regress-cv"},
    },
}  # fmt: skip


def recipe_for(name: str, root: Path) -> dict:
    return json.loads(json.dumps(RECIPES[name]).replace("{root}", str(root)))


def write_inputs(root: Path, backbone: Path | None = None) -> None:
    """The tables, and the tiny backbone: a copy of `backbone`, or a new one."""
    if backbone is None:
        build_tiny_backbone(root / "tiny-bert")
    else:
        shutil.copytree(backbone, root / "tiny-bert")
    synthetic_table(64, "classification").to_csv(root / "classify.csv", index=False)
    synthetic_table(48, "regression").to_csv(root / "regress.csv", index=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_inputs(root)
        for name in RECIPES:
            (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe_for(name, root)))
        train(load_recipe(root / "classify.yaml"))
        run_cv(load_recipe(root / "regress-cv.yaml"))
        texts = corpus(12, seed=7) + ["good", "bad awful dull boring poor " * 8]
        expected = {"texts": texts}
        for name in RECIPES:
            predictor = Predictor.load(root / name)
            expected[name] = {
                "outputs": predictor.predict_outputs(texts).tolist(),
                "predict": json.loads(predictor.predict(texts).to_json(orient="split", double_precision=15)),
            }
            shutil.rmtree(HERE / name, ignore_errors=True)
            shutil.copytree(root / name, HERE / name, ignore=shutil.ignore_patterns(*PLOTS))
        shutil.rmtree(HERE / "tiny-bert", ignore_errors=True)
        shutil.copytree(root / "tiny-bert", HERE / "tiny-bert")
        (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
