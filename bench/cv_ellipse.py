"""ELLIPSE fold ensemble vs single folds on a held-out set (issue 5).

Holds out 400 essays of ../shared/data/ellipse_train.csv (seeded), runs `texttune cv` with 5 folds on the other
1,600 (the ELLIPSE recipe with shorter max_length and epochs to fit the time), then scores on the 400: each fold's
bundle alone and the run directory as one ensemble predictor. The split lives in a scratch folder outside the
project; nothing from ../shared/data is written into it.

python bench/cv_ellipse.py [--workdir /tmp/texttune-ellipse-cv] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from texttune import Predictor, load_recipe
from texttune.cv import format_report, run_cv
from texttune.data import read_table
from texttune.metrics import regression_metrics

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ellipse_train.csv"
TARGETS = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/texttune-ellipse-cv")
    parser.add_argument("--holdout", type=int, default=400)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    frame = read_table(DATA)
    held_out = frame.sample(n=args.holdout, random_state=2026)
    frame.drop(held_out.index).to_csv(work / "train.csv", index=False)
    defaults = ["model.max_length=256", "training.epochs=2", "cv.folds=5"]
    overrides = [*defaults, f"data.train={work / 'train.csv'}", f"output.dir={work / 'run'}", *args.overrides]
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "ellipse.yaml", overrides)
    started = time.perf_counter()
    result = run_cv(recipe)
    minutes = (time.perf_counter() - started) / 60
    print(format_report(result.report))
    truth = held_out[TARGETS].astype(float).to_numpy()
    texts = held_out["full_text"].tolist()

    def score(path: Path) -> float:
        predictions = Predictor.load(path).predict(texts)[TARGETS].to_numpy()
        return regression_metrics(predictions, truth, TARGETS)["mcrmse"]

    folds = [score(result.run / f"fold-{k}") for k in range(recipe.cv.folds)]
    ensemble = score(result.run)
    print(f"\nheld-out {args.holdout} essays, MCRMSE:")
    for fold, value in enumerate(folds):
        print(f"  fold {fold}: {value:.4f}")
    print(f"  mean of single folds: {np.mean(folds):.4f}")
    print(f"  fold ensemble:        {ensemble:.4f}  (ratio to the mean of folds: {ensemble / np.mean(folds):.3f})")
    print(f"  OOF MCRMSE on the 1,600: {result.report['oof']['mcrmse']:.4f}; cv took {minutes:.1f} min")
    summary = {
        "oof_mcrmse": result.report["oof"]["mcrmse"],
        "holdout_folds": folds,
        "holdout_fold_mean": float(np.mean(folds)),
        "holdout_ensemble": ensemble,
        "cv_minutes": round(minutes, 1),
        "overrides": overrides,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
