"""Data-parallel training under torchrun: the sharded length-grouped sampler, and a real 2-process job (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from texttune import load_recipe
from texttune.data import LengthGroupedBatchSampler
from texttune.distributed import Processes, processes
from texttune.testing import synthetic_table

from .conftest import recompute_valid_metrics


@pytest.mark.parametrize("rows", [64, 61, 18, 17, 3])
@pytest.mark.parametrize("count", [2, 3])
def test_every_text_goes_to_one_process_once_per_epoch(rows: int, count: int) -> None:
    lengths = [(i * 7919) % 97 + 3 for i in range(rows)]
    shares = [
        list(LengthGroupedBatchSampler(lengths, 4, seed=5, megabatch_factor=3, rank=rank, processes=count))
        for rank in range(count)
    ]
    steps = {len(share) for share in shares}
    assert steps == {-(-rows // (4 * count))}  # every process takes the same number of steps: DDP would hang
    seen = sorted(i for share in shares for batch in share for i in batch)
    last = rows % (4 * count)  # the texts of the last, smaller global batch
    repeats = count - last if 0 < last < count else 0  # only where it has fewer texts than there are processes
    assert sorted(set(seen)) == list(range(rows)) and len(seen) == rows + repeats
    for step in zip(*shares):  # at each step the processes' texts come from one length-sorted global batch
        spans = [(min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in step]
        assert all(low_a >= high_b for (low_a, _), (_, high_b) in zip(spans, spans[1:]))


def test_one_process_draws_what_it_always_drew() -> None:
    lengths = [(i * 31) % 50 + 1 for i in range(40)]
    alone = list(LengthGroupedBatchSampler(lengths, 8, seed=2, megabatch_factor=2))
    assert alone == list(LengthGroupedBatchSampler(lengths, 8, seed=2, megabatch_factor=2, rank=0, processes=1))


def test_the_job_is_read_from_the_launchers_environment(monkeypatch) -> None:
    assert processes() == Processes(0, 1, 1) and processes().main and not processes().distributed
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert processes() == Processes(3, 4, 2) and not processes().main and processes().distributed


STAGES = [{"unfreeze": 1, "epochs": 1, "lr": 0.01}, {"unfreeze": "all", "epochs": 2}]


def test_torchrun_two_processes_train_one_bundle(tmp_path: Path, tiny_backbone: Path) -> None:
    synthetic_table(80).to_csv(tmp_path / "train.csv", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(tmp_path / "train.csv"), "text_columns": "text", "target_columns": "label"},
                "model": {"backbone": str(tiny_backbone), "max_length": 32},
                "training": {"stages": STAGES, "batch_size": 8, "precision": "fp32", "learning_rate": 3e-3},
                "tracking": {"backend": "mlflow", "uri": uri, "name": "ddp"},
                "output": {"dir": str(tmp_path / "bundle")},
            }
        )
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    job = subprocess.run(
        [*command, "-m", "texttune", "train", str(recipe_path)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    log = job.stderr

    # 64 training rows, 8 per process x 2 processes: 4 optimizer steps an epoch, not 8
    batch = "global batch 16 (8 per process x 2 processes x 1 accumulation): 4 steps per epoch"
    assert f"stage 1: {batch}, 4 in all" in log and f"stage 2: {batch}, 8 in all" in log
    report = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    last_step = {stage: max(e["step"] for e in report["train_log"] if e["stage"] == stage) for stage in (0, 1)}
    assert last_step == {0: 4, 1: 12}  # steps count on across stages
    for stage in (1, 2):  # checked across processes after each stage, frozen levels included
        assert log.count(f"stage {stage}: weights identical in all 2 processes") == 1

    # one bundle, written once; one summary on stdout; one tracking run and one model version
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "bundle"))) == ["bundle"]
    assert job.stdout.count('"bundle"') == 1
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("texttune").experiment_id
    assert len(client.search_runs([experiment])) == 1
    assert [v.version for v in client.search_model_versions("name = 'ddp'")] == [1]

    # the metrics were computed on the whole validation set: a single-process evaluation of the bundle agrees
    recipe = load_recipe(recipe_path)
    recomputed, _, valid = recompute_valid_metrics(recipe, tmp_path / "bundle")
    assert report["valid_rows"] == len(valid.rows) == 16
    for name, value in recomputed.items():
        assert report["valid"][name] == pytest.approx(value, abs=1e-5), name


def test_lr_find_refuses_several_processes(write_recipe, monkeypatch, capsys) -> None:
    from texttune.cli.main import main

    path = write_recipe("classification", rows=30)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["lr-find", str(path)]) == 2
    assert "lr-find runs in one process: run it without torchrun or accelerate launch" in capsys.readouterr().err
