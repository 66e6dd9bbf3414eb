"""Temperature scaling fitted on out-of-fold logits, on SST-5 (issue 17): calibration on dev before and after.

`texttune cv examples/sst5.yaml` runs 5 folds on the 8,544 training sentences (dev is not seen by cv). Its
temperature is fitted on the OOF logits (kept only where the cross-fitted log-loss falls). Then, on the 1,101 dev
sentences: accuracy, log-loss and expected calibration error (15 equal-width bins) of the fold ensemble without
(`raw=True`) and with it, and of one fold's model alone, since averaging five models already softens them. Where
the cross-fitted gate drops the temperature, the one fitted on all OOF rows is shown on dev all the same.

python bench/postprocess_sst5.py [--folds 5] [--set task.label_smoothing=0] [--workdir /tmp/texttune-postprocess-sst5]
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
from texttune.postprocess import Temperature, expected_calibration_error, log_loss_of, softmax

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".." / "shared" / "data" / "sst5_dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe overrides, e.g. "
                        "task.label_smoothing=0")  # fmt: skip
    parser.add_argument("--workdir", default="/tmp/texttune-postprocess-sst5")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    run = Path(args.workdir) / "cv"
    if not (run / "cv_report.json").is_file():
        overrides = [f"cv.folds={args.folds}", f"output.dir={run}", "tracking.backend=none", *args.overrides]
        command = [sys.executable, "-m", "texttune", "-q", "cv", str(ROOT / "examples" / "sst5.yaml")]
        subprocess.run([*command, *(x for o in overrides for x in ("--set", o))], check=True, cwd=ROOT)
    report = json.loads((run / "cv_report.json").read_text())
    post = report["postprocess"]
    kept = bool(post["steps"])
    oof = pd.read_csv(run / "oof.csv", keep_default_na=False, dtype=str)
    raw = Predictor.load(run, raw=True)
    names = [str(label) for label in raw.task.labels]
    oof_logits = oof[[f"raw_{name}" for name in names]].to_numpy(dtype=float)
    temperature = Temperature().fit(oof_logits, oof["Sentiment"].map(names.index).to_numpy()).value
    print(
        f"OOF ({len(oof)} sentences, accuracy {report['oof']['accuracy']:.4f}): log-loss "
        f"{post['before']['log_loss']:.4f} -> {post['cross_fitted']['log_loss']:.4f} cross-fitted, ECE "
        f"{post['before']['ece']:.4f} -> {post['cross_fitted']['ece']:.4f}; temperature {temperature:.3f} fitted on "
        f"all OOF rows, {'kept' if kept else 'not kept (cross-fitted log-loss gain below 0.1%)'}",
        flush=True,
    )
    dev = pd.read_csv(DEV, sep="\t", keep_default_na=False)
    labels = np.array([names.index(str(v)) for v in dev["Sentiment"]])
    texts = dev["Phrase"].tolist()
    members = np.stack([Predictor.load(run / f"fold-{k}").predict_outputs(texts) for k in range(args.folds)])

    def ensemble(t: float) -> np.ndarray:  # as the Predictor does: each fold's logits / t, probabilities averaged
        return np.log(softmax(members / t).mean(axis=0))

    print(f"dev, {len(texts)} sentences: accuracy, log-loss, ECE (15 bins)")
    rows = [
        ("fold ensemble, raw", ensemble(1.0)),
        (f"fold ensemble, temperature {temperature:.3f}", ensemble(temperature)),
        ("fold 0 alone, raw", members[0]),
        (f"fold 0 alone, temperature {temperature:.3f}", members[0] / temperature),
    ]
    shipped = Predictor.load(run).predict_outputs(texts)  # what texttune predict RUN gives
    np.testing.assert_allclose(shipped, ensemble(temperature if kept else 1.0), atol=1e-4)
    for name, logits in rows:
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        print(
            f"  {name:<40} {accuracy:.4f}  {log_loss_of(logits, labels):.4f}  "
            f"{expected_calibration_error(logits, labels):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
