"""A short real run on MiniLM with a few dozen rows of ../shared/data (skipped where that folder is absent).

The reloaded bundle must reproduce the validation metrics that training reported for its kept checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import recompute_valid_metrics
from texttune import Predictor, load_recipe, train
from texttune.data import read_table

from .conftest import SHARED_DATA

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")


def _small_copy(source: Path, destination: Path, rows: int) -> Path:
    frame = read_table(source)
    sep = "\t" if source.suffix == ".tsv" else ","
    frame.head(rows).to_csv(destination, sep=sep, index=False)
    return destination


@pytest.mark.parametrize(
    ("recipe", "files", "metric"),
    [
        ("ellipse.yaml", {"train": ("ellipse_train.csv", 48)}, "mcrmse"),
        ("sst5.yaml", {"train": ("sst5_train.tsv", 64), "valid": ("sst5_dev.tsv", 32)}, "accuracy"),
    ],
)
def test_minilm_short_run_reproduces_its_metrics(tmp_path: Path, recipe: str, files: dict, metric: str) -> None:
    overrides = [f"output.dir={tmp_path / 'bundle'}", "model.max_length=96", "training.epochs=1",
                 "training.batch_size=8", "training.evals_per_epoch=1"]  # fmt: skip
    for key, (name, rows) in files.items():
        overrides.append(f"data.{key}={_small_copy(SHARED_DATA / name, tmp_path / name, rows)}")
    config = load_recipe(EXAMPLES / recipe, overrides)
    result = train(config)

    recomputed, _, valid = recompute_valid_metrics(config, result.bundle)
    assert recomputed[metric] == pytest.approx(result.metrics[metric], abs=2e-3)
    table = Predictor.load(result.bundle).predict_table(
        pd.DataFrame({**valid.texts, config.data.id_column: valid.ids})
    )
    assert list(table.columns)[0] == config.data.id_column
    assert table[config.data.id_column].tolist() == valid.ids.tolist()
    assert len(pd.unique(table.iloc[:, 0])) == len(valid)
