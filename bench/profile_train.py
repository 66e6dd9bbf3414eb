"""Where does a training step's time go? The torch profiler over texttune's default path (issue 4's profiling).

Runs bench/train_throughput.py's texttune workload with a profiler callback (3 active steps after 2 skipped) and
prints the top operators by self CPU time. --isa avx2 caps the kernels at AVX2 (fp32), as bench/train_throughput.py
does; --set passes recipe overrides (e.g. model.attention=sdpa).

python bench/profile_train.py [--workload ellipse|sst5] [--rows 20] [--isa avx2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # noqa: E402


class Profile(TrainerCallback):
    def __init__(self) -> None:
        schedule = torch.profiler.schedule(wait=2, warmup=1, active=3)
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule)

    def on_train_begin(self, args, state, control, **kwargs):
        self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.profiler.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="ellipse", choices=list(train_throughput.WORKLOADS))
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":  # before torch reads them
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **train_throughput.AVX2_CAP})
    profile = Profile()
    result = train_throughput.run_texttune(args.workload, 4, 2, callbacks=(profile,), overrides=args.overrides)
    print(profile.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"{result['seconds_per_step']:.3f} s/step while profiling")


if __name__ == "__main__":
    main()
