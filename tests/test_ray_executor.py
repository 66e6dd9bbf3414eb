"""`texttune cv --executor ray` on a local 2-CPU Ray: folds run as concurrent tasks and collect what a sequential
run reports (skipped where Ray is not installed; `make test` installs it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from texttune import Predictor, load_recipe
from texttune.cli.main import main
from texttune.cv import run_cv

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'texttune[ray]'")


def test_ray_folds_run_concurrently_and_collect_the_sequential_report(
    write_recipe, tmp_path: Path, caplog, monkeypatch
) -> None:
    path = write_recipe("classification", rows=48, training={"epochs": 2}, cv={"folds": 2})
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["train"] = "classification.csv"  # relative paths, as a user writes them: Ray's tasks run elsewhere
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    sequential = run_cv(load_recipe(path, ["output.dir=sequential"]))
    run = tmp_path / "ray"
    caplog.set_level(logging.INFO, logger="texttune")
    assert main(["cv", str(path), "--set", "output.dir=ray", "--executor", "ray"]) == 0
    assert "ray: 2 folds submitted (1 CPU, 0 GPU each)" in caplog.text
    assert caplog.text.count(": trained on ") == 2
    # the same run, as the recipe wrote it: a sequential resume and a collect find nothing changed
    assert main(["-q", "cv", str(path), "--set", "output.dir=ray", "--collect"]) == 0
    assert main(["-q", "cv", str(path), "--set", "output.dir=ray"]) == 0

    assert json.loads((run / "cv_report.json").read_text())["oof"] == sequential.report["oof"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "oof.csv"), pd.read_csv(sequential.run / "oof.csv"))
    texts = ["good great film", "awful dull plot"]
    np.testing.assert_array_equal(
        Predictor.load(run).predict_outputs(texts), Predictor.load(sequential.run).predict_outputs(texts)
    )
    # the two tasks overlapped in time: each fold's bundle records when it started and how long it took
    spans = []
    for fold in (0, 1):
        report = json.loads((run / f"fold-{fold}" / "metrics.json").read_text())
        end = (run / f"fold-{fold}" / "metrics.json").stat().st_mtime
        spans.append((end - report["seconds"], end))
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_a_fold_that_fails_on_ray_is_named_in_one_line(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("classification", rows=32, training={"epochs": 1}, cv={"folds": 2})
    run = tmp_path / "run"
    run.mkdir()
    holder = {"host": "elsewhere", "pid": 7, "since": "earlier"}  # a job of another machine holds fold 1
    (run / "fold-1.claim").write_text(json.dumps(holder))
    assert main(["-q", "cv", str(path), "--set", f"output.dir={run}", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert f"texttune: error: fold 1: fold 1 of {run} is being trained by elsewhere pid 7 since earlier" in err
    assert "Traceback" not in err.split("texttune: error:")[-1]
    assert (run / "fold-0" / "texttune.json").is_file() and not (run / "fold-1").exists()
