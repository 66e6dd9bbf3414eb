"""Kill -9 a `texttune train` run at random times, run it again after each kill, and compare the end with an
uninterrupted run (issue 13): final metrics, metric history and weights, and the wall time each kill cost.

MiniLM on the first ROWS sentences of SST-5 with examples/sst5.yaml (its ULMFiT stages, the dev set, default
checkpoints). Prints the CPU flags, since bf16 autocast is on where the CPU has it. Exit code 0 when the resumed
run's model.safetensors and metrics.json equal the uninterrupted run's.

python bench/train_resume.py [--rows 2000] [--kills 5] [--seed 0] [--workdir /tmp/texttune-train-resume]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from _sst5 import sst5_slice

ROOT = Path(__file__).resolve().parents[1]


def run(table: Path, output: Path, kill_after: float | None = None) -> tuple[float, bool]:
    """Run `texttune train` on `table` into `output` (killed after `kill_after` seconds if given):
    (seconds, finished)."""
    command = ["texttune", "-q", "train", "examples/sst5.yaml", "--set", f"data.train={table}",
               "--set", f"output.dir={output}", "--set", "tracking.backend=none"]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        return time.perf_counter() - started, False
    if process.returncode != 0:
        sys.exit(f"texttune train failed:\n{stderr[-2000:]}")
    return time.perf_counter() - started, True


def summary(bundle: Path) -> dict:
    metrics = json.loads((bundle / "metrics.json").read_text())
    return {key: metrics[key] for key in ("valid", "history", "train_log")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/texttune-train-resume")
    args = parser.parse_args()
    flags = set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    print(f"CPU flags: {' '.join(sorted(flags))}")
    table = sst5_slice(args.workdir, args.rows)
    work = table.parent
    clean_seconds, _ = run(table, work / "clean")
    print(f"uninterrupted: {clean_seconds:.1f} s")
    rng = random.Random(args.seed)
    spent, kills, output = 0.0, 0, work / "killed"
    while True:
        # each run starts up (about 10 s) and trains a little past a checkpoint or two before the kill
        kill_after = rng.uniform(12, 30) if kills < args.kills else None
        seconds, finished = run(table, output, kill_after)
        spent += seconds
        checkpoints = sorted(p.name for p in (output / ".checkpoints").glob("step-*")) if not finished else []
        print(
            f"  run {kills + 1}: {seconds:.1f} s, {'finished' if finished else f'killed; checkpoints {checkpoints}'}"
        )
        if finished:
            break
        kills += 1
    same_metrics = summary(output) == summary(work / "clean")
    same_weights = (output / "model.safetensors").read_bytes() == (work / "clean" / "model.safetensors").read_bytes()
    valid = summary(output)["valid"]
    print(f"{kills} kills; resumed to accuracy {valid['accuracy']:.4f} (uninterrupted "
          f"{summary(work / 'clean')['valid']['accuracy']:.4f}); metrics.json (kept metrics, every evaluation, "
          f"every training log) identical: {same_metrics}; model.safetensors identical: {same_weights}")  # fmt: skip
    lost = (spent - clean_seconds) / max(kills, 1)
    print(f"wall time: {spent:.1f} s in all against {clean_seconds:.1f} s, {lost:.1f} s lost per kill (restart, "
          "reloading, and the steps since the last checkpoint)")  # fmt: skip
    sys.exit(0 if same_metrics and same_weights else 1)


if __name__ == "__main__":
    main()
