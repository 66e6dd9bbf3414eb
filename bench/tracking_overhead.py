"""What tracking costs a real run: `texttune train` on the demo recipe (MiniLM) with `tracking.backend: none`
against the default embedded MLflow store (params, live metrics, plots, the 90 MB bundle logged and registered).

Each run is a fresh `texttune` process (import, store opening and all), interleaved; the tracked runs share one
store in a scratch folder, which the first creates, as a user's runs do. Medians of --repeats wall-clock seconds
and their ratio.

python bench/tracking_overhead.py [--repeats 3]
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


def _train(work: Path, backend: str, index: int) -> float:
    command = [str(Path(sys.executable).with_name("texttune")), "-q", "train", str(ROOT / "examples" / "demo.yaml")]
    overrides = [
        f"data.train={work / 'train.csv'}",
        f"output.dir={work / f'{backend}-{index}'}",
        f"tracking.backend={backend}",
        f"tracking.uri=sqlite:///{work / 'store' / 'mlflow.db'}",
    ]
    started = time.perf_counter()
    subprocess.run([*command, *(f"--set={item}" for item in overrides)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="texttune-tracking-bench-"))
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_demo_data.py"), str(work)], check=True)
    seconds: dict[str, list[float]] = {"none": [], "mlflow": []}
    for index in range(args.repeats):
        for backend in seconds:
            seconds[backend].append(_train(work, backend, index))
            print(f"run {index}: {backend} {seconds[backend][-1]:.1f} s", flush=True)
    none, tracked = statistics.median(seconds["none"]), statistics.median(seconds["mlflow"])
    shutil.rmtree(work)
    print(f"median: none {none:.1f} s, mlflow {tracked:.1f} s; tracking costs {tracked - none:+.1f} s "
          f"({tracked / none:.3f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
