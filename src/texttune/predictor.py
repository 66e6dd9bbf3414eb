"""`Predictor`: a loaded bundle that scores texts, single strings or whole tables, in their original order."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from texttune._hardware import use_bf16
from texttune._io import atomic_file
from texttune.bundle import ENSEMBLE_FILE, BundleInfo, load_bundle, load_ensemble
from texttune.data import PaddingCollator, encode_texts, read_table, read_texts, require_columns, text_joiner
from texttune.errors import TexttuneError
from texttune.models.heads import TextModel
from texttune.task import TaskSpec


class Predictor:
    """Scores texts with a trained bundle, or with the fold ensemble of a cv run.

    Inference sorts texts by length so that batches pad little, then restores the input order. An ensemble
    tokenizes each text once and averages its members: regression outputs, or class probabilities, optionally
    weighted.

    Example:
        >>> predictor = Predictor.load("texttune-runs/model")
        >>> predictor.predict(["a fine film", "a dull one"])
        >>> Predictor.load("texttune-runs/ellipse-cv").predict(essays)  # the average of the five folds
        >>> Predictor.load("models:/ellipse@best")  # the best registered cv ensemble, from the tracking store
    """

    def __init__(
        self,
        model: TextModel | Sequence[TextModel],
        tokenizer: Any,
        info: BundleInfo,
        batch_size: int = 64,
        precision: str = "auto",
        progress: bool = False,
        weights: Sequence[float] | None = None,
    ) -> None:
        if batch_size < 1:
            raise TexttuneError(f"batch_size must be a positive integer, got {batch_size}")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = [m.eval().to(self.device) for m in ([model] if isinstance(model, TextModel) else model)]
        weights = [1.0] * len(self.models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.models) or min(weights) < 0 or sum(weights) <= 0:
            raise TexttuneError(
                f"weights {weights} do not fit {len(self.models)} member(s): give one non-negative weight each"
            )
        self.weights = np.asarray(weights) / sum(weights)
        self.tokenizer = tokenizer
        self.info = info
        self.batch_size = batch_size
        self.bf16 = use_bf16(precision) and info.precision == "bf16"
        self.progress = progress
        self.collator = PaddingCollator(tokenizer.pad_token_id, tokenizer.padding_side, max_length=info.max_length)

    @classmethod
    def load(cls, path: str | Path, tracking_uri: str | None = None, **kwargs: Any) -> Predictor:
        """Load a bundle written by `texttune train`, a `texttune cv` run directory as the ensemble of its folds
        (with the manifest's weights unless `weights` is given), or a registered version such as
        `models:/ellipse@best` or `models:/ellipse/3`, fetched once from the MLflow store `tracking_uri`
        (None: $MLFLOW_TRACKING_URI, else the embedded `texttune-runs/mlflow.db`) into a local cache."""
        from texttune.tracking.models import fetch_model, is_model_uri

        if is_model_uri(path):
            path = fetch_model(str(path), tracking_uri)
        if (Path(path) / ENSEMBLE_FILE).is_file():
            models, tokenizer, info, weights = load_ensemble(path)
            return cls(models, tokenizer, info, **{"weights": weights, **kwargs})
        model, tokenizer, info = load_bundle(path)
        return cls(model, tokenizer, info, **kwargs)

    @property
    def task(self) -> TaskSpec:
        return self.info.task

    def predict_outputs(self, texts: Sequence[str]) -> np.ndarray:
        """Head outputs (N, C) in input order. An ensemble gives the weighted mean of its members' outputs, or for
        classes the log of their mean probabilities, so that softmax gives the averaged probabilities."""
        features = encode_texts(self.tokenizer, texts, self.info.max_length)
        order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        outputs = np.zeros((len(self.models), len(texts), self.task.num_outputs), dtype=np.float32)  # (M, N, C)
        starts = range(0, len(order), self.batch_size)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in tqdm(starts, desc="predict", disable=not self.progress, unit="batch"):
                index = order[start : start + self.batch_size]
                batch = {k: v.to(self.device) for k, v in self.collator([features[i] for i in index]).items()}
                for member, model in enumerate(self.models):
                    outputs[member, index] = model(**batch)["logits"].float().cpu().numpy()
        if len(self.models) == 1:
            return outputs[0]
        if self.task.is_regression:
            return np.tensordot(self.weights, outputs, axes=1)
        probabilities = np.tensordot(self.weights, self.task.postprocess(outputs), axes=1)
        return np.log(np.clip(probabilities, 1e-12, None)).astype(np.float32)

    def predict(self, texts: Sequence[str]) -> pd.DataFrame:
        """Scores per target, or the label and per-class probabilities, one row per text in input order."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; use predict_text for one string")
        scores = self.task.postprocess(self.predict_outputs(list(texts)))
        if self.task.is_regression:
            return pd.DataFrame(scores, columns=list(self.task.target_columns))
        labels = np.asarray(self.task.labels, dtype=object)[scores.argmax(axis=1)]
        probabilities = pd.DataFrame(scores, columns=[f"prob_{label}" for label in self.task.labels])
        return pd.concat([pd.DataFrame({"label": labels}), probabilities], axis=1)

    def predict_text(self, text: str) -> dict[str, Any]:
        """One text as a JSON-ready dict: label, index and probabilities, or scores per target."""
        row = self.predict([text]).iloc[0]
        if self.task.is_regression:
            return {"scores": {name: float(row[name]) for name in self.task.target_columns}}
        probabilities = {label: float(row[f"prob_{label}"]) for label in self.task.labels}
        return {"label": row["label"], "index": self.task.labels.index(row["label"]), "probabilities": probabilities}

    def texts_of(self, frame: pd.DataFrame) -> list[str]:
        """The model's input texts for a table's rows, its text columns joined as in training."""
        return read_texts(frame, self.info.text_columns, text_joiner(self.tokenizer))

    def predict_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A submission: the id column first when the bundle has one, then the label or one column per target."""
        if self.info.id_column:
            require_columns(frame, [self.info.id_column], "id")
        predictions = self.predict(self.texts_of(frame))
        if not self.task.is_regression:
            predictions = predictions[["label"]].rename(columns={"label": self.task.target_columns[0]})
        if self.info.id_column:
            predictions.insert(0, self.info.id_column, frame[self.info.id_column].to_numpy())
        return predictions

    def predict_file(self, source: str | Path, destination: str | Path, sep: str | None = None) -> pd.DataFrame:
        """Read a table, predict every row and write the submission CSV atomically."""
        submission = self.predict_table(read_table(source, sep))
        with atomic_file(destination) as staging:
            submission.to_csv(staging, index=False)
        return submission
