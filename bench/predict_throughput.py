"""Batch prediction throughput: a naive loop against texttune's engines, on SST-5 dev sentences and ELLIPSE essays.

For each model (a single bundle, or a cv run as a fold ensemble), texts/s, the median of --repeats runs, of:
- naive: fixed batches of 32 padded to max_length, fp32, in input order (what a first script does);
- torch-fp32: texttune's PyTorch engine (length-sorted token-budget batches) in fp32;
- torch-auto: the same in bf16 where the bundle was trained in bf16 and the CPU has it (else = torch-fp32);
- onnx-fp32 / onnx-int8: the bundle's ONNX exports (`texttune export --quantize int8`, made here if absent).
Each engine's quality next to it: max |output difference| against torch-fp32, and agreement and accuracy (classes)
or RMSE change (scores). Ratios are against torch-fp32 and the naive loop of the same run. Then the wall time of
`texttune predict MODEL --text ...` (start-up included), median of 5.

    python bench/predict_throughput.py --sst5 texttune-runs/sst5 --ellipse texttune-runs/ellipse \
        --ensemble texttune-runs/sst5-cv
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from texttune.bundle import ENSEMBLE_FILE, ensemble_members, load_bundle
from texttune.data import read_table
from texttune.export import cpu_description, export_bundle, validation_rows
from texttune.postprocess import softmax
from texttune.predictor import Predictor

SST5_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst5_dev.tsv"
ENGINES = ("torch-fp32", "torch-auto", "onnx-fp32", "onnx-int8")


def naive_outputs(bundle_dir: Path, texts: list[str]) -> np.ndarray:
    """Batches of 32 in input order, each padded to max_length, fp32: the loop a first script writes."""
    outputs = []
    for member in _members(bundle_dir):
        bundle = load_bundle(member)
        model, tokenizer = bundle.model.eval(), bundle.pipeline.tokenizer
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                batch = tokenizer(
                    texts[start : start + 32], padding="max_length", truncation=True,
                    max_length=bundle.pipeline.max_length, return_tensors="pt",
                )  # fmt: skip
                parts.append(model(batch["input_ids"], batch["attention_mask"])["logits"].numpy())
        outputs.append(np.concatenate(parts))
    if len(outputs) == 1 or bundle.info.task.is_regression:
        return np.mean(outputs, axis=0)
    return np.log(np.mean(softmax(np.stack(outputs)), axis=0))  # folds average probabilities, as texttune's do


def _members(path: Path) -> list[Path]:
    return [path / m for m in ensemble_members(path)] if (path / ENSEMBLE_FILE).is_file() else [path]


def timed(run, repeats: int) -> tuple[float, object]:
    result = run()  # warm-up: first-call allocations and ONNX Runtime's graph set-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def quality(predictor: Predictor, outputs: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> str:
    difference = float(np.abs(outputs - reference).max())
    ours, theirs = (predictor.info.postprocess.apply(o) for o in (outputs, reference))
    if predictor.task.is_regression:
        rmse, rmse_ref = (float(np.sqrt(((p - truth) ** 2).mean(axis=0)).mean()) for p in (ours, theirs))
        return f"max|diff| {difference:.2e}  MCRMSE {rmse:.4f} ({100 * (rmse - rmse_ref) / rmse_ref:+.2f}%)"
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    accuracy, accuracy_ref = (float((p.argmax(1) == truth).mean()) for p in (ours, theirs))
    return (
        f"max|diff| {difference:.2e}  agreement {100 * agreement:.2f}%  "
        f"accuracy {100 * accuracy:.2f}% ({100 * (accuracy - accuracy_ref):+.2f} pts)"
    )


def workload(name: str, path: Path, texts: list[str], truth: np.ndarray, repeats: int) -> None:
    if not all((member / "model.int8.onnx").is_file() for member in _members(path)):
        print(f"  exporting {path} (fp32 and int8) ...", flush=True)
        export_bundle(path, quantize=True, force=True)  # figures are printed below either way
    print(f"\n{name}: {path} ({len(_members(path))} member(s)), {len(texts)} texts, median of {repeats}")
    rows = {}
    naive_seconds, naive = timed(lambda: naive_outputs(path, texts), max(1, repeats // 2))
    reference_predictor = Predictor.load(path, engine="torch", precision="fp32")
    rows["naive"] = (naive_seconds, reference_predictor, naive)
    for engine in ENGINES:
        kind, _, precision = engine.partition("-")
        predictor = (
            Predictor.load(path, engine="torch", precision=precision)
            if kind == "torch"
            else Predictor.load(path, engine=engine)
        )
        seconds, outputs = timed(lambda p=predictor: p.outputs_of(p.pipeline.encode(texts)), repeats)
        rows[engine] = (seconds, predictor, outputs)
    reference = rows["torch-fp32"][2]
    print(f"  {'engine':<11} {'texts/s':>8} {'x torch-fp32':>13} {'x naive':>8}  quality against torch-fp32")
    for engine, (seconds, predictor, outputs) in rows.items():
        rate = len(texts) / seconds
        print(
            f"  {engine:<11} {rate:8.1f} {rows['torch-fp32'][0] / seconds:13.2f} {naive_seconds / seconds:8.2f}  "
            f"{quality(predictor, outputs, reference, truth)}"
        )


def startup(path: Path) -> None:
    command = [str(Path(sys.executable).with_name("texttune")), "-q", "predict", str(path), "--text", "A fine film."]
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    print(f"\n`texttune predict {path} --text ...`: {statistics.median(seconds):.2f} s wall (median of 5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst5", type=Path, help="a bundle trained on SST-5 (examples/sst5.yaml)")
    parser.add_argument("--ellipse", type=Path, help="a bundle trained on ELLIPSE (examples/ellipse.yaml)")
    parser.add_argument("--ensemble", type=Path, help="a cv run on SST-5 (its folds averaged)")
    parser.add_argument("--essays", type=int, default=200, help="essays timed (of the bundle's validation rows)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {os.cpu_count()} cores; flags: {' '.join(cpu['flags'])}; torch {torch.__version__}")
    if args.sst5 or args.ensemble:
        dev = read_table(SST5_DEV)
        texts, truth = dev["Phrase"].tolist(), dev["Sentiment"].to_numpy()
    if args.sst5:
        labels = list(load_bundle(args.sst5, model=False).info.task.labels)
        workload("SST-5 dev sentences", args.sst5, texts, np.array([labels.index(t) for t in truth]), args.repeats)
    if args.ellipse:
        essays, scores = validation_rows(load_bundle(args.ellipse, model=False))
        workload("ELLIPSE essays", args.ellipse, essays[: args.essays], scores[: args.essays], args.repeats)
    if args.ensemble:
        member = _members(args.ensemble)[0]
        labels = list(load_bundle(member, model=False).info.task.labels)
        truth = np.array([labels.index(t) for t in dev["Sentiment"]])
        workload("SST-5 dev, 5-fold ensemble", args.ensemble, texts, truth, args.repeats)
    for path in (args.sst5, args.ellipse):
        if path:
            startup(path)


if __name__ == "__main__":
    main()
