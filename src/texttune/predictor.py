"""`Predictor`: a loaded bundle that scores texts, single strings or whole tables, in their original order.

Layers, each written once: the bundle's `TextPipeline` turns rows into token ids; the texts are sorted by length
and cut into batches; a runner (`texttune.runners`) maps each padded batch to head outputs; the input order is
restored, ensemble members are averaged, and the bundle's post-processing turns outputs into predictions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from texttune._io import atomic_file, check_writable
from texttune.bundle import (
    BLEND_FILE,
    ENSEMBLE_FILE,
    MODEL_URI_PREFIX,
    Bundle,
    BundleInfo,
    load_bundle,
    load_ensemble,
    normalized_weights,
)
from texttune.data import read_table, read_texts, require_columns
from texttune.errors import TexttuneError
from texttune.pipeline import Features, TextPipeline
from texttune.postprocess import ClassPrior, PostProcessing, Temperature, softmax
from texttune.runners import OnnxRunner, Runner, TorchRunner, choose_engine, runs_in_bf16
from texttune.task import Examples, TaskSpec


class Predictor:
    """Scores texts with a trained bundle, or with the fold ensemble of a cv run.

    An ensemble tokenizes each text once and averages its members: regression outputs, or class probabilities,
    optionally weighted.

    Args:
        runners: one per ensemble member, each mapping a padded batch to head outputs.
        pipeline: how rows become token ids and padded batches (the bundle's).
        info: the task, the id column and the post-processing of the outputs.
        weights: one non-negative weight per member (default equal).
        batch_size: at most this many texts per forward pass.
        max_tokens: padded tokens per forward pass (texts x padded width): batches of short texts are larger.
            4096 was the fastest of 2048 to 16384 here on sentences and essays, in fp32 and bf16 (cache-sized).
        engine: the engine the runners are, as `texttune.runners.choose_engine` names it (shown by servers).

    Example:
        >>> predictor = Predictor.load("texttune-runs/model")
        >>> predictor.predict(["a fine film", "a dull one"])
        >>> Predictor.load("texttune-runs/ellipse-cv").predict(essays)  # the average of the five folds
        >>> Predictor.load("models:/ellipse@best")  # the best registered cv ensemble, from the tracking store
    """

    def __init__(
        self,
        runners: Sequence[Runner],
        pipeline: TextPipeline,
        info: BundleInfo,
        weights: Sequence[float] | None = None,
        batch_size: int = 128,
        max_tokens: int = 4096,
        progress: bool = False,
        engine: str = "torch",
    ) -> None:
        if batch_size < 1 or max_tokens < 1:
            raise TexttuneError(f"batch_size and max_tokens must be positive integers, got {batch_size}, {max_tokens}")
        self.runners = list(runners)
        self.weights = np.asarray(normalized_weights(weights, len(self.runners)))
        self.pipeline = pipeline
        # A fitted temperature divides each member's logits before their probabilities are averaged: it was fitted
        # and judged on single models' out-of-fold logits, and averaging already softens an ensemble.
        steps = info.postprocess.steps
        fitted = steps[0] if steps and isinstance(steps[0], Temperature) else None
        self.temperature = fitted.value if fitted else 1.0
        self.info = replace(info, postprocess=PostProcessing(steps[1:])) if fitted else info
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.progress = progress
        self.engine = engine
        self.about: dict[str, Any] = {}  # where it was loaded from, its scores and fidelity figures (`load`)

    @classmethod
    def load(
        cls,
        path: str | Path,
        tracking_uri: str | None = None,
        precision: str = "auto",
        engine: str = "auto",
        raw: bool = False,
        class_prior: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a bundle written by `texttune train`, a `texttune cv` run directory as the ensemble of its folds
        (with the manifest's weights unless `weights` is given), a `texttune blend` directory (`BlendPredictor`),
        or a registered version such as
        `models:/ellipse@best` or `models:/ellipse/3`, fetched once from the MLflow store `tracking_uri`
        (None: $MLFLOW_TRACKING_URI, else the embedded `texttune-runs/mlflow.db`) into a local cache.

        `engine` auto runs an ONNX export (`texttune export`) that passed its fidelity gate, int8 first, else
        PyTorch, which it also keeps where PyTorch runs in bf16 (faster then); torch, onnx, onnx-fp32 and onnx-int8
        ask for one. `precision` applies to PyTorch: auto runs bf16 where the bundle was trained in bf16 and this
        machine has it; fp32 never does. `raw` leaves out the post-processing a cv run fitted on its out-of-fold
        outputs (a temperature, snapping to the targets' grid), keeping the folds' own (softmax, clipping).
        `class_prior` (label -> share, for classes) moves the probabilities to a known test prior
        (`postprocess.ClassPrior`), from the training rows' shares a cv run records."""
        source = path
        if str(path).startswith(MODEL_URI_PREFIX):  # only then the tracking code (and MLflow) is imported
            from texttune.tracking.models import fetch_model

            path = fetch_model(str(path), tracking_uri)
        if (Path(path) / BLEND_FILE).is_file():
            from texttune.blend import load_blend

            blended = load_blend(path, raw=raw, precision=precision, engine=engine, **kwargs)
            return blended if class_prior is None else blended.moved_to(class_prior, Path(path))
        if (Path(path) / ENSEMBLE_FILE).is_file():
            members, info, weights = load_ensemble(path, model=False, raw=raw)
            kwargs = {"weights": weights, **kwargs}
        else:
            members = [load_bundle(path, model=False)]
            info = members[0].info
        bf16 = runs_in_bf16(info.precision, precision)
        # bf16 PyTorch beats ONNX Runtime's int8 where the CPU has bf16 (bench/predict_throughput.py)
        chosen = "torch" if engine == "auto" and bf16 else choose_engine([m.exports for m in members], engine)
        runners: list[Runner] = []
        for member in members:
            if chosen == "torch":
                runners.append(TorchRunner(member.model, bf16))
            else:
                runners.append(OnnxRunner(member.path / member.exports[chosen]["file"]))
        predictor = cls(runners, members[0].pipeline, info, engine=chosen, **kwargs)
        predictor.about = {"source": str(source), **_scores_and_fidelity(Path(path), members, chosen)}
        return predictor if class_prior is None else predictor.moved_to(class_prior, Path(path))

    def moved_to(self, prior: Mapping[str, float], path: Path) -> Predictor:
        """This predictor with its class probabilities moved to a known test prior (label -> share, or counts),
        from the training rows' class counts, which a cv run's or blend's manifest at `path` records."""
        labels = list(self.task.labels)
        if self.task.is_regression:
            raise TexttuneError(f"{path}: a class prior is for classification models; this one predicts scores")
        unknown, missing = sorted(set(prior) - set(labels)), [label for label in labels if label not in prior]
        if unknown or missing:
            raise TexttuneError(
                f"class prior: {'unknown labels ' + str(unknown) if unknown else 'no share for ' + str(missing)}; "
                f"give a share for each of the model's labels {labels}"
            )
        if not all(np.isfinite(prior[label]) and prior[label] > 0 for label in labels):
            raise TexttuneError(f"class prior: every share must be positive, got {dict(prior)}")
        counts = _class_counts(path)
        if counts is None or set(counts) != set(labels):
            raise TexttuneError(
                f"{path}: a class prior needs the training rows' class counts, which a cv run or blend records; "
                "predict with a texttune cv run (or blend)"
            )
        shift = ClassPrior.between([counts[label] for label in labels], [prior[label] for label in labels])
        self.info = replace(self.info, postprocess=PostProcessing((shift, *self.info.postprocess.steps)))
        self.about = {**self.about, "class_prior": {label: float(prior[label]) for label in labels}}
        return self

    @property
    def task(self) -> TaskSpec:
        return self.info.task

    def card(self) -> dict[str, Any]:
        """What a service shows about its model: task, outputs, backbone, engine, version, scores."""
        task = self.task
        if task.is_regression:  # the training range of each target, which the scores are read against
            ranges = zip(task.target_columns, task.target_min or (), task.target_max or ())
            outputs = {"targets": list(task.target_columns), "ranges": {t: [lo, hi] for t, lo, hi in ranges}}
        else:
            outputs = {"target": task.target_columns[0], "labels": list(task.labels)}
        return {
            "task": self.task.kind,
            **outputs,
            "text_columns": list(self.pipeline.text_columns),
            "max_length": self.pipeline.max_length,
            "backbone": self.info.backbone,
            "members": len(self.runners),
            **({"temperature": self.temperature} if self.temperature != 1.0 else {}),
            "engine": self.engine,
            "version": self.info.versions.get("texttune"),
            **self.about,
        }

    def outputs_of(self, features: Sequence[Features]) -> np.ndarray:
        """Head outputs (N, C) of tokenized texts, in their order. An ensemble gives the weighted mean of its
        members' outputs, or for classes the log of their mean probabilities, so that softmax gives the averaged
        probabilities."""
        outputs = np.zeros((len(self.runners), len(features), self.task.num_outputs), dtype=np.float32)  # (M, N, C)
        collate = self.pipeline.collate
        batches = self.pipeline.batches(features, self.max_tokens, self.batch_size)
        for index in tqdm(batches, desc="predict", disable=not self.progress, unit="batch"):
            batch = collate([features[i] for i in index])
            for member, runner in enumerate(self.runners):
                outputs[member, index] = runner(batch)
        if self.temperature != 1.0:
            outputs /= self.temperature
        if len(self.runners) == 1:
            return outputs[0]
        if self.task.is_regression:
            return np.tensordot(self.weights, outputs, axes=1)
        probabilities = np.tensordot(self.weights, softmax(outputs), axes=1)
        return np.log(np.clip(probabilities, 1e-12, None)).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> list[Any]:
        """Texts tokenized once, as `outputs_of` takes them (the server tokenizes apart from running the model)."""
        return self.pipeline.encode(texts)

    def tokens(self, encoded: Any) -> int:
        """The tokens of one encoded text: what a server's token budget counts."""
        return len(encoded["input_ids"])

    def predict_outputs(self, texts: Sequence[str]) -> np.ndarray:
        """Head outputs (N, C) in input order (see `outputs_of`)."""
        return self.outputs_of(self.encode(texts))

    def predictions(self, outputs: np.ndarray) -> pd.DataFrame:
        """Head outputs post-processed: scores per target, or the label and per-class probabilities."""
        scores = self.info.postprocess.apply(outputs)
        if self.task.is_regression:
            return pd.DataFrame(scores, columns=list(self.task.target_columns))
        labels = np.asarray(self.task.labels, dtype=object)[scores.argmax(axis=1)]
        probabilities = pd.DataFrame(scores, columns=[f"prob_{label}" for label in self.task.labels])
        return pd.concat([pd.DataFrame({"label": labels}), probabilities], axis=1)

    def prediction_table(self, examples: Examples, outputs: np.ndarray) -> pd.DataFrame:
        """Labelled examples' truth next to their predictions: `row` (position in the source table), the id, the
        targets, `pred_<target>` (and `prob_<class>`), then the raw head outputs `raw_<target or class>`. A bundle's
        valid_predictions.csv; cross-validation gathers them as its out-of-fold table."""
        spec, id_column = self.task, self.info.id_column
        table = pd.DataFrame(
            {"row": examples.rows, **({id_column: examples.ids} if id_column else {}), **examples.truth}
        )
        names = list(spec.target_columns) if spec.is_regression else ["label"]
        renamed = {name: f"pred_{column}" for name, column in zip(names, spec.target_columns)}
        raw = pd.DataFrame(
            outputs, columns=[f"raw_{n}" for n in (spec.target_columns if spec.is_regression else spec.labels)]
        )
        return pd.concat([table, self.predictions(outputs).rename(columns=renamed), raw], axis=1)

    def predict(self, texts: Sequence[str]) -> pd.DataFrame:
        """Scores per target, or the label and per-class probabilities, one row per text in input order."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; use predict_text for one string")
        return self.predictions(self.predict_outputs(list(texts)))

    def records(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Head outputs post-processed as JSON-ready dicts, one per row: label, index and probabilities, or scores
        per target (the values of `predictions`)."""
        scores = self.info.postprocess.apply(outputs).tolist()
        if self.task.is_regression:
            return [{"scores": dict(zip(self.task.target_columns, row))} for row in scores]
        labels = list(self.task.labels)
        return [
            {"label": labels[index], "index": index, "probabilities": dict(zip(labels, row))}
            for index, row in zip(np.argmax(scores, axis=1).tolist(), scores)
        ]

    def predict_text(self, text: str) -> dict[str, Any]:
        """One text as a JSON-ready dict: label, index and probabilities, or scores per target."""
        return self.records(self.predict_outputs([text]))[0]

    def texts_of(self, frame: pd.DataFrame) -> list[str]:
        """The model's input texts for a table's rows, its text columns joined as in training."""
        return self.pipeline.join(read_texts(frame, self.pipeline.text_columns))

    def predict_table(self, frame: pd.DataFrame, probabilities: bool = False) -> pd.DataFrame:
        """A submission: the id column first when the bundle has one, then the label or one column per target;
        with `probabilities`, the label's column is followed by `prob_<label>` per class (log-loss submissions)."""
        if self.info.id_column:
            require_columns(frame, [self.info.id_column], "id")
        predictions = self.predict(self.texts_of(frame))
        if not self.task.is_regression:
            kept = ["label", *(f"prob_{label}" for label in self.task.labels)] if probabilities else ["label"]
            predictions = predictions[kept].rename(columns={"label": self.task.target_columns[0]})
        if self.info.id_column:
            predictions.insert(0, self.info.id_column, frame[self.info.id_column].to_numpy())
        return predictions

    def predict_file(
        self, source: str | Path, destination: str | Path, sep: str | None = None, probabilities: bool = False
    ) -> pd.DataFrame:
        """Read a table, predict every row and write the submission CSV atomically, one row per input row.

        Raises:
            TexttuneError: an unreadable table, or a destination that cannot be written (checked first).
        """
        if Path(destination).is_dir():
            raise TexttuneError(f"--output {destination} is a folder; give the path of the CSV file to write")
        check_writable(destination, "--output")
        frame = read_table(source, sep)
        submission = self.predict_table(frame, probabilities)
        if len(submission) != len(frame):  # never a misaligned submission
            raise TexttuneError(f"{source}: {len(frame)} rows read but {len(submission)} predicted; nothing written")
        with atomic_file(destination) as staging:
            submission.to_csv(staging, index=False)
        return submission


def _class_counts(path: Path) -> dict[str, float] | None:
    """The training rows' count per class that a cv run's or blend's manifest records (an older cv run's report)."""
    for file in (ENSEMBLE_FILE, BLEND_FILE):
        if (path / file).is_file():
            try:
                manifest = json.loads((path / file).read_text())
                if "class_counts" in manifest:
                    return {str(k): float(v) for k, v in dict(manifest["class_counts"]).items()}
                if file == BLEND_FILE:  # an older blend: its runs share their rows, so the first run's counts
                    return _class_counts(path / str(manifest["runs"][0]))
                matrix = json.loads((path / "cv_report.json").read_text())["confusion_matrix"]
                return {str(k): float(sum(row)) for k, row in zip(matrix["labels"], matrix["counts"])}
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def _scores_and_fidelity(path: Path, members: Sequence[Bundle], engine: str) -> dict[str, Any]:
    """A loaded model's validation scores (a cv run's out-of-fold ones) and its engine's fidelity figures."""
    if (path / ENSEMBLE_FILE).is_file():
        manifest = json.loads((path / ENSEMBLE_FILE).read_text())
        scores, kind = manifest.get("oof", {}), "cv (out of fold)"
        if "seeds" in manifest:  # a training.seeds run: its averaged seeds on their shared validation rows
            scores, kind = manifest.get("valid", {}), "validation (seeds averaged)"
    else:
        metrics = path / "metrics.json"
        scores = json.loads(metrics.read_text()).get("valid", {}) if metrics.is_file() else {}
        kind = "validation"
    scores = {name: value for name, value in scores.items() if name not in ("stage", "step", "epoch")}
    fidelity = {member.path.name: member.exports[engine] for member in members if engine in member.exports}
    return {"score": {"kind": kind, **scores}, "fidelity": fidelity}
