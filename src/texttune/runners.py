"""Runners: one padded batch of token ids -> head outputs (B, C) as float32 numpy.

The seam below `Predictor`: sorting by length, batching, input order and ensembling are written once above it, so
`OnnxRunner` (an export of `texttune.export`) only has to map a batch to outputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from texttune._hardware import cpu_has_vnni, use_bf16
from texttune.errors import TexttuneError, first_line
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
            raise TexttuneError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        feeds = {name: batch[name].numpy() for name in self.inputs}
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)  # (B, C)


ENGINES = ("auto", "torch", "onnx", "onnx-fp32", "onnx-int8")


def _fits_this_cpu(engine: str, record: dict[str, Any]) -> bool:
    """An int8 export made with 8-bit weights (on a CPU with VNNI) can saturate on a CPU without it."""
    return engine != "onnx-int8" or record.get("reduce_range") is True or cpu_has_vnni()


def choose_engine(exports: Sequence[dict[str, Any]], engine: str) -> str:
    """The engine a model predicts with, given each member's `Bundle.exports`: `torch`, `onnx-fp32` or
    `onnx-int8`, the same for every member (they share each batch).

    auto takes int8, else fp32, where every member's export passed its fidelity gate (and an int8 one fits this
    CPU), else torch. onnx takes the same order; it, onnx-fp32 and onnx-int8 fall back to exports kept with
    `--force` (with a warning) and refuse a model that lacks one.

    Raises:
        TexttuneError: an unknown engine, or an ONNX engine some member has no export for.
    """
    if engine not in ENGINES:
        raise TexttuneError(f"engine '{engine}' is unknown; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return engine
    candidates = ["onnx-int8", "onnx-fp32"] if engine in ("auto", "onnx") else [engine]
    for name in candidates:
        records = [member.get(name) for member in exports]
        if all(record and record.get("passed") is True and _fits_this_cpu(name, record) for record in records):
            return name
    if engine == "auto":
        return "torch"
    for name in candidates:
        records = [member.get(name) for member in exports]
        if all(records):
            problems = [r.get("figures") for r in records if not r.get("passed")]
            if problems:
                logger.warning("%s failed its fidelity gate and was kept with --force: %s", name, problems)
            if not all(_fits_this_cpu(name, record) for record in records):
                logger.warning("%s was made with 8-bit weights for CPUs with VNNI; this one lacks it", name)
            return name
    raise TexttuneError(
        f"engine {engine}: {'a member has' if len(exports) > 1 else 'the bundle has'} no such export; "
        "run `texttune export MODEL --format onnx` (with --quantize int8 for int8) first"
    )
