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


def _write_recipe(root: Path, backbone: Path, name: str, **training: object) -> Path:
    synthetic_table(80).to_csv(root / "train.csv", index=False)
    path = root / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(root / "train.csv"), "text_columns": "text", "target_columns": "label"},
                "model": {"backbone": str(backbone), "max_length": 32},
                "training": {"batch_size": 8, "precision": "fp32", "learning_rate": 3e-3, **training},
                "tracking": {"backend": "mlflow", "uri": f"sqlite:///{root / 'mlflow.db'}", "name": name},
                "output": {"dir": str(root / name)},
            }
        )
    )
    return path


def _torchrun(recipe: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    environment.pop("TEXTTUNE_CRASH_AT", None)
    if crash_at:
        environment["TEXTTUNE_CRASH_AT"] = crash_at  # SIGKILL at that step, in every process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", "texttune", "train", str(recipe)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=recipe.parent,
        timeout=300,
    )


def test_torchrun_two_processes_train_one_bundle(tmp_path: Path, tiny_backbone: Path) -> None:
    recipe_path = _write_recipe(tmp_path, tiny_backbone, "ddp", stages=STAGES)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _torchrun(recipe_path)
    assert job.returncode == 0, job.stderr[-3000:]
    log = job.stderr

    # 64 training rows, 8 per process x 2 processes: 4 optimizer steps an epoch, not 8
    batch = "global batch 16 (8 per process x 2 processes x 1 accumulation): 4 steps per epoch"
    assert f"stage 1: {batch}, 4 in all" in log and f"stage 2: {batch}, 8 in all" in log
    report = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    last_step = {stage: max(e["step"] for e in report["train_log"] if e["stage"] == stage) for stage in (0, 1)}
    assert last_step == {0: 4, 1: 12}  # steps count on across stages
    for stage in (1, 2):  # checked across processes after each stage, frozen levels included
        assert log.count(f"stage {stage}: weights identical in all 2 processes") == 1

    # one bundle, written once; one summary on stdout; one tracking run and one model version
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "ddp")) and p.is_dir()) == ["ddp"]
    assert job.stdout.count('"bundle"') == 1
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("texttune").experiment_id
    assert len(client.search_runs([experiment])) == 1
    assert [v.version for v in client.search_model_versions("name = 'ddp'")] == [1]

    # the metrics were computed on the whole validation set: a single-process evaluation of the bundle agrees
    recipe = load_recipe(recipe_path)
    recomputed, _, valid = recompute_valid_metrics(recipe, tmp_path / "ddp")
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


def test_a_killed_torchrun_job_resumes_as_the_uninterrupted_one_ends(tmp_path: Path, tiny_backbone: Path) -> None:
    # 3 epochs of 4 steps, a checkpoint at each evaluation (every 4 steps): killed at step 6 of epoch 2, it resumes
    # from step 4 at the start of epoch 2, which must draw epoch 2's batch order, not epoch 1's again
    clean = _write_recipe(tmp_path, tiny_backbone, "clean", epochs=3, evals_per_epoch=1)
    killed = _write_recipe(tmp_path, tiny_backbone, "killed", epochs=3, evals_per_epoch=1)
    assert _torchrun(clean).returncode == 0
    crashed = _torchrun(killed, crash_at="step:6")
    assert crashed.returncode != 0 and not (tmp_path / "killed" / "texttune.json").exists()
    resumed = _torchrun(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint" in resumed.stderr and "step-4" in resumed.stderr
    assert resumed.stderr.count("resuming from the checkpoint") == 1  # said by the main process only
    ends = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("clean", "killed")]
    assert [e["loss"] for e in ends[1]["train_log"]] == [e["loss"] for e in ends[0]["train_log"]]
    assert ends[1]["valid"] == ends[0]["valid"]
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("clean", "killed")]
    assert weights[0] == weights[1]
