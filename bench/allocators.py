"""Allocators for training on CPU: glibc's defaults vs texttune's `retain` policy vs jemalloc vs tcmalloc.

Each variant runs texttune's default training path on ELLIPSE essays (bench/train_throughput.py's texttune
measurement) in a fresh process, interleaved, --repeats times; prints median seconds per step, user and system CPU
seconds, and peak RSS, with ratios to glibc's defaults measured in the same run. jemalloc and tcmalloc are
LD_PRELOAD-ed when their Debian packages (libjemalloc2, libtcmalloc-minimal4) are installed, skipped otherwise.

python bench/allocators.py [--repeats 3] [--steps 8] [--workload ellipse|sst5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBS = Path("/usr/lib/x86_64-linux-gnu")
VARIANTS = {
    "glibc": {"TEXTTUNE_MALLOC": "system"},
    "retain": {"TEXTTUNE_MALLOC": "retain"},
    "jemalloc": {"TEXTTUNE_MALLOC": "system", "LD_PRELOAD": str(LIBS / "libjemalloc.so.2")},
    "tcmalloc": {"TEXTTUNE_MALLOC": "system", "LD_PRELOAD": str(LIBS / "libtcmalloc_minimal.so.4")},
}


def _run(variant: str, workload: str, steps: int) -> dict[str, float]:
    env = {**os.environ, **VARIANTS[variant], "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--child", "texttune",
               "--workload", workload, "--steps", str(steps), "--warmup", "3"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
    if output.returncode or not lines:
        raise SystemExit(f"{variant} failed:\n{output.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    return {
        "seconds_per_step": result["seconds_per_step"],
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "peak_rss_mb": result["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workload", default="ellipse", choices=["ellipse", "sst5"])
    args = parser.parse_args()
    variants = [v for v in VARIANTS if "LD_PRELOAD" not in VARIANTS[v] or Path(VARIANTS[v]["LD_PRELOAD"]).exists()]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            runs[variant].append(_run(variant, args.workload, args.steps))
    medians = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    base = medians["glibc"]["seconds_per_step"]
    print(f"{args.workload}: {args.steps} timed steps after 3 warm-up, median of {args.repeats} (whole process CPU)")
    for variant, m in medians.items():
        print(
            f"  {variant:9} {m['seconds_per_step']:6.3f} s/step ({base / m['seconds_per_step']:4.2f}x glibc)  "
            f"user {m['user_s']:6.1f} s  system {m['system_s']:6.1f} s  peak RSS {m['peak_rss_mb']:6.0f} MB"
        )
    print(json.dumps({"workload": args.workload, "medians": medians}))


if __name__ == "__main__":
    main()
