"""What checkpoints cost: `texttune train` on ELLIPSE with the default checkpoints (each evaluation, at least every
10 minutes) against `training.checkpoints=false`, fresh processes, interleaved, medians of REPEATS (issue 13).

Prints the CPU flags (bf16 autocast is on where the CPU has it), each run's wall time, the medians and their ratio,
and what one checkpoint writes. Defaults keep a pair of runs near three minutes: 1 epoch at max_length 256, two
evaluations (the recipe's evals_per_epoch), so two mid-run checkpoints and one at the end.

python bench/checkpoint_overhead.py [--repeats 3] [--epochs 1] [--max-length 256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(output: Path, checkpoints: bool, epochs: float, max_length: int) -> float:
    settings = [f"output.dir={output}", "tracking.backend=none", f"training.epochs={epochs}",
                f"model.max_length={max_length}", f"training.checkpoints={str(checkpoints).lower()}"]  # fmt: skip
    command = ["texttune", "-q", "train", "examples/ellipse.yaml", *(f"--set={s}" for s in settings)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"texttune train failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    flags = set(Path("/proc/cpuinfo").read_text().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    print(f"CPU flags: {' '.join(sorted(flags))}")
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="texttune-checkpoint-bench-") as scratch:
        for repeat in range(args.repeats):
            for checkpoints in (False, True) if repeat % 2 == 0 else (True, False):
                output = Path(scratch) / f"run-{repeat}-{checkpoints}"
                seconds = run(output, checkpoints, args.epochs, args.max_length)
                times[checkpoints].append(seconds)
                print(f"  repeat {repeat + 1}, checkpoints {'on ' if checkpoints else 'off'}: {seconds:.1f} s")
                shutil.rmtree(output, ignore_errors=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"median with checkpoints {on:.1f} s, without {off:.1f} s: {on / off:.3f}x ({on - off:+.1f} s)")


if __name__ == "__main__":
    main()
