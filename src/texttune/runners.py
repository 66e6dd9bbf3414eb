"""Runners: one padded batch of token ids -> head outputs (B, C) as float32 numpy.

The seam below `Predictor`: sorting by length, batching, input order and ensembling are written once above it, so
`OnnxRunner` (an export of `texttune.export`) only has to map a batch to outputs.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from texttune._hardware import use_bf16
from texttune.errors import TexttuneError
from texttune.models.heads import TextModel

logger = logging.getLogger(__name__)


def runs_in_bf16(trained: str, precision: str = "auto") -> bool:
    """Whether a model trained in `trained` precision predicts in bf16 here: only one trained in bf16, and only
    where `precision` allows (auto: this machine has fast bf16; fp32: never)."""
    return trained == "bf16" and use_bf16(precision)


class Runner(Protocol):
    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray: ...


class TorchRunner:
    """A `TextModel` in eval mode on this machine's device (CUDA when present), in bf16 autocast when asked.

    Args:
        model: the model; put in eval mode and moved to the device.
        bf16: autocast the encoder to bf16 (the head stays fp32, see `TextModel.forward`).
    """

    def __init__(self, model: TextModel, bf16: bool = False) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            return self.model(**inputs)["logits"].float().cpu().numpy()  # (B, C)


class OnnxRunner:
    """An exported model (`texttune export`) in an ONNX Runtime session on the CPU.

    Args:
        path: the .onnx file.
        threads: intra-op threads (default: the threads torch would use here); one inter-op thread, and no
            spinning, so idle threads do not burn the cores a server's event loop and tokenizer need.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # no warnings about unused initializers
        try:  # ONNX Runtime itself refuses external data outside the model's folder
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # it raises its own types for damaged or hostile files
            raise TexttuneError(f"{path}: ONNX Runtime cannot load it ({str(exc).strip()[:200]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feeds = {name: batch[name].numpy() for name in self.inputs}
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)  # (B, C)


ENGINES = ("auto", "torch", "onnx", "onnx-fp32", "onnx-int8")


def choose_engine(exports: dict[str, Any], engine: str) -> str:
    """The engine a bundle predicts with: `torch`, `onnx-fp32` or `onnx-int8` (names of `Bundle.exports`).

    auto takes int8, else fp32 ONNX, among the exports that passed their fidelity gate, else torch; onnx takes the
    same order but also an export kept with `--force` (with a warning), and refuses a bundle with none.

    Raises:
        TexttuneError: an unknown engine, or an ONNX engine the bundle has no export for.
    """
    if engine not in ENGINES:
        raise TexttuneError(f"engine '{engine}' is unknown; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return engine
    candidates = ["onnx-int8", "onnx-fp32"] if engine in ("auto", "onnx") else [engine]
    for name in candidates:
        export = exports.get(name)
        if not isinstance(export, dict):
            continue
        if export.get("passed") is True:
            return name
        if engine != "auto":
            logger.warning("%s failed its fidelity gate and was kept with --force: %s", name, export.get("figures"))
            return name
    if engine == "auto":
        return "torch"
    raise TexttuneError(f"the bundle has no {engine} export; run `texttune export BUNDLE --format onnx` first")
