from __future__ import annotations

from pathlib import Path

import pytest

from texttune.config import load_recipe
from texttune.errors import TexttuneError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_and_single_column_strings(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "data:\n  train: a.csv\n  text_columns: body\n"))
    assert recipe.data.text_columns == ["body"]
    assert recipe.model.backbone == "minilm" and recipe.model.pooling == "mean"
    assert recipe.training.learning_rate == 5e-5


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: a.csv\n")
    recipe = load_recipe(path, ["training.learning_rate=3e-5", "training.epochs=1", "data.target_columns=[a, b]"])
    assert recipe.training.learning_rate == pytest.approx(3e-5)
    assert recipe.training.epochs == 1
    assert recipe.data.target_columns == ["a", "b"]


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: a.csv\ntraining:\n  learnig_rate: 1.0e-4\n")
    with pytest.raises(TexttuneError, match=r"unknown key 'training.learnig_rate'; did you mean 'learning_rate'"):
        load_recipe(path)


def test_unknown_section_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(TexttuneError, match=r"did you mean 'training'"):
        load_recipe(_write(tmp_path, "data:\n  train: a.csv\ntrainig:\n  epochs: 1\n"))


def test_wrong_value_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(TexttuneError, match=r"training.batch_size: .*'many'"):
        load_recipe(_write(tmp_path, "data:\n  train: a.csv\n"), ["training.batch_size=many"])


def test_bad_override_and_bad_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: a.csv\n")
    with pytest.raises(TexttuneError, match="expected section.key=value"):
        load_recipe(path, ["epochs=3"])
    with pytest.raises(TexttuneError, match=r"recipe.yaml: line \d+ is not valid YAML"):
        load_recipe(_write(tmp_path, "data:\n  train: [a.csv\n"))


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(TexttuneError, match="missing required key 'data.train'"):
        load_recipe(_write(tmp_path, "data:\n  valid_fraction: 0.1\n"))


def test_stages_and_learning_rate_ranges_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {train: t.csv}\n")
    stages = load_recipe(path, ["training.stages=[{unfreeze: 1, epochs: 0.5, lr: 0.002}, {unfreeze: all}]"])
    assert [(s.unfreeze, s.epochs, s.learning_rate) for s in stages.training.stage_plan()] == [
        (1, 0.5, 0.002),
        ("all", 1, None),
    ]
    assert load_recipe(path, ["training.learning_rate=[1.0e-5, 1.0e-3]"]).training.learning_rate == (1e-5, 1e-3)
    with pytest.raises(TexttuneError, match=r"unknown key 'training.stages.0.epoch'; did you mean 'epochs'"):
        load_recipe(path, ["training.stages=[{epoch: 1}]"])
    with pytest.raises(TexttuneError, match=r"training.stages.0.unfreeze: .*'all'"):
        load_recipe(path, ["training.stages=[{unfreeze: 0}]"])
    with pytest.raises(TexttuneError, match="leave layer_decay at 1"):
        load_recipe(path, ["training.stages=[{lr: [1.0e-5, 1.0e-3]}]", "training.layer_decay=0.9"])
    with pytest.raises(TexttuneError, match=r"training.learning_rate: .*0 < low <= high"):
        load_recipe(path, ["training.learning_rate=[1.0e-3, 1.0e-5]"])


def test_cut_at_keeps_whole_stages_then_shortens_the_last_one() -> None:
    from texttune.config import TrainingConfig

    staged = TrainingConfig(stages=[{"unfreeze": 1, "epochs": 1}, {"unfreeze": 3, "epochs": 0.5}, {"epochs": 2}])
    assert [s.epochs for s in staged.cut_at(2.5).stages] == [1, 0.5, 1.0]
    assert [s.epochs for s in staged.cut_at(0.25).stages] == [0.25]
    assert [s.unfreeze for s in staged.cut_at(1.2).stages] == [1, 3]
    assert TrainingConfig(epochs=3).cut_at(1.75).epochs == 1.75
