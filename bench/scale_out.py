"""Scale-out overheads (issue 16): data-parallel training under torchrun against one process, and a cv run's folds
sequentially against Ray tasks. Medians of several alternated repeats; prints the CPU and the ratios.

ddp: MiniLM on the first ROWS sentences of SST-5, a fixed number of optimizer steps at the same global batch:
  one process (batch B, all cores) against `torchrun --nproc_per_node 2` (batch B/2 each, cores/2 threads each).
  Both report the training's own time (the bundle's `seconds`: data, model, steps, evaluation, writing) and the
  command's wall time (start-up included).
cv: a K-fold cv of the tiny test model on a synthetic table, `texttune cv` against `texttune cv --executor ray`
  (a local Ray started by the command, one CPU per fold).

python bench/scale_out.py [--part ddp|cv|both] [--repeats 3] [--rows 1920] [--workdir /tmp/texttune-scale-out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _sst5 import sst5_slice

from texttune._hardware import cpu_model_and_flags
from texttune.testing import build_tiny_backbone, synthetic_table


def _timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _texttune(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "texttune", "-q"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "texttune", "-q"]  # fmt: skip


def ddp(work: Path, rows: int, batch: int, repeats: int) -> None:
    train = sst5_slice(work, rows)
    base = {
        "data": {"train": str(train), "text_columns": "Phrase", "target_columns": "Sentiment", "valid_fraction": 0.1},
        "model": {"max_length": 64},
        "training": {"epochs": 1, "learning_rate": 1.0e-4, "evals_per_epoch": 1, "checkpoints": False},
        "tracking": {"backend": "none"},
    }
    steps = -(-int(rows * 0.9) // batch)
    print(f"ddp: SST-5 first {rows} sentences, MiniLM, 1 epoch = {steps} optimizer steps at global batch {batch}")
    results: dict[str, list[tuple[float, float]]] = {"1 process": [], "2 processes": []}
    for repeat in range(repeats):
        for name, processes in (("1 process", 1), ("2 processes", 2)):
            out = work / f"run-{processes}"
            shutil.rmtree(out, ignore_errors=True)
            recipe = {**base, "training": {**base["training"], "batch_size": batch // processes}}
            recipe["output"] = {"dir": str(out)}
            path = work / f"recipe-{processes}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            wall = _timed([*_texttune(processes), "train", str(path)], work)
            report = json.loads((out / "metrics.json").read_text())
            assert report["history"][-1]["step"] == steps, "not the planned step count"
            results[name].append((report["seconds"], wall))
            print(f"  repeat {repeat + 1} {name}: training {report['seconds']:.1f} s, command {wall:.1f} s, "
                  f"valid accuracy {report['valid']['accuracy']:.4f}", flush=True)  # fmt: skip
    one = [statistics.median(x) for x in zip(*results["1 process"])]
    two = [statistics.median(x) for x in zip(*results["2 processes"])]
    print(f"ddp medians: 1 process {one[0]:.1f} s (command {one[1]:.1f} s); 2 processes {two[0]:.1f} s "
          f"(command {two[1]:.1f} s); 2 processes / 1 process = {two[0] / one[0]:.2f}x training time, "
          f"{two[1] / one[1]:.2f}x command time")  # fmt: skip


def cv(work: Path, folds: int, rows: int, repeats: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    backbone = build_tiny_backbone(work / "tiny")
    synthetic_table(rows).to_csv(work / "train.csv", index=False)
    recipe = {
        "data": {"train": str(work / "train.csv"), "text_columns": "text", "target_columns": "label"},
        "model": {"backbone": str(backbone), "max_length": 32},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "precision": "fp32"},
        "cv": {"folds": folds},
        "tracking": {"backend": "none"},
    }
    (work / "cv.yaml").write_text(yaml.safe_dump(recipe))
    print(f"cv: {folds} folds of the tiny model on {rows} synthetic rows, 3 epochs")
    results: dict[str, list[float]] = {"sequential": [], "ray": []}
    for repeat in range(repeats):
        for executor in results:
            out = work / f"cv-{executor}"
            shutil.rmtree(out, ignore_errors=True)
            arguments = ["cv", str(work / "cv.yaml"), "--set", f"output.dir={out}", "--executor", executor]
            wall = _timed([*_texttune(1), *arguments], work)
            results[executor].append(wall)
            oof = json.loads((out / "cv_report.json").read_text())["oof"]["accuracy"]
            print(f"  repeat {repeat + 1} {executor}: {wall:.1f} s, OOF accuracy {oof:.4f}", flush=True)
    sequential, ray = statistics.median(results["sequential"]), statistics.median(results["ray"])
    print(f"cv medians: sequential {sequential:.1f} s, ray {ray:.1f} s; ray / sequential = {ray / sequential:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("ddp", "cv", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1920, help="ddp: SST-5 sentences")
    parser.add_argument("--batch", type=int, default=32, help="ddp: the global batch")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--cv-rows", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/texttune-scale-out")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; {os.cpu_count()} cores; flags: {' '.join(flags) or 'none known'}")
    work = Path(args.workdir)
    if args.part in ("ddp", "both"):
        ddp(work / "ddp", args.rows, args.batch, args.repeats)
    if args.part in ("cv", "both"):
        cv(work / "cv", args.folds, args.cv_rows, args.repeats)


if __name__ == "__main__":
    main()
