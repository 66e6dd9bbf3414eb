"""What a kill leaves behind is finished, rolled back or removed by the next run: bundle writes caught between
their two renames, staging folders, scratch folders, and tracked runs left RUNNING."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path

from texttune._io import atomic_directory, recover_directory, scratch_directory
from texttune.config import TrackingConfig


def _folder(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.txt").write_text(content)
    return path


def test_killed_between_the_renames_the_complete_new_bundle_takes_its_place(tmp_path: Path) -> None:
    _folder(tmp_path / ".out.old-1234abcd", "old")
    _folder(tmp_path / ".out.tmp-1234abcd", "new")
    recover_directory(tmp_path / "out")
    assert (tmp_path / "out" / "model.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_write_killed_while_staging_leaves_the_old_bundle_and_no_staging(tmp_path: Path) -> None:
    _folder(tmp_path / "out", "old")
    _folder(tmp_path / ".out.tmp-5678abcd", "half")
    _folder(tmp_path / ".out.old-9999abcd", "older, killed before its removal")
    (tmp_path / ".other.tmp-5678abcd").mkdir()  # another target's staging is not touched
    (tmp_path / ".out.tmp-notours").mkdir()  # nor a name our writes never use
    with atomic_directory(tmp_path / "out") as staging:  # the next write recovers first
        (staging / "model.txt").write_text("newest")
    assert (tmp_path / "out" / "model.txt").read_text() == "newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-5678abcd", ".out.tmp-notours", "out"]


def test_only_the_old_one_left_is_put_back(tmp_path: Path) -> None:
    _folder(tmp_path / ".out.old-1234abcd", "old")
    recover_directory(tmp_path / "out")
    assert (tmp_path / "out" / "model.txt").read_text() == "old"


def test_a_reader_finishes_a_write_but_never_sweeps_staging(tmp_path: Path) -> None:
    _folder(tmp_path / "out", "current")
    _folder(tmp_path / ".out.tmp-1234abcd", "a write going on in another process")
    recover_directory(tmp_path / "out", sweep=False)
    assert (tmp_path / ".out.tmp-1234abcd" / "model.txt").is_file()


def test_scratch_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    stale = Path(tempfile.mkdtemp(prefix=f".texttune-scratch-{host}-{dead.pid}-"))
    elsewhere = Path(tempfile.mkdtemp(prefix=f".texttune-scratch-otherhost-{dead.pid}-"))  # another machine's
    live = Path(tempfile.mkdtemp(prefix=f".texttune-scratch-{host}-{os.getpid()}-"))
    try:
        with scratch_directory("scratch") as folder:
            assert Path(folder).is_dir() and Path(folder).name.startswith(f".texttune-scratch-{host}-{os.getpid()}-")
        assert not stale.exists() and live.exists() and elsewhere.exists()
    finally:
        live.rmdir()
        elsewhere.rmdir()


def test_runs_left_running_by_a_killed_process_are_marked_killed(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from texttune.tracking import _mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrackingConfig(uri=uri, experiment="recovery")
    first = _mlflow.start(config, "killed", {"texttune.kind": "train"})
    client = MlflowClient(uri)
    dead = subprocess.Popen(["true"])
    dead.wait()
    client.set_tag(first.run_id, _mlflow.PID_TAG, str(dead.pid))  # as if its process had been killed
    alive = _mlflow.start(config, "alive", {"texttune.kind": "train"})  # its start looks at the others
    assert client.get_run(first.run_id).info.status == "KILLED"
    _mlflow.start(config, "next", {"texttune.kind": "train"}).finish("FINISHED")
    assert client.get_run(alive.run_id).info.status == "RUNNING"  # its process (this one) is alive: left alone
    alive.finish("FINISHED")
