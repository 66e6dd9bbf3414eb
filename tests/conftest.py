"""Shared fixtures: a tiny BERT built once per session, small tables and recipes written per test."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
import yaml

from texttune.metrics import task_metrics
from texttune.predictor import Predictor
from texttune.prepare import read_training_examples
from texttune.serving import ServeSettings, create_app
from texttune.task import Examples
from texttune.testing import build_tiny_backbone, synthetic_table

# One thread: on a loaded 2-core box a tiny step took 1.2 s with 2 threads and 3 ms with 1.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_tracking_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs that track by default (recipes from examples/) record into a store of the session, not the checkout's
    texttune-runs/, and models:/ downloads go to a cache of the session."""
    root = tmp_path_factory.mktemp("tracking")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["TEXTTUNE_CACHE"] = str(root / "cache")


SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def write_recipe(tmp_path: Path, tiny_backbone: Path):
    """Write a table and a recipe that trains the tiny model on it; returns the recipe path."""

    def write(task: str = "classification", rows: int = 80, **sections: dict) -> Path:
        table = tmp_path / f"{task}.csv"
        synthetic_table(rows, task).to_csv(table, index=False)
        targets = ["label"] if task == "classification" else ["warmth", "gloom"]
        recipe = {
            "data": {"train": str(table), "text_columns": "text", "target_columns": targets, "id_column": "id"},
            "model": {"backbone": str(tiny_backbone), "max_length": 32},
            "training": {"epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0, "precision": "fp32"},
            "tracking": {"backend": "none"},  # tests/test_tracking.py turns it on
            "output": {"dir": str(tmp_path / "bundle")},
        }
        for section, values in sections.items():
            recipe.setdefault(section, {}).update(values)
        path = tmp_path / f"{task}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write


def train_tiny_bundle(root: Path, backbone: Path, rows: int = 60, epochs: int = 2) -> Path:
    """Train the tiny model on a synthetic classification table under `root` (fp32, with an id column, so an
    ONNX export is picked by engine auto on every machine); returns the bundle."""
    from texttune import load_recipe, train

    synthetic_table(rows).to_csv(root / "train.csv", index=False)
    recipe = {
        "data": {
            "train": str(root / "train.csv"),
            "text_columns": "text",
            "target_columns": "label",
            "id_column": "id",
        },
        "model": {"backbone": str(backbone), "max_length": 32},
        "training": {"epochs": epochs, "batch_size": 8, "learning_rate": 3e-3, "precision": "fp32"},
        "tracking": {"backend": "none"},
        "output": {"dir": str(root / "bundle")},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return train(load_recipe(root / "recipe.yaml")).bundle


def recompute_valid_metrics(recipe, bundle: Path) -> tuple[dict[str, float], np.ndarray, Examples]:
    """The bundle's metrics on the recipe's validation rows, computed by a Predictor (not by the Trainer's
    evaluation): metrics, head outputs and the validation examples."""
    _, valid = read_training_examples(recipe)
    predictor = Predictor.load(bundle)
    outputs = predictor.predict_outputs(predictor.pipeline.join(valid.texts))
    return task_metrics(outputs, valid.labels, valid.task, predictor.info.postprocess), outputs, valid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(predictor: Predictor, settings: ServeSettings | None = None) -> Iterator[str]:
    """uvicorn in a thread on a free loopback port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(predictor, settings), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
