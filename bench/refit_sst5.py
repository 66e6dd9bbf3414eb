"""A full-data refit against the 80% model (issue 18), on SST-5: both scored on dev, which neither trained on.

The 80% model is examples/sst5.yaml with 20% of the training sentences held out for validation (its kept
checkpoint chosen on them). The refit trains the same recipe on all 8,544 sentences with no evaluation, for the
epochs the 80% model's kept evaluation had reached (its stages cut there), as `texttune cv --refit` does with
the folds' choice. Models go to --workdir, never into the project.

python bench/refit_sst5.py [--workdir /tmp/texttune-refit-sst5]
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--workdir", default="/tmp/texttune-refit-sst5")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    work = Path(args.workdir)
    quiet = ["tracking.backend=none", "data.valid=null"]
    split = load_recipe(ROOT / "examples" / "sst5.yaml", [*quiet, f"output.dir={work / 'split'}"])
    started = time.perf_counter()
    eighty = train(split)
    epoch = eighty.metrics["epoch"]
    print(f"80% model: validation accuracy {eighty.metrics['accuracy']:.4f} at epoch {epoch} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    full = load_recipe(
        ROOT / "examples" / "sst5.yaml", [*quiet, "data.valid_fraction=0", f"output.dir={work / 'full'}"]
    )
    full = full.model_copy(update={"training": full.training.cut_at(epoch)})
    started = time.perf_counter()
    train(full)
    print(f"full-data refit: {sum(s.epochs for s in full.training.stage_plan()):g} epochs on every row "
          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    dev = pd.read_csv(DEV, sep="\t", keep_default_na=False)
    truth = dev["Sentiment"].astype(str).to_numpy()
    for name in ("split", "full"):
        predicted = Predictor.load(work / name).predict(dev["Phrase"].tolist())["label"].astype(str).to_numpy()
        print(f"{name:>6}: dev accuracy {np.mean(predicted == truth):.4f} ({len(dev)} sentences)", flush=True)


if __name__ == "__main__":
    main()
