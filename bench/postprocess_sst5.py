"""Temperature scaling fitted on out-of-fold logits, on SST-5 (issue 17): calibration on dev before and after.

`texttune cv examples/sst5.yaml` runs 5 folds on the 8,544 training sentences (dev is not seen by cv). Its
temperature is fitted on the OOF logits (kept only where the cross-fitted log-loss falls). Then, on the 1,101 dev
sentences: accuracy, log-loss and expected calibration error (15 equal-width bins) of the fold ensemble without
(`raw=True`) and with it, and of one fold's model alone, since averaging five models already softens them.

python bench/postprocess_sst5.py [--folds 5] [--workdir /tmp/texttune-postprocess-sst5]
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
from texttune.postprocess import expected_calibration_error, log_loss_of

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".." / "shared" / "data" / "sst5_dev.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/texttune-postprocess-sst5")
    args = parser.parse_args()
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}; flags: {' '.join(flags)}", flush=True)
    run = Path(args.workdir) / "cv"
    if not (run / "cv_report.json").is_file():
        overrides = [f"cv.folds={args.folds}", f"output.dir={run}", "tracking.backend=none"]
        command = [sys.executable, "-m", "texttune", "-q", "cv", str(ROOT / "examples" / "sst5.yaml")]
        subprocess.run([*command, *(x for o in overrides for x in ("--set", o))], check=True, cwd=ROOT)
    report = json.loads((run / "cv_report.json").read_text())
    post = report["postprocess"]
    fitted = {s["name"]: s for s in post["steps"]}
    print(
        f"OOF ({len(pd.read_csv(run / 'oof.csv'))} sentences, accuracy {report['oof']['accuracy']:.4f}): "
        f"log-loss {post['before']['log_loss']:.4f} -> {post['cross_fitted']['log_loss']:.4f} cross-fitted, "
        f"ECE {post['before']['ece']:.4f} -> {post['cross_fitted']['ece']:.4f}; "
        f"temperature {fitted['temperature']['value']:.3f} kept"
        if fitted
        else "temperature not kept",
        flush=True,
    )
    dev = pd.read_csv(DEV, sep="\t", keep_default_na=False)
    raw = Predictor.load(run, raw=True)
    names = [str(label) for label in raw.task.labels]
    labels = np.array([names.index(str(v)) for v in dev["Sentiment"]])
    texts = dev["Phrase"].tolist()
    temperature = fitted["temperature"]["value"] if fitted else 1.0
    ensemble_raw = raw.predict_outputs(texts)
    ensemble_fitted = Predictor.load(run).predict_outputs(texts)
    single = Predictor.load(run / "fold-0").predict_outputs(texts)
    print(f"dev, {len(texts)} sentences: accuracy, log-loss, ECE")
    for name, logits in [
        ("fold ensemble, raw", ensemble_raw),
        (f"fold ensemble, temperature {temperature:.3f}", ensemble_fitted),
        ("fold 0 alone, raw", single),
        (f"fold 0 alone, temperature {temperature:.3f}", single / temperature),
    ]:
        accuracy = float((logits.argmax(axis=1) == labels).mean())
        print(
            f"  {name:<40} {accuracy:.4f}  {log_loss_of(logits, labels):.4f}  "
            f"{expected_calibration_error(logits, labels):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
