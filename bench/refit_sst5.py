"""A full-data refit against the 80% model (issue 18), on SST-5: both scored on dev, which neither trained on.

The 80% model is examples/sst5.yaml with 20% of the training sentences held out for validation (its kept
checkpoint chosen on them). The refit trains the same recipe on all 8,544 sentences with no evaluation, for the
epochs the 80% model's kept evaluation had reached (its stages cut there), as `texttune cv --refit` does with
the folds' choice. Models go to --workdir, never into the project.

python bench/refit_sst5.py [--seeds 42 43 44] [--workdir /tmp/texttune-refit-sst5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from texttune import Predictor, load_recipe, train
from texttune._hardware import cpu_model_and_flags

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".." / "shared" / "data" / "sst5_dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--workdir", default="/tmp/texttune-refit-sst5")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    dev = pd.read_csv(DEV, sep="\t", keep_default_na=False)
    truth = dev["Sentiment"].astype(str).to_numpy()
    scores: dict[str, list[float]] = {"split": [], "full": []}
    for seed in args.seeds:
        work = Path(args.workdir) / f"seed-{seed}"
        quiet = ["tracking.backend=none", "data.valid=null", f"training.seed={seed}"]
        split = load_recipe(ROOT / "examples" / "sst5.yaml", [*quiet, f"output.dir={work / 'split'}"])
        if not (work / "split" / "metrics.json").is_file():
            started = time.perf_counter()
            train(split)
            print(f"seed {seed}: 80% model trained in {time.perf_counter() - started:.0f} s", flush=True)
        kept = json.loads((work / "split" / "metrics.json").read_text())["valid"]
        full = load_recipe(
            ROOT / "examples" / "sst5.yaml", [*quiet, "data.valid_fraction=0", f"output.dir={work / 'full'}"]
        )
        full = full.model_copy(update={"training": full.training.cut_at(kept["epoch"])})
        if not (work / "full" / "metrics.json").is_file():
            started = time.perf_counter()
            train(full)
            print(f"seed {seed}: refit trained in {time.perf_counter() - started:.0f} s", flush=True)
        for name in ("split", "full"):
            predicted = Predictor.load(work / name).predict(dev["Phrase"].tolist())["label"].astype(str).to_numpy()
            scores[name].append(float(np.mean(predicted == truth)))
        print(
            f"seed {seed}: 80% model validation {kept['accuracy']:.4f} at epoch {kept['epoch']}; dev accuracy "
            f"80% model {scores['split'][-1]:.4f}, refit ({kept['epoch']:g} epochs) {scores['full'][-1]:.4f}",
            flush=True,
        )
    for name, label in (("split", "80% model"), ("full", "full-data refit")):
        print(
            f"{label}: dev accuracy mean {np.mean(scores[name]):.4f} +- {np.std(scores[name]):.4f}, seeds {args.seeds}"
        )


if __name__ == "__main__":
    main()
