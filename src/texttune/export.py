"""`export_bundle`: a bundle's whole model (encoder, pooling, head) as ONNX, optionally int8, kept only if it passes
its fidelity gate.

The gate runs the export and PyTorch (fp32) on the bundle's own validation rows (the rows of valid_predictions.csv,
read back from the table its recipe names) and compares:
- fp32: max |head output difference| <= 1e-4;
- int8: top-1 agreement with PyTorch >= 99% and accuracy at most 0.5 points lower, or for regression an RMSE at
  most 1% (relative) higher.
The figures, the verdict and the CPU flags of the machine that measured them are written into `texttune.json`
(`exports`), and the files join the bundle's hash manifest. `Predictor.load(engine="auto")` uses an export only if
it passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from texttune._hardware import cpu_has_vnni, cpu_model_and_flags
from texttune.bundle import (
    BUNDLE_FILE,
    CHECKPOINTS,
    ENSEMBLE_FILE,
    VALID_PREDICTIONS,
    Bundle,
    add_exports,
    ensemble_members,
    load_bundle,
)
from texttune.config import build_recipe
from texttune.data import read_table, read_texts
from texttune.errors import TexttuneError, first_line
from texttune.models.heads import TextModel
from texttune.models.registry import attention_kernels
from texttune.postprocess import PostProcessing
from texttune.predictor import Predictor
from texttune.runners import OnnxRunner, TorchRunner
from texttune.task import TaskSpec

logger = logging.getLogger(__name__)

FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
MAX_FP32_DIFFERENCE = 1e-4
MIN_INT8_AGREEMENT = 0.99
MAX_INT8_ACCURACY_DROP = 0.005  # 0.5 points
MAX_INT8_RMSE_INCREASE = 0.01  # relative
OPSET = 18


@dataclass(frozen=True)
class Export:
    """One exported engine of one bundle: its file, how it was made, and its gate."""

    engine: str  # onnx-fp32 or onnx-int8
    file: str
    exporter: str  # dynamo, or legacy (TorchScript) where the default exporter failed
    passed: bool
    figures: dict[str, float]
    cpu: dict[str, Any] = field(default_factory=dict)
    reduce_range: bool | None = None  # int8: 7-bit weights, for CPUs without VNNI
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED (kept with --force)" if self.forced else "failed"
        figures = ", ".join(f"{name} {value:.6g}" for name, value in self.figures.items())
        return f"{self.engine} {verdict} its fidelity gate: {figures}"


def cpu_description() -> dict[str, Any]:
    """The CPU that measured a gate: its model name, the instruction sets our kernels depend on, and the ONNX
    Runtime version whose kernels ran."""
    import onnxruntime

    model, flags = cpu_model_and_flags()
    return {"model": model, "flags": list(flags), "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters and the quantizer log each pass and node at INFO and WARNING (on the root logger too) and
    warn about tracing: none of it is the user's business; failures still raise."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]  # torch.onnx has a handler of its own
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Logits(nn.Module):
    """The model with a tensor out: exporters want tensors, not dicts."""

    def __init__(self, model: TextModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ):  # noqa: E501
        return self.model(input_ids, attention_mask, token_type_ids)["logits"]


def _has_dynamic_axes(path: Path) -> bool:
    """Every input's batch and sequence axes are symbols, not the sample's sizes baked in."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return all(
        len(dims) == 2 and all(dim.dim_param and not dim.HasField("dim_value") for dim in dims)
        for dims in (i.type.tensor_type.shape.dim for i in graph.input)
    )


EXPORTERS = ("dynamo", "legacy")  # torch.onnx's default, then the TorchScript one where the default fails


def export_onnx(model: TextModel, sample: dict[str, torch.Tensor], destination: Path, exporter: str) -> None:
    """Write `model` as one ONNX file with dynamic batch and sequence axes, with one of EXPORTERS.

    Raises:
        TexttuneError: the exporter failed, or its graph has the sample's sizes baked in.
    """
    wrapped = _Logits(model.eval().float().cpu()).eval()
    names = list(sample)
    args = tuple(sample[name] for name in names)
    destination.unlink(missing_ok=True)
    try:
        # eager attention (plain matmuls and softmax): ONNX Runtime ran it 1.45x faster than SDPA's exported graph
        # on essays here (bench/experiments.md), and it computes the same
        with _quiet(), attention_kernels(model.backbone, "eager"):
            if exporter == "dynamo":
                axes = {name: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for name in names}
                torch.onnx.export(
                    wrapped, args, str(destination), input_names=names, output_names=["logits"], opset_version=OPSET,
                    dynamo=True, dynamic_shapes=axes, external_data=False, verbose=False, optimize=True,
                )  # fmt: skip
            else:
                axes = {name: {0: "batch", 1: "sequence"} for name in names}
                torch.onnx.export(
                    wrapped, args, str(destination), input_names=names, output_names=["logits"], opset_version=17,
                    dynamo=False, dynamic_axes={**axes, "logits": {0: "batch"}},
                )  # fmt: skip
    except Exception as exc:  # the exporters raise many types
        raise TexttuneError(first_line(exc)) from None
    if not _has_dynamic_axes(destination):
        raise TexttuneError("the graph has fixed batch or sequence sizes")


def quantize_int8(source: Path, destination: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the encoder's weights, per output channel; the head (the MatMul
    or Gemm nearest the output, and what follows it) stays fp32, since its outputs are the predictions. The
    quantizer first rewrites each Gemm as a MatMul named `<gemm>_MatMul`, so both names are excluded."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    producers = {output: node for node in graph.node for output in node.output}
    head, frontier = [], [graph.output[0].name]
    while frontier:  # walk back from the output to the first matrix product
        node = producers.get(frontier.pop())
        if node is None:
            continue
        head.append(node.name)
        if node.op_type not in ("MatMul", "Gemm"):
            frontier.extend(node.input)
    try:
        with _quiet():
            quantize_dynamic(
                str(source), str(destination), per_channel=True, reduce_range=not cpu_has_vnni(),
                weight_type=QuantType.QInt8, nodes_to_exclude=head + [f"{name}_MatMul" for name in head],
                extra_options={"MatMulConstBOnly": True},
            )  # fmt: skip
    except Exception as exc:  # the quantizer raises many types
        raise TexttuneError(f"quantization failed ({first_line(exc)})") from None


def validation_rows(bundle: Bundle, data: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """The texts of the bundle's validation rows and their truth (class indices, or scores (N, T)).

    They are read back from `data`, else the table its recipe validated on (data.valid, else data.train), at the
    rows valid_predictions.csv names. The targets there (and ids, where the bundle has an id column) must equal
    the ones valid_predictions.csv recorded, so a table that changed since training is refused, never misread.

    Raises:
        TexttuneError: no validation predictions or recipe, the table is missing, or it no longer holds the rows.
    """
    path, task = bundle.path, bundle.info.task
    for name in (VALID_PREDICTIONS, "recipe.yaml"):
        if not (path / name).is_file():
            raise TexttuneError(f"{path}: no {name}, so no validation rows to gate an export on")
    recipe = build_recipe(yaml.safe_load((path / "recipe.yaml").read_text()), str(path / "recipe.yaml"))
    source = Path(data or recipe.data.valid or recipe.data.train)
    if not source.is_file():
        raise TexttuneError(
            f"{source}: not found; the export's fidelity gate reads the bundle's validation rows from the table it "
            "validated on: run from the folder training ran in, or pass --data TABLE"
        )
    valid = read_table(path / VALID_PREDICTIONS)
    frame = read_table(source, recipe.data.sep)
    rows = pd.to_numeric(valid.get("row", pd.Series(dtype=object)), errors="coerce").to_numpy()
    if len(rows) == 0 or np.isnan(rows).any() or (rows % 1).any() or rows.min() < 0 or rows.max() >= len(frame):
        raise TexttuneError(
            f"{path / VALID_PREDICTIONS}: its 'row' column does not name rows 1 to {len(frame)} of {source}; "
            "pass --data with the table the bundle validated on"
        )
    rows = rows.astype(int)
    picked = frame.iloc[rows].reset_index(drop=True)
    missing = [c for c in task.target_columns if c not in picked or c not in valid]
    if missing:
        where = source if missing[0] not in picked else path / VALID_PREDICTIONS
        raise TexttuneError(f"{where}: no column '{missing[0]}', which the gate compares; pass --data")
    checked = [c for c in (bundle.info.id_column, *task.target_columns) if c and c in picked and c in valid]
    for column in checked:
        if task.is_regression and column in task.target_columns:
            same = np.isclose(pd.to_numeric(picked[column], errors="coerce"), valid[column].astype(float))
        else:
            same = picked[column].astype(str).to_numpy() == valid[column].astype(str).to_numpy()
        if not same.all():
            wrong = int(np.flatnonzero(~same)[0])
            raise TexttuneError(
                f"{source}: row {rows[wrong] + 1} has {column} {picked[column][wrong]!r}, not the "
                f"{valid[column][wrong]!r} the bundle validated on; pass --data with the table it validated on"
            )
    texts = bundle.pipeline.join(read_texts(picked, bundle.pipeline.text_columns))
    if task.is_regression:
        return texts, valid[list(task.target_columns)].astype(float).to_numpy()
    index = {label: i for i, label in enumerate(task.labels)}
    unknown = [label for label in valid[task.target_columns[0]] if label not in index]
    if unknown:
        raise TexttuneError(f"{path / VALID_PREDICTIONS}: label {unknown[0]!r} is not one of the bundle's classes")
    return texts, np.array([index[label] for label in valid[task.target_columns[0]]])


def gate(
    engine: str,
    reference: np.ndarray,
    exported: np.ndarray,
    truth: np.ndarray,
    postprocess: PostProcessing,
    task: TaskSpec,
) -> tuple[dict[str, float], bool]:
    """The gate's figures for head outputs (N, C) of PyTorch and of an export, and whether they pass."""
    figures = {"rows": float(len(truth)), "max_abs_difference": float(np.abs(reference - exported).max())}
    if engine == "onnx-fp32":
        return figures, figures["max_abs_difference"] <= MAX_FP32_DIFFERENCE
    ours, theirs = (postprocess.apply(outputs) for outputs in (reference, exported))
    if task.is_regression:
        rmse_torch, rmse_int8 = (float(np.sqrt(((p - truth) ** 2).mean(axis=0)).mean()) for p in (ours, theirs))
        change = (rmse_int8 - rmse_torch) / max(rmse_torch, 1e-12)
        figures |= {"rmse_torch": rmse_torch, "rmse_int8": rmse_int8, "rmse_relative_change": change}
        return figures, change <= MAX_INT8_RMSE_INCREASE
    agreement = float((ours.argmax(axis=1) == theirs.argmax(axis=1)).mean())
    accuracy_torch, accuracy_int8 = (float((p.argmax(axis=1) == truth).mean()) for p in (ours, theirs))
    figures |= {"agreement": agreement, "accuracy_torch": accuracy_torch, "accuracy_int8": accuracy_int8}
    passed = agreement >= MIN_INT8_AGREEMENT and accuracy_torch - accuracy_int8 <= MAX_INT8_ACCURACY_DROP
    return figures, passed


def _gated(
    engine: str, file: Path, exporter: str, bundle: Bundle, features: list, reference: np.ndarray, truth: np.ndarray
) -> Export:
    """Run an exported file on the validation rows and gate it against PyTorch's outputs.

    Raises:
        TexttuneError: ONNX Runtime cannot load or run the graph (a size baked in somewhere, say).
    """
    runner = OnnxRunner(file, threads=torch.get_num_threads())
    try:
        outputs = Predictor([runner], bundle.pipeline, bundle.info).outputs_of(features)
    except Exception as exc:  # onnxruntime raises its own types
        raise TexttuneError(f"the graph does not run ({first_line(exc)})") from None
    figures, passed = gate(engine, reference, outputs, truth, bundle.info.postprocess, bundle.info.task)
    return Export(engine, file.name, exporter, passed, figures, cpu_description(),
                  reduce_range=not cpu_has_vnni() if engine == "onnx-int8" else None)  # fmt: skip


def _export_fp32(bundle: Bundle, features: list, reference: np.ndarray, truth: np.ndarray, file: Path) -> Export:
    """The fp32 export of the first exporter whose graph runs and passes the gate (else the last that ran)."""
    problems, ran = [], None
    for exporter in EXPORTERS:
        try:
            export_onnx(bundle.model, dict(bundle.pipeline.collate(features[:2])), file, exporter)
            export = _gated("onnx-fp32", file, exporter, bundle, features, reference, truth)
        except TexttuneError as exc:  # this exporter cannot (or its graph does not run): the next one may
            problems.append(f"{exporter}: {exc}")
            continue
        if export.passed:
            return export
        problems.append(f"{exporter}: {export.describe()}")
        ran = (export, file.read_bytes())
    if ran is None:
        family = bundle.info.backbone_config.get("model_type", "this encoder")
        raise TexttuneError(f"{family}: ONNX export failed ({'; '.join(problems)}); predict with engine torch")
    file.write_bytes(ran[1])
    return ran[0]


def export_member(path: Path, quantize: bool, force: bool, data: str | Path | None) -> list[Export]:
    """Export one bundle (see `export_bundle`)."""
    if (path / CHECKPOINTS).exists():
        raise TexttuneError(f"{path}: a training is writing into this folder (it has {CHECKPOINTS}); export after it")
    description = (path / BUNDLE_FILE).read_text()  # the bundle the export is of: refused if replaced meanwhile
    bundle = load_bundle(path)
    texts, truth = validation_rows(bundle, data)
    features = bundle.pipeline.encode(texts)
    reference = Predictor([TorchRunner(bundle.model, bf16=False)], bundle.pipeline, bundle.info).outputs_of(features)
    problems = []
    with tempfile.TemporaryDirectory(prefix=".texttune-export-", dir=path.parent) as scratch:
        files = {engine: Path(scratch) / name for engine, name in FILES.items()}
        exports = [_export_fp32(bundle, features, reference, truth, files["onnx-fp32"])]
        if quantize and (exports[0].passed or force):  # int8 of a graph that is wrong in fp32 is never kept
            try:
                quantize_int8(files["onnx-fp32"], files["onnx-int8"])
                exports.append(_gated("onnx-int8", files["onnx-int8"], exports[0].exporter, bundle, features,
                                      reference, truth))  # fmt: skip
            except TexttuneError as exc:
                problems.append(f"onnx-int8: {exc}")
        exports = [dataclasses.replace(e, forced=force and not e.passed) for e in exports]
        kept = {e.engine: e for e in exports if e.passed or force}
        add_exports(
            path,
            {e.file: files[e.engine] for e in kept.values()},
            {e.engine: e.to_dict() for e in kept.values()},
            dropped=[engine for engine in FILES if engine not in kept and (engine != "onnx-int8" or quantize)],
            expected_description=description,
        )
    problems += [e.describe() for e in exports if e.engine not in kept]
    if problems:
        written = f"; {', '.join(kept)} written" if kept else "; nothing written"
        raise TexttuneError(f"{path}: {'; '.join(problems)}{written} (--force keeps a failed export, marked)")
    return exports


def export_bundle(
    path: str | Path, quantize: bool = False, force: bool = False, data: str | Path | None = None
) -> dict[str, list[Export]]:
    """Export a bundle, or each member of a cv ensemble, to ONNX (and int8 with `quantize`) beside its
    `texttune.json`, each file gated against PyTorch on the member's validation rows.

    Args:
        quantize: also write the int8 model.
        force: keep an export that fails its gate, marked as failed (`Predictor.load` auto never picks it).
        data: the table the bundle was trained on, where the recipe's path does not lead to it from here.

    Returns:
        Member folder -> its exports with their figures.

    Raises:
        TexttuneError: not a bundle, a failed export or gate (with the figures), no validation rows.
    """
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        members = [path / member for member in ensemble_members(path)]
    elif (path / BUNDLE_FILE).is_file():
        members = [path]
    else:
        raise TexttuneError(f"{path}: not a texttune bundle or cv run; pass the output.dir of `texttune train` or cv")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {str(member): export_member(member, quantize, force, data) for member in members}
