"""Checkpoints and exact resume: a training killed with SIGKILL (mid-epoch, mid-stage of gradual unfreezing,
mid-checkpoint-write) and run again with no cleanup ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from texttune import load_recipe, train
from texttune.cli.main import main

# 72 training rows in batches of 4: 18 steps an epoch, evaluations every 9 steps, training logs every 2, so the
# checkpoint after an evaluation at step 9 waits for the log at step 10.
BASE = {
    "training": {"epochs": 2, "batch_size": 4, "evals_per_epoch": 2, "learning_rate": 3e-3, "ema_decay": 0.9},
}
STAGES = [{"unfreeze": 1, "epochs": 1, "lr": 0.01}, {"unfreeze": "all", "epochs": 1}]
ACCUMULATE = {"gradient_accumulation_steps": 2}  # 9 optimizer steps an epoch, evaluations every 5


def _texttune(
    recipe: Path, crash_at: str | None = None, max_file_bytes: int | None = None, *settings: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TEXTTUNE_CRASH_AT", None)
    if crash_at:
        env["TEXTTUNE_CRASH_AT"] = crash_at

    def limit_file_size() -> None:  # a full disk, as the process sees it: writes past the limit fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    command = [sys.executable, "-m", "texttune", "-q", "train", str(recipe), *(f"--set={s}" for s in settings)]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size if max_file_bytes else None,
    )  # fmt: skip


def _assert_same_run(resumed: Path, reference: Path) -> None:
    assert (resumed / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    new, old = (json.loads((p / "metrics.json").read_text()) for p in (resumed, reference))
    assert new["history"] == old["history"] and new["train_log"] == old["train_log"] and new["valid"] == old["valid"]
    assert (resumed / "valid_predictions.csv").read_bytes() == (reference / "valid_predictions.csv").read_bytes()
    assert not (resumed / ".checkpoints").exists(), "the finished bundle replaces the checkpoints"


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> dict[str, Path]:
    """The uninterrupted runs, each in a process of its own like the killed ones."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, stages, training in (("plain", None, {}), ("staged", STAGES, {}), ("accumulated", None, ACCUMULATE)):
        recipe = _write(root, tiny_backbone, name, stages, **training)
        completed = _texttune(recipe)
        assert completed.returncode == 0, completed.stderr[-2000:]
        runs[name] = root / name
    return runs


def _write(root: Path, backbone: Path, name: str, stages: list | None, **training: object) -> Path:
    """The recipe of a run named `name` in `root`, on the tiny backbone and a 90-row table (as write_recipe)."""
    from texttune.testing import synthetic_table

    table = root / "table.csv"
    if not table.exists():
        synthetic_table(90, "classification").to_csv(table, index=False)
    training = {**BASE["training"], "warmup_ratio": 0, "precision": "fp32", **({"stages": stages} if stages else {}),
                **training}  # fmt: skip
    recipe = {
        "data": {"train": str(table), "text_columns": "text", "target_columns": ["label"], "id_column": "id"},
        "model": {"backbone": str(backbone), "max_length": 32},
        "training": training,
        "tracking": {"backend": "none"},
        "output": {"dir": str(root / name)},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("scenario", "stages", "crash_at", "resumes_from"),
    [
        ("mid-epoch", None, "step:14", "step-10"),  # epoch 0, 4 steps after the checkpoint at step 10
        ("mid-stage", STAGES, "step:30", "step-28"),  # stage 2 of gradual unfreezing, its own step 12
        ("mid-write", None, "save:2", "step-10"),  # killed while writing the second checkpoint (step 18)
        ("accumulated", None, "step:7", "step-5"),  # two batches a step: the data position counts both
    ],
)
def test_a_killed_run_resumes_to_the_same_model(
    tmp_path: Path, tiny_backbone: Path, reference_runs, scenario: str, stages, crash_at: str, resumes_from: str
) -> None:
    training = ACCUMULATE if scenario == "accumulated" else {}
    recipe = _write(tmp_path, tiny_backbone, scenario, stages, **training)
    killed = _texttune(recipe, crash_at)
    assert killed.returncode == -signal.SIGKILL
    output = tmp_path / scenario
    assert not (output / "texttune.json").exists()
    left = sorted(p.name for p in (output / ".checkpoints").iterdir())
    assert resumes_from in left and "run.json" in left
    if scenario == "mid-write":
        assert any(name.startswith(".step-18.tmp-") for name in left), "the killed write left its staging"
    for checkpoint in (output / ".checkpoints").glob("step-*"):  # no pickle anywhere
        assert {p.suffix for p in checkpoint.iterdir()} <= {".safetensors", ".json", ""}
    resumed = _texttune(recipe)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from the checkpoint {output / '.checkpoints' / resumes_from}" in resumed.stderr
    _assert_same_run(output, reference_runs["staged" if stages else "accumulated" if training else "plain"])


def test_checkpoints_of_another_recipe_are_refused_unless_restarted(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("classification", rows=40, training={"epochs": 1})
    recipe = load_recipe(path)
    output = Path(recipe.output.dir)
    (output / ".checkpoints" / "step-3").mkdir(parents=True)
    (output / ".checkpoints" / "step-3" / "COMPLETE").write_text("")
    fingerprint = {"settings": {"training.learning_rate": 1.0}, "data_sha256": {"data.train": "0"}}
    (output / ".checkpoints" / "run.json").write_text(json.dumps(fingerprint))
    assert main(["-q", "train", str(path)]) == 2
    error = capsys.readouterr().err
    assert "holds checkpoints of another recipe or data (changed: the contents of data.train" in error
    assert "use --restart to discard them" in error
    assert main(["-q", "train", str(path), "--restart"]) == 0
    assert (output / "texttune.json").is_file() and not (output / ".checkpoints").exists()


def test_only_the_last_two_complete_checkpoints_are_kept(write_recipe, tmp_path: Path, monkeypatch) -> None:
    recipe = load_recipe(write_recipe("classification", rows=60, training={"epochs": 3, "evals_per_epoch": 2}))
    seen: list[list[str]] = []
    import texttune.checkpoints

    original = texttune.checkpoints.Checkpoints.save

    def recording(checkpoints, *args, **kwargs):
        path = original(checkpoints, *args, **kwargs)
        seen.append(sorted(p.name for p in checkpoints.root.glob("step-*")))
        return path

    monkeypatch.setattr(texttune.checkpoints.Checkpoints, "save", recording)
    train(recipe)
    assert len(seen) >= 4 and all(len(names) <= 2 for names in seen)
    assert not (Path(recipe.output.dir) / ".checkpoints").exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_the_previous_bundle(
    tmp_path: Path, tiny_backbone: Path, reference_runs
) -> None:
    recipe = _write(tmp_path, tiny_backbone, "full", None)
    output = tmp_path / "full"
    assert _texttune(recipe, "step:14").returncode == -signal.SIGKILL  # step-10 is complete
    full = _texttune(recipe, None, 100_000)  # the weights alone are larger: the next checkpoint cannot be written
    assert full.returncode == 2
    assert "Traceback" not in full.stderr and full.stderr.strip().splitlines()[-1].startswith("texttune: error: ")
    assert "could not write the checkpoint (File too large)" in full.stderr and "last complete checkpoint is kept" in (
        full.stderr
    )
    assert sorted(p.name for p in (output / ".checkpoints").iterdir()) == ["run.json", "step-10"]
    assert _texttune(recipe).returncode == 0  # space again: it resumes and ends as the uninterrupted run
    _assert_same_run(output, reference_runs["plain"])
    # the bundle itself: the previous one stays, byte for byte, and no staging is left beside it
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    failed = _texttune(recipe, None, 100_000, "training.checkpoints=false", "training.seed=7")
    assert failed.returncode == 2 and "could not write the bundle (File too large)" in failed.stderr
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    shutil.rmtree(output)


def test_a_cv_fold_resumes_from_its_own_checkpoints(tmp_path: Path, tiny_backbone: Path) -> None:
    recipe = _write(tmp_path, tiny_backbone, "cv", None)
    raw = yaml.safe_load(recipe.read_text())
    raw["cv"] = {"folds": 2}
    recipe.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def cv(run: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "texttune", "-q", "cv", str(recipe), f"--set=output.dir={tmp_path / run}"]
        extra = {"TEXTTUNE_CRASH_AT": crash_at} if crash_at else {}
        return subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=300)

    assert cv("clean").returncode == 0
    assert cv("killed", "step:14").returncode == -signal.SIGKILL  # in fold 0 (12 steps an epoch), mid-epoch 2
    fold = tmp_path / "killed" / "fold-0"
    assert list(fold.glob(".checkpoints/step-*/COMPLETE")) and not (fold / "texttune.json").exists()
    resumed = cv("killed")
    assert resumed.returncode == 0 and "resuming from the checkpoint" in resumed.stderr
    report = {k: v for k, v in json.loads((tmp_path / "killed" / "cv_report.json").read_text()).items()}
    assert report == json.loads((tmp_path / "clean" / "cv_report.json").read_text())


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, tiny_backbone: Path, reference_runs
) -> None:
    recipe = _write(tmp_path, tiny_backbone, "damaged", None)
    output = tmp_path / "damaged"
    assert _texttune(recipe, "step:24").returncode == -signal.SIGKILL  # checkpoints at steps 10 and 18
    weights = output / ".checkpoints" / "step-18" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # marked complete, yet damaged (a disk fault)
    older = output / ".checkpoints" / "step-10" / "run.json"
    older.write_text(older.read_text().replace('"bf16": false', '"bf16": true'))  # as if written on a bf16 CPU
    resumed = _texttune(recipe)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "step-18 is damaged" in resumed.stderr and "resuming from the checkpoint" in resumed.stderr
    assert str(output / ".checkpoints" / "step-10") in resumed.stderr
    assert "written with bf16 on and this machine trains with it off" in resumed.stderr
    _assert_same_run(output, reference_runs["plain"])


def test_a_checkpoints_folder_of_another_tool_is_left_alone(write_recipe, tmp_path: Path, capsys) -> None:
    path = write_recipe("classification", rows=40, training={"epochs": 1})
    output = Path(load_recipe(path).output.dir)
    (output / ".checkpoints" / "step-3").mkdir(parents=True)  # no run.json: not texttune's
    (output / ".checkpoints" / "step-3" / "weights.ckpt").write_text("someone else's")
    assert main(["-q", "train", str(path)]) == 2
    assert "exists and is not a texttune bundle" in capsys.readouterr().err
    assert (output / ".checkpoints" / "step-3" / "weights.ckpt").read_text() == "someone else's"


def test_evaluation_batching_does_not_make_checkpoints_foreign(write_recipe) -> None:
    """Checkpoints of a texttune whose evaluations were batched otherwise (64 texts, no token budget) still resume."""
    from texttune.fingerprint import changes, fingerprint

    new = fingerprint(load_recipe(write_recipe("regression")))
    old = {**new, "settings": {k: v for k, v in new["settings"].items() if k != "training.eval_max_tokens"}}
    old["settings"]["training.eval_batch_size"] = 64
    assert changes(old, new) == []
    old["settings"]["training.batch_size"] = 4
    assert changes(old, new) == ["training.batch_size"]
