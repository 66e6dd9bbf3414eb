"""Post-processing fitted on out-of-fold predictions, on ELLIPSE (issue 17): is the held-out score better or worse?

400 of the 2,000 essays are held out (fixed seed); `texttune cv examples/ellipse.yaml` runs 5 folds on the other
1,600, once per seed, every seed on the first seed's fold plan. For each run: the OOF MCRMSE before and
cross-fitted after its post-processing, and on the held-out essays the fold ensemble without (`--raw`) and with it.
Then the seeds' ensembles averaged with equal weights, and `texttune blend` of the seeds (weights fitted on OOF).
The essays are copied into --workdir, never into the project.

python bench/postprocess_ellipse.py [--seeds 42 43 44] [--workdir /tmp/texttune-postprocess-ellipse]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from texttune import Predictor
from texttune._hardware import cpu_model_and_flags
from texttune.blend import blend
from texttune.metrics import regression_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "ellipse_train.csv"
TARGETS = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/texttune-postprocess-ellipse")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    essays = pd.read_csv(DATA, dtype={"text_id": str}, keep_default_na=False)
    order = np.random.default_rng(0).permutation(len(essays))
    held_out, kept = essays.iloc[order[: args.held_out]], essays.iloc[order[args.held_out :]]
    kept.to_csv(work / "cv.csv", index=False)
    truth = held_out[TARGETS].to_numpy(dtype=float)
    texts = held_out["full_text"].tolist()
    print(f"{len(kept)} essays in 5-fold cv, {len(held_out)} held out (seed 0)", flush=True)
    plain, fitted = [], []
    for seed in args.seeds:
        run = work / f"seed-{seed}"
        if not (run / "cv_report.json").is_file():
            command = [sys.executable, "-m", "texttune", "-q", "cv", str(ROOT / "examples" / "ellipse.yaml")]
            overrides = [f"data.train={work / 'cv.csv'}", "cv.folds=5", f"training.seed={seed}", f"output.dir={run}"]
            overrides.append("tracking.backend=none")
            if seed != args.seeds[0]:  # every seed on the first seed's fold plan, so that they can be blended
                overrides.append(f"cv.seed={args.seeds[0]}")
            subprocess.run([*command, *(x for o in overrides for x in ("--set", o))], check=True, cwd=ROOT)
        report = json.loads((run / "cv_report.json").read_text())
        post = report["postprocess"]
        steps = [f"{s['name']} {dict(zip(TARGETS, s.get('weight', [])))}" for s in post["steps"]] or ["none kept"]
        raw = Predictor.load(run, raw=True).predict(texts)[TARGETS].to_numpy()
        done = Predictor.load(run).predict(texts)[TARGETS].to_numpy()
        plain.append(raw)
        fitted.append(done)
        before = np.mean(list(post["before"].values()))
        after = np.mean(list(post["cross_fitted"].values()))
        print(
            f"seed {seed}: OOF MCRMSE {report['oof']['mcrmse']:.5f} (clipped {before:.5f}), cross-fitted after "
            f"post-processing {after:.5f}; steps: {'; '.join(steps)}\n"
            f"  held-out MCRMSE: fold ensemble {_mcrmse(raw, truth):.5f}, post-processed {_mcrmse(done, truth):.5f}",
            flush=True,
        )
    if len(args.seeds) > 1:
        print(
            f"the seeds' ensembles averaged (equal weights), held-out MCRMSE: "
            f"{_mcrmse(np.mean(plain, axis=0), truth):.5f} without post-processing, "
            f"{_mcrmse(np.mean(fitted, axis=0), truth):.5f} with each run's"
        )
        mixed = blend([work / f"seed-{seed}" for seed in args.seeds], work / "blend")
        weights = np.round(mixed.weights, 3).tolist()
        raw = Predictor.load(work / "blend", raw=True).predict(texts)[TARGETS].to_numpy()
        done = Predictor.load(work / "blend").predict(texts)[TARGETS].to_numpy()
        print(
            f"texttune blend of the {len(args.seeds)} seeds: OOF MCRMSE {mixed.blend['mcrmse']:.5f}, weights per "
            f"target {weights}, post-processing {[s['name'] for s in mixed.postprocess] or 'none kept'}\n"
            f"  held-out MCRMSE: {_mcrmse(raw, truth):.5f} without post-processing, {_mcrmse(done, truth):.5f} with"
        )


def _mcrmse(predictions: np.ndarray, truth: np.ndarray) -> float:
    return regression_metrics(predictions, truth, TARGETS)["mcrmse"]


if __name__ == "__main__":
    main()
