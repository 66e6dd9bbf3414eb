"""`texttune tune` on SST-5 (issue 18): a study on a small trial budget, then its best values trained in full.

The study searches examples/sst5_tune.yaml's space with 1 epoch over the first 3,000 training sentences per trial
(validated on 20% of them; dev is not seen), or with `--staged` the shipped recipe's three stages over --rows.
Its best values are then set on examples/sst5.yaml (all 8,544 sentences, its staged schedule) and trained, and that
model's dev accuracy is compared with the shipped recipe trained in the same run. The study, the plots and the
models stay in --workdir, never in the project.

python bench/tune_sst5.py [--trials 16] [--rows 3000] [--staged] [--workdir /tmp/texttune-tune-sst5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from texttune._hardware import cpu_model_and_flags

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "sst5_train.tsv"


def texttune(*arguments: str) -> str:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "texttune", "-q", *arguments], check=True, cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    print(f"  ({time.perf_counter() - started:.0f} s: texttune {arguments[0]})", flush=True)
    return done.stdout


def sets(values: dict[str, object]) -> list[str]:
    return [x for key, value in values.items() for x in ("--set", f"{key}={json.dumps(value)}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument(
        "--staged", action="store_true", help="trials run examples/sst5.yaml's three stages (a budget shaped like it)"
    )
    parser.add_argument("--workdir", default="/tmp/texttune-tune-sst5")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    subset = work / "train_subset.tsv"
    subset.write_text("\n".join(DATA.read_text().splitlines()[: args.rows + 1]) + "\n")
    private = {"tracking.uri": f"sqlite:///{work / 'mlflow.db'}", "tune.storage": f"sqlite:///{work / 'optuna.db'}"}
    study = {"data.train": str(subset), "output.dir": str(work / "study"), **private}
    budget = "1 epoch of one cycle"
    if args.staged:
        shipped = yaml.safe_load((ROOT / "examples" / "sst5.yaml").read_text())["training"]["stages"]
        study["training.stages"] = shipped
        budget = f"the shipped {len(shipped)} stages ({sum(s['epochs'] for s in shipped):g} epochs)"
    print(f"study: {args.trials} trials, {budget} on {args.rows} sentences each", flush=True)
    print(texttune("tune", "examples/sst5_tune.yaml", "--trials", str(args.trials), *sets(study)), flush=True)
    best = yaml.safe_load((work / "study" / "best.yaml").read_text())
    values = json.loads((work / "study" / "best.yaml").read_text().splitlines()[1].removeprefix("# values: "))
    print(f"best values: {values}", flush=True)
    tracking = {"tracking.uri": private["tracking.uri"]}
    results = {}
    for name, extra in (("shipped", {}), ("tuned", values)):
        overrides = {**extra, "output.dir": str(work / name), **tracking}
        summary = json.loads(texttune("train", "examples/sst5.yaml", *sets(overrides)))
        results[name] = summary["valid"]["accuracy"]
        print(f"{name}: dev accuracy {results[name]:.4f} ({summary['seconds']:.0f} s)", flush=True)
    assert best["tune"]["space"] == {}
    print(f"tuned - shipped: {100 * (results['tuned'] - results['shipped']):+.2f} points of dev accuracy")


if __name__ == "__main__":
    main()
